"""Assembling and running one mount: HTTP client, caches, reader, tree, FUSE loop.

The composition root over the providers in force (`settings.providers`, in registry order):
their credentials go to the HTTP client, their API hosts to the address rule, their
top-level directories (names unique) to the root, their status keys to `ciartfs status`.
No CI system is named here (see providers/base.py).

`serve()` runs in the foreground until the filesystem is unmounted or SIGINT/SIGTERM
arrives; either way it unmounts and returns normally.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from ciartfs import fuse_loop, kernel_readahead, libc, status
from ciartfs.config import Settings
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.data.reader import MAX_PENDING_DISK_BYTES, READAHEAD_BYTES, Reader
from ciartfs.data.zipmember import ZipArchives
from ciartfs.errors import ConfigError
from ciartfs.fs import ArtifactFS
from ciartfs.namespace.model import Entry, StaticDir
from ciartfs.namespace.tree import Tree
from ciartfs.net.addresses import AddressRule
from ciartfs.net.bodies import MemoryBudget
from ciartfs.net.client import HttpClient
from ciartfs.net.credentials import Credential, origin_of
from ciartfs.providers.apidocs import ApiDocs
from ciartfs.providers.base import MountContext, ProviderMount

log = logging.getLogger(__name__)

# Python's cyclic garbage collector runs a young-generation pass every 700 container objects
# allocated (net of frees), and every pass walks the young objects still alive: with 96 size
# probes in flight (their frames, requests and answers alive), each pass found ~1 ms of work,
# ~80 passes in an `ls -l` of 1000 artifacts. Passes every 5,000 allocations cost a fraction
# of that in all. (20,000 cost less still, but browsing 500 builds then levelled off ~700
# builds in and ~40 MiB higher: more garbage reached the old generations between passes.)
GC_YOUNG_THRESHOLD = 5_000

# glibc serves allocations from some size up with mmap, and gives them back to the system
# when freed. By default that size follows the largest block freed so far (up to 32 MiB), so
# once a large body has been freed, later ones come from the heap, and once freed stay there
# as holes the heap cannot give back: 40 hostile listings held 53 MiB of freed heap at their
# peak, over and above the in-flight budget (peak RSS 160-174 MiB; 115-125 with the size
# fixed). Cache blocks, the allocations that come and go most, stay below it: mapping each
# one afresh costs page faults on every cold read. (Fixing the size also stops the heap's
# trim threshold from following it.)
MIN_MMAP_THRESHOLD = 256 << 10
MAX_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling on 64-bit
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_mallopt = libc.function("mallopt", ctypes.c_int, ctypes.c_int, ctypes.c_int)  # glibc only


def fuse_options(settings: Settings) -> set[str]:
    # 'ro' makes the kernel itself answer EROFS to every write path; default_permissions
    # lets it enforce our 0444/0555 modes. Without allow_other only the mounting user (and
    # not even root) can enter the mount: artifacts may be private.
    options = set(pyfuse3.default_options) | {"fsname=ciartfs", "subtype=ciartfs", "ro", "noatime"}
    if settings.allow_other:
        options.add("allow_other")
    return options


def api_hosts(settings: Settings) -> list[str]:
    """The configured API hosts: what the address rule compares other hosts' addresses with."""
    urls = [url for configured in settings.providers for url in configured.api_urls()]
    return [host for host in (origin_of(u)[1] for u in urls if u) if host]


