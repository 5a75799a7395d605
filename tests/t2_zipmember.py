"""Tier 2: zip artifacts' members as files (data/zipmember.py), in-process through the real
Reader and HTTP client, the zips served by the fake's storage host (by Range, as S3 does):
every member's bytes exactly as zipfile reads them, what a listing fetches, checkpoints,
and members whose index or stream lies."""

from __future__ import annotations

import bz2
import dataclasses
import errno
import io
import json
import lzma
import random
import stat
import struct
import zipfile
import zlib

import pytest
import trio

from ciartfs.data import zipmember
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.data.ranged import TAIL_BYTES
from ciartfs.data.reader import Reader, ReadStream
from ciartfs.data.sources import TAIL_FIRST, ZipMember
from ciartfs.data.zipmember import MEMBER_KEY_SEPARATOR, ZipArchives, ZipMemberReader
from ciartfs.errors import CiartfsError
from ciartfs.fakeserver.server import FakeCI
from ciartfs.fakeserver.storage import next_blob_id
from ciartfs.namespace import names
from ciartfs.namespace.model import Artifact, Entry, Kind
from ciartfs.net.client import HttpClient

BS = 128 << 10


@dataclasses.dataclass
class ZipBlob:
    """A blob on the fake's storage host (storage.Blob)."""

    stored: bytes
    blob_id: int = dataclasses.field(default_factory=next_blob_id)
    storage_redirect: str | None = None
    expired: bool = False
    generated: None = None
    content_encoding: str | None = None


class Zips:
    """Zips served by the fake's storage, read through one Reader and its ZipArchives."""

    def __init__(self, fake: FakeCI, nursery: trio.Nursery, memory: int = 64 << 20) -> None:
        self.fake = fake
        self.reader = Reader(HttpClient(timeout=10), MemoryCache(memory), None, BS)
        self.reader.start(nursery)
        self.archives = ZipArchives(self.reader)
        member_reader = self.reader._sources[ZipMember]
        assert isinstance(member_reader, ZipMemberReader)
        self.members = member_reader

    def archive(self, data: bytes, name: str = "a.zip") -> Artifact:
        blob = ZipBlob(data)
        self.fake.blobs.add(blob)
        return Artifact(f"test|{blob.blob_id}/{name}", self.fake.presigned_url(blob.blob_id), True, source=TAIL_FIRST)

    async def files(self, archive: Artifact) -> dict[str, Entry]:
        entries = await self.archives.members(archive, where="test", mtime=1.0)
        assert entries is not None
        return await walk(entries)

    def storage_ranges(self) -> list[str]:
        return [r.headers.get("range", r.headers.get("Range", "")) for r in self.fake.requests
                if r.server == "storage"]


async def walk(entries: list[Entry], prefix: str = "") -> dict[str, Entry]:
    """Every entry below, by path (directories too, with a trailing '/')."""
    found: dict[str, Entry] = {}
    for e in entries:
        if e.kind is Kind.DIR:
            assert e.source is not None and e.immutable and e.source.ttl is None
            found[prefix + e.name + "/"] = e
            found.update(await walk(await e.source.list(), prefix + e.name + "/"))
        else:
            found[prefix + e.name] = e
    return found


async def read_all(reader: Reader, art: Artifact, step: int = 3 * BS + 17) -> bytes:
    assert art.size is not None
    stream, out = ReadStream(), bytearray()
    while len(out) < art.size:
        out += await reader.read(art, len(out), step, stream)
    assert await reader.read(art, art.size, 10) == b""
    return bytes(out)


