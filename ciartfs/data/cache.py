"""The block cache: a byte-bounded memory LRU, the persistent disk store (packstore.py, named
here too), and single-flight.

Invariants:
- A block in either cache is exactly the bytes of that range of that artifact: callers only
  `put` bytes the HTTP layer has verified, and disk records carry a checksum (XXH3-64) that is checked
  on every read (a corrupt or truncated record is dropped and reported as a miss).
- Keys name the artifact (provider, host, project, build, node, path) and the block, never a
  URL that could carry a signature or token. On disk only a digest of the key is kept.
- `DiskStore` is synchronous and thread-safe; callers run it off the trio thread.
- A run's blocks (one ranged GET of several blocks) may be kept as views of the run's one
  buffer (`put_run`), which lives while any of them does. They leave the memory tier together
  (evicted, discarded or replaced: the others go with it), so the bytes alive are never more
  than the bytes the tier counts. `get` hands out bytes (a view copied); `get_buffer` hands
  the view itself, for the reader's own read path. A run's views are cut by `cut_run`,
  consecutively from its start: `run_span` can then answer consecutive blocks of one run
  (a kernel read of 1 MiB in a run of 4) with one view of it, no copy. A run that leaves goes
  back to buffers.recycle, which receives into it again only once no view of it is left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import cachetools
import trio

from ciartfs import buffers
from ciartfs.data.packstore import DiskStore as DiskStore  # (re-exported: where callers know it)

log = logging.getLogger(__name__)

T = TypeVar("T")
# A block's bytes: its own, or a view of the run it came with (see `MemoryCache.put_run`).
Buffer = bytes | memoryview


def cut_run(run: bytes | bytearray, keys: list[str], block_size: int) -> list[tuple[str, memoryview]]:
    """A run's blocks as read-only views of it, one per key, consecutive from its start, each
    `block_size` long (the last one: what is left). The layout `MemoryCache.run_span` relies on."""
    view = memoryview(run).toreadonly()
    return [(key, view[i * block_size:(i + 1) * block_size]) for i, key in enumerate(keys)]


class _Run:
    """A run kept as views: its buffer, its blocks' keys and the views (`cut_run`'s)."""

    __slots__ = ("buffer", "keys", "views")

    def __init__(self, buffer: bytes | bytearray, keys: list[str], views: list[memoryview]) -> None:
        self.buffer, self.keys, self.views = buffer, keys, views


class _RunsLRU(cachetools.LRUCache[str, Buffer]):
    """An LRU whose eviction of a run's view takes the run's other views with it."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize, getsizeof=len)
        self.runs: dict[int, _Run] = {}  # id(run buffer) -> the run

    def popitem(self) -> tuple[str, Buffer]:
        key, value = super().popitem()
        if type(value) is memoryview:
            self.dissolve(value)
        return key, value

    def dissolve(self, view: memoryview) -> None:
        """Drop every block that is a view of `view`'s run (the run is then freed)."""
        entry = self.runs.pop(id(view.obj), None)
        if entry is None or entry.buffer is not view.obj:
            return
        run = entry.buffer
        for key in entry.keys:
            if key in self:
                other = cachetools.Cache.__getitem__(self, key)  # (no move to the front)
                if type(other) is memoryview and other.obj is run:
                    del self[key]
        buffers.recycle(run)  # (received into again once no view of it is left anywhere)


