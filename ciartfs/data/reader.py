"""Serving file bytes: the coordinator over the block cache, byte sources and read-ahead.

A read is served from fixed-size blocks (128 KiB, the kernel's largest buffered read, so a
random read such as `unzip -l` looking at a zip's central directory costs little more than it
reads). This module owns what every artifact shares, whatever its source:
- sizes: what the artifact says, else its source learns it (a failure is remembered for
  SIZE_FAILURE_TTL on trio's clock and raised again at once meanwhile);
- the read path: blocks from the memory tier, else one fetch per block key at a time (single
  flight) by the artifact's source, which consults the disk tier; the bytes assembled are
  exactly those asked for, clipped to the size shown, or an error;
- read-ahead (the policy is readahead.py): the blocks it plans are fetched in the background,
  at most PREFETCH_CONCURRENCY requests at once, runs with one request where the source can;
- content hash checks (hashes.py) on the blocks reads get.

Bytes are copied as little as they can be on a sequential read: a run's body is received into
one buffer, its blocks are views of it (cache.py says how they leave memory together), and a
read of consecutive blocks of one run (the kernel's 1 MiB reads) replies with a view of it.

The pieces, each with its invariants at its top:
  sources.py     what an artifact's `source` may be, and the SourceReader each kind has
  ranged.py      the URL sources: ranged GETs, size and tail probes
  decode.py      decoded-whole: storage keeping a file gzip-encoded, decoded once into the cache
  fill.py        whole-body fills: storage ignoring Range, one body streamed into the cache
  blocks.py      the key format, the memory and disk tiers, sizes learned, counters
  writebehind.py the disk write queue
  readahead.py   the read-ahead policy
  livelog.py     growing files (a running task's live log): owned here as `live`, served by fs.py

Invariants:
- Bytes returned are exactly the artifact's bytes [offset, offset+length) clipped to the size
  the caller showed, or a CiartfsError (mapped to an errno by fs.py); never zero padding.
- One fetch per block key at a time; a prefetch failure never fails a read (the read fetches
  the block itself).
- Background work (prefetch, disk writes, fills, live streams) runs only after `start`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cachetools
import trio

from ciartfs.data import sources
from ciartfs.data.blocks import Blocks, Stats
from ciartfs.data.cache import Buffer, DiskStore, MemoryCache, SingleFlight, cut_run
from ciartfs.data.decode import MAX_DECODED_SIZE, WholeDecoder
from ciartfs.data.fill import Fills
from ciartfs.data.hashes import HashChecks, HeldBlock
from ciartfs.data.livelog import LiveLogs
from ciartfs.data.readahead import (
    PREFETCH_CONCURRENCY,
    READAHEAD_BYTES,
    RUN_BYTES,
    ReadStream,
    plan,
    requests,
    run_arrived,
    run_blocks_for,
)
from ciartfs.data.sources import SourceReader
from ciartfs.data.writebehind import MAX_PENDING_DISK_BYTES, WriteBehind
from ciartfs.errors import ArtifactExpired, CiartfsError, UpstreamError, again, redact_url
from ciartfs.namespace.model import Artifact
from ciartfs.net.client import HttpClient

log = logging.getLogger(__name__)

# (re-exported: mount.py and fs.py know them from here)
__all__ = ["MAX_PENDING_DISK_BYTES", "READAHEAD_BYTES", "ReadStream", "Reader", "Stats"]

# A size that could not be learned (expired, refused, no answer in time) is not asked for again
# for this long: `grep -r` or `ls` over a directory with bad entries must not wait out each
# one's failure again, while a transient failure is still retried soon.
SIZE_FAILURE_TTL = 30.0
SIZE_FAILURES_KEPT = 100_000


class Reader:
    def __init__(
        self,
        http: HttpClient,
        memory: MemoryCache,
        disk: DiskStore | None,
        block_size: int,
        *,
        readahead_bytes: int = READAHEAD_BYTES,
        max_decoded_size: int = MAX_DECODED_SIZE,
        max_pending_disk_bytes: int = MAX_PENDING_DISK_BYTES,
        live_spool_dir: Path | None = None,
    ) -> None:
        self.http = http
        self.writes = WriteBehind(disk, http.budget, max_pending_disk_bytes)
        self.blocks = Blocks(http, memory, disk, block_size, self.writes)
        self.decoder = WholeDecoder(self.blocks, max_decoded_size)
        self.fills = Fills(self.blocks)
        self.hashes = HashChecks(self.blocks)
        self.readahead_blocks = max(1, readahead_bytes // block_size)
        self.run_blocks = max(1, RUN_BYTES // block_size)
        self._flight: SingleFlight[Buffer] = SingleFlight()
        self._prefetch_limiter = trio.CapacityLimiter(PREFETCH_CONCURRENCY)
        self._busy = ThreadBusy()  # (sampled as runs arrive: read-ahead asks for longer ones when busy)
        self._errors: dict[str, str] = {}
        # artifact key -> why its size could not be learned (trio's clock: tests may mock it)
        self._size_failures: cachetools.TTLCache[str, CiartfsError] = cachetools.TTLCache(
            SIZE_FAILURES_KEPT, SIZE_FAILURE_TTL, timer=lambda: trio.current_time())
        # growing files (live logs): streamed, never read by range (see livelog.py)
        self.live = LiveLogs(http.stream, timeout=http.timeout, max_size=max_decoded_size, spool_dir=live_spool_dir)
        self._sources = sources.source_readers(self)

    # the tiers and counters, as the rest of ciartfs knows them
    @property
    def memory(self) -> MemoryCache:
        return self.blocks.memory

    @property
    def disk(self) -> DiskStore | None:
        return self.blocks.disk

    @property
    def block_size(self) -> int:
        return self.blocks.block_size

    @property
    def stats(self) -> Stats:
        return self.blocks.stats

    @property
    def hash_checks(self) -> int:
        """Artifacts whose content hashes were checked (right or wrong)."""
        return self.hashes.checks

    def start(self, nursery: trio.Nursery) -> None:
        """Background work (disk writes, prefetch, live streams) runs in `nursery`; until then, none."""
        self.blocks.background = nursery
        self.writes.start(nursery)
        self.live.start(nursery)
        if self.disk is not None:
            nursery.start_soon(trio.to_thread.run_sync, self.disk.load_index)

    def _source(self, art: Artifact) -> SourceReader:
        source = self._sources.get(type(art.source))
        if source is None:  # (a LiveLog artifact is served by fs.py through `live`)
            raise UpstreamError(f"{redact_url(art.url)}: no reader for a {type(art.source).__name__} source")
        return source

    # -- sizes ------------------------------------------------------------------------------

    async def size(self, art: Artifact, reading: bool = False) -> int:
        """The artifact's size in bytes, or the CiartfsError that says why it cannot be had (a
        failure is remembered for SIZE_FAILURE_TTL and raised again at once meanwhile).
        `reading`: the file is being opened (see SourceReader.learn_size)."""
        if art.error:
            return 0
        if art.gone is not None:
            raise ArtifactExpired(f"{redact_url(art.url)}: {art.gone}")
        if art.live:
            return self.live.size(art.key)  # never probed: a live log's server would stream
        if art.size is not None:
            return art.size
        failed = self._size_failures.get(art.key)
        if failed is not None:
            raise again(failed)
        try:
            return await self._source(art).learn_size(art, reading=reading)
        except CiartfsError as e:
            self._size_failures[art.key] = again(e)  # without its traceback (and the frames it holds)
            raise

    async def error_reason(self, art: Artifact) -> str:
        """Why an error artifact failed, as the CI system says (fetched once)."""
        reason = self._errors.get(art.key)
        if reason is None:
            doc = await self.http.get_json(art.url, also_ok=frozenset({424}), credentials=art.credentialed)
            reason = "the CI system marks this artifact as failed"
            if isinstance(doc, dict):
                parts = [str(doc[k]) for k in ("reason", "message") if isinstance(doc.get(k), str) and doc[k]]
                reason = ": ".join(parts)[:1000] or reason
            self._errors[art.key] = reason
        return reason

    async def cached_bytes(self, art: Artifact, size: int) -> int:
        """How many of the file's bytes the disk cache holds."""
        disk = self.disk
        if disk is None or not art.immutable or size <= 0:
            return 0
        bs = self.block_size
        keys = [(i, self._block_key(art, i, size)) for i in range(self.blocks.count(size))]
        # blocks still waiting for their disk write count: they are written at the latest at unmount
        present: list[int] = []
        unknown: list[tuple[int, str]] = []
        for i, k in keys:
            if self.writes.holds(k):
                present.append(i)
            else:
                unknown.append((i, k))
        present += await trio.to_thread.run_sync(lambda: [i for i, k in unknown if disk.contains(k)])
        return sum(min(bs, size - i * bs) for i in present)

    # -- bytes ------------------------------------------------------------------------------

    def opened(self, art: Artifact, total: int) -> None:
        """A file was opened: start fetching what its reader will surely want first."""
        source = self._sources.get(type(art.source))
        if self.blocks.background is None or art.error or source is None:
            return  # (a live log has no SourceReader: it is streamed)
        blocks = source.opening_blocks(art, total)
        if blocks:
            self._start_readahead(art, blocks, total)

    async def read(self, art: Artifact, offset: int, length: int, stream: ReadStream | None = None,
                   total: int | None = None) -> bytes:
        """Exactly the bytes [offset, offset+length) clipped to the file, or an error.
        `total` is the size the caller showed the kernel (a growing file is read up to it)."""
        data = await self.read_buffer(art, offset, length, stream, total)
        return data if type(data) is bytes else bytes(data)

    async def read_buffer(self, art: Artifact, offset: int, length: int, stream: ReadStream | None = None,
                          total: int | None = None) -> bytes | memoryview:
        """`read`, as a view of the blocks kept where that saves a copy (for the FUSE reply,
        which copies it out at once; a view must not be kept: it holds its run's buffer alive
        outside what the memory tier counts)."""
        if art.error:
            raise UpstreamError(f"{redact_url(art.url)}: error artifact: {await self.error_reason(art)}")
        if art.gone is not None:
            raise ArtifactExpired(f"{redact_url(art.url)}: {art.gone}")
        if total is None:
            total = await self.size(art)
        checked = self.hashes.applies(art)
        if checked:
            self.hashes.raise_if_mismatched(art)
        if offset >= total or length <= 0:
            return b""
        end = min(offset + length, total)
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        # (each block's key once per read: a sequential read's 8 blocks are all held or coming)
        keys = [self._block_key(art, index, total) for index in range(first, last + 1)]
        if first < last and self.blocks.background is not None \
                and not all(self._held_or_coming(key) for key in keys):
            # A read of several blocks (the kernel asks up to 1 MiB at once where its read-ahead
            # was raised): the missing ones in runs, one request each, as read-ahead fetches
            # them; the fetches below then wait for those. First: the limiter is FIFO. (Runs
            # ending where the read does: it is then one run's view, not a copy.)
            self._start_readahead(art, range(first, last + 1), total, phase=(last + 1) % self.run_blocks)
        if stream is not None:
            self._plan_readahead(art, stream, offset, end, total)
        if first == last:
            block = await self._checked_block(art, first, total, keys[0])
            data = block[offset - first * bs:end - first * bs]
            if checked:
                await self.hashes.check(art, first, [block], total, self._held(art, total))
        else:
            blocks = await self._checked_blocks(art, first, keys, total)
            if checked:
                await self.hashes.check(art, first, blocks, total, self._held(art, total))
            data = _joined(self.memory, blocks, offset - first * bs, end - first * bs)
        if len(data) != end - offset:  # defence in depth: a short reply would be zero-padded
            raise UpstreamError(f"internal: assembled {len(data)} of {end - offset} bytes")
        self.stats.bytes_served += len(data)
        return data

    async def _checked_blocks(self, art: Artifact, first: int, keys: list[str], total: int) -> list[Buffer]:
        """Blocks first.. (their `keys`), each checked. Those held or already being fetched (a
        sequential read's, which read-ahead brought or is bringing) are awaited one after the
        other, with no task each; should one need its own fetch, the rest are fetched concurrently."""
        blocks: list[Buffer] = []
        last = first + len(keys) - 1
        index = first
        while index <= last:
            key = keys[index - first]
            if not self._held_or_coming(key):
                break
            blocks.append(await self._checked_block(art, index, total, key))
            index += 1
        if index > last:
            return blocks
        rest: list[Buffer] = [b""] * (last - index + 1)
        failures: list[CiartfsError] = []
        start = index

        async def fetch(i: int) -> None:
            try:
                rest[i - start] = await self._checked_block(art, i, total, keys[i - first])
            except CiartfsError as e:  # one error for the kernel, not an ExceptionGroup
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(start, last + 1):
                nursery.start_soon(fetch, i)
        if failures:
            raise failures[0]
        return blocks + rest

    async def _checked_block(self, art: Artifact, index: int, total: int, key: str | None = None) -> Buffer:
        block = await self._buffer(art, index, total, key)
        expected = min(self.block_size, total - index * self.block_size)
        if len(block) > expected and not art.immutable:
            block = block[:expected]  # the file grew since its size was shown: serve up to that
        self.blocks.check_length(art, index, block, total)
        return block

    def _held(self, art: Artifact, total: int) -> HeldBlock:
        """Block `index` of `art` if it costs no new request: kept in memory, being fetched (its
        fetch is awaited), queued for the disk or on it; else None (also when getting it failed:
        its own read reports that)."""
        async def held(index: int) -> Buffer | None:
            key = self._block_key(art, index, total)
            try:
                if self._held_or_coming(key):
                    return await self._checked_block(art, index, total)
                block = self.writes.pending(key)
                if block is None:
                    block = await self.blocks.from_disk(key)
                if block is not None:
                    self.blocks.check_length(art, index, block, total)
                return block
            except CiartfsError:
                return None
        return held

    def _held_or_coming(self, key: str) -> bool:
        """The block is in memory or being fetched: awaiting it makes no new request."""
        return key in self.memory or self._flight.in_flight(key)

    def _block_key(self, art: Artifact, index: int, total: int | None) -> str:
        return self.blocks.key(art, index, total)

    async def block(self, art: Artifact, index: int, total: int | None) -> bytes:
        """Block `index` as cached or fetched (`total` None: a size probe). Sources may call it
        (a zip member reads its archive's blocks this way)."""
        block = await self._buffer(art, index, total)
        return block if type(block) is bytes else bytes(block)

    async def _buffer(self, art: Artifact, index: int, total: int | None, key: str | None = None) -> Buffer:
        """`block`, as kept: a view of its run, if it came with one (no copy). `key`: its key,
        when the caller has it already."""
        if key is None:
            key = self._block_key(art, index, total)
        hit = self.memory.get_buffer(key)
        if hit is not None:
            self.stats.memory_hits += 1
            return hit
        source = self._source(art)
        return await self._flight.run(key, lambda: source.fetch(art, index, key, probe=total is None))

    async def flush_writes(self) -> None:
        """At unmount: write what is still queued (at most MAX_PENDING_DISK_BYTES)."""
        await self.writes.flush()

    # -- read-ahead ---------------------------------------------------------------------------

    def _plan_readahead(self, art: Artifact, stream: ReadStream, offset: int, end: int, total: int) -> None:
        def held(index: int) -> bool:
            return self._held_or_coming(self._block_key(art, index, total))

        run_blocks = run_blocks_for(stream, block_size=self.block_size, max_window=self.readahead_blocks,
                                    cpu_bound=self._busy.busy)
        ahead = plan(stream, offset, end, total, block_size=self.block_size, max_window=self.readahead_blocks,
                     held=held, active=self.blocks.background is not None, align=run_blocks)
        if ahead is not None:
            self._start_readahead(art, ahead, total, stream, run_blocks, stream.phase)

    def _start_readahead(self, art: Artifact, blocks: range, total: int, stream: ReadStream | None = None,
                         run_blocks: int | None = None, phase: int = 0) -> None:
        """Fetch `blocks` in the background: the missing ones in runs of up to `run_blocks` (by
        default the reader's; longer for a `stream` whose requests are fast), ending at `phase`
        plus a multiple of it, one request each, where the source can; blocks the disk may have
        are read from it."""
        background = self.blocks.background
        assert background is not None
        source = self._source(art)
        if not source.readahead_wanted(art, total):
            return
        disk = self.disk
        runs = source.readahead_runs(art)

        keys: dict[int, str] = {}  # (each block's key once: a run's are claimed below)

        def state(index: int) -> Any:
            key = keys[index] = self._block_key(art, index, total)
            if self._held_or_coming(key):
                return "held"
            # (without runs every block is fetched alone anyway: no need to ask the disk index)
            return "disk" if runs and disk is not None and disk.might_have(key) else "missing"

        for step in requests(blocks, state, run_blocks=run_blocks or self.run_blocks, runs=runs, phase=phase):
            if step[0] == "single":
                background.start_soon(self._prefetch, art, step[1], total)
                continue
            run = []
            for index in step[1]:
                key = keys[index]
                call = self._flight.claim(key)
                assert call is not None  # not in flight: checked above, and nothing awaited since
                run.append((index, key, call))
            background.start_soon(self._prefetch_run, source, art, run, total, stream)

    async def _prefetch(self, art: Artifact, index: int, total: int) -> None:
        try:
            async with self._prefetch_limiter:
                await self.block(art, index, total)
        except CiartfsError as e:
            log.debug("prefetch of block %d failed: %s", index, e)
        except Exception:
            log.exception("prefetch of block %d failed", index)

    async def _prefetch_run(self, source: SourceReader, art: Artifact, run: list[tuple[int, str, Any]],
                            total: int, stream: ReadStream | None) -> None:
        """Fetch consecutive missing blocks with one request and settle each block's claimed
        flight: readers waiting for one of them get it as soon as the run lands."""
        bs = self.block_size
        first = run[0][0]
        try:
            async with self._prefetch_limiter:
                asked = trio.current_time()
                got = await source.fetch_run(art, first, len(run))
            if got is None:
                return  # abandoned
            data, total = got
            if stream is not None:
                run_arrived(stream, len(data), trio.current_time() - asked)
                self._busy.sample()
            blocks = cut_run(data, [key for _, key, _ in run], bs)  # views of the run's buffer: no copy
            for (index, _, _), (_, block) in zip(run, blocks, strict=True):
                self.blocks.check_length(art, index, block, total)
            self.blocks.keep_run(art, data, blocks)
            for (_, key, call), (_, block) in zip(run, blocks, strict=True):
                self._flight.settle(key, call, result=block)
        except CiartfsError as e:
            log.debug("prefetch of blocks %d-%d failed: %s", first, run[-1][0], e)
            for _, key, call in run:
                self._flight.settle(key, call, error=e)
        except Exception:
            log.exception("prefetch of blocks %d-%d failed", first, run[-1][0])
        finally:
            for _, key, call in run:  # whatever is left (cancelled, abandoned) is abandoned
                self._flight.settle(key, call)


