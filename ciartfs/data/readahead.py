"""Read-ahead policy: which blocks to fetch ahead of a sequential reader, and in which requests.

Blocks are small (the kernel's largest buffered read) so that a random read costs little more
than it reads; sequential reading is where bytes come in bulk. Per open file, a read that
continues where the previous one ended doubles a window of blocks fetched ahead in the
background, up to READAHEAD_BYTES; a seek resets it (mountpoint-s3's prefetcher is the model).

Invariants (pure functions: no I/O, no clock; the reader executes the plans):
- The window only grows on sequential reads (a read starting where the last one ended, or past
  bytes we hold or are fetching, which the kernel's page cache served), and is at most
  `max_window` blocks; any other jump resets it to nothing.
- Read-ahead is topped up only once half the window has been consumed, so requests go out in
  runs rather than one block per read, and never past the file's last block, nor past the
  block holding the stream's `limit` when it has one (a zip member's end in its archive).
- Missing blocks are fetched in runs of at most RUN_BYTES (LONG_RUN_BYTES for a stream whose
  requests are fast: `run_blocks_for`), one ranged GET each, at most PREFETCH_CONCURRENCY at
  once: few requests, several connections, bounded memory (the window per file, the memory LRU
  in total). A block held or being fetched splits a run; a block the
  disk may have is read alone (from disk, not upstream).
- Runs end where the stream's reads end (its `phase`): a kernel read is then inside one run,
  answered with a view of the run's buffer, never a copy joined from two (`cat` reads 1 MiB at
  768 KiB + k MiB: runs ending on multiples of 1 MiB made every read of it a 1 MiB copy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

# Enough parallel ranged requests to fill a link made of per-connection-capped streams.
PREFETCH_CONCURRENCY = 16
# Bytes one read-ahead request asks for: large enough that per-request costs (first-byte
# latency, CPU) are amortised, small enough that 16 of them fill the link early.
RUN_BYTES = 1 << 20
# Longer runs, up to this, where a request's fixed cost matters more than concurrency: on a
# fast link the daemon's CPU is the limit, and a request costs it as much as ~1/4 MiB of bytes
# does (a 1 GiB cold read on loopback: 2.55 -> 2.23 CPU-s with runs of 4 MiB). So when the
# reader's thread is busy (CPU-bound) and a request delivers more than LONG_RUN_MIN_RATE, or
# when the window still holds enough requests in flight for LONG_RUN_TARGET_RATE at the rate
# one request delivers (Little's law); a link of per-connection caps (25 MiB/s each, 20 ms: 17
# MiB/s a request of 1 MiB) keeps its 1 MiB runs and its 16 connections, even on a machine so
# busy that the daemon waits for the CPU most of the time.
LONG_RUN_BYTES = 4 << 20
LONG_RUN_TARGET_RATE = 512 << 20  # bytes per second
LONG_RUN_MIN_RATE = 32 << 20  # bytes per second
# How far ahead of a sequential reader blocks are fetched, at most.
READAHEAD_BYTES = 16 << 20
# The kernel's largest read (FUSE max_pages: 256 pages). A stream's reads of several blocks end
# at one offset modulo it (`cat`: 256 KiB, 512 KiB, then 1 MiB at a time from 768 KiB).
KERNEL_READ_BYTES = 1 << 20


@dataclasses.dataclass
class ReadStream:
    """Per-open-file state for sequential detection."""

    next_offset: int = 0
    window: int = 0  # blocks
    ahead_end: int = 0  # read-ahead has been started for blocks below this index
    limit: int | None = None  # no read-ahead past the block holding byte limit-1 (None: the file's end)
    run_rate: float = 0.0  # bytes per second one of its read-ahead requests delivered (a moving average)
    phase: int = 0  # where its reads of several blocks end, in blocks modulo KERNEL_READ_BYTES: runs end there too


def run_blocks_for(stream: ReadStream, *, block_size: int, max_window: int, cpu_bound: bool) -> int:
    """Blocks per read-ahead request for `stream` (see LONG_RUN_BYTES): a power of two times
    RUN_BYTES, at most LONG_RUN_BYTES; longer than RUN_BYTES only while the reader is CPU-bound
    (and requests are not slow), or `max_window` blocks hold enough such requests for
    LONG_RUN_TARGET_RATE."""
    if cpu_bound and stream.run_rate >= LONG_RUN_MIN_RATE:
        wanted = LONG_RUN_BYTES
    else:
        wanted = int(max_window * block_size * stream.run_rate / LONG_RUN_TARGET_RATE)
    run = RUN_BYTES
    while run * 2 <= min(wanted, LONG_RUN_BYTES):
        run *= 2
    return max(1, run // block_size)


def run_arrived(stream: ReadStream, nbytes: int, seconds: float) -> None:
    """A read-ahead request of `stream` brought `nbytes` in `seconds` (from asking to its last byte)."""
    rate = nbytes / max(seconds, 1e-4)
    stream.run_rate = rate if stream.run_rate == 0.0 else 0.75 * stream.run_rate + 0.25 * rate


def plan(stream: ReadStream, offset: int, end: int, total: int, *, block_size: int, max_window: int,
         held: Callable[[int], bool], active: bool = True, align: int = 1) -> range | None:
    """A read of [offset, end) happened: update `stream`, and return the blocks to fetch ahead
    now (None: none). `held(index)`: the block is in memory or being fetched. `active`: read-ahead
    can run at all (the window is still tracked when it cannot). `align`: what is planned ends
    on a run boundary for runs of that many blocks (`stream.phase` plus a multiple of it: see
    `requests`), unless at the end."""
    bs = block_size
    last = (end - 1) // bs
    if end % bs == 0 and last > offset // bs:  # (a read of one block never spans two runs)
        stream.phase = (end // bs) % max(1, KERNEL_READ_BYTES // bs)
    if offset > 0 and (offset == stream.next_offset
                       or _skipped_only_held(stream.next_offset, offset, bs, max_window, held)):
        stream.window = min(max(1, stream.window * 2), max_window)
    elif offset != stream.next_offset:
        stream.window = 0
        stream.ahead_end = 0
    stream.next_offset = end
    if not active or stream.window == 0:
        return None
    start = max(stream.ahead_end, last + 1)
    if stream.ahead_end - (last + 1) >= stream.window // 2 and stream.ahead_end > last + 1:
        return None  # more than half the window is still ahead
    end_of_file = total if stream.limit is None else max(end, min(total, stream.limit))
    stop = min(_boundary_at_or_after(last + 1 + stream.window, stream.phase, align), (end_of_file - 1) // bs + 1)
    if start >= stop:
        return None
    stream.ahead_end = stop
    return range(start, stop)


def _boundary_at_or_after(index: int, phase: int, align: int) -> int:
    """The first run boundary (`phase` plus a multiple of `align`) at or after block `index`."""
    return index + (phase - index) % align


def _skipped_only_held(lo: int, hi: int, bs: int, max_window: int, held: Callable[[int], bool]) -> bool:
    """A jump forward over bytes we hold or are fetching is still sequential reading: the
    kernel serves from its page cache what another reader of the file (16 `sha256sum`s of one
    cold file) or an earlier read brought in, so those reads never reach us."""
    if not lo < hi or hi - lo > max_window * bs:
        return False
    return all(held(index) for index in range(lo // bs, (hi - 1) // bs + 1))


Step = tuple[Literal["single"], int] | tuple[Literal["run"], list[int]]


def requests(blocks: range, state: Callable[[int], Literal["held", "disk", "missing"]], *, run_blocks: int,
             runs: bool, phase: int = 0) -> list[Step]:
    """How to fetch `blocks`, in order: ("run", indices) is one ranged GET for consecutive
    missing blocks (at most `run_blocks`, ending at `phase` plus a multiple of it), ("single",
    index) one block fetched alone (it may be on disk, or the source fetches no runs); held
    blocks are skipped and end a run."""
    steps: list[Step] = []
    run: list[int] = []

    def end_run() -> None:
        nonlocal run
        if run:
            steps.append(("run", run))
            run = []

    for index in blocks:
        where = state(index)
        if where == "held":
            end_run()
        elif not runs or where == "disk":
            end_run()
            steps.append(("single", index))
        else:
            run.append(index)
            if len(run) == run_blocks or (index + 1 - phase) % run_blocks == 0:
                end_run()  # (runs end where the reads do: a kernel read of 1 MiB never spans two)
    end_run()
    return steps
