"""Tier 1: memory LRU bound, crash-safe checksummed disk store, single-flight. And through a real
mount: a killed daemon's temp files are cleared at start."""

import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from ciartfs.data.cache import STALE_TMP_AGE, DiskStore, MemoryCache, SingleFlight
from conftest import wait_for


def test_memory_cache_is_bounded_in_bytes():
    mem = MemoryCache(10_000)
    for i in range(100):
        mem.put(f"k{i}", bytes(1000))
        assert mem.bytes_used <= 10_000
    assert mem.get("k99") is not None and mem.get("k0") is None
    mem.put("huge", bytes(20_000))  # larger than the whole budget: not kept
    assert mem.get("huge") is None


def test_disk_store_round_trip_and_private_dir(tmp_path):
    store = DiskStore(tmp_path / "blocks", 1 << 20)
    store.put("circleci|host|a/b|1|0/x|4096|0", b"hello")
    assert store.get("circleci|host|a/b|1|0/x|4096|0") == b"hello"
    assert store.get("other") is None
    assert (tmp_path / "blocks").stat().st_mode & 0o777 == 0o700
    names = [f for _, _, fs in os.walk(tmp_path) for f in fs]
    assert names and all("circleci" not in n and "host" not in n for n in names)  # keys are hashed


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_disk_block_is_dropped_not_served(tmp_path, damage, caplog):
    store = DiskStore(tmp_path, 1 << 20)
    store.put("key", b"x" * 1000)
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    raw = Path(path).read_bytes()
    raw = {"truncate": raw[:-10], "flip": raw[:-1] + bytes([raw[-1] ^ 1]), "empty": b""}[damage]
    Path(path).write_bytes(raw)
    assert store.get("key") is None
    assert not os.path.exists(path)
    assert "corrupt" in caplog.text


def test_disk_store_evicts_least_recently_used(tmp_path):
    store = DiskStore(tmp_path, 10_000)
    for i in range(5):
        store.put(f"k{i}", bytes(1500))
        os.utime(store._path(f"k{i}"), (1000 + i, 1000 + i))
    assert store.get("k0") is not None  # touched: now the most recent
    for i in range(5, 10):
        store.put(f"k{i}", bytes(1500))
    assert store.bytes_used <= 10_000
    assert store.get("k0") is not None
    assert store.get("k1") is None


def test_disk_full_degrades_to_memory_only(tmp_path, caplog, monkeypatch):
    store = DiskStore(tmp_path, 1 << 20)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    store.put("k", b"data")
    monkeypatch.undo()
    assert not store.enabled and "full" in caplog.text
    assert store.get("k") is None


def leave_temp_file(path: str, age: float) -> None:
    """A temp file as a writer leaves it, last written `age` seconds ago."""
    with open(path, "wb") as f:
        f.write(b"CIAFSB1\n" + b"half written")
    then = time.time() - age
    os.utime(path, (then, then))


def test_stale_temp_files_are_removed_by_the_first_scan_and_fresh_ones_kept(tmp_path):
    store = DiskStore(tmp_path, 1 << 20)
    store.put("key", b"x" * 100)
    (block,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    os.makedirs(tmp_path / "ff")
    stale = [block + ".tmp.4242.1", str(tmp_path / "ff" / ("f" * 64 + ".tmp.4242.2"))]  # a killed daemon's
    fresh = block + ".tmp.4343.1"  # another mount's, being written now
    for path in stale:
        leave_temp_file(path, STALE_TMP_AGE + 60)
    leave_temp_file(fresh, 1)
    restarted = DiskStore(tmp_path, 1 << 20)  # the next process
    restarted.load_index()
    assert not any(os.path.exists(p) for p in stale)
    assert os.path.exists(fresh)
    assert restarted.get("key") == b"x" * 100
    assert restarted.bytes_used == os.path.getsize(block)  # temp files never count as blocks


def test_a_killed_daemons_temp_files_are_removed_at_mount(fake, mount, tmp_path):
    blocks = tmp_path / "cache" / "blocks"
    os.makedirs(blocks / "ab", mode=0o700)
    stale, fresh = str(blocks / "ab" / ("ab" * 32 + ".tmp.999999.1")), str(blocks / "ab" / ("ab" * 32 + ".tmp.999998.1"))
    leave_temp_file(stale, STALE_TMP_AGE + 60)
    leave_temp_file(fresh, 0)
    m = mount(cache_dir=tmp_path / "cache")
    assert wait_for(lambda: not os.path.exists(stale)), "the stale temp file is still there"
    assert os.path.exists(fresh)
    assert sorted(os.listdir(m.path)) == ["bitbucket", "circleci", "github"]


async def test_single_flight_shares_one_call():
    flight: SingleFlight[int] = SingleFlight()
    calls = 0
    release = trio.Event()

    async def work():
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    results = []

    async def caller():
        results.append(await flight.run("k", work))

    async with trio.open_nursery() as n:
        for _ in range(16):
            n.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        assert flight.in_flight("k")
        release.set()
    assert calls == 1 and results == [42] * 16
    assert not flight.in_flight("k")


async def test_single_flight_shares_errors():
    flight: SingleFlight[int] = SingleFlight()
    errors = []

    async def boom():
        await trio.sleep(0.01)
        raise ValueError("nope")

    async def caller():
        try:
            await flight.run("k", boom)
        except ValueError as e:
            errors.append(e)

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(caller)
    assert len(errors) == 3


async def test_single_flight_waiter_takes_over_when_leader_is_cancelled():
    flight: SingleFlight[int] = SingleFlight()
    started = trio.Event()
    leader_scope = trio.CancelScope()
    out = []

    async def slow():
        started.set()
        await trio.sleep_forever()

    async def fast():
        return 2

    async def leader():
        with leader_scope:
            await flight.run("k", slow)

    async def waiter():
        out.append(await flight.run("k", fast))

    async with trio.open_nursery() as n:
        n.start_soon(leader)
        await started.wait()
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        leader_scope.cancel()
    assert out == [2]


async def test_single_flight_claims_are_shared_and_abandoned_claims_are_taken_over():
    """A run of blocks fetched at once claims each block; readers wait for the settlement."""
    flight: SingleFlight[bytes] = SingleFlight()
    a, b = flight.claim("a"), flight.claim("b")
    assert a is not None and b is not None and flight.claim("a") is None
    got: dict[str, bytes] = {}

    async def reader(key: str) -> None:
        async def own_fetch() -> bytes:
            return b"own " + key.encode()
        got[key] = await flight.run(key, own_fetch)

    async with trio.open_nursery() as n:
        n.start_soon(reader, "a")
        n.start_soon(reader, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert got == {}  # both wait for the claimant
        flight.settle("a", a, result=b"from the run")
        flight.settle("b", b)  # abandoned: the reader fetches it itself
        flight.settle("a", a, error=ValueError("late"))  # settling twice changes nothing
    assert got == {"a": b"from the run", "b": b"own b"}
    assert not flight.in_flight("a") and not flight.in_flight("b")