class ThreadBusy:
    """Whether the thread that samples it (trio's) wanted the CPU most of the time lately: on it,
    or waiting in the run queue for it (on a shared machine the second is most of it). Linux's
    /proc/thread-self/schedstat; elsewhere never busy."""

    PATH = "/proc/thread-self/schedstat"
    INTERVAL = 0.05  # seconds between readings (a reading costs ~40 us)
    BUSY = 0.8  # of the wall time

    def __init__(self) -> None:
        self.busy = False
        self._at = time.monotonic()
        self._wanted = self._read()

    def _read(self) -> float | None:
        try:
            with open(self.PATH, "rb") as f:
                on_cpu, waiting = f.read().split()[:2]
            return (int(on_cpu) + int(waiting)) / 1e9
        except (OSError, ValueError):
            return None

    def sample(self) -> None:
        now = time.monotonic()
        if self._wanted is None or now - self._at < self.INTERVAL:
            return
        wanted = self._read()
        if wanted is None:
            self._wanted = None
            return
        self.busy = (wanted - self._wanted) / (now - self._at) >= self.BUSY
        self._at, self._wanted = now, wanted


def _joined(memory: MemoryCache, blocks: list[Buffer], lo: int, hi: int) -> bytes | memoryview:
    """Bytes [lo, hi) of the blocks laid end to end: a view of their run where they are
    consecutive views of one (a kernel read of 1 MiB inside a run read ahead), else a copy."""
    span = memory.run_span(blocks)
    if span is not None:
        return span if lo == 0 and hi == len(span) else span[lo:hi]
    data = b"".join(blocks)
    return data if lo == 0 and hi == len(data) else data[lo:hi]
