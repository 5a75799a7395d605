"""Tier 4: a misbehaving CI API and storage host. Every read either returns exactly the
artifact's bytes or fails with EIO within the bound; what reached the server is checked."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import random
import sqlite3
import time

import pytest

from conftest import TOKEN

STOP = "2026-11-01T10:00:00Z"


@pytest.fixture
def files(fake):
    """github/acme/api build 1: 12 files from 0 bytes to 700 KiB, private (token needed)."""
    p = fake.add_project("github", "acme", "api", private=True)
    b = p.add_build(build_num=1, branch="main", status="success", lifecycle="finished", stop_time=STOP)
    rng = random.Random(3)
    out = {}
    for i, size in enumerate([0, 1, 100, 4095, 4096, 4097, 65536, 100_000, 200_000, 333_333, 500_000, 700_000]):
        data = rng.randbytes(size)
        b.add_artifact(f"d{i % 3}/f{i}.bin", data)
        out[f"d{i % 3}/f{i}.bin"] = hashlib.sha256(data).hexdigest()
    return out


def sha_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(256 * 1024):
            h.update(chunk)
    return h.hexdigest()


def check_all(root, files) -> None:
    for rel, digest in files.items():
        assert sha_of(root / rel) == digest, rel


def no_token_at_storage(fake) -> None:
    for r in fake.requests:
        if r.server == "storage":
            assert TOKEN not in repr(r.headers) and TOKEN not in repr(r.query)


def test_storage_5xx_are_retried(fake, mount, files):
    m = mount("--block-size", "64K", "--timeout", "15", token=TOKEN)
    fake.faults.storage_statuses = [500, 503, 502]  # a burst: the first request fails three times
    fake.faults.storage_failure_rate = 0.25  # then one storage GET in four fails
    check_all(m.path / "github/acme/api/1/0", files)
    statuses = [r.status for r in fake.requests if r.server == "storage"]
    assert statuses[:3] == [500, 503, 502] and statuses.count(503) > 5
    assert set(statuses) <= {200, 206, 416, 500, 502, 503}  # 416: the empty file
    no_token_at_storage(fake)


def test_api_429_retry_after_is_honoured(fake, mount, files):
    m = mount(token=TOKEN)
    fake.faults.api_statuses = [429, 429]
    start = time.monotonic()
    assert sorted(os.listdir(m.path / "github/acme/api/1/0")) == ["d0", "d1", "d2"]
    api = [r for r in fake.requests if r.server == "api"]
    assert [r.status for r in api[:3]] == [429, 429, 200]
    assert api[1].time - api[0].time >= 0.9 and api[2].time - api[1].time >= 0.9  # Retry-After: 1
    assert time.monotonic() - start < 10


def test_api_that_never_answers_gives_eio_within_the_bound(fake, mount, files):
    m = mount("--timeout", "2", token=TOKEN)
    m.expect_errors = True
    fake.faults.api_hang = True
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        os.listdir(m.path / "github/acme/api/1")
    assert info.value.errno == errno.EIO and time.monotonic() - start < 8
    fake.faults.api_hang = False
    check_all(m.path / "github/acme/api/1/0", files)  # and the mount recovers


def test_storage_that_keeps_failing_gives_eio_not_wrong_bytes(fake, mount, files):
    m = mount("--timeout", "2", "--block-size", "64K", token=TOKEN)
    m.expect_errors = True
    path = m.path / "github/acme/api/1/0/d2/f11.bin"
    os.stat(path)
    fake.faults.storage_statuses = [503] * 1000
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        sha_of(path)
    assert info.value.errno == errno.EIO and time.monotonic() - start < 30
    fake.faults.storage_statuses = []
    assert sha_of(path) == files["d2/f11.bin"]


def test_range_ignored_keeps_memory_bounded(fake, mount):
    p = fake.add_project("github", "big", "file")
    b = p.add_build(build_num=1, stop_time=STOP)
    data = random.Random(9).randbytes(48 << 20)
    b.add_artifact("big.bin", data)
    fake.faults.ignore_range = True
    m = mount("--block-size", "4M", "--memory-cache", "16M")
    path = m.path / "github/big/file/1/0/big.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in (0, 20 << 20, (48 << 20) - 100):
            assert os.pread(fd, 100, off) == data[off:off + 100]
    finally:
        os.close(fd)
    with open(f"/proc/{m.proc.pid}/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    assert peak_kib < 160 * 1024, f"peak RSS {peak_kib} KiB for a 48 MiB body the server sent whole"


def test_stress_many_readers_random_faults(fake, mount, files):
    """Many concurrent readers over every file while storage randomly fails; bounded."""
    m = mount("--block-size", "16K", "--memory-cache", "1M", "--timeout", "15", token=TOKEN)
    root = m.path / "github/acme/api/1/0"
    rng = random.Random(11)
    fake.faults.storage_statuses = [rng.choice([500, 502, 503, 429]) for _ in range(4)]
    fake.faults.storage_failure_rate = 0.2
    deadline = time.monotonic() + 60

    def reader(seed: int) -> int:
        r = random.Random(seed)
        checked = 0
        while time.monotonic() < deadline and checked < 15:
            rel = r.choice(list(files))
            assert sha_of(root / rel) == files[rel], rel
            checked += 1
        return checked

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        done = list(pool.map(reader, range(8)))
    assert sum(done) == 8 * 15
    # the faults were met, many times: the queued statuses, then a fifth of the requests (503)
    failed = sum(r.status in (500, 502, 503, 429) for r in fake.requests if r.server == "storage")
    assert failed > 10, failed
    no_token_at_storage(fake)


@pytest.mark.parametrize("fault", ["cut", "short", "bad-range"])
def test_broken_bodies_are_retried_never_served(fake, mount, files, fault):
    m = mount("--block-size", "64K", "--timeout", "15", token=TOKEN)
    fake.faults.storage_body_faults = [fault] * 6
    check_all(m.path / "github/acme/api/1/0", files)
    assert fake.faults.storage_body_faults == [], "every injected fault was met"
    no_token_at_storage(fake)


def cache_files(cache):
    return sorted(p for p in (cache / "blocks").rglob("*") if p.is_file())


def block_records(cache, min_len: int) -> list[tuple[str, int, int]]:
    """(pack file, offset, length) of every record of at least `min_len` bytes in the disk cache."""
    with contextlib.closing(sqlite3.connect(cache / "blocks" / "index.sqlite")) as index:
        rows = index.execute("SELECT pack, pos, len FROM entries WHERE len >= ? ORDER BY pack, pos", (min_len,)).fetchall()
    return [(f"{pack:016x}.pack", pos, length) for pack, pos, length in rows]


def test_corrupt_or_truncated_cache_files_are_dropped_and_fetched_again(fake, mount, files, tmp_path):
    cache = tmp_path / "shared"
    first = mount("--block-size", "64K", token=TOKEN, cache_dir=cache)
    check_all(first.path / "github/acme/api/1/0", files)
    first.stop()
    blocks = block_records(cache, 60_000)
    assert len(blocks) >= 3
    # a flipped bit in one record, and a pack cut short inside another (a crash mid-write)
    name, pos, length = blocks[0]
    with open(cache / "blocks" / name, "r+b") as f:
        f.seek(pos + length - 1)
        last = f.read(1)
        f.seek(pos + length - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    name, pos, length = blocks[-1]
    os.truncate(cache / "blocks" / name, pos + 1000)
    # records at or after the cut are damaged too (small files and API documents among them)
    cut_all = sum(1 for n, p, _ in block_records(cache, 0) if n == name and p >= pos)
    fake.clear_requests()
    second = mount("--block-size", "64K", token=TOKEN, cache_dir=cache)
    check_all(second.path / "github/acme/api/1/0", files)
    storage = [r for r in fake.requests if r.server == "storage"]
    assert 2 <= len(storage) <= 1 + cut_all, "only the damaged records are fetched again"
    assert 2 <= second.log_text().count("corrupt or truncated") <= 1 + cut_all


def test_two_mounts_sharing_a_cache_dir(fake, mount, files, tmp_path):
    cache = tmp_path / "shared"
    a = mount("--block-size", "16K", token=TOKEN, cache_dir=cache)
    b = mount("--block-size", "16K", token=TOKEN, cache_dir=cache)

    def read_all(root):
        check_all(root / "github/acme/api/1/0", files)
        return True

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read_all, [a.path, b.path, a.path, b.path]))
    a.stop()
    b.stop()
    assert not [p for p in cache_files(cache) if not p.name.endswith((".pack", ".sqlite", "-wal", "-shm"))]
    fake.clear_requests()
    c = mount("--block-size", "16K", token=TOKEN, cache_dir=cache)
    check_all(c.path / "github/acme/api/1/0", files)
    assert not [r for r in fake.requests if r.server == "storage"], "the shared cache is whole and valid"


def test_api_5xx_are_retried(fake, mount, files):
    m = mount("--timeout", "15", token=TOKEN)
    fake.faults.api_statuses = [500, 502, 503]
    check_all(m.path / "github/acme/api/1/0", files)
    api = [r.status for r in fake.requests if r.server == "api"]
    assert api[:3] == [500, 502, 503] and api[3] == 200
    no_token_at_storage(fake)
