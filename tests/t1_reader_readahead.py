"""Tier 1: the read-ahead policy (data/readahead.py), pure functions, no I/O: how the window
grows and resets, when it is topped up, and how the blocks it wants become requests."""

from __future__ import annotations

from ciartfs.data.readahead import LONG_RUN_BYTES, RUN_BYTES, ReadStream, plan, requests, run_arrived, run_blocks_for

MAX = 8  # blocks
TOTAL = 100  # bytes: with a block size of 1, block i is byte i


def read(stream: ReadStream, offset: int, length: int = 1, *, held=lambda i: False, active: bool = True,
         total: int = TOTAL) -> range | None:
    return plan(stream, offset, offset + length, total, block_size=1, max_window=MAX, held=held, active=active)


def test_sequential_reads_double_the_window_and_top_it_up_at_half():
    stream = ReadStream()
    plans = [read(stream, offset) for offset in range(15)]
    # the first read is no evidence of sequence; then the window doubles: 1, 2, 4, 8 (the cap)
    assert plans[:5] == [None, range(2, 3), range(3, 5), range(5, 8), range(8, 13)]
    assert stream.window == MAX
    # nothing more while over half the window is still ahead of the reader...
    assert plans[5:9] == [None] * 4
    # ...then one run tops it up, starting where the last one ended
    assert plans[9] == range(13, 18)
    assert plans[10:15] == [None] * 4 + [range(18, 23)]


def test_every_block_is_planned_once_and_never_past_the_end():
    stream = ReadStream()
    total = 37
    planned: list[int] = []
    for offset in range(0, total, 3):
        ahead = read(stream, offset, 3, total=total)
        if ahead is not None:
            assert ahead.start >= offset + 3  # ahead of the read, not what it reads itself
            assert len(ahead) <= MAX
            planned += list(ahead)
    # no block twice, none past the end, and read-ahead reaches the end (blocks the reader
    # read itself while the window was still smaller than its reads are not planned)
    assert planned == sorted(set(planned)) and planned[-1] == total - 1
    assert planned[-MAX:] == list(range(total - MAX, total))  # once the window is grown: contiguous


def test_a_seek_resets_the_window():
    stream = ReadStream()
    for offset in range(5):
        read(stream, offset)
    assert stream.window == 8 and stream.ahead_end == 13
    assert read(stream, 50) is None  # a jump over bytes nobody fetched
    assert (stream.window, stream.ahead_end, stream.next_offset) == (0, 0, 51)
    assert read(stream, 51) == range(52, 53)  # sequential again from there: the window starts over
    assert read(stream, 20) is None and stream.window == 0  # backwards is a seek too


def test_a_jump_over_held_blocks_is_sequential_only_within_the_window():
    held_blocks = set(range(1, 40))
    stream = ReadStream()
    read(stream, 0)
    assert read(stream, 1) == range(2, 3)  # window 1
    # the kernel served blocks 2-5 from its page cache: we see a jump over blocks we hold
    assert read(stream, 6, held=held_blocks.__contains__) is not None
    assert stream.window == 2
    # a jump over more than the largest window is a seek, held or not
    assert read(stream, 7 + MAX + 1, held=held_blocks.__contains__) is None
    assert stream.window == 0
    # and so is a jump over one block we lack
    stream = ReadStream()
    read(stream, 0)
    read(stream, 1)
    assert read(stream, 4, held={2}.__contains__) is None and stream.window == 0


def test_without_background_work_the_window_is_tracked_but_nothing_is_planned():
    stream = ReadStream()
    assert [read(stream, offset, active=False) for offset in range(4)] == [None] * 4
    assert stream.window == 4 and stream.ahead_end == 0
    # once it can, it plans from the reader's position with the window grown meanwhile
    assert read(stream, 4) == range(5, 13)


def test_missing_blocks_become_runs_split_by_held_blocks_and_disk_reads():
    where = {3: "held", 6: "disk"}
    steps = requests(range(10), lambda i: where.get(i, "missing"), run_blocks=2, runs=True)
    assert steps == [("run", [0, 1]), ("run", [2]), ("run", [4, 5]), ("single", 6), ("run", [7]), ("run", [8, 9])]


def test_what_is_planned_ends_on_a_multiple_of_the_run_length_unless_at_the_end():
    stream, stops = ReadStream(), []
    for offset in range(60):
        ahead = plan(stream, offset, offset + 1, 90, block_size=1, max_window=MAX, held=lambda i: False, align=4)
        if ahead is not None:
            stops.append(ahead.stop)
    assert stops and all(stop % 4 == 0 for stop in stops)
    assert plan(stream, 85, 86, 90, block_size=1, max_window=MAX, held=lambda i: False, align=4) is None  # (a seek)
    assert plan(stream, 86, 87, 90, block_size=1, max_window=MAX, held=lambda i: False, align=4) == range(87, 88)
    assert plan(stream, 87, 88, 90, block_size=1, max_window=MAX, held=lambda i: False, align=4) == range(88, 90)


