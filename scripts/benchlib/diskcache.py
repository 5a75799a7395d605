#!/usr/bin/env python3
"""Disk cache scenarios of issue 17 ("Scale"), on the store itself (ciartfs.data.packstore), no
mount: scripts/bench.py runs them (`--only disk-cache`, and in a full run) and judges the
issue's targets; alone:

    .venv/bin/python scripts/benchlib/diskcache.py [--entries 2600000] [--index-entries 200000]

  start-up   a store of N entries (default 2.6M: a full 10 GiB cache of 4K blocks; the blocks
             here are 16 bytes, the index is the same): the first `get` answered after opening
             (<= 1 s), the might-have filter of every entry ready (fully usable, <= 5 s)
  index      RAM of the index per entry once loaded and read (the Python heap by tracemalloc,
             or the RSS growth if larger: SQLite's memory; <= 100 B)
  eviction   one eviction pass over a full store of N and of 4N entries: its time per evicted
             entry should not grow with the store (the issue measured a pass that stat-ed every
             entry under the store lock: 3.4 s at 192k)
The cold read with the disk cache on is bench.py's `cold-uncapped` (CPU-s per GiB included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from benchlib.common import proc_rss_kib  # noqa: E402
from benchlib.report import Target  # noqa: E402
from ciartfs.data.packstore import EVICT_TO, DiskStore  # noqa: E402

FIRST_ANSWER_S, USABLE_S, INDEX_BYTES = 1.0, 5.0, 100  # issue 17's targets
BLOCK = 16  # bytes per block: the index's cost does not depend on the blocks' size
UNBOUNDED = 1 << 40
DEFAULT_BOUND = 10 << 30  # the default --cache-size: it sizes the filter of ids written since start


def _key(i: int) -> str:
    return f"circleci|host|gh/o/r|1|0/file{i // 4096}|{BLOCK}|{i % 4096}"


def _fill(store: DiskStore, entries: int, first: int = 0) -> None:
    data = b"x" * BLOCK
    for start in range(first, first + entries, 512):
        store.put_many((_key(i), data) for i in range(start, min(first + entries, start + 512)))


def startup(tmp: Path, entries: int) -> dict[str, Any]:
    """A store of `entries`, closed, opened again: when its first `get` is answered, when the
    filter of every entry is ready."""
    root = tmp / "startup"
    store = DiskStore(root, UNBOUNDED)
    store.load_index()
    t = time.monotonic()
    _fill(store, entries)
    store.close()
    filled = time.monotonic() - t
    t0 = time.monotonic()
    reopened = DiskStore(root, UNBOUNDED)
    key = _key(entries // 2)
    answered = reopened.get(key)
    t1 = time.monotonic()
    reopened.load_index()
    t2 = time.monotonic()
    ok = answered == b"x" * BLOCK and reopened.might_have(key)
    reopened.close()
    return {"entries": entries, "fill_s": round(filled, 1), "first_answer_s": round(t1 - t0, 3),
            "usable_s": round(t2 - t0, 3), "answered_right": ok}


def index_bytes(tmp: Path, entries: int) -> dict[str, Any]:
    """What the loaded index of `entries` holds per entry: the Python heap (tracemalloc), and
    the process's RSS growth once every 7th entry was read (SQLite's own memory included)."""
    root = tmp / "index"
    store = DiskStore(root, DEFAULT_BOUND)
    store.load_index()
    _fill(store, entries)
    store.close()
    rss0 = proc_rss_kib(os.getpid()) * 1024
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        reopened = DiskStore(root, DEFAULT_BOUND)
        reopened.load_index()
        after = tracemalloc.get_traced_memory()[0]
        ok = reopened.might_have(_key(5)) and all(reopened.get(_key(i)) == b"x" * BLOCK for i in range(0, entries, 7))
        rss1 = proc_rss_kib(os.getpid()) * 1024
        reopened.close()
    finally:
        tracemalloc.stop()
    return {"entries": entries, "heap_bytes_per_entry": round((after - before) / entries, 1),
            "bytes_per_entry": round(max(after - before, rss1 - rss0) / entries, 1), "answered_right": ok}



def eviction(tmp: Path, entries: int) -> dict[str, Any]:
    """A store filled to its bound with `entries`, then one more batch: the eviction pass that
    batch starts (timed through the store's own call), and what it evicted."""
    root = tmp / f"evict-{entries}"
    bound = entries * BLOCK
    store = DiskStore(root, bound)
    store.load_index()
    _fill(store, entries)
    before = store.describe()["records"]
    passes: list[float] = []
    evict = store._evict  # (the pass itself; a put over the bound calls it)

    def timed_evict() -> None:
        t = time.monotonic()
        evict()
        passes.append(time.monotonic() - t)

    store._evict = timed_evict  # type: ignore[method-assign]
    _fill(store, entries // 20, first=entries)
    after = store.describe()["records"]
    store.close()
    evicted = before + entries // 20 - after
    seconds = sum(passes)
    return {"entries": entries, "passes": len(passes), "evicted": evicted, "seconds": round(seconds, 4),
            "us_per_evicted": round(seconds / max(1, evicted) * 1e6, 2), "evict_to": EVICT_TO}


def disk_targets(tmp: Path, entries: int = 2_600_000, index_entries: int = 200_000,
                 evict_entries: int = 200_000) -> tuple[dict[str, Any], list[Target]]:
    """The three scenarios above and issue 17's targets judged on them."""
    start = startup(tmp, entries)
    index = index_bytes(tmp, index_entries)
    small, large = eviction(tmp, evict_entries), eviction(tmp, evict_entries * 4)
    growth = large["us_per_evicted"] / max(small["us_per_evicted"], 1e-3)
    n = f"{entries / 1e6:.1f}M" if entries >= 1e6 else f"{entries // 1000}k"
    out = [Target(f"disk cache: {n} entries, first answer <= {FIRST_ANSWER_S:g} s", f"{start['first_answer_s']:.3f} s",
                  "met" if start["first_answer_s"] <= FIRST_ANSWER_S and start["answered_right"] else "NOT met",
                  start["first_answer_s"], f"<= {FIRST_ANSWER_S:g} s"),
           Target(f"disk cache: {n} entries, fully usable <= {USABLE_S:g} s", f"{start['usable_s']:.2f} s",
                  "met" if start["usable_s"] <= USABLE_S else "NOT met", start["usable_s"], f"<= {USABLE_S:g} s"),
           Target(f"disk cache: index RAM per entry <= {INDEX_BYTES} B", f"{index['bytes_per_entry']:.1f} B",
                  "met" if index["bytes_per_entry"] <= INDEX_BYTES and index["answered_right"] else "NOT met",
                  index["bytes_per_entry"], f"<= {INDEX_BYTES} B"),
           Target("disk cache: eviction cost per evicted entry, 4x the store / 1x", f"{growth:.2f}",
                  "met" if growth <= 1.5 else "NOT met", growth, "<= 1.5")]
    if entries < 2_600_000:
        for t in out[:2]:
            t.status = f"n/a: {n} entries, not 2.6M"
    return {"startup": start, "index": index, "eviction": [small, large]}, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=2_600_000)
    p.add_argument("--index-entries", type=int, default=200_000)
    p.add_argument("--evict-entries", type=int, default=200_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ciartfs-diskbench-") as d:
        figures, targets = disk_targets(Path(d), args.entries, args.index_entries, args.evict_entries)
    print(json.dumps(figures, indent=2))
    for t in targets:
        print(f"{t.status:>8}  {t.text}: {t.measured} (need {t.need})")


if __name__ == "__main__":
    main()
