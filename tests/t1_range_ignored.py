"""Tier 1: storage that ignores Range (CircleCI's HTML on circle-artifacts.com may): one whole
body fills the cache, single flight per artifact, cut bodies fetched again, lengths checked.
The reader runs against a scripted in-process transport with a real DiskStore."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import httpx
import pytest
import trio

from ciartfs.data import decode as decode_module
from ciartfs.data import fill as fill_module
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.data.reader import Reader, ReadStream
from ciartfs.errors import UpstreamError
from ciartfs.namespace.model import Artifact
from ciartfs.net.client import HttpClient

URL = "https://1-2-gh.circle-artifacts.example/0/report.html"
BS = 4096
DATA = random.Random(7).randbytes(200 * BS + 123)  # 201 blocks, the last one short


class WholeOnly(httpx.AsyncBaseTransport):
    """Answers every GET with 200 and the whole body, whatever its Range. `faults` is a queue,
    one per answer: "cut" (the connection breaks halfway), "short" (Content-Length says more
    than is sent), "stall" (nothing more after half the body, until the test ends), or an int
    (a Content-Length naming that many bytes, the body as it is)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.faults: list[str | int | None] = []
        self.gets = 0
        self.bytes_sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.gets += 1
        fault = self.faults.pop(0) if self.faults else None
        length = fault if isinstance(fault, int) else len(self.data)
        return httpx.Response(200, headers={"Content-Length": str(length)}, stream=_Stream(self, fault))


class _Stream(httpx.AsyncByteStream):
    def __init__(self, transport: WholeOnly, fault: str | int | None) -> None:
        self.transport = transport
        self.fault = fault

    async def __aiter__(self):
        data = self.transport.data
        end = len(data) // 2 if self.fault in ("cut", "short", "stall") else len(data)
        for i in range(0, end, 8192):
            piece = data[i:min(end, i + 8192)]
            self.transport.bytes_sent += len(piece)
            yield piece
            await trio.sleep(0)
        if self.fault == "cut":
            raise httpx.ReadError("connection reset")
        if self.fault == "stall":
            await trio.sleep_forever()


def make_reader(tmp_path, transport: WholeOnly, *, disk: bool = True, memory: int = 64 << 20,
                timeout: float = 5) -> Reader:
    store = DiskStore(tmp_path / "blocks", 256 << 20) if disk else None
    return Reader(HttpClient(timeout=timeout, transport=transport), MemoryCache(memory), store, BS)


async def read_all(reader: Reader, art: Artifact, chunk: int = 3 * BS) -> bytes:
    """Like `cat`: size first, then sequential reads with read-ahead."""
    total = await reader.size(art)
    stream = ReadStream()
    out = bytearray()
    for offset in range(0, total, chunk):
        out += await reader.read(art, offset, chunk, stream, total)
    return bytes(out)


def art(name: str = "report.html") -> Artifact:
    return Artifact(key=f"circleci|h|1/0/{name}", url=URL, immutable=True)


async def test_a_file_read_block_by_block_is_fetched_once(tmp_path):
    transport = WholeOnly(DATA)
    reader = make_reader(tmp_path, transport)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20):
            got = await read_all(reader, a)
        assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
        assert transport.gets == 1, "one whole body must serve every block"
        # every block is in the disk cache, each exactly its range's bytes
        for index in range(-(-len(DATA) // BS)):
            assert reader.disk.get(reader._block_key(a, index, len(DATA))) == DATA[index * BS:(index + 1) * BS]
        reader.blocks.memory = MemoryCache(64 << 20)  # memory forgotten: the disk serves a second read
        assert await read_all(reader, a) == DATA
        assert transport.gets == 1
        nursery.cancel_scope.cancel()


async def test_concurrent_readers_of_different_blocks_share_one_body(tmp_path):
    transport = WholeOnly(DATA)
    reader = make_reader(tmp_path, transport)
    a = art()
    results: dict[int, bytes] = {}
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        total = await reader.size(a)
        assert total == len(DATA) and transport.gets == 1

        async def read_at(offset: int) -> None:
            results[offset] = await reader.read(a, offset, 5000, None, total)

        with trio.fail_after(20):
            async with trio.open_nursery() as readers:
                for offset in (150 * BS + 7, 3 * BS, 199 * BS, len(DATA) - 5000, 60 * BS + 1):
                    readers.start_soon(read_at, offset)
        assert transport.gets == 1
        assert all(data == DATA[offset:offset + 5000] for offset, data in results.items())
        nursery.cancel_scope.cancel()


async def test_listing_stops_probe_bodies_past_the_limit_and_a_later_read_fetches_once(tmp_path, monkeypatch):
    monkeypatch.setattr(fill_module, "PROBE_FILLS", 1)
    transport = WholeOnly(DATA)
    reader = make_reader(tmp_path, transport)
    arts = [art(f"r{i}.html") for i in range(4)]
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20):
            async with trio.open_nursery() as listing:  # `ls -l`: every size at once
                for a in arts:
                    listing.start_soon(reader.size, a)
        assert transport.gets == 4  # one GET per file, no more
        assert transport.bytes_sent < 3 * len(DATA), "at most one probe's body streams on whole"
        # the one that streamed on is cached whole; the others are fetched once, when read
        with trio.fail_after(20):
            for a in arts:
                assert await read_all(reader, a) == DATA
        assert transport.gets <= 4 + 3
        before = transport.gets
        for a in arts:
            assert await read_all(reader, a) == DATA
        assert transport.gets == before
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("fault", ["cut", "short"])
async def test_a_cut_body_is_fetched_again_and_never_served_partially(tmp_path, fault):
    transport = WholeOnly(DATA)
    transport.faults = [fault]
    reader = make_reader(tmp_path, transport)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20):
            assert await read_all(reader, a) == DATA
        assert transport.gets == 2
        nursery.cancel_scope.cancel()


