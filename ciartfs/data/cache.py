"""The block cache: a byte-bounded memory LRU, a persistent disk store, and single-flight.

Invariants:
- A block in either cache is exactly the bytes of that range of that artifact: callers only
  `put` bytes the HTTP layer has verified, and disk entries carry a SHA-256 that is checked
  on every read (a corrupt or truncated file is deleted and reported as a miss).
- Keys name the artifact (provider, host, project, build, node, path) and the block, never a
  URL that could carry a signature or token. On disk the key is hashed into the file name.
- Disk writes are atomic (temp file + rename), so a crash or a second mount sharing the
  directory never exposes a half-written block.
- `DiskStore` is synchronous and thread-safe; callers run it off the trio thread.
- Temp files a killed writer left behind are removed by the first scan (at start), once old
  enough that no live writer can still own them (see STALE_TMP_AGE).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

import cachetools
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAGIC = b"CIAFSB1\n"
_DIGEST_LEN = 32
# After an eviction pass the store is brought down to this fraction of its budget, so that
# eviction (a directory scan) runs rarely rather than on every write near the limit.
_EVICT_TO = 0.9
# A temp file (`<block>.tmp.<pid>.<thread>`) lives for one `put`: written, then renamed within
# moments. One untouched for this long was left by a writer that died (a killed daemon) and
# is removed. Why age and not "is that pid alive": mounts sharing the directory may run in
# other pid namespaces (containers) or on other hosts (a network home), and pids are reused.
# Why removing by age is safe even if wrong: a writer stalled this long then fails its rename,
# logs a warning, and the block is simply not on disk; nothing half-written is ever read.
STALE_TMP_AGE = 600.0


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


class DiskStore:
    """Checksummed files under `root`, bounded by `max_bytes` (least recently used evicted)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self._root = str(root)
        self.max_bytes = max_bytes
        self.enabled = True
        self._lock = threading.Lock()
        self._sizes: dict[str, int] | None = None  # file path -> size, loaded on first write
        self._used = 0
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)

    def _path(self, key: str) -> str:
        # a str, not a Path: several lookups per listed file, and pathlib's joins cost more than the hash
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self._root}/{digest[:2]}/{digest}"

    def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("disk cache: cannot read %s: %s", path, e.strerror)
            return None
        header = len(_MAGIC) + _DIGEST_LEN
        data = raw[header:]
        if raw[: len(_MAGIC)] != _MAGIC or hashlib.sha256(data).digest() != raw[len(_MAGIC):header]:
            log.warning("disk cache: %s is corrupt or truncated; dropped", path)
            self._remove(path)
            return None
        try:
            os.utime(path)  # recency for LRU eviction
        except OSError:
            pass
        return data

    def contains(self, key: str) -> bool:
        return self.enabled and os.path.exists(self._path(key))

    def load_index(self) -> None:
        """Scan the directory once (in a thread) so that might_have() answers from memory."""
        with self._lock:
            if self._sizes is None:
                self._sizes = self._scan()
                self._used = sum(self._sizes.values())

    def might_have(self, key: str) -> bool:
        """False only when the key is surely not on disk: saves a thread hop per cold miss.
        (A block another mount writes later is then fetched, not read: still correct.)"""
        if not self.enabled:
            return False
        sizes = self._sizes
        return sizes is None or self._path(key) in sizes

    def put(self, key: str, data: bytes) -> bool:
        """Store `data` under `key`; False when it could not be (disk full, I/O error)."""
        if not self.enabled:
            return False
        path = self._path(key)
        tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(data).digest() + data)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if e.errno in (28, 122):  # ENOSPC, EDQUOT: keep serving from memory only
                log.warning("disk cache: %s is full (%s); continuing with the memory cache only", self.root, e.strerror)
                self.enabled = False
            else:
                log.warning("disk cache: cannot write %s: %s", path, e.strerror)
            return False
        self._account(path, len(_MAGIC) + _DIGEST_LEN + len(data))
        return True

    def discard(self, key: str) -> None:
        self._remove(self._path(key))

    def _account(self, path: str, size: int) -> None:
        with self._lock:
            if self._sizes is None:
                self._sizes = self._scan()
                self._used = sum(self._sizes.values())
            self._used += size - self._sizes.get(path, 0)
            self._sizes[path] = size
            over = self._used > self.max_bytes
        if over:
            self._evict()

    def _scan(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        stale_before = time.time() - STALE_TMP_AGE
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                try:
                    if ".tmp." not in entry.name:
                        sizes[entry.path] = entry.stat().st_size
                    elif entry.stat().st_mtime < stale_before:
                        os.unlink(entry.path)
                except OSError:
                    pass  # gone meanwhile (another mount evicted or renamed it)
        return sizes

    def _evict(self) -> None:
        with self._lock:
            assert self._sizes is not None
            by_age = []
            for path in list(self._sizes):
                try:
                    by_age.append((os.stat(path).st_mtime, path))
                except OSError:
                    self._used -= self._sizes.pop(path)
            by_age.sort()
            target = self.max_bytes * _EVICT_TO
            for _, path in by_age:
                if self._used <= target:
                    break
                self._used -= self._sizes.pop(path)
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
        with self._lock:
            if self._sizes is not None and path in self._sizes:
                self._used -= self._sizes.pop(path)

    @property
    def bytes_used(self) -> int:
        with self._lock:
            if self._sizes is None:
                self._sizes = self._scan()
                self._used = sum(self._sizes.values())
            return self._used


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
