"""Serving file bytes: block-aligned ranged fetches through the block cache.

(Growing files, a running task's live log, are not read here: see livelog.py, which this
reader owns as `live`; their size is the bytes seen so far, never probed.)

A file's size is learned by fetching its first block (a ranged GET whose `Content-Range`
names the total); that block is kept, so listing a directory of small files caches them
whole. Never HEAD: presigned storage URLs answer HEAD with 403.

Blocks are small (128 KiB, the kernel's largest buffered read) so that a random read, such
as `unzip -l` looking at a zip's central directory, costs little more than it reads.
Sequential reading is where bytes come in bulk: per open file, a read that continues where
the previous one ended doubles a window of blocks fetched ahead in the background, up to
`READAHEAD_BYTES`; a seek resets it (mountpoint-s3's prefetcher is the model). Read-ahead is
topped up once half the window has been consumed, as runs of up to `RUN_BYTES` fetched with
one ranged GET each, at most `PREFETCH_CONCURRENCY` at once: few requests, several
connections, bounded memory (the window per file, the memory LRU in total).

Storage that keeps an artifact gzip-encoded (Taskcluster logs) counts Range and sizes in
compressed bytes, so such an artifact is fetched whole and decoded once, before its size is
answered (a size shown must be the decoded one):
- decoding runs in worker threads in block-sized steps, so memory stays at a few blocks and the
  trio thread keeps answering other requests whatever the stream;
- each decoded block goes straight to the disk cache, never to the memory LRU, which could evict
  it mid-decode; the decoded size is recorded after the last block. Without a disk cache only a
  file that fits a share of the memory cache is decoded; larger ones fail with EIO;
- decoded output is capped (--max-decoded-size, half the disk cache, and a compression-ratio
  cap for bombs); a failed decode is remembered for a while instead of repeated on every access.

Storage that ignores Range (CircleCI's HTML on circle-artifacts.com may) answers every block's
GET with the whole body. Such a body is kept, not read for one block and dropped: it streams on
in the background into the cache (a `_Fill`), and the artifact is remembered as one whose
Range is ignored, so a read of any block waits for that one body to reach it instead of
starting another (single flight per artifact; no read-ahead for it). Invariants:
- a block is stored only when all of its bytes arrived, from a body whose Content-Length is the
  artifact's known size: a body of another length is an error, a cut body is fetched again
  (blocks stored before the cut are kept), a partial block is never stored or served;
- memory stays at a batch of blocks plus a network chunk, held against the in-flight budget:
  blocks go to the disk cache in batches as they arrive (without one, to the memory LRU, and
  only for files that fit a share of it);
- a size probe (the first block, for `ls -l`) keeps its body streaming only while fewer than
  PROBE_FILLS do so; the others stop after the first block, and the file's first read fetches
  it whole, once.

Content hashes (an artifact whose storage promises them: Taskcluster `object` artifacts): the
blocks reads get are hashed in order from the artifact's start (on the trio thread, a block
at a time and a bounded number per read); the read that completes the file compares with
the promised hashes, asked for only then. A file of one block is checked before any of it is
served; a larger one read whole (`cat`, `sha256sum`) has its last read fail. A mismatch is EIO
for every read of it from then on, its blocks dropped from both caches. Not checked: bytes of a
large object read out of order (random ranged reads) before the whole was read from its start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cachetools
import trio

from ciartfs.data.cache import DiskStore, MemoryCache, SingleFlight
from ciartfs.net.pool import READ_SIZE
from ciartfs.errors import (
    ArtifactExpired,
    CiartfsError,
    ContentMismatch,
    Offline,
    UpstreamError,
    UpstreamTimeout,
    again,
    redact_url,
)
from ciartfs.net.client import BodyCut, HttpClient, RangeReply, WholeBody
from ciartfs.data.livelog import LiveLogs
from ciartfs.namespace.model import Artifact

log = logging.getLogger(__name__)

# Enough parallel ranged requests to fill a link made of per-connection-capped streams.
PREFETCH_CONCURRENCY = 16
# Bytes one read-ahead request asks for: large enough that per-request costs (first-byte
# latency, CPU) are amortised, small enough that 16 of them fill the link early.
RUN_BYTES = 1 << 20
# How far ahead of a sequential reader blocks are fetched, at most.
READAHEAD_BYTES = 16 << 20
# Write-behind to disk is skipped (the block stays in memory only) when this many bytes are
# queued or being written, or the in-flight memory budget has no room for them: a slow disk
# must not make us hold unbounded memory. (A mount with a smaller memory cache queues at most
# that much: blocks it no longer holds would be kept alive by the queue alone.)
MAX_PENDING_DISK_BYTES = 64 << 20
# Disk writes wait for a burst of fetches to settle (no block queued for this long), unless
# this many bytes are queued: during a listing's 1000 size probes, writing each probe's block
# at once competed for the CPU (and the GIL) with the requests the user was waiting for
# (`ls -l` of 1000 on 2 cores, median of 9: 1.13 s writing at once, 0.91 s settled).
WRITE_SETTLE_SECONDS = 0.25
WRITE_BATCH_BYTES = 8 << 20
SIZE_MEMO_ENTRIES = 1_000_000
# A size that could not be learned (expired, refused, no answer in time) is not asked for again
# for this long: `grep -r` or `ls` over a directory with bad entries must not wait out each
# one's failure again, while a transient failure is still retried soon.
SIZE_FAILURE_TTL = 30.0
SIZE_FAILURES_KEPT = 100_000
# Archives whose index is at their end: readers (unzip -l, jar, pip) look there first, so
# opening one fetches its tail at once; a zip's central directory of a few thousand members
# fits in TAIL_BYTES.
TAIL_FIRST_SUFFIXES = (".zip", ".jar", ".war", ".ear", ".aar", ".apk", ".whl", ".nupkg", ".ipa", ".xpi", ".vsix")
TAIL_BYTES = 256 << 10
# Content hashes checked when the storage gives them (Taskcluster object artifacts).
HASH_ALGORITHMS = ("sha256", "sha512")
# Artifacts whose hashing from their start is under way, at most (least recently read dropped).
HASHING_KEPT = 4096
# Blocks a read may hash beyond its own, from memory (read-ahead fetched them): bounds the
# CPU one read spends on the trio thread.
HASH_AHEAD_BLOCKS = 8
# Longest wait for a disk write under way to end, to drop blocks found wrong that it writes.
DROP_WAIT_SECONDS = 5.0
# A gzip-encoded artifact must be fetched whole: it gets this many operation timeouts.
WHOLE_FETCH_TIMEOUT_FACTOR = 10
# Default of --max-decoded-size.
MAX_DECODED_SIZE = 16 << 30
# Past DECODE_RATIO_AFTER decoded bytes, more than this many per compressed byte read is a bomb:
# deflate cannot do better than ~1032:1, which only degenerate data (one byte repeated) comes near.
MAX_DECODE_RATIO = 1000
DECODE_RATIO_AFTER = 16 << 20
# How long a failed decode is remembered: a bad or hostile stream long (every access would
# download and decode it again to the same end), a transport failure only briefly.
DECODE_FAILURE_TTL = 600.0
DECODE_TRANSPORT_FAILURE_TTL = 30.0
DECODE_FAILURES_KEPT = 10_000
# Without a disk cache, decoded blocks can only live in the memory LRU: at most this share of it.
MEMORY_ONLY_DECODE_SHARE = 4
_ENCODINGS = (None, "gzip", "x-gzip", "deflate")
# Size probes whose Range-ignoring body streams on into the cache at once (see module docstring):
# `ls -l` of many such files stays bounded; a later `cat` of one of them fetches it once.
PROBE_FILLS = 4
# A whole body goes to the disk cache in batches of about this many bytes, one thread hop each.
FILL_BATCH_BYTES = 1 << 20
# A whole body cut this many times in a row fails the reads waiting for it (EIO).
FILL_CUTS_TRIED = 3
RANGE_IGNORED_KEPT = 100_000


class _Fill:
    """An artifact's whole body streaming into the cache: blocks [0, stored) are stored."""

    def __init__(self, total: int, blocks: int) -> None:
        self.total = total
        self.blocks = blocks  # it stores blocks [0, blocks): all, or up to a probe's block
        self.stored = 0
        self.done = False
        self.error: CiartfsError | None = None
        self.wanted = -1  # the highest block a reader waits for: stored as soon as it is complete
        self._changed = trio.Event()

    def advance(self, stored: int) -> None:
        self.stored = stored
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, error: CiartfsError | None = None) -> None:
        if not self.done:
            self.done, self.error = True, error
            self._changed.set()

    async def wait_for(self, index: int) -> None:
        self.wanted = max(self.wanted, index)
        while self.stored <= index and not self.done:
            await self._changed.wait()


