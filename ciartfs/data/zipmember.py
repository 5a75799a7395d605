"""Zip archives' members as files (issue 18): listing them from the archive's index, read by
range, and serving each member's bytes from the archive's bytes.

`ZipArchives.members(archive)` reads the archive's tail (already there: a TAIL_FIRST archive's
size probe keeps it), then its central directory in one read (nothing more when the tail
holds it), parses it (zipindex.py) and arranges the members by the artifact path rules
(names.py) in a worker thread, and returns the member tree's top-level entries, kept per
archive key (LISTED_MEMBERS_KEPT). Each member is a file whose Artifact has its own key
(`member_key`: the archive's key, NUL, the member's path; NUL never occurs in a key
otherwise, since no name may hold it) and a `ZipMember` source, served by `ZipMemberReader`
through the reader's tiers like any artifact.

Decisions:
- Not a zip (no end record), an index refused (zipindex.BadZip: hostile, corrupt, over a
  limit), or an archive that may change (not immutable): `members` returns None, logged, and
  the caller shows the archive as one file. A transport failure raises (CiartfsError).
- Directories become StaticDirs (immutable, ttl None); directory entries with no member below
  show as empty directories. Symlink members (unix mode S_IFLNK) are regular files holding the
  link text, as stored: a link inside a mount could lead anywhere outside it.
- A member whose index entry is wrong (overlapping, encrypted, outside the archive), of a
  method without a reader, or found wrong when read (a local header missing, a size or CRC-32
  that lies, a corrupt stream, a bomb) is listed and read as EIO, with one log line; a member
  found wrong is remembered as such for the mount's life (its bytes will not come right).

Reading a member (the reader holds the block's single flight; blocks are the member's own,
keyed by `Blocks.key` under the member's key; the archive's bytes come through
`reader.read(archive, ...)`, so its blocks are cached and read ahead as any artifact's):
- its local header is read once to find where its data begins (LRU of offsets);
- stored: block i is the archive's bytes [data + i*bs, ...); the CRC-32 is checked when its
  blocks have been fetched in order from the start (as hashes.py does for promised hashes);
- no read-ahead of a member's own blocks (see `readahead_wanted`): the archive's bytes are
  read ahead instead, each member's reads passing their own ReadStream, whose read-ahead stops
  at the member's end: reading one member of a large archive fetches that member only. A
  member whose reads begin where the previous member of its archive was read to its end (the
  next local header; `grep -r` or `cat *` of small members in archive order) continues that
  member's ReadStream, without the limit: the archive is then read ahead across members, in
  parallel ranged requests (readahead.py), as one sequentially read file would be;
- decoding ahead: when a member is opened while its archive's members are being read in
  order up to it (its ReadStream continued, as above), the next DECODE_AHEAD_MEMBERS members
  are decoded in the background (topped up once fewer than DECODE_AHEAD_REFILL are): rows of
  neighbouring deflated members of at most WHOLE_MEMBER_BYTES, up to AHEAD_BATCH_BYTES a
  batch, each batch one read of the archive's bytes and one worker-thread call that decodes
  each member whole and checks its size and CRC-32 (`grep -r` then finds them decoded: zlib
  runs on the other core). A member found wrong there is not kept: its reader decodes it as
  below, and fails. A reader of a member its batch has not done yet waits for the batch. Its
  blocks go to memory only, not to disk: the archive's compressed blocks are written to disk
  as fetched, and decoding a small member again from them costs about what reading its
  decoded blocks back would, while writing them cost a quarter of `grep -r`'s CPU (0.5 of
  2.1 CPU-s over 200 MiB of text) and five times the disk space; a member decoded again by a
  pass (evicted from memory, a later mount) is written then;
- deflated, bzip2, lzma: decoded in worker threads in steps of at most STEP_BLOCKS blocks
  (a step of little input that is to produce at most INLINE_OUTPUT_BYTES, on the trio thread
  itself, unless decoding ahead), one pass per member at a time, from the nearest starting point at or before the block: a
  checkpoint (a copy of zlib's decompressor, its 32 KiB window included, taken every
  CHECKPOINT_BYTES of output; at most CHECKPOINTS_PER_MEMBER per member, spaced wider as a
  member grows, and CHECKPOINTS_KEPT in all, least recently used members dropped first), or
  where the last pass stopped (its decompressor itself: sequential reads never decode again).
  bzip2 and lzma decompressors cannot be copied: they restart from the start on a backward
  seek. Every block a pass decodes is kept. A pass that decodes the member to its end checks
  the stream ends exactly at its stated size and its CRC-32; a mismatch drops its blocks.
- Bounds: a compressed member larger than --max-decoded-size is refused; a pass reads no
  compressed byte past the member's compressed size; more than MAX_DECODE_RATIO bytes per
  compressed byte (decode.py's bomb rule) stops it; memory is a few blocks per pass plus the
  checkpoints.
"""

from __future__ import annotations

import bz2
import contextvars
import dataclasses
import json
import logging
import lzma
import zlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

