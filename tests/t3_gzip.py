"""Tier 3: gzip-encoded Taskcluster artifacts through real mounts: a log larger than the memory
cache, a bomb, and the mount answering other requests while either decodes. The fake storage
generates both streams on the fly (ciartfs/fakeserver/generated.py)."""

from __future__ import annotations

import errno
import os
import statistics
import subprocess
import threading
import time

import pytest

from ciartfs.fakeserver.generated import GeneratedGzip
from conftest import blob

TASK, OTHER = "gZiPtAsKQaC0000000001A", "OtHeRtAsQaC0000000002A"


def tc_mount(mount, fake, *args: str):
    return mount("--taskcluster-root-url", fake.api_url, *args)


def storage_gets(fake, art) -> int:
    return sum(1 for r in fake.requests if r.server == "storage" and r.path == f"/blob/{art.blob_id}")


def disk_usage(path) -> int:
    """Disk space of files under `path` (a hole punched in a pack is none), but the disk cache's
    index (its write-ahead log holds a few pages per commit until a checkpoint, whatever the
    records are)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.name.startswith("index.sqlite"))


def _expect_missing(path) -> None:
    with pytest.raises(FileNotFoundError):
        os.stat(path)


def test_sha256sum_of_a_gzip_log_larger_than_the_memory_cache(fake, mount):
    log = GeneratedGzip.text(64 << 20, seed=21)
    fake.queue.add_task(TASK).add_run("completed").add_artifact("public/logs/live.log", generated=log)
    m = tc_mount(mount, fake, "--memory-cache", "8M")
    path = m.path / "taskcluster" / TASK / "0/public/logs/live.log"
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == log.sha256()
    assert path.stat().st_size == log.decoded_size  # decoded, not the 13 MB on the wire
    assert int(os.getxattr(path, "user.ciartfs.cached")) == log.decoded_size


def test_a_bomb_fails_within_bounded_time_once_and_then_fails_fast_without_requests(fake, mount, tmp_path):
    bomb = GeneratedGzip.zeros(10 << 30)
    art = fake.queue.add_task(TASK).add_run("completed").add_artifact("public/logs/live.log", generated=bomb)
    m = tc_mount(mount, fake)
    m.expect_errors = True
    path = m.path / "taskcluster" / TASK / "0/public/logs/live.log"
    began = time.monotonic()
    path.stat()  # listed with its size unknown (a bad artifact never fails its lookup)
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - began < 15, "a bomb must fail within bounded time"
    assert storage_gets(fake, art) == 2  # the size probe, then one whole fetch, cut short
    assert disk_usage(tmp_path / "cache") < 1 << 20, "the bomb's blocks stayed in the disk cache"
    assert os.getxattr(path, "user.ciartfs.error").decode().startswith("EIO")
    for attempt in (path.read_bytes, lambda: subprocess.run(["cat", str(path)], check=True, capture_output=True)):
        began = time.monotonic()
        with pytest.raises((OSError, subprocess.CalledProcessError)) as info:
            attempt()
        assert time.monotonic() - began < 1
        if isinstance(info.value, OSError):
            assert info.value.errno == errno.EIO
        else:
            assert "Input/output error" in info.value.stderr.decode()
    assert storage_gets(fake, art) == 2, "a remembered failure fetched the bomb again"
    assert m.log_text().count("gzip decoding stopped") == 1
    assert "1000:1" in m.log_text()


def test_other_requests_answer_within_100ms_while_a_log_and_a_bomb_decode(fake, mount):
    log = GeneratedGzip.text(96 << 20, seed=22)
    run = fake.queue.add_task(TASK).add_run("completed")
    run.add_artifact("public/logs/live.log", generated=log)
    # (in another directory: this libfuse does not negotiate parallel directory operations, so the
    # kernel serializes lookups within one directory, whatever the filesystem does meanwhile)
    run.add_artifact("public/bomb/bomb.log", generated=GeneratedGzip.zeros(10 << 30))
    other = fake.queue.add_task(OTHER).add_run("completed")
    plain = blob(23, 16 << 20)
    other.add_artifact("public/build/target.bin", plain)
    for i in range(200):
        other.add_artifact(f"public/small/f{i}.txt", f"small file {i}\n".encode())
    m = tc_mount(mount, fake, "--memory-cache", "16M")
    m.expect_errors = True  # the bomb
    big = m.path / "taskcluster" / TASK / "0/public/logs/live.log"
    bomb = m.path / "taskcluster" / TASK / "0/public/bomb/bomb.log"
    here = m.path / "taskcluster" / OTHER / "0/public"
    target = here / "build/target.bin"
    assert target.stat().st_size == len(plain)

    done = threading.Event()
    outcome: dict[str, object] = {}

    def decode(name: str, path) -> None:
        began = time.monotonic()
        try:
            with open(path, "rb") as f:  # open waits for the size, so for the whole decode
                f.read(1)
            outcome[name] = path.stat().st_size
        except OSError as e:
            outcome[name] = e.errno
        outcome[name + " seconds"] = time.monotonic() - began

    decoders = [threading.Thread(target=decode, args=("log", big)), threading.Thread(target=decode, args=("bomb", bomb))]

    latencies: list[float] = []
    fd = os.open(target, os.O_RDONLY)
    try:
        def timed(op) -> None:
            began = time.perf_counter()
            op()
            latencies.append(time.perf_counter() - began)

        for t in decoders:
            t.start()
        threading.Thread(target=lambda: ([t.join() for t in decoders], done.set()), daemon=True).start()
        i = 0
        while not done.is_set():
            # each of these reaches the filesystem: xattrs and failed lookups are never cached by
            # the kernel; a first read of a block and a first lookup of a name are not either
            timed(lambda: os.getxattr(target, "user.ciartfs.url"))
            timed(lambda i=i: _expect_missing(here / f"missing-{i}"))
            if i < 200:
                timed(lambda i=i: (here / f"small/f{i}.txt").read_bytes())
            if i < 128:  # 128 blocks of 128 KiB, in an order the kernel's read-ahead cannot guess
                timed(lambda i=i: os.pread(fd, 4096, (i * 37 % 128) * (128 << 10)))
            i += 1
    finally:
        os.close(fd)
        for t in decoders:
            t.join(timeout=120)
    assert outcome["log"] == log.decoded_size and outcome["bomb"] == errno.EIO, outcome
    assert len(latencies) >= 100, f"only {len(latencies)} operations while decoding: {outcome}"
    p99 = statistics.quantiles(latencies, n=100)[98]
    assert p99 < 0.1, f"p99 {p99 * 1000:.0f} ms over {len(latencies)} operations (max {max(latencies) * 1000:.0f} ms)"
