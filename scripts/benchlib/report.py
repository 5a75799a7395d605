"""The benchmark's results: samples per scenario and tool, the printed table, the issue's
targets (each: measured, met / NOT met), and the same as JSON."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.common import MiB
from benchlib.mounts import PEERS
from ciartfs.config import Settings, parse_size

REPO = Path(__file__).resolve().parents[2]

# scenarios (print order is the order Bench.run declares them)
COLD_UNCAPPED = "cold read, uncapped"
COLD_CAPPED = "cold read, capped"
COLD_HTTPS = "cold read, uncapped, HTTPS"
WARM = "warm re-read"
GREP = "grep -rl, 2000 small files"
LS = "ls -l, 1000 artifacts"
UNZIP = "unzip -l, 2000-member zip"
GH_READ = "actions: 1 MiB of 500 MiB zip"
GH_LS = "actions: ls -R, 10k members"
GH_GREP = "actions: grep -rl, 2000 defl."
TC_LS = "ls, Taskcluster group"
TC_GREP = "grep -rl, Taskcluster group"
# tools other than the FUSE mounts (whose labels are in benchlib/mounts.py)
CIARTFS = "ciartfs"
CURL = "curl (1 stream)"
ARIA = "aria2c -x8 -s8"
LOCAL = "cat local file"
RECIPE = "docs recipe (xargs -P4 curl)"
LS_BASE = "curl API list (names)"
UNZIP_BASE = "curl, then unzip -l"
GH_BASE = "gh way: curl -L, unzip, tool"
TC_LS_BASE = "curl API list (task ids)"
TC_RECIPE = "queue recipe (xargs -P8 curl)"
TC_GREP_LIMIT_S, TC_GREP_TASKS = 10.0, 5000  # issue 17: grep -rl over a 5k-task group


class Sample(dict[str, Any]):  # seconds (None: timed out after `timeout` s), plus resource figures for FUSE runs
    pass


class Results:
    def __init__(self) -> None:
        # scenario -> tool -> list of samples; insertion order is print order
        self.data: dict[str, dict[str, list[Sample]]] = {}
        self.meta: dict[str, dict[str, Any]] = {}  # scenario -> {"bytes": n, "reference": tool}
        self.skipped: dict[str, str] = {}  # tool -> why
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.runs_done = 0  # rounds over all scenarios started (the time budget may stop them early)

    def scenario(self, name: str, reference: str = CIARTFS, nbytes: int | None = None, tools: tuple[str, ...] = (),
                 count: int | None = None) -> None:
        """`count`: how many items (e.g. tasks) the scenario ran over, where a target names one."""
        self.data.setdefault(name, {t: [] for t in tools})
        self.meta[name] = {"bytes": nbytes, "reference": reference, "count": count}

    def add(self, scenario: str, tool: str, sample: Sample) -> None:
        self.data[scenario].setdefault(tool, []).append(sample)

    @staticmethod
    def median(samples: list[Sample], key: str) -> float | None:
        values = [s[key] for s in samples if s.get(key) is not None]
        return statistics.median(values) if values else None

    @staticmethod
    def time_median(samples: list[Sample]) -> tuple[float | None, bool]:
        """(median seconds, is it only a lower bound). A timed-out run counts as infinitely
        slow; when that makes the median infinite, the median with the time limit in its
        place is returned as a lower bound ("> N s")."""
        if not samples:
            return None, False
        med = statistics.median([math.inf if s.get("seconds") is None else s["seconds"] for s in samples])
        if math.isinf(med):
            return statistics.median([s["timeout"] if s.get("seconds") is None else s["seconds"] for s in samples]), True
        return med, False

    def ratio(self, scenario: str, tool: str) -> tuple[float | None, bool]:
        """Baseline median / ciartfs median (>1: ciartfs faster), and whether it is a lower bound."""
        if scenario not in self.meta:  # interrupted before the scenarios were set up
            return None, False
        tools = self.data.get(scenario, {})
        ref, _ = self.time_median(tools.get(self.meta[scenario]["reference"], []))
        med, bound = self.time_median(tools.get(tool, []))
        if not ref or med is None:
            return None, False
        return med / ref, bound


# -- the targets -------------------------------------------------------------------------

@dataclass
class Target:
    text: str
    measured: str
    status: str  # "met", "NOT met", "n/a: why"
    value: float | None = None
    need: str = ""
    scenario: str = ""  # shown only when this scenario was run ("": always)


def _ratio_target(res: Results, text: str, scenario: str, tool: str, threshold: float, strict: bool = False) -> Target:
    need = f"{'>' if strict else '>='} {threshold:.3g}"
    if tool in res.skipped:
        return Target(text, "-", f"n/a: {tool} skipped", None, need, scenario)
    r, bound = res.ratio(scenario, tool)
    if r is None:
        return Target(text, "-", "n/a: no result", None, need, scenario)
    ok = r > threshold if strict else r >= threshold
    measured = f"{'> ' if bound else ''}{r:.2f}"
    if bound and not ok:  # the peer timed out, ciartfs was not fast enough to tell
        return Target(text, measured, "n/a: peer timed out", r, need, scenario)
    return Target(text, measured, "met" if ok else "NOT met", r, need, scenario)


def _cold_target(res: Results, scenario: str, unit: str, need: float) -> Target:
    """The issue's absolute cold-read targets, from ciartfs's medians: throughput (MiB/s, at
    least `need`) or the daemon's CPU per GiB read (CPU-s/GiB, at most `need`)."""
    samples = res.data.get(scenario, {}).get(CIARTFS, [])
    nbytes = res.meta.get(scenario, {}).get("bytes")
    seconds, cpu = Results.median(samples, "seconds"), Results.median(samples, "cpu")
    if unit == "MiB/s":
        text, sign = f"{scenario}: >= {need:g} MiB/s", f">= {need:g}"
        value = nbytes / MiB / seconds if nbytes and seconds else None
    else:
        text, sign = f"{scenario}: <= {need:g} daemon CPU-s per GiB", f"<= {need:g}"
        value = cpu / (nbytes / (1024 * MiB)) if nbytes and cpu is not None else None
    if value is None:
        return Target(text, "-", "n/a: no result", None, sign, scenario)
    ok = value >= need if unit == "MiB/s" else value <= need
    return Target(text, f"{value:.2f} {unit}", "met" if ok else "NOT met", value, sign, scenario)