def text(seed: int, size: int) -> bytes:
    """Compressible bytes (words), different per seed."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(2, 9))) for _ in range(500)]
    return b" ".join(rnd.choices(words, k=size // 3 + 1))[:size]


def make_zip(members: list[tuple[str, bytes, int]], *, level: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content, method in members:
            if name.endswith("/"):
                zf.writestr(name, b"")
            else:
                zf.writestr(name, content, compress_type=method, compresslevel=level)
    return buf.getvalue()


@pytest.fixture
async def zips(fake: FakeCI, nursery: trio.Nursery) -> Zips:
    return Zips(fake, nursery)


SIZES = [0, 1, BS - 1, BS, BS + 1, 5 * BS + 3]
METHODS = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2,
           "lzma": zipfile.ZIP_LZMA}


async def test_every_member_reads_exactly_as_zipfile_reads_it(zips):
    members = [(f"{method}/{size}.bin", text(size + i, size), value)
               for i, (method, value) in enumerate(METHODS.items()) for size in SIZES]
    members += [("random.bin", random.Random(5).randbytes(3 * BS), zipfile.ZIP_DEFLATED),
                ("deep/er/still/x.txt", b"x", zipfile.ZIP_STORED), ("empty-dir/", b"", 0)]
    buf = io.BytesIO(make_zip(members))
    with zipfile.ZipFile(buf, "a") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, b"../../../etc/passwd")
    data = buf.getvalue()
    archive = zips.archive(data)
    files = await zips.files(archive)
    expected = zipfile.ZipFile(io.BytesIO(data))
    want = {i.filename for i in expected.infolist()} | {"deep/", "deep/er/", "deep/er/still/", "stored/",
                                                        "deflated/", "bzip2/", "lzma/"}
    assert set(files) == want
    assert await files["empty-dir/"].source.list() == []
    for path, entry in files.items():
        if entry.kind is Kind.DIR:
            continue
        art = entry.artifact
        assert entry.kind is Kind.FILE and art is not None and art.immutable
        assert art.key == archive.key + MEMBER_KEY_SEPARATOR + path and art.url == archive.url
        assert art.size == expected.getinfo(path).file_size
        assert await read_all(zips.reader, art) == expected.read(path), path
    # a symlink member is a file holding its link text
    assert files["link"].kind is Kind.FILE and b"etc/passwd" in await read_all(zips.reader, files["link"].artifact)
    info = json.loads(files["deflated/1.bin"].info["zip"])
    assert info["method"].startswith("deflated") and info["crc32"] == f"{expected.getinfo('deflated/1.bin').CRC:08x}"
    # random reads into each member, out of order
    rnd = random.Random(1)
    for path, entry in sorted(files.items()):
        if entry.kind is Kind.FILE and entry.artifact.size:
            whole = expected.read(path)
            for _ in range(3):
                offset = rnd.randrange(entry.artifact.size)
                assert await zips.reader.read(entry.artifact, offset, 1000) == whole[offset:offset + 1000]
    # every member with bytes had its CRC-32 checked, once (an empty one is never read)
    assert zips.members.crc_checks == sum(1 for e in files.values() if e.artifact and e.artifact.size)


async def test_a_listing_fetches_the_tail_and_exactly_the_central_directory(zips):
    # a small index: in the tail the size probe fetched, so the listing costs that one request
    small = zips.archive(make_zip([(f"f{i}", text(i, 3000), zipfile.ZIP_DEFLATED) for i in range(40)]))
    files = await zips.files(small)
    assert len(files) == 40 and zips.storage_ranges() == [f"bytes=-{TAIL_BYTES}"]
    assert await zips.files(small) == files and len(zips.storage_ranges()) == 1  # parsed once, kept
    # a central directory larger than the tail: the tail, then the CD's blocks not in it
    names = [f"some/longer/directory/name/to/grow/the/index/{i:06d}.txt" for i in range(6000)]
    data = make_zip([(n, b"", zipfile.ZIP_STORED) for n in names])
    cd_size, cd_offset = struct.unpack_from("<LL", data, len(data) - 22 + 12)
    assert cd_size > 2 * TAIL_BYTES
    big = zips.archive(data, "big.zip")
    fetched = zips.reader.stats.bytes_fetched
    files = await zips.files(big)
    assert len(files) == 6000 + 8  # (and its 8 directories)
    # the size probe's tail (the whole blocks in it kept), then the CD's blocks before those
    tail_first_block = -(-(len(data) - TAIL_BYTES) // BS)
    cd_blocks = range(cd_offset // BS, tail_first_block)
    assert len(cd_blocks) >= 2
    assert zips.reader.stats.bytes_fetched - fetched == TAIL_BYTES + len(cd_blocks) * BS
    # concurrent listings of one archive read its index once
    third = zips.archive(make_zip([("x", b"x", 0)]), "third.zip")
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(zips.files, third)
    assert zips.archives.listings == 3


async def test_what_is_not_a_zip_is_not_listed_as_one(zips):
    assert await zips.archives.members(zips.archive(text(1, 5000), "notes.zip"), where="t", mtime=0) is None
    truncated = make_zip([("a", b"a" * 100, 0)])[:-30]
    assert await zips.archives.members(zips.archive(truncated), where="t", mtime=0) is None
    mutable = dataclasses.replace(zips.archive(make_zip([("a", b"a", 0)])), immutable=False)
    assert await zips.archives.members(mutable, where="t", mtime=0) is None


async def test_random_reads_deep_in_a_large_deflated_member_start_at_checkpoints(fake, nursery, monkeypatch):
    monkeypatch.setattr(zipmember, "CHECKPOINT_BYTES", 1 << 20)
    size = 24 << 20
    content = text(7, size)
    # a small memory cache and no disk: decoded blocks do not stay, checkpoints must serve
    zips = Zips(fake, nursery, memory=2 << 20)
    files = await zips.files(zips.archive(make_zip([("big.txt", content, zipfile.ZIP_DEFLATED)], level=1)))
    art = files["big.txt"].artifact
    counted = zips.members

    async def read_at(offset: int) -> int:
        before = counted.inflated_bytes
        assert await zips.reader.read(art, offset, 4096) == content[offset:offset + 4096]
        return counted.inflated_bytes - before

    deep = 20 * (1 << 20) + 5000
    assert await read_at(deep) >= deep  # the first: from the start
    assert counted.passes_from_start == 1
    # back, into a block long evicted: from the checkpoint at or before it, not the start
    for offset in (deep - 3 * (1 << 20), 3 * (1 << 20) + 77, 10 * (1 << 20) + BS * 3, 17):
        assert await read_at(offset) <= (1 << 20) + BS
    # forward, a little past where the last pass stopped: from there
    assert await read_at(17 + 2 * BS) <= 2 * BS
    assert counted.passes_from_start == 2  # (offset 17: the start is its nearest point)
    # a sequential read never decodes a byte twice
    before = counted.inflated_bytes
    zips2 = Zips(fake, nursery, memory=8 << 20)
    files2 = await zips2.files(zips2.archive(make_zip([("big.txt", content[:8 << 20], zipfile.ZIP_DEFLATED)])))
    assert await read_all(zips2.reader, files2["big.txt"].artifact, step=BS) == content[:8 << 20]
    assert zips2.members.inflated_bytes == 8 << 20 and zips2.members.crc_checks == 1
    assert counted.inflated_bytes == before


def _patch_cd(data: bytes, name: bytes, offset_in_entry: int, fmt: str, value: int) -> bytes:
    """Set a field of `name`'s central directory entry (located with the plain format)."""
    cd_size, cd_offset = struct.unpack_from("<LL", data, len(data) - 22 + 12)
    blob = bytearray(data)
    pos = cd_offset
    while pos < cd_offset + cd_size:
        n, m, k = struct.unpack_from("<3H", blob, pos + 28)
        if blob[pos + 46:pos + 46 + n] == name:
            struct.pack_into(fmt, blob, pos + offset_in_entry, value)
            return bytes(blob)
        pos += 46 + n + m + k
    raise AssertionError(name)


