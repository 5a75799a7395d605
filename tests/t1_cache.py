"""Tier 1: memory LRU bound and single-flight (the disk store: t1_packstore.py), and the run
buffers the memory tier gives back for reuse (buffers.py)."""

import pytest
import trio
import trio.testing

from ciartfs import buffers
from ciartfs.data.cache import MemoryCache, SingleFlight, cut_run


def test_memory_cache_is_bounded_in_bytes():
    mem = MemoryCache(10_000)
    for i in range(100):
        mem.put(f"k{i}", bytes(1000))
        assert mem.bytes_used <= 10_000
    assert mem.get("k99") is not None and mem.get("k0") is None
    mem.put("huge", bytes(20_000))  # larger than the whole budget: not kept
    assert mem.get("huge") is None


def _run(mem: MemoryCache, name: str, blocks: int, size: int, last: int | None = None) -> tuple[bytes, list[str]]:
    """A run of `blocks` blocks of `size` bytes (the last one `last` bytes), each byte its offset mod 251."""
    run = bytes(i % 251 for i in range((blocks - 1) * size + (size if last is None else last)))
    keys = [f"{name}{i}" for i in range(blocks)]
    mem.put_run(run, cut_run(run, keys, size))
    return run, keys


def test_consecutive_blocks_of_one_run_are_one_view_of_it():
    """A kernel read of 1 MiB inside a run of 4 MiB read ahead is answered with a view of the
    run (no copy); anything else is not a span, and the reader copies."""
    mem = MemoryCache(100_000)
    run, keys = _run(mem, "a", 8, 1000, last=300)
    blocks = [mem.get_buffer(k) for k in keys]
    span = mem.run_span(blocks[2:6])
    assert span is not None and span.obj is run and span.readonly and bytes(span) == run[2000:6000]
    tail = mem.run_span(blocks[5:])
    assert tail is not None and bytes(tail) == run[5000:]
    whole = mem.run_span(blocks)
    assert whole is not None and len(whole) == len(run)
    assert mem.run_span([blocks[2], blocks[4]]) is None  # not consecutive
    assert mem.run_span([blocks[3], blocks[2]]) is None  # not in order
    assert mem.run_span([blocks[2][:500], blocks[3]]) is None  # a view of part of a block
    _, other = _run(mem, "b", 2, 1000)
    assert mem.run_span([blocks[7], mem.get_buffer(other[0])]) is None  # two runs
    assert mem.run_span([bytes(1000), bytes(1000)]) is None
    mem.discard("a0")  # the run left the tier: its views are no longer known as a run
    assert mem.run_span(blocks[2:6]) is None


def test_a_runs_blocks_are_views_of_it_and_leave_the_memory_tier_together():
    """Blocks kept as views of their run's one buffer (no copy) hold that buffer alive while
    any of them is held: so they leave together, and the bytes alive stay those counted."""
    mem = MemoryCache(10_000)
    run, keys = _run(mem, "a", 8, 500)  # 4000 bytes
    assert mem.get_buffer("a3").obj is run  # the view itself, for the reader's read path
    got = mem.get("a3")
    assert type(got) is bytes and got == run[1500:2000]  # anyone else gets bytes
    mem.put("other", bytes(3000))
    _run(mem, "bb", 8, 500)  # 4000 more: past the bound, the oldest goes, and with it all of its run
    assert [key in mem for key in keys] == [False] * 8
    assert "other" in mem and mem.bytes_used == 7000
    # a view touched (moved to the front) still leaves with its run
    _, keys = _run(mem, "ccc", 4, 500)
    assert mem.get_buffer("ccc0") is not None
    mem.put("more", bytes(4000))
    assert "other" not in mem and mem.bytes_used <= 10_000
    # a block discarded or replaced takes its run's other views with it
    mem.discard("bb0")
    assert not any(f"bb{i}" in mem for i in range(8))
    mem.put("ccc1", b"new")
    assert [key in mem for key in keys] == [False, True, False, False] and mem.get("ccc1") == b"new"
    # a run too large for a small tier is kept as copies, each on its own
    small = MemoryCache(1000)
    run, keys = _run(small, "d", 4, 200)
    assert type(small.get_buffer("d0")) is bytes
    small.put("x", bytes(300))
    assert [key in small for key in keys] == [True, False, True, True]  # (d0 was just used)


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



@pytest.fixture
def recycled(monkeypatch):
    """The run buffers given back, empty for this test (module state)."""
    monkeypatch.setattr(buffers, "_recycled", [])
    monkeypatch.setattr(buffers, "_recycled_bytes", 0)
    return buffers._recycled


def test_a_run_left_the_memory_tier_is_received_into_again_only_once_no_view_of_it_is_left(recycled):
    """A fresh buffer is a fresh mapping, faulted in page by page as it is received into; one
    that left the memory tier is reused, but never while anything still sees its bytes (the
    disk write queue, a reply being copied out): its bytes would change under them."""
    n = 1 << 20
    memory = MemoryCache(2 * n)
    run = buffers.unfilled(n)
    run[:] = bytes([7]) * n
    memory.put_run(run, cut_run(run, [f"a|131072|{i}" for i in range(8)], 131072))
    queued = memory.get_buffer("a|131072|3")  # (as the write queue holds a block)
    assert queued is not None
    memory.put("b", b"x" * (2 * n - 100))  # the run is evicted, whole
    assert "a|131072|0" not in memory and recycled == [run]
    kept = id(run)
    del run  # (this test's own reference: a reference like any other)
    first = buffers.unfilled(n)
    assert id(first) != kept and len(recycled) == 1  # a view of it is still held
    assert id(buffers.unfilled(n // 2)) != kept  # (nor is another length handed out)
    assert bytes(queued) == bytes([7]) * 131072
    del queued
    again = buffers.unfilled(n)
    assert id(again) == kept and recycled == [] and len(again) == n and buffers.page_aligned(again)


def test_run_buffers_kept_for_reuse_are_bounded(recycled):
    runs = [buffers.unfilled(4 << 20) for _ in range(6)]
    for run in runs:
        buffers.recycle(run)
    assert recycled == runs[-4:] and buffers._recycled_bytes == buffers.RECYCLED_BYTES
    buffers.recycle(b"x" * (1 << 20))  # (only bytearrays, as `unfilled` makes them)
    assert len(recycled) == 4