def _seconds_target(res: Results, text: str, scenario: str, limit: float, count: int) -> Target:
    """ciartfs's median within `limit` seconds, over the `count` items the target is for (a
    smaller run, e.g. --quick, is not judged)."""
    med, bound = Results.time_median(res.data.get(scenario, {}).get(CIARTFS, []))
    need = f"<= {limit:g} s"
    if med is None:
        return Target(text, "-", "n/a: no result", None, need, scenario)
    ran = res.meta.get(scenario, {}).get("count")
    if ran is not None and ran < count:
        return Target(text, f"{med:.2f} s", f"n/a: ran {ran}, not {count}", med, need, scenario)
    return Target(text, f"{'> ' if bound else ''}{med:.2f} s", "met" if med <= limit and not bound else "NOT met", med, need,
                  scenario)


def targets(res: Results, memory_cache: str) -> list[Target]:
    peers = [p.tool for p in PEERS]
    out = [_ratio_target(res, "capped cold read >= 4x faster than curl", COLD_CAPPED, CURL, 4),
           _ratio_target(res, "capped cold read within 1.5x of aria2c's time", COLD_CAPPED, ARIA, 1 / 1.5)]
    out += [_ratio_target(res, f"capped cold read ahead of {p}", COLD_CAPPED, p, 1, strict=True) for p in peers]
    out += [_cold_target(res, COLD_UNCAPPED, "MiB/s", 600), _cold_target(res, COLD_UNCAPPED, "CPU-s/GiB", 1.5)]
    https = _ratio_target(res, "uncapped cold read over HTTPS: curl's time / ciartfs's", COLD_HTTPS, CURL, 0)
    out.append(Target(https.text, https.measured, "reported" if https.value is not None else https.status, https.value, "-",
                      COLD_HTTPS))
    out.append(_ratio_target(res, "warm re-read >= 0.5x the speed of local cat", WARM, LOCAL, 0.5))
    out += [_ratio_target(res, f"warm re-read ahead of {p}", WARM, p, 1, strict=True) for p in peers]
    out.append(_ratio_target(res, "grep -rl >= 3x faster than the docs recipe", GREP, RECIPE, 3))
    out += [_ratio_target(res, f"ls -l >= 4x faster than {p}", LS, p, 4) for p in peers]
    sent = Results.median(res.data.get(UNZIP, {}).get(CIARTFS, []), "sent_mib")
    out.append(Target("unzip -l: < 1 MiB sent by the server", "-" if sent is None else f"{sent:.2f} MiB",
                      "n/a: no result" if sent is None else "met" if sent < 1 else "NOT met", sent, "< 1 MiB", UNZIP))
    out.append(_ratio_target(res, f"unzip -l no slower than {peers[0]}", UNZIP, peers[0], 1))
    out += _actions_targets(res)
    out.append(_seconds_target(res, f"grep -rl over a {TC_GREP_TASKS}-task TC group <= {TC_GREP_LIMIT_S:g} s", TC_GREP,
                               TC_GREP_LIMIT_S, TC_GREP_TASKS))
    limit = parse_size(memory_cache) / MiB + 100
    worst = max(((s["rss_mib"], scenario) for scenario, tools in res.data.items()
                 for s in tools.get(CIARTFS, []) if s.get("rss_mib")), default=None)
    text = f"ciartfs peak RSS <= memory cache ({memory_cache}) + 100 MiB, every run"
    if worst is None:
        if res.meta:  # (else no scenario of the table was run: nothing to say)
            out.append(Target(text, "-", "n/a: no result", None, f"<= {limit:.0f} MiB"))
    else:
        out.append(Target(text, f"max {worst[0]:.0f} MiB ({worst[1]})", "met" if worst[0] <= limit else "NOT met",
                          worst[0], f"<= {limit:.0f} MiB"))
    return [t for t in out if not t.scenario or t.scenario in res.meta]


