"""Tier 1: gzip-encoded artifacts through the reader, against the in-process fake storage.

The fake generates its large streams on the fly (ciartfs/fakeserver/generated.py): a log
bigger than the memory cache, and a bomb of zeros that would be 4 GiB decoded.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import tracemalloc

import pytest
import trio

from ciartfs.data import decode as decode_module
from ciartfs.data import reader as reader_module
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.data.reader import Reader, ReadStream
from ciartfs.errors import Forbidden, UpstreamError
from ciartfs.fakeserver.generated import GeneratedGzip
from ciartfs.namespace.model import Artifact
from ciartfs.net.client import HttpClient

BLOCK = 64 << 10


def _task(fake, name: str, **kw):
    task = fake.queue.tasks.get("dEcOdEtAsKQaC000000001A") or fake.queue.add_task("dEcOdEtAsKQaC000000001A")
    run = task.runs[0] if task.runs else task.add_run("completed")
    return run.add_artifact(name, **kw)


def _artifact(fake, name: str) -> Artifact:
    url = f"{fake.api_url}/api/queue/v1/task/dEcOdEtAsKQaC000000001A/runs/0/artifacts/{name}"
    return Artifact(key=f"tc|test|{name}", url=url, immutable=True)


def _reader(tmp_path, *, memory: int = 2 << 20, disk: bool = True, cache_size: int = 1 << 30, **kw) -> Reader:
    store = DiskStore(tmp_path / "blocks", cache_size) if disk else None
    return Reader(HttpClient(timeout=10), MemoryCache(memory), store, BLOCK, **kw)


def _storage_gets(fake, blob_id: int) -> list:
    return [r for r in fake.requests if r.server == "storage" and r.path == f"/blob/{blob_id}"]


async def _read_all(reader: Reader, art: Artifact, size: int) -> bytes:
    stream, out, offset = ReadStream(), [], 0
    while offset < size:  # as `cat` does: sequential reads of 128 KiB
        data = await reader.read(art, offset, 128 << 10, stream, total=size)
        assert data, f"short read at {offset}"
        out.append(data)
        offset += len(data)
    return b"".join(out)


def _block_files(tmp_path) -> int:
    """Records the disk cache would serve (asked through a second store on the same directory,
    as the next mount would; a discarded record's bytes stay in its pack until it is evicted)."""
    store = DiskStore(tmp_path / "blocks", 1 << 30)
    try:
        return int(store.describe()["records"])
    finally:
        store.close()


async def test_a_log_larger_than_the_memory_cache_decodes_into_the_disk_cache(fake, tmp_path):
    log = GeneratedGzip.text(24 << 20, seed=7)
    blob = _task(fake, "public/logs/live.log", generated=log)
    art = _artifact(fake, "public/logs/live.log")
    reader = _reader(tmp_path, memory=2 << 20)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        tracemalloc.start()
        try:
            size = await reader.size(art)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert size == log.decoded_size and log.size < size // 3  # the decoded size, not the wire's
        # Memory stays at a few blocks and network chunks while 24 MiB are decoded (the old
        # decoder held every block in the LRU, which evicted the first ones before they were read).
        assert peak < 8 << 20, f"decoding peaked at {peak} bytes of Python memory"
        data = await _read_all(reader, art, size)
        assert hashlib.sha256(data).hexdigest() == log.sha256()
        assert reader.memory.bytes_used <= 2 << 20
        # one whole fetch after the first ranged probe; every read came from the disk cache
        gets = _storage_gets(fake, blob.blob_id)
        assert len(gets) == 2 and "range" not in gets[1].headers
        assert reader.stats.decodes == 1
        nursery.cancel_scope.cancel()
    # A new mount on the same cache: the size and every block come from disk, no storage request.
    fake.clear_requests()
    again = _reader(tmp_path, memory=2 << 20)
    assert await again.size(art) == size
    assert hashlib.sha256(await _read_all(again, art, size)).hexdigest() == log.sha256()
    assert _storage_gets(fake, blob.blob_id) == []


async def test_an_evicted_block_is_decoded_again_not_served_wrong(fake, tmp_path):
    log = GeneratedGzip.text(3 << 20, seed=8)
    _task(fake, "public/a.log", generated=log)
    art = _artifact(fake, "public/a.log")
    reader = _reader(tmp_path)
    size = await reader.size(art)
    reader.disk.discard(reader._block_key(art, 5, size))  # evicted by other files' use
    reader.memory.discard(reader._block_key(art, 5, size))
    assert await reader.read(art, 5 * BLOCK, BLOCK, total=size) == b"".join(log.pieces())[5 * BLOCK:6 * BLOCK]
    assert reader.stats.decodes == 2


async def test_a_bomb_stops_at_the_ratio_cap_leaves_nothing_behind_and_is_remembered(fake, tmp_path, caplog, mock_clock):
    bomb = GeneratedGzip.zeros(4 << 30)
    blob = _task(fake, "public/bomb.log", generated=bomb)
    art = _artifact(fake, "public/bomb.log")
    reader = _reader(tmp_path)
    caplog.set_level(logging.WARNING, logger="ciartfs.data.reader")
    with pytest.raises(UpstreamError, match="over a gzip decoding cap"):
        await reader.size(art)
    assert reader.stats.bytes_fetched < bomb.size // 10  # stopped early, not after 4 GiB
    assert _block_files(tmp_path) == 0, "the bomb's decoded blocks stayed in the disk cache"
    (line,) = [r.getMessage() for r in caplog.records if "decoding stopped" in r.getMessage()]
    assert "more than 1000:1" in line and "/public/bomb.log" in line
    # Every further access fails at once from memory: no request, no decoding, no new log line
    # (the size's own memory answers for SIZE_FAILURE_TTL, the decode's for longer).
    fake.clear_requests()
    for wait in (0, 0, reader_module.SIZE_FAILURE_TTL + 1):
        mock_clock.jump(wait)
        with pytest.raises(UpstreamError, match="over a gzip decoding cap"):
            await reader.size(art)
        with pytest.raises(UpstreamError, match="failed recently"):
            await reader.read(art, 0, 10, total=1 << 20)
    assert _storage_gets(fake, blob.blob_id) == [] and reader.stats.decodes == 1
    assert len([r for r in caplog.records if "decoding stopped" in r.getMessage()]) == 1
    # ... until the failure is old: then it is tried (and fails) again.
    mock_clock.jump(decode_module.DECODE_FAILURE_TTL + 1)
    with pytest.raises(UpstreamError, match="over a gzip decoding cap"):
        await reader.size(art)
    assert len(_storage_gets(fake, blob.blob_id)) == 1 and reader.stats.decodes == 2


async def test_the_absolute_cap_is_max_decoded_size(fake, tmp_path, caplog):
    _task(fake, "public/big.log", generated=GeneratedGzip.text(6 << 20, seed=9))
    _task(fake, "public/small.log", generated=GeneratedGzip.text(1 << 20, seed=9))
    reader = _reader(tmp_path, max_decoded_size=4 << 20)
    caplog.set_level(logging.WARNING, logger="ciartfs.data.reader")
    with pytest.raises(UpstreamError, match="over a gzip decoding cap"):
        await reader.size(_artifact(fake, "public/big.log"))
    (line,) = [r.getMessage() for r in caplog.records if "decoding stopped" in r.getMessage()]
    assert "exceeds 4194304 bytes (--max-decoded-size)" in line
    assert _block_files(tmp_path) == 0
    assert await reader.size(_artifact(fake, "public/small.log")) == (1 << 20)


async def test_without_a_disk_cache_only_what_fits_memory_is_decoded(fake, tmp_path):
    small = GeneratedGzip.text(512 << 10, seed=10)
    _task(fake, "public/small.log", generated=small)
    _task(fake, "public/large.log", generated=GeneratedGzip.text(2 << 20, seed=10))
    reader = _reader(tmp_path, memory=4 << 20, disk=False)
    art = _artifact(fake, "public/small.log")
    size = await reader.size(art)
    assert hashlib.sha256(await _read_all(reader, art, size)).hexdigest() == small.sha256()
    with pytest.raises(UpstreamError, match="no disk cache"):
        await reader.size(_artifact(fake, "public/large.log"))


async def test_a_disk_that_fills_up_mid_decode_fails_clearly(fake, tmp_path):
    _task(fake, "public/a.log", generated=GeneratedGzip.text(2 << 20, seed=11))
    reader = _reader(tmp_path)
    store = reader.disk
    real_put, writes = store.put, []

    def put(key: str, data: bytes) -> bool:  # ENOSPC after 5 blocks, as DiskStore reacts to it
        writes.append(key)
        if len(writes) > 5:
            store.enabled = False
            return False
        return real_put(key, data)

    store.put = put
    with pytest.raises(UpstreamError, match="cannot keep the decoded file"):
        await reader.size(_artifact(fake, "public/a.log"))


async def test_multi_member_and_corrupt_streams(fake, tmp_path):
    first, second = b"first member\n" * 1000, b"second member\n" * 1000
    _task(fake, "public/two.log", data=gzip.compress(first) + b"\0" * 10 + gzip.compress(second), stored_as="gzip")
    body = bytearray(gzip.compress(bytes(range(256)) * 400))
    body[len(body) // 2] ^= 0xFF
    _task(fake, "public/bad.log", data=bytes(body), stored_as="gzip")
    _task(fake, "public/cut.log", data=gzip.compress(first)[:-20], stored_as="gzip")
    reader = _reader(tmp_path)
    art = _artifact(fake, "public/two.log")
    size = await reader.size(art)
    assert await reader.read(art, 0, size, total=size) == first + second  # `cat a.gz b.gz` is one file
    for name in ("public/bad.log", "public/cut.log"):
        with pytest.raises(UpstreamError, match="corrupt or truncated"):
            await reader.size(_artifact(fake, name))
    assert reader.stats.decode_failures == 2


async def test_a_growing_gzip_log_is_decoded_again_at_its_new_size(fake, tmp_path):
    first, grown = GeneratedGzip.text(300 << 10, seed=12), GeneratedGzip.text(700 << 10, seed=12)
    blob = _task(fake, "public/live.log", generated=first)
    art = dataclasses.replace(_artifact(fake, "public/live.log"), immutable=False)  # a running task's log
    reader = _reader(tmp_path)
    size = await reader.size(art)
    assert await reader.read(art, 0, size, total=size) == b"".join(first.pieces())
    blob.generated = grown
    new_size = await reader.size(art)
    assert new_size == grown.decoded_size > size
    assert await reader.read(art, 0, new_size, total=new_size) == b"".join(grown.pieces())
    assert await reader.read(art, 0, size, total=size) == b"".join(grown.pieces())[:size]  # an older view


async def test_a_failed_fetch_keeps_its_errno_and_is_remembered_briefly(fake, tmp_path, mock_clock):
    blob = _task(fake, "public/denied.log", generated=GeneratedGzip.text(256 << 10, seed=13))
    art = _artifact(fake, "public/denied.log")
    reader = _reader(tmp_path)
    reader.blocks.decoded.add(art.key)  # known to be stored gzip-encoded (e.g. from an earlier read)
    fake.faults.storage_statuses = [403]
    with pytest.raises(Forbidden):
        await reader.size(art)
    with pytest.raises(Forbidden, match="failed recently"):  # EACCES still, and no request
        await reader.read(art, 0, 10, total=256 << 10)
    assert len(_storage_gets(fake, blob.blob_id)) == 1
    mock_clock.jump(decode_module.DECODE_TRANSPORT_FAILURE_TTL + 1)
    assert await reader.size(art) == 256 << 10  # a transport failure is tried again soon
