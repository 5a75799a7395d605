#!/usr/bin/env python3
"""Flat-directory scenarios of issue 17 ("Scale"): one directory of N artifacts.

    .venv/bin/python scripts/bench_flat.py [--counts 1000,10000,100000] [--kinds small,large]
                                           [--python PATH] [--latency-ms 0] [--json PATH]

For each N and kind (small: 1000-byte files; large: 4 MiB files, one bytes object shared by
all, so the fake holds one copy), the bundled fake CircleCI serves one build whose `many/`
holds the N artifacts, and a fresh ciartfs mount (fresh cache dir) runs, in order:
  ls       `ls many | wc -l`
  find     `find many -name '*.bin' | wc -l`
  ls -l    `ls -l many | wc -l`            (sizes: what the two before did not learn)
(`--order 'ls -l'`: a cold `ls -l` alone)
  drop     `echo 2 > /proc/sys/vm/drop_caches` when root (the kernel forgets the inodes)
and reports, per command: seconds, artifact requests (the API host's redirects and storage
GETs, not the API listing), storage bytes sent, and the daemon's RSS after it (RSS per
artifact, and what came back after drop). `--python` runs another checkout's ciartfs (its
venv's python, e.g. /work/main/.venv/bin/python, run from that checkout) for a before/after
table. The fake runs in this process (threads); the commands and the mount are subprocesses.
Everything started is stopped by pid in `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ciartfs.cli.mountpoint import is_mounted  # noqa: E402
from ciartfs.fakeserver import FakeCI  # noqa: E402

SMALL, LARGE = 1000, 4 << 20


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def storage_stats(fake: FakeCI, size: int) -> tuple[int, int]:
    """(artifact requests, storage bytes sent: each artifact is `size` bytes) since the last
    call; clears the request log."""
    requests = [r for r in fake.requests if r.server != "api" or r.path.startswith("/artifacts/")]
    sent = 0
    for r in requests:
        if r.server == "storage" and r.status == 206:
            rng = r.headers.get("range", "")
            if rng.startswith("bytes="):
                lo, _, hi = rng[6:].partition("-")
                sent += max(0, min(int(hi) + 1, size) - int(lo)) if hi else 0
    fake.clear_requests()
    return len(requests), sent


def run_case(python: str, cwd: Path, count: int, kind: str, tmp: Path, order: list[str]) -> dict[str, Any]:
    fake = FakeCI()
    body = b"x" * (SMALL if kind == "small" else LARGE)
    build = fake.add_project("github", "bench", "flat").add_build(
        build_num=1, branch="main", status="success", lifecycle="finished", stop_time="2026-11-01T10:00:00Z")
    for i in range(count):
        build.add_artifact(f"many/f{i:06d}.bin", body)
    fake.start()
    mnt, cache = tmp / f"mnt-{count}-{kind}", tmp / f"cache-{count}-{kind}"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRCLE", "CIARTFS_"))}
    env["XDG_CONFIG_HOME"], env["XDG_CACHE_HOME"] = str(tmp / "xdg-config"), str(tmp / "xdg-cache")
    log = tmp / f"ciartfs-{count}-{kind}.log"
    with open(log.with_suffix(".stderr"), "wb") as stderr:  # the child keeps its own copy
        proc = subprocess.Popen([python, "-m", "ciartfs", "mount", "-f", str(mnt), "--circleci-host", fake.api_url,
                                 "--cache-dir", str(cache), "--log-file", str(log)],
                                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    result: dict[str, Any] = {"count": count, "kind": kind}
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(str(mnt)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount failed: {log.with_suffix('.stderr').read_text()[-2000:]}")
            time.sleep(0.05)
        many = mnt / "github/bench/flat/1/0/many"
        subprocess.run(["ls", str(mnt / "github/bench/flat")], check=True, capture_output=True)
        base = rss_kib(proc.pid)  # the build not listed yet
        subprocess.run(["ls", str(many.parent)], check=True, capture_output=True)
        storage_stats(fake, len(body))
        result["rss_base_kib"] = base
        commands = {"ls": f"ls {many} | wc -l", "find": f"find {many} -name '*.bin' | wc -l",
                    "ls -l": f"ls -l {many} | wc -l"}
        for label in order:
            cmd = commands[label]
            start = time.monotonic()
            out = subprocess.run(["sh", "-c", cmd], check=True, capture_output=True, text=True, timeout=600)
            took = time.monotonic() - start
            reqs, sent = storage_stats(fake, len(body))
            rss = rss_kib(proc.pid)
            lines = int(out.stdout.strip())
            result[label] = {"s": round(took, 3), "requests": reqs, "storage_bytes": sent, "lines": lines,
                             "rss_kib": rss, "rss_per_artifact_b": round((rss - base) * 1024 / count)}
            print(f"  {count:>7} {kind:<5} {label:<6} {took:8.3f} s  {reqs:>7} requests  "
                  f"{sent / 2**20:9.1f} MiB  RSS {rss / 1024:7.1f} MiB ({(rss - base) * 1024 / count:6.0f} B/artifact)",
                  flush=True)
        if os.geteuid() == 0:
            before = rss_kib(proc.pid)
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
            time.sleep(2)
            after = rss_kib(proc.pid)
            result["drop"] = {"rss_kib": after, "returned_share": round((before - after) / max(1, before - base), 2)}
            print(f"  {count:>7} {kind:<5} drop   RSS {after / 1024:7.1f} MiB "
                  f"({result['drop']['returned_share']:.0%} of the growth returned)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if is_mounted(str(mnt)):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        fake.stop()
        shutil.rmtree(cache, ignore_errors=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,10000,100000")
    p.add_argument("--kinds", default="small,large")
    p.add_argument("--python", default=str(REPO / ".venv/bin/python"), help="the ciartfs to run (a venv's python)")
    p.add_argument("--checkout", help="the checkout whose ciartfs runs (default: the one --python's venv is in)")
    p.add_argument("--order", default="ls,find,ls -l", help="the commands, in order (e.g. 'ls -l' alone: cold)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    python = Path(args.python)
    cwd = Path(args.checkout) if args.checkout else python.parent.parent.parent  # <checkout>/.venv/bin/python
    results = []
    with tempfile.TemporaryDirectory(prefix="ciartfs-flat-") as tmp:
        for count in (int(c) for c in args.counts.split(",")):
            for kind in args.kinds.split(","):
                results.append(run_case(str(python), cwd, count, kind, Path(tmp), args.order.split(",")))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