class _BadStream(Exception):
    """The encoded body is not a whole, valid stream of a supported encoding."""


class _DecodeCapped(Exception):
    """Decoding stopped at a cap: `cap` names it, the message gives the numbers."""

    def __init__(self, message: str, cap: str) -> None:
        super().__init__(message)
        self.cap = cap


class _NoRoom(Exception):
    """The decoded blocks could not be stored (disk cache full, or too large without one)."""


class _BlockDecoder:
    """One attempt at decoding a whole body into blocks of `block_size`.

    `feed` (once per network chunk) and `finish` run in a worker thread, one call at a time.
    Inflating at most one block per step keeps memory at about two blocks plus the chunk,
    however well the data compresses; each full block goes to `disk` as soon as it is complete
    (or, without a disk, into `held`). `decoded` is checked against the caps at every step, so a
    bomb stops within a block of a cap.
    """

    def __init__(self, encoding: str | None, block_size: int, block_key: Callable[[int], str],
                 disk: DiskStore | None, limit: int, limit_reason: str) -> None:
        self.inflater = zlib.decompressobj(wbits=47) if encoding else None  # 47: gzip or zlib header
        self.block_size = block_size
        self.block_key = block_key
        self.disk = disk
        self.limit = limit
        self.limit_reason = limit_reason
        self.pending = bytearray()
        self.blocks = 0  # blocks stored so far
        self.decoded = 0
        self.compressed = 0
        self.held: list[bytes] | None = None if disk is not None else []

    def feed(self, chunk: bytes) -> None:
        self.compressed += len(chunk)
        if self.inflater is None:
            self._take(chunk, self.compressed)
            return
        data = chunk
        while data:
            if self.inflater.eof:
                # A gzip member ended. Zero padding may follow (gzip(1) allows it), or another
                # member, whose bytes belong to the same file (`cat a.gz b.gz`).
                data = data.lstrip(b"\0")
                if not data:
                    break
                self.inflater = zlib.decompressobj(wbits=47)
            # up to the next block boundary: a whole block then needs no copy
            out = self.inflater.decompress(data, self.block_size - len(self.pending))
            data = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail
            self._take(out, self.compressed - len(data))

    def finish(self, size_key: str | None) -> int:
        """The decoded size, once the last block (and the size record `size_key`) is stored."""
        if self.inflater is not None:
            # all input is consumed, so what zlib still holds is at most the rest of one match
            self._take(self.inflater.flush(), self.compressed)
            if not self.inflater.eof:
                raise _BadStream()
        total = self.decoded
        if self.pending or total == 0:
            self._store(bytes(self.pending))
            self.pending.clear()
        if self.disk is not None and size_key is not None and not self.disk.put(size_key, str(total).encode()):
            raise _NoRoom("the disk cache cannot store the decoded size")
        return total

    def discard(self) -> None:
        """Remove the blocks stored so far (a failed decode leaves nothing behind)."""
        if self.disk is not None:
            for index in range(self.blocks):
                self.disk.discard(self.block_key(index))
        self.held = [] if self.held is not None else None

    def _take(self, out: bytes, consumed: int) -> None:
        self.decoded += len(out)
        if self.decoded > self.limit:
            raise _DecodeCapped(f"decoded size exceeds {self.limit} bytes ({self.limit_reason})", self.limit_reason)
        if self.decoded > DECODE_RATIO_AFTER and self.decoded > MAX_DECODE_RATIO * max(consumed, 1):
            raise _DecodeCapped(f"{self.decoded} bytes decoded from {consumed}: more than {MAX_DECODE_RATIO}:1, "
                                f"a decompression bomb", "compression ratio")
        bs = self.block_size
        if not self.pending and len(out) == bs:
            self._store(out)
            return
        self.pending += out
        while len(self.pending) >= bs:
            self._store(bytes(self.pending[:bs]))
            del self.pending[:bs]

    def _store(self, block: bytes) -> None:
        if self.held is not None:
            self.held.append(block)
        elif self.disk is None or not self.disk.put(self.block_key(self.blocks), block):
            raise _NoRoom("the disk cache cannot store the decoded blocks (full or failing)")
        self.blocks += 1