def _actions_targets(res: Results) -> list[Target]:
    """Issue 18's: bytes the blob host sent for one member, requests past the index for `ls -R`,
    and the ratios against the `gh run download` way."""
    out = [_ratio_target(res, "actions: 1 MiB member >= 20x faster than the gh way", GH_READ, GH_BASE, 20)]
    samples = res.data.get(GH_READ, {}).get(CIARTFS, [])
    sent = max((s["blob_sent_mib"] for s in samples if s.get("blob_sent_mib") is not None), default=None)
    cd = max((s["central_directory_mib"] for s in samples if s.get("central_directory_mib") is not None), default=0.0)
    need = f"<= {1.5 + cd:.2f} MiB"
    out.append(Target("actions: 1 MiB member: blob host sent <= 1.5 MiB + central dir., every run",
                      "-" if sent is None else f"max {sent:.2f} MiB",
                      "n/a: no result" if sent is None else "met" if sent <= 1.5 + cd else "NOT met", sent, need,
                      GH_READ))
    samples = res.data.get(GH_LS, {}).get(CIARTFS, [])
    after = max((s["blob_requests_after_index"] for s in samples if s.get("blob_requests_after_index") is not None),
                default=None)
    out.append(Target("actions: ls -R: no request after the central directory, every run",
                      "-" if after is None else f"max {after}", "n/a: no result" if after is None
                      else "met" if after == 0 else "NOT met", after, "0", GH_LS))
    out.append(_ratio_target(res, "actions: grep -rl >= 2x faster than the gh way", GH_GREP, GH_BASE, 2))
    return out


