"""Tier 1: the reader's write-behind to the disk cache (real DiskStore, real threads)."""

from __future__ import annotations

import trio

from ciartfs.data import reader as reader_module
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.net.client import HttpClient
from ciartfs.data.reader import Reader, ReadStream
from ciartfs.namespace.model import Artifact

def _on_disk(store: DiskStore, keys: list[str]) -> list[str]:
    return [k for k in keys if store.contains(k)]


def _reader(tmp_path) -> tuple[Reader, DiskStore]:
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    return Reader(HttpClient(timeout=5), MemoryCache(1 << 20), store, 4096), store


async def test_disk_writes_wait_until_a_burst_of_fetches_settles(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_module, "WRITE_SETTLE_SECONDS", 0.3)
    reader, store = _reader(tmp_path)
    keys = [f"k{i}" for i in range(8)]
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        for key in keys:  # a listing's probes: a block every 0.1 s, each sooner than the settle time
            reader._write_behind(key, key.encode() * 100)
            await trio.sleep(0.1)
            assert _on_disk(store, keys) == [], "written while fetches were still arriving"
        with trio.fail_after(5):
            while _on_disk(store, keys) != keys:
                await trio.sleep(0.02)
        assert [store.get(k) for k in keys] == [k.encode() * 100 for k in keys]
        nursery.cancel_scope.cancel()


async def test_a_large_write_queue_is_written_without_waiting_for_quiet(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_module, "WRITE_SETTLE_SECONDS", 60.0)
    monkeypatch.setattr(reader_module, "WRITE_BATCH_BYTES", 10_000)
    reader, store = _reader(tmp_path)
    keys = [f"k{i}" for i in range(4)]
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        for key in keys:  # 4 x 4000 bytes: past the batch size, so a sequential read is not held back
            reader._write_behind(key, b"x" * 4000)
        with trio.fail_after(5):
            while _on_disk(store, keys) != keys:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_writes_still_waiting_at_unmount_are_flushed(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_module, "WRITE_SETTLE_SECONDS", 60.0)
    reader, store = _reader(tmp_path)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        reader._write_behind("k", b"data")
        await trio.sleep(0.1)
        assert not store.contains("k")
        nursery.cancel_scope.cancel()  # unmount: background work stops, then the queue is flushed
    await reader.flush_writes()
    assert store.get("k") == b"data"


def test_a_jump_over_blocks_already_held_keeps_the_read_ahead_window(tmp_path):
    """The kernel answers from its page cache what another reader of the file brought in, so a
    sequential reader's requests can skip ahead; only a jump over bytes we lack is a seek."""
    reader, _ = _reader(tmp_path)
    art = Artifact(key="a", url="http://storage.invalid/a", immutable=True)
    bs, total = reader.block_size, 40 * reader.block_size
    for index in range(6):
        reader.memory.put(reader._block_key(art, index, total), b"x" * bs)
    stream = ReadStream()
    reader._plan_readahead(art, stream, 0, bs, 0, total)
    reader._plan_readahead(art, stream, bs, 2 * bs, 1, total)  # sequential
    assert stream.window == 1
    reader._plan_readahead(art, stream, 5 * bs, 6 * bs, 5, total)  # blocks 2-4 held: still sequential
    assert stream.window == 2
    reader._plan_readahead(art, stream, 9 * bs, 10 * bs, 9, total)  # blocks 6-8 missing: a seek
    assert stream.window == 0