@dataclasses.dataclass
class ReadStream:
    """Per-open-file state for sequential detection."""

    next_offset: int = 0
    window: int = 0  # blocks
    ahead_end: int = 0  # read-ahead has been started for blocks below this index


@dataclasses.dataclass
class Stats:
    requests: int = 0
    bytes_fetched: int = 0
    bytes_served: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    decodes: int = 0  # whole fetches of gzip-encoded artifacts started
    fills: int = 0  # whole bodies (storage ignoring Range) streamed into the cache
    decode_failures: int = 0


@dataclasses.dataclass
class _Hashing:
    """Content hashes of an artifact being read from its start: blocks before `next_block`
    are in the hashers; `digests` once all are."""

    hashers: dict[str, Any]
    next_block: int = 0
    digests: dict[str, str] | None = None


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
        self.memory = memory
        self.disk = disk
        self.block_size = block_size
        self.max_decoded_size = max_decoded_size
        self.readahead_blocks = max(1, readahead_bytes // block_size)
        self.run_blocks = max(1, RUN_BYTES // block_size)
        self.stats = Stats()
        self._sizes: cachetools.LRUCache[str, int] = cachetools.LRUCache(SIZE_MEMO_ENTRIES)
        self._flight: SingleFlight[bytes] = SingleFlight()
        self._prefetch_limiter = trio.CapacityLimiter(PREFETCH_CONCURRENCY)
        self._write_queue: dict[str, bytes] = {}  # verified blocks waiting for the disk, by key
        self._writing: dict[str, bytes] = {}  # the batch a thread is writing now
        self._queued_bytes = 0
        self._writing_bytes = 0
        self._max_pending = max_pending_disk_bytes
        self._last_queued = 0.0
        self._writer_running = False
        self._sizing: SingleFlight[int] = SingleFlight()
        self._decoded: set[str] = set()  # artifacts stored encoded, served from decoded blocks
        # artifact key -> (trio time until which it is not decoded again, why), kept without its
        # traceback, which would hold the decoder
        self._decode_failures: cachetools.LRUCache[str, tuple[float, CiartfsError]] = cachetools.LRUCache(
            DECODE_FAILURES_KEPT)
        self._errors: dict[str, str] = {}
        # artifact key -> why its size could not be learned (trio's clock: tests may mock it)
        self._size_failures: cachetools.TTLCache[str, CiartfsError] = cachetools.TTLCache(
            SIZE_FAILURES_KEPT, SIZE_FAILURE_TTL, timer=lambda: trio.current_time())
        # content hashes (see _check_hashes): artifacts being hashed from their start, the
        # hashes their storage promised, those found right this mount, and those found wrong
        self._hashing: cachetools.LRUCache[str, _Hashing] = cachetools.LRUCache(HASHING_KEPT)
        self._expected: cachetools.LRUCache[str, dict[str, str]] = cachetools.LRUCache(HASHING_KEPT)
        self._expecting: SingleFlight[dict[str, str]] = SingleFlight()
        self._verified: cachetools.LRUCache[str, bool] = cachetools.LRUCache(SIZE_FAILURES_KEPT)
        # (kept for the mount's life, not for a while: the kernel may still hold the pages read
        # before the mismatch showed, so a later whole read would reach us for its end only)
        self._mismatched: cachetools.LRUCache[str, ContentMismatch] = cachetools.LRUCache(SIZE_FAILURES_KEPT)
        self.hash_checks = 0  # artifacts whose hashes were checked (right or wrong)
        self._background: trio.Nursery | None = None
        # growing files (live logs): streamed, never read by range (see livelog.py)
        self.live = LiveLogs(http.stream, timeout=http.timeout, max_size=max_decoded_size, spool_dir=live_spool_dir)
        # artifacts whose storage answered a ranged GET with the whole body
        self._range_ignored: cachetools.LRUCache[str, bool] = cachetools.LRUCache(RANGE_IGNORED_KEPT)
        self._fills: dict[str, _Fill] = {}  # by artifact key, while streaming
        self._probe_fills = 0

    def start(self, nursery: trio.Nursery) -> None:
        """Background work (disk writes, prefetch, live streams) runs in `nursery`; until then, none."""
        self._background = nursery
        self.live.start(nursery)
        if self.disk is not None:
            nursery.start_soon(trio.to_thread.run_sync, self.disk.load_index)

    # -- sizes ------------------------------------------------------------------------------

    async def size(self, art: Artifact) -> int:
        """The artifact's size in bytes, or the CiartfsError that says why it cannot be had (a
        failure is remembered for SIZE_FAILURE_TTL and raised again at once meanwhile)."""
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
            return await self._learn_size(art)
        except CiartfsError as e:
            self._size_failures[art.key] = again(e)  # without its traceback (and the frames it holds)
            raise

    async def _learn_size(self, art: Artifact) -> int:
        if not art.immutable:
            # A growing file (a running task's log): ask every time the tree asks.
            return await self._sizing.run(art.key, lambda: self._probe_mutable(art))
        known = self._sizes.get(art.key)
        if known is not None:
            return known
        if self.disk is not None and self.disk.might_have("size|" + art.key):
            raw = await trio.to_thread.run_sync(self.disk.get, "size|" + art.key)
            if raw is not None and raw.isdigit():
                self._sizes[art.key] = int(raw)
                return int(raw)
        if art.key in self._decoded:  # known to be stored encoded: a range probe would tell nothing
            return await self._load_decoded(art)
        block0_on_disk = self.disk is not None and self.disk.might_have(self._block_key(art, 0, None))
        if self._tail_first(art) and not block0_on_disk:
            await self._sizing.run(("tail", art.key), lambda: self._probe_tail(art))
        else:
            await self._block(art, 0, None)  # from disk, a short block 0 is the whole file: its size
        known = self._sizes.get(art.key)
        if known is None:  # block 0 came from disk but its size record did not
            known = await self._probe_mutable(art)
        return known

    def _tail_first(self, art: Artifact) -> bool:
        return (art.immutable and art.key not in self._decoded and art.key not in self._range_ignored
                and art.key.lower().endswith(TAIL_FIRST_SUFFIXES))

    async def _probe_tail(self, art: Artifact) -> int:
        """Learn an archive's size from a ranged GET of its last TAIL_BYTES, keeping the whole
        blocks in it: the reader's first reads (the index at the end) are then already here."""
        reply = await self.http.get_tail(art.url, max(TAIL_BYTES, self.block_size), credentials=art.credentialed)
        self.stats.requests += 1
        if reply.encoding is not None:
            return await self._load_decoded(art)
        self._remember_size(art, reply.total)
        self.stats.bytes_fetched += len(reply.data)
        bs = self.block_size
        first = -(-reply.start // bs)  # the first block wholly inside the reply
        view = memoryview(reply.data)
        for index in range(first, (reply.total - 1) // bs + 1 if reply.total else 0):
            lo = index * bs - reply.start
            block = bytes(view[lo:lo + min(bs, reply.total - index * bs)])
            key = self._block_key(art, index, reply.total)
            self.stats.misses += 1
            self.memory.put(key, block)
            self._write_behind(key, block)
        return reply.total

    async def _probe_mutable(self, art: Artifact) -> int:
        if art.key in self._decoded:
            return await self._load_decoded(art)
        reply = await self.http.get_range(art.url, 0, self.block_size, credentials=art.credentialed)
        self.stats.requests += 1
        if reply.encoding is not None:
            return await self._load_decoded(art)
        self._sizes[art.key] = reply.total
        self.memory.put(self._block_key(art, 0, reply.total), reply.data)
        return reply.total

    def _remember_size(self, art: Artifact, total: int) -> None:
        previous = self._sizes.get(art.key)
        if previous is not None and previous != total and art.immutable:
            raise UpstreamError(f"{redact_url(art.url)}: size changed from {previous} to {total} bytes")
        if previous != total:
            self._sizes[art.key] = total
            # A file shorter than a block is cached whole as block 0, whose length is then its
            # size: no size record (half the disk files for a build of small artifacts).
            if self.disk is not None and art.immutable and not 0 < total < self.block_size:
                self._write_behind("size|" + art.key, str(total).encode())

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
        if self.disk is None or not art.immutable or size <= 0:
            return 0
        bs = self.block_size
        keys = [(i, self._block_key(art, i, size)) for i in range((size - 1) // bs + 1)]
        # blocks still waiting for their disk write count: they are written at the latest at unmount
        present: list[int] = []
        unknown: list[tuple[int, str]] = []
        for i, k in keys:
            if k in self._write_queue or k in self._writing:
                present.append(i)
            else:
                unknown.append((i, k))
        present += await trio.to_thread.run_sync(lambda: [i for i, k in unknown if self.disk.contains(k)])  # type: ignore[union-attr]
        return sum(min(bs, size - i * bs) for i in present)

    # -- bytes ------------------------------------------------------------------------------

    def opened(self, art: Artifact, total: int) -> None:
        """A file was opened: start fetching what its reader will surely want first."""
        if (self._background is None or art.error or not art.immutable or art.key in self._decoded
                or total <= self.block_size or not art.key.lower().endswith(TAIL_FIRST_SUFFIXES)):
            return
        last = (total - 1) // self.block_size
        first = max(1, last + 1 - max(1, TAIL_BYTES // self.block_size))
        self._start_readahead(art, first, last + 1, total)

    async def read(self, art: Artifact, offset: int, length: int, stream: ReadStream | None = None,
                   total: int | None = None) -> bytes:
        """Exactly the bytes [offset, offset+length) clipped to the file, or an error.
        `total` is the size the caller showed the kernel (a growing file is read up to it)."""
        if art.error:
            raise UpstreamError(f"{redact_url(art.url)}: error artifact: {await self.error_reason(art)}")
        if art.gone is not None:
            raise ArtifactExpired(f"{redact_url(art.url)}: {art.gone}")
        if total is None:
            total = await self.size(art)
        checked = art.expected_hashes is not None and art.immutable
        if checked and art.key in self._mismatched:  # (logged when found: raised quietly since)
            raise ContentMismatch(str(self._mismatched[art.key]), reported=True)
        if offset >= total or length <= 0:
            return b""
        end = min(offset + length, total)
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        if stream is not None:
            self._plan_readahead(art, stream, offset, end, last, total)
        if first == last:
            block = await self._checked_block(art, first, total)
            data = block[offset - first * bs:end - first * bs]
            if checked:
                await self._check_hashes(art, first, [block], total)
        else:
            blocks: list[bytes] = [b""] * (last - first + 1)
            failures: list[CiartfsError] = []

            async def fetch(i: int) -> None:
                try:
                    blocks[i - first] = await self._checked_block(art, i, total)
                except CiartfsError as e:  # one error for the kernel, not an ExceptionGroup
                    failures.append(e)

            async with trio.open_nursery() as nursery:
                for i in range(first, last + 1):
                    nursery.start_soon(fetch, i)
            if failures:
                raise failures[0]
            if checked:
                await self._check_hashes(art, first, blocks, total)
            data = b"".join(blocks)[offset - first * bs:end - first * bs]
        if len(data) != end - offset:  # defence in depth: a short reply would be zero-padded
            raise UpstreamError(f"internal: assembled {len(data)} of {end - offset} bytes")
        self.stats.bytes_served += len(data)
        return data

    # -- content hashes -------------------------------------------------------------------------

    async def _check_hashes(self, art: Artifact, first: int, blocks: list[bytes], total: int) -> None:
        """Feed the blocks a read got (and those after them still in memory) to the artifact's
        hashers when they continue from its start; once all its blocks went in, compare with
        the hashes the storage promised. A mismatch fails this read, and every later read of
        the artifact while the mount lives (objects are immutable: it will not come right),
        with ContentMismatch (EIO), logged once; its blocks are dropped from both caches.
        The feeding never awaits, so concurrent reads feed in block order.
        Not checked: an artifact read out of order before all of it was read from its start
        (random ranged reads of a large object), and one whose blocks were evicted from memory
        between the reads that fetched them and the one that continues the hashing."""
        key = art.key
        if key in self._verified or total <= 0:
            return
        state = self._hashing.get(key)
        if state is None:
            if first != 0:
                return  # not read from its start (yet)
            state = self._hashing[key] = _Hashing({name: hashlib.new(name) for name in HASH_ALGORITHMS})
        bs = self.block_size
        count = (total - 1) // bs + 1
        extra = HASH_AHEAD_BLOCKS  # bounded work per read: at most this many blocks from memory
        while state.digests is None and state.next_block < count:
            index = state.next_block
            if first <= index < first + len(blocks):
                block = blocks[index - first]
            else:
                cached = self.memory.get(self._block_key(art, index, total)) if extra > 0 else None
                if cached is None:
                    break
                block, extra = cached, extra - 1
            for hasher in state.hashers.values():
                hasher.update(block)
            state.next_block += 1
        if state.next_block == count and state.digests is None:
            state.digests = {name: hasher.hexdigest() for name, hasher in state.hashers.items()}
        if state.digests is None:
            return
        digests = state.digests
        try:
            expected = await self._expected_hashes(art)
        except Offline as e:
            log.info("%s: content hashes not checked: %s", redact_url(art.url), e)
            return
        self._hashing.pop(key, None)
        self.hash_checks += 1
        wrong = sorted(name for name, value in expected.items() if name in digests and digests[name] != value)
        if not wrong:
            if not any(name in digests for name in expected):
                log.info("%s: no content hash we know in %s: not checked", redact_url(art.url), sorted(expected))
            self._verified[key] = True
            return
        if key in self._mismatched:  # a concurrent read found it first
            raise ContentMismatch(str(self._mismatched[key]), reported=True)
        self._mismatched[key] = ContentMismatch(
            f"{redact_url(art.url)}: content hash mismatch ({', '.join(wrong)}) over all {total} bytes read: "
            f"not served; its cached blocks dropped", reported=True)
        await self._drop_blocks(art, count, total)
        raise ContentMismatch(str(self._mismatched[key]))

    async def _drop_blocks(self, art: Artifact, count: int, total: int) -> None:
        """Forget an artifact's blocks in memory, in the disk write queue and on disk (also
        those a batch is writing now: dropped again once it is done)."""
        keys = [self._block_key(art, index, total) for index in range(count)]
        for block_key in keys:
            self.memory.discard(block_key)
            data = self._write_queue.pop(block_key, None)
            if data is not None:
                self._queued_bytes -= len(data)
                self.http.budget.give(len(data))
        if self.disk is None:
            return
        disk = self.disk
        await trio.to_thread.run_sync(lambda: [disk.discard(k) for k in keys])
        with trio.move_on_after(DROP_WAIT_SECONDS):
            while any(k in self._writing for k in keys):
                await trio.sleep(0.05)
            await trio.to_thread.run_sync(lambda: [disk.discard(k) for k in keys])

    async def _expected_hashes(self, art: Artifact) -> dict[str, str]:
        known = self._expected.get(art.key)
        if known is not None:
            return known
        assert art.expected_hashes is not None

        async def fetch() -> dict[str, str]:
            assert art.expected_hashes is not None
            hashes = dict(await art.expected_hashes())
            self._expected[art.key] = hashes
            return hashes
        return await self._expecting.run(art.key, fetch)

    async def _checked_block(self, art: Artifact, index: int, total: int) -> bytes:
        block = await self._block(art, index, total)
        expected = min(self.block_size, total - index * self.block_size)
        if len(block) > expected and not art.immutable:
            block = block[:expected]  # the file grew since its size was shown: serve up to that
        if len(block) != expected:
            raise UpstreamError(f"{redact_url(art.url)}: block {index} has {len(block)} bytes, expected {expected}")
        return block

    def _block_key(self, art: Artifact, index: int, total: int | None) -> str:
        key = f"{art.key}|{self.block_size}|{index}"
        if not art.immutable and art.key not in self._decoded:
            key += f"|{total}"  # a growing file's blocks are only valid for one size
        return key

    async def _block(self, art: Artifact, index: int, total: int | None) -> bytes:
        key = self._block_key(art, index, total)
        hit = self.memory.get(key)
        if hit is not None:
            self.stats.memory_hits += 1
            return hit
        return await self._flight.run(key, lambda: self._load(art, index, key, probe=total is None))

    async def _load(self, art: Artifact, index: int, key: str, *, probe: bool = False) -> bytes:
        if art.key in self._decoded:
            return await self._decoded_block(art, index)
        if self.disk is not None and art.immutable and self.disk.might_have(key):
            data = await trio.to_thread.run_sync(self.disk.get, key)
            if data is not None:
                self.stats.disk_hits += 1
                self.memory.put(key, data)
                if index == 0 and len(data) < self.block_size:
                    self._sizes.setdefault(art.key, len(data))  # the whole file (see _remember_size)
                return data
        self.stats.misses += 1
        if art.key in self._range_ignored and self._can_fill(art, self._sizes.get(art.key)):
            data = await self._from_fill(art, index)
            if data is not None:
                return data
        self.stats.requests += 1
        reply = await self.http.get_range(art.url, index * self.block_size, self.block_size,
                                           credentials=art.credentialed,
                                           take_whole=self._can_fill(art, self._sizes.get(art.key)))
        if reply.whole is not None:
            self._range_ignored[art.key] = True
            data = await self._from_fill(art, index, reply, probe=probe)
            if data is not None:
                return data
            self.stats.requests += 1  # (stored, then evicted at once: the cache is too small)
            reply = await self.http.get_range(art.url, index * self.block_size, self.block_size,
                                               credentials=art.credentialed)
        if reply.encoding is not None:
            self._decoded.add(art.key)
            return await self._decoded_block(art, index)
        self._remember_size(art, reply.total)
        self.stats.bytes_fetched += len(reply.data)
        self.memory.put(key, reply.data)
        if art.immutable:
            self._write_behind(key, reply.data)
        return reply.data

    # -- gzip-encoded storage -----------------------------------------------------------------

    async def _decoded_block(self, art: Artifact, index: int) -> bytes:
        """A block of a decoded artifact: from the disk cache (or, without one, the memory
        LRU); when it is not there (never decoded, or evicted since), decode the whole again."""
        key = self._block_key(art, index, None)  # (a growing file's decoded blocks carry no size)
        for attempt in range(2):
            if self.disk is not None and self.disk.might_have(key):
                data = await trio.to_thread.run_sync(self.disk.get, key)
                if data is not None:
                    self.stats.disk_hits += 1
                    self.memory.put(key, data)
                    return data
            data = self.memory.get(key)
            if data is not None:
                self.stats.memory_hits += 1
                return data
            if attempt == 1:
                break
            total = await self._load_decoded(art)
            if index > 0 and index * self.block_size >= total:
                raise UpstreamError(f"{redact_url(art.url)}: block {index} is past the decoded end ({total} bytes)")
        raise UpstreamError(f"{redact_url(art.url)}: block {index} of the decoded file was evicted as soon as it "
                            f"was stored (the cache is too small for it)")

    async def _load_decoded(self, art: Artifact) -> int:
        """Fetch a Content-Encoding: gzip artifact whole and store its decoded blocks; Range
        and sizes on such storage count compressed bytes, so they cannot serve reads."""
        return await self._sizing.run(("decode", art.key), lambda: self._decode_into_cache(art))

    async def _decode_into_cache(self, art: Artifact) -> int:
        self._decoded.add(art.key)
        failed = self._decode_failures.get(art.key)
        if failed is not None:
            until, error = failed
            left = until - trio.current_time()
            if left > 0:  # same class (errno); a short line: a cap was logged when it was hit
                raise type(error)(f"{error} (failed recently; not tried again for {left:.0f}s)")
            del self._decode_failures[art.key]
        disk = self.disk if self.disk is not None and self.disk.enabled else None
        if disk is not None:
            # Half the disk cache at most: the eviction its own writes cause must never reach it.
            limit, limit_reason = min((self.max_decoded_size, "--max-decoded-size"),
                                      (disk.max_bytes // 2, "half of --cache-size"))
        else:
            limit, limit_reason = min((self.max_decoded_size, "--max-decoded-size"),
                                      (self.memory.max_bytes // MEMORY_ONLY_DECODE_SHARE,
                                       "no disk cache: a quarter of --memory-cache"))
        attempts: list[_BlockDecoder] = []

        def block_key(index: int) -> str:
            return self._block_key(art, index, None)

        async def consume(chunks: AsyncIterator[bytes], encoding: str | None) -> int:
            if encoding not in _ENCODINGS:
                raise _BadStream(f"unsupported Content-Encoding {encoding!r}")
            decoder = _BlockDecoder(encoding, self.block_size, block_key, disk, limit, limit_reason)
            attempts.append(decoder)
            async for chunk in chunks:
                self.stats.bytes_fetched += len(chunk)
                await trio.to_thread.run_sync(decoder.feed, chunk)
            size_key = "size|" + art.key if art.immutable else None
            return await trio.to_thread.run_sync(decoder.finish, size_key)

        self.stats.decodes += 1
        url = redact_url(art.url)
        try:
            total = await self.http.fetch_whole(art.url, consume, timeout=self.http.timeout * WHOLE_FETCH_TIMEOUT_FACTOR,
                                                credentials=art.credentialed)
        except trio.Cancelled:
            raise  # (blocks stored so far are correct; a later decode rewrites them)
        except BaseException as e:
            error: CiartfsError
            ttl = DECODE_FAILURE_TTL
            if isinstance(e, _DecodeCapped):
                # The one line with the details: every failing request logs the error it raised,
                # and that says no more than this.
                log.warning("%s: gzip decoding stopped: %s; reads fail with EIO for %.0fs", url, e, ttl)
                error = UpstreamError(f"{url}: over a gzip decoding cap ({e.cap}; see the log)")
            elif isinstance(e, (_BadStream, zlib.error)):
                error = UpstreamError(f"{url}: the gzip body is corrupt or truncated ({str(e) or 'no end of stream'})")
            elif isinstance(e, _NoRoom):
                error, ttl = UpstreamError(f"{url}: cannot keep the decoded file: {e}"), DECODE_TRANSPORT_FAILURE_TTL
            elif isinstance(e, CiartfsError):  # the fetch failed (timeout, 5xx, expired): soon tried again
                error, ttl = e, DECODE_TRANSPORT_FAILURE_TTL
            else:
                raise
            self.stats.decode_failures += 1
            self._decode_failures[art.key] = (trio.current_time() + ttl, again(error))
            with trio.CancelScope(shield=True):
                for decoder in attempts:
                    await trio.to_thread.run_sync(decoder.discard)
            if error is e:
                raise
            raise error from None
        decoder = attempts[-1]
        if decoder.held is not None:  # no disk cache: the blocks go to the memory LRU
            for index, block in enumerate(decoder.held):
                self.memory.put(block_key(index), block)
        elif not art.immutable:  # a growing file decoded again: drop stale copies of its blocks
            for index in range(decoder.blocks):
                self.memory.discard(block_key(index))
        log.info("decoded %s: %d bytes from %d", url, total, decoder.compressed)
        self._sizes[art.key] = total
        return total

    # -- background work ----------------------------------------------------------------------

    def _write_behind(self, key: str, data: bytes) -> None:
        """Queue a verified block for the disk cache. One writer drains the queue in batches, one
        thread hop per batch: a hop per block cost more CPU than the HTTP request that got it."""
        if self.disk is None or self._background is None:
            return
        if key in self._write_queue:
            return
        if self._queued_bytes + self._writing_bytes + len(data) > self._max_pending or not self.http.budget.try_take(len(data)):
            log.debug("disk cache: write queue full, %s stays in memory only", key)
            return
        self._write_queue[key] = data
        self._queued_bytes += len(data)
        self._last_queued = trio.current_time()
        if not self._writer_running:
            self._writer_running = True
            self._background.start_soon(self._drain_writes)

    async def flush_writes(self) -> None:
        """At unmount: write what is still queued (at most MAX_PENDING_DISK_BYTES)."""
        if self.disk is not None and self._write_queue:
            batch, self._write_queue, queued, self._queued_bytes = self._write_queue, {}, self._queued_bytes, 0
            disk = self.disk
            try:
                await trio.to_thread.run_sync(lambda: [disk.put(k, d) for k, d in batch.items()])
            finally:
                self.http.budget.give(queued)

    async def _drain_writes(self) -> None:
        disk = self.disk
        assert disk is not None
        try:
            while self._write_queue:
                while self._queued_bytes < min(WRITE_BATCH_BYTES, self._max_pending // 2):
                    quiet_at = self._last_queued + WRITE_SETTLE_SECONDS
                    if trio.current_time() >= quiet_at:
                        break
                    await trio.sleep_until(quiet_at)
                batch, self._write_queue = self._write_queue, {}
                self._writing_bytes, self._queued_bytes = self._queued_bytes, 0  # held until written
                self._writing = batch

                def write_all(batch: dict[str, bytes] = batch) -> None:
                    for key, data in batch.items():
                        disk.put(key, data)

                try:
                    await trio.to_thread.run_sync(write_all)
                except trio.Cancelled:
                    # Cancelled before the thread ran (unmount): the batch goes back for flush_writes.
                    self._write_queue = {**batch, **self._write_queue}
                    self._queued_bytes += self._writing_bytes
                    self._writing_bytes = 0
                    raise
                except Exception:  # the disk cache is an optimisation: never let it kill the mount
                    log.exception("disk cache: write failed")
                finally:
                    self._writing = {}
                    self.http.budget.give(self._writing_bytes)
                    self._writing_bytes = 0
        finally:
            self._writer_running = False

    def _plan_readahead(self, art: Artifact, stream: ReadStream, offset: int, end: int, last: int, total: int) -> None:
        if offset > 0 and (offset == stream.next_offset or self._skipped_only_cached(art, stream.next_offset, offset, total)):
            stream.window = min(max(1, stream.window * 2), self.readahead_blocks)
        elif offset != stream.next_offset:
            stream.window = 0
            stream.ahead_end = 0
        stream.next_offset = end
        if self._background is None or stream.window == 0:
            return
        # Top up only once half the window is consumed, so that requests go out in runs
        # rather than one block per read.
        start = max(stream.ahead_end, last + 1)
        if stream.ahead_end - (last + 1) >= stream.window // 2 and stream.ahead_end > last + 1:
            return
        stop = min(last + 1 + stream.window, (total - 1) // self.block_size + 1)
        if start >= stop:
            return
        stream.ahead_end = stop
        self._start_readahead(art, start, stop, total)

    def _skipped_only_cached(self, art: Artifact, lo: int, hi: int, total: int) -> bool:
        """A jump forward over bytes we hold or are fetching is still sequential reading: the
        kernel serves from its page cache what another reader of the file (16 `sha256sum`s of
        one cold file) or an earlier read brought in, so those reads never reach us."""
        bs = self.block_size
        if not lo < hi or hi - lo > self.readahead_blocks * bs:
            return False
        for index in range(lo // bs, (hi - 1) // bs + 1):
            key = self._block_key(art, index, total)
            if key not in self.memory and not self._flight.in_flight(key):
                return False
        return True

    def _start_readahead(self, art: Artifact, start: int, stop: int, total: int) -> None:
        """Fetch blocks [start, stop) in the background: the missing ones in runs of up to
        `run_blocks`, one ranged GET each; blocks the disk may have are read from it."""
        assert self._background is not None
        if art.key in self._range_ignored and self._can_fill(art, total):
            return  # every block comes with the one whole body (see _Fill)
        coalesce = art.immutable and art.key not in self._decoded
        run: list[tuple[int, str, Any]] = []
        for index in range(start, stop):
            key = self._block_key(art, index, total)
            if key in self.memory or self._flight.in_flight(key):
                self._start_run(art, run, total)
                run = []
                continue
            if not coalesce or (self.disk is not None and self.disk.might_have(key)):
                self._start_run(art, run, total)
                run = []
                self._background.start_soon(self._prefetch, art, index, total)
                continue
            call = self._flight.claim(key)
            assert call is not None  # not in flight: checked above, and nothing awaited since
            run.append((index, key, call))
            if len(run) == self.run_blocks:
                self._start_run(art, run, total)
                run = []
        self._start_run(art, run, total)

    def _start_run(self, art: Artifact, run: list[tuple[int, str, Any]], total: int) -> None:
        if run:
            assert self._background is not None
            self._background.start_soon(self._prefetch_run, art, run, total)

    async def _prefetch(self, art: Artifact, index: int, total: int) -> None:
        try:
            async with self._prefetch_limiter:
                await self._block(art, index, total)
        except CiartfsError as e:
            log.debug("prefetch of block %d failed: %s", index, e)
        except Exception:
            log.exception("prefetch of block %d failed", index)

    async def _prefetch_run(self, art: Artifact, run: list[tuple[int, str, Any]], total: int) -> None:
        """Fetch consecutive missing blocks with one ranged GET and settle each block's
        claimed flight: readers waiting for one of them get it as soon as the run lands."""
        bs = self.block_size
        first = run[0][0]
        try:
            async with self._prefetch_limiter:
                self.stats.misses += len(run)
                self.stats.requests += 1
                reply = await self.http.get_range(art.url, first * bs, len(run) * bs, credentials=art.credentialed)
            if reply.encoding is not None:
                self._decoded.add(art.key)
                return  # abandoned: a reader's own fetch of the block decodes the whole
            self._remember_size(art, reply.total)
            self.stats.bytes_fetched += len(reply.data)
            view = memoryview(reply.data)
            for index, key, call in run:
                block = bytes(view[(index - first) * bs:(index - first + 1) * bs])
                expected = min(bs, reply.total - index * bs)
                if len(block) != expected:
                    raise UpstreamError(f"{redact_url(art.url)}: block {index} has {len(block)} bytes, expected {expected}")
                self.memory.put(key, block)
                self._write_behind(key, block)
                self._flight.settle(key, call, result=block)
        except CiartfsError as e:
            log.debug("prefetch of blocks %d-%d failed: %s", first, run[-1][0], e)
            for _, key, call in run:
                self._flight.settle(key, call, error=e)
        except Exception:
            log.exception("prefetch of blocks %d-%d failed", first, run[-1][0])
        finally:
            for _, key, call in run:  # whatever is left (cancelled, encoded) is abandoned
                self._flight.settle(key, call)

    # -- storage that ignores Range -------------------------------------------------------------

    def _can_fill(self, art: Artifact, total: int | None) -> bool:
        """Whether a whole body of this artifact (of `total` bytes, if known) may stream into the cache."""
        if not art.immutable or art.key in self._decoded or self._background is None:
            return False
        return total is None or self._fill_fits(total)

    def _fill_fits(self, total: int) -> bool:
        if self.disk is not None and self.disk.enabled:
            return True
        return total <= self.memory.max_bytes // MEMORY_ONLY_DECODE_SHARE

    async def _from_fill(self, art: Artifact, index: int, reply: RangeReply | None = None, *,
                         probe: bool = False) -> bytes | None:
        """Block `index` from the artifact's whole body: the one streaming now, or one started
        from `reply.whole` (which this takes over) or fetched anew. None when it could not be
        had that way (the fill ended before it without an error): the caller asks by range."""
        whole = reply.whole if reply is not None else None
        try:
            fill = self._fills.get(art.key)
            if fill is not None and index >= fill.blocks:  # a probe's short fill: wait it out
                await fill.wait_for(fill.blocks)
                fill = self._fills.get(art.key)
            if fill is None:
                total = reply.total if reply is not None else self._sizes.get(art.key)
                if total is None:
                    return None
                if reply is not None:
                    self._remember_size(art, total)  # (a changed size fails here: nothing stored)
                blocks = max(1, -(-total // self.block_size))
                upto = blocks
                if whole is not None and (not self._fill_fits(total) or (probe and self._probe_fills >= PROBE_FILLS)):
                    upto = min(blocks, index + 1)  # up to this block, then stop
                fill = _Fill(total, upto)
                self._fills[art.key] = fill
                probe_fill = probe and upto == blocks
                self._probe_fills += probe_fill  # counted at once: the next probe may come before it starts
                assert self._background is not None
                self._background.start_soon(self._run_fill, art, fill, whole, probe_fill)
                whole = None  # the fill owns it now
            await fill.wait_for(index)
        finally:
            if whole is not None:  # another fill already streams this artifact
                with trio.CancelScope(shield=True):
                    await whole.aclose()
        if fill.stored > index:
            key = self._block_key(art, index, fill.total)
            data = self.memory.get(key)
            if data is None and self.disk is not None and self.disk.might_have(key):
                data = await trio.to_thread.run_sync(self.disk.get, key)
                if data is not None:
                    self.memory.put(key, data)
            if data is not None:
                return data
        if fill.error is not None:
            raise again(fill.error)
        return None

    async def _run_fill(self, art: Artifact, fill: _Fill, whole: WholeBody | None, probe: bool) -> None:
        """Stream the artifact's whole body into the cache (see _Fill), starting from `whole`
        when given; a cut body is fetched again, from a GET whose Content-Length is checked."""
        url = redact_url(art.url)
        self.stats.fills += 1
        held = 0
        try:
            held = await self.http.budget.take(self._fill_batch_bytes() + 2 * self.block_size + READ_SIZE)
            cuts = 0
            with trio.fail_after(self.http.timeout * WHOLE_FETCH_TIMEOUT_FACTOR):
                while True:
                    if whole is None:
                        self.stats.requests += 1
                        reply = await self.http.get_range(art.url, 0, self.block_size, credentials=art.credentialed,
                                                          take_whole=True)
                        if reply.whole is None:  # storage honours Range now: blocks are fetched by range
                            self._range_ignored.pop(art.key, None)
                            return
                        whole = reply.whole
                        if reply.total != fill.total:
                            raise UpstreamError(f"{url}: size changed from {fill.total} to {reply.total} bytes")
                    try:
                        await self._stream_into(art, fill, whole.chunks())
                        return
                    except BodyCut as e:
                        cuts += 1
                        if cuts >= FILL_CUTS_TRIED:
                            raise
                        log.info("%s; fetching it again", e)
                    finally:
                        with trio.CancelScope(shield=True):
                            await whole.aclose()
                        whole = None
        except trio.TooSlowError:
            fill.finish(UpstreamTimeout(f"{url}: the whole body did not arrive within "
                                        f"{self.http.timeout * WHOLE_FETCH_TIMEOUT_FACTOR:g}s"))
        except CiartfsError as e:
            log.info("%s: whole body not cached: %s", url, e)
            fill.finish(again(e))
        except Exception:
            log.exception("%s: whole body not cached", url)
            fill.finish(UpstreamError(f"{url}: internal error caching the whole body"))
        finally:
            if whole is not None:
                with trio.CancelScope(shield=True):
                    await whole.aclose()
            if held:
                self.http.budget.give(held)
            self._probe_fills -= probe
            if self._fills.get(art.key) is fill:
                del self._fills[art.key]
            fill.finish()  # waiters wake (a cancelled fill leaves them to ask by range)

    async def _stream_into(self, art: Artifact, fill: _Fill, chunks: AsyncIterator[bytes]) -> None:
        """Cut the body into blocks and store blocks [fill.stored, fill.blocks)."""
        bs, total = self.block_size, fill.total
        batch_limit = self._fill_batch_bytes()
        pending = bytearray()
        batch: list[tuple[str, bytes]] = []
        batch_bytes = 0
        index = 0  # the next block to complete
        pos = 0
        try:
            async for chunk in chunks:
                pos += len(chunk)
                self.stats.bytes_fetched += len(chunk)
                if pos > total:  # (a Content-Length frames the body: a defence only)
                    raise UpstreamError(f"{redact_url(art.url)}: body longer than its {total} bytes")
                pending += chunk
                while index < fill.blocks and len(pending) >= min(bs, total - index * bs):
                    need = min(bs, total - index * bs)
                    if index >= fill.stored:
                        batch.append((self._block_key(art, index, total), bytes(pending[:need])))
                        batch_bytes += need
                    del pending[:need]
                    index += 1
                # a batch at a time; at once when it holds a block a reader waits for
                if batch and (batch_bytes >= batch_limit or index >= fill.blocks or index > fill.wanted >= fill.stored):
                    await self._store_fill(fill, batch, index)
                    batch, batch_bytes = [], 0
                if index >= fill.blocks:
                    return  # (a probe's short fill drops the rest of the body)
        except BodyCut:
            if batch:  # its blocks arrived whole before the cut
                await self._store_fill(fill, batch, index)
            raise
        if total == 0 and fill.stored == 0:
            await self._store_fill(fill, [(self._block_key(art, 0, 0), b"")], 1)
            return
        raise BodyCut(f"{redact_url(art.url)}: short body: {pos} of {total} bytes")

    def _fill_batch_bytes(self) -> int:
        """A fill's batch: FILL_BATCH_BYTES, less under a small --max-inflight-memory."""
        return max(self.block_size, min(FILL_BATCH_BYTES, self.http.budget.limit // 4))

    async def _store_fill(self, fill: _Fill, batch: list[tuple[str, bytes]], stored: int) -> None:
        disk = self.disk if self.disk is not None and self.disk.enabled else None
        refused = batch
        if disk is not None:
            def put_all() -> list[tuple[str, bytes]]:
                return [(key, data) for key, data in batch if not disk.put(key, data)]
            try:
                refused = await trio.to_thread.run_sync(put_all)
            except Exception:  # the disk cache is an optimisation
                log.exception("disk cache: write failed")
        for key, data in refused:  # no disk cache, or it is full: the memory LRU
            self.memory.put(key, data)
        fill.advance(stored)
