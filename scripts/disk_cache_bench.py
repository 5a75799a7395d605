#!/usr/bin/env python3
"""Disk cache figures for issue 17 (not a test: numbers to read, never asserted).

    scripts/disk_cache_bench.py cold [--size-mib 1024] [--runs 3]   cold `cat` through a mount, disk cache on
    scripts/disk_cache_bench.py index [--entries 200000]            RAM of the store's index per entry
    scripts/disk_cache_bench.py startup [--entries 2600000]         a store of N entries: first answer, fully usable

cold: the fake CircleCI (scripts/benchlib/fakeci.py, its own process) serves one random file; each
run is a fresh mount with an empty cache dir reading it once with `cat`. Reports MiB/s and the
daemon's CPU seconds per GiB (utime+stime from /proc, taken after the disk writes are flushed by
the unmount, so the write-behind is counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "benchlib"), str(HERE.parent)]

from benchlib.common import proc_cpu  # noqa: E402
from benchlib.data import BIG_BUILD, BIG_PATH, PROJECT  # noqa: E402
from benchlib.mounts import CiartfsMount  # noqa: E402

MiB = 1 << 20
BOUND = 10 << 30  # the default --cache-size (the filter of ids written since start is sized by it)


def _start_fake(tmp: Path, size: int) -> subprocess.Popen[str]:
    big = tmp / "big.bin"
    with open(big, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    manifest = {"project": list(PROJECT), "builds": [
        {"num": BIG_BUILD, "stop_time": "2024-01-01T00:00:00Z", "artifacts": [[BIG_PATH, str(big)]]}]}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.Popen([sys.executable, "-u", str(HERE / "benchlib" / "fakeci.py"), str(tmp / "manifest.json")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"fake server did not start: {line!r}")
    proc.ready = json.loads(line[len("READY "):])  # type: ignore[attr-defined]
    return proc


def cold(args: argparse.Namespace) -> None:
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="ciartfs-diskbench-") as d:
        tmp = Path(d)
        (tmp / "logs").mkdir()
        fake = _start_fake(tmp, size)
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "xdg-config"), "XDG_RUNTIME_DIR": str(tmp / "xdg-run")}
        registry: list = []
        rates, cpus = [], []
        try:
            for _ in range(args.runs):
                m = CiartfsMount(tmp, registry, env, python=sys.executable, api_url=fake.ready["api"],  # type: ignore[attr-defined]
                                 options=["--memory-cache", args.memory_cache, *args.option])
                try:
                    target = m.root(BIG_BUILD) / BIG_PATH
                    os.stat(target)
                    cpu0 = proc_cpu(m.pid)
                    t0 = time.monotonic()
                    subprocess.run(["cat", str(target)], stdout=subprocess.DEVNULL, check=True)
                    seconds = time.monotonic() - t0
                    time.sleep(1.0)  # the write-behind's settle time, then its writes
                    pending = True
                    while pending:  # until the daemon is idle: the disk writes are done
                        c = proc_cpu(m.pid)
                        time.sleep(0.5)
                        pending = proc_cpu(m.pid) - c > 0.02
                    cpu = proc_cpu(m.pid) - cpu0
                    du = sum(p.stat().st_blocks * 512 for p in m.cache.rglob("*") if p.is_file())
                finally:
                    m.stop()
                rates.append(size / MiB / seconds)
                cpus.append(cpu / (size / (1 << 30)))
                print(f"  run: {seconds:.2f}s  {rates[-1]:.0f} MiB/s  {cpus[-1]:.2f} daemon CPU-s/GiB  "
                      f"cache on disk {du / MiB:.0f} MiB", flush=True)
        finally:
            fake.kill()
            fake.wait()
        print(f"cold read of {args.size_mib} MiB, disk cache on: median {statistics.median(rates):.0f} MiB/s, "
              f"{statistics.median(cpus):.2f} daemon CPU-s/GiB ({args.runs} runs)")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill(store: object, entries: int, block: int) -> None:
    data = b"x" * block
    batch = []
    for i in range(entries):
        batch.append((f"circleci|host|gh/o/r|1|0/file{i // 4096}|{block}|{i % 4096}", data))
        if len(batch) == 512:
            store.put_many(batch)  # type: ignore[attr-defined]
            batch = []
    if batch:
        store.put_many(batch)  # type: ignore[attr-defined]


def index(args: argparse.Namespace) -> None:
    from ciartfs.data.cache import DiskStore
    with tempfile.TemporaryDirectory(prefix="ciartfs-diskindex-") as d:
        store = DiskStore(Path(d) / "blocks", BOUND)
        store.load_index()
        _fill(store, args.entries, 64)
        store.close()
        tracemalloc.start()
        rss0 = _rss()
        before = tracemalloc.get_traced_memory()[0]
        reopened = DiskStore(Path(d) / "blocks", BOUND)
        reopened.load_index()
        after = tracemalloc.get_traced_memory()[0]
        assert reopened.might_have(f"circleci|host|gh/o/r|1|0/file0|64|{5}")
        for i in range(0, args.entries, 7):  # the index's pages in SQLite's (bounded) page cache
            reopened.get(f"circleci|host|gh/o/r|1|0/file{i // 4096}|64|{i % 4096}")
        rss1 = _rss()
        print(f"index of {args.entries} entries, loaded: {(after - before) / args.entries:.1f} bytes of Python heap per entry "
              f"(tracemalloc); RSS grew {(rss1 - rss0) / args.entries:.1f} bytes per entry after reading 1/7 of them "
              f"(SQLite's page cache is bounded, 2 MiB)")
        before = tracemalloc.get_traced_memory()[0]
        _fill(reopened, args.entries // 4, 64)
        after = tracemalloc.get_traced_memory()[0]
        more = args.entries // 4
        print(f"  and {more} more written by this process: {(after - before) / more:.1f} bytes per entry")
        tracemalloc.stop()


def startup(args: argparse.Namespace) -> None:
    from ciartfs.data.cache import DiskStore
    with tempfile.TemporaryDirectory(prefix="ciartfs-diskstart-") as d:
        store = DiskStore(Path(d) / "blocks", 1 << 40)
        store.load_index()
        t = time.monotonic()
        _fill(store, args.entries, 16)  # 16-byte blocks: the index is the same as for 4K ones
        store.close()
        print(f"filled {args.entries} entries in {time.monotonic() - t:.1f}s")
        t0 = time.monotonic()
        reopened = DiskStore(Path(d) / "blocks", 1 << 40)
        key = "circleci|host|gh/o/r|1|0/file7|16|9"
        answered = reopened.get(key)
        t1 = time.monotonic()
        reopened.load_index()
        t2 = time.monotonic()
        assert answered == b"x" * 16 and reopened.might_have(key)
        print(f"start-up with {args.entries} entries: first get answered after {t1 - t0:.3f}s, "
              f"index (might_have filter) ready after {t2 - t0:.2f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cold")
    c.add_argument("--size-mib", type=int, default=1024)
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--memory-cache", default="1G")
    c.add_argument("--option", action="append", default=[], help="another ciartfs mount option (repeatable)")
    i = sub.add_parser("index")
    i.add_argument("--entries", type=int, default=200_000)
    s = sub.add_parser("startup")
    s.add_argument("--entries", type=int, default=2_600_000)
    args = p.parse_args()
    {"cold": cold, "index": index, "startup": startup}[args.what](args)


if __name__ == "__main__":
    main()
