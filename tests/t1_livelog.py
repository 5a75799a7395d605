"""The live-log byte source in-process: one shared stream per artifact from the fake livelog
server (chunked, no length, Range ignored), bounded memory, brief waits, clean and unclean ends."""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest
import trio

from ciartfs.data import livelog
from ciartfs.data.livelog import LiveLogs
from ciartfs.errors import ArtifactExpired, CiartfsError
from ciartfs.net.client import HttpClient
from datasets import slug


def _queue_url(fake, task_id: str, run_id: int = 0, name: str = "public/logs/live.log") -> str:
    return f"{fake.api_url}/api/queue/v1/task/{task_id}/runs/{run_id}/artifacts/{name}"


def _logs(tmp_path, timeout: float = 5.0, max_size: int = 1 << 30) -> tuple[LiveLogs, HttpClient]:
    http = HttpClient(timeout=timeout)
    return LiveLogs(http.stream, timeout=timeout, max_size=max_size, spool_dir=tmp_path), http


async def _read_all(stream: livelog.LiveStream, until: int) -> bytes:
    """Read as a follower does, until `until` bytes came (each read at most 4 KiB)."""
    got = bytearray()
    with trio.fail_after(10):
        while len(got) < until:
            await stream.wait_for(len(got), 5.0)
            got += await stream.read(len(got), 4096)
            if stream.ended and len(got) >= stream.seen:
                break
    return bytes(got)


@pytest.fixture
def running(fake):
    task = fake.queue.add_task(slug(11), name="running")
    run = task.add_run("running")
    live = run.add_live_log(b"first line\n")
    return task, run, live


async def test_one_shared_stream_grows_and_ends_cleanly_when_the_task_resolves(fake, running, tmp_path):
    task, run, live = running
    logs, http = _logs(tmp_path)
    key, url = "k|live", _queue_url(fake, task.task_id)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        assert logs.size(key) == 0  # never opened: nothing seen, nothing asked
        first = await logs.acquire(key, url, False)
        second = await logs.acquire(key, url, False)
        assert first is second and logs.opened == 1  # readers share one streaming GET
        assert await first.read(0, 100) == b"first line\n" and logs.size(key) == 11
        assert await first.read(11, 100) == b""  # at the end of what has arrived
        for i in range(3):
            await trio.to_thread.run_sync(live.write, b"line %d\n" % i)
        expected = b"first line\nline 0\nline 1\nline 2\n"
        assert await _read_all(first, len(expected)) == expected
        assert logs.size(key) == len(expected)
        await trio.to_thread.run_sync(run.resolve)
        with trio.fail_after(5):
            while not first.ended:
                await trio.sleep(0.01)
        assert first.error is None and await first.read(len(expected), 100) == b""
        logs.release(first)
        assert key in logs.streams  # still held by the second reader
        logs.release(second)
        assert key not in logs.streams
        with trio.fail_after(5):  # (after a write still under way, if any)
            while not first.file.closed:
                await trio.sleep(0.01)
        assert logs.size(key) == len(expected)  # remembered for `ls -l`
        nursery.cancel_scope.cancel()
    await http.aclose()
    assert [r.server for r in fake.requests].count("livelog") == 1


