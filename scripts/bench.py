#!/usr/bin/env python3
"""Benchmark ciartfs against the tools people use instead (issue "Speed", first increment).

    .venv/bin/python scripts/bench.py [--quick] [--runs N] [--size-mib N] [--json PATH]

Self-contained and local: it generates seeded data in a temp dir, serves it with the bundled
fake CircleCI (in its own process, scripts/bench/fakeci.py) behind a small link-shaping proxy
(scripts/bench/proxy.py: a per-connection bandwidth cap and a delay before each response's
first byte), and runs each scenario several times against ciartfs and the baselines,
interleaved, printing medians and ratios (baseline time / ciartfs time: >1 means ciartfs is
faster). Every server binds 127.0.0.1. Everything it starts (mounts, servers, commands) is
stopped by pid in `finally`, also on Ctrl-C or SIGTERM.

Scenarios (ciartfs: a fresh mount with an empty cache dir per run, so every run is cold):
  cold read, uncapped   `cat` of a large file; the fake's storage host directly, no proxy.
                        Baselines: curl (one stream), aria2c -x8 -s8 (parallel ranges).
  cold read, capped     the same through the proxy: 25 MiB/s per connection, 20 ms.
  warm re-read          a second `cat` through the same mount. Limit: `cat` of a local copy.
  grep -rl              over a build of 2000 small files (1-20 KiB), 20 ms latency.
                        Baseline: the CircleCI docs recipe (list the artifact URLs from the
                        API, download with xargs -P4 curl, grep locally).
  ls -l                 a directory of 1000 artifacts, 20 ms latency, cold mount.
                        Baseline: listing the names from the API with curl.
A tool that is not installed is skipped with a note. The script installs nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HELPERS = HERE / "bench"
VENV_PY = REPO / ".venv" / "bin" / "python"

try:
    from ciartfs.cli import is_mounted
except ImportError:
    if VENV_PY.exists() and Path(sys.executable).resolve() != VENV_PY.resolve() and not os.environ.get("CIARTFS_BENCH_REEXEC"):
        os.environ["CIARTFS_BENCH_REEXEC"] = "1"
        os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])
    sys.exit("bench: ciartfs is not importable; run ./scripts/setup.sh, then .venv/bin/python scripts/bench.py")

PY = sys.executable
MiB = 1024 * 1024
PROJECT = ("github", "bench", "data")
BIG_BUILD, GREP_BUILD, LS_BUILD = 1, 2, 3
NEEDLE = "CIARTFS_BENCH_NEEDLE_7f3a"
SEED = 20261101
MOUNT_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# bytes -> printable text (letters, digits, spaces, newlines): grep-able "logs" from random bytes
_TEXT = bytes((b"abcdefghijklmnopqrstuvwxyz0123456789      \n" * 6)[:256])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Failed(Exception):
    """A scenario run did not produce a valid result (timeout, wrong output, exit status)."""


# -- processes we start ----------------------------------------------------------------------

class Helper:
    """A helper process (fake server, proxy) driven by JSON lines on stdin/stdout."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True, bufsize=1, start_new_session=True)
        try:
            line = self._readline(60.0)
            if not line.startswith("READY "):
                raise RuntimeError(f"{name} did not start: {line!r}; see {log_path}:\n{self.log_tail()}")
            self.ready: dict[str, Any] = json.loads(line[len("READY "):])
        except BaseException:
            self.stop()
            raise

    def _readline(self, timeout: float) -> str:
        import select
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s")
        return self.proc.stdout.readline().strip()

    def ask(self, command: dict[str, Any]) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self._readline(30.0)
        if answer.startswith("error") or not answer:
            raise RuntimeError(f"{self.name}: {command} -> {answer!r}")
        return answer

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the helper exits when its stdin closes
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        for stream in (self.proc.stdout,):
            if stream:
                stream.close()


