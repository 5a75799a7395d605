"""A zip archive's index, parsed from its bytes: pure functions, no I/O (issue 18).

How a zip is read by range (zipmember.py does the reads): its tail (`tail_length`) holds the
end-of-central-directory record (EOCD, 22 bytes and a comment of up to 65535), and for a zip64
archive the 20-byte zip64 locator before it, which points at the 56-byte zip64 EOCD record
(`find_directory`; when that record lies before the tail, `Zip64Elsewhere` says where). The
EOCD says where the central directory (CD) is; `parse_directory` reads its entries.

Everything here is hostile input, and the rules are:
- Limits: a CD over MAX_DIRECTORY_BYTES or of more than MAX_ENTRIES entries is refused whole
  (`BadZip`): memory is bounded before anything is read. Parsing is linear in the CD's size.
- The CD lies inside the archive, before its end records; the entry count parsed equals the
  one the end record states (or, without zip64, equals it modulo 65536: writers that overflow
  the 16-bit count without switching to zip64 exist); every entry lies inside the CD. Any of
  these wrong: `BadZip` (the caller shows the archive as one file).
- A member is refused alone (`ZipEntry.problem` set; listed, reads fail with EIO): its local
  header outside the archive or not before the CD; its range [header, header + 30 + compressed
  size) overlapping another member's (both marked: overlapping members are how the smallest zip
  bombs are made, and no honest writer produces them); encrypted (flag bit 0); a zip64 field
  the zip64 extra field does not supply. `data_limit` is where its data must end (the next
  member's header or the CD), checked when read: a compressed size that lies is found there.
- Names: UTF-8 when flag bit 11 is set, else cp437 (the zip specification's two encodings);
  invalid UTF-8 is kept as surrogate escapes, which the name rules then refuse.
- Times: the extended-timestamp extra field (0x5455, UTC seconds) when present, else the DOS
  date and time read as UTC (the zone is not recorded), None when the DOS date is invalid.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import lzma
import stat
import struct

EOCD_SIGNATURE = b"PK\x05\x06"
EOCD_SIZE = 22
MAX_COMMENT = 65535
ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
ZIP64_LOCATOR_SIZE = 20
ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
ZIP64_EOCD_SIZE = 56
CD_SIGNATURE = b"PK\x01\x02"
CD_ENTRY_SIZE = 46
LOCAL_SIGNATURE = b"PK\x03\x04"
LOCAL_HEADER_SIZE = 30

# Limits on what one archive's index may cost (memory for the CD's bytes, then about 1 KiB of
# Python objects per member once listed): larger archives are shown as one file.
MAX_DIRECTORY_BYTES = 256 << 20
MAX_ENTRIES = 2_000_000

# Methods with a reader (zipmember.py); the others are listed and read EIO.
STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
METHOD_NAMES = {0: "stored", 1: "shrunk", 6: "imploded", 8: "deflated", 9: "deflate64", 12: "bzip2", 14: "lzma",
                93: "zstandard", 95: "xz", 98: "ppmd", 99: "AES-encrypted"}

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CD_ENTRY = struct.Struct("<4s6H3L5H2L")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


class NotAZip(Exception):
    """No end-of-central-directory record in the tail: the blob is not a zip."""


class BadZip(Exception):
    """A zip whose index is corrupt, hostile or over a limit (the message says which)."""


def method_name(method: int) -> str:
    return f"{METHOD_NAMES.get(method, 'unknown')} (method {method})"


def tail_length(archive_size: int) -> int:
    """How much of the archive's end holds its end records whatever its comment."""
    return min(archive_size, EOCD_SIZE + MAX_COMMENT + ZIP64_LOCATOR_SIZE)


@dataclasses.dataclass(frozen=True, slots=True)
class Directory:
    """Where the central directory is, and what the end records say of it."""

    offset: int
    size: int
    entries: int
    zip64: bool
    end: int  # where the end records begin: the CD lies before it


@dataclasses.dataclass(frozen=True, slots=True)
class Zip64Elsewhere:
    """The zip64 EOCD record lies before the tail read: read ZIP64_EOCD_SIZE bytes at `offset`
    and call `zip64_directory`."""

    offset: int
    eocd: tuple[int, ...]  # the plain EOCD's fields, for the checks