import cachetools
import trio
from isal import isal_zlib

from ciartfs.data import zipindex
from ciartfs.data.cache import SingleFlight
from ciartfs.data.decode import DECODE_RATIO_AFTER, MAX_DECODE_RATIO
from ciartfs.data.readahead import ReadStream
from ciartfs.data.sources import MemberOrder, ZipMember
from ciartfs.data.zipindex import BZIP2, DEFLATED, LZMA, STORED, BadZip, NotAZip, ZipEntry
from ciartfs.errors import CiartfsError, UpstreamError, again, redact_url
from ciartfs.namespace.model import Artifact, Entry, Kind
from ciartfs.namespace.names import place_artifacts, place_directories, tree_entries

if TYPE_CHECKING:
    from ciartfs.data.reader import Reader

log = logging.getLogger(__name__)

# Between an archive's key and a member's path in the member's key: no key holds it otherwise.
MEMBER_KEY_SEPARATOR = "\x00"
# Parsed listings kept (their entries), counted in members (an archive counts one at least).
LISTED_MEMBERS_KEPT = 2_000_000
# Decoding: compressed bytes read from the archive at a time; blocks decoded per worker call.
DECODE_CHUNK = 256 << 10
STEP_BLOCKS = 8
# A step this small (compressed input, and output blocks up to the one wanted) is decoded on
# the trio thread: well under a millisecond, while a worker thread's round trip costs about as
# much, and on a busy machine often more (`grep -r` over thousands of small members).
INLINE_INPUT_BYTES = 64 << 10
INLINE_OUTPUT_BYTES = 256 << 10
# Decoding ahead of a reader going through an archive's members in order: up to this many
# members after the one opened are scheduled, in batches, once fewer than DECODE_AHEAD_REFILL
# of them are; a batch is a row of deflated members of at most WHOLE_MEMBER_BYTES each, at most
# AHEAD_BATCH_BYTES decoded (and as many compressed) in all, decoded whole in one worker-thread
# call (a hop per member, and a pass's bookkeeping per member, cost more than inflating it).
DECODE_AHEAD_MEMBERS = 32
DECODE_AHEAD_REFILL = 16
WHOLE_MEMBER_BYTES = 1 << 20
AHEAD_BATCH_BYTES = 4 << 20
# (set in a decode-ahead task: its steps go to a worker thread, never inline)
_IN_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("zip_decode_ahead", default=False)
# Checkpoints (about 40 KiB each: zlib's state and window).
CHECKPOINT_BYTES = 4 << 20
CHECKPOINTS_PER_MEMBER = 64
CHECKPOINTS_KEPT = 512
# Members remembered: where their data begins, what was found wrong with them, CRC progress.
MEMBERS_KEPT = 100_000
# Stored members being read, whose read-ahead state is kept.
STREAMS_KEPT = 10_000
# The CRC-32 of a stored member is computed from the blocks fetched in order; besides the
# fetched block, at most this many following ones are taken from memory per fetch.
CRC_AHEAD_BLOCKS = 8
# A member whose local header begins at most this far after where the previous member's data
# ended (read to its end) continues its read-ahead (a data descriptor may lie between).
CONTINUE_GAP = 64 << 10


def member_key(archive: Artifact, path: str) -> str:
    return archive.key + MEMBER_KEY_SEPARATOR + path


def _where(art: Artifact) -> str:
    """A member, for logs: its archive's URL (redacted) and its path."""
    path = art.key.partition(MEMBER_KEY_SEPARATOR)[2]
    return f"{redact_url(art.url)} member {path!r}"


# -- listing -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Listing:
    entries: list[Entry] | None  # None: not shown as a zip
    weight: int  # 1 + its members


