"""Tier 1: byte sources (data/sources.py). Which source providers give an artifact, that the
reader follows the artifact's source (not its name), and that a new kind of source plugs in
with one line in `source_readers` and is served through the reader's cache, single flight and
read-ahead, as a zip member will be."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
import trio
import trio.testing

from ciartfs.data import sources
from ciartfs.data.cache import MemoryCache
from ciartfs.data.ranged import TAIL_BYTES
from ciartfs.data.reader import Reader, ReadStream
from ciartfs.data.sources import LIVE, RANGED, TAIL_FIRST, ByteSource, ZipMember, source_for_name
from ciartfs.errors import UpstreamError
from ciartfs.namespace.model import Artifact
from ciartfs.net.client import HttpClient
from ciartfs.providers.circleci.v1 import ArtifactRecord, node_entries

BS = 4096


def test_archives_indexed_at_their_end_are_read_tail_first():
    assert source_for_name("dist/app-1.0.ZIP") is TAIL_FIRST
    assert source_for_name("pkg/lib.whl") is TAIL_FIRST and source_for_name("a.jar") is TAIL_FIRST
    assert source_for_name("zip") is RANGED and source_for_name("notes.zip.txt") is RANGED
    assert source_for_name("report.html") is RANGED
    # shared descriptors: an artifact holds a reference, not an object of its own
    assert sources.RangedUrl() == RANGED and sources.RangedUrl(tail_first=True) == TAIL_FIRST
    assert not hasattr(RANGED, "__dict__")


def test_an_artifact_is_live_exactly_when_its_source_is_the_live_stream():
    assert Artifact("k", "http://x/k", False, source=LIVE).live
    assert not Artifact("k", "http://x/k", True).live and Artifact("k", "http://x/k", True).source is RANGED


def test_circleci_artifacts_get_their_source_where_they_are_built():
    records = [ArtifactRecord("out/app.jar", 0, "https://h.example/0/out/app.jar"),
               ArtifactRecord("out/log.txt", 0, "https://h.example/0/out/log.txt")]
    (node,) = node_entries(records, host="circleci.com", host_id="h", where="gh/o/r/1", mtime=0.0, immutable=True,
                           ttl=None, source=lambda node: "{}")
    (out,) = trio.run(node.source.list)
    files = {e.name: e.artifact for e in trio.run(out.source.list)}
    assert files["app.jar"].source is TAIL_FIRST and files["log.txt"].source is RANGED


class RangedStorage:
    """Serves `data` by Range (suffix ranges too), recording each request's Range header."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        spec = request.headers["Range"].removeprefix("bytes=")
        self.ranges.append(spec)
        first, last = spec.split("-")
        size = len(self.data)
        start, end = (max(0, size - int(last)), size - 1) if first == "" else (int(first), min(int(last), size - 1))
        return httpx.Response(206, content=self.data[start:end + 1], headers={"Content-Range": f"bytes {start}-{end}/{size}"})


def _reader(storage: RangedStorage) -> Reader:
    return Reader(HttpClient(timeout=5, transport=httpx.MockTransport(storage)), MemoryCache(16 << 20), None, BS)