async def expect_eio(reader: Reader, art: Artifact, offset: int = 0, length: int = 1 << 30) -> str:
    with pytest.raises(CiartfsError) as info:
        await reader.read(art, offset, length)
    assert info.value.errno == errno.EIO
    return str(info.value)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
async def test_a_crc_mismatch_is_eio_and_its_blocks_are_dropped(zips, method):
    content = text(3, 4 * BS + 10)
    data = make_zip([("a", content, method), ("b", content, method)])
    good = zlib.crc32(content)
    data = _patch_cd(data, b"a", 16, "<L", good ^ 1)
    files = await zips.files(zips.archive(data))
    art = files["a"].artifact
    assert "CRC-32 mismatch" in await expect_eio(zips.reader, art)
    assert not any(zips.reader.blocks.key(art, i, art.size) in zips.reader.memory for i in range(5))
    await expect_eio(zips.reader, art, 0, 10)  # and from then on
    assert await read_all(zips.reader, files["b"].artifact) == content  # its neighbour reads


async def test_members_whose_sizes_lie(zips, caplog):
    content = text(4, 3 * BS)
    data = make_zip([("longer", content, zipfile.ZIP_DEFLATED), ("shorter", content, zipfile.ZIP_DEFLATED),
                     ("stored", content, zipfile.ZIP_STORED), ("next", b"n", zipfile.ZIP_STORED)])
    data = _patch_cd(data, b"longer", 24, "<L", len(content) + 1)
    data = _patch_cd(data, b"shorter", 24, "<L", len(content) - 1)
    # compressed size past its data: into the next member's local header
    data = _patch_cd(data, b"stored", 20, "<L", len(content) + 5)
    data = _patch_cd(data, b"stored", 24, "<L", len(content) + 5)
    files = await zips.files(zips.archive(data))
    assert "ends after" in await expect_eio(zips.reader, files["longer"].artifact)
    assert "past its stated size" in await expect_eio(zips.reader, files["shorter"].artifact)
    assert "a size that lies" in await expect_eio(zips.reader, files["stored"].artifact)
    assert await zips.reader.read(files["next"].artifact, 0, 10) == b"n"
    assert sum("a size that lies" in r.getMessage() for r in caplog.records) == 1


