"""The persistent disk cache: records appended to a few large pack files, found through an
SQLite index, evicted a whole pack at a time (least recently used first).

Layout of `root` (a private directory, 0700; every file 0600, opened without following links):
  index.sqlite (+ -wal, -shm)   which key is where: a digest of the key (never the key), the pack,
                                offset, length and a checksum (XXH3-64) of the bytes seeded by the key's digest
  <16 hex>.pack                 records appended back to back; a writer owns the pack it appends to.
                                A record a whole number of pages long that is a view of a page-aligned
                                buffer (a run's block: buffers.unfilled) starts on a page boundary and is
                                written with O_DIRECT, from memory to the device without a copy into the
                                page cache (0.3-0.5 CPU-s per GiB on a cold read); others are written
                                through the page cache. A filesystem refusing O_DIRECT gets every
                                record through the page cache.
Files of the previous layout (`<2 hex>/<sha256>`, one file per block) are removed in the background
at start (`load_index`) and by `ciartfs cache clear`; they are never read.

Invariants:
- A record is exactly the bytes that were `put` for its key, or it is a miss: `get` checks the length
  and the checksum (seeded with the key's digest, so a record found under another key's digest fails it
  too) and drops what fails. A torn or partial write (killed daemon, power loss) therefore reads as a
  miss, never as wrong bytes. The bytes are written before their index row is committed.
- Eviction frees whole packs, oldest `used` first (a pack's `used` is its last write or read,
  written to the index at most every TOUCH_FLUSH_SECONDS and before every eviction). Its cost is
  proportional to what it frees: one indexed DELETE per pack and one unlink, no directory scan.
- A discard frees at once the disk space of what it forgets in the own pack (a failed decode's
  blocks): cut off its end, or punched out (fallocate) before a record written after them.
- The index is shared by every mount using the directory (SQLite WAL: concurrent readers, one
  writer at a time). A writer only appends to its own pack; one evicted under it (by another
  mount) is noticed at its next commit (the pack's row is gone) and replaced by a new pack.
- `might_have` answers from memory (Bloom filters of the ids' groups on disk at start, built in
  the background by `load_index`, and of the ids written since; until built it says "maybe"):
  False only when the key is surely not on disk (another mount's later writes aside).
- `DiskStore` is synchronous and thread-safe; callers run it off the trio thread. A failing disk
  never fails a read: ENOSPC/EDQUOT (or SQLite's "full") turn the store off (`enabled`), other
  errors lose that write or read only. A damaged or foreign index is replaced by an empty one.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import hashlib
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import xxhash

from ciartfs import libc
from ciartfs.buffers import PAGE, page_aligned
from ciartfs.private_dir import ensure_private_dir

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
INDEX_NAME = "index.sqlite"
PACK_SUFFIX = ".pack"
# A pack is closed for appends once it holds this much (or the bound / PACKS_PER_BOUND, if less):
# eviction then frees about 1/PACKS_PER_BOUND of the cache at a time, and a 10 GiB cache is ~160 files.
MAX_PACK_BYTES = 64 << 20
PACKS_PER_BOUND = 32
# After an eviction pass the store is at this fraction of its bound, so eviction runs rarely.
EVICT_TO = 0.9
# Reads mark their pack as used in memory; the marks reach the index this often (and before any
# eviction), so a read costs no write transaction.
TOUCH_FLUSH_SECONDS = 10.0
# A pack file with no row in the index (its writer died between creating it and recording it, or an
# eviction between its commit and its unlink) is removed at start once this old.
ORPHAN_AGE = 600.0
READ_FDS = 16  # pack files kept open for reading
BUSY_TIMEOUT = 10.0  # seconds a transaction waits for another mount's
_FILTER_BITS_PER_ENTRY = 8
_FILTER_MIN_ENTRIES = 1 << 16
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
_IOV_MAX = 512
# O_DIRECT writes refused (EINVAL) this many times: the store writes through the page cache only.
DIRECT_REFUSALS_TOLERATED = 8
_SQLITE_FULL = 13
_HASH_PIECE = 64 << 10
_ROWS_PER_INSERT = 1000  # (5 variables a row; SQLite allows 32766 a statement)
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS packs (n INTEGER PRIMARY KEY, size INTEGER NOT NULL, used REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS packs_by_use ON packs(used)",
    ("CREATE TABLE IF NOT EXISTS entries (k INTEGER PRIMARY KEY, pack INTEGER NOT NULL, pos INTEGER NOT NULL,"
     " len INTEGER NOT NULL, sum INTEGER NOT NULL)"),
    "CREATE INDEX IF NOT EXISTS entries_by_pack ON entries(pack)",
)


def key_digest(key: str) -> tuple[int, int]:
    """(index id, checksum seed) of a key, from a SHA-256 (never the key itself).

    A block key (`<artifact>|<block size>|<index>`) gets an id next to its neighbours' (48 bits
    of its artifact's digest, then the index's low 16 bits): a batch of a file's blocks then lands
    on a few pages of the index rather than one page per block (4 KiB of index written per 4 KiB
    block, with --block-size 4K). Ids may collide (48 bits): the seed (the whole key's) makes a
    record found under another key's id fail its checksum, a miss."""
    prefix, sep, last = key.rpartition("|")
    if sep and last.isdigit() and len(last) < 16:
        index = int(last)
        group, seed = _group_digest(prefix, index >> 16)
        return (group | (index & 0xFFFF)) - (1 << 63), (seed + index) & 0xFFFFFFFFFFFFFFFF
    d = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(d[:8], "big", signed=True), int.from_bytes(d[8:16], "big")


@functools.lru_cache(maxsize=1024)
def _group_digest(prefix: str, high: int) -> tuple[int, int]:
    """A block group's id bits and seed base (key_digest): one SHA-256 per file's 65536 blocks
    read lately, not one per block (a cold read asks for each block's twice: the filter, the write)."""
    d = hashlib.sha256(f"{prefix}|{high}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(d[:6], "big") << 16, int.from_bytes(d[6:14], "big")


def _mix(kid: int) -> int:
    """The id's bits mixed (splitmix64's finaliser): neighbouring ids to far-apart filter bits."""
    z = kid & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def checksum(data: bytes | memoryview, seed: int) -> int:
    """XXH3-64 of the bytes, seeded by their key (as a signed 64-bit SQLite integer). XXH3 runs at
    ~26 GiB/s here against zlib's CRC-32 at ~1.7 (0.04 against 0.6 CPU-s per GiB, at both write and
    read). Fed in pieces of _HASH_PIECE: python-xxhash lets the GIL go for a larger buffer, and a
    writer thread then waits up to the switch interval (5 ms) to get it back from a busy trio
    thread, per block: 64 blocks took 250 ms instead of 1."""
    if len(data) <= _HASH_PIECE:
        value = xxhash.xxh3_64_intdigest(data, seed)
    else:
        h, view = xxhash.xxh3_64(seed=seed), memoryview(data)
        for start in range(0, len(data), _HASH_PIECE):
            h.update(view[start:start + _HASH_PIECE])
        value = h.intdigest()
    return value - (1 << 64) if value >= 1 << 63 else value


class _Unusable(Exception):
    """An index this version cannot use (another schema version, not a regular file)."""


class _Filter:
    """A Bloom filter (two probes) of integers: no false negatives."""

    def __init__(self, entries: int) -> None:
        bits = 1 << (max(entries, _FILTER_MIN_ENTRIES) * _FILTER_BITS_PER_ENTRY - 1).bit_length()
        self.capacity = bits // _FILTER_BITS_PER_ENTRY
        self.mask = bits - 1
        self.bits = bytearray(bits >> 3)
        self.count = 0

    def add(self, group: int) -> None:
        bits, mask, h = self.bits, self.mask, _mix(group)
        p = h & mask
        bits[p >> 3] |= 1 << (p & 7)
        p = (h >> 32) & mask
        bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, group: int) -> bool:
        bits, mask, h = self.bits, self.mask, _mix(group)
        p = h & mask
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (h >> 32) & mask
        return bool(bits[p >> 3] & (1 << (p & 7)))


class _Pack:
    """The pack this store appends to: `fd` through the page cache, `direct` (O_DIRECT, or -1)
    for records a whole number of pages long, at page-aligned offsets."""

    def __init__(self, number: int, fd: int, direct: int) -> None:
        self.number = number
        self.fd = fd
        self.direct = direct
        self.size = 0


def pack_name(number: int) -> str:
    return f"{number:016x}{PACK_SUFFIX}"


def _is_old_layout_dir(entry: os.DirEntry[str]) -> bool:
    return len(entry.name) == 2 and all(c in "0123456789abcdef" for c in entry.name) and entry.is_dir(follow_symlinks=False)


def _direct_candidate(data: bytes | memoryview) -> bool:
    """A record that may be written with O_DIRECT: a view (of a run received into a page-aligned
    buffer, buffers.unfilled) a whole number of pages long. A bytes object never is aligned."""
    return type(data) is memoryview and len(data) % PAGE == 0


def _pwrite_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    pending = [memoryview(b) for b in buffers if b]
    while pending:
        done = os.pwritev(fd, pending[:_IOV_MAX], offset)
        if done == 0:
            raise OSError(errno.ENOSPC, "nothing written")
        offset += done
        while pending and done >= len(pending[0]):
            done -= len(pending[0])
            pending.pop(0)
        if done:
            pending[0] = pending[0][done:]


class DiskStore:
    """Records in pack files under `root`, bounded by `max_bytes` (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int, *, direct_writes: bool = True) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.enabled = True
        self.pack_bytes = max(1, min(MAX_PACK_BYTES, max_bytes // PACKS_PER_BOUND))
        self._db_lock = threading.Lock()  # the connection
        self._write_lock = threading.Lock()  # appends to the own pack, in order
        self._fd_lock = threading.Lock()
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()  # pack -> read fd
        self._pack: _Pack | None = None
        # O_DIRECT writes for whole pages (False: the filesystem refused them; see _write_records)
        self._direct = direct_writes and hasattr(os, "O_DIRECT")
        self._direct_refused = 0
        # might_have's filters (see _build_filter): the groups on disk when last built (None
        # until load_index built it: "maybe"), and the ids this store wrote since
        self._groups: _Filter | None = None
        # (a block of 64 KiB on average fills it as the cache fills once; then both are rebuilt)
        self._written_capacity = max(_FILTER_MIN_ENTRIES, min(max_bytes >> 16, 1 << 24))
        self._written = _Filter(self._written_capacity)
        self._filter_build_lock = threading.Lock()
        self._written_pending: list[int] | None = None  # ids written while filters are being built
        self._touched: dict[int, float] = {}
        self._touch_flushed = time.monotonic()
        self._used = 0  # bytes in packs, as last counted (plus own appends since)
        self._used_counted = 0.0
        ensure_private_dir(root)
        self._db = self._open_index()
        self._used = self._count_used()
        self._used_counted = time.monotonic()

    # -- the index ------------------------------------------------------------------------

    def _open_index(self) -> sqlite3.Connection:
        path = self.root / INDEX_NAME
        try:
            try:
                return self._connect(path)
            except (_Unusable, sqlite3.DatabaseError) as e:
                code = getattr(e, "sqlite_errorcode", None)
                if not isinstance(e, _Unusable) and code not in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    raise
                log.warning("disk cache: the index %s cannot be used (%s); starting an empty cache", path, e)
                self._remove_all_files()
                return self._connect(path)
        except (sqlite3.Error, _Unusable, OSError) as e:  # locked by another mount past the timeout, ...
            log.warning("disk cache: cannot open the index %s (%s); continuing with the memory cache only", path, e)
            self.enabled = False
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            for statement in _SCHEMA:
                db.execute(statement)
            return db

    def _connect(self, path: Path) -> sqlite3.Connection:
        # created here, 0600 and not through a link, before SQLite opens it (its -wal and -shm
        # files take this file's mode)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Unusable(f"{path} is not a regular file")
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last commits, never consistency
            db.execute("PRAGMA cache_size=-2048")  # KiB: the index's pages in RAM stay few
            db.execute("PRAGMA journal_size_limit=16777216")  # the WAL cut back after a checkpoint
            with _transaction(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise _Unusable(f"index version {version}, not {SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("SELECT COUNT(*) FROM packs").fetchone()  # a damaged file fails here, not later
        except BaseException:
            db.close()
            raise
        return db

    def _remove_all_files(self) -> None:
        for name in os.listdir(self.root):
            if name.startswith(INDEX_NAME) or name.endswith(PACK_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(self.root / name)

    def _count_used(self) -> int:
        with self._db_lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM packs").fetchone()[0])

    def load_index(self) -> None:
        """At start, in a thread: remove what an earlier version or a dead writer left, then build
        the filter `might_have` answers from. The store works before it is done."""
        self._remove_old_layout()
        self._remove_orphan_packs()
        self._build_filter()

    def _remove_old_layout(self) -> None:
        try:
            old = [e.path for e in os.scandir(self.root) if _is_old_layout_dir(e)]
        except OSError:
            return
        if old:
            log.info("disk cache: removing the previous version's cache files in %s", self.root)
        for path in old:
            shutil.rmtree(path, ignore_errors=True)  # (does not follow links)

    def _remove_orphan_packs(self) -> None:
        with self._db_lock:
            known = {n for (n,) in self._db.execute("SELECT n FROM packs")}
        own = self._pack.number if self._pack is not None else None
        old = time.time() - ORPHAN_AGE
        for entry in os.scandir(self.root):
            if not entry.name.endswith(PACK_SUFFIX):
                continue
            try:
                number = int(entry.name[: -len(PACK_SUFFIX)], 16)
                if number not in known and number != own and entry.stat(follow_symlinks=False).st_mtime < old:
                    os.unlink(entry.path)
            except (ValueError, OSError):
                pass

    def _build_filter(self) -> None:
        """`might_have`'s filters anew: the groups (id >> 16: a file's 65536 neighbouring blocks,
        or one other record) of every id in the index, and an empty filter of the ids this store
        writes from then on. Groups, because a C-level `SELECT DISTINCT` lists them (0.9 s for
        2.6M blocks of large files, against 15 s for a Python pass over every id); a block of a
        file found partly on disk at start is then a "maybe" (a thread hop and an index lookup),
        while a block of a file read since is known exactly. (Its own connection: no lock held.)"""
        with self._filter_build_lock:  # one build at a time: each owns the pending list
            self._build_filter_now()

    def _build_filter_now(self) -> None:
        self._written_pending = []
        try:
            db = sqlite3.connect(str(self.root / INDEX_NAME), timeout=BUSY_TIMEOUT, check_same_thread=False)
            try:
                db.execute("PRAGMA cache_size=-512")  # one pass: few pages are read twice
                (count,) = db.execute("SELECT COUNT(*) FROM entries").fetchone()
                groups = _Filter(2 * count)
                add = groups.add
                for (group,) in db.execute("SELECT DISTINCT k >> 16 FROM entries"):
                    add(group)
            finally:
                db.close()
        except sqlite3.Error as e:
            log.warning("disk cache: cannot read the index: %s", e)
            self._written_pending = None
            return
        written = _Filter(self._written_capacity)
        with self._write_lock:
            for kid in self._written_pending or ():
                written.add(kid)
            self._written_pending = None
            self._groups, self._written = groups, written

    # -- reads ------------------------------------------------------------------------------

    def might_have(self, key: str) -> bool:
        """False only when the key is surely not on disk: saves a thread hop per cold miss.
        (A record another mount writes later is then fetched, not read: still correct.)"""
        if not self.enabled:
            return False
        groups, written = self._groups, self._written
        if groups is None:
            return True
        kid = key_digest(key)[0]
        return kid >> 16 in groups or kid in written

    def contains(self, key: str) -> bool:
        if not self.enabled:
            return False
        try:
            with self._db_lock:
                return self._db.execute("SELECT 1 FROM entries WHERE k=?", (key_digest(key)[0],)).fetchone() is not None
        except sqlite3.Error:
            return False

    def get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        kid, seed = key_digest(key)
        try:
            with self._db_lock:
                row = self._db.execute("SELECT pack, pos, len, sum FROM entries WHERE k=?", (kid,)).fetchone()
        except sqlite3.Error as e:
            log.warning("disk cache: cannot read the index: %s", e)
            return None
        if row is None:
            return None
        pack, pos, length, expected = row
        try:
            data = self._pread(pack, pos, length)
        except FileNotFoundError:  # evicted by another mount between its row and its file, or lost
            self._forget_packs([pack])
            return None
        except OSError as e:
            log.warning("disk cache: cannot read %s: %s", self.root / pack_name(pack), e.strerror)
            return None
        if len(data) != length or checksum(data, seed) != expected:
            log.warning("disk cache: a record in %s is corrupt or truncated; dropped", self.root / pack_name(pack))
            self._delete_rows("DELETE FROM entries WHERE k=? AND pack=? AND pos=?", [(kid, pack, pos)])
            return None
        self._touch(pack)
        return data

    def _pread(self, pack: int, pos: int, length: int) -> bytes:
        with self._fd_lock:  # held while reading: an fd is never closed (and reused) under a read
            fd = self._fds.get(pack)
            if fd is None:
                fd = os.open(self.root / pack_name(pack), os.O_RDONLY | _OPEN_FLAGS)
                self._fds[pack] = fd
                while len(self._fds) > READ_FDS:
                    os.close(self._fds.popitem(last=False)[1])
            else:
                self._fds.move_to_end(pack)
            return os.pread(fd, length, pos)

    def _touch(self, pack: int) -> None:
        now = time.monotonic()
        self._touched[pack] = time.time()
        if now - self._touch_flushed >= TOUCH_FLUSH_SECONDS:
            self._flush_touches()

    def _flush_touches(self) -> None:
        self._touch_flushed = time.monotonic()
        touched, self._touched = self._touched, {}
        if not touched:
            return
        try:
            with self._db_lock, _transaction(self._db):
                self._db.executemany("UPDATE packs SET used=max(used, ?) WHERE n=?", [(t, n) for n, t in touched.items()])
        except sqlite3.Error as e:
            log.debug("disk cache: recency not recorded: %s", e)

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Store `data` under `key`; False when it could not be (disk full, I/O error)."""
        return self.put_many([(key, data)]) == 1

    def put_many(self, items: Iterable[tuple[str, bytes | memoryview]]) -> int:
        """Store each (key, data): one append and one index commit per pack it fills. How many
        were stored, in order (fewer than all when the disk failed)."""
        if not self.enabled:
            return 0
        items = list(items)
        checked = []
        for key, data in items:  # (outside the locks)
            kid, seed = key_digest(key)
            checked.append((kid, len(data), checksum(data, seed)))
        stored = 0
        with self._write_lock:
            retried = False
            while stored < len(items):
                try:
                    done = self._append(items, checked, stored)
                except OSError as e:
                    self._write_failed(e.errno, e.strerror or str(e))
                    break
                except sqlite3.Error as e:
                    self._write_failed(_SQLITE_FULL if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL else None, str(e))
                    break
                if done == 0:  # the pack was evicted under us: once more, into a new one
                    if retried:
                        break
                    retried = True
                stored += done
            grow = self._remember(checked[:stored])
        if grow:
            threading.Thread(target=self._build_filter, name="ciartfs-cache-filter", daemon=True).start()
        if self._used > self.max_bytes or time.monotonic() - self._used_counted > TOUCH_FLUSH_SECONDS:
            self._evict()
        return stored

    def _remember(self, checked: list[tuple[int, int, int]]) -> bool:
        """Written ids into the filter of this store's writes (and the one being built); True
        when it is full: then the filters are built again (in the background)."""
        written, pending = self._written, self._written_pending
        for kid, _, _ in checked:
            written.add(kid)
            if pending is not None:
                pending.append(kid)
        return written.count > written.capacity and pending is None and self._groups is not None

    def _append(self, items: list[tuple[str, bytes | memoryview]], checked: list[tuple[int, int, int]], first: int) -> int:
        """Append items[first:] (as many as fit the own pack, at least one) and commit their rows:
        how many; 0 when the pack was evicted meanwhile (it is then dropped)."""
        pack = self._pack
        if pack is None:
            pack = self._pack = self._new_pack()
        # as many as fit (at least one); a record O_DIRECT may write starts on a page boundary,
        # after a hole of less than a page
        start = pos = pack.size
        rows: list[tuple[int, int, int, int, int]] = []
        for index in range(first, len(items)):
            kid, length, check = checked[index]
            at = -(-pos // PAGE) * PAGE if pack.direct >= 0 and _direct_candidate(items[index][1]) else pos
            if rows and at + length > self.pack_bytes:
                break
            rows.append((kid, pack.number, at, length, check))
            pos = at + length
        end = first + len(rows)
        self._write_records(pack, items[first:end], rows)
        # Few statements, each one step: SQLite lets the GIL go at every step (executemany: every
        # row), and a writer thread then waits for a busy trio thread each time (a transaction of
        # 64 rows took 300 ms beside a busy thread). Each statement is its own transaction: the
        # rows go in only while the pack is recorded, and an eviction between the two statements
        # takes them with the pack (the UPDATE then finds no pack).
        with self._db_lock:
            for chunk in range(0, len(rows), _ROWS_PER_INSERT):
                part = rows[chunk:chunk + _ROWS_PER_INSERT]
                values = ",".join(["(?,?,?,?,?)"] * len(part))
                inserted = self._db.execute(
                    f"INSERT OR REPLACE INTO entries (k, pack, pos, len, sum) SELECT * FROM (VALUES {values}) "
                    f"WHERE EXISTS (SELECT 1 FROM packs WHERE n=?)",
                    [v for row in part for v in row] + [pack.number]).rowcount
                if inserted == 0:
                    break
            else:
                inserted = self._db.execute("UPDATE packs SET size=max(size, ?), used=? WHERE n=?",
                                            (pos, time.time(), pack.number)).rowcount
        if inserted == 0:  # evicted (by another mount, or by this one's own bound): a new pack for these
            self._close_pack()
            return 0
        self._used += pos - start
        pack.size = pos
        if pack.size >= self.pack_bytes:
            self._close_pack()
        return end - first

    def _write_records(self, pack: _Pack, items: list[tuple[str, bytes | memoryview]],
                       rows: list[tuple[int, int, int, int, int]]) -> None:
        """Write each record at its row's position, runs of consecutive records with one pwritev:
        those `_append` placed for O_DIRECT through `pack.direct` when they are page-aligned in
        memory too, the others through the page cache."""
        i = 0
        while i < len(items):
            pos = rows[i][2]
            direct = pack.direct >= 0 and pos % PAGE == 0 and _direct_candidate(items[i][1])
            j, end = i + 1, pos + rows[i][3]
            while j < len(items) and j - i < _IOV_MAX and rows[j][2] == end \
                    and (pack.direct >= 0 and _direct_candidate(items[j][1])) == direct:
                end += rows[j][3]
                j += 1
            buffers = [data for _, data in items[i:j]]
            if direct and page_aligned(buffers[0]):
                try:
                    _pwrite_all(pack.direct, buffers, pos)
                    i = j
                    continue
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # Refused before anything was written: a buffer not page-aligned after all,
                    # or a device whose sectors are larger than a page. Through the page cache.
                    self._direct_refused += 1
                    if self._direct_refused >= DIRECT_REFUSALS_TOLERATED:
                        log.info("disk cache: O_DIRECT writes refused in %s; writing through the page cache", self.root)
                        self._direct = False
                        os.close(pack.direct)
                        pack.direct = -1
            _pwrite_all(pack.fd, buffers, pos)
            i = j

    def _new_pack(self) -> _Pack:
        while True:
            number = secrets.randbits(62)
            try:
                fd = os.open(self.root / pack_name(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
        try:
            with self._db_lock, _transaction(self._db):
                self._db.execute("INSERT INTO packs VALUES (?, 0, ?)", (number, time.time()))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.root / pack_name(number))
            raise
        direct = -1
        if self._direct:
            try:
                direct = os.open(self.root / pack_name(number), os.O_WRONLY | os.O_DIRECT | _OPEN_FLAGS)
            except OSError as e:  # (EINVAL: a filesystem without O_DIRECT, such as an older tmpfs)
                log.info("disk cache: no O_DIRECT writes in %s (%s); writing through the page cache", self.root,
                         e.strerror)
                self._direct = False
        return _Pack(number, fd, direct)

    def _close_pack(self) -> None:
        if self._pack is not None:
            os.close(self._pack.fd)
            if self._pack.direct >= 0:
                os.close(self._pack.direct)
            self._pack = None

    def _write_failed(self, code: int | None, why: str) -> None:
        if code in (errno.ENOSPC, errno.EDQUOT, _SQLITE_FULL):
            log.warning("disk cache: %s is full (%s); continuing with the memory cache only", self.root, why)
            self.enabled = False
        else:
            log.warning("disk cache: cannot write in %s: %s", self.root, why)
        self._close_pack()  # its end may hold a partial append: a new pack for the next write

    def discard(self, key: str) -> None:
        self.discard_many([key])

    def discard_many(self, keys: Iterable[str]) -> None:
        """Forget these keys, for every mount using the directory. Their bytes go with their pack,
        except in this store's own pack (what it just wrote: a failed decode, an artifact found
        wrong): its end is cut off, and what lies before a later record (another file's block or
        an API document written meanwhile) is punched out, at once, unless a write is under way
        (never waited for: the caller is often a read about to fail with EIO)."""
        spans: list[tuple[int, int, int]] = []  # (pack, pos, len) of the records forgotten
        try:
            with self._db_lock, _transaction(self._db):
                for k in keys:
                    spans += self._db.execute("DELETE FROM entries WHERE k=? RETURNING pack, pos, len",
                                              (key_digest(k)[0],)).fetchall()
        except sqlite3.Error as e:
            log.warning("disk cache: cannot update the index: %s", e)
            return
        if not self._write_lock.acquire(blocking=False):
            return
        try:
            pack, end = self._pack, None
            if pack is None:
                return
            try:
                with self._db_lock, _transaction(self._db):
                    (end,) = self._db.execute("SELECT COALESCE(MAX(pos + len), 0) FROM entries WHERE pack=?",
                                              (pack.number,)).fetchone()
                    if end < pack.size:
                        self._db.execute("UPDATE packs SET size=? WHERE n=?", (end, pack.number))
            except sqlite3.Error as e:
                log.warning("disk cache: cannot update the index: %s", e)
                return
            if end is not None and end < pack.size:
                try:
                    os.ftruncate(pack.fd, end)
                except OSError as e:
                    log.warning("disk cache: cannot shorten %s: %s", self.root / pack_name(pack.number), e.strerror)
                self._used -= pack.size - end
                pack.size = end
            # (adjacent records punched as one range: a hole frees whole filesystem blocks only)
            lo = hi = 0
            for number, pos, length in sorted(spans):
                if number != pack.number or pos >= pack.size:
                    continue
                if pos > hi:
                    punch_hole(pack.fd, lo, hi - lo)
                    lo = pos
                hi = min(pos + length, pack.size)
            punch_hole(pack.fd, lo, hi - lo)
        finally:
            self._write_lock.release()

    def _delete_rows(self, sql: str, rows: Sequence[tuple[int, ...]]) -> None:
        try:
            with self._db_lock, _transaction(self._db):
                self._db.executemany(sql, rows)
        except sqlite3.Error as e:
            log.warning("disk cache: cannot update the index: %s", e)

    # -- eviction -----------------------------------------------------------------------------

    def _evict(self) -> None:
        """Down to EVICT_TO of the bound, oldest packs first (every mount's writes counted)."""
        self._flush_touches()
        target = int(self.max_bytes * EVICT_TO)
        freed: list[int] = []
        try:
            with self._db_lock, _transaction(self._db):
                used = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM packs").fetchone()[0])
                if used > self.max_bytes:
                    for number, size in self._db.execute("SELECT n, size FROM packs ORDER BY used").fetchall():
                        if used <= target:
                            break
                        self._db.execute("DELETE FROM entries WHERE pack=?", (number,))
                        self._db.execute("DELETE FROM packs WHERE n=?", (number,))
                        used -= size
                        freed.append(number)
                self._used = used
                self._used_counted = time.monotonic()
        except sqlite3.Error as e:
            log.warning("disk cache: eviction failed: %s", e)
            return
        self._unlink_packs(freed)

    def _forget_packs(self, numbers: list[int]) -> None:
        """Packs found gone: their rows go too."""
        try:
            with self._db_lock, _transaction(self._db):
                for number in numbers:
                    self._db.execute("DELETE FROM entries WHERE pack=?", (number,))
                    self._db.execute("DELETE FROM packs WHERE n=?", (number,))
        except sqlite3.Error as e:
            log.warning("disk cache: cannot update the index: %s", e)
        self._unlink_packs(numbers)

    def _unlink_packs(self, numbers: list[int]) -> None:
        with self._fd_lock:
            for number in numbers:
                fd = self._fds.pop(number, None)
                if fd is not None:
                    os.close(fd)
        for number in numbers:
            with contextlib.suppress(OSError):
                os.unlink(self.root / pack_name(number))

    # -- the whole store ------------------------------------------------------------------------

    @property
    def bytes_used(self) -> int:
        try:
            return self._count_used()
        except sqlite3.Error:
            return self._used

    def describe(self) -> dict[str, Any]:
        """For `ciartfs cache info`: bytes, pack files, records, the oldest pack's last use."""
        with self._db_lock:
            size, packs, oldest = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*), MIN(used) FROM packs").fetchone()
            (records,) = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()
        old_files = old_bytes = 0
        for entry in os.scandir(self.root):
            if _is_old_layout_dir(entry):
                for sub in _walk_files(entry.path):
                    old_files += 1
                    old_bytes += sub.st_size
        return {"bytes": int(size) + old_bytes, "files": int(packs) + old_files, "records": int(records),
                "least_recently_used": oldest}

    def clear(self, older_than: float | None = None) -> tuple[int, int]:
        """Remove the packs last used before `older_than` (time.time()), or all of them and the
        previous version's files: (files removed, bytes freed)."""
        self._flush_touches()
        cutoff = float("inf") if older_than is None else older_than
        with self._db_lock, _transaction(self._db):
            victims = self._db.execute("SELECT n, size FROM packs WHERE used < ?", (cutoff,)).fetchall()
            for number, _ in victims:
                self._db.execute("DELETE FROM entries WHERE pack=?", (number,))
                self._db.execute("DELETE FROM packs WHERE n=?", (number,))
        self._unlink_packs([n for n, _ in victims])
        removed, freed = len(victims), sum(size for _, size in victims)
        if older_than is None:
            for entry in os.scandir(self.root):
                if _is_old_layout_dir(entry):
                    for sub in _walk_files(entry.path):
                        removed += 1
                        freed += sub.st_size
                    shutil.rmtree(entry.path, ignore_errors=True)
        return removed, freed

    def close(self) -> None:
        """At unmount: recency recorded, files closed."""
        self._flush_touches()
        with self._write_lock:
            self._close_pack()
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        with self._db_lock:
            self._db.close()


_FALLOCATE = libc.function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def punch_hole(fd: int, pos: int, length: int) -> bool:
    """Give the disk blocks of [pos, pos + length) of a file back (it then reads as zeros, a
    checksum's miss; its size stays): whole filesystem blocks only. False where the filesystem
    or the platform cannot (the bytes then go with their file)."""
    return _FALLOCATE is not None and length > 0 and _FALLOCATE(fd, _PUNCH_HOLE_KEEP_SIZE, pos, length) == 0


def _walk_files(path: str) -> Iterator[os.stat_result]:
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                yield os.lstat(os.path.join(dirpath, name))


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error): the write lock taken at the start, so
    a transaction never fails half-way for another mount's."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