async def test_the_reader_follows_the_source_not_the_name(nursery):
    data = bytes(range(256)) * (100 * BS // 256)  # 100 blocks: more than the tail probe
    storage = RangedStorage(data)
    reader = _reader(storage)
    reader.start(nursery)
    # an archive by its source, whatever its name: its size comes from a probe of its tail...
    archive = Artifact("k/bundle.bin", "http://storage.example/bundle", True, source=TAIL_FIRST)
    assert await reader.size(archive) == len(data)
    assert storage.ranges == [f"-{TAIL_BYTES}"]
    # ...which is kept: the index at its end is read without another request
    assert await reader.read(archive, len(data) - 100, 100) == data[-100:]
    assert storage.ranges == [f"-{TAIL_BYTES}"]
    # a file named like an archive, but whose source says plain ranged reads: block 0 probes it
    plain = Artifact("k/named.zip", "http://storage.example/named", True)
    assert await reader.size(plain) == len(data)
    assert storage.ranges[1:] == [f"0-{BS - 1}"]
    reader.opened(plain, len(data))  # and opening it fetches nothing ahead
    await trio.testing.wait_all_tasks_blocked()
    assert storage.ranges[1:] == [f"0-{BS - 1}"]
    # opening an archive whose size the listing gave fetches its tail at once
    listed = Artifact("k/listed.bin", "http://storage.example/listed", True, size=len(data), source=TAIL_FIRST)
    reader.opened(listed, len(data))
    await trio.testing.wait_all_tasks_blocked()
    assert len(storage.ranges) > 2
    asked = len(storage.ranges)
    assert await reader.read(listed, len(data) - TAIL_BYTES, TAIL_BYTES) == data[-TAIL_BYTES:]
    assert len(storage.ranges) == asked


async def test_a_read_of_several_missing_blocks_fetches_them_in_runs(nursery):
    """The kernel asks up to 1 MiB at once where its read-ahead was raised: the blocks such a
    read misses come in runs of RUN_BYTES, one request each, not one request per block."""
    data = bytes(range(256)) * (1024 * BS // 256)  # 1024 blocks of 4 KiB
    storage = RangedStorage(data)
    reader = _reader(storage)
    reader.start(nursery)
    art = Artifact("k/big.bin", "http://storage.example/big", True, size=len(data))
    assert await reader.read(art, 3 * BS, 300 * BS + 5) == data[3 * BS:303 * BS + 5]  # no stream: no read-ahead
    run = reader.run_blocks * BS
    # (the runs are fetched concurrently: in whatever order they start) the runs end where the
    # read does, each at most a run long: a read of a run's length is then one run, never two
    ends = range(304 * BS, 3 * BS, -run)
    assert sorted(storage.ranges, key=lambda r: int(r.partition("-")[0])) == [
        f"{max(end - run, 3 * BS)}-{end - 1}" for end in reversed(ends)]
    # held blocks split the runs; what is held is not asked for again
    assert await reader.read(art, 0, 310 * BS) == data[:310 * BS]
    assert sorted(storage.ranges[-2:]) == sorted([f"0-{3 * BS - 1}", f"{304 * BS}-{310 * BS - 1}"])


async def test_a_sequential_readers_reads_are_views_of_runs_that_end_where_its_reads_end(nursery):
    """`cat` through the kernel's raised read-ahead reads 256 KiB, 512 KiB, then 1 MiB at a
    time from 768 KiB: read-ahead's runs end where those reads end, so each read is one run's
    view (no copy of 1 MiB joined from two runs' blocks)."""
    data = bytes(range(256)) * (24 << 20 >> 8)
    storage = RangedStorage(data)
    reader = _reader(storage)
    reader.start(nursery)
    art = Artifact("k/big.bin", "http://storage.example/big", True, size=len(data))
    stream = ReadStream()
    reads = [(0, 256 << 10), (256 << 10, 512 << 10)] + [(at, 1 << 20) for at in range(768 << 10, len(data), 1 << 20)]
    copies = []
    for offset, length in reads:
        got = await reader.read_buffer(art, offset, length, stream, total=len(data))
        assert got == data[offset:offset + length]
        if type(got) is not memoryview:
            copies.append(offset)
        await trio.testing.wait_all_tasks_blocked()  # (read-ahead lands between the kernel's reads)
    assert stream.window > 0 and len(storage.ranges) < len(reads)  # read ahead, in runs
    assert copies == []


async def test_a_read_whose_blocks_are_all_held_asks_nothing_for_them_and_gets_their_bytes(nursery):
    """A sequential reader's blocks are all held or coming by the time it reads them: its read
    then plans nothing of its own (per 1 MiB read: 8 keys and 8 lookups less) and each block's
    key is made once. Bytes at block and run edges, and across runs, are the file's."""
    data = bytes(range(251)) * ((6 << 20) // 251)
    storage = RangedStorage(data)
    reader = _reader(storage)
    reader.start(nursery)
    art = Artifact("k/big.bin", "http://storage.example/big", True, size=len(data))
    assert await reader.read(art, 0, len(data)) == data  # (all of it held now, in runs)
    asked = len(storage.ranges)
    own_plans: list[range] = []
    start_readahead = reader._start_readahead

    def recorded(art, blocks, total, stream=None, run_blocks=None, phase=0):
        if stream is None:
            own_plans.append(blocks)
        start_readahead(art, blocks, total, stream, run_blocks, phase)

    reader._start_readahead = recorded  # type: ignore[method-assign]
    keys: list[int] = []
    block_key = reader.blocks.key

    def counted(art, index, total):
        keys.append(index)
        return block_key(art, index, total)

    reader.blocks.key = counted  # type: ignore[method-assign]
    run = reader.run_blocks * BS
    for offset, length in [(0, 1), (BS - 1, 2), (run - 5, 10), (run, run), (3 * run - 7, 2 * run + 14),
                           (len(data) - 3, 3), (len(data) - run - 1, run + 1)]:
        keys.clear()
        got = await reader.read_buffer(art, offset, length, total=len(data))
        assert got == data[offset:offset + length]
        assert sorted(keys) == list(range(offset // BS, (offset + length - 1) // BS + 1))  # each once
    assert own_plans == [] and len(storage.ranges) == asked


@dataclasses.dataclass(frozen=True, slots=True)
class Generated(ByteSource):
    """A source of bytes made in-process: byte i of the file is (seed + i) % 251."""

    seed: int
    size: int

    def span(self, start: int, end: int) -> bytes:
        return bytes((self.seed + i) % 251 for i in range(start, min(end, self.size)))


class GeneratedReader:
    """Its SourceReader: one `fetch` per block, counted."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.fetched: list[int] = []

    async def learn_size(self, art: Artifact, *, reading: bool = False) -> int:
        assert isinstance(art.source, Generated)
        return art.source.size

    async def fetch(self, art: Artifact, index: int, key: str, *, probe: bool) -> bytes:
        assert isinstance(art.source, Generated)
        self.fetched.append(index)
        await trio.sleep(0.01)  # (takes a while: concurrent readers of the block meet in its flight)
        bs = self.reader.block_size
        data = art.source.span(index * bs, (index + 1) * bs)
        self.reader.blocks.keep(art, key, data)
        return data

    def readahead_runs(self, art: Artifact) -> bool:
        return False

    def readahead_wanted(self, art: Artifact, total: int) -> bool:
        return True

    async def fetch_run(self, art: Artifact, first: int, count: int) -> tuple[bytes, int] | None:
        raise AssertionError("no runs for this source")

    def opening_blocks(self, art: Artifact, total: int) -> range:
        return range(0)


async def test_a_new_source_is_one_line_and_gets_the_cache_single_flight_and_read_ahead(nursery, monkeypatch):
    plugged: list[GeneratedReader] = []
    builtin = sources.source_readers

    def with_generated(reader: Reader) -> dict[type[ByteSource], sources.SourceReader]:
        plugged.append(GeneratedReader(reader))
        return {**builtin(reader), Generated: plugged[-1]}

    monkeypatch.setattr(sources, "source_readers", with_generated)
    reader = Reader(HttpClient(timeout=5), MemoryCache(16 << 20), None, BS)
    reader.start(nursery)
    (gen,) = plugged
    source = Generated(seed=7, size=40 * BS + 99)
    art = Artifact("gen|one", "gen://one", True, source=source)
    assert await reader.size(art) == source.size and gen.fetched == []
    # single flight: ten concurrent reads of one block fetch it once
    results: list[bytes] = []

    async def read_block_5() -> None:
        results.append(await reader.read(art, 5 * BS + 10, 100))

    async with trio.open_nursery() as readers:
        for _ in range(10):
            readers.start_soon(read_block_5)
    assert results == [source.span(5 * BS + 10, 5 * BS + 110)] * 10 and gen.fetched == [5]
    # the memory tier: read again, fetched again never
    assert await reader.read(art, 5 * BS, BS) == source.span(5 * BS, 6 * BS) and gen.fetched == [5]
    # read-ahead: a sequential reader's next blocks are fetched before it asks for them
    stream = ReadStream()
    whole = b""
    for offset in range(0, 4 * BS, BS):
        whole += await reader.read(art, offset, BS, stream, source.size)
        await trio.testing.wait_all_tasks_blocked()
    assert max(gen.fetched) > 4
    while len(whole) < source.size:
        whole += await reader.read(art, len(whole), 3 * BS, stream, source.size)
    assert whole == source.span(0, source.size)
    assert sorted(gen.fetched) == list(range(41))  # every block once


async def test_an_artifact_whose_source_has_no_reader_fails_alone(nursery):
    @dataclasses.dataclass(frozen=True, slots=True)
    class Unknown(ByteSource):
        pass

    reader = Reader(HttpClient(timeout=5), MemoryCache(1 << 20), None, BS)
    reader.start(nursery)
    art = Artifact("k/x", "http://storage.example/x", True, source=Unknown())
    with pytest.raises(UpstreamError, match="no reader for a Unknown source"):  # EIO for this file only
        await reader.size(art)
    reader.opened(art, 10)  # (nothing to do, and no error out of an open)
    # a zip member (issue 18) has its reader: one it cannot read fails alone too
    archive = Artifact("k/a.zip", "http://storage.example/a.zip", True, source=TAIL_FIRST)
    member = Artifact("k/a.zip\x00index.html", archive.url, True, size=10,
                      source=ZipMember(archive, header_offset=0, compressed_size=10, method=93, crc32=0))
    with pytest.raises(UpstreamError, match="zstandard"):
        await reader.read(member, 0, 10)
    ok = Artifact("k/ok", "http://storage.example/ok", True, size=3, source=LIVE)
    assert await reader.size(ok) == 0  # a live log: the bytes seen so far, never probed