class Mount:
    """Everything one mount owns, built from settings."""

    def __init__(self, settings: Settings, mountpoint: str = "") -> None:
        self.settings = settings
        self.mountpoint = os.path.realpath(mountpoint) if mountpoint else ""
        self.started = time.time()
        credentials: tuple[Credential, ...] = tuple(c for p in settings.providers for c in p.credentials())
        self.address_rule = AddressRule(api_hosts(settings), allow_private=settings.allow_private_addresses)
        self.http = HttpClient(timeout=settings.timeout, credentials=credentials, offline=settings.offline,
                               address_rule=self.address_rule, budget=MemoryBudget(settings.max_inflight_memory))
        self.memory = MemoryCache(settings.memory_cache)
        settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(settings.cache_dir, 0o700)  # cached artifacts may come from private projects
        self.disk = DiskStore(settings.cache_dir / "blocks", settings.cache_size)
        # Read-ahead and the disk write queue fit the memory cache: blocks fetched ahead into a
        # smaller cache would be evicted before they are read, and queued blocks the cache let go
        # of would be held by the queue alone. The queue takes at most half the in-flight
        # budget, so that reads waiting for room never wait on the disk alone.
        self.reader = Reader(self.http, self.memory, self.disk, settings.block_size,
                             max_decoded_size=settings.max_decoded_size,
                             readahead_bytes=min(READAHEAD_BYTES, settings.memory_cache // 2),
                             max_pending_disk_bytes=min(MAX_PENDING_DISK_BYTES, settings.memory_cache,
                                                        settings.max_inflight_memory // 2),
                             live_spool_dir=settings.cache_dir)
        self.docs = ApiDocs(self.http, self.disk, offline=settings.offline, writes=self.reader.writes)
        self.archives = ZipArchives(self.reader)
        context = MountContext(self.docs, recent_builds=settings.recent_builds, ttl=settings.latest_ttl,
                               mtime=time.time(), archives=self.archives)
        entries: list[Entry] = []
        self.provider_mounts: list[ProviderMount] = []
        for configured in settings.providers:
            mounted = configured.mount(context)
            for entry in mounted.root_entries:
                if any(e.name == entry.name for e in entries):  # two providers would hide one another
                    raise ConfigError(f"provider {configured.name}: top-level name {entry.name!r} is taken")
                entries.append(entry)
            self.provider_mounts.append(mounted)
        root = StaticDir(entries)
        self.tree = Tree(root, self.reader.size)
        self.ops = ArtifactFS(self.tree, self.reader)

    def start(self, nursery: trio.Nursery) -> None:
        """The mount's background work: disk write-behind, size probes that outlast a listing's
        wait, closing idle connections, raising the kernel's read-ahead once it is mounted. It
        ends when `nursery` is cancelled; then `aclose`."""
        self.reader.start(nursery)
        self.tree.start(nursery)
        nursery.start_soon(self.http.close_idle_forever)
        nursery.start_soon(self._raise_kernel_readahead)

    async def _raise_kernel_readahead(self) -> None:
        await self.ops.initialized.wait()
        if self.mountpoint:
            await trio.to_thread.run_sync(kernel_readahead.raise_readahead, self.mountpoint)

    async def aclose(self) -> None:
        """How a mount ends, also when cancelled: queued disk writes done (what was read stays
        read, also across a restart), then connections closed."""
        with trio.CancelScope(shield=True):
            await self.reader.flush_writes()
            await trio.to_thread.run_sync(self.disk.close)
            await self.http.aclose()

    def status(self, disk_bytes: int) -> dict[str, Any]:
        """What `ciartfs status` shows: settings without secrets, counters, cache use."""
        s = self.settings
        return {
            "pid": os.getpid(), "mountpoint": self.mountpoint, "started": self.started,
            "uptime": time.time() - self.started,
            "settings": {
                **{key: value for p in s.providers for key, value in p.status().items()},
                **{key: value for m in self.provider_mounts for key, value in m.live_status().items()},
                "cache_dir": str(s.cache_dir), "cache_size": s.cache_size, "memory_cache": s.memory_cache,
                "max_inflight_memory": s.max_inflight_memory,
                "block_size": s.block_size, "max_decoded_size": s.max_decoded_size,
                "recent_builds": s.recent_builds, "latest_ttl": s.latest_ttl,
                "timeout": s.timeout, "allow_other": s.allow_other, "offline": s.offline,
                "allow_private_addresses": s.allow_private_addresses,
            },
            "addresses_allowed": sorted(c.value for c in self.address_rule.allowed),
            "stats": {**dataclasses.asdict(self.reader.stats), "http_requests": self.http.requests_made,
                      "api_calls_saved": self.docs.api_calls_saved,
                      "api_not_modified": self.docs.not_modified},
            "memory_bytes": self.memory.bytes_used,
            "inflight_bytes": self.http.budget.used, "inflight_peak_bytes": self.http.budget.peak,
            "inodes": len(self.tree.nodes),  # follows what the kernel holds (see tree.py)
            "disk_bytes": disk_bytes,
            "errors": dict(self.ops.errors),
        }


def tune_gc() -> None:
    """Fewer, cheaper collections for a long-running daemon: what start-up made (modules,
    classes, settings) is moved out of the collector's sight for good (`gc.freeze`: full passes
    no longer walk it), and young passes come every GC_YOUNG_THRESHOLD allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def mmap_threshold(block_size: int) -> int:
    """The allocation size from which glibc maps memory of its own (see MIN_MMAP_THRESHOLD):
    above a cache block and its header."""
    return min(max(MIN_MMAP_THRESHOLD, 2 * block_size), MAX_MMAP_THRESHOLD)


def tune_malloc(block_size: int) -> None:
    """Large buffers, once freed, go back to the system (see MIN_MMAP_THRESHOLD)."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, mmap_threshold(block_size))


def serve(settings: Settings, mountpoint: str, on_ready: Callable[[], None] | None = None) -> None:
    """Mount, call `on_ready`, serve until unmounted or signalled, then clean up."""
    mount = Mount(settings, mountpoint)
    tune_gc()
    tune_malloc(settings.block_size)
    pyfuse3.init(mount.ops, mountpoint, fuse_options(settings))
    fuse_loop.install()  # no wait for the fd while a request is queued (fuse_loop.py)
    # queued to pyfuse3's own thread: safe from the trio thread, also within a handler
    mount.tree.ask_kernel_to_forget = lambda parent, name: pyfuse3.invalidate_entry_async(
        parent, os.fsencode(name), ignore_enoent=True)
    shown = [(p.provider.title, p.provider.describe(p.status())) for p in settings.providers]
    log.info("mounted %s (%s; cache %s)", mountpoint, "; ".join(f"{title} {text}" for title, text in shown if text),
             settings.cache_dir)
    try:
        trio.run(_main, mount, on_ready)
    except BaseException:
        pyfuse3.close(unmount=True)
        raise
    pyfuse3.close(unmount=True)
    log.debug("FUSE requests read when already queued: %d, after a wait: %d (%d found taken)",
              fuse_loop.stats.queued, fuse_loop.stats.waited, fuse_loop.stats.taken)
    log.info("unmounted %s", mountpoint)


async def _main(mount: Mount, on_ready: Callable[[], None] | None) -> None:
    try:
        async with trio.open_nursery() as nursery:
            mount.start(nursery)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            nursery.start_soon(_publish_status, mount)
            if on_ready is not None:
                on_ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()  # unmounted from outside: stop background work
    finally:
        status.withdraw(os.getpid())
        await mount.aclose()


async def _publish_status(mount: Mount) -> None:
    while True:
        try:
            disk_bytes = await trio.to_thread.run_sync(lambda: mount.disk.bytes_used)  # (asks the index)
            await trio.to_thread.run_sync(status.publish, os.getpid(), mount.status(disk_bytes))
        except status.UnsafeRuntimeDir as e:
            log.warning("not publishing status for 'ciartfs status': %s", e)
            return
        except OSError as e:
            log.debug("cannot publish status: %s", e)
        await trio.sleep(status.PUBLISH_INTERVAL)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            scope.cancel()
            return
