"""Tier 1: the disk write-behind of blocks and API documents (real DiskStore, real threads,
trio's autojump clock), and the reader's read-ahead window over blocks it holds."""

from __future__ import annotations

import time

import pytest
import trio

from ciartfs.data import writebehind as writebehind_module
from ciartfs.data.cache import DiskStore, MemoryCache
from ciartfs.data.reader import Reader, ReadStream, ThreadBusy
from ciartfs.data.writebehind import WriteBehind
from ciartfs.namespace.model import Artifact
from ciartfs.net.bodies import MemoryBudget
from ciartfs.net.client import HttpClient
from ciartfs.providers.apidocs import ApiDocs


def _on_disk(store: DiskStore, keys: list[str]) -> list[str]:
    return [k for k in keys if store.contains(k)]


def _reader(tmp_path) -> tuple[Reader, DiskStore]:
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    return Reader(HttpClient(timeout=5), MemoryCache(1 << 20), store, 4096), store


async def wait_on_disk(store: DiskStore, keys: list[str]) -> None:
    # (virtual time: the writer's thread runs in real time while the clock jumps, so the bound
    # is generous; it only turns a hang into a failure)
    with trio.fail_after(600):
        while _on_disk(store, keys) != keys:
            await trio.sleep(0.02)


async def test_disk_writes_wait_until_a_burst_of_fetches_settles(tmp_path, monkeypatch, autojump_clock):
    monkeypatch.setattr(writebehind_module, "WRITE_SETTLE_SECONDS", 0.3)
    reader, store = _reader(tmp_path)
    keys = [f"k{i}" for i in range(8)]
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        start = trio.current_time()
        for key in keys:  # a listing's probes: a block every 0.1 s, each sooner than the settle time
            reader.writes.queue(key, key.encode() * 100)
            await trio.sleep(0.1)
            assert _on_disk(store, keys) == [], "written while fetches were still arriving"
        await wait_on_disk(store, keys)
        # written once nothing came for the settle time after the last block (at 0.7 s)
        assert trio.current_time() - start >= 0.7 + 0.3
        assert [store.get(k) for k in keys] == [k.encode() * 100 for k in keys]
        with trio.fail_after(600):  # the queue's hold on the in-flight budget is given back
            while reader.http.budget.used:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_a_large_write_queue_is_written_without_waiting_for_quiet(tmp_path, monkeypatch, autojump_clock):
    monkeypatch.setattr(writebehind_module, "WRITE_SETTLE_SECONDS", 60.0)
    monkeypatch.setattr(writebehind_module, "WRITE_BATCH_BYTES", 10_000)
    reader, store = _reader(tmp_path)
    keys = [f"k{i}" for i in range(4)]
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        start = trio.current_time()
        for key in keys:  # 4 x 4000 bytes: past the batch size, so a sequential read is not held back
            reader.writes.queue(key, b"x" * 4000)
        await wait_on_disk(store, keys)
        assert trio.current_time() - start < 60.0
        nursery.cancel_scope.cancel()


async def test_writes_still_waiting_at_unmount_are_flushed(tmp_path, monkeypatch, autojump_clock):
    monkeypatch.setattr(writebehind_module, "WRITE_SETTLE_SECONDS", 60.0)
    reader, store = _reader(tmp_path)
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        reader.writes.queue("k", b"data")
        await trio.sleep(30)
        assert not store.contains("k") and reader.writes.holds("k")
        nursery.cancel_scope.cancel()  # unmount: background work stops, then the queue is flushed
    await reader.flush_writes()
    assert store.get("k") == b"data"
    assert reader.http.budget.used == 0


async def test_the_write_queue_is_bounded_by_its_limit_and_the_memory_budget(tmp_path, monkeypatch, autojump_clock):
    monkeypatch.setattr(writebehind_module, "WRITE_SETTLE_SECONDS", 60.0)
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    budget = MemoryBudget(1 << 20)
    writes = WriteBehind(store, budget, max_pending=10_000)
    writes.queue("early", b"x")
    assert not writes.holds("early")  # not started (no mount yet): nothing is queued
    async with trio.open_nursery() as nursery:
        writes.start(nursery)
        for key in ("a", "b", "c"):
            writes.queue(key, b"x" * 4000)
        assert [writes.holds(k) for k in ("a", "b", "c")] == [True, True, False]  # c: past max_pending
        assert writes.pending_bytes == budget.used == 8000
        # the budget full (other bodies in flight): a block stays in memory only
        budget.used = budget.limit - 100
        writes.queue("d", b"x" * 200)
        assert not writes.holds("d")
        budget.used = 8000
        # a block found wrong is unqueued, and its bytes given back
        writes.drop(["b"])
        assert not writes.holds("b") and writes.pending_bytes == budget.used == 4000
        nursery.cancel_scope.cancel()
    await writes.flush()
    assert _on_disk(store, ["a", "b", "c", "d", "early"]) == ["a"]
    assert budget.used == 0