class ZipArchives:
    """Lists zip archives' members (one per mount, over its Reader; see the module docstring)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._listed: cachetools.LRUCache[str, _Listing] = cachetools.LRUCache(
            LISTED_MEMBERS_KEPT, getsizeof=lambda listing: listing.weight)
        self._listing: SingleFlight[_Listing] = SingleFlight()
        self.listings = 0  # archives whose index was read (tests count them)

    async def members(self, archive: Artifact, *, where: str, mtime: float,
                      info: Mapping[str, str] | None = None) -> list[Entry] | None:
        """The top-level entries of `archive`'s member tree, or None when it is not to be shown
        as a zip (see the module docstring). `where` names it in log lines; `mtime` is the
        directories' (and members' without a time of their own); `info` adds xattrs to every
        member (each member also has `zip`: its path, method, sizes and CRC-32 as JSON)."""
        listing = self._listed.get(archive.key)
        if listing is None:
            listing = await self._listing.run(archive.key, lambda: self._list(archive, where, mtime, dict(info or {})))
        return None if listing.entries is None else list(listing.entries)

    async def _list(self, archive: Artifact, where: str, mtime: float, info: dict[str, str]) -> _Listing:
        entries, members = await self._read_index(archive, where, mtime, info)
        listing = _Listing(entries, 1 + members)
        try:
            self._listed[archive.key] = listing
        except ValueError:
            pass  # larger than the whole cache: not kept
        return listing

    async def _read_index(self, archive: Artifact, where: str, mtime: float,
                          info: dict[str, str]) -> tuple[list[Entry] | None, int]:
        if not archive.immutable or archive.error or archive.gone is not None:
            return None, 0  # (a member's place in an archive that may change would not stay right)
        r = self.reader
        size = await r.size(archive)
        n = zipindex.tail_length(size)
        tail = await r.read(archive, size - n, n, total=size)
        self.listings += 1
        try:
            found = zipindex.find_directory(tail, size - n, size)
            if isinstance(found, zipindex.Zip64Elsewhere):
                record = await r.read(archive, found.offset, zipindex.ZIP64_EOCD_SIZE, total=size)
                found = zipindex.zip64_directory(record, found.offset, found.eocd)
            d = found
            if d.offset >= size - n:  # the tail holds it
                cd = tail[d.offset - (size - n):d.offset - (size - n) + d.size]
            else:
                cd = await r.read(archive, d.offset, d.size, total=size)
            del tail

            def arrange() -> tuple[list[Entry], int]:  # (CPU: a second or more for a million members)
                parsed = zipindex.parse_directory(cd, d)
                return _entries(archive, parsed, where=where, mtime=mtime, info=info), len(parsed)

            return await trio.to_thread.run_sync(arrange)
        except NotAZip:
            log.info("%s: not a zip (no end-of-central-directory record): shown as one file", where)
            return None, 0
        except BadZip as e:
            log.warning("%s: its zip index is refused (%s): shown as one file", where, e)
            return None, 0


def _entries(archive: Artifact, parsed: list[ZipEntry], *, where: str, mtime: float,
             info: dict[str, str]) -> list[Entry]:
    files = ((e.name, e) for e in parsed if not e.is_dir)
    tree = place_artifacts(files, where=where, tiebreak=lambda e: f"{e.header_offset:020d}")
    # directory entries: empty directories show too
    place_directories(tree, (e.name for e in parsed if e.is_dir), where=where, entries=len(parsed))

    order = MemberOrder()

    def make_file(name: str, path: str, e: ZipEntry) -> Entry:
        source = ZipMember(archive, e.header_offset, e.compressed_size, e.method, e.crc32, problem=e.problem,
                           data_limit=e.data_limit, order=order)
        art = Artifact(key=member_key(archive, path), url=archive.url, immutable=True, size=e.size,
                       credentialed=archive.credentialed, source=source)
        order.add(e.header_offset, art)
        return Entry(name, Kind.FILE, mtime=mtime if e.mtime is None else e.mtime, immutable=True, artifact=art,
                     info=_MemberInfo(e, info))

    entries = tree_entries(tree, make_file, mtime=mtime, immutable=True, ttl=None)
    order.seal()  # (sorted here, in the listing's worker thread)
    return entries


class _MemberInfo(Mapping[str, str]):
    """A member's xattrs: the caller's, and `zip` (its path, method, sizes, CRC-32 as JSON),
    made when asked for (a JSON string per member would cost a listing of a million members
    seconds and a hundred MiB)."""

    __slots__ = ("entry", "shared")

    def __init__(self, entry: ZipEntry, shared: dict[str, str]) -> None:
        self.entry = entry
        self.shared = shared

    def __getitem__(self, key: str) -> str:
        if key != "zip":
            return self.shared[key]
        e = self.entry
        described: dict[str, object] = {"member": e.name, "method": zipindex.method_name(e.method), "size": e.size,
                                        "compressed_size": e.compressed_size, "crc32": f"{e.crc32:08x}"}
        if e.is_symlink:
            described["symlink"] = True  # (a regular file holding the link's target)
        if e.problem:
            described["problem"] = e.problem
        return json.dumps(described)

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in self.shared if k != "zip")
        yield "zip"

    def __len__(self) -> int:
        return len(self.shared) + (0 if "zip" in self.shared else 1)


# (isal's stub types its error class as an instance)
_INFLATE_ERRORS: tuple[type[Exception], ...] = (cast(type[Exception], isal_zlib.error), zlib.error)


def _member_source(member: Artifact) -> ZipMember:
    src = member.source
    assert isinstance(src, ZipMember)
    return src


def _decode_whole(span: bytes, lo: int, members: list[Artifact],
                  block_size: int) -> list[tuple[Artifact, list[bytes] | None, int]]:
    """Small deflated members decoded whole from `span` (the archive's bytes from `lo`, which
    hold their local headers and data): per member its blocks, or None when anything about it
    is wrong (its reader finds out what), and where its data begins. A worker thread's: ISA-L
    (zlib's format, twice its speed) releases the GIL. The output is bounded by the size the
    index says (+1)."""
    found: list[tuple[Artifact, list[bytes] | None, int]] = []
    view = memoryview(span)
    for m in members:
        src = _member_source(m)
        size = m.size or 0
        at = src.header_offset - lo
        try:
            start = zipindex.local_data_offset(span[at:at + zipindex.LOCAL_HEADER_SIZE], src.header_offset)
        except BadZip:
            found.append((m, None, 0))
            continue
        end = start + src.compressed_size
        if end > src.data_limit or end - lo > len(span):
            found.append((m, None, start))
            continue
        inflater = isal_zlib.decompressobj(-15)
        try:
            out = inflater.decompress(view[start - lo:end - lo], size + 1)
        except _INFLATE_ERRORS:
            out = b""
        if len(out) != size or not inflater.eof or isal_zlib.crc32(out) != src.crc32:
            found.append((m, None, start))
            continue
        blocks = [out] if size <= block_size else [out[i:i + block_size] for i in range(0, size, block_size)]
        found.append((m, blocks, start))
    return found


# -- decompressors -------------------------------------------------------------------------------


class _Inflater(Protocol):
    eof: bool

    def step(self, data: memoryview, max_out: int) -> tuple[bytes, int]:
        """Up to `max_out` bytes of output from `data` (and input held back before): the output
        and how many bytes of `data` were taken."""
        ...

    def copy(self) -> _Inflater | None:
        """An independent copy of the state, or None when the kind cannot be copied."""
        ...


class _Zlib:
    def __init__(self, obj: zlib._Decompress | None = None) -> None:
        self.obj = obj if obj is not None else zlib.decompressobj(-15)
        self.eof = False

    def step(self, data: memoryview, max_out: int) -> tuple[bytes, int]:
        out = self.obj.decompress(data, max_out)
        self.eof = self.obj.eof
        left = len(self.obj.unused_data) if self.eof else len(self.obj.unconsumed_tail)
        return out, len(data) - left

    def copy(self) -> _Zlib:
        return _Zlib(self.obj.copy())


class _Buffering:
    """bz2 and lzma: they hold the input they were given until asked for its output."""

    def __init__(self, obj: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self.obj = obj
        self.eof = False

    def step(self, data: memoryview, max_out: int) -> tuple[bytes, int]:
        out, taken = b"", 0
        if not self.obj.needs_input:  # output from what it holds (it may want more input yet)
            out = self.obj.decompress(b"", max_out)
        if not out and not self.obj.eof and data:
            out, taken = self.obj.decompress(data, max_out), len(data)
        self.eof = self.obj.eof
        if self.eof:
            taken -= len(self.obj.unused_data)
        return out, max(taken, 0)

    def copy(self) -> None:
        return None


@dataclasses.dataclass
class _Start:
    """Where decoding can start: output block `block`, compressed offset `in_pos` (from the
    member's data), the CRC-32 of the output before it, and the decompressor there."""

    block: int
    in_pos: int
    crc: int
    inflater: _Inflater


class _Bad(Exception):
    """The member's stream is not what its index says (message: why)."""


class _Pass:
    """One pass of a member's decompressor, from a `_Start`; `step` runs in a worker thread,
    one call at a time."""

    def __init__(self, start: _Start, *, block_size: int, size: int, compressed_size: int, crc32: int,
                 checkpoint_blocks: int, end_marker_optional: bool) -> None:
        self.inflater = start.inflater
        self.block = start.block  # the block being decoded (its bytes so far in `pending`)
        self.in_pos = start.in_pos
        self.crc = start.crc
        self.bs = block_size
        self.size = size
        self.compressed_size = compressed_size
        self.expected_crc = crc32
        self.checkpoint_blocks = checkpoint_blocks
        self.end_marker_optional = end_marker_optional  # lzma without its end-of-stream marker
        self.pending = bytearray()
        self.checkpoints: list[_Start] = []
        self.decoded = 0  # bytes inflated by this pass
        self.finished = False  # decoded to its end, sizes and CRC-32 checked

    def step(self, data: bytes, until: int) -> tuple[list[tuple[int, bytes]], int]:
        """Decode `data` (the compressed bytes at `in_pos`; empty: none are left) until block
        `until` is out, STEP_BLOCKS blocks are, or `data` is used up: the blocks finished and
        how much of `data` was used. Raises _Bad."""
        view = memoryview(data)
        used = 0
        out: list[tuple[int, bytes]] = []
        bs = self.bs
        while len(out) < STEP_BLOCKS and not self.finished and not (out and out[-1][0] >= until):
            produced = self.block * bs + len(self.pending)
            if produced == self.size:
                ended, taken = self._ended(view[used:], no_more_input=not data)
                used += taken
                if ended:
                    out.append((self.block, bytes(self.pending)))
                    self.finished = True
                break  # (else more input is needed to see the end)
            want = min(bs - len(self.pending), self.size - produced)
            chunk, taken = self.inflater.step(view[used:], want)
            used += taken
            self.decoded += len(chunk)
            self.pending += chunk
            if not chunk and not taken:
                if self.inflater.eof:
                    raise _Bad(f"its stream ends after {produced} of its {self.size} bytes")
                if used < len(data):
                    raise _Bad("its stream makes no progress")
                if not data:
                    raise _Bad(f"its compressed data ends after {produced} of its {self.size} bytes")
                break  # more input needed
            if self.inflater.eof and self.block * bs + len(self.pending) < self.size:
                raise _Bad(f"its stream ends after {self.block * bs + len(self.pending)} of its {self.size} bytes")
            total_out = self.block * bs + len(self.pending)
            consumed = self.in_pos + used
            if total_out > DECODE_RATIO_AFTER and total_out > MAX_DECODE_RATIO * max(consumed, 1):
                raise _Bad(f"{total_out} bytes from {consumed}: more than {MAX_DECODE_RATIO}:1, a decompression bomb")
            if len(self.pending) == bs and total_out < self.size:
                block = bytes(self.pending)
                self.pending.clear()
                self.crc = zlib.crc32(block, self.crc)
                out.append((self.block, block))
                self.block += 1
                if self.block % self.checkpoint_blocks == 0:
                    copied = self.inflater.copy()
                    if copied is not None:
                        self.checkpoints.append(_Start(self.block, consumed, self.crc, copied))
        self.in_pos += used
        return out, used

    def _ended(self, rest: memoryview, *, no_more_input: bool) -> tuple[bool, int]:
        """All `size` bytes are out: whether the stream ends there (True) or more input is
        needed to tell (False), and how much of `rest` that took; _Bad when it goes on, or
        stops without its end."""
        used = 0
        for _ in range(3):  # (bz2 and lzma may take input, then show their end on the next call)
            if self.inflater.eof:
                break
            extra, taken = self.inflater.step(rest[used:], 1)
            used += taken
            if extra:
                raise _Bad(f"its stream decompresses past its stated size of {self.size} bytes")
            if not taken:
                break
        if not self.inflater.eof:
            if used < len(rest):
                raise _Bad("its stream makes no progress")
            if not no_more_input:
                return False, used
            if not self.end_marker_optional:
                raise _Bad("its compressed data ends before its stream does")
        self.crc = zlib.crc32(self.pending, self.crc)
        if self.crc != self.expected_crc:
            raise _Bad(f"CRC-32 mismatch: {self.crc:08x}, its index says {self.expected_crc:08x}")
        return True, used


@dataclasses.dataclass
class _Member:
    """What is kept of a compressed member between passes."""

    lock: trio.Lock
    checkpoint_blocks: int  # blocks between checkpoints (doubled as the member grows)
    checkpoints: dict[int, _Start] = dataclasses.field(default_factory=dict)  # by block
    cursor: _Start | None = None  # where the last pass stopped: its own decompressor
    stream: ReadStream | None = None  # the archive's read-ahead (ZipMemberReader._stream)

    @property
    def weight(self) -> int:
        return 1 + len(self.checkpoints)

    def add(self, start: _Start) -> None:
        self.checkpoints[start.block] = start
        while len(self.checkpoints) > CHECKPOINTS_PER_MEMBER:  # spaced wider
            self.checkpoint_blocks *= 2
            self.checkpoints = {b: s for b, s in self.checkpoints.items() if b % self.checkpoint_blocks == 0}


# -- reading -------------------------------------------------------------------------------------


class ZipMemberReader:
    """The SourceReader of `ZipMember` artifacts (see the module docstring)."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.blocks = reader.blocks
        self._data_offsets: cachetools.LRUCache[str, int] = cachetools.LRUCache(MEMBERS_KEPT)
        self._locating: SingleFlight[int] = SingleFlight()
        self._failed: cachetools.LRUCache[str, CiartfsError] = cachetools.LRUCache(MEMBERS_KEPT)
        self._members: cachetools.LRUCache[str, _Member] = cachetools.LRUCache(
            CHECKPOINTS_KEPT, getsizeof=lambda m: m.weight)
        self._stored_crc: cachetools.LRUCache[str, tuple[int, int]] = cachetools.LRUCache(MEMBERS_KEPT)
        # stored members' read-ahead of their archive's bytes (compressed ones: in `_Member`)
        self._streams: cachetools.LRUCache[str, ReadStream] = cachetools.LRUCache(STREAMS_KEPT)
        # per archive: the stream of the member whose reads began last, and where its data ends
        self._last_member: cachetools.LRUCache[str, tuple[ReadStream, int]] = cachetools.LRUCache(STREAMS_KEPT)
        # per archive: the header offset of the last member scheduled to be decoded ahead
        self._ahead_until: cachetools.LRUCache[str, int] = cachetools.LRUCache(STREAMS_KEPT)
        self._ahead_limiter = trio.CapacityLimiter(1)
        # members of the batch being decoded ahead now: their readers wait for it
        self._ahead_batch: dict[str, trio.Event] = {}
        # counters (tests and status): bytes inflated, passes started from a member's start
        self.inflated_bytes = 0
        self.passes_from_start = 0
        self.crc_checks = 0
        self.decoded_ahead = 0  # members decoded ahead of their reader (see _decode_ahead)

    async def learn_size(self, art: Artifact, *, reading: bool = False) -> int:
        if art.size is None:  # (ZipArchives always gives one)
            raise UpstreamError(f"{_where(art)}: a zip member without a size")
        return art.size

    def readahead_runs(self, art: Artifact) -> bool:
        return False  # the archive's own read-ahead fetches compressed bytes in runs

    def readahead_wanted(self, art: Artifact, total: int) -> bool:
        # Never a member's own: a prefetch holds one of the reader's prefetch slots while it
        # waits for archive blocks, which the archive's read-ahead runs may have claimed and
        # wait for a slot to fetch (a deadlock once all slots are so held). A member's reads
        # pass a ReadStream to the archive instead: its compressed bytes are read ahead.
        return False

    async def fetch_run(self, art: Artifact, first: int, count: int) -> tuple[bytes | bytearray, int] | None:
        raise AssertionError("zip members are never read in runs")

    def opening_blocks(self, art: Artifact, total: int) -> range:
        src = art.source
        if isinstance(src, ZipMember):
            self._decode_ahead(src)
        return range(0)

    def _decode_ahead(self, src: ZipMember) -> None:
        """A member is opened: when the reads of its archive's members go on in order up to it,
        decode the next small compressed members in the background, in batches."""
        background = self.blocks.background
        archive = src.archive.key
        last = self._last_member.get(archive)
        if (background is None or src.order is None or last is None or last[0].limit is not None
                or src.header_offset > last[1] + CONTINUE_GAP):
            return
        scheduled = self._ahead_until.get(archive, -1)
        ahead = src.order.count_between(src.header_offset, scheduled)
        if ahead >= DECODE_AHEAD_REFILL:
            return
        # (never further ahead than DECODE_AHEAD_MEMBERS after the member opened)
        todo = src.order.following(max(src.header_offset, scheduled), DECODE_AHEAD_MEMBERS - ahead)
        if todo:
            self._ahead_until[archive] = _member_source(todo[-1]).header_offset
        for batch in self._batches(todo):
            done = trio.Event()
            background.start_soon(self._decode_batch_ahead, batch, done)
            for m in batch:  # (at once: a reader that gets there first waits for the batch)
                self._ahead_batch[m.key] = done

    def _whole(self, member: Artifact) -> bool:
        """Whether `member` is decoded whole when decoded ahead (a small deflated member)."""
        src = _member_source(member)
        size = member.size or 0
        return (src.method == DEFLATED and 0 < size <= min(WHOLE_MEMBER_BYTES, self.reader.decoder.max_decoded_size)
                and src.problem is None and src.compressed_size <= WHOLE_MEMBER_BYTES
                # (its batch reads up to its data limit: bounded whatever lies between members)
                and src.data_limit - src.header_offset <= AHEAD_BATCH_BYTES
                and member.key not in self._failed)

    def _batches(self, members: list[Artifact]) -> Iterator[list[Artifact]]:
        """`members` (in archive order) that are decoded whole, in rows of neighbours, each of
        at most AHEAD_BATCH_BYTES decoded and as many bytes of the archive."""
        batch: list[Artifact] = []
        decoded = 0
        for m in members:
            src = _member_source(m)
            if batch and (not self._whole(m) or decoded + (m.size or 0) > AHEAD_BATCH_BYTES
                          or src.data_limit - _member_source(batch[0]).header_offset > AHEAD_BATCH_BYTES):
                yield batch
                batch, decoded = [], 0
            if self._whole(m):
                batch.append(m)
                decoded += m.size or 0
        if batch:
            yield batch

    async def _decode_batch_ahead(self, members: list[Artifact], done: trio.Event) -> None:
        """Decode a row of small deflated members (see `_batches`) whole, in one read of the
        archive's bytes and one worker-thread call, their CRC-32s checked, then set `done`. A
        member found wrong is left to its reader, which decodes it again, fails and logs it."""
        _IN_BACKGROUND.set(True)  # (this task's own context)
        try:
            async with self._ahead_limiter:
                b = self.blocks
                todo = [m for m in members if m.key not in self._failed and b.memory.get(b.key(m, 0, m.size)) is None]
                if not todo:
                    return
                first, last = _member_source(todo[0]), _member_source(todo[-1])
                lo, hi = first.header_offset, last.data_limit
                stream = self._stream(last, hi)
                span = await self.reader.read(first.archive, lo, hi - lo, stream)
                decoded = await trio.to_thread.run_sync(_decode_whole, span, lo, todo, b.block_size)
                for m, blocks, data_start in decoded:
                    if blocks is None:
                        continue
                    self._data_offsets[m.key] = data_start
                    total = m.size or 0
                    for i, block in enumerate(blocks):
                        b.stats.misses += 1
                        b.memory.put(b.key(m, i, total), block)  # (memory only: see the module docstring)
                    self.inflated_bytes += total
                    self.passes_from_start += 1
                    self.crc_checks += 1
                    self.decoded_ahead += 1
        except CiartfsError as e:  # (its readers get the error themselves, when they read)
            log.debug("%s: decoding ahead failed: %s", _where(members[0]), e)
        except Exception:  # (a background task: never the mount's end)
            log.exception("%s: decoding ahead failed", _where(members[0]))
        finally:
            for m in members:
                if self._ahead_batch.get(m.key) is done:
                    del self._ahead_batch[m.key]
            done.set()

    async def fetch(self, art: Artifact, index: int, key: str, *, probe: bool) -> bytes:
        src = art.source
        assert isinstance(src, ZipMember)
        self._refuse_if_failed(art, src)
        b = self.blocks
        ahead = self._ahead_batch.get(art.key)
        if ahead is not None:  # being decoded ahead: wait for that rather than decode it twice
            await ahead.wait()
            hit = b.memory.get(key)
            if hit is not None:
                return hit
        data = await b.from_disk(key)
        if data is not None:
            return data
        total = await self.learn_size(art)
        if src.method == STORED:
            return await self._stored(art, src, index, key, total)
        return await self._decoded(art, src, index, key, total)

    # -- failures --

    def _refuse_if_failed(self, art: Artifact, src: ZipMember) -> None:
        failed = self._failed.get(art.key)
        if failed is not None:
            raise again(failed)
        if src.problem is not None:
            self._fail(art, f"not read: {src.problem}")
        if src.method not in (STORED, DEFLATED, BZIP2, LZMA):
            self._fail(art, f"not read: compressed with {zipindex.method_name(src.method)}, which ciartfs cannot decode")
        if src.method != STORED and (art.size or 0) > self.reader.decoder.max_decoded_size:
            self._fail(art, f"not read: {art.size} bytes when decompressed, over --max-decoded-size")

    def _fail(self, art: Artifact, why: str) -> NoReturn:
        """Remember the member as unreadable (logged once) and raise its EIO."""
        error = UpstreamError(f"{_where(art)}: {why}")
        log.warning("%s; its reads fail with EIO", error)
        self._failed[art.key] = again(error)
        raise error

    # -- where its data is --

    async def _data_start(self, art: Artifact, src: ZipMember) -> int:
        known = self._data_offsets.get(art.key)
        if known is None:
            known = await self._locating.run(art.key, lambda: self._locate(art, src))
        return known

    async def _locate(self, art: Artifact, src: ZipMember) -> int:
        header = await self.reader.read(src.archive, src.header_offset, zipindex.LOCAL_HEADER_SIZE)
        try:
            start = zipindex.local_data_offset(header, src.header_offset)
        except BadZip as e:
            self._fail(art, str(e))
        if start + src.compressed_size > src.data_limit:
            self._fail(art, f"its {src.compressed_size} compressed bytes from {start} run past {src.data_limit} "
                                  f"(the next member or the central directory): a size that lies")
        if src.method == STORED and src.compressed_size != art.size:
            self._fail(art, f"stored, but {src.compressed_size} bytes stored for {art.size} shown")
        self._data_offsets[art.key] = start
        return start

    def _stream(self, src: ZipMember, data_end: int) -> ReadStream:
        """The read-ahead state of a member whose reads begin now (see the module docstring):
        the previous member's, when this one follows it in the archive and it was read to its
        end, or is decoded ahead; else a new one that reads ahead no further than this member's
        data (and leaves a row being read ahead of it as it is)."""
        archive = src.archive.key
        last = self._last_member.get(archive)
        if last is not None:
            stream, end = last
            in_row = stream.limit is None
            if ((in_row and _IN_BACKGROUND.get())
                    or (stream.next_offset == end and 0 <= src.header_offset - end <= CONTINUE_GAP)):
                stream.limit = None
                self._last_member[archive] = (stream, data_end)
                return stream
            if in_row and src.header_offset < end:  # (decoded ahead of, or passed by, the row)
                return ReadStream(limit=data_end)
        stream = ReadStream(limit=data_end)
        self._last_member[archive] = (stream, data_end)
        return stream

    # -- stored --

    async def _stored(self, art: Artifact, src: ZipMember, index: int, key: str, total: int) -> bytes:
        b = self.blocks
        start = await self._data_start(art, src)
        lo = index * b.block_size
        stream = self._streams.get(art.key)
        if stream is None:
            stream = self._streams[art.key] = self._stream(src, start + src.compressed_size)
        data = await self.reader.read(src.archive, start + lo, min(b.block_size, total - lo), stream)
        b.stats.misses += 1
        await self._check_stored_crc(art, src, index, data, total)
        b.keep(art, key, data)
        return data

    async def _check_stored_crc(self, art: Artifact, src: ZipMember, index: int, data: bytes, total: int) -> None:
        """Continue the CRC-32 of a stored member fetched in order from its start; compare it
        once all its blocks went in."""
        b = self.blocks
        count = b.count(total)
        state = self._stored_crc.get(art.key, (0, 0) if index == 0 else None)
        if state is None or state[0] > index:
            return
        next_block, crc = state
        ahead = CRC_AHEAD_BLOCKS
        while next_block < count:
            if next_block == index:
                block: bytes | None = data
            else:
                block = b.memory.get(b.key(art, next_block, total)) if ahead > 0 else None
                ahead -= 1
            if block is None:
                break
            crc = zlib.crc32(block, crc)
            next_block += 1
        if next_block < count or count == 0:
            self._stored_crc[art.key] = (next_block, crc)
            if count:
                return
        self._stored_crc.pop(art.key, None)
        self.crc_checks += 1
        if crc != src.crc32:
            await b.drop(art, count, total)
            self._fail(art, f"CRC-32 mismatch: {crc:08x}, its index says {src.crc32:08x}; its cached blocks dropped")

    # -- compressed --

    async def _decoded(self, art: Artifact, src: ZipMember, index: int, key: str, total: int) -> bytes:
        b = self.blocks
        member = self._members.get(art.key)
        if member is None:  # (kept at once: the blocks read ahead wait for this one's pass)
            member = self._members[art.key] = _Member(trio.Lock(), max(1, CHECKPOINT_BYTES // b.block_size))
        async with member.lock:
            # a pass made while we waited may have brought it
            hit = b.memory.get(key)
            if hit is None:
                hit = await b.from_disk(key)
            if hit is not None:
                return hit
            self._refuse_if_failed(art, src)
            try:
                return await self._decode_to(art, src, member, index, total)
            finally:
                self._members[art.key] = member  # (again: its weight may have changed)

    async def _starting_point(self, art: Artifact, src: ZipMember, member: _Member, index: int) -> _Start:
        best = max((s for s in member.checkpoints.values() if s.block <= index), key=lambda s: s.block, default=None)
        cursor = member.cursor
        if cursor is not None and cursor.block <= index and (best is None or cursor.block >= best.block):
            member.cursor = None  # (its decompressor moves on with this pass)
            return cursor
        if best is not None:
            copied = best.inflater.copy()
            assert copied is not None
            return _Start(best.block, best.in_pos, best.crc, copied)
        self.passes_from_start += 1
        if src.method == DEFLATED:
            return _Start(0, 0, 0, _Zlib())
        if src.method == BZIP2:
            return _Start(0, 0, 0, _Buffering(bz2.BZ2Decompressor()))
        start = await self._data_start(art, src)
        header = await self.reader.read(src.archive, start, min(9, src.compressed_size))
        try:
            taken, filters = zipindex.lzma_filters(header)
            return _Start(0, taken, 0, _Buffering(lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)))
        except (BadZip, lzma.LZMAError, ValueError) as e:
            self._fail(art, f"its lzma header is refused: {e}")

    async def _decode_to(self, art: Artifact, src: ZipMember, member: _Member, index: int, total: int) -> bytes:
        b = self.blocks
        data_start = await self._data_start(art, src)
        start = await self._starting_point(art, src, member, index)
        run = _Pass(start, block_size=b.block_size, size=total, compressed_size=src.compressed_size, crc32=src.crc32,
                    checkpoint_blocks=member.checkpoint_blocks,
                    end_marker_optional=src.method == LZMA)
        wanted: bytes | None = None
        data = b""
        while wanted is None:
            if not data and run.in_pos < src.compressed_size:
                n = min(DECODE_CHUNK, src.compressed_size - run.in_pos)
                if member.stream is None:
                    member.stream = self._stream(src, data_start + src.compressed_size)
                data = await self.reader.read(src.archive, data_start + run.in_pos, n, member.stream)
            try:
                if (len(data) <= INLINE_INPUT_BYTES and (index - run.block + 1) * b.block_size <= INLINE_OUTPUT_BYTES
                        and not _IN_BACKGROUND.get()):
                    blocks, used = run.step(data, index)  # (a bounded chunk: cheaper than a thread's round trip)
                    await trio.lowlevel.checkpoint()
                else:
                    blocks, used = await trio.to_thread.run_sync(run.step, data, index)
            except (_Bad, zlib.error, lzma.LZMAError, OSError, EOFError) as e:
                self.inflated_bytes += run.decoded
                run.decoded = 0
                await b.drop(art, b.count(total), total)
                self._fail(art, f"{str(e) or type(e).__name__}; its cached blocks dropped")
            self.inflated_bytes += run.decoded
            run.decoded = 0
            data = data[used:]
            for start_point in run.checkpoints:
                member.add(start_point)
            run.checkpoints.clear()
            for i, block in blocks:
                b.stats.misses += 1
                b.keep(art, b.key(art, i, total), block)
                if i == index:
                    wanted = block
            if run.finished:
                self.crc_checks += 1
                break
        if not run.finished:
            # where this pass stopped: the next block's reader goes on from here (`data`, the
            # input read but not used, is read again: it is in the archive's cached blocks)
            member.cursor = _Start(run.block, run.in_pos, run.crc, run.inflater)
        if wanted is None:
            raise UpstreamError(f"{_where(art)}: block {index} is past its end")
        return wanted