async def test_methods_without_a_reader_and_encrypted_members(zips, caplog):
    data = make_zip([("zstd", b"z" * 100, zipfile.ZIP_STORED), ("secret", b"s" * 100, zipfile.ZIP_STORED),
                     ("plain", b"p" * 100, zipfile.ZIP_STORED)])
    data = _patch_cd(data, b"zstd", 10, "<H", 93)
    data = _patch_cd(data, b"secret", 8, "<H", 1)
    files = await zips.files(zips.archive(data))
    assert "zstandard (method 93)" in await expect_eio(zips.reader, files["zstd"].artifact)
    assert "encrypted" in await expect_eio(zips.reader, files["secret"].artifact)
    assert "encrypted" in files["secret"].info["zip"]
    assert await zips.reader.read(files["plain"].artifact, 0, 1000) == b"p" * 100
    assert any("zstandard" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


async def test_a_zip_bomb_stops_early_with_eio(zips):
    size = 200 << 20
    data = make_zip([("bomb", bytes(size), zipfile.ZIP_DEFLATED)], level=9)
    assert len(data) < size // 900
    files = await zips.files(zips.archive(data))
    art = files["bomb"].artifact
    assert art.size == size
    with trio.fail_after(30):
        assert "decompression bomb" in await expect_eio(zips.reader, art, size - 10, 10)
    assert zips.members.inflated_bytes < 40 << 20  # stopped soon after the ratio rule applies


async def test_overlapping_members_are_listed_and_read_as_eio(zips):
    data = make_zip([("a", text(1, 1000), zipfile.ZIP_DEFLATED), ("b", text(2, 1000), zipfile.ZIP_DEFLATED)])
    data = _patch_cd(data, b"b", 42, "<L", 0)
    files = await zips.files(zips.archive(data))
    for name in ("a", "b"):
        assert "overlaps" in await expect_eio(zips.reader, files[name].artifact)


async def test_a_corrupt_lzma_header_is_eio(zips):
    data = bytearray(make_zip([("x.lz", text(5, 5000), zipfile.ZIP_LZMA), ("ok", b"ok", 0)]))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("x.lz")
    data[info.header_offset + 30 + len(b"x.lz") + 4] = 0xFF  # the lc/lp/pb byte: out of range
    files = await zips.files(zips.archive(bytes(data)))
    assert "lzma header" in await expect_eio(zips.reader, files["x.lz"].artifact)
    assert await zips.reader.read(files["ok"].artifact, 0, 10) == b"ok"


def _served_archive(fake: FakeCI, data: bytes) -> Artifact:
    blob = ZipBlob(data)
    fake.blobs.add(blob)
    return Artifact(f"test|{blob.blob_id}/a.zip", fake.presigned_url(blob.blob_id), True, source=TAIL_FIRST)


async def _listed(fake: FakeCI, reader: Reader, archive: Artifact) -> dict[str, Entry]:
    """The archive's members as a new mount lists them (the requests log cleared after)."""
    entries = await ZipArchives(reader).members(archive, where="t", mtime=0)
    assert entries is not None
    files = await walk(entries)
    fake.clear_requests()
    return files


async def test_decoded_members_are_read_from_the_disk_cache_by_a_later_mount(fake, tmp_path):
    content = text(6, 6 * BS + 5)
    archive = _served_archive(fake, make_zip([("d.txt", content, zipfile.ZIP_DEFLATED),
                                              ("s.bin", content, zipfile.ZIP_STORED)]))
    for mount in range(2):
        reader = Reader(HttpClient(timeout=10), MemoryCache(64 << 20), DiskStore(tmp_path / "blocks", 1 << 30), BS)
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            files = await _listed(fake, reader, archive)
            for name in ("d.txt", "s.bin"):
                assert await read_all(reader, files[name].artifact) == content
            if mount == 1:  # every block from disk: no request for the archive's bytes
                assert [r for r in fake.requests if r.server == "storage"] == []
            await reader.flush_writes()
            nursery.cancel_scope.cancel()


async def test_members_decoded_ahead_stay_in_memory_and_a_later_mount_decodes_them_from_the_disk(fake, tmp_path):
    # the archive's compressed blocks go to disk as fetched; the blocks of members decoded
    # ahead do not (decoded again from the compressed ones, they cost about what reading them
    # back would); a member a pass decodes is written
    members = [(f"logs/{i:02d}.log", text(100 + i, 30_000), zipfile.ZIP_DEFLATED) for i in range(40)]
    names = [name for name, _, _ in members]
    data = make_zip(members)
    archive = _served_archive(fake, data)

    def on_disk(reader: Reader, store: DiskStore, art: Artifact, index: int, total: int) -> bool:
        key = reader.blocks.key(art, index, total)
        return reader.writes.holds(key) or store.contains(key)

    for mount in range(2):
        store = DiskStore(tmp_path / "blocks", 1 << 30)
        reader = Reader(HttpClient(timeout=10), MemoryCache(64 << 20), store, BS)
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            files = await _listed(fake, reader, archive)
            for name, content, _ in members:
                art = files[name].artifact
                assert art.size is not None
                reader.opened(art, art.size)
                assert await read_all(reader, art) == content
            await reader.flush_writes()
            written = {name for name in names if on_disk(reader, store, files[name].artifact, 0, files[name].artifact.size)}
            member_reader = reader._sources[ZipMember]
            assert isinstance(member_reader, ZipMemberReader)
            if mount == 0:
                assert member_reader.decoded_ahead == len(names) - 3
                assert written == set(names[:3])  # (decoded by passes, before the row was seen)
                assert all(on_disk(reader, store, archive, i, len(data)) for i in range(-(-len(data) // BS)))
            else:  # the compressed bytes from disk, decoded again: no request for them
                assert [r for r in fake.requests if r.server == "storage"] == []
                # (each member decoded ahead, and not written, or found on disk, or decoded by a pass)
                assert member_reader.decoded_ahead > len(names) // 2
                assert written >= set(names[:3]) and len(written) + member_reader.decoded_ahead == len(names)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_a_pass_decodes_whatever_the_input_chunks_and_block_size(method, chunk):
    """The decoding core alone (zipmember._Pass), fed as the reader feeds it, in chunks of any
    size, asked for blocks one after the other."""
    content = text(method + chunk, 50_000)
    data = make_zip([("m", content, method)])
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("m")
    start = info.header_offset + 30 + 1
    compressed = data[start:start + info.compress_size]
    bs = 4096
    if method == zipfile.ZIP_DEFLATED:
        first = zipmember._Start(0, 0, 0, zipmember._Zlib())
    elif method == zipfile.ZIP_BZIP2:
        first = zipmember._Start(0, 0, 0, zipmember._Buffering(bz2.BZ2Decompressor()))
    else:
        taken, filters = zipmember.zipindex.lzma_filters(compressed[:9])
        first = zipmember._Start(0, taken, 0, zipmember._Buffering(lzma.LZMADecompressor(lzma.FORMAT_RAW,
                                                                                        filters=filters)))
    run = zipmember._Pass(first, block_size=bs, size=len(content), compressed_size=len(compressed),
                          crc32=info.CRC, checkpoint_blocks=3, end_marker_optional=method == zipfile.ZIP_LZMA)
    got: dict[int, bytes] = {}
    for until in range(-(-len(content) // bs)):
        for _ in range(1_000_000):
            if until in got or run.finished:
                break
            data_chunk = compressed[run.in_pos:run.in_pos + chunk]
            blocks, _ = run.step(data_chunk, until)
            got.update(blocks)
    assert run.finished
    assert b"".join(got[i] for i in sorted(got)) == content
    if method == zipfile.ZIP_DEFLATED:  # its checkpoints resume where they were taken
        assert run.checkpoints
        for cp in run.checkpoints:
            again = zipmember._Pass(zipmember._Start(cp.block, cp.in_pos, cp.crc, cp.inflater), block_size=bs,
                                    size=len(content), compressed_size=len(compressed), crc32=info.CRC,
                                    checkpoint_blocks=1000, end_marker_optional=False)
            rest: dict[int, bytes] = {}
            while not again.finished:
                rest.update(again.step(compressed[again.in_pos:again.in_pos + chunk], 10**9)[0])
            assert b"".join(rest[i] for i in sorted(rest)) == content[cp.block * bs:]


async def test_members_carry_the_callers_xattrs_and_their_own(zips):
    archive = zips.archive(make_zip([("d/f.txt", b"hello", zipfile.ZIP_DEFLATED)]))
    (d,) = await zips.archives.members(archive, where="t", mtime=5.0, info={"source": '{"run": 1}'})
    (f,) = await d.source.list()
    assert d.mtime == 5.0 and list(f.info) == ["source", "zip"] and len(f.info) == 2
    assert f.info["source"] == '{"run": 1}'
    assert json.loads(f.info["zip"]) == {"member": "d/f.txt", "method": "deflated (method 8)", "size": 5,
                                         "compressed_size": f.artifact.source.compressed_size,
                                         "crc32": f"{zlib.crc32(b'hello'):08x}"}


def _fetched_ranges(zips: Zips) -> list[tuple[int, int]]:
    """The storage requests' byte ranges [start, end), suffix ranges left out."""
    out = []
    for spec in zips.storage_ranges():
        if spec.startswith("bytes=") and not spec.startswith("bytes=-"):
            lo, _, hi = spec[6:].partition("-")
            out.append((int(lo), int(hi) + 1))
    return out


async def test_reading_one_member_fetches_that_member_only(zips):
    # (the archive's read-ahead follows the member's sequential reads, but not past its end:
    # reading 1 MiB of a large archive must not cost the next members' bytes too)
    rnd = random.Random(3)
    data = make_zip([(f"blobs/{i:02d}.bin", rnd.randbytes(1 << 20), zipfile.ZIP_STORED) for i in range(12)])
    files = await zips.files(zips.archive(data))
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("blobs/05.bin")
    member = files["blobs/05.bin"].artifact
    zips.fake.clear_requests()
    assert await read_all(zips.reader, member, step=BS) == data[info.header_offset + 30 + len("blobs/05.bin"):][:1 << 20]
    wanted_end = info.header_offset + 30 + len("blobs/05.bin") + (1 << 20)
    ranges = _fetched_ranges(zips)
    assert ranges and min(lo for lo, _ in ranges) >= info.header_offset // BS * BS
    assert max(hi for _, hi in ranges) <= -(-wanted_end // BS) * BS  # nothing past the member's last block


async def test_members_read_in_archive_order_are_read_ahead_and_decoded_ahead(zips):
    # `grep -r` over small deflated members: the archive is read ahead across members in runs
    # (few requests, not one per block), and the members after the one opened are decoded in
    # the background, so that the reader finds them decoded
    rnd = random.Random(4)
    members = [(f"logs/{i:04d}.log", text(i, 60_000) + rnd.randbytes(2000), zipfile.ZIP_DEFLATED) for i in range(300)]
    data = make_zip(members)
    files = await zips.files(zips.archive(data))
    expected = zipfile.ZipFile(io.BytesIO(data))
    order = [name for name, _, _ in members]
    zips.fake.clear_requests()
    reader, bs = zips.reader, zips.reader.block_size
    for i, name in enumerate(order):
        art = files[name].artifact
        assert art.size is not None
        reader.opened(art, art.size)
        assert await read_all(reader, art) == expected.read(name), name
        if 2 <= i < len(order) - 1:  # (from the third member on, the archive is read in order)
            following = files[order[i + 1]].artifact
            key = reader.blocks.key(following, 0, following.size)
            with trio.fail_after(10):  # (a worker thread decodes it: wait for it, not a time)
                while reader.memory.get(key) is None:
                    await trio.sleep(0.001)
    archive_blocks = -(-len(data) // bs)
    assert archive_blocks > 40
    assert len(zips.storage_ranges()) < archive_blocks // 4
    # every member after the third decoded ahead, and none twice
    assert zips.members.decoded_ahead == len(order) - 3
    assert zips.members.passes_from_start == len(order)


async def test_small_steps_are_decoded_without_a_worker_thread(zips, monkeypatch):
    data = make_zip([("a.txt", text(1, 50_000), zipfile.ZIP_DEFLATED), ("b.txt", text(2, 3 * BS), zipfile.ZIP_DEFLATED)])
    files = await zips.files(zips.archive(data))
    threads = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kw):
        threads.append(getattr(fn, "__name__", fn))
        return await real(fn, *args, **kw)

    monkeypatch.setattr(zipmember.trio.to_thread, "run_sync", counting)
    expected = zipfile.ZipFile(io.BytesIO(data))
    assert await read_all(zips.reader, files["a.txt"].artifact) == expected.read("a.txt")
    assert threads == []  # one block from a few KiB: inline
    assert await read_all(zips.reader, files["b.txt"].artifact, step=3 * BS) == expected.read("b.txt")
    assert "step" in threads  # three blocks wanted at once: a worker thread's


async def test_members_decoded_ahead_in_batches_keep_every_check(zips, monkeypatch):
    # `grep -r` in archive order: the members ahead are decoded whole, in batches (one worker
    # thread call for many), and a batch keeps every check a pass makes: a member whose CRC-32
    # or size lies is never put in the cache by it (its reader decodes it, and gets EIO), a
    # member of several blocks comes out right, a stored member between them splits a batch
    rnd = random.Random(5)
    members = [(f"logs/{i:03d}.log", text(i, 40_000) + rnd.randbytes(500), zipfile.ZIP_DEFLATED) for i in range(120)]
    members[60] = ("logs/060.log", text(60, 3 * BS + 5), zipfile.ZIP_DEFLATED)
    members[80] = ("logs/080.bin", rnd.randbytes(30_000), zipfile.ZIP_STORED)
    data = make_zip(members)
    crc_bad, size_bad, stream_bad = "logs/040.log", "logs/041.log", "logs/043.log"
    expected = zipfile.ZipFile(io.BytesIO(data))
    data = _patch_cd(data, crc_bad.encode(), 16, "<L", expected.getinfo(crc_bad).CRC ^ 1)
    data = _patch_cd(data, size_bad.encode(), 24, "<L", expected.getinfo(size_bad).file_size - 1)
    at = expected.getinfo(stream_bad).header_offset + 30 + len(stream_bad) + 100  # into its deflate stream
    data = data[:at] + bytes(b ^ 0x5A for b in data[at:at + 64]) + data[at + 64:]
    files = await zips.files(zips.archive(data))
    batches: list[int] = []
    real = zipmember._decode_whole

    def counting(span, lo, todo, block_size):
        batches.append(len(todo))
        return real(span, lo, todo, block_size)

    monkeypatch.setattr(zipmember, "_decode_whole", counting)
    reader = zips.reader
    for name, _, _ in members:
        art = files[name].artifact
        assert art.size is not None
        if name == "logs/038.log":  # its batch is done once the member after those that lie is in
            after = files["logs/044.log"].artifact
            with trio.fail_after(10):
                while reader.memory.get(reader.blocks.key(after, 0, after.size)) is None:
                    await trio.sleep(0.001)
            for bad in (crc_bad, size_bad, stream_bad):
                assert reader.memory.get(reader.blocks.key(files[bad].artifact, 0, files[bad].artifact.size)) is None
        reader.opened(art, art.size)
        if name == crc_bad:
            assert "CRC-32 mismatch" in await expect_eio(reader, art)
        elif name == size_bad:
            assert "past its stated size" in await expect_eio(reader, art)
        elif name == stream_bad:
            await expect_eio(reader, art)
        else:
            assert await read_all(reader, art) == expected.read(name), name
    # members 3 to 119 but the stored one and the three that lie: decoded ahead, in a few batches
    assert zips.members.decoded_ahead == 120 - 3 - 4
    assert sum(batches) == 120 - 3 - 1 and len(batches) < 15


async def test_a_member_far_from_the_next_header_is_not_decoded_in_a_batch(zips, monkeypatch):
    # a batch reads its members' bytes up to where the last one's data must end (the next
    # local header): a member followed by bytes no member claims is left to its reader, so
    # that what a batch reads stays bounded whatever the archive holds
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(10):
            zf.writestr(f"m{i}", text(i, 20_000), compress_type=zipfile.ZIP_DEFLATED)
            if i == 5:
                assert zf.fp is not None
                zf.fp.write(bytes(zipmember.AHEAD_BATCH_BYTES))
                zf.start_dir = zf.fp.tell()
    data = buf.getvalue()
    expected = zipfile.ZipFile(io.BytesIO(data))
    files = await zips.files(zips.archive(data))
    batched: list[str] = []
    real = zipmember._decode_whole

    def recording(span, lo, todo, block_size):
        batched.extend(m.key.rpartition(MEMBER_KEY_SEPARATOR)[2] for m in todo)
        return real(span, lo, todo, block_size)

    monkeypatch.setattr(zipmember, "_decode_whole", recording)
    for i in range(10):
        art = files[f"m{i}"].artifact
        assert art.size is not None
        zips.reader.opened(art, art.size)
        assert await read_all(zips.reader, art) == expected.read(f"m{i}")
    assert "m5" not in batched and {"m3", "m4", "m6"} <= set(batched)


async def test_directory_entries_make_at_most_the_directory_budget(zips, monkeypatch, caplog):
    """A zip's directory entries (empty directories) could ask for a directory per byte of its
    central directory, 250 a name here: they are bounded as a listing's paths are."""
    monkeypatch.setattr(names, "DIRS_FREE", 100)
    chains = [(f"p{i:02d}/" + "d/" * 248, b"", 0) for i in range(40)]
    archive = zips.archive(make_zip([("ok.txt", b"fine\n", zipfile.ZIP_DEFLATED), *chains]))
    files = await zips.files(archive)
    budget = 100 + 4 * 41
    assert sum(path.endswith("/") for path in files) == budget
    assert "p00/" in files and "p01/" in files and "p39/" not in files  # made in order, until the budget
    assert "directory entries not shown" in caplog.text
    assert await read_all(zips.reader, files["ok.txt"].artifact) == b"fine\n"


def raw_zip(members: list[tuple[bytes, bytes, int, bytes, bytes, bytes | None]]) -> bytes:
    """A zip written field by field: (central name, content, method, local extra, central extra,
    local name or None for the central one). zipfile cannot write what real writers do: local
    headers whose name and extra lengths differ from the central directory's, or any name."""
    local_part, central_part = bytearray(), bytearray()
    for name, content, method, local_extra, central_extra, local_name in members:
        data = zlib.compress(content, 6)[2:-4] if method == zipfile.ZIP_DEFLATED else content
        crc, offset = zlib.crc32(content), len(local_part)
        lname = name if local_name is None else local_name
        local_part += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0x800, method, 0, 0x5B61, crc, len(data), len(content),
                                  len(lname), len(local_extra)) + lname + local_extra + data
        central_part += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0x800, method, 0, 0x5B61, crc, len(data),
                                    len(content), len(name), len(central_extra), 0, 0, 0, 0o100644 << 16,
                                    offset) + name + central_extra
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central_part),
                       len(local_part), 0)
    return bytes(local_part + central_part + eocd)


async def test_a_members_data_begins_after_its_own_local_header(zips):
    # Info-ZIP writes the extended timestamp with access time in the local header and without
    # it centrally; zipalign pads local extras; a local name may differ in length too
    ut_local, ut_central = struct.pack("<HHBll", 0x5455, 9, 3, 1, 2), struct.pack("<HHBl", 0x5455, 5, 1, 1)
    pad = struct.pack("<HH", 0xD935, 300) + bytes(300)
    a, b, c = text(1, BS + 7), text(2, 3 * BS), text(3, 5000)
    data = raw_zip([(b"a.txt", a, zipfile.ZIP_STORED, ut_local + pad, ut_central, None),
                    (b"b.txt", b, zipfile.ZIP_DEFLATED, ut_local, ut_central + pad, None),
                    (b"c.txt", c, zipfile.ZIP_DEFLATED, b"", ut_central, b"c.txt.with-a-longer-local-name")])
    assert zipfile.ZipFile(io.BytesIO(data)).read("a.txt") == a  # (what the stdlib reads too)
    files = await zips.files(zips.archive(data))
    for name, content in (("a.txt", a), ("b.txt", b), ("c.txt", c)):
        assert await read_all(zips.reader, files[name].artifact) == content, name
        assert await zips.reader.read(files[name].artifact, 4000, 100) == content[4000:4100], name


async def test_member_paths_follow_the_artifact_path_rules(zips, caplog):
    def member(name: bytes, content: bytes) -> tuple[bytes, bytes, int, bytes, bytes, None]:
        return (name, content, zipfile.ZIP_STORED, b"", b"", None)

    data = raw_zip([member(b"ok.txt", b"ok"), member(b"../up.txt", b"climbed"), member(b"a/./b.txt", b"dot"),
                    member(b"/abs/x.txt", b"abs"), member(b"a//c.txt", b"double slash"),
                    member(b"nul\x00.txt", b"nul"), member(b"x" * 256 + b"/long.txt", b"long"),
                    member(b"bad-\xff.txt", b"not utf-8"), member(b"dup.txt", b"first"),
                    member(b"dup.txt", b"second"), member(b"both", b"a file"), member(b"both/under", b"wins")])
    files = await zips.files(zips.archive(data))
    shown = {p: await read_all(zips.reader, e.artifact) for p, e in files.items() if e.kind is Kind.FILE}
    assert shown == {"ok.txt": b"ok", "abs/x.txt": b"abs", "a/c.txt": b"double slash", "dup.txt": b"first",
                     "both/under": b"wins"}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    for why in ("'../up.txt': a component is '..'", "'a/./b.txt': a component is '.'", "'nul\\x00.txt': contains a NUL",
                "longer than 255 bytes", "'bad-\\udcff.txt': a component is not valid UTF-8",
                "duplicate artifact path 'dup.txt'", "'both': it is also a directory"):
        assert sum(why in line for line in skipped) == 1, (why, skipped)
    assert len(skipped) == 7


async def test_a_zip64_end_record_before_the_tail_is_read_where_its_locator_points(zips, monkeypatch):
    # zip64 records are written past ZIP64_LIMIT: a small limit makes them cheap. A comment as
    # long as can be puts the zip64 end record before the tail the listing reads first.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    members = [(f"m{i}.txt", text(i, 150 * i + 1), list(METHODS.values())[i % 4]) for i in range(6)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content, method in members:
            zf.writestr(name, content, compress_type=method)
        zf.comment = b"c" * 65535
    data = buf.getvalue()
    record_at = struct.unpack_from("<Q", data, len(data) - 22 - 65535 - 20 + 8)[0]
    assert data[record_at:record_at + 4] == b"PK\x06\x06" and len(data) - record_at > zipmember.zipindex.tail_length(
        len(data))
    files = await zips.files(zips.archive(data))
    assert sorted(files) == sorted(name for name, _, _ in members)
    for name, content, _ in members:
        assert await read_all(zips.reader, files[name].artifact) == content, name
