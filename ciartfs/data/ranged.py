"""The URL sources (`RANGED`, `TAIL_FIRST`): an artifact's URL serves its bytes by Range.

A file's size is learned by fetching its first block (a ranged GET whose `Content-Range` names
the total); that block is kept, so listing a directory of small files caches them whole. Never
HEAD: presigned storage URLs answer HEAD with 403. An archive indexed at its end (`TAIL_FIRST`)
learns its size from a ranged GET of its last TAIL_BYTES instead, keeping the whole blocks in
it, and opening it fetches them at once: the reader's first reads (the index) are then here.

What the storage's answers show switches an artifact, for the mount's life, to:
- decoded-whole (decode.py) when an answer is Content-Encoding gzip/deflate: Range and sizes
  there count encoded bytes, so none of them serves a read;
- a whole-body fill (fill.py) when a ranged GET is answered with the whole body.

Invariants:
- A block is served only when it has exactly the bytes the file's size says it has; a size
  that changes under an immutable artifact is an error (blocks.py), never mixed bytes.
- A growing (mutable) artifact is probed again whenever its size is asked for; its blocks are
  keyed by size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ciartfs.data.cache import SingleFlight
from ciartfs.data.sources import RangedUrl
from ciartfs.namespace.model import Artifact

if TYPE_CHECKING:
    from ciartfs.data.reader import Reader

# A tail-first archive's size probe fetches this much of its end (and keeps it).
TAIL_BYTES = 256 << 10


class RangedUrlReader:
    """The SourceReader of `RangedUrl` artifacts (see the module docstring)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.blocks = reader.blocks
        self.decoder = reader.decoder
        self.fills = reader.fills
        self._sizing: SingleFlight[int] = SingleFlight()

    def _indexed_at_end(self, art: Artifact) -> bool:
        """An archive whose index is at its end, whose stored bytes are its own (not encoded)."""
        source = art.source
        return isinstance(source, RangedUrl) and source.tail_first and art.immutable and not self.decoder.known(art)

    def tail_first(self, art: Artifact) -> bool:
        # storage that ignores Range would send the whole file for a tail request
        return self._indexed_at_end(art) and not self.fills.ignores_range(art)

    # -- sizes ----------------------------------------------------------------------------------

    async def learn_size(self, art: Artifact) -> int:
        if not art.immutable:
            # A growing file (a running task's log): ask every time the tree asks.
            return await self._sizing.run(art.key, lambda: self._probe_mutable(art))
        b = self.blocks
        known = await b.known_size(art)
        if known is not None:
            return known
        if self.decoder.known(art):  # known to be stored encoded: a range probe would tell nothing
            return await self.decoder.load(art)
        block0_on_disk = b.disk is not None and b.disk.might_have(b.key(art, 0, None))
        if self.tail_first(art) and not block0_on_disk:
            await self._sizing.run(("tail", art.key), lambda: self._probe_tail(art))
        else:
            await self.reader.block(art, 0, None)  # from disk, a short block 0 is the whole file: its size
        known = b.sizes.get(art.key)
        if known is None:  # block 0 came from disk but its size record did not
            known = await self._probe_mutable(art)
        return known

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

    async def fetch_run(self, art: Artifact, first: int, count: int) -> tuple[bytes, int] | None:
        b = self.blocks
        b.stats.misses += count
        b.stats.requests += 1
        reply = await b.http.get_range(art.url, first * b.block_size, count * b.block_size, credentials=art.credentialed)
        if reply.encoding is not None:
            b.decoded.add(art.key)
            return None  # abandoned: a reader's own fetch of the block decodes the whole
        b.remember_size(art, reply.total)
        b.stats.bytes_fetched += len(reply.data)
        return reply.data, reply.total

    def opening_blocks(self, art: Artifact, total: int) -> range:
        """An archive indexed at its end: its last TAIL_BYTES (block 0 is fetched anyway)."""
        bs = self.blocks.block_size
        if not self._indexed_at_end(art) or total <= bs:
            return range(0)
        last = (total - 1) // bs
        return range(max(1, last + 1 - max(1, TAIL_BYTES // bs)), last + 1)
