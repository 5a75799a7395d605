"""Write-behind to the disk cache: blocks are queued and written by one background writer.

Invariants:
- A write never lies on the path of a read (nor of an API listing: ApiDocs queues its documents
  here too): `queue` returns at once, a writer task drains the
  queue in batches, one worker-thread hop, one append and one index commit per batch
  (`DiskStore.put_many`; a hop per block cost more CPU than the HTTP request that got it).
- Memory is bounded: queued and being-written bytes stay under `max_pending` and are held
  against the in-flight memory budget; past either, a block is not queued (it stays in memory
  only). A slow disk never makes us hold unbounded memory.
- Writes wait for a burst of fetches to settle (WRITE_SETTLE_SECONDS without a new block),
  unless a batch's worth is queued. Time is trio's clock (tests may mock it).
- Nothing queued is lost at unmount: a batch cancelled before its thread ran goes back to the
  queue, and `flush` writes the queue.
- A failing disk never kills the mount: the disk cache is an optimisation.
"""

from __future__ import annotations

import logging

import trio

from ciartfs.data.cache import Buffer, DiskStore
from ciartfs.net.bodies import MemoryBudget

log = logging.getLogger(__name__)

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


class WriteBehind:
    """The disk write queue of one mount (see the module docstring)."""

    def __init__(self, disk: DiskStore | None, budget: MemoryBudget, max_pending: int = MAX_PENDING_DISK_BYTES) -> None:
        self.disk = disk
        self.budget = budget
        self.max_pending = max_pending
        # verified blocks waiting for the disk, by key (a run's blocks: views of its buffer)
        self._queue: dict[str, Buffer] = {}
        self._writing: dict[str, Buffer] = {}  # the batch a thread is writing now
        self._queued_bytes = 0
        self._writing_bytes = 0
        self._last_queued = 0.0
        self._writer_running = False
        self._background: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """The writer runs in `nursery`; until then nothing is queued."""
        self._background = nursery

    def queue(self, key: str, data: Buffer, *, replace: bool = False) -> bool:
        """Queue a verified block (or size record, or API document) for the disk, unless that
        would pass a bound; False when it was not queued. `replace`: the key's data may differ
        from what is queued under it (an API document seen anew), which it then replaces."""
        if self.disk is None or self._background is None:
            return False
        if key in self._queue:
            if not replace:
                return True
            old = self._queue.pop(key)
            self._queued_bytes -= len(old)
            self.budget.give(len(old))
        if self._queued_bytes + self._writing_bytes + len(data) > self.max_pending or not self.budget.try_take(len(data)):
            log.debug("disk cache: write queue full, %s stays in memory only", key)
            return False
        self._queue[key] = data
        self._queued_bytes += len(data)
        self._last_queued = trio.current_time()
        if not self._writer_running:
            self._writer_running = True
            self._background.start_soon(self._drain)
        return True

    def holds(self, key: str) -> bool:
        """Queued, or being written now: on disk at the latest at unmount."""
        return key in self._queue or key in self._writing

    def pending(self, key: str) -> Buffer | None:
        """What is queued or being written under `key` (the newest), if anything."""
        data = self._queue.get(key)
        return data if data is not None else self._writing.get(key)

    def writing(self, key: str) -> bool:
        return key in self._writing

    @property
    def pending_bytes(self) -> int:
        return self._queued_bytes + self._writing_bytes

    def drop(self, keys: list[str]) -> None:
        """Unqueue these (blocks found wrong); a batch being written is the caller's to wait out."""
        for key in keys:
            data = self._queue.pop(key, None)
            if data is not None:
                self._queued_bytes -= len(data)
                self.budget.give(len(data))

    async def flush(self) -> None:
        """At unmount: write what is still queued (at most max_pending bytes)."""
        if self.disk is not None and self._queue:
            batch, self._queue, queued, self._queued_bytes = self._queue, {}, self._queued_bytes, 0
            disk = self.disk
            try:
                await trio.to_thread.run_sync(disk.put_many, list(batch.items()))
            finally:
                self.budget.give(queued)

    async def _drain(self) -> None:
        disk = self.disk
        assert disk is not None
        try:
            while self._queue:
                while self._queued_bytes < min(WRITE_BATCH_BYTES, self.max_pending // 2):
                    quiet_at = self._last_queued + WRITE_SETTLE_SECONDS
                    if trio.current_time() >= quiet_at:
                        break
                    await trio.sleep_until(quiet_at)
                batch, self._queue = self._queue, {}
                self._writing_bytes, self._queued_bytes = self._queued_bytes, 0  # held until written
                self._writing = batch

                try:  # one append and one index commit for the batch
                    await trio.to_thread.run_sync(disk.put_many, list(batch.items()))
                except trio.Cancelled:
                    # Cancelled before the thread ran (unmount): the batch goes back for flush.
                    self._queue = {**batch, **self._queue}
                    self._queued_bytes += self._writing_bytes
                    self._writing_bytes = 0
                    raise
                except Exception:  # the disk cache is an optimisation: never let it kill the mount
                    log.exception("disk cache: write failed")
                finally:
                    self._writing = {}
                    self.budget.give(self._writing_bytes)
                    self._writing_bytes = 0
        finally:
            self._writer_running = False