def become_subreaper() -> None:
    """Orphans of the commands we run (curl under a killed xargs) become our children, so
    that we can reap them instead of leaving zombies to init."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_group(pgid: int, timeout: float) -> bool:
    """Wait for every process of group `pgid` (our children or orphans we adopted); True when
    none is left."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def proc_cpu(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Mount:
    """One `python -m ciartfs mount -f` process on a fresh mountpoint with a fresh cache dir."""

    count = 0

    def __init__(self, bench: Bench, api_url: str) -> None:
        Mount.count += 1
        n = Mount.count
        self.bench = bench
        self.path = bench.tmp / f"mnt{n}"
        self.cache = bench.tmp / f"cache{n}"
        self.log = bench.tmp / "logs" / f"ciartfs{n}.log"
        self.path.mkdir()
        cmd = [PY, "-m", "ciartfs", "mount", "-f", str(self.path), "--circleci-host", api_url,
               "--cache-dir", str(self.cache), "--log-file", str(self.log), "--timeout", str(bench.args.timeout),
               "--memory-cache", bench.args.memory_cache]
        if bench.args.block_size:
            cmd += ["--block-size", bench.args.block_size]
        with open(self.log.with_suffix(".stderr"), "wb") as err:
            self.proc = subprocess.Popen(cmd, env=bench.ciartfs_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        bench.mounts.append(self)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(str(self.path)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failed(f"mount did not come up (exit {self.proc.poll()}): {self.log_text()[-1500:]}")
            time.sleep(0.02)
        os.stat(self.path)  # answered by the filesystem

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def hwm_mib(self) -> float:
        return proc_hwm_kib(self.pid) / 1024

    def reset_hwm(self) -> bool:
        """Reset the peak RSS to the current RSS (Linux >= 4.0: clear_refs 5)."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def log_text(self) -> str:
        text = ""
        for p in (self.log, self.log.with_suffix(".stderr")):
            try:
                text += p.read_text(errors="replace")
            except OSError:
                pass
        return text

    def stop(self) -> None:
        """SIGTERM (ciartfs unmounts cleanly), then SIGKILL; and never leave the mount behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    log(f"  ciartfs pid {self.pid} ignored SIGTERM for 15s; killing it")
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if is_mounted(str(self.path)):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            if self in self.bench.mounts:
                self.bench.mounts.remove(self)
                self.bench.check_log(self)
            shutil.rmtree(self.cache, ignore_errors=True)


# -- data --------------------------------------------------------------------------------------

def text_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).translate(_TEXT)


def generate(data: Path, size_mib: int, grep_files: int, ls_files: int) -> dict[str, Any]:
    """Seeded data files and the manifest the fake server loads."""
    rng = random.Random(SEED)
    big = data / "big.bin"
    with open(big, "wb") as f:
        left = size_mib * MiB
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    grep_arts, needles = [], set()
    needle_idx = set(rng.sample(range(grep_files), max(1, grep_files // 300)))
    (data / "grep").mkdir()
    for i in range(grep_files):
        path = f"reports/shard-{i % 20:02d}/test-{i:04d}.log"
        body = bytearray(text_bytes(rng, rng.randint(1024, 20 * 1024)))
        if i in needle_idx:
            at = rng.randrange(len(body) - len(NEEDLE))
            body[at:at + len(NEEDLE)] = NEEDLE.encode()
            needles.add(path)
        local = data / "grep" / f"{i:04d}"
        local.write_bytes(body)
        grep_arts.append([path, str(local)])
    ls_arts, ls_sizes = [], {}
    (data / "ls").mkdir()
    for i in range(ls_files):
        name = f"file-{i:04d}.txt"
        body = text_bytes(rng, rng.randint(100, 4000))
        local = data / "ls" / name
        local.write_bytes(body)
        ls_arts.append([f"many/{name}", str(local)])
        ls_sizes[name] = len(body)
    manifest = {"project": list(PROJECT), "builds": [
        {"num": BIG_BUILD, "stop_time": "2026-11-01T10:00:00Z", "artifacts": [["big.bin", str(big)]]},
        {"num": GREP_BUILD, "stop_time": "2026-11-02T10:00:00Z", "artifacts": grep_arts},
        {"num": LS_BUILD, "stop_time": "2026-11-03T10:00:00Z", "artifacts": ls_arts},
    ]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return {"big": big, "needles": needles, "ls_sizes": ls_sizes}


# -- results -----------------------------------------------------------------------------------

class Sample(dict):  # seconds, plus optional resource figures for ciartfs runs
    pass


class Results:
    def __init__(self) -> None:
        # scenario -> tool -> list of samples; insertion order is print order
        self.data: dict[str, dict[str, list[Sample]]] = {}
        self.meta: dict[str, dict[str, Any]] = {}  # scenario -> {"bytes": n, "reference": tool}
        self.skipped: dict[str, str] = {}  # tool -> why
        self.failures: list[str] = []
        self.notes: list[str] = []

    def scenario(self, name: str, reference: str = "ciartfs", nbytes: int | None = None, tools: tuple[str, ...] = ()) -> None:
        self.data.setdefault(name, {t: [] for t in tools})
        self.meta[name] = {"bytes": nbytes, "reference": reference}

    def add(self, scenario: str, tool: str, sample: Sample) -> None:
        self.data[scenario].setdefault(tool, []).append(sample)

    @staticmethod
    def median(samples: list[Sample], key: str) -> float | None:
        values = [s[key] for s in samples if s.get(key) is not None]
        return statistics.median(values) if values else None


# -- the benchmark -----------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ciartfs-bench-"))
        (self.tmp / "logs").mkdir()
        self.mounts: list[Mount] = []
        self.helpers: list[Helper] = []
        self.running: subprocess.Popen[bytes] | None = None
        self.results = Results()
        self.log_problems: list[str] = []
        self.tools = {t: shutil.which(t) for t in ("curl", "aria2c", "xargs", "grep", "jq", "fusermount3")}
        self.ciartfs_env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRCLE", "CIARTFS_", "TASKCLUSTER_"))}
        self.ciartfs_env["XDG_CONFIG_HOME"] = str(self.tmp / "xdg-config")  # no user config file
        self.ciartfs_env["XDG_CACHE_HOME"] = str(self.tmp / "xdg-cache")
        self.profile = ""
        self.api_url = ""

    # -- setup ---------------------------------------------------------------------------

    def start_servers(self) -> None:
        a = self.args
        t = time.monotonic()
        (self.tmp / "data").mkdir()
        self.data = generate(self.tmp / "data", a.size_mib, a.grep_files, a.ls_files)
        log(f"data: {a.size_mib} MiB file, {a.grep_files} + {a.ls_files} small files in {self.tmp}/data "
            f"({time.monotonic() - t:.1f}s)")
        self.fake = Helper("fake server", [PY, "-u", str(HELPERS / "fakeci.py"), str(self.tmp / "data" / "manifest.json")],
                           self.tmp / "logs" / "fakeci.log")
        self.helpers.append(self.fake)
        self.direct = self.fake.ready
        self.proxy = Helper("proxy", [PY, "-u", str(HELPERS / "proxy.py"), f"api={self.direct['api']}",
                                      f"storage={self.direct['storage']}"], self.tmp / "logs" / "proxy.log")
        self.helpers.append(self.proxy)
        self.proxied = {k: f"http://127.0.0.1:{port}" for k, port in self.proxy.ready.items()}
        # the fake's own ThreadingHTTPServer prints a traceback when a client resets a connection
        # (aria2c does): its stderr goes to a log file, not the terminal

    def set_profile(self, name: str) -> None:
        """uncapped: straight to the fake's hosts; capped: proxy with rate cap and latency;
        latency: proxy with latency only. Sets self.api_url (what to mount / ask)."""
        if name == self.profile:
            return
        a = self.args
        if name == "uncapped":
            self.fake.ask({"publish": {"api": None, "storage": None}})
            self.proxy.ask({"rate": 0, "latency": 0})
            self.api_url = self.direct["api"]
        else:
            rate = a.rate_mib * MiB if name == "capped" else 0
            self.proxy.ask({"rate": rate, "latency": a.latency_ms / 1000})
            self.fake.ask({"publish": self.proxied})
            self.api_url = self.proxied["api"]
        self.profile = name

    def api(self, path: str) -> str:
        return f"{self.api_url}/api/v1.1/project/{'/'.join(PROJECT)}/{path}"

    def artifact_url(self, build: int, path: str) -> str:
        return f"{self.api_url}/artifacts/{'/'.join(PROJECT)}/{build}/0/{path}"

    def storage_url(self, build: int, path: str) -> str:
        """The presigned storage URL the artifact URL redirects to (resolved untimed)."""
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                              self.artifact_url(build, path)], capture_output=True, text=True, timeout=30).stdout
        code, _, location = out.partition(" ")
        if code != "302" or not location:
            raise RuntimeError(f"artifact URL did not redirect: {out!r}")
        return location

    # -- running commands ----------------------------------------------------------------

    def timed(self, argv: list[str] | str, *, cwd: Path | None = None, stdout_to_null: bool = False,
              timeout: float | None = None, mount: Mount | None = None) -> tuple[float, str]:
        """Run a command (a list, or a bash script), return (wall seconds, stdout)."""
        timeout = timeout or self.args.cmd_timeout
        if isinstance(argv, str):
            argv = ["bash", "-c", "set -eo pipefail\n" + argv]
        out = subprocess.DEVNULL if stdout_to_null else subprocess.PIPE
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.running = proc
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_running(mount)
            raise Failed(f"{shlex.join(argv)[:120]}: no result within {timeout:.0f}s") from None
        except BaseException:  # Ctrl-C, SIGTERM: the command runs in its own session, stop it here
            self.kill_running(mount)
            raise
        finally:
            self.running = None
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise Failed(f"{shlex.join(argv)[:160]}: exit {proc.returncode}: {stderr.decode(errors='replace')[-500:]}")
        return elapsed, (stdout or b"").decode(errors="replace")

    def kill_running(self, mount: Mount | None = None) -> None:
        """Kill the running command and everything in its session (bash, xargs, curl ...),
        and reap them: we are their subreaper, so none is left behind as a zombie."""
        proc = self.running
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and its children
        except ProcessLookupError:
            pass
        if not reap_group(proc.pid, 5.0):
            # stuck in a FUSE request: stopping the filesystem's process aborts the request
            for m in ([mount] if mount else list(self.mounts)):
                m.stop()
            reap_group(proc.pid, 10.0)
        proc.poll()

    def check_log(self, m: Mount) -> None:
        text = m.log_text()
        for marker in ("Traceback", " ERROR ", " WARNING "):
            if marker in text:
                line = next((ln for ln in text.splitlines() if marker.strip() in ln), marker)
                self.log_problems.append(f"{m.log.name}: {line.strip()[:200]}")
                break

    def snapshot(self) -> dict[str, float]:
        return {"fake": self.fake.cpu(), "proxy": self.proxy.cpu()}

    def ciartfs_run(self, scenario: str, mount: Mount, run: Callable[[], float], *, extra: dict[str, Any] | None = None,
                    check: Callable[[], None] | None = None) -> Sample:
        """Time one ciartfs command on `mount`, with its CPU, peak RSS and HTTP requests; the
        sample counts once `check` (untimed: is the output right?) has passed."""
        self.fake.ask({"stats": True})  # clears the request log
        proxy0 = json.loads(self.proxy.ask({"stats": True}))
        servers0 = self.snapshot()
        cpu0 = mount.cpu()
        seconds = run()
        cpu1 = mount.cpu()
        servers1 = self.snapshot()
        counts = json.loads(self.fake.ask({"stats": True}))
        proxy1 = json.loads(self.proxy.ask({"stats": True}))
        sample = Sample(seconds=seconds, cpu=cpu1 - cpu0, rss_mib=mount.hwm_mib(), api=counts.get("api", 0),
                        storage=counts.get("storage", 0),
                        server_cpu={k: round(servers1[k] - servers0[k], 2) for k in servers0})
        if self.profile != "uncapped":  # through the proxy: it counts the TCP connections too
            sample["api_conns"] = proxy1["api"]["connections"] - proxy0["api"]["connections"]
            sample["storage_conns"] = proxy1["storage"]["connections"] - proxy0["storage"]["connections"]
        sample.update(extra or {})
        if check is not None:
            check()
        self.results.add(scenario, "ciartfs", sample)
        return sample

    def attempt(self, scenario: str, tool: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Failed as e:
            msg = f"{scenario} / {tool}: {e}"
            log("  FAILED " + msg)
            self.results.failures.append(msg)
            return None

    # -- scenarios -----------------------------------------------------------------------

    def cold_read(self, scenario: str, profile: str, rnd: int, *, warm: bool) -> None:
        self.set_profile(profile)
        rel = f"{'/'.join(PROJECT)}/{BIG_BUILD}/0/big.bin"
        size = self.args.size_mib * MiB
        big_local: Path = self.data["big"]
        parts = []

        def ciartfs() -> None:
            m = Mount(self, self.api_url)
            try:
                target = m.path / "github" / rel.split("/", 1)[1]
                def same_bytes() -> None:  # untimed, first run: the bytes through the mount are the data
                    if rnd == 0:
                        self.timed(["cmp", str(target), str(big_local)], mount=m)

                s = self.ciartfs_run(scenario, m, lambda: self.timed(["cat", str(target)], stdout_to_null=True, mount=m)[0],
                                     check=same_bytes)
                parts.append(f"ciartfs {s['seconds']:.2f}s")
                if not warm:
                    return
                hwm_reset = m.reset_hwm()
                w = self.ciartfs_run(WARM, m, lambda: self.timed(["cat", str(target)], stdout_to_null=True, mount=m)[0],
                                     extra={"rss_reset": hwm_reset})
                parts.append(f"warm {w['seconds']:.3f}s")
            finally:
                m.stop()

        self.attempt(scenario, "ciartfs", ciartfs)
        if self.tools["curl"]:
            url = self.storage_url(BIG_BUILD, "big.bin")

            def curl() -> None:
                t, out = self.timed(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url])
                if int(out) != size:
                    raise Failed(f"curl fetched {out} bytes, expected {size}")
                self.results.add(scenario, CURL, Sample(seconds=t))
                parts.append(f"curl {t:.2f}s")

            self.attempt(scenario, CURL, curl)
            if self.tools["aria2c"]:
                def aria() -> None:
                    d = self.tmp / "aria2"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir()
                    try:
                        t, _ = self.timed(["aria2c", "-x8", "-s8", "--min-split-size=1M", "--file-allocation=none",
                                           "--allow-overwrite=true", "--auto-file-renaming=false", "--check-certificate=false",
                                           "--console-log-level=error", "--summary-interval=0", "--download-result=hide",
                                           "-q", "-d", str(d), "-o", "out", url])
                        got = (d / "out").stat().st_size
                        if got != size:
                            raise Failed(f"aria2c wrote {got} bytes, expected {size}")
                    finally:
                        shutil.rmtree(d, ignore_errors=True)
                    self.results.add(scenario, ARIA, Sample(seconds=t))
                    parts.append(f"aria2c {t:.2f}s")

                self.attempt(scenario, ARIA, aria)
        if warm:
            def local() -> None:
                if rnd == 0:
                    self.timed(["cat", str(big_local)], stdout_to_null=True)  # into the page cache
                t, _ = self.timed(["cat", str(big_local)], stdout_to_null=True)
                self.results.add(WARM, LOCAL, Sample(seconds=t))
                parts.append(f"local cat {t:.3f}s")

            self.attempt(WARM, LOCAL, local)
        log(f"  {scenario}: " + ", ".join(parts))

    def grep(self, rnd: int) -> None:
        self.set_profile("latency")
        expected = set(self.data["needles"])
        parts = []

        def ciartfs() -> None:
            m = Mount(self, self.api_url)
            try:
                root = m.path / PROJECT[0] / PROJECT[1] / PROJECT[2] / str(GREP_BUILD) / "0"
                out: list[str] = []

                def run() -> float:
                    t, text = self.timed(["grep", "-rl", NEEDLE, str(root)], timeout=self.args.cmd_timeout, mount=m)
                    out.append(text)
                    return t

                def check() -> None:
                    found = {os.path.relpath(line, root) for line in out[0].split("\n") if line}
                    if found != expected:
                        raise Failed(f"grep -rl found {sorted(found)[:5]}..., expected {sorted(expected)[:5]}...")

                s = self.ciartfs_run(GREP, m, run, check=check)
                parts.append(f"ciartfs {s['seconds']:.2f}s")
            finally:
                m.stop()

        self.attempt(GREP, "ciartfs", ciartfs)
        if self.tools["curl"] and self.tools["xargs"]:
            def recipe() -> None:
                d = self.tmp / "recipe"
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
                try:
                    # the recipe of https://circleci.com/docs/artifacts/ ("download all artifacts for a
                    # build"), with curl through xargs -P4 (50 URLs per curl: each reuses its connection)
                    script = (f"curl -sf -H 'Accept: application/json' {shlex.quote(self.api(f'{GREP_BUILD}/artifacts'))}"
                              " | grep -o 'https\\?://[^\"]*'"
                              " | xargs -P4 -n 50 curl -sfL --remote-name-all\n"
                              f"grep -rl {NEEDLE} . || true")
                    t, text = self.timed(script, cwd=d)
                    found = {line.removeprefix("./") for line in text.split("\n") if line}
                    want = {p.rsplit("/", 1)[1] for p in expected}
                    files = len(os.listdir(d))
                    if found != want or files != self.args.grep_files:
                        raise Failed(f"recipe downloaded {files} files and found {sorted(found)[:5]}")
                finally:
                    shutil.rmtree(d, ignore_errors=True)
                self.results.add(GREP, RECIPE, Sample(seconds=t))
                parts.append(f"recipe {t:.2f}s")

            self.attempt(GREP, RECIPE, recipe)
        log(f"  {GREP}: " + ", ".join(parts))

    def ls(self, rnd: int) -> None:
        self.set_profile("latency")
        sizes: dict[str, int] = self.data["ls_sizes"]
        parts = []

        def ciartfs() -> None:
            m = Mount(self, self.api_url)
            try:
                d = m.path / PROJECT[0] / PROJECT[1] / PROJECT[2] / str(LS_BUILD) / "0" / "many"
                out: list[str] = []

                def run() -> float:
                    t, text = self.timed(["ls", "-l", str(d)], mount=m)
                    out.append(text)
                    return t

                def check() -> None:  # every file listed, with its exact size
                    seen = {}
                    for line in out[0].splitlines():
                        f = line.split()
                        if len(f) >= 9 and f[0].startswith("-"):
                            seen[f[-1]] = int(f[4])
                    if seen != sizes:
                        wrong = [n for n in sizes if seen.get(n) != sizes[n]][:3]
                        raise Failed(f"ls -l listed {len(seen)} files; wrong or missing sizes: {wrong}")

                s = self.ciartfs_run(LS, m, run, check=check)
                parts.append(f"ciartfs {s['seconds']:.2f}s")
            finally:
                m.stop()

        self.attempt(LS, "ciartfs", ciartfs)
        if self.tools["curl"]:
            def names() -> None:
                url = shlex.quote(self.api(f"{LS_BUILD}/artifacts"))
                if self.tools["jq"]:
                    script = f"curl -sf -H 'Accept: application/json' {url} | jq -r '.[].path'"
                else:
                    script = f"curl -sf -H 'Accept: application/json' {url} | grep -o '\"path\" *: *\"[^\"]*\"'"
                t, text = self.timed(script)
                if len(text.splitlines()) != len(sizes):
                    raise Failed(f"listed {len(text.splitlines())} names, expected {len(sizes)}")
                self.results.add(LS, LS_BASE, Sample(seconds=t))
                parts.append(f"curl {t:.3f}s")

            self.attempt(LS, LS_BASE, names)
        log(f"  {LS}: " + ", ".join(parts))

    def link_check(self) -> dict[str, Any]:
        """Show the link: what the uncapped path and the proxy can carry, and that the cap
        and the latency are what they claim."""
        info: dict[str, Any] = {}
        if not self.tools["curl"]:
            return info
        size = self.args.size_mib * MiB

        def rate(url: str) -> tuple[float, float]:
            out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{time_starttransfer}",
                                  url], capture_output=True, text=True, timeout=self.args.cmd_timeout).stdout.split()
            return int(out[0]) / float(out[1]) / MiB, float(out[2])

        self.set_profile("uncapped")
        info["direct_mib_s"] = rate(self.storage_url(BIG_BUILD, "big.bin"))[0]
        self.set_profile("latency")  # the proxy without a cap: its own ceiling
        url = self.storage_url(BIG_BUILD, "big.bin")
        info["proxy_nocap_mib_s"], _ = rate(url)
        self.set_profile("capped")
        small = self.storage_url(LS_BUILD, "many/file-0000.txt")
        info["capped_first_byte_ms"] = statistics.median(rate(small)[1] for _ in range(5)) * 1000
        # 2 s worth of capped transfer, measured over the tail (after the first byte)
        rng = f"0-{min(size, 2 * self.args.rate_mib * MiB) - 1}"
        out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-r", rng, "-w", "%{size_download} %{time_total} %{time_starttransfer}",
                              self.storage_url(BIG_BUILD, "big.bin")], capture_output=True, text=True, timeout=60).stdout.split()
        info["capped_stream_mib_s"] = int(out[0]) / (float(out[1]) - float(out[2])) / MiB
        return info

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        self.start_servers()
        missing = {t: why for t, why in (("curl", "curl is not installed (apt-get install curl)"),
                                         ("aria2c", "aria2c is not installed (apt-get install aria2)"),
                                         ("xargs", "xargs is not installed (apt-get install findutils)"))
                   if not self.tools[t]}
        for label, needs in ((CURL, ("curl",)), (ARIA, ("curl", "aria2c")), (RECIPE, ("curl", "xargs")),
                             (LS_BASE, ("curl",))):
            why = "; ".join(missing[t] for t in needs if t in missing)
            if why:
                self.results.skipped[label] = why
                log(f"note: skipping the baseline {label}: {why}")
        self.link = self.link_check()
        if self.link:
            log("link: direct {direct_mib_s:.0f} MiB/s (one curl stream, no proxy); proxy without cap {proxy_nocap_mib_s:.0f} MiB/s; "
                "capped {capped_stream_mib_s:.1f} MiB/s per stream, first byte {capped_first_byte_ms:.0f} ms".format(**self.link))
        size = a.size_mib * MiB
        self.results.scenario(COLD_UNCAPPED, nbytes=size, tools=("ciartfs", CURL, ARIA))
        self.results.scenario(COLD_CAPPED, nbytes=size, tools=("ciartfs", CURL, ARIA))
        self.results.scenario(WARM, nbytes=size, tools=("ciartfs", LOCAL))
        self.results.scenario(GREP, tools=("ciartfs", RECIPE))
        self.results.scenario(LS, tools=("ciartfs", LS_BASE))
        started = time.monotonic()
        for rnd in range(a.runs):
            if rnd and time.monotonic() - started > a.budget_s:
                note = f"stopped after {rnd} of {a.runs} runs: the time budget ({a.budget_s:.0f}s) is spent"
                self.results.notes.append(note)
                log("note: " + note)
                break
            log(f"run {rnd + 1}/{a.runs}")
            self.cold_read(COLD_UNCAPPED, "uncapped", rnd, warm=True)
            self.cold_read(COLD_CAPPED, "capped", rnd, warm=False)
            self.grep(rnd)
            self.ls(rnd)
        self.elapsed = time.monotonic() - started

    def cleanup(self) -> None:
        """Stop everything this run started, by pid. Bounded (each stop has a timeout), and not
        interruptible by a second Ctrl-C, which would leave mounts behind."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._cleanup()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _cleanup(self) -> None:
        self.kill_running()
        for m in list(self.mounts):
            try:
                m.stop()
            except Exception as e:  # keep cleaning up
                log(f"cleanup: {m.path}: {e}")
        for h in reversed(self.helpers):
            try:
                h.stop()
            except Exception as e:
                log(f"cleanup: {h.name}: {e}")
        while True:  # any orphan we adopted and that has exited
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        leftover = [p for p in self.tmp.glob("mnt*") if is_mounted(str(p))]
        for p in leftover:
            subprocess.run(["fusermount3", "-u", "-z", str(p)], capture_output=True)
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


COLD_UNCAPPED = "cold read, uncapped"
COLD_CAPPED = "cold read, capped"
WARM = "warm re-read"
GREP = "grep -rl, 2000 small files"
LS = "ls -l, 1000 artifacts"
CURL = "curl (1 stream)"
ARIA = "aria2c -x8 -s8"
LOCAL = "cat local file"
RECIPE = "docs recipe (xargs -P4 curl)"
LS_BASE = "curl API list (names)"


# -- report ----------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    def first_line(cmd: list[str]) -> str | None:
        if not shutil.which(cmd[0]):
            return None
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) // 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpu": cpu, "mem_mib": mem, "kernel": platform.release(),
        "python": platform.python_version(), "ciartfs_rev": rev or "?",
        "loadavg_start": os.getloadavg(),
        "curl": first_line(["curl", "--version"]), "aria2c": first_line(["aria2c", "--version"]),
    }


def report(bench: Bench, info: dict[str, Any]) -> dict[str, Any]:
    a, res = bench.args, bench.results
    out: dict[str, Any] = {"machine": info, "settings": {
        "size_mib": a.size_mib, "runs": a.runs, "quick": a.quick, "rate_mib_s_per_connection": a.rate_mib,
        "latency_ms": a.latency_ms, "memory_cache": a.memory_cache, "block_size": a.block_size or "1M (default)",
        "grep_files": a.grep_files, "ls_files": a.ls_files}, "link": getattr(bench, "link", {}),
        "scenarios": [], "skipped": res.skipped, "failures": res.failures, "notes": res.notes,
        "ciartfs_log_problems": bench.log_problems}
    print()
    print(f"ciartfs benchmark  {info['date']}  nproc={info['nproc']}  {info['cpu']}  {info['mem_mib']} MiB RAM  "
          f"Linux {info['kernel']}  Python {info['python']}  ciartfs {info['ciartfs_rev']}")
    print(f"file {a.size_mib} MiB; capped link {a.rate_mib:g} MiB/s per connection + {a.latency_ms:g} ms before the first "
          f"byte; grep/ls: {a.latency_ms:g} ms, no cap; ciartfs --memory-cache {a.memory_cache} (holds the file for the "
          f"warm re-read), --block-size {a.block_size or '1M (default)'}; median of {a.runs} run{'s' if a.runs != 1 else ''}"
          + (" (--quick)" if a.quick else ""))
    if out["link"]:
        lk = out["link"]
        print(f"link check: uncapped = the fake's storage host directly, {lk['direct_mib_s']:.0f} MiB/s on one curl stream; "
              f"the proxy without a cap carries {lk['proxy_nocap_mib_s']:.0f} MiB/s; capped: {lk['capped_stream_mib_s']:.1f} "
              f"MiB/s per stream, first byte after {lk['capped_first_byte_ms']:.0f} ms")
    print()
    head = f"{'scenario':<28} {'tool':<30} {'median s':>9} {'MiB/s':>8} {'ratio':>7}  {'n':>2}  {'ciartfs: peak RSS':>17} {'CPU s':>6}  requests"
    print(head)
    print("-" * len(head))
    for scenario, tools in res.data.items():
        meta = res.meta[scenario]
        ref = Results.median(tools.get(meta["reference"], []), "seconds")
        first = True
        for tool, samples in tools.items():
            med = Results.median(samples, "seconds")
            row: dict[str, Any] = {"scenario": scenario, "tool": tool, "runs": len(samples),
                                   "samples_s": [round(s["seconds"], 4) for s in samples], "median_s": med}
            name = scenario if first else ""
            first = False
            if tool in res.skipped:
                print(f"{name:<28} {tool:<30} skipped: {res.skipped[tool]}")
                row["skipped"] = res.skipped.get(tool)
                out["scenarios"].append(row)
                continue
            if med is None:
                failed = any(f.startswith(f"{scenario} / {tool}:") for f in res.failures)
                print(f"{name:<28} {tool:<30} {'FAILED' if failed else 'not run':>9}")
                out["scenarios"].append(row)
                continue
            mibs = meta["bytes"] / MiB / med if meta["bytes"] else None
            ratio = (med / ref) if (ref and tool != meta["reference"]) else None
            row["mib_s"] = mibs
            row["ratio_baseline_over_ciartfs"] = ratio
            extra = ""
            if tool == "ciartfs":
                rss = Results.median(samples, "rss_mib")
                cpu = Results.median(samples, "cpu")
                api = Results.median(samples, "api")
                sto = Results.median(samples, "storage")
                api_c = Results.median(samples, "api_conns")
                sto_c = Results.median(samples, "storage_conns")
                row.update(peak_rss_mib=rss, cpu_s=cpu, api_requests=api, storage_requests=sto,
                           api_connections=api_c, storage_connections=sto_c,
                           server_cpu_s=[s.get("server_cpu") for s in samples])
                if scenario == WARM and not all(s.get("rss_reset") for s in samples):
                    row["note"] = "peak RSS not reset before the warm read: it includes the cold read"
                conns = lambda c: "" if c is None else f" ({c:g} conn)"  # noqa: E731
                extra = f"{rss:>13.0f} MiB {cpu:>6.2f}  api {api:g}{conns(api_c)}, storage {sto:g}{conns(sto_c)}"
            print(f"{name:<28} {tool:<30} {med:>9.3f} {(f'{mibs:.1f}' if mibs else '-'):>8} "
                  f"{(f'{ratio:.2f}' if ratio else '-'):>7}  {len(samples):>2}  {extra}")
            out["scenarios"].append(row)
    print()
    print(textwrap.fill(
        "ratio = baseline median / ciartfs median (>1: ciartfs is faster). ciartfs times include resolving the path on the "
        "fresh mount; curl and aria2c get the presigned storage URL directly. CPU s = the ciartfs process's utime+stime "
        "during the command; peak RSS = its VmHWM (reset before the warm re-read); requests = what reached the fake server "
        "(conn = TCP connections opened through the proxy; the uncapped scenario bypasses it).", width=len(head)))
    load = info.get("loadavg_start"), os.getloadavg()
    print(f"load average (1 min) at start {load[0][0]:.2f}, at end {load[1][0]:.2f}: on a busy machine the numbers are noisy")
    out["machine"]["loadavg_end"] = load[1]
    for row in out["scenarios"]:
        if row["tool"] == "ciartfs" and row.get("server_cpu_s"):
            cpus = [c for c in row["server_cpu_s"] if c]
            if cpus:
                fake = statistics.median(c["fake"] for c in cpus)
                proxy = statistics.median(c["proxy"] for c in cpus)
                print(f"  during ciartfs {row['scenario']}: fake server CPU {fake:.2f} s, proxy CPU {proxy:.2f} s")
    for tool, why in res.skipped.items():
        print(f"skipped {tool}: {why}")
    for msg in res.notes:
        print(f"note: {msg}")
    for msg in res.failures:
        print(f"FAILED: {msg}")
    for msg in bench.log_problems[:10]:
        print(f"ciartfs log: {msg}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller file and fewer runs (about 2 minutes)")
    p.add_argument("--runs", type=int, help="runs per scenario and tool (default 5, --quick 2)")
    p.add_argument("--size-mib", type=int, help="size of the large file (default 256, --quick 64)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--rate-mib", type=float, default=25.0, help="capped scenarios: MiB/s per connection (default 25)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="ms before each response's first byte (default 20)")
    p.add_argument("--memory-cache", default="1G", help="ciartfs --memory-cache (default 1G: holds the file)")
    p.add_argument("--block-size", help="ciartfs --block-size (default: ciartfs's own, 1M)")
    p.add_argument("--timeout", type=float, default=30.0, help="ciartfs --timeout (default 30)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs)")
    args = p.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 5)
    args.size_mib = args.size_mib or (64 if args.quick else 256)
    if args.runs < 1 or args.size_mib < 1:
        p.error("--runs and --size-mib must be at least 1")
    args.grep_files, args.ls_files = 2000, 1000
    # a command that takes longer than this has failed (a 1 MiB/s link would be a failure too)
    args.cmd_timeout = 120.0 + args.size_mib / max(1.0, args.rate_mib) * 3
    # stop starting new runs after this (the script is bounded in time)
    args.budget_s = 90.0 if args.quick else 480.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        sys.exit("bench: needs FUSE (/dev/fuse and fusermount3 from the fuse3 package)")

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (cmd &)
    become_subreaper()
    info = machine_info()
    bench = Bench(args)
    status = 0
    try:
        bench.run()
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'SIGINT'}): cleaning up; results so far follow")
        status = 130
    except Exception:
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        bench.cleanup()
    out = report(bench, info)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if bench.results.failures and status == 0:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