def test_runs_end_on_multiples_of_their_length():
    """So that a kernel read as long as a run (1 MiB), at a multiple of its length, is one
    run's view and never a copy joined from two."""
    steps = requests(range(3, 13), lambda i: "missing", run_blocks=4, runs=True)
    assert steps == [("run", [3]), ("run", [4, 5, 6, 7]), ("run", [8, 9, 10, 11]), ("run", [12])]


def test_runs_end_where_a_streams_reads_of_several_blocks_end():
    """`cat` through the kernel's raised read-ahead: 256 KiB, 512 KiB, then 1 MiB at a time from
    768 KiB. What is planned, and every run in it, ends where those reads end (block 6 modulo
    8), whatever the run length, so that no read spans two runs (one view, not a copy)."""
    bs, total = 128 << 10, 64 << 20
    stream = ReadStream()
    reads = [(0, 256 << 10), (256 << 10, 512 << 10)] + [(at, 1 << 20) for at in range(768 << 10, total, 1 << 20)]
    planned = set()
    for offset, length in reads:
        run_blocks = 32 if offset > 8 << 20 else 8  # (runs grow once the reader is busy)
        ahead = plan(stream, offset, min(offset + length, total), total, block_size=bs, max_window=128,
                     held=lambda i: i in planned, align=run_blocks)
        if ahead is None:
            continue
        assert stream.phase == 6 or offset == 0
        planned.update(ahead)
        for _, run in requests(ahead, lambda i: "missing", run_blocks=run_blocks, runs=True, phase=stream.phase):
            assert (run[-1] + 1) % 8 == 6 or run[-1] + 1 == total // bs, (offset, run)
    assert max(planned) == total // bs - 1
    # reads of one block each (a mount whose read-ahead stays at 128 KiB) never move the phase
    stream = ReadStream(phase=6)
    for offset in range(0, 4 << 20, bs):
        plan(stream, offset, offset + bs, total, block_size=bs, max_window=128, held=lambda i: False)
    assert stream.phase == 6


def test_runs_grow_only_when_the_reader_is_cpu_bound_or_the_window_still_fills_the_link():
    """A request costs the daemon as much CPU as ~1/4 MiB of bytes: longer runs where that is
    the limit, never where they would leave a link of per-connection caps fewer connections."""
    bs, window = 128 << 10, 128  # 16 MiB

    def blocks(stream: ReadStream, cpu_bound: bool = False) -> int:
        return run_blocks_for(stream, block_size=bs, max_window=window, cpu_bound=cpu_bound)

    stream = ReadStream()
    assert blocks(stream) == blocks(stream, cpu_bound=True) == RUN_BYTES // bs == 8  # nothing known yet
    run_arrived(stream, 1 << 20, 0.020)  # 50 MiB/s (a busy daemon on loopback)
    assert blocks(stream, cpu_bound=True) == LONG_RUN_BYTES // bs == 32
    capped = ReadStream()
    for _ in range(20):  # 25 MiB/s per connection, 20 ms to the first byte
        run_arrived(capped, 1 << 20, 0.020 + 1 / 25)
    assert blocks(capped) == blocks(capped, cpu_bound=True) == 8  # (a busy machine: still 16 connections)
    fast = ReadStream()
    for _ in range(20):  # loopback: 1 MiB in 1.5 ms
        run_arrived(fast, 1 << 20, 0.0015)
    assert blocks(fast) == 32
    middle = ReadStream()
    for _ in range(20):  # 80 MiB/s: 16 MiB in flight / 512 MiB/s wanted -> requests of 2.5 MiB -> 2 (powers of two)
        run_arrived(middle, 1 << 20, 1 / 80)
    assert blocks(middle) == 16
    for _ in range(20):  # it slows down: back to short runs
        run_arrived(middle, 1 << 20, 0.1)
    assert blocks(middle) == 8
    assert run_blocks_for(ReadStream(), block_size=8 << 20, max_window=4, cpu_bound=True) == 1


def test_a_source_without_runs_gets_one_request_per_missing_block():
    where = {1: "held", 2: "disk"}
    steps = requests(range(5), lambda i: where.get(i, "missing"), run_blocks=16, runs=False)
    assert steps == [("single", 0), ("single", 2), ("single", 3), ("single", 4)]
    assert requests(range(3), lambda i: "held", run_blocks=16, runs=True) == []


def test_a_limit_stops_read_ahead_at_its_block_until_lifted():
    # (a zip member's end in its archive: its reads fetch no byte of the next member)
    stream = ReadStream(limit=20)
    planned = [read(stream, offset) for offset in range(10, 20)]
    assert max(r.stop for r in planned if r is not None) == 20
    assert read(stream, 20) is None  # reading past the limit itself plans nothing past it...
    stream.limit = None  # ...until it is lifted: the next member is read on in order
    assert read(stream, 21) == range(22, 22 + MAX)
