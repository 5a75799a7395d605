"""Tier 1: a zip's index parsed from its tail and central directory (data/zipindex.py), against
the zips the stdlib's zipfile writes (and reads), and against hostile ones."""

from __future__ import annotations

import io
import stat
import struct
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciartfs.data import zipindex
from ciartfs.data.zipindex import BadZip, Directory, NotAZip, Zip64Elsewhere, ZipEntry

METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def parse(data: bytes) -> tuple[Directory, list[ZipEntry]]:
    """Parse as zipmember.py reads: the tail, the zip64 record if elsewhere, the CD."""
    n = zipindex.tail_length(len(data))
    found = zipindex.find_directory(data[len(data) - n:], len(data) - n, len(data))
    if isinstance(found, Zip64Elsewhere):
        found = zipindex.zip64_directory(data[found.offset:found.offset + zipindex.ZIP64_EOCD_SIZE], found.offset,
                                         found.eocd)
    return found, zipindex.parse_directory(data[found.offset:found.offset + found.size], found)


def make_zip(members: list[tuple[str, bytes, int]], comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content, method in members:
            zf.writestr(zipfile.ZipInfo(name, (2021, 3, 4, 5, 6, 8)), content, compress_type=method)
        zf.comment = comment
    return buf.getvalue()


def member_bytes(data: bytes, e: ZipEntry) -> bytes:
    """A stored member's bytes, found by its local header as zipmember.py finds them."""
    start = zipindex.local_data_offset(data[e.header_offset:e.header_offset + 30], e.header_offset)
    return data[start:start + e.compressed_size]


def assert_same_as_zipfile(data: bytes, entries: list[ZipEntry], truth: bytes | None = None) -> None:
    """The entries are those zipfile reads from `truth` (by default `data`: the same zip,
    perhaps with another comment)."""
    infos = zipfile.ZipFile(io.BytesIO(truth or data)).infolist()
    assert [e.name for e in entries] == [i.filename for i in infos]
    for e, i in zip(entries, infos, strict=True):
        assert (e.header_offset, e.compressed_size, e.size, e.method, e.crc32) == (
            i.header_offset, i.compress_size, i.file_size, i.compress_type, i.CRC)
        assert e.problem is None and e.is_dir == i.is_dir()
        assert e.header_offset + 30 + e.compressed_size <= e.data_limit
        if e.method == zipfile.ZIP_STORED:
            assert member_bytes(data, e) == zipfile.ZipFile(io.BytesIO(truth or data)).read(i)


names = st.lists(st.text(st.sampled_from("ab/é日x.-_ "), min_size=1, max_size=12).filter(
    lambda n: not n.startswith("/") and not n.endswith("/")), min_size=0, max_size=12, unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=names, data=st.data(), comment=st.binary(max_size=300))
def test_zips_the_stdlib_writes_parse_as_it_reads_them(names, data, comment):
    members = [(n, data.draw(st.binary(max_size=3000)) * data.draw(st.integers(1, 5)), data.draw(st.sampled_from(METHODS)))
               for n in names]
    # a comment that holds an end record (even one whose comment length fits) is not taken for
    # the end record (zipfile is fooled: it reads the zip without that comment)
    fake = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 46, 1 << 24, len(comment))
    blob = make_zip(members, fake + comment)
    d, entries = parse(blob)
    assert d.entries == len(members) and not d.zip64
    assert_same_as_zipfile(blob, entries, truth=make_zip(members, bytes(len(fake + comment))))
    assert all(e.mtime == 1614834368.0 for e in entries)  # 2021-03-04 05:06:08, read as UTC


def test_directories_symlinks_times_and_name_encodings():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("dir/", b"")
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, b"../../etc/passwd")
        stamped = zipfile.ZipInfo("stamped", (1999, 1, 1, 0, 0, 0))
        stamped.extra = struct.pack("<HHBl", 0x5455, 5, 1, 1234567890)
        zf.writestr(stamped, b"s")
        zf.writestr("cafX.txt", b"c")  # its name's X made cp437 0x82 below (flag bit 11 unset)
        zf.writestr("日本.txt", b"u")  # written as UTF-8, flag bit 11 set
        zf.writestr(zipfile.ZipInfo("epoch", (1980, 1, 1, 0, 0, 0)), b"d")
    blob = buf.getvalue().replace(b"cafX.txt", b"caf\x82.txt")
    _, entries = parse(blob)
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {"dir/", "link", "stamped", "café.txt", "日本.txt", "epoch"}
    assert by_name["dir/"].is_dir and not by_name["link"].is_dir
    assert by_name["link"].is_symlink and not by_name["stamped"].is_symlink
    assert by_name["stamped"].mtime == 1234567890.0
    assert by_name["epoch"].mtime == 315532800.0


def _cd_entry_positions(blob: bytes) -> list[int]:
    """The central directory entries' offsets, found with the format's plain layout (no comment)."""
    cd_size, cd_offset = struct.unpack_from("<LL", blob, len(blob) - 22 + 12)
    positions, pos = [], cd_offset
    while pos < cd_offset + cd_size:
        positions.append(pos)
        n, m, k = struct.unpack_from("<3H", blob, pos + 28)
        pos += 46 + n + m + k
    return positions


def test_invalid_dos_dates_give_no_time():
    blob = bytearray(make_zip([("x", b"x", zipfile.ZIP_STORED)]))
    (pos,) = _cd_entry_positions(bytes(blob))
    struct.pack_into("<H", blob, pos + 14, (41 << 9) | (13 << 5) | 1)  # month 13
    _, (e,) = parse(bytes(blob))
    assert e.mtime is None