async def test_a_body_that_stalls_is_fetched_again_within_the_operation_timeout(tmp_path):
    transport = WholeOnly(DATA)
    transport.faults = ["stall"]
    reader = make_reader(tmp_path, transport, timeout=1)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(5):  # the fill's own bound is ten operation timeouts: well before that
            assert await read_all(reader, a) == DATA
        assert transport.gets == 2
        nursery.cancel_scope.cancel()


async def test_a_body_cut_every_time_fails_the_read_without_wrong_bytes(tmp_path):
    transport = WholeOnly(DATA)
    transport.faults = ["cut"] * 10
    reader = make_reader(tmp_path, transport)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20):
            total = await reader.size(a)
            assert await reader.read(a, 0, 2 * BS, None, total) == DATA[:2 * BS]  # before the cut
            with pytest.raises(UpstreamError):
                await reader.read(a, len(DATA) - 100, 100, None, total)  # never arrives
        for index in range(-(-len(DATA) // BS)):  # what is cached is right; the rest is absent
            cached = reader.disk.get(reader._block_key(a, index, len(DATA)))
            assert cached is None or cached == DATA[index * BS:(index + 1) * BS]
        nursery.cancel_scope.cancel()


async def test_a_content_length_other_than_the_known_size_is_an_error(tmp_path):
    """The size is known (shown to the kernel) and storage answers with another length: the
    read fails and nothing of that body is cached."""
    transport = WholeOnly(DATA)
    transport.faults = [len(DATA) + BS]
    reader = make_reader(tmp_path, transport)
    a = art()
    reader.blocks.sizes[a.key] = len(DATA)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20), pytest.raises(UpstreamError, match="size changed"):
            await reader.read(a, 5 * BS, 100, None, len(DATA))
        for index in range(-(-len(DATA) // BS)):
            assert reader.disk.get(reader._block_key(a, index, len(DATA))) is None
        assert transport.gets == 1
        nursery.cancel_scope.cancel()


async def test_a_lying_content_length_on_the_first_answer_is_never_served_past_the_body(tmp_path):
    """Content-Length says a block more than the body has: the body ends short every time, so the
    bytes past it are never served (EIO), and those before it are right."""
    transport = WholeOnly(DATA)
    transport.faults = [len(DATA) + BS] * 10
    reader = make_reader(tmp_path, transport)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20):
            total = await reader.size(a)
            assert total == len(DATA) + BS  # what the server said, until its body says otherwise
            assert await reader.read(a, 10 * BS, BS, None, total) == DATA[10 * BS:11 * BS]
            with pytest.raises(UpstreamError):
                await reader.read(a, len(DATA) - 10, BS, None, total)
        nursery.cancel_scope.cancel()


async def test_without_a_disk_cache_a_file_that_fits_memory_is_still_fetched_once(tmp_path):
    transport = WholeOnly(DATA)
    reader = make_reader(tmp_path, transport, disk=False, memory=16 << 20)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(20):
            assert await read_all(reader, a) == DATA
        assert transport.gets == 1
        nursery.cancel_scope.cancel()


async def test_a_probe_body_streams_into_the_disk_cache_within_bounded_memory(tmp_path, monkeypatch):
    """An 8 MiB body kept going after the size probe: memory stays at a batch and a few
    chunks (traced), every block lands on disk, the budget is all given back."""
    monkeypatch.setattr(fill_module, "FILL_BATCH_BYTES", 64 << 10)
    data = random.Random(3).randbytes(8 << 20)
    transport = WholeOnly(data)
    reader = make_reader(tmp_path, transport)
    a = art()
    keys = [reader._block_key(a, i, len(data)) for i in range(len(data) // BS)]
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        tracemalloc.start()
        try:
            with trio.fail_after(60):
                assert await reader.size(a) == len(data)
                while a.key in reader.fills.streaming:
                    await trio.sleep(0.01)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert transport.bytes_sent == len(data) and transport.gets == 1
        assert peak < 2 << 20, f"{peak} bytes held while streaming an 8 MiB body"
        assert all(reader.disk.get(k) == data[i * BS:(i + 1) * BS] for i, k in enumerate(keys))
        assert reader.http.budget.used <= 64, "the fill gave its reservation back"
        nursery.cancel_scope.cancel()


async def test_without_a_disk_cache_a_file_too_large_for_memory_is_read_by_block_correctly(tmp_path):
    """No disk and a memory cache far smaller than the file: no fill can hold it, so each
    block is read out of a whole body again (slow, but right, and memory stays bounded)."""
    transport = WholeOnly(DATA[:40 * BS + 5])
    reader = make_reader(tmp_path, transport, disk=False, memory=64 * BS)
    a = art()
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        with trio.fail_after(30):
            assert await read_all(reader, a) == DATA[:40 * BS + 5]
        assert reader.memory.max_bytes // decode_module.MEMORY_ONLY_DECODE_SHARE < 40 * BS
        nursery.cancel_scope.cancel()
