#!/usr/bin/env python3
"""Flat-directory scenarios of issue 17 ("Scale"): one directory of N artifacts. scripts/bench.py
runs them (`--only flat,memory`, and in a full run) and judges the issue's targets; alone:

    .venv/bin/python scripts/benchlib/flat.py [--counts 1000,10000,100000] [--kinds small,large]
                                              [--provider v1|v2] [--v2-page N] [--python PATH]
                                              [--browse BUILDS] [--json PATH]

For each N and kind (small: 1000-byte files; large: 4 MiB files, one bytes object shared by
all, so the fake holds one copy), the bundled fake CircleCI serves one build whose `many/`
holds the N artifacts (`--provider v1`, the default: a v1.1 build, github/bench/flat/1/0/many;
`v2`: a job of a v2-only project, circleci/bench-org/flat-proj/1/0/many, listed through the v2
API in pages of 1000 items, `--v2-page`, with a token), and a fresh ciartfs mount (fresh cache
dir) runs, in order:
  ls       `ls many | wc -l`
  find     `find many -name '*.bin' | wc -l`
  ls -l    `ls -l many | wc -l`            (sizes: what the two before did not learn)
(`--order 'ls -l'`: a cold `ls -l` alone)
  relist warm  `ls many | wc -l` again (the re-list the next one is compared with)
  drop     `echo 2 > /proc/sys/vm/drop_caches` when root (the kernel forgets the inodes)
  relist after forget  `ls many | wc -l` (the API documents come from the disk cache)
and reports, per command: seconds, the daemon's CPU seconds (utime+stime), artifact requests
(the API host's redirects and storage GETs, not the API listing), storage bytes sent, the
daemon's peak RSS so far (VmHWM) and its RSS after it (RSS per artifact, and what came back
after drop); the re-list after forget as a multiple of the warm one, in seconds and in CPU
seconds (the steadier figure on shared cores). `--browse 500`: a mount `ls`s each of 500
builds' artifact directory (`--per-build` files each, default 1000; `--browse-command 'ls -l'`)
in turn, RSS every 50 builds: over the second half of the browse RSS should grow by at most a
tenth of what the first 100 builds grew it, per 100 builds (a plateau; the slope is fitted to
every sample of that half, since two samples differ by several MiB of noise alone). `--python`
runs another checkout's ciartfs (its venv's python, e.g. /work/main/.venv/bin/python, run from
that checkout) for a before/after table. The fake runs in this process (threads); the commands and the mount are subprocesses.
Everything started is stopped by pid in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from benchlib.common import proc_cpu, proc_hwm_kib, proc_rss_kib, stop_and_unmount  # noqa: E402
from benchlib.report import Target  # noqa: E402
from ciartfs.cli.mountpoint import is_mounted  # noqa: E402
from ciartfs.fakeserver import FakeCI  # noqa: E402

SMALL, LARGE = 1000, 4 << 20


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


@contextlib.contextmanager
def mounted(python: str, cwd: Path, fake: FakeCI, tmp: Path, tag: str,
            token: str | None = None) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A fresh ciartfs mount (fresh cache dir) of `fake` (with CircleCI `token`): (its process,
    the mount point); stopped by pid and unmounted at the end."""
    mnt, cache = tmp / f"mnt-{tag}", tmp / f"cache-{tag}"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRCLE", "CIARTFS_"))}
    if token:
        env["CIRCLE_TOKEN"] = token
    env["XDG_CONFIG_HOME"], env["XDG_CACHE_HOME"] = str(tmp / "xdg-config"), str(tmp / "xdg-cache")
    log = tmp / f"ciartfs-{tag}.log"
    with open(log.with_suffix(".stderr"), "wb") as stderr:  # the child keeps its own copy
        proc = subprocess.Popen([python, "-P", "-m", "ciartfs", "mount", "-f", str(mnt), "--circleci-host", fake.api_url,
                                 "--cache-dir", str(cache), "--log-file", str(log)],
                                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(str(mnt)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount failed: {log.with_suffix('.stderr').read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc, mnt
    finally:
        stop_and_unmount(proc, str(mnt), 15)
        shutil.rmtree(cache, ignore_errors=True)


def drop_caches(pid: int) -> int | None:
    """Have the kernel forget its dentries and inodes (root only; else None); the daemon's RSS
    after it has handled the forgets."""
    if os.geteuid() != 0:
        return None
    Path("/proc/sys/vm/drop_caches").write_text("2\n")
    time.sleep(2)
    return proc_rss_kib(pid)


def timed(cmd: str) -> tuple[float, str]:
    start = time.monotonic()
    out = subprocess.run(["sh", "-c", cmd], check=True, capture_output=True, text=True, timeout=900)
    return time.monotonic() - start, out.stdout


# The v2 scenario: the project, the token the fake accepts, and its artifact listing's page size.
V2_PROJECT = ("circleci", "bench-org", "flat-proj")
V2_TOKEN = "bench-token"
V2_PAGE = 1000
PROVIDERS = ("v1", "v2")


def run_case(python: str, cwd: Path, count: int, kind: str, tmp: Path, order: list[str],
             provider: str = "v1", v2_page: int = V2_PAGE) -> dict[str, Any]:
    """The commands of `order`, then the memory scenario: a warm `ls` (re-list), drop_caches
    (RSS returned), `ls` again (the re-list after the kernel forgot: requests, time / warm)."""
    v2 = provider == "v2"
    fake = FakeCI(tokens={V2_TOKEN} if v2 else None)
    fake.v2.page_size = v2_page
    body = b"x" * (SMALL if kind == "small" else LARGE)
    project = V2_PROJECT if v2 else ("github", "bench", "flat")
    build = fake.add_project(*project).add_build(
        build_num=1, branch="main", status="success", lifecycle="finished", stop_time="2026-11-01T10:00:00Z")
    for i in range(count):
        build.add_artifact(f"many/f{i:06d}.bin", body)
    fake.start()
    result: dict[str, Any] = {"count": count, "kind": kind, "provider": provider}
    try:
        with mounted(python, cwd, fake, tmp, f"{count}-{kind}-{provider}", V2_TOKEN if v2 else None) as (proc, mnt):
            many = mnt / "/".join(project) / "1/0/many"
            subprocess.run(["ls", str(many.parent.parent.parent)], check=True, capture_output=True)
            base = proc_rss_kib(proc.pid)  # the build not listed yet
            subprocess.run(["ls", str(many.parent)], check=True, capture_output=True)
            storage_stats(fake, len(body))
            result["rss_base_kib"] = base
            commands = {"ls": f"ls {many} | wc -l", "find": f"find {many} -name '*.bin' | wc -l",
                        "ls -l": f"ls -l {many} | wc -l"}
            for label in [*order, "relist warm"]:
                cpu = proc_cpu(proc.pid)
                took, out = timed(commands.get(label, commands["ls"]))
                cpu = proc_cpu(proc.pid) - cpu
                reqs, sent = storage_stats(fake, len(body))
                rss = proc_rss_kib(proc.pid)
                result[label] = {"s": round(took, 3), "cpu_s": round(cpu, 2), "requests": reqs, "storage_bytes": sent,
                                 "lines": int(out.strip()), "rss_kib": rss, "peak_rss_kib": proc_hwm_kib(proc.pid),
                                 "rss_per_artifact_b": round((rss - base) * 1024 / count)}
                print(f"  {provider} {count:>7} {kind:<5} {label:<11} {took:8.3f} s  {cpu:6.2f} CPU s  {reqs:>7} requests  "
                      f"{sent / 2**20:9.1f} MiB  RSS {rss / 1024:7.1f} MiB ({(rss - base) * 1024 / count:6.0f} B/artifact)",
                      flush=True)
            before = proc_rss_kib(proc.pid)
            after = drop_caches(proc.pid)
            if after is not None:
                result["drop"] = {"rss_kib": after, "returned_share": round((before - after) / max(1, before - base), 2)}
                print(f"  {provider} {count:>7} {kind:<5} drop        RSS {after / 1024:7.1f} MiB "
                      f"({result['drop']['returned_share']:.0%} of the growth returned)", flush=True)
                fake.clear_requests()  # (the API documents asked for again would count; none are)
                cpu = proc_cpu(proc.pid)
                took, out = timed(commands["ls"])
                cpu = proc_cpu(proc.pid) - cpu
                api = [r.path for r in fake.requests if r.server == "api" and not r.path.startswith("/artifacts/")]
                reqs, _ = storage_stats(fake, len(body))
                warm, warm_cpu = result["relist warm"]["s"], result["relist warm"]["cpu_s"]
                result["relist after forget"] = {"s": round(took, 3), "cpu_s": round(cpu, 2),
                                                 "cpu_vs_warm": round(cpu / max(warm_cpu, 1e-2), 2),
                                                 "requests": reqs, "api_requests": len(api),
                                                 "api_paths": api[:10],
                                                 "lines": int(out.strip()), "vs_warm": round(took / max(warm, 1e-3), 2)}
                print(f"  {provider} {count:>7} {kind:<5} relist      {took:8.3f} s  {cpu:6.2f} CPU s  {reqs:>7} requests  "
                      f"{len(api)} API requests {api[:3]}  ({took / max(warm, 1e-3):.1f}x the warm re-list, {warm:.3f} s; "
                      f"CPU {cpu / max(warm_cpu, 1e-2):.1f}x)", flush=True)
    finally:
        fake.stop()
    return result


def fitted_slope(points: list[tuple[int, int]]) -> float:
    """The least-squares slope of y over x through `points` (at least two distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def browse(python: str, cwd: Path, builds: int, per_build: int, tmp: Path, every: int = 50,
           command: str = "ls") -> dict[str, Any]:
    """`command` (`ls`: readdirplus gives the kernel every entry, as `ls -l` does, without the
    sizes) of each of `builds` builds' artifact directory in turn (the kernel holds what it was
    shown), the daemon's RSS every `every` builds: it plateaus if, over the second half of the
    browse, RSS grows by at most a tenth of what the first hundred builds grew it, per hundred
    builds. That growth is the least-squares slope through every sample of the half: RSS moves
    by several MiB between two samples with nothing growing (collections, the kept listings' LRU
    turning over), so a difference of two samples measures that noise, not a trend."""
    fake = FakeCI()
    project = fake.add_project("github", "bench", "browse")
    body = b"y" * SMALL
    for num in range(1, builds + 1):
        build = project.add_build(build_num=num, branch="main", status="success", lifecycle="finished",
                                  stop_time="2026-11-01T10:00:00Z")
        for i in range(per_build):
            build.add_artifact(f"out/f{i:04d}.txt", body)
    fake.start()
    samples: list[tuple[int, int]] = []
    try:
        with mounted(python, cwd, fake, tmp, f"browse-{builds}") as (proc, mnt):
            root = mnt / "github/bench/browse"
            subprocess.run(["ls", str(root)], check=True, capture_output=True)
            samples.append((0, proc_rss_kib(proc.pid)))
            start = time.monotonic()
            for num in range(1, builds + 1):
                subprocess.run([*command.split(), str(root / str(num) / "0" / "out")], check=True,
                               capture_output=True, timeout=300)
                if num % every == 0:
                    samples.append((num, proc_rss_kib(proc.pid)))
                    print(f"  browse {num:>4} builds  RSS {samples[-1][1] / 1024:7.1f} MiB", flush=True)
            took = time.monotonic() - start
    finally:
        fake.stop()
    per = dict(samples)
    hundred = 100 if builds >= 200 else every
    first = per[hundred] - per[0]
    last = per[builds] - per[builds - hundred]
    late = [(n, rss) for n, rss in samples if n >= builds // 2]
    slope = hundred * fitted_slope(late)
    result = {"builds": builds, "per_build": per_build, "s": round(took, 1), "rss_kib": samples,
              "first_hundred_kib": first, "last_hundred_kib": last, "late_per_hundred_kib": round(slope),
              "plateau": slope <= max(0.1 * first, 1024)}
    print(f"  browse: RSS +{first / 1024:.1f} MiB over the first {hundred} builds, {slope / 1024:+.1f} MiB per "
          f"{hundred} fitted over builds {late[0][0]}-{builds} (last {hundred}: {last / 1024:+.1f}): "
          f"{'plateau' if result['plateau'] else 'no plateau'} ({took:.0f} s)", flush=True)
    return result


LISTING_LIMIT_S = 5.0  # issue 17: `ls` and `find -name` of 100k artifacts
PROBE_LIMIT_B = 16 << 10  # issue 17: `ls -l` of large files, artifact bytes per file


def flat_targets(python: str, cwd: Path, tmp: Path, counts: tuple[int, ...] = (10_000, 100_000),
                 kinds: tuple[str, ...] = ("small", "large")) -> tuple[list[dict[str, Any]], list[Target]]:
    """Issue 17's names-only targets over one directory of each count and kind: `ls` and `find
    -name` make no storage request, take <= 5 s at 100k, and `ls -l` of large files fetches
    <= 16 KiB per file. The cases' figures, and the targets judged."""
    cases = [run_case(python, cwd, count, kind, tmp, ["ls", "find", "ls -l"]) for count in counts for kind in kinds]
    names_only = max(c[cmd]["requests"] for c in cases for cmd in ("ls", "find"))
    out = [Target("flat: ls and find -name make no storage request", f"max {names_only}", "met" if names_only == 0 else
                  "NOT met", names_only, "0")]
    for c in cases:
        if c["count"] >= 100_000:
            worst = max(c["ls"]["s"], c["find"]["s"])
            out.append(Target(f"flat: ls and find -name of {c['count']} {c['kind']} <= {LISTING_LIMIT_S:g} s",
                              f"{worst:.2f} s", "met" if worst <= LISTING_LIMIT_S else "NOT met", worst,
                              f"<= {LISTING_LIMIT_S:g} s"))
        if c["kind"] == "large":
            per = c["ls -l"]["storage_bytes"] / c["count"]
            out.append(Target(f"flat: ls -l of {c['count']} large fetches <= 16 KiB per file", f"{per / 1024:.1f} KiB",
                              "met" if per <= PROBE_LIMIT_B else "NOT met", per, "<= 16 KiB"))
    return cases, out


def memory_targets(python: str, cwd: Path, tmp: Path, count: int = 100_000,
                   builds: int = 500, provider: str = "v1") -> tuple[dict[str, Any], list[Target]]:
    """Issue 17's memory targets, measured: RSS per listed artifact at `count` (<= 1.5 KiB), the
    share of it drop_caches gives back (>= 70%), a re-list after forget against a warm one
    (<= 2x), and a browse of `builds` builds (a plateau)."""
    case = run_case(python, cwd, count, "small", tmp, ["ls"], provider)
    walk = browse(python, cwd, builds, 1000, tmp)
    per_artifact = case["ls"]["rss_per_artifact_b"]
    growth = (f"+{walk['first_hundred_kib'] / 1024:.1f} -> {walk['late_per_hundred_kib'] / 1024:+.1f} MiB "
              f"(last 100: {walk['last_hundred_kib'] / 1024:+.1f})")
    out = [Target(f"memory: RSS per listed artifact at {count} <= 1.5 KiB", f"{per_artifact} B",
                  "met" if per_artifact <= 1536 else "NOT met", per_artifact, "<= 1536 B"),
           Target(f"memory: browsing {builds} builds plateaus (first 100 builds vs per 100 over the second half)",
                  growth, "met" if walk["plateau"] else "NOT met", walk["late_per_hundred_kib"], "late <= first/10")]
    if "drop" in case:
        share, ratio = case["drop"]["returned_share"], case["relist after forget"]["vs_warm"]
        out += [Target("memory: drop_caches returns >= 70% of the listing's growth", f"{share:.0%}",
                       "met" if share >= 0.7 else "NOT met", share, ">= 70%"),
                Target("memory: a re-list after forget <= 2x a warm re-list", f"{ratio:.2f}x",
                       "met" if ratio <= 2 else "NOT met", ratio, "<= 2x")]
    else:
        out.append(Target("memory: drop_caches and the re-list after forget", "-", "n/a: needs root", None, ""))
    return {"flat": case, "browse": walk}, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,10000,100000")
    p.add_argument("--kinds", default="small,large")
    p.add_argument("--python", default=str(REPO / ".venv/bin/python"), help="the ciartfs to run (a venv's python)")
    p.add_argument("--checkout", help="the checkout whose ciartfs runs (default: the one --python's venv is in)")
    p.add_argument("--provider", choices=PROVIDERS, default="v1", help="whose API lists the directory (default v1)")
    p.add_argument("--v2-page", type=int, default=V2_PAGE, help=f"v2 artifacts per page (default {V2_PAGE})")
    p.add_argument("--order", default="ls,find,ls -l", help="the commands, in order (e.g. 'ls -l' alone: cold)")
    p.add_argument("--browse", type=int, default=0, metavar="BUILDS", help="also browse this many builds (e.g. 500)")
    p.add_argument("--per-build", type=int, default=1000, help="artifacts per browsed build (default 1000)")
    p.add_argument("--browse-command", default="ls", help="run on each browsed build's directory (default ls)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    python = Path(args.python)
    cwd = Path(args.checkout) if args.checkout else python.parent.parent.parent  # <checkout>/.venv/bin/python
    results = []
    with tempfile.TemporaryDirectory(prefix="ciartfs-flat-") as tmp:
        for count in (int(c) for c in args.counts.split(",") if c):
            for kind in args.kinds.split(","):
                results.append(run_case(str(python), cwd, count, kind, Path(tmp), args.order.split(","),
                                        args.provider, args.v2_page))
        if args.browse:
            results.append(browse(str(python), cwd, args.browse, args.per_build, Path(tmp), command=args.browse_command))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