class MemoryCache:
    """LRU of bytes values bounded by the sum of their lengths (not their count)."""

    def __init__(self, max_bytes: int) -> None:
        self._lru = _RunsLRU(max_bytes)

    def get(self, key: str) -> bytes | None:
        value = self._lru.get(key)
        return value if value is None or type(value) is bytes else bytes(value)

    def get_buffer(self, key: str) -> Buffer | None:
        """The block as kept: bytes, or a view of its run (valid as long as it is held)."""
        return self._lru.get(key)

    def put(self, key: str, data: Buffer) -> None:
        if len(data) <= self._lru.maxsize:
            self._replacing(key)
            self._lru[key] = data

    def put_run(self, run: bytes | bytearray, blocks: list[tuple[str, memoryview]]) -> None:
        """A run's blocks as `cut_run` cut them, kept without a copy; they leave together (see
        the module docstring)."""
        if 2 * len(run) > self._lru.maxsize:  # (a tiny tier could evict the run's first views for its last)
            for key, view in blocks:
                self.put(key, bytes(view))
            return
        for key, _ in blocks:
            self._replacing(key)
        self._lru.runs[id(run)] = _Run(run, [key for key, _ in blocks], [view for _, view in blocks])
        for key, view in blocks:
            self._lru[key] = view

    def run_span(self, blocks: list[Buffer]) -> memoryview | None:
        """Consecutive blocks that are consecutive views of one run kept here, as one read-only
        view of the run (no copy); None when they are not. The views are compared by identity
        with those `put_run` kept: the layout is then `cut_run`'s."""
        first = blocks[0]
        if type(first) is not memoryview:
            return None
        run = self._lru.runs.get(id(first.obj))
        if run is None or run.buffer is not first.obj:
            return None
        views = run.views
        at = next((i for i, view in enumerate(views) if view is first), None)
        if at is None:
            return None
        if at + len(blocks) > len(views) or any(views[at + i] is not b for i, b in enumerate(blocks)):
            return None
        start = at * len(views[0])
        return memoryview(run.buffer)[start:start + sum(len(b) for b in blocks)].toreadonly()

    def _replacing(self, key: str) -> None:
        if key in self._lru:
            old = cachetools.Cache.__getitem__(self._lru, key)
            if type(old) is memoryview:
                self._lru.dissolve(old)

    def discard(self, key: str) -> None:
        self._replacing(key)
        self._lru.pop(key, None)

    @property
    def max_bytes(self) -> int:
        return int(self._lru.maxsize)

    def __contains__(self, key: str) -> bool:
        return key in self._lru

    @property
    def bytes_used(self) -> int:
        return int(self._lru.currsize)


class _Call(Generic[T]):
    """One execution: its outcome, and an event made only once someone waits for it (most
    read-ahead blocks are settled before any read asks for them: no event each)."""

    __slots__ = ("_event", "finished", "result", "error", "cancelled")

    def __init__(self) -> None:
        self._event: trio.Event | None = None
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    def finish(self) -> None:
        self.finished = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if not self.finished:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()


class SingleFlight(Generic[T]):
    """Concurrent `run(key, fn)` calls for one key share a single execution of `fn`.

    Waiters get the leader's result or exception. If the leader is cancelled, a waiter
    takes over rather than failing with someone else's cancellation.
    """

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    def in_flight(self, key: Hashable) -> bool:
        return key in self._calls

    def claim(self, key: Hashable) -> _Call[T] | None:
        """Mark `key` in flight for a caller that computes several keys at once (one ranged
        GET for a run of blocks) and then `settle`s each; None when it already is in flight.
        Concurrent `run(key)` calls wait for the settlement instead of starting their own."""
        if key in self._calls:
            return None
        call: _Call[T] = _Call()
        self._calls[key] = call
        return call

    def settle(self, key: Hashable, call: _Call[T], result: T | None = None, error: BaseException | None = None) -> None:
        """End a claimed call: with a result, with an error, or with neither (abandoned:
        a waiter then computes the key itself)."""
        if self._calls.get(key) is not call or call.finished:
            return
        if error is not None:
            call.error = error
        elif result is not None:
            call.result = result
        else:
            call.cancelled = True
        del self._calls[key]
        call.finish()

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        while True:
            call = self._calls.get(key)
            if call is None:
                break
            await call.wait()
            if call.cancelled:
                continue
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]
        call = _Call()
        self._calls[key] = call
        try:
            call.result = await fn()
            return call.result
        except trio.Cancelled:
            call.cancelled = True
            raise
        except BaseException as e:
            call.error = e
            raise
        finally:
            del self._calls[key]
            call.finish()
