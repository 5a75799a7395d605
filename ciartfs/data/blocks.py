"""An artifact's blocks and where they are kept: the key format, the memory and disk tiers,
the sizes learned, and the counters.

Invariants:
- Every cache key is made here (`Blocks.key`, `size_key`). A block is `<artifact key>|<block size>|<index>`; a growing
  file's block read by range also carries `|<size>` (valid for that size only), while the
  blocks of a file decoded whole never do (decoded again whole when it grows). A size record
  on disk is `size|<artifact key>`. Artifact keys hold no URL and no secret.
- Only whole, verified blocks go into a tier. The memory tier (MemoryCache) holds what was
  fetched or read from disk; the disk tier (DiskStore) is written behind (writebehind.py),
  never on the path of a read.
- A size, once learned for an immutable artifact, never changes: a different one is an error
  (`remember_size`), never silently served.
"""

from __future__ import annotations

import dataclasses

import cachetools
import trio

from ciartfs.data.cache import Buffer, DiskStore, MemoryCache
from ciartfs.data.writebehind import WriteBehind
from ciartfs.errors import UpstreamError, redact_url
from ciartfs.namespace.model import Artifact
from ciartfs.net.client import HttpClient

SIZE_MEMO_ENTRIES = 1_000_000
SIZE_PREFIX = "size|"
# Longest wait for a disk write under way to end, to drop blocks found wrong that it writes.
DROP_WAIT_SECONDS = 5.0


def size_key(art: Artifact) -> str:
    return SIZE_PREFIX + art.key


@dataclasses.dataclass
class Stats:
    requests: int = 0
    bytes_fetched: int = 0
    bytes_served: int = 0
    # read requests from the kernel (each up to its read-ahead window: see kernel_readahead.py);
    # a re-read the page cache serves adds none
    reads: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    decodes: int = 0  # whole fetches of gzip-encoded artifacts started
    fills: int = 0  # whole bodies (storage ignoring Range) streamed into the cache
    decode_failures: int = 0


class Blocks:
    """The tiers, the key format and the size memo, shared by the reader and its sources."""

    def __init__(self, http: HttpClient, memory: MemoryCache, disk: DiskStore | None, block_size: int,
                 writes: WriteBehind) -> None:
        self.http = http
        self.memory = memory
        self.disk = disk
        self.block_size = block_size
        self.writes = writes
        self.stats = Stats()
        self.sizes: cachetools.LRUCache[str, int] = cachetools.LRUCache(SIZE_MEMO_ENTRIES)
        # artifacts found stored encoded, served from decoded blocks (decode.py)
        self.decoded: set[str] = set()
        self.background: trio.Nursery | None = None  # set by Reader.start

    def key(self, art: Artifact, index: int, total: int | None) -> str:
        """The cache key of block `index` (see the module docstring; `total`: the size shown)."""
        key = f"{art.key}|{self.block_size}|{index}"
        if not art.immutable and art.key not in self.decoded:
            key += f"|{total}"  # a growing file's blocks are only valid for one size
        return key

    def count(self, total: int) -> int:
        """Blocks of a file of `total` bytes (a file of 0 bytes has none to read)."""
        return (total - 1) // self.block_size + 1 if total > 0 else 0

    def keep(self, art: Artifact, key: str, data: bytes) -> None:
        """A fetched block: into memory, and (an immutable artifact's) behind to disk."""
        self.memory.put(key, data)
        if art.immutable:
            self.writes.queue(key, data)

    def keep_run(self, art: Artifact, run: bytes | bytearray, blocks: list[tuple[str, memoryview]]) -> None:
        """A run's fetched blocks, views of its one buffer (no copy): into memory together (see
        cache.py), and (an immutable artifact's) behind to disk."""
        self.memory.put_run(run, blocks)
        if art.immutable:
            queue = self.writes.queue
            for key, view in blocks:
                queue(key, view)

    async def from_disk(self, key: str) -> bytes | None:
        """The block from the disk tier (then also in memory), or None."""
        if self.disk is None or not self.disk.might_have(key):
            return None
        data = await trio.to_thread.run_sync(self.disk.get, key)
        if data is not None:
            self.stats.disk_hits += 1
            self.memory.put(key, data)
        return data

    async def known_size(self, art: Artifact) -> int | None:
        """The size from the memo, or from the disk's size record."""
        known = self.sizes.get(art.key)
        if known is not None:
            return known
        if self.disk is not None and self.disk.might_have(size_key(art)):
            raw = await trio.to_thread.run_sync(self.disk.get, size_key(art))
            if raw is not None and raw.isdigit():
                self.sizes[art.key] = int(raw)
                return int(raw)
        return None

    def remember_size(self, art: Artifact, total: int) -> None:
        previous = self.sizes.get(art.key)
        if previous is not None and previous != total and art.immutable:
            raise UpstreamError(f"{redact_url(art.url)}: size changed from {previous} to {total} bytes")
        if previous != total:
            self.sizes[art.key] = total
            # A file shorter than a block is cached whole as block 0, whose length is then its
            # size: no size record (half the disk files for a build of small artifacts).
            if self.disk is not None and art.immutable and not 0 < total < self.block_size:
                self.writes.queue(size_key(art), str(total).encode())

    async def drop(self, art: Artifact, count: int, total: int) -> None:
        """Forget an artifact's first `count` blocks (found wrong) in memory, in the disk write
        queue and on disk (also those a batch is writing now: dropped again once it is done)."""
        keys = [self.key(art, index, total) for index in range(count)]
        for block_key in keys:
            self.memory.discard(block_key)
        self.writes.drop(keys)
        if self.disk is None:
            return
        disk = self.disk

        def discard_all() -> None:
            disk.discard_many(keys)

        await trio.to_thread.run_sync(discard_all)
        with trio.move_on_after(DROP_WAIT_SECONDS):
            while any(self.writes.writing(k) for k in keys):
                await trio.sleep(0.05)
            await trio.to_thread.run_sync(discard_all)

    def check_length(self, art: Artifact, index: int, block: Buffer, total: int) -> None:
        expected = min(self.block_size, total - index * self.block_size)
        if len(block) != expected:
            raise UpstreamError(f"{redact_url(art.url)}: block {index} has {len(block)} bytes, expected {expected}")