def find_directory(tail: bytes, tail_offset: int, archive_size: int) -> Directory | Zip64Elsewhere:
    """The CD's whereabouts from the archive's last bytes `tail` (starting at `tail_offset`).
    NotAZip when there is no EOCD record, BadZip when the records are inconsistent."""
    if tail_offset + len(tail) != archive_size:
        raise ValueError("the tail must end where the archive does")
    # The last signature whose comment length reaches exactly the end of the archive, and
    # whose record is consistent: a comment may itself hold a record's bytes.
    refused: BadZip | None = None
    pos = len(tail) - EOCD_SIZE
    while pos >= 0:
        pos = tail.rfind(EOCD_SIGNATURE, 0, pos + 4)
        if pos < 0:
            break
        fields = _EOCD.unpack_from(tail, pos)
        if pos + EOCD_SIZE + fields[7] == len(tail):
            try:
                return _directory(tail, tail_offset, pos, fields)
            except BadZip as e:
                refused = refused or e
        pos -= 1
    if refused is not None:
        raise refused
    raise NotAZip("no end-of-central-directory record")


def _directory(tail: bytes, tail_offset: int, pos: int, fields: tuple[int, ...]) -> Directory | Zip64Elsewhere:
    _, disk, cd_disk, _disk_entries, entries, cd_size, cd_offset, _ = fields
    eocd_at = tail_offset + pos
    wants_zip64 = 0xFFFF in (disk, cd_disk, entries) or 0xFFFFFFFF in (cd_size, cd_offset)
    loc = pos - ZIP64_LOCATOR_SIZE
    if loc >= 0 and tail[loc:loc + 4] == ZIP64_LOCATOR_SIGNATURE:
        _, loc_disk, record_at, total_disks = _ZIP64_LOCATOR.unpack_from(tail, loc)
        if loc_disk != 0 or total_disks > 1:
            raise BadZip("a multi-disk (spanned) archive")
        if record_at + ZIP64_EOCD_SIZE > tail_offset + loc:
            raise BadZip("the zip64 end record lies past its locator")
        if record_at < tail_offset:
            return Zip64Elsewhere(record_at, fields)
        return zip64_directory(tail[record_at - tail_offset:record_at - tail_offset + ZIP64_EOCD_SIZE], record_at,
                               fields)
    if wants_zip64:
        if disk or cd_disk:
            raise BadZip("a multi-disk (spanned) archive")
        raise BadZip("the end record needs zip64 values, and there is no zip64 locator")
    return _checked(Directory(cd_offset, cd_size, entries, False, eocd_at))


def zip64_directory(record: bytes, record_at: int, eocd: tuple[int, ...]) -> Directory:
    """The CD's whereabouts from the zip64 EOCD record (`record`, read at `record_at`)."""
    if len(record) < ZIP64_EOCD_SIZE or record[:4] != ZIP64_EOCD_SIGNATURE:
        raise BadZip("no zip64 end record where its locator points")
    _, _size, _made, _needed, disk, cd_disk, _disk_entries, entries, cd_size, cd_offset = _ZIP64_EOCD.unpack_from(record)
    if disk or cd_disk:
        raise BadZip("a multi-disk (spanned) archive")
    # The plain record's values win where they are not the zip64 markers, as other readers
    # do; they must agree with the zip64 record's then.
    for plain, marker, wide in ((eocd[4], 0xFFFF, entries), (eocd[5], 0xFFFFFFFF, cd_size),
                                (eocd[6], 0xFFFFFFFF, cd_offset)):
        if plain != marker and plain != wide:
            raise BadZip("the zip64 end record disagrees with the end record")
    return _checked(Directory(cd_offset, cd_size, entries, True, record_at))