class FailingDisk:
    """A disk cache whose every write fails (a full or broken file system)."""

    def __init__(self) -> None:
        self.tries = 0

    def put_many(self, items: list[tuple[str, bytes]]) -> int:
        self.tries += 1
        raise OSError("no space left on device")


async def test_a_failing_disk_loses_the_blocks_but_never_the_mount(autojump_clock):
    disk = FailingDisk()
    budget = MemoryBudget(1 << 20)
    writes = WriteBehind(disk, budget)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        writes.start(nursery)
        writes.queue("a", b"x" * 100)
        writes.queue("b", b"y" * 100)
        with trio.fail_after(600):
            while disk.tries == 0 or writes.holds("a"):
                await trio.sleep(0.05)
        assert budget.used == 0 and writes.pending_bytes == 0
        writes.queue("c", b"z")  # and the writer starts again for the next block
        with trio.fail_after(600):
            while writes.holds("c"):
                await trio.sleep(0.05)
        assert disk.tries == 2  # one write per batch: a and b together, then c
        nursery.cancel_scope.cancel()


def test_a_jump_over_blocks_already_held_keeps_the_read_ahead_window(tmp_path):
    """The kernel answers from its page cache what another reader of the file brought in, so a
    sequential reader's requests can skip ahead; only a jump over bytes we lack is a seek."""
    reader, _ = _reader(tmp_path)
    art = Artifact(key="a", url="http://storage.invalid/a", immutable=True)
    bs, total = reader.block_size, 40 * reader.block_size
    for index in range(6):
        reader.memory.put(reader._block_key(art, index, total), b"x" * bs)
    stream = ReadStream()
    reader._plan_readahead(art, stream, 0, bs, total)
    reader._plan_readahead(art, stream, bs, 2 * bs, total)  # sequential
    assert stream.window == 1
    reader._plan_readahead(art, stream, 5 * bs, 6 * bs, total)  # blocks 2-4 held: still sequential
    assert stream.window == 2
    reader._plan_readahead(art, stream, 9 * bs, 10 * bs, total)  # blocks 6-8 missing: a seek
    assert stream.window == 0


async def test_api_documents_are_written_behind_and_served_before_they_are_written(tmp_path, monkeypatch, fake):
    """ApiDocs queues the documents it keeps on the mount's write-behind (no worker-thread hop
    and index commit per listing); one still queued is served from the queue; a document seen
    anew replaces the one queued under its key; unmount writes them."""
    monkeypatch.setattr(writebehind_module, "WRITE_SETTLE_SECONDS", 60.0)  # nothing written meanwhile
    reader, store = _reader(tmp_path)
    docs = ApiDocs(reader.http, store, writes=reader.writes)
    task = fake.queue.add_task("tAsKdOcSQaC0000000000A")
    task.add_run("completed").add_artifact("public/a.txt", b"a")
    kept = f"{fake.api_url}/api/queue/v1/task/{task.task_id}/runs/0/artifacts"
    status = f"{fake.api_url}/api/queue/v1/task/{task.task_id}/status"
    async with trio.open_nursery() as nursery:
        reader.start(nursery)
        listing = await docs.get_json(kept, keep=True)
        assert [a["name"] for a in listing["artifacts"]] == ["public/a.txt"]
        assert await docs.get_json(status) == {"status": task.status()}
        assert not store.contains("doc|" + kept) and reader.writes.holds("doc|" + kept), "queued, not written"
        fake.clear_requests()
        assert await docs.get_json(kept, keep=True) == listing, "served from the queue"
        assert fake.requests == []
        task.rerun("running")
        await docs.get_json(status)  # the task's newer status replaces the one queued
        nursery.cancel_scope.cancel()
    await reader.flush_writes()
    assert reader.http.budget.used == 0
    fake.clear_requests()
    offline = ApiDocs(reader.http, store, offline=True)  # a later mount, offline: from the disk
    assert await offline.get_json(kept, keep=True) == listing
    assert [r["runId"] for r in (await offline.get_json(status))["status"]["runs"]] == [0, 1]
    assert fake.requests == []

@pytest.mark.skipif(ThreadBusy()._wanted is None, reason="no /proc/thread-self/schedstat")
def test_thread_busy_tells_a_thread_that_computes_from_one_that_waits():
    """Read-ahead asks for longer runs while trio's thread is CPU-bound (readahead.LONG_RUN_BYTES)."""
    busy = ThreadBusy()
    # Spinning is busy. Until it says so, within a bound: an interval may go to waiting for the
    # GIL (a thread another test left), which is neither on the CPU nor in its run queue.
    end = time.monotonic() + 40 * ThreadBusy.INTERVAL
    while not busy.busy and time.monotonic() < end:
        busy.sample()  # (sampled at most every INTERVAL)
    assert busy.busy
    time.sleep(2 * ThreadBusy.INTERVAL)
    busy.sample()
    assert not busy.busy
