"""A running Taskcluster task's live log through real mounts: the fake livelog server streams
(chunked, no length, Range ignored) until the task resolves; listing never waits on it, reads
return what has arrived, `tail -f` follows it, and the resolved run serves live_backing.log."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import time

import pytest

from datasets import slug, tc_mount

# The bound: a line the fake writes shows up in `tail -f` within this many seconds.
FOLLOW_BOUND = 2.0
# Generous bounds for "promptly" (no timed assertion for speed: these catch a hang, which took
# the whole operation timeout, 5 s here, and then failed).
PROMPT = 4.0


def lines(first: int, last: int) -> bytes:
    return b"".join(b"line %03d of the running task\n" % i for i in range(first, last))


@pytest.fixture
def running(fake):
    """Task 7: run 0 running, its live.log streaming 20 lines so far, and a finished artifact."""
    task = fake.queue.add_task(slug(7), name="running")
    run = task.add_run("running")
    live = run.add_live_log(lines(0, 20))
    run.add_artifact("public/logs/other.txt", b"an ordinary artifact\n")
    return task, run, live


def livelog_requests(fake):
    return [r for r in fake.requests if r.server == "livelog"]


def timed(cmd, **kw):
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, timeout=30, **kw)
    return result, time.monotonic() - started


def test_listing_and_head_do_not_wait_on_the_stream(fake, mount, running):
    _, _, live = running
    m = tc_mount(mount, fake)
    logs = m.path / "taskcluster" / slug(7) / "latest/public/logs"
    result, took = timed(["ls", "-l", str(logs)])
    assert result.returncode == 0, result.stderr
    assert b"live.log" in result.stdout and b"other.txt" in result.stdout
    assert took < PROMPT, f"ls -l took {took:.1f}s"
    assert livelog_requests(fake) == [], "listing opened the live stream"
    result, took = timed(["head", "-n", "3", str(logs / "live.log")])
    assert result.returncode == 0, result.stderr
    assert result.stdout == lines(0, 3) and took < PROMPT
    # while a reader holds the stream open, listing still answers at once
    with open(logs / "live.log", "rb") as held:
        assert held.read(10) == lines(0, 1)[:10]
        result, took = timed(["ls", "-l", str(logs)])
        assert result.returncode == 0 and took < PROMPT
        assert os.fstat(held.fileno()).st_size == len(live.snapshot())  # the bytes seen so far
    assert not m.proc.poll()


def test_cat_returns_what_has_arrived_and_ends_and_the_size_grows(fake, mount, running):
    _, _, live = running
    m = tc_mount(mount, fake, creds=True)
    path = m.path / "taskcluster" / slug(7) / "0/public/logs/live.log"
    result, took = timed(["cat", str(path)])
    assert result.returncode == 0 and result.stdout == lines(0, 20) and took < PROMPT
    (stream,) = livelog_requests(fake)
    asked = [r for r in fake.requests if r.server == "api" and r.path.endswith("/public/logs/live.log")]
    assert asked and all("authorization" in r.headers for r in asked)  # the queue's URL: signed
    assert "authorization" not in stream.headers  # where it points, the livelog server: never
    with open(path, "rb") as f:
        assert f.read() == lines(0, 20)
        assert os.fstat(f.fileno()).st_size == len(lines(0, 20))
        live.write(lines(20, 25))
        deadline = time.monotonic() + PROMPT
        while os.fstat(f.fileno()).st_size < len(lines(0, 25)):
            assert time.monotonic() < deadline, "st_size did not grow with the stream"
            time.sleep(0.05)
        assert f.read() == lines(20, 25)
        assert f.read() == b""  # at the end of what has arrived: the end, for now
        assert path.stat().st_size == len(lines(0, 25))
    # a second reader shares nothing stale: a new stream from the start
    assert path.read_bytes() == lines(0, 25)


def test_tail_f_follows_the_running_log_and_the_resolved_run_serves_the_backing_log(fake, mount, running):
    _, run, live = running
    m = tc_mount(mount, fake, "--latest-ttl", "1")
    path = m.path / "taskcluster" / slug(7) / "latest/public/logs/live.log"
    tail = subprocess.Popen(["tail", "-n", "2", "-f", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = bytearray()

        def read_until(expected: bytes, bound: float) -> None:
            deadline = time.monotonic() + bound
            while not got.endswith(expected):
                left = deadline - time.monotonic()
                assert left > 0, f"tail -f did not show {expected!r} within {bound}s (got {bytes(got[-200:])!r})"
                ready, _, _ = select.select([tail.stdout], [], [], left)
                if ready:
                    chunk = os.read(tail.stdout.fileno(), 65536)
                    assert chunk, f"tail ended: {tail.stderr.read()!r}"
                    got.extend(chunk)

        read_until(lines(18, 20), 10.0)  # its first answer: the last lines so far
        for i in range(20, 26):
            time.sleep(0.4 + 0.3 * (i % 3))  # the fake writes at intervals
            live.write(lines(i, i + 1))
            read_until(lines(i, i + 1), FOLLOW_BOUND)
        assert bytes(got) == lines(18, 26)
        assert len(livelog_requests(fake)) == 1, "one stream for one open log"
    finally:
        tail.terminate()
        tail.wait(timeout=10)
    final = live.snapshot()
    run.resolve()
    # after --latest-ttl, live.log is a link to live_backing.log: the final, immutable log
    deadline = time.monotonic() + 15
    while True:
        names = sorted(os.listdir(path.parent))
        if "live_backing.log" in names:
            break
        assert time.monotonic() < deadline, f"the resolved run was not listed again: {names}"
        time.sleep(0.3)
    assert (path.parent / "live_backing.log").read_bytes() == final
    assert path.read_bytes() == final
    assert path.stat().st_size == len(final)


def test_a_reader_following_the_log_sees_a_clean_end_when_the_task_resolves(fake, mount, running):
    _, run, live = running
    m = tc_mount(mount, fake, "--latest-ttl", "1")
    path = m.path / "taskcluster" / slug(7) / "0/public/logs/live.log"
    with open(path, "rb") as f:
        assert f.read() == lines(0, 20)
        live.write(lines(20, 22))
        run.resolve()  # the livelog stream ends with its last chunk
        got = b""
        deadline = time.monotonic() + PROMPT
        while got != lines(20, 22):
            assert time.monotonic() < deadline, f"got {got!r}"
            got += f.read()
            time.sleep(0.05)
        assert f.read() == b""  # the clean end: no error, no more bytes
    assert path.read_bytes() == lines(0, 22)


def test_readers_of_one_log_share_one_stream(fake, mount, running):
    _, _, live = running
    m = tc_mount(mount, fake)
    path = m.path / "taskcluster" / slug(7) / "0/public/logs/live.log"
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(path, "rb")) for _ in range(4)]
        for f in handles:
            assert f.read() == lines(0, 20)
        live.write(lines(20, 21))
        for f in handles:
            deadline = time.monotonic() + PROMPT
            got = b""
            while got != lines(20, 21):
                assert time.monotonic() < deadline
                got += f.read()
                time.sleep(0.05)
        assert len(livelog_requests(fake)) == 1
    # all released: the stream is closed; a new open makes a new one
    assert path.read_bytes() == lines(0, 21)
    assert len(livelog_requests(fake)) == 2


def test_a_stream_cut_short_fails_at_its_end_with_eio_and_a_new_open_streams_again(fake, mount, running):
    _, _, live = running
    m = tc_mount(mount, fake)
    path = m.path / "taskcluster" / slug(7) / "0/public/logs/live.log"
    with open(path, "rb", buffering=0) as f:
        assert f.read(1 << 16) == lines(0, 20)
        fake.cut_connections("livelog")  # no last chunk: the log is incomplete, not ended
        deadline = time.monotonic() + PROMPT
        while True:
            try:
                assert f.read(1 << 16) == b""
            except OSError as e:
                assert e.errno == errno.EIO
                break
            assert time.monotonic() < deadline, "a cut stream read as a clean end"
            time.sleep(0.1)
    live.write(lines(20, 21))
    assert path.read_bytes() == lines(0, 21)
