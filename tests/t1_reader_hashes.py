"""Tier 1: the reader's content-hash check (storage that promises hashes: Taskcluster object
artifacts), over a scripted ranged-GET transport: when it checks, in which order it may get
the blocks, what a mismatch does, and what it leaves unchecked."""

from __future__ import annotations

import errno
import hashlib
import logging

import httpx
import pytest
import trio

from ciartfs.data import hashes
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.data.reader import Reader
from ciartfs.errors import ContentMismatch, Offline, UpstreamError
from ciartfs.namespace.model import Artifact
from ciartfs.net.client import HttpClient

BS = 4096
DATA = bytes(range(256)) * 80  # 20480 bytes: 5 blocks
URL = "https://storage.example/blob"


def _ranged(request: httpx.Request) -> httpx.Response:
    first, last = request.headers["range"].removeprefix("bytes=").split("-")
    start, end = int(first), min(int(last), len(DATA) - 1)
    return httpx.Response(206, content=DATA[start:end + 1], headers={"Content-Range": f"bytes {start}-{end}/{len(DATA)}"})


class Promise:
    """The hashes a storage promises, and how often they were asked for."""

    def __init__(self, hashes: dict[str, str] | Exception) -> None:
        self.hashes, self.asked = hashes, 0

    async def __call__(self) -> dict[str, str]:
        self.asked += 1
        if isinstance(self.hashes, Exception):
            raise self.hashes
        return dict(self.hashes)


def _setup(tmp_path, promise: Promise, data_key: str = "obj") -> tuple[Reader, Artifact, DiskStore]:
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    http = HttpClient(timeout=5, transport=httpx.MockTransport(_ranged))
    art = Artifact(key=data_key, url=URL, immutable=True, expected_hashes=promise)
    return Reader(http, MemoryCache(1 << 20), store, BS), art, store


RIGHT = {"sha256": hashlib.sha256(DATA).hexdigest(), "sha512": hashlib.sha512(DATA).hexdigest()}


async def test_a_whole_sequential_read_is_checked_once(tmp_path):
    promise = Promise(RIGHT)
    reader, art, _ = _setup(tmp_path, promise)
    got = b"".join([await reader.read(art, off, BS) for off in range(0, len(DATA), BS)])
    assert got == DATA and promise.asked == 1 and reader.hash_checks == 1
    assert await reader.read(art, 0, len(DATA)) == DATA  # read again: not hashed or asked again
    assert promise.asked == 1 and reader.hash_checks == 1