def test_zip64_archives_with_more_than_65535_members(monkeypatch):
    members = [(f"m/{i}", b"", zipfile.ZIP_STORED) for i in range(65540)]
    members.append(("last", b"the end" * 10, zipfile.ZIP_DEFLATED))
    blob = make_zip(members)
    d, entries = parse(blob)
    assert d.zip64 and d.entries == 65541 == len(entries)
    assert entries[-1].name == "last" and entries[-1].size == 70


def test_zip64_extra_fields_and_a_zip64_end_record_outside_the_tail(monkeypatch):
    # zipfile writes zip64 fields past ZIP64_LIMIT: a small limit makes them cheap
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    members = [(f"f{i}", bytes([i]) * (150 * i), METHODS[i % 4]) for i in range(6)]
    blob = make_zip(members)
    assert b"\x01\x00" in blob and zipfile.ZipFile(io.BytesIO(blob)).testzip() is None
    d, entries = parse(blob)
    assert d.zip64
    assert_same_as_zipfile(blob, entries)
    # a comment as long as can be: the zip64 record then lies before the tail read
    long_comment = make_zip(members, b"c" * 65535)
    n = zipindex.tail_length(len(long_comment))
    assert isinstance(zipindex.find_directory(long_comment[-n:], len(long_comment) - n, len(long_comment)),
                      Zip64Elsewhere)
    d, entries = parse(long_comment)
    assert d.zip64
    assert_same_as_zipfile(long_comment, entries)


# -- hostile ------------------------------------------------------------------------------------


SAMPLE = make_zip([("a.txt", bytes(range(256)) * 2, zipfile.ZIP_DEFLATED), ("b.bin", b"b" * 300, zipfile.ZIP_STORED),
                   ("c/d", b"d" * 100, zipfile.ZIP_BZIP2)])


def test_not_a_zip():
    for blob in (b"", b"PK", b"plain text " * 1000, SAMPLE[:-1], SAMPLE + b"x"):
        with pytest.raises(NotAZip):
            parse(blob)


def test_truncated_at_the_front_or_a_central_directory_outside_the_blob():
    with pytest.raises(BadZip, match="runs past"):
        parse(SAMPLE[40:])
    blob = bytearray(SAMPLE)
    struct.pack_into("<L", blob, len(blob) - 22 + 16, 0xFFFFFF00)  # CD offset
    with pytest.raises(BadZip):
        parse(bytes(blob))


def test_entry_counts_that_lie():
    for count in (2, 4, 0xFFFE):
        blob = bytearray(SAMPLE)
        struct.pack_into("<HH", blob, len(blob) - 22 + 8, count, count)
        with pytest.raises(BadZip):
            parse(bytes(blob))


def test_limits_on_the_central_directory(monkeypatch):
    monkeypatch.setattr(zipindex, "MAX_ENTRIES", 2)
    with pytest.raises(BadZip, match="limit is 2"):
        parse(SAMPLE)
    monkeypatch.setattr(zipindex, "MAX_ENTRIES", 10)
    monkeypatch.setattr(zipindex, "MAX_DIRECTORY_BYTES", 100)
    with pytest.raises(BadZip, match="limit is 100"):
        parse(SAMPLE)
    # a zip64 record claiming billions of entries is refused before anything is read
    monkeypatch.undo()
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 3 << 30, 3 << 30, 100, 0)
    with pytest.raises(BadZip, match="limit"):
        zipindex.zip64_directory(record, 200, (b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def test_overlapping_members_are_marked_both():
    blob = bytearray(SAMPLE)
    _first, second, third = _cd_entry_positions(bytes(blob))
    struct.pack_into("<L", blob, second + 42, 10)  # b.bin's local header inside a.txt's data
    _, entries = parse(bytes(blob))
    assert [e.problem is not None for e in entries] == [True, True, False]
    assert "overlaps" in str(entries[0].problem)
    # the same local header named twice (the smallest bombs' trick)
    blob = bytearray(SAMPLE)
    struct.pack_into("<L", blob, third + 42, 0)
    _, entries = parse(bytes(blob))
    assert [e.problem is not None for e in entries] == [True, False, True]


def test_sizes_that_lie_and_encrypted_members():
    blob = bytearray(SAMPLE)
    first, _second, third = _cd_entry_positions(bytes(blob))
    struct.pack_into("<L", blob, third + 20, 10**6)  # compressed size past the central directory
    struct.pack_into("<H", blob, first + 8, 1)  # encrypted
    _, entries = parse(bytes(blob))
    assert entries[0].problem == "encrypted"
    assert "central directory" in str(entries[2].problem)
    assert entries[1].problem is None
    # a size short of overlapping is caught at read time: its data must end by the next header
    assert entries[1].data_limit == entries[2].header_offset


def test_a_zip64_marker_without_its_extra_field():
    blob = bytearray(SAMPLE)
    first, _, _ = _cd_entry_positions(bytes(blob))
    struct.pack_into("<L", blob, first + 24, 0xFFFFFFFF)  # uncompressed size: "see the zip64 field"
    _, entries = parse(bytes(blob))
    assert "zip64" in str(entries[0].problem)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 60))
def test_mangled_zips_parse_or_are_refused_never_anything_else(edits, cut):
    blob = bytearray(SAMPLE)
    for pos, value in edits:
        blob[pos] = value
    blob = blob[cut:]
    try:
        d, entries = parse(bytes(blob))
    except (NotAZip, BadZip):
        return
    assert d.offset + d.size <= d.end <= len(blob)
    for e in entries:
        if e.problem is None:
            assert e.header_offset + 30 + e.compressed_size <= e.data_limit <= d.offset
