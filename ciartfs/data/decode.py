"""Decoded-whole files: storage that keeps an artifact gzip/deflate-encoded (Taskcluster logs).

Such storage counts Range and sizes in compressed bytes, so the artifact is fetched whole and
decoded once, before its size is answered (a size shown must be the decoded one). Its blocks
are then served from the cache under the artifact's own keys (blocks.py), never by range.

Invariants:
- Decoding runs in worker threads in block-sized steps (`BlockDecoder`), so memory stays at a
  few blocks plus a network chunk and the trio thread keeps answering whatever the stream.
- Each decoded block goes straight to the disk cache, never to the memory LRU, which could
  evict it mid-decode; the decoded size is recorded after the last block. Without a disk cache
  only a file that fits MEMORY_ONLY_DECODE_SHARE of the memory cache is decoded (held, then put
  in memory at the end); larger ones fail with EIO.
- Decoded output is capped: --max-decoded-size, half the disk cache (the eviction its own
  writes cause must never reach it), and a compression-ratio cap for bombs; a bomb stops within
  a block of a cap.
- A failed decode leaves no block behind and is remembered (trio's clock) for
  DECODE_FAILURE_TTL (a bad or hostile stream) or DECODE_TRANSPORT_FAILURE_TTL (the fetch
  failed), instead of being repeated on every access.
- One decode per artifact at a time (single flight).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Callable

import cachetools
import trio

from ciartfs.data.blocks import Blocks, size_key
from ciartfs.data.cache import DiskStore, SingleFlight
from ciartfs.errors import CiartfsError, UpstreamError, again, redact_url
from ciartfs.namespace.model import Artifact

log = logging.getLogger(__name__)

# A gzip-encoded artifact (or a whole body, fill.py) must be fetched whole: it gets this many
# operation timeouts.
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
ENCODINGS = (None, "gzip", "x-gzip", "deflate")


class BadStream(Exception):
    """The encoded body is not a whole, valid stream of a supported encoding."""


class DecodeCapped(Exception):
    """Decoding stopped at a cap: `cap` names it, the message gives the numbers."""

    def __init__(self, message: str, cap: str) -> None:
        super().__init__(message)
        self.cap = cap


class NoRoom(Exception):
    """The decoded blocks could not be stored (disk cache full, or too large without one)."""


class BlockDecoder:
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
                raise BadStream()
        total = self.decoded
        if self.pending or total == 0:
            self._store(bytes(self.pending))
            self.pending.clear()
        if self.disk is not None and size_key is not None and not self.disk.put(size_key, str(total).encode()):
            raise NoRoom("the disk cache cannot store the decoded size")
        return total

    def discard(self) -> None:
        """Remove the blocks stored so far (a failed decode leaves nothing behind)."""
        if self.disk is not None:
            self.disk.discard_many([self.block_key(index) for index in range(self.blocks)])
        self.held = [] if self.held is not None else None

    def _take(self, out: bytes, consumed: int) -> None:
        self.decoded += len(out)
        if self.decoded > self.limit:
            raise DecodeCapped(f"decoded size exceeds {self.limit} bytes ({self.limit_reason})", self.limit_reason)
        if self.decoded > DECODE_RATIO_AFTER and self.decoded > MAX_DECODE_RATIO * max(consumed, 1):
            raise DecodeCapped(f"{self.decoded} bytes decoded from {consumed}: more than {MAX_DECODE_RATIO}:1, "
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
            raise NoRoom("the disk cache cannot store the decoded blocks (full or failing)")
        self.blocks += 1


class WholeDecoder:
    """Fetches encoded artifacts whole and serves their decoded blocks (see the module docstring)."""

    def __init__(self, blocks: Blocks, max_decoded_size: int) -> None:
        self.blocks = blocks
        self.max_decoded_size = max_decoded_size
        self._decoding: SingleFlight[int] = SingleFlight()
        # artifact key -> (trio time until which it is not decoded again, why), kept without its
        # traceback, which would hold the decoder
        self._failures: cachetools.LRUCache[str, tuple[float, CiartfsError]] = cachetools.LRUCache(DECODE_FAILURES_KEPT)

    def known(self, art: Artifact) -> bool:
        """The artifact was found stored encoded (its blocks are decoded ones)."""
        return art.key in self.blocks.decoded

    async def block(self, art: Artifact, index: int) -> bytes:
        """A block of a decoded artifact: from the disk cache (or, without one, the memory
        LRU); when it is not there (never decoded, or evicted since), decode the whole again."""
        b = self.blocks
        key = b.key(art, index, None)  # (a growing file's decoded blocks carry no size)
        for attempt in range(2):
            data = await b.from_disk(key)
            if data is not None:
                return data
            data = b.memory.get(key)
            if data is not None:
                b.stats.memory_hits += 1
                return data
            if attempt == 1:
                break
            total = await self.load(art)
            if index > 0 and index * b.block_size >= total:
                raise UpstreamError(f"{redact_url(art.url)}: block {index} is past the decoded end ({total} bytes)")
        raise UpstreamError(f"{redact_url(art.url)}: block {index} of the decoded file was evicted as soon as it "
                            f"was stored (the cache is too small for it)")

    async def load(self, art: Artifact) -> int:
        """Fetch a Content-Encoding: gzip artifact whole and store its decoded blocks; its size."""
        return await self._decoding.run(art.key, lambda: self._decode_into_cache(art))

    async def _decode_into_cache(self, art: Artifact) -> int:
        b = self.blocks
        b.decoded.add(art.key)
        failed = self._failures.get(art.key)
        if failed is not None:
            until, why = failed
            left = until - trio.current_time()
            if left > 0:  # same class (errno); a short line: a cap was logged when it was hit
                raise type(why)(f"{why} (failed recently; not tried again for {left:.0f}s)")
            del self._failures[art.key]
        disk = b.disk if b.disk is not None and b.disk.enabled else None
        if disk is not None:
            # Half the disk cache at most: the eviction its own writes cause must never reach it.
            limit, limit_reason = min((self.max_decoded_size, "--max-decoded-size"),
                                      (disk.max_bytes // 2, "half of --cache-size"))
        else:
            limit, limit_reason = min((self.max_decoded_size, "--max-decoded-size"),
                                      (b.memory.max_bytes // MEMORY_ONLY_DECODE_SHARE,
                                       "no disk cache: a quarter of --memory-cache"))
        attempts: list[BlockDecoder] = []

        def block_key(index: int) -> str:
            return b.key(art, index, None)

        async def consume(chunks: AsyncIterator[bytes], encoding: str | None) -> int:
            if encoding not in ENCODINGS:
                raise BadStream(f"unsupported Content-Encoding {encoding!r}")
            decoder = BlockDecoder(encoding, b.block_size, block_key, disk, limit, limit_reason)
            attempts.append(decoder)
            async for chunk in chunks:
                b.stats.bytes_fetched += len(chunk)
                await trio.to_thread.run_sync(decoder.feed, chunk)
            return await trio.to_thread.run_sync(decoder.finish, size_key(art) if art.immutable else None)

        b.stats.decodes += 1
        url = redact_url(art.url)
        try:
            total = await b.http.fetch_whole(art.url, consume, timeout=b.http.timeout * WHOLE_FETCH_TIMEOUT_FACTOR,
                                             credentials=art.credentialed)
        except trio.Cancelled:
            raise  # (blocks stored so far are correct; a later decode rewrites them)
        except BaseException as e:
            error: CiartfsError
            ttl = DECODE_FAILURE_TTL
            if isinstance(e, DecodeCapped):
                # The one line with the details: every failing request logs the error it raised,
                # and that says no more than this.
                log.warning("%s: gzip decoding stopped: %s; reads fail with EIO for %.0fs", url, e, ttl)
                error = UpstreamError(f"{url}: over a gzip decoding cap ({e.cap}; see the log)")
            elif isinstance(e, (BadStream, zlib.error)):
                error = UpstreamError(f"{url}: the gzip body is corrupt or truncated ({str(e) or 'no end of stream'})")
            elif isinstance(e, NoRoom):
                error, ttl = UpstreamError(f"{url}: cannot keep the decoded file: {e}"), DECODE_TRANSPORT_FAILURE_TTL
            elif isinstance(e, CiartfsError):  # the fetch failed (timeout, 5xx, expired): soon tried again
                error, ttl = e, DECODE_TRANSPORT_FAILURE_TTL
            else:
                raise
            b.stats.decode_failures += 1
            self._failures[art.key] = (trio.current_time() + ttl, again(error))
            with trio.CancelScope(shield=True):
                for decoder in attempts:
                    await trio.to_thread.run_sync(decoder.discard)
            if error is e:
                raise
            raise error from None
        decoder = attempts[-1]
        if decoder.held is not None:  # no disk cache: the blocks go to the memory LRU
            for index, block in enumerate(decoder.held):
                b.memory.put(block_key(index), block)
        elif not art.immutable:  # a growing file decoded again: drop stale copies of its blocks
            for index in range(decoder.blocks):
                b.memory.discard(block_key(index))
        log.info("decoded %s: %d bytes from %d", url, total, decoder.compressed)
        b.sizes[art.key] = total
        return total