def _checked(d: Directory) -> Directory:
    if d.size > MAX_DIRECTORY_BYTES:
        raise BadZip(f"a central directory of {d.size} bytes (the limit is {MAX_DIRECTORY_BYTES})")
    if d.entries > MAX_ENTRIES:
        raise BadZip(f"{d.entries} entries (the limit is {MAX_ENTRIES})")
    if d.offset + d.size > d.end:
        raise BadZip(f"the central directory [{d.offset}, {d.offset + d.size}) runs past the end records at {d.end}")
    if d.entries * CD_ENTRY_SIZE > d.size:
        raise BadZip(f"{d.entries} entries cannot fit a central directory of {d.size} bytes")
    return d


@dataclasses.dataclass(slots=True)
class ZipEntry:
    """One central directory entry."""

    name: str
    header_offset: int
    compressed_size: int
    size: int
    method: int
    flags: int
    crc32: int
    mtime: float | None
    is_dir: bool
    is_symlink: bool
    problem: str | None = None  # why it cannot be read (listed all the same)
    data_limit: int = 0  # its data must end by here: the next member's header, or the CD


def parse_directory(cd: bytes, d: Directory) -> list[ZipEntry]:
    """The entries of the central directory `cd` (the bytes `d` names), checked (see the
    module docstring)."""
    if len(cd) != d.size:
        raise BadZip(f"expected {d.size} central directory bytes, got {len(cd)}")
    entries: list[ZipEntry] = []
    times: dict[tuple[int, int], float | None] = {}  # DOS date and time -> seconds (archives share a few)
    unpack = _CD_ENTRY.unpack_from
    pos, n = 0, len(cd)
    while cd.startswith(CD_SIGNATURE, pos):
        if len(entries) >= MAX_ENTRIES:
            raise BadZip(f"more than {MAX_ENTRIES} entries")
        if pos + CD_ENTRY_SIZE > n:
            raise BadZip(f"entry {len(entries)} is cut off by the end of the central directory")
        (_, _made_by, _needed, flags, method, dos_time, dos_date, crc, csize, size, name_len, extra_len,
         comment_len, disk, _internal, external, offset) = unpack(cd, pos)
        name_at = pos + CD_ENTRY_SIZE
        extra_at = name_at + name_len
        end = extra_at + extra_len + comment_len
        if end > n:
            raise BadZip(f"entry {len(entries)} runs past the end of the central directory")
        raw_name = cd[name_at:extra_at]
        name = raw_name.decode("utf-8", "surrogateescape") if flags & 0x800 else raw_name.decode("cp437")
        extra = cd[extra_at:extra_at + extra_len]
        problem = None
        if size == 0xFFFFFFFF or csize == 0xFFFFFFFF or offset == 0xFFFFFFFF or disk == 0xFFFF:
            wide = _zip64_fields(extra, size == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF,
                                 disk == 0xFFFF)
            if wide is None:
                problem = "a zip64 size or offset is missing from its extra field"
            else:
                size, csize = wide.get("size", size), wide.get("csize", csize)
                offset, disk = wide.get("offset", offset), wide.get("disk", disk)
        if disk and problem is None:
            problem = "on another disk of a spanned archive"
        mode = external >> 16
        is_dir = name.endswith("/") or stat.S_ISDIR(mode) or (bool(external & 0x10) and size == 0)
        mtime = _stamp(extra) if extra else None
        if mtime is None:
            when = (dos_date, dos_time)
            mtime = times[when] if when in times else times.setdefault(when, _dos_time(dos_date, dos_time))
        entries.append(ZipEntry(name, offset, csize, size, method, flags, crc, mtime, is_dir, stat.S_ISLNK(mode),
                                problem))
        pos = end
    if pos != len(cd):
        raise BadZip(f"{len(cd) - pos} bytes after entry {len(entries)} are not a central directory entry")
    if len(entries) != d.entries and (d.zip64 or len(entries) % 65536 != d.entries):
        raise BadZip(f"the end record says {d.entries} entries, the central directory has {len(entries)}")
    _check_members(entries, d)
    return entries