# -- the printed report -----------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    def first_line(cmd: list[str]) -> str | None:
        if not shutil.which(cmd[0]):
            return None
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (proc.stdout or proc.stderr).splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) // 1024 for ln in meminfo if ln.startswith("MemTotal")), 0)
    rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpu": cpu, "mem_mib": mem, "kernel": platform.release(),
        "python": platform.python_version(), "ciartfs_rev": rev or "?",
        "loadavg_start": os.getloadavg(),
        "curl": first_line(["curl", "--version"]), "aria2c": first_line(["aria2c", "--version"]),
        "rclone": first_line(["rclone", "version"]), "httpdirfs": first_line(["httpdirfs", "--version"]),
        "unzip": first_line(["unzip", "-v"]),
    }


def _fuse_columns(tool: str, samples: list[Sample], row: dict[str, Any]) -> str:
    """peak RSS, CPU s and requests of a FUSE tool's runs (medians), for the table and the JSON."""
    rss = Results.median(samples, "rss_mib")
    cpu = Results.median(samples, "cpu")
    if rss is None or cpu is None:
        return ""
    row.update(peak_rss_mib=rss, cpu_s=cpu, server_cpu_s=[s.get("server_cpu") for s in samples])

    def conns(key: str) -> str:
        c = Results.median(samples, key)
        row[key] = c
        return "" if c is None else f" ({c:g} conn)"

    if tool == CIARTFS:
        api, sto = Results.median(samples, "api"), Results.median(samples, "storage")
        row.update(api_requests=api, storage_requests=sto)
        requests = f"api {api:g}{conns('api_conns')}, storage {sto:g}{conns('storage_conns')}"
        blob = Results.median(samples, "blob_requests")
        if blob is not None:  # GitHub's blob host (from mounting to unmounting)
            requests += f", blob {blob:g}"
    else:
        head, get = Results.median(samples, "head"), Results.median(samples, "get")
        row.update(head_requests=head, get_requests=get)
        requests = f"HEAD {head:g}, GET {get:g}{conns('files_conns')}"
    return f"{rss:>7.0f} MiB {cpu:>6.2f}  {requests}"


def _print_blob_host(res: Results, out: dict[str, Any]) -> None:
    """GitHub's scenarios: what the blob host answered ciartfs, from mounting to unmounting."""
    lines = []
    for scenario in (GH_READ, GH_LS, GH_GREP):
        samples = res.data.get(scenario, {}).get(CIARTFS, [])
        if not any(s.get("blob_requests") is not None for s in samples):
            continue
        figures = {key: [s[key] for s in samples if s.get(key) is not None]
                   for key in ("blob_requests", "blob_requests_after_index", "blob_sent_mib", "blob_server_sent_mib",
                               "central_directory_mib", "blob_log")}
        out.setdefault("blob_host", {})[scenario] = figures
        lines.append(f"  {scenario}: requests {figures['blob_requests']} (after the central directory "
                     f"{figures['blob_requests_after_index']}), MiB delivered {[round(x, 2) for x in figures['blob_sent_mib']]} "
                     f"(the blob host wrote {[round(x, 2) for x in figures['blob_server_sent_mib']]}); central "
                     f"directory and end records {figures['central_directory_mib'][0]:.3f} MiB")
    if lines:
        print()
        print("GitHub's blob host, ciartfs runs (each run, from mounting to unmounting):")
        print("\n".join(lines))


