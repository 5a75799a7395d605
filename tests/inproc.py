"""The in-process tier: the real filesystem, called as the kernel calls it, without the kernel.

`InProcFS` wraps the `ArtifactFS` that `ciartfs.mount.Mount(settings)` builds (the same
composition a real mount serves) over the in-process fake server, and calls its handlers
directly: lookup, readdir (opendir/readdir/releasedir), getattr, readlink, open, read,
release, getxattr, listxattr, forget. Paths are walked one component at a time, as the
kernel does, following symlinks in the middle of a path; every lookup and readdirplus entry
takes a kernel reference that `forget_everything` gives back. Each one runs the background
work of a mount (read-ahead, disk writes, size probes) and ends as an unmount does
(`close`, or at teardown).

Not modelled: the kernel's dentry, attribute and page caches (each path is looked up again,
so lookup counts run higher than under a kernel, and every read reaches the handler); what
depends on them is tested through real mounts (t3_).

Errors come back as the kernel sees them: `errno_of(call)` awaits a call that must fail and
returns its FUSEError's errno.

Time: the tree's TTLs read trio's clock. A test that requests the `clock` fixture (a
`MockClock` running at real speed, so that timeouts still fire) runs under it, and
`fs.advance(seconds)` steps over a TTL instead of sleeping through it; `fs.hurry(call)` runs
the clock ahead while a call waits, so that a timeout passes without being waited out.

Every handler call goes through `_edge` in fs.py, so an internal error becomes EIO there
and is counted in `ops.errors["internal"]`; the fixture fails the test on any such error,
and on an ERROR log line unless the test set `expect_errors`.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import posixpath
import stat
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import outcome
import pyfuse3
import trio
from trio.testing import MockClock

from ciartfs.config import load_settings
from ciartfs.mount import Mount
from ciartfs.namespace import tree as tree_module
from ciartfs.namespace.tree import ROOT_INODE, Node

CTX = pyfuse3.RequestContext()
# What the kernel asks for in one read: its largest buffered read.
KERNEL_READ = 128 << 10
# How many entries one readdir call fits; small, so that listings are read in several calls
# (offsets across calls are part of what is tested).
READDIR_BATCH = 7
SYMLINK_HOPS = 40  # as the kernel's limit

T = TypeVar("T")


class ReaddirBuffer:
    """Stands for the kernel's readdir buffer: collects replies until it is full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.entries: list[tuple[str, pyfuse3.EntryAttributes, int]] = []

    def add(self, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((os.fsdecode(name), attr, next_id))
        return True


_real_readdir_reply = pyfuse3.readdir_reply


def _readdir_reply(token: Any, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
    if isinstance(token, ReaddirBuffer):
        return token.add(name, attr, next_id)
    return _real_readdir_reply(token, name, attr, next_id)


def install_readdir_shim(monkeypatch: Any) -> None:
    """fs.py answers readdir through `pyfuse3.readdir_reply`; our token collects the entries."""
    monkeypatch.setattr(pyfuse3, "readdir_reply", _readdir_reply)


async def _awaited(call: Awaitable[T]) -> T:
    return await call


async def errno_of(call: Awaitable[Any]) -> int:
    """The errno a handler call fails with (as the kernel would pass it on)."""
    try:
        result = await call
    except pyfuse3.FUSEError as e:
        return e.errno
    raise AssertionError(f"expected a FUSEError, got {result!r}")


@dataclasses.dataclass
class Attr:
    """The parts of `EntryAttributes` tests look at."""

    inode: int
    mode: int
    size: int
    mtime: float
    uid: int
    entry_timeout: float
    attr_timeout: float

    @classmethod
    def of(cls, a: pyfuse3.EntryAttributes) -> Attr:
        return cls(a.st_ino, a.st_mode, a.st_size, a.st_mtime_ns / 1e9, a.st_uid, a.entry_timeout, a.attr_timeout)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def perms(self) -> int:
        return stat.S_IMODE(self.mode)


class _NoSourceIsStatic:
    """Stands for StaticDir in the tree (`tree_sees_no_packed_files`)."""


def tree_sees_no_packed_files(monkeypatch: Any) -> None:
    """The tree lists a directory's packed files (model.PackedFiles) as the Entry each its
    source's list() makes of them, with its artifact and info, as it lists any file: what the
    packed listing is compared with."""
    monkeypatch.setattr(tree_module, "StaticDir", _NoSourceIsStatic)


class InProcFS:
    """One `Mount` served in-process; paths are relative to its root ("github/acme/api")."""

    def __init__(self, mount: Mount, clock: MockClock | None) -> None:
        self.mount = mount
        self.ops = mount.ops
        self.tree = mount.tree
        self._clock = clock
        self.expect_errors = False
        self._background = trio.CancelScope()  # replaced by the serving nursery's
        self._stopped = trio.Event()

    # -- time ---------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Step trio's clock forward (the test must request the `clock` fixture)."""
        if self._clock is None:
            raise AssertionError("advance() needs trio's MockClock: request the `clock` fixture in the test")
        self._clock.jump(seconds)

    async def hurry(self, call: Awaitable[T], *, step: float = 1.0) -> T:
        """Await `call` while trio's clock runs ahead `step` seconds every real 10 ms or so:
        timeouts (a storage host that never answers) pass without being waited out."""
        if self._clock is None:
            raise AssertionError("hurry() needs trio's MockClock: request the `clock` fixture in the test")
        done = trio.Event()
        result: outcome.Outcome[T] | None = None

        async def run() -> None:
            nonlocal result
            result = await outcome.acapture(_awaited, call)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while not done.is_set():
                with trio.move_on_after(0.01):
                    await done.wait()
                if not done.is_set():
                    self._clock.jump(step)
        assert result is not None
        return result.unwrap()

    # -- names --------------------------------------------------------------------------------

    async def lookup(self, parent: int, name: str | bytes) -> Attr:
        raw = name if isinstance(name, bytes) else os.fsencode(name)
        return Attr.of(await self.ops.lookup(parent, raw, CTX))

    async def resolve(self, path: str, *, follow: bool = True) -> Attr:
        """Walk `path` from the root as the kernel does: one lookup per component; a symlink
        in the middle (and at the end when `follow`) is read and followed."""
        attr = Attr.of(await self.ops.getattr(ROOT_INODE, CTX))
        todo = [p for p in path.split("/") if p]
        stack: list[int] = [ROOT_INODE]  # the directories walked through, for ".."
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == ".":
                continue
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                attr = Attr.of(await self.ops.getattr(stack[-1], CTX))
                continue
            attr = await self.lookup(stack[-1], part)
            if attr.is_link and (todo or follow):
                hops += 1
                if hops > SYMLINK_HOPS:
                    raise pyfuse3.FUSEError(errno.ELOOP)
                target = os.fsdecode(await self.ops.readlink(attr.inode, CTX))
                if target.startswith("/"):
                    raise AssertionError(f"absolute link target {target!r} leaves the mount")
                todo = [p for p in target.split("/") if p] + todo
                continue
            stack.append(attr.inode)
        return attr

    async def stat(self, path: str) -> Attr:
        """lookup of each component, then getattr (stat(2) on a path)."""
        attr = await self.resolve(path)
        return Attr.of(await self.ops.getattr(attr.inode, CTX))

    async def lstat(self, path: str) -> Attr:
        return await self.resolve(path, follow=False)

    async def readlink(self, path: str) -> str:
        attr = await self.resolve(path, follow=False)
        return os.fsdecode(await self.ops.readlink(attr.inode, CTX))

    async def exists(self, path: str) -> bool:
        try:
            await self.resolve(path)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
            return False
        return True

    # -- directories --------------------------------------------------------------------------

    async def readdir(self, path: str) -> dict[str, Attr]:
        """Name -> attributes as readdirplus returns them, read in batches the way the kernel
        asks: each next call starts at the offset the last entry gave."""
        attr = await self.resolve(path)
        fh = await self.ops.opendir(attr.inode, CTX)
        entries: dict[str, Attr] = {}
        try:
            start = 0
            while True:
                batch = ReaddirBuffer(READDIR_BATCH)
                await self.ops.readdir(fh, start, batch)  # type: ignore[arg-type]
                if not batch.entries:
                    break
                for name, entry, next_id in batch.entries:
                    assert name not in entries, f"{path}: {name!r} listed twice"
                    entries[name] = Attr.of(entry)
                    start = next_id
        finally:
            await self.ops.releasedir(fh)
        return entries

    async def listdir(self, path: str) -> list[str]:
        return sorted(await self.readdir(path))

    async def ls_l(self, path: str) -> dict[str, Attr]:
        """What `ls -l` sees: readdirplus, then, in listing order, a getattr of each entry whose
        attributes expired at once (the kernel's attribute cache: a size not known yet)."""
        entries = await self.readdir(path)
        for name, attr in entries.items():
            if attr.attr_timeout == 0:
                entries[name] = Attr.of(await self.ops.getattr(attr.inode, CTX))
        return entries

    async def walk_files(self, path: str, *, long: bool = False) -> dict[str, Attr]:
        """Every regular file below `path` (not following links): relative path -> attributes
        (`long`: as `ls -l` sees them, else as readdirplus gave them)."""
        found: dict[str, Attr] = {}
        for name, attr in (await (self.ls_l(path) if long else self.readdir(path))).items():
            rel = posixpath.join(path, name)
            if attr.is_dir:
                found.update({posixpath.join(name, k): v for k, v in (await self.walk_files(rel, long=long)).items()})
            elif attr.is_file:
                found[name] = attr
        return found

    async def snapshot(self, path: str) -> dict[str, tuple[str, int, str | None, dict[str, bytes]]]:
        """Everything below `path` as `ls -lR` and `getfattr -d` see it: relative path -> (kind,
        size, link target, xattrs but `cached`, which counts what reads brought)."""
        found: dict[str, tuple[str, int, str | None, dict[str, bytes]]] = {}
        for name, attr in (await self.ls_l(path)).items():
            rel = posixpath.join(path, name)
            kind = "dir" if attr.is_dir else "link" if attr.is_link else "file"
            xattrs = {}
            for key in await self.listxattr(rel):
                if key != "user.ciartfs.cached":
                    xattrs[key] = await self.getxattr(rel, key)
            found[name] = (kind, attr.size, await self.readlink(rel) if attr.is_link else None, xattrs)
            if attr.is_dir:
                found.update({posixpath.join(name, k): v for k, v in (await self.snapshot(rel)).items()})
        return found

    # -- files --------------------------------------------------------------------------------

    async def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        attr = await self.resolve(path)
        info = await self.ops.open(attr.inode, flags, CTX)
        return info.fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return bytes(await self.ops.read(fh, offset, size))  # (a view, maybe: pyfuse3's reply copies it)

    async def release(self, fh: int) -> None:
        await self.ops.release(fh)

    async def read_file(self, path: str) -> bytes:
        """open, reads of the kernel's size until a short one, release."""
        fh = await self.open(path)
        try:
            parts = []
            offset = 0
            while True:
                data = await self.read(fh, offset, KERNEL_READ)
                parts.append(data)
                offset += len(data)
                if len(data) < KERNEL_READ:
                    return b"".join(parts)
        finally:
            await self.release(fh)

    # -- extended attributes ------------------------------------------------------------------

    async def getxattr(self, path: str, name: str) -> bytes:
        attr = await self.resolve(path, follow=False)
        return await self.ops.getxattr(attr.inode, name.encode(), CTX)

    async def listxattr(self, path: str) -> list[str]:
        attr = await self.resolve(path, follow=False)
        return [n.decode() for n in await self.ops.listxattr(attr.inode, CTX)]

    # -- the kernel letting go ----------------------------------------------------------------

    def node(self, inode: int) -> Node:
        return self.tree.nodes[inode]

    async def forget_everything(self) -> None:
        """Give back every reference lookups and listings took, as the kernel does when it
        drops its dentry and inode caches."""
        held = [(n.inode, n.lookups) for n in list(self.tree.nodes.values())
                if n.inode != ROOT_INODE and n.lookups > 0]
        await self.ops.forget(held)

    async def settle(self) -> None:
        """Wait for the disk writes queued behind reads."""
        await self.mount.reader.flush_writes()

    async def close(self) -> None:
        """Unmount, as mount.py's _main ends: background work stopped, then queued disk writes
        done and connections closed (then mount another over the same cache directory)."""
        self._background.cancel()
        await self._stopped.wait()


class InProcFactory:
    """`await inproc(**flags)` -> InProcFS over the fake; every one closed at teardown."""

    def __init__(self, tmp_path: Path, api_url: str, nursery: trio.Nursery, clock: MockClock | None) -> None:
        self.tmp_path = tmp_path
        self.api_url = api_url
        self.nursery = nursery
        self.clock = clock
        self.made: list[InProcFS] = []

    async def __call__(self, *, token: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> InProcFS:
        """Settings as the command line makes them: `flags` by their keys (latest_ttl=60,
        taskcluster_root_url=...), credentials from the environment (`token` is $CIRCLE_TOKEN),
        and no user config file."""
        flags.setdefault("circleci_host", self.api_url)
        flags.setdefault("cache_dir", self.tmp_path / f"cache{len(self.made)}")
        flags.setdefault("timeout", 5.0)
        environ = {"XDG_CONFIG_HOME": str(self.tmp_path / "xdg-config"), **(env or {})}
        if token is not None:
            environ["CIRCLE_TOKEN"] = token
        fs = InProcFS(Mount(load_settings(flags, env=environ)), self.clock)
        await self.nursery.start(_serve, fs)
        self.made.append(fs)
        return fs

    async def aclose(self) -> list[str]:
        problems = []
        for fs in self.made:
            await fs.close()
            if fs.ops.errors["internal"]:
                problems.append(f"{fs.ops.errors['internal']} internal error(s) in handlers (see the log)")
        return problems


async def _serve(fs: InProcFS, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A mount's background work and its end, as mount.py's _main runs them (without pyfuse3.main)."""
    try:
        async with trio.open_nursery() as nursery:
            fs._background = nursery.cancel_scope
            fs.mount.start(nursery)
            task_status.started()
            await trio.sleep_forever()
    finally:
        await fs.mount.aclose()
        fs._stopped.set()


class ErrorLines(logging.Handler):
    """ERROR records from ciartfs while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