async def test_blocks_read_out_of_order_are_hashed_in_order_and_a_mismatch_fails_the_read_that_completes(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ciartfs")
    promise = Promise({"sha256": "0" * 64})
    reader, art, _ = _setup(tmp_path, promise)
    for off in (BS, 2 * BS, 3 * BS, 4 * BS):  # completed before block 0 (concurrent kernel reads;
        # the size known, as the kernel's reads have it: no size probe fetched block 0)
        assert await reader.read(art, off, BS, total=len(DATA)) == DATA[off:off + BS]
    assert promise.asked == 0  # nothing read from the start yet: nothing to check
    with pytest.raises(ContentMismatch) as info:
        await reader.read(art, 0, BS)  # continues through the blocks held in memory to the end
    assert info.value.errno == errno.EIO and "sha256" in str(info.value)
    # logged where it was found (the read that finds it may be a read-ahead, whose error no one
    # logs), once; the error says so, for the edge not to log it again
    mismatches = [r for r in caplog.records if "content hash mismatch" in r.getMessage()]
    assert len(mismatches) == 1 and mismatches[0].levelno == logging.WARNING and info.value.reported
    # from then on every read of it fails, quietly, and nothing of it is kept
    with pytest.raises(ContentMismatch) as again:
        await reader.read(art, 2 * BS, 10)
    assert again.value.reported
    assert len([r for r in caplog.records if "content hash mismatch" in r.getMessage()]) == 1
    assert not any(reader.memory.get(reader._block_key(art, i, len(DATA))) for i in range(5))


async def test_reads_completing_out_of_order_far_ahead_of_the_hashing_still_get_the_file_checked(tmp_path, monkeypatch):
    """Kernel reads of 1 MiB complete out of order: when the two after the first came back before
    it, the first hashed its own blocks and a bounded number more, and nothing read later could
    continue: `sha256sum` of a 3 MiB object with a wrong hash succeeded. The hashing now goes on
    through every block memory holds, a step at a time."""
    monkeypatch.setattr(hashes, "HASH_AHEAD_BLOCKS", 1)
    promise = Promise({"sha256": "0" * 64})
    reader, art, _ = _setup(tmp_path, promise)
    for off in (BS, 2 * BS, 3 * BS, 4 * BS):  # blocks 1-4 first (block 4 is the last; block 0 not
        # held then: the size known, no size probe fetched it)
        assert await reader.read(art, off, BS, total=len(DATA)) == DATA[off:off + BS]
    assert promise.asked == 0
    with pytest.raises(ContentMismatch):
        await reader.read(art, 0, BS)
    assert promise.asked == 1 and reader.hash_checks == 1


async def test_the_read_of_the_last_block_continues_the_hashing_from_the_disk(tmp_path):
    """Blocks that left memory before the hashing reached them (a memory cache of one block
    here) are taken from the disk by the read that reaches the file's end, never fetched again."""
    promise = Promise({"sha256": "0" * 64})
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    requests: list[str] = []

    def counted(request: httpx.Request) -> httpx.Response:
        requests.append(request.headers["range"])
        return _ranged(request)

    reader = Reader(HttpClient(timeout=5, transport=httpx.MockTransport(counted)), MemoryCache(BS), store, BS)
    art = Artifact(key="obj", url=URL, immutable=True, expected_hashes=promise)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        for off in (BS, 2 * BS, 3 * BS):  # fetched first, then only on disk (memory holds one)
            assert await reader.read(art, off, BS) == DATA[off:off + BS]
        await reader.flush_writes()
        assert await reader.read(art, 0, BS) == DATA[:BS]  # hashes block 0: block 1 is not in memory
        assert promise.asked == 0
        with pytest.raises(ContentMismatch):
            await reader.read(art, 4 * BS, BS)  # the last block: 1-3 from the disk, then the check
        assert promise.asked == 1 and len(requests) == 5  # each block fetched once
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("right", [True, False])
async def test_a_promise_of_named_algorithms_computes_only_those(tmp_path, monkeypatch, right):
    # (GitHub's digest is a sha256: computing a SHA-512 of every artifact too cost CPU for nothing)
    promise = Promise({"sha256": RIGHT["sha256"] if right else "0" * 64})
    promise.algorithms = ("sha256",)  # type: ignore[attr-defined]
    made: list[str] = []
    real = hashlib.new

    def counting(name: str, *args, **kwargs):
        made.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(hashes.hashlib, "new", counting)
    reader, art, _ = _setup(tmp_path, promise)
    if right:
        assert b"".join([await reader.read(art, off, BS) for off in range(0, len(DATA), BS)]) == DATA
    else:
        for off in range(0, len(DATA) - BS, BS):
            await reader.read(art, off, BS)
        with pytest.raises(ContentMismatch):
            await reader.read(art, len(DATA) - BS, BS)
    assert made == ["sha256"] and reader.hash_checks == 1


async def test_a_one_block_file_is_checked_before_it_is_served(tmp_path):
    promise = Promise({"sha512": "0" * 128})
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    small = DATA[:100]

    def one(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=small, headers={"Content-Range": f"bytes 0-99/{len(small)}"})

    reader = Reader(HttpClient(timeout=5, transport=httpx.MockTransport(one)), MemoryCache(1 << 20), store, BS)
    art = Artifact(key="small", url=URL, immutable=True, expected_hashes=promise)
    with pytest.raises(ContentMismatch):
        await reader.read(art, 0, BS)
    promise.hashes = {"sha512": hashlib.sha512(small).hexdigest()}
    with pytest.raises(ContentMismatch):  # still: a mismatch is not forgotten while the mount lives
        await reader.read(art, 0, BS)


async def test_reads_not_from_the_start_are_not_checked_and_the_write_queue_drops_bad_blocks(tmp_path):
    promise = Promise({"sha256": "0" * 64})
    reader, art, store = _setup(tmp_path, promise)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        assert await reader.read(art, 3 * BS + 5, 100) == DATA[3 * BS + 5:3 * BS + 105]
        assert promise.asked == 0  # documented: a random read of a large object is not checked
        for off in range(0, len(DATA), BS):
            try:
                await reader.read(art, off, BS)
            except ContentMismatch:
                assert off == len(DATA) - BS
        assert promise.asked == 1
        await reader.flush_writes()
        assert not any(store.contains(reader._block_key(art, i, len(DATA))) for i in range(5))
        nursery.cancel_scope.cancel()


async def test_offline_serves_unchecked_and_a_failure_to_get_the_hashes_fails_the_read_until_they_come(tmp_path):
    reader, art, _ = _setup(tmp_path, Promise(Offline("offline: not in the cache")))
    assert await reader.read(art, 0, len(DATA)) == DATA
    promise = Promise(UpstreamError("object service: HTTP 503 (gave up after 3 attempts)"))
    reader, art, _ = _setup(tmp_path / "b", promise, data_key="other")
    with pytest.raises(UpstreamError) as info:
        await reader.read(art, 0, len(DATA))
    assert not isinstance(info.value, ContentMismatch)
    promise.hashes = RIGHT  # the service is back: the next read ends the check (the digests were kept)
    assert await reader.read(art, len(DATA) - 10, 10) == DATA[-10:]
    assert promise.asked == 2 and reader.hash_checks == 1