def _zip64_fields(extra: bytes, size: bool, csize: bool, offset: bool, disk: bool) -> dict[str, int] | None:
    """The values the zip64 extra field (0x0001) supplies, in the specification's order, for
    the fields whose 32-bit value is the marker; None when one is missing."""
    wanted = [k for k, w in (("size", size), ("csize", csize), ("offset", offset)) if w]
    if not wanted and not disk:
        return {}
    body = _extra_field(extra, 0x0001)
    if body is None or len(body) < 8 * len(wanted) + (4 if disk else 0):
        return None
    got = {k: struct.unpack_from("<Q", body, 8 * i)[0] for i, k in enumerate(wanted)}
    if disk:
        got["disk"] = struct.unpack_from("<L", body, 8 * len(wanted))[0]
    return got


def _extra_field(extra: bytes, wanted: int) -> bytes | None:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == wanted:
            return extra[pos + 4:pos + 4 + length]
        pos += 4 + length
    return None


def _stamp(extra: bytes) -> float | None:
    """The modification time of the extended-timestamp extra field, if it has one."""
    stamp = _extra_field(extra, 0x5455)
    if stamp is not None and len(stamp) >= 5 and stamp[0] & 1:
        return float(struct.unpack_from("<l", stamp, 1)[0])
    return None


def _dos_time(dos_date: int, dos_time: int) -> float | None:
    year, month, day = 1980 + (dos_date >> 9), (dos_date >> 5) & 0xF, dos_date & 0x1F
    hour, minute, second = dos_time >> 11, (dos_time >> 5) & 0x3F, (dos_time & 0x1F) * 2
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _check_members(entries: list[ZipEntry], d: Directory) -> None:
    """Mark the members that cannot be read, and give each the limit its data must end by."""
    for e in entries:
        if e.problem is None and e.flags & 1:
            e.problem = "encrypted"
        if e.problem is None and e.header_offset + LOCAL_HEADER_SIZE + e.compressed_size > d.offset:
            e.problem = (f"its data [{e.header_offset}, +{LOCAL_HEADER_SIZE + e.compressed_size}) does not lie before "
                         f"the central directory at {d.offset}")
    placed = sorted((e for e in entries if e.problem is None or e.problem == "encrypted"),
                    key=lambda e: e.header_offset)
    # (every local header before the CD bounds the data before it, that of a member refused too)
    starts = sorted(e.header_offset for e in entries if e.header_offset < d.offset)
    reach, holder = -1, None  # the furthest end so far, and whose it is
    for e in placed:
        end = e.header_offset + LOCAL_HEADER_SIZE + e.compressed_size
        if holder is not None and e.header_offset < reach:
            why = "it overlaps another member (a zip bomb's trick)"
            e.problem = why
            if holder.problem is None:
                holder.problem = why
        if end > reach:
            reach, holder = end, e
    for e in placed:
        i = bisect.bisect_right(starts, e.header_offset)
        e.data_limit = starts[i] if i < len(starts) else d.offset


def local_data_offset(header: bytes, header_offset: int) -> int:
    """Where a member's data begins, from its local header (its name and extra lengths may
    differ from the central directory's). BadZip when `header` is not a local header."""
    if len(header) < LOCAL_HEADER_SIZE or header[:4] != LOCAL_SIGNATURE:
        raise BadZip(f"no local header at {header_offset}")
    fields = _LOCAL_HEADER.unpack_from(header)
    name_len: int = fields[9]
    extra_len: int = fields[10]
    return header_offset + LOCAL_HEADER_SIZE + name_len + extra_len


def lzma_filters(props: bytes) -> tuple[int, list[dict[str, int]]]:
    """A zip LZMA member's header (version, properties size, properties): its length and the
    raw LZMA1 filter chain it describes. BadZip when it is not one."""
    if len(props) < 9:
        raise BadZip("the lzma header is cut off")
    size = struct.unpack_from("<H", props, 2)[0]
    if size != 5:
        raise BadZip(f"lzma properties of {size} bytes (5 expected)")
    d = props[4]
    if d >= 9 * 5 * 5:
        raise BadZip("invalid lzma properties")
    lc, rest = d % 9, d // 9
    lp, pb = rest % 5, rest // 5
    dict_size = struct.unpack_from("<L", props, 5)[0]
    return 9, [{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": dict_size}]