async def test_a_read_waits_briefly_for_bytes_not_yet_arrived(fake, running, tmp_path):
    task, _, live = running
    logs, http = _logs(tmp_path)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        stream = await logs.acquire("k", _queue_url(fake, task.task_id), False)

        async def write_twice() -> None:
            await trio.to_thread.run_sync(live.write, b"a\n")
            await trio.sleep(0.05)
            await trio.to_thread.run_sync(live.write, b"soon\n")

        nursery.start_soon(write_twice)
        with trio.fail_after(5):
            while stream.seen < 13:
                await trio.sleep(0.005)
        # bytes just came (a burst may go on): a read past them waits a moment for more
        await stream.wait_for(13, 5.0)
        assert await stream.read(13, 100) == b"soon\n"
        await trio.sleep(livelog.QUIET_SECONDS)
        start = trio.current_time()
        await stream.wait_for(18, 5.0)  # a quiet log: the end for now, at once
        assert trio.current_time() - start < 1.0
        assert await stream.read(18, 100) == b""
        logs.release(stream)
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_memory_stays_bounded_for_a_large_log(fake, running, tmp_path, monkeypatch):
    task, _run, live = running
    monkeypatch.setattr(livelog, "PENDING_LIMIT", 64 << 10)
    rng = random.Random(5)
    body = b"".join(b"%08d %s\n" % (i, rng.randbytes(40).hex().encode()) for i in range(60_000))  # ~5.4 MiB
    await trio.to_thread.run_sync(live.write, body)
    peak = 0
    original_add = livelog.LiveStream.add

    def add(self: livelog.LiveStream, data: bytes) -> None:
        nonlocal peak
        original_add(self, data)
        peak = max(peak, len(self.pending))

    monkeypatch.setattr(livelog.LiveStream, "add", add)
    logs, http = _logs(tmp_path)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        stream = await logs.acquire("k", _queue_url(fake, task.task_id), False)
        total = len(b"first line\n") + len(body)
        got = await _read_all(stream, total)
        assert hashlib.sha256(got).digest() == hashlib.sha256(b"first line\n" + body).digest()
        # in memory: at most the limit plus one network chunk; the rest is in the spool file
        assert peak < (64 << 10) + (256 << 10)
        assert stream.written > total - (64 << 10) - (256 << 10)
        logs.release(stream)
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_the_resolved_link_serves_the_gzip_backing_log_decoded(fake, running, tmp_path):
    task, run, live = running
    await trio.to_thread.run_sync(live.write, b"more\n" * 10_000)
    final = live.snapshot()
    await trio.to_thread.run_sync(run.resolve)
    assert gzip.decompress(run.artifacts[-1].stored) == final  # the fake stores it gzip-encoded
    logs, http = _logs(tmp_path)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        # a listing not yet refreshed still says live: the queue now answers with the backing log
        stream = await logs.acquire("k", _queue_url(fake, task.task_id), False)
        assert await _read_all(stream, len(final)) == final
        with trio.fail_after(5):
            while not stream.ended:
                await trio.sleep(0.01)
        assert stream.error is None and stream.seen == len(final)
        logs.release(stream)
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_a_missing_log_fails_the_open(fake, running, tmp_path):
    task, _, _ = running
    logs, http = _logs(tmp_path)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        with pytest.raises(ArtifactExpired):
            await logs.acquire("k", _queue_url(fake, task.task_id, name="public/logs/nope.log"), False)
        assert logs.streams == {}
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_a_cut_stream_or_one_over_the_cap_ends_with_an_error(fake, running, tmp_path):
    task, _, live = running
    logs, http = _logs(tmp_path, max_size=100)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        stream = await logs.acquire("capped", _queue_url(fake, task.task_id), False)
        await trio.to_thread.run_sync(live.write, b"x" * 200)
        with trio.fail_after(5):
            while not stream.ended:
                await trio.sleep(0.01)
        assert isinstance(stream.error, CiartfsError) and "exceeds 100 bytes" in str(stream.error)
        assert stream.seen == 11  # what came before the cap stays readable
        logs.release(stream)
        logs.max_size = 1 << 20
        stream = await logs.acquire("cut", _queue_url(fake, task.task_id), False)
        await trio.to_thread.run_sync(fake.stop)  # the worker goes away mid-stream: no last chunk
        with trio.fail_after(5):
            while not stream.ended:
                await trio.sleep(0.01)
        assert stream.error is not None and stream.seen == 211
        logs.release(stream)
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_the_demo_has_a_running_task_whose_live_log_grows(demo_fake, tmp_path):
    from ciartfs.fakeserver.dataset import DEMO_TASKS

    lint = demo_fake.queue.tasks[DEMO_TASKS[2]]
    assert lint.state == "running"
    (live_art,) = [a for a in lint.runs[0].artifacts if a.name == "public/logs/live.log"]
    assert live_art.storage_type == "reference" and live_art.live is not None
    logs, http = _logs(tmp_path)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        stream = await logs.acquire("demo", _queue_url(demo_fake, lint.task_id), False)
        first = stream.seen
        assert first > 0
        with trio.fail_after(10):  # a line every 2 s while it is watched
            while stream.seen == first:
                await trio.sleep(0.05)
        got = await stream.read(first, 1000)
        assert got.startswith(b"[tick 00000]")
        logs.release(stream)
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_a_broken_stream_is_not_shared_with_a_new_reader(fake, running, tmp_path):
    task, _, live = running
    logs, http = _logs(tmp_path, max_size=20)
    async with trio.open_nursery() as nursery:
        logs.start(nursery)
        broken = await logs.acquire("k", _queue_url(fake, task.task_id), False)
        await trio.to_thread.run_sync(live.write, b"y" * 30)  # over the cap: the stream fails
        with trio.fail_after(5):
            while not broken.ended:
                await trio.sleep(0.01)
        assert broken.error is not None
        logs.max_size = 1 << 20
        fresh = await logs.acquire("k", _queue_url(fake, task.task_id), False)
        assert fresh is not broken and fresh.error is None
        assert await fresh.read(0, 100) == b"first line\n" + b"y" * 30
        logs.release(broken)  # the old reader leaves: the new stream stays
        assert logs.streams["k"] is fresh and logs.size("k") == 41
        logs.release(fresh)
        nursery.cancel_scope.cancel()
    await http.aclose()
