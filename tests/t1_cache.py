"""Tier 1: memory LRU bound and single-flight (the disk store: t1_packstore.py)."""

import trio
import trio.testing

from ciartfs.data.cache import MemoryCache, SingleFlight


def test_memory_cache_is_bounded_in_bytes():
    mem = MemoryCache(10_000)
    for i in range(100):
        mem.put(f"k{i}", bytes(1000))
        assert mem.bytes_used <= 10_000
    assert mem.get("k99") is not None and mem.get("k0") is None
    mem.put("huge", bytes(20_000))  # larger than the whole budget: not kept
    assert mem.get("huge") is None


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