def report(args: argparse.Namespace, res: Results, link: dict[str, Any], log_problems: list[str],
           info: dict[str, Any], more_targets: Sequence[Target] = ()) -> dict[str, Any]:
    """Print the results table and the targets (the scenarios' and `more_targets`, judged
    elsewhere: issue 17's scale scenarios); the same as a dict for --json."""
    a = args
    block = a.block_size or f"{Settings.block_size // 1024}K (ciartfs default)"
    memory = a.memory_cache or f"{Settings.memory_cache >> 20}M (ciartfs default)"
    out: dict[str, Any] = {"machine": info, "settings": {
        "size_mib": a.size_mib, "runs": a.runs, "runs_done": res.runs_done, "quick": a.quick,
        "rate_mib_s_per_connection": a.rate_mib,
        "latency_ms": a.latency_ms, "memory_cache": memory, "block_size": block,
        "grep_files": a.grep_files, "ls_files": a.ls_files, "zip_members": a.zip_members, "zip_mib": a.zip_mib,
        "peer_timeout_s": a.peer_timeout}, "link": link,
        "scenarios": [], "targets": [], "skipped": res.skipped, "failures": res.failures, "notes": res.notes,
        "ciartfs_log_problems": log_problems}
    print()
    print(f"ciartfs benchmark  {info['date']}  nproc={info['nproc']}  {info['cpu']}  {info['mem_mib']} MiB RAM  "
          f"Linux {info['kernel']}  Python {info['python']}  ciartfs {info['ciartfs_rev']}")
    print(f"file {a.size_mib} MiB; zip {a.zip_mib} MiB of {a.zip_members} members; capped link {a.rate_mib:g} MiB/s per "
          f"connection + {a.latency_ms:g} ms before the first byte (cold read capped, unzip -l); grep/ls: {a.latency_ms:g} ms, "
          f"no cap; ciartfs --memory-cache {memory}, --block-size {block}; "
          f"median of {res.runs_done} run{'s' if res.runs_done != 1 else ''}"
          + (f" (of {a.runs} asked)" if res.runs_done != a.runs else "") + (" (--quick)" if a.quick else "")
          + f"; FUSE peers get {a.peer_timeout:g} s per command")
    if "capped_stream_mib_s" in link:
        print(f"link check: uncapped = the servers directly: fake storage {link['direct_mib_s']:.0f} MiB/s, files host "
              f"{link.get('files_direct_mib_s', 0):.0f} MiB/s on one curl stream; "
              f"the latency-only proxy ({link.get('latency_shaper', '?')}) carries "
              f"{link['proxy_nocap_mib_s']:.0f} MiB/s; capped: {link['capped_stream_mib_s']:.1f} MiB/s per stream, first byte "
              f"after {link['capped_first_byte_ms']:.0f} ms")
    print()
    head = (f"{'scenario':<26} {'tool':<28} {'median s':>9} {'MiB/s':>8} {'ratio':>7} {'n':>2} {'MiB sent':>9}  "
            f"{'FUSE: peak RSS':>14} {'CPU s':>6}  requests")
    print(head)
    print("-" * len(head))
    for scenario, tools in res.data.items():
        meta = res.meta[scenario]
        first = True
        for tool, samples in tools.items():
            med, bound = Results.time_median(samples)
            row: dict[str, Any] = {"scenario": scenario, "tool": tool, "runs": len(samples), "median_s": med,
                                   "median_is_lower_bound": bound,
                                   "samples_s": [None if s.get("seconds") is None else round(s["seconds"], 4) for s in samples]}
            name = scenario if first else ""
            first = False
            if tool in res.skipped:
                print(f"{name:<26} {tool:<28} skipped: {res.skipped[tool]}")
                row["skipped"] = res.skipped[tool]
                out["scenarios"].append(row)
                continue
            if med is None:
                failed = any(f.startswith(f"{scenario} / {tool}:") for f in res.failures)
                print(f"{name:<26} {tool:<28} {'FAILED' if failed else 'not run':>9}")
                out["scenarios"].append(row)
                continue
            mibs = meta["bytes"] / MiB / med if meta["bytes"] else None
            ratio, rbound = res.ratio(scenario, tool) if tool != meta["reference"] else (None, False)
            sent = Results.median(samples, "sent_mib")
            row.update(mib_s=mibs, ratio_baseline_over_ciartfs=ratio, sent_mib=sent)
            extra = _fuse_columns(tool, samples, row) if any(s.get("cpu") is not None for s in samples) else ""
            if scenario == WARM and tool != LOCAL and not all(s.get("rss_reset") for s in samples if s.get("seconds")):
                row["note"] = "peak RSS not reset before the warm read: it includes the cold read"
            gt = "> " if bound else ""
            mib_text = "-" if not mibs else f"{'< ' if bound else ''}{mibs:.1f}"
            ratio_text = "-" if not ratio else f"{'> ' if rbound else ''}{ratio:.2f}"
            print(f"{name:<26} {tool:<28} {gt + f'{med:.3f}':>9} {mib_text:>8} {ratio_text:>7} {len(samples):>2} "
                  f"{'-' if sent is None else f'{sent:.1f}':>9}  {extra}")
            out["scenarios"].append(row)
    width = len(head)
    _print_blob_host(res, out)
    print()
    print(textwrap.fill(
        "ratio = baseline median / ciartfs median (>1: ciartfs is faster); '> N' = timed out after N s (a FUSE peer's "
        "command; not run again). ciartfs times include resolving the path on the fresh mount; curl and aria2c get the "
        "presigned storage URL directly. MiB sent = what the proxy delivered (all hosts; the uncapped scenario bypasses "
        "it); for unzip -l, from mounting to unmounting (background reads included). FUSE columns: peak RSS = VmHWM "
        "(reset before the warm re-read), CPU s = utime+stime during the command, requests = what reached the servers "
        "(ciartfs: the API host and the storage host, which is nginx's static files in grep and ls when nginx is "
        "installed; peers: the files host), conn = TCP connections opened through the "
        "proxy during the command.",
        width=width))
    print()
    tgt = [*targets(res, a.memory_cache or f"{Settings.memory_cache >> 20}M"), *more_targets]
    header = ("targets (the issue)", "measured", "need")  # also the widths when no scenario ran
    tw, mw, nw = (max(len(x) for x in col) for col in zip(header, *((t.text, t.measured, t.need) for t in tgt),
                                                            strict=True))
    print(f"{header[0]:<{tw}}  {header[1]:>{mw}}  {header[2]:>{nw}}  status")
    print("-" * (tw + mw + nw + 14))
    for t in tgt:
        print(f"{t.text:<{tw}}  {t.measured:>{mw}}  {t.need:>{nw}}  {t.status}")
        out["targets"].append({"target": t.text, "measured": t.measured, "value": t.value, "need": t.need, "status": t.status})
    print("(ratios as in the table: baseline time / ciartfs time)")
    print()
    load = info["loadavg_start"], os.getloadavg()
    print(f"load average (1 min) at start {load[0][0]:.2f}, at end {load[1][0]:.2f}: on a busy machine the numbers are noisy")
    out["machine"]["loadavg_end"] = load[1]
    by_scenario: dict[str, list[str]] = {}
    keys = ("fake", "proxy", "files")  # Bench.snapshot()
    for row in out["scenarios"]:  # the servers are not the bottleneck: their CPU during the FUSE runs
        cpus = [c for c in row.get("server_cpu_s") or [] if c]
        if cpus:
            by_scenario.setdefault(row["scenario"], []).append(
                f"{row['tool'].split()[0]} " + "/".join(f"{statistics.median(c[k] for c in cpus):.2f}" for k in keys))
    if by_scenario:
        print(f"server CPU s ({'/'.join(keys)}) during the FUSE runs (medians):")
        for scenario, parts in by_scenario.items():
            print(f"  {scenario}: {', '.join(parts)}")
    for tool, why in res.skipped.items():
        print(f"skipped {tool}: {why}")
    for msg in res.notes:
        print(f"note: {msg}")
    for msg in res.failures:
        print(f"FAILED: {msg}")
    for msg in log_problems[:10]:
        print(f"ciartfs log: {msg}")
    return out
