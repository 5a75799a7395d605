"""The URL sources (`RANGED`, `TAIL_FIRST`): an artifact's URL serves its bytes by Range.

A file's size is learned by fetching its first PROBE_BYTES (a ranged GET whose `Content-Range`
names the total), not a whole block: `ls -l` of large files costs 16 KiB each, not 128. (A file
being opened fetches its block 0 instead, which its first read wants: `cat` and `grep -r` make
one request for it, not two.) What it
brought is kept: a file that fits it is block 0, whole (so `grep -r` over small files reads
them from the cache); a larger file's head waits (bounded, HEAD_BYTES_KEPT in all) for its
first read, which then fetches only the rest of block 0. Never HEAD: presigned storage URLs
answer HEAD with 403. An archive indexed at its end (`TAIL_FIRST`)
learns its size from a ranged GET of its last TAIL_BYTES instead, keeping the whole blocks in
it, and opening it fetches them at once: the reader's first reads (the index) are then here.

What the storage's answers show switches an artifact, for the mount's life, to:
- decoded-whole (decode.py) when an answer is Content-Encoding gzip/deflate: Range and sizes
  there count encoded bytes, so none of them serves a read;
- a whole-body fill (fill.py) when a ranged GET is answered with the whole body.

Invariants:
- A block is served only when it has exactly the bytes the file's size says it has; a size
  that changes under an immutable artifact is an error (blocks.py), never mixed bytes. A kept
  head is a prefix of an immutable artifact: it is joined only with the rest of block 0
  fetched from the offset where it ends, whose answer names the same total, and is never a
  block in a tier itself.
- A growing (mutable) artifact is probed again whenever its size is asked for; its blocks are
  keyed by size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cachetools
import trio

from ciartfs.data.cache import SingleFlight
from ciartfs.data.sources import RangedUrl
from ciartfs.errors import UpstreamError, redact_url
from ciartfs.namespace.model import Artifact

if TYPE_CHECKING:
    from ciartfs.data.reader import Reader

# A tail-first archive's size probe fetches this much of its end (and keeps it).
TAIL_BYTES = 256 << 10
# Any other file's size probe fetches this much of its start.
PROBE_BYTES = 16 << 10
# The heads of larger files kept for their first read (the last 1024 probed): a head saves a
# read 16 KiB of the 128 it fetches, not a request, so a few are enough.
HEAD_BYTES_KEPT = 16 << 20


class RangedUrlReader:
    """The SourceReader of `RangedUrl` artifacts (see the module docstring)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.blocks = reader.blocks
        self.decoder = reader.decoder
        self.fills = reader.fills
        self._sizing: SingleFlight[int] = SingleFlight()
        # artifact key -> its first PROBE_BYTES, kept from a size probe of a file larger than them
        self._heads: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(HEAD_BYTES_KEPT, getsizeof=len)

    def _indexed_at_end(self, art: Artifact) -> bool:
        """An archive whose index is at its end, whose stored bytes are its own (not encoded)."""
        source = art.source
        return isinstance(source, RangedUrl) and source.tail_first and art.immutable and not self.decoder.known(art)

    def tail_first(self, art: Artifact) -> bool:
        # storage that ignores Range would send the whole file for a tail request
        return self._indexed_at_end(art) and not self.fills.ignores_range(art)

    # -- sizes ----------------------------------------------------------------------------------

    async def learn_size(self, art: Artifact, *, reading: bool = False) -> int:
        if not art.immutable:
            # A growing file (a running task's log): ask every time the tree asks.
            return await self._sizing.run(art.key, lambda: self._probe_mutable(art))
        b = self.blocks
        known = await b.known_size(art)
        if known is not None:
            return known
        if self.decoder.known(art):  # known to be stored encoded: a range probe would tell nothing
            return await self.decoder.load(art)
        block0 = b.key(art, 0, None)
        # (the disk's might_have is a Bloom filter that fills with the size records probes write:
        # a "maybe" taken as held fetched block 0 whole for ~0.2% of a directory of 100k files)
        block0_held = block0 in b.memory or (b.disk is not None and b.disk.might_have(block0)
                                             and await trio.to_thread.run_sync(b.disk.contains, block0))
        if self.tail_first(art) and not block0_held:
            await self._sizing.run(("tail", art.key), lambda: self._probe_tail(art))
        elif not (reading or block0_held) and b.block_size > PROBE_BYTES and not self.fills.ignores_range(art):
            await self._sizing.run(("head", art.key), lambda: self._probe_head(art))
        else:
            # block 0 itself: what an open's first read wants, or held (a short block 0 is the
            # whole file: its size), or small enough, or a Range-ignoring host's (fill.py)
            await self.reader.block(art, 0, None)
        known = b.sizes.get(art.key)
        if known is None:  # block 0 came from disk but its size record did not
            known = await self._probe_mutable(art)
        return known

    async def _probe_head(self, art: Artifact) -> int:
        """Learn the size from a ranged GET of the first PROBE_BYTES, keeping what it brought
        (see the module docstring). A host that ignores Range hands its whole body to a fill."""
        b = self.blocks
        b.stats.requests += 1
        reply = await b.http.get_range(art.url, 0, PROBE_BYTES, credentials=art.credentialed,
                                       take_whole=self.fills.can_fill(art, None))
        if reply.whole is not None:
            self.fills.range_ignored[art.key] = True
            if await self.fills.block(art, 0, reply, probe=True) is None:
                await self.reader.block(art, 0, None)  # the fill ended before block 0: by range
            known = b.sizes.get(art.key)
            return known if known is not None else await self._probe_mutable(art)
        if reply.encoding is not None:
            return await self.decoder.load(art)
        b.remember_size(art, reply.total)
        b.stats.bytes_fetched += len(reply.data)
        if reply.start != 0 or len(reply.data) != min(PROBE_BYTES, reply.total):
            return reply.total  # (never for a well-formed answer) keep nothing
        if len(reply.data) == reply.total:  # the whole file: block 0, whole
            b.stats.misses += 1
            b.keep(art, b.key(art, 0, reply.total), reply.data)
        else:
            self._heads[art.key] = reply.data
        return reply.total

    async def _rest_of_block0(self, art: Artifact, key: str, head: bytes, total: int) -> bytes:
        """Block 0 of a file whose head a size probe kept: the head, then the rest fetched."""
        b = self.blocks
        want = min(b.block_size, total) - len(head)
        b.stats.requests += 1
        reply = await b.http.get_range(art.url, len(head), want, credentials=art.credentialed)
        if reply.encoding is not None:
            b.decoded.add(art.key)
            return await self.decoder.block(art, 0)
        b.remember_size(art, reply.total)  # the same total as the head's, or an error
        b.stats.bytes_fetched += len(reply.data)
        if reply.start != len(head) or len(reply.data) != want:
            raise UpstreamError(f"{redact_url(art.url)}: asked for bytes {len(head)}-{len(head) + want - 1}, "
                                f"got {len(reply.data)} from {reply.start}")
        data = head + reply.data
        b.keep(art, key, data)
        return data

    async def _probe_tail(self, art: Artifact) -> int:
        """Learn an archive's size from a ranged GET of its last TAIL_BYTES, keeping the whole
        blocks in it: the reader's first reads (the index at the end) are then already here."""
        b = self.blocks
        reply = await b.http.get_tail(art.url, max(TAIL_BYTES, b.block_size), credentials=art.credentialed)
        b.stats.requests += 1
        if reply.encoding is not None:
            return await self.decoder.load(art)
        b.remember_size(art, reply.total)
        b.stats.bytes_fetched += len(reply.data)
        bs = b.block_size
        first = -(-reply.start // bs)  # the first block wholly inside the reply
        view = memoryview(reply.data)
        for index in range(first, b.count(reply.total)):
            lo = index * bs - reply.start
            block = bytes(view[lo:lo + min(bs, reply.total - index * bs)])
            b.stats.misses += 1
            b.keep(art, b.key(art, index, reply.total), block)
        return reply.total

    async def _probe_mutable(self, art: Artifact) -> int:
        b = self.blocks
        if self.decoder.known(art):
            return await self.decoder.load(art)
        reply = await b.http.get_range(art.url, 0, b.block_size, credentials=art.credentialed)
        b.stats.requests += 1
        if reply.encoding is not None:
            return await self.decoder.load(art)
        b.sizes[art.key] = reply.total
        b.memory.put(b.key(art, 0, reply.total), reply.data)
        return reply.total

    # -- blocks ---------------------------------------------------------------------------------

    async def fetch(self, art: Artifact, index: int, key: str, *, probe: bool) -> bytes:
        b = self.blocks
        if self.decoder.known(art):
            return await self.decoder.block(art, index)
        if art.immutable:
            data = await b.from_disk(key)
            if data is not None:
                if index == 0 and len(data) < b.block_size:
                    b.sizes.setdefault(art.key, len(data))  # the whole file (see Blocks.remember_size)
                return data
        b.stats.misses += 1
        head = self._heads.pop(art.key, None) if index == 0 else None
        total = b.sizes.get(art.key)
        if head is not None and total is not None and total > len(head) and art.immutable \
                and not self.fills.ignores_range(art):
            return await self._rest_of_block0(art, key, head, total)
        if self.fills.ignores_range(art) and self.fills.can_fill(art, b.sizes.get(art.key)):
            data = await self.fills.block(art, index)
            if data is not None:
                return data
        b.stats.requests += 1
        reply = await b.http.get_range(art.url, index * b.block_size, b.block_size, credentials=art.credentialed,
                                       take_whole=self.fills.can_fill(art, b.sizes.get(art.key)))
        if reply.whole is not None:
            self.fills.range_ignored[art.key] = True
            data = await self.fills.block(art, index, reply, probe=probe)
            if data is not None:
                return data
            b.stats.requests += 1  # (stored, then evicted at once: the cache is too small)
            reply = await b.http.get_range(art.url, index * b.block_size, b.block_size, credentials=art.credentialed)
        if reply.encoding is not None:
            b.decoded.add(art.key)
            return await self.decoder.block(art, index)
        b.remember_size(art, reply.total)
        b.stats.bytes_fetched += len(reply.data)
        b.keep(art, key, reply.data)
        return reply.data

    # -- read-ahead -----------------------------------------------------------------------------

    def readahead_runs(self, art: Artifact) -> bool:
        return art.immutable and not self.decoder.known(art)

    def readahead_wanted(self, art: Artifact, total: int) -> bool:
        # a Range-ignoring artifact's blocks all come with its one whole body (fill.py)
        return not (self.fills.ignores_range(art) and self.fills.can_fill(art, total))

    async def fetch_run(self, art: Artifact, first: int, count: int) -> tuple[bytes | bytearray, int] | None:
        b = self.blocks
        b.stats.misses += count
        b.stats.requests += 1
        reply = await b.http.get_range(art.url, first * b.block_size, count * b.block_size, credentials=art.credentialed,
                                       into=True)
        if reply.encoding is not None:
            b.decoded.add(art.key)
            return None  # abandoned: a reader's own fetch of the block decodes the whole
        b.remember_size(art, reply.total)
        data = reply.data if reply.buffer is None else reply.buffer
        b.stats.bytes_fetched += len(data)
        return data, reply.total

    def opening_blocks(self, art: Artifact, total: int) -> range:
        """An archive indexed at its end: its last TAIL_BYTES (block 0 is fetched anyway)."""
        bs = self.blocks.block_size
        if not self._indexed_at_end(art) or total <= bs:
            return range(0)
        last = (total - 1) // bs
        return range(max(1, last + 1 - max(1, TAIL_BYTES // bs)), last + 1)
