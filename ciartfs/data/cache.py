"""The block cache: a byte-bounded memory LRU, the persistent disk store (packstore.py, named
here too), and single-flight.

Invariants:
- A block in either cache is exactly the bytes of that range of that artifact: callers only
  `put` bytes the HTTP layer has verified, and disk records carry a checksum (XXH3-64) that is checked
  on every read (a corrupt or truncated record is dropped and reported as a miss).
- Keys name the artifact (provider, host, project, build, node, path) and the block, never a
  URL that could carry a signature or token. On disk only a digest of the key is kept.
- `DiskStore` is synchronous and thread-safe; callers run it off the trio thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import cachetools
import trio

from ciartfs.data.packstore import DiskStore as DiskStore  # (re-exported: where callers know it)

log = logging.getLogger(__name__)

T = TypeVar("T")


class MemoryCache:
    """LRU of bytes values bounded by the sum of their lengths (not their count)."""

    def __init__(self, max_bytes: int) -> None:
        self._lru: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(maxsize=max_bytes, getsizeof=len)

    def get(self, key: str) -> bytes | None:
        return self._lru.get(key)

    def put(self, key: str, data: bytes) -> None:
        if len(data) <= self._lru.maxsize:
            self._lru[key] = data

    def discard(self, key: str) -> None:
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
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.cancelled = False


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
        if self._calls.get(key) is not call or call.done.is_set():
            return
        if error is not None:
            call.error = error
        elif result is not None:
            call.result = result
        else:
            call.cancelled = True
        del self._calls[key]
        call.done.set()

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        while True:
            call = self._calls.get(key)
            if call is None:
                break
            await call.done.wait()
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
            call.done.set()
