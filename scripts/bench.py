#!/usr/bin/env python3
"""Benchmark ciartfs against the tools people use instead (issue "Speed").

    .venv/bin/python scripts/bench.py [--quick] [--runs N] [--size-mib N] [--no-peers] [--json PATH]
                                      [--only SCENARIO[,...]]

Self-contained and local: it generates seeded data in a temp dir, serves it with the bundled
fake CircleCI (in its own process, scripts/benchlib/fakeci.py) and, for the FUSE peers, as plain
files with an HTML autoindex (scripts/benchlib/files.py), both behind a link-shaping proxy that
adds a delay before each response's first byte, caps each connection's bandwidth and counts the
bytes it delivers. The capped scenarios use our own relay (scripts/benchlib/proxy.py: a token
bucket per connection): nginx's `limit_rate` grants each request its first second at full speed
(rate x (elapsed + 1)), so ranged requests under 25 MiB would not be capped at all. The
latency-only scenarios (grep, ls: thousands of small requests) use nginx, when it is installed,
as the issue did (scripts/benchlib/nginx.py: the echo module's `echo_sleep` for the delay): it
relays the API and serves the artifact bytes itself, by the presigned URL's path, as the
"artifact server" the fake API redirects to. On 2 shared cores, proxy.py and the fake's storage
host cost ~0.4 CPU-s of the ~1 s an `ls -l` of 1000 artifacts takes. It runs each scenario several times against
ciartfs and the baselines, interleaved, printing medians, ratios (baseline time / ciartfs
time: >1 means ciartfs is faster) and the issue's targets, met or not. Every server binds
127.0.0.1. Everything it starts (mounts, servers, commands) is stopped by pid in `finally`,
also on Ctrl-C or SIGTERM.

Scenarios (every FUSE tool: a fresh mount with an empty cache dir per run, so every run is cold):
  cold read, uncapped   `cat` of a large file (default 512 MiB); the servers directly, no proxy.
                        Baselines: curl (one stream), aria2c -x8 -s8 (parallel ranges).
  cold read, capped     the same through the proxy: 25 MiB/s per connection, 20 ms.
  cold read, HTTPS      uncapped, from the fake's storage host over HTTPS (a local CA made
                        with trustme, trusted by ciartfs through SSL_CERT_FILE and by curl
                        through --cacert). Baseline: curl.
  warm re-read          a second `cat` through the same mount, ciartfs with its default
                        settings (memory cache 256M): the page cache serves it. Limit: `cat`
                        of a local copy.
  grep -rl              over a build of 2000 small files (1-20 KiB), 20 ms latency.
                        Baseline: the CircleCI docs recipe (list the artifact URLs from the
                        API, download with xargs -P4 curl, grep locally).
  ls -l                 a directory of 1000 artifacts, 20 ms latency.
                        Baseline: listing the names from the API with curl.
  unzip -l              a zip of 2000 stored members (default 200 MiB), capped link: time
                        and the bytes the servers sent. Baseline: curl the zip, then unzip -l.
  tc-group              a Taskcluster task group of 5000 tasks (--tc-tasks), each with one log
                        of 1-8 KiB, made by the fake as asked for (never stored), 20 ms latency
                        through proxy.py (nginx's static storage does not hold them):
                        `ls` of the group (baseline: the task ids from the API with curl), and
                        `grep -rl` over it (baseline: list the tasks from the API, each task's
                        artifacts, download them with xargs -P8 curl, grep locally). ciartfs only.
GitHub Actions (issue 18), capped link, ciartfs only (no peer reads zip members); the fake's
GitHub API and its Azure-like blob host, which refuses Authorization (403) and ignores suffix
ranges; the artifacts' zips are made on the fly by the fake (benchlib/ghdata.py), never stored.
Baseline: the `gh run download` way, timed whole: `curl -L` the zip from the API's /zip URL with
the token (curl drops it on the redirect to the blob host), `unzip` it all, then the tool. The
blob host's answers are counted from mounting to unmounting (read-ahead still running counts):
  gh-read               `sha256sum` of one 1 MiB member of a 500 MiB artifact (500 stored
                        members): time, and the bytes the blob host delivered (<= 1.5 MiB plus
                        the central directory).
  gh-ls                 `ls -R` of a 10,000-member artifact: the blob host's requests after the
                        central directory and end records were all delivered (must be 0).
  gh-grep               `grep -rl` over all 2000 deflated members (~200 MiB decoded, 38 MiB
                        stored) for a string only one of them holds (every other is read whole).
`--only` runs some scenarios alone (cold-uncapped includes the warm re-read).
Scale (issue 17), after the rest, each against the issue's own targets (no baseline); the fake
CircleCI in-process, no added latency, a fresh mount each (scripts/benchlib/flat.py):
  flat                  one directory of 10k and of 100k artifacts, small (1000 B) and large
                        (4 MiB): `ls`, `find -name`, then `ls -l`: time, storage requests and
                        bytes, peak RSS (--quick: 10k only).
  memory                RSS per listed artifact at 100k, what drop_caches gives back, a re-list
                        after forget against a warm one, a browse of 500 builds of 1000
                        artifacts (--quick: 10k).
  disk-cache            the store alone (scripts/benchlib/diskcache.py): start-up with 2.6M
                        entries (a full 10 GiB cache of 4K blocks), index RAM per entry, an
                        eviction pass at two store sizes (--quick: 260k entries).
FUSE peers, in every scenario: rclone mount (--vfs-cache-mode full) and httpdirfs (--cache),
on the files host. A peer's command gets --peer-timeout seconds (default 90): a timeout is
reported as "> N s" and that scenario is not run again for that peer.

Wants these Debian packages (a missing tool is skipped with a note; the script installs
nothing): fuse3 (needed), curl, aria2, jq, unzip, rclone, httpdirfs, nginx and libnginx-mod-http-echo.
    apt-get install -y fuse3 curl aria2 jq unzip rclone httpdirfs nginx libnginx-mod-http-echo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HELPERS = HERE / "benchlib"
VENV_PY = REPO / ".venv" / "bin" / "python"

try:
    from ciartfs.cli.mountpoint import is_mounted
except ImportError:
    if VENV_PY.exists() and Path(sys.executable).resolve() != VENV_PY.resolve() and not os.environ.get("CIARTFS_BENCH_REEXEC"):
        os.environ["CIARTFS_BENCH_REEXEC"] = "1"
        os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])
    sys.exit("bench: ciartfs is not importable; run ./scripts/setup.sh, then .venv/bin/python scripts/bench.py")

# scripts/benchlib/: the helper package (scripts/ is on sys.path when this file runs)
from benchlib import ghdata  # noqa: E402
from benchlib.common import Failed, MiB, TimedOut, log, nginx_shaper_available, proc_tree_cpu  # noqa: E402
from benchlib.data import (  # noqa: E402
    BIG_BUILD,
    BIG_PATH,
    GREP_BUILD,
    LS_BUILD,
    NEEDLE,
    PROJECT,
    TC_GROUP_ID,
    ZIP_BUILD,
    ZIP_PATH,
    generate,
)
from benchlib.mounts import PEERS, CiartfsMount, FuseMount, PeerMount  # noqa: E402
from benchlib.report import (  # noqa: E402
    ARIA,
    CIARTFS,
    COLD_CAPPED,
    COLD_HTTPS,
    COLD_UNCAPPED,
    CURL,
    GH_BASE,
    GH_GREP,
    GH_LS,
    GH_READ,
    GREP,
    LOCAL,
    LS,
    LS_BASE,
    RECIPE,
    TC_GREP,
    TC_LS,
    TC_LS_BASE,
    TC_RECIPE,
    UNZIP,
    UNZIP_BASE,
    WARM,
    Results,
    Sample,
    Target,
    machine_info,
    report,
)

PY = sys.executable
# --only's names, in run order
SCALE = ("flat", "memory", "disk-cache")  # issue 17's, run after the others (run_scale)
SCENARIOS = ("cold-uncapped", "cold-capped", "cold-https", "grep", "ls", "unzip", "gh-read", "gh-ls", "gh-grep",
             "tc-group", *SCALE)


def log_short(tool: str) -> str:
    return tool.split()[0].rstrip(",")


# -- processes we start ----------------------------------------------------------------------

class Helper:
    """A helper process (fake server, files host, proxy) driven by JSON lines on stdin/stdout."""

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
        return proc_tree_cpu(self.proc.pid)

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



def check_unzip_listing(text: str, expected: dict[str, int]) -> None:
    """`unzip -l` listed exactly the zip's members, with their sizes."""
    listed: dict[str, int] = {}
    for line in text.splitlines():  # "   102400  2026-11-04 10:00   pkg/mod-0000/data-0000.bin"
        f = line.split(None, 3)
        if len(f) == 4 and f[0].isdigit() and f[1][:1].isdigit() and ":" in f[2]:
            listed[f[3]] = int(f[0])
    if listed != expected:
        wrong = sorted(n for n in expected.keys() | listed.keys() if listed.get(n) != expected.get(n))[:3]
        raise Failed(f"unzip -l listed {len(listed)} members, expected {len(expected)}; wrong or missing: {wrong}")


def requests_after_index(blob_log: list[list[Any]], cd_offset: int, size: int) -> int:
    """How many of the blob host's answers (in arrival order: [Range, status, bytes sent]) came
    after the archive's central directory and end records, [cd_offset, size), had all been
    delivered by 206 answers (a 200 to an ignored suffix range is cut short: it counts as
    delivering nothing). Counted from the start when they never were."""
    have: list[tuple[int, int]] = []
    for i, (rng, status, _sent) in enumerate(blob_log):
        if covered(have, cd_offset, size):
            return len(blob_log) - i
        if status == 206 and rng.startswith("bytes=") and not rng.startswith("bytes=-"):
            lo, _, hi = rng[6:].partition("-")
            have.append((int(lo), int(hi) + 1 if hi else size))
    return 0 if covered(have, cd_offset, size) else len(blob_log)


def covered(ranges: list[tuple[int, int]], lo: int, hi: int) -> bool:
    """[lo, hi) lies within the union of `ranges` ([start, end) pairs)."""
    for start, end in sorted(ranges):
        if start > lo:
            return False
        lo = max(lo, end)
        if lo >= hi:
            return True
    return lo >= hi


# -- the benchmark -----------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ciartfs-bench-"))
        (self.tmp / "logs").mkdir()
        self.mounts: list[FuseMount] = []
        self.helpers: list[Helper] = []
        self.running: subprocess.Popen[bytes] | None = None
        self.results = Results()
        self.log_problems: list[str] = []
        self.link: dict[str, Any] = {}
        self.tools = {t: shutil.which(t) for t in ("curl", "aria2c", "xargs", "grep", "jq", "unzip", "fusermount3")}
        self.peers: list[type[PeerMount]] = [] if args.no_peers else [p for p in PEERS if p.available()]
        self.timed_out: set[tuple[str, str]] = set()  # (scenario, peer) not to run again
        # every FUSE process: no user config, no CI credentials from our environment
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CIRCLE", "CIARTFS_", "TASKCLUSTER_", "RCLONE_", "GH_", "GITHUB_"))}
        self.env["XDG_CONFIG_HOME"] = str(self.tmp / "xdg-config")
        self.env["XDG_CACHE_HOME"] = str(self.tmp / "xdg-cache")
        self.profile = ""
        self.api_url = ""
        self.files_url = ""

    # -- setup ---------------------------------------------------------------------------

    def start_servers(self) -> None:
        a = self.args
        t = time.monotonic()
        (self.tmp / "data").mkdir()
        self.data = generate(self.tmp / "data", a.size_mib, a.grep_files, a.ls_files, a.zip_members, a.zip_mib, a.tc_tasks)
        log(f"data: {a.size_mib} MiB file, {a.grep_files} + {a.ls_files} small files, a {a.zip_mib} MiB zip of "
            f"{a.zip_members} members in {self.tmp}/data, a {a.tc_tasks}-task group made on the fly "
            f"({time.monotonic() - t:.1f}s)")
        manifest = str(self.tmp / "data" / "manifest.json")
        tls_pem = self.make_certificate()
        # each server in its own process: the benchmark process never serves HTTP while it reads
        # through a FUSE mount, and the servers do not share a GIL
        self.fake = Helper("fake server", [PY, "-u", str(HELPERS / "fakeci.py"), manifest, str(a.gh_large_mib), tls_pem],
                           self.tmp / "logs" / "fakeci.log")
        self.helpers.append(self.fake)
        self.gh: dict[str, Any] = self.fake.ready["github"]  # the GitHub data's owner, repo, token, ids
        self.env["GH_TOKEN"] = self.gh["token"]
        self.gh_expected = ghdata.expected(ghdata.archives(large_mib=a.gh_large_mib))
        self.files = Helper("files host", [PY, "-u", str(HELPERS / "files.py"), manifest], self.tmp / "logs" / "files.log")
        self.helpers.append(self.files)
        self.direct = {**self.fake.ready, **self.files.ready}
        upstreams = [f"api={self.direct['api']}", f"storage={self.direct['storage']}", f"files={self.direct['files']}",
                     f"blob={self.direct['blob']}"]
        self.capped_proxy = Helper("proxy", [PY, "-u", str(HELPERS / "proxy.py"), *upstreams], self.tmp / "logs" / "proxy.log")
        self.helpers.append(self.capped_proxy)
        self.latency_proxy = self.capped_proxy
        why = "is not installed (apt-get install nginx libnginx-mod-http-echo)"
        if nginx_shaper_available():
            # nginx serves the artifact bytes itself (the fake's blobs, by the presigned URL's path)
            static = [f"storage=dir:{self.fake.ready['blob_root']}" if u.startswith("storage=") else u
                      for u in upstreams if not u.startswith("blob=")]  # (GitHub's scenarios are capped: proxy.py)
            try:
                self.latency_proxy = Helper("nginx", [PY, "-u", str(HELPERS / "nginx.py"), *static],
                                            self.tmp / "logs" / "nginx.log")
                self.helpers.append(self.latency_proxy)
            except RuntimeError as e:
                why = f"did not start ({e})"
        if self.latency_proxy is self.capped_proxy:
            log(f"note: nginx with its echo module {why}: grep and ls go through scripts/benchlib/proxy.py, "
                "whose CPU competes with the filesystem's on 2 cores")
        self.proxy = self.capped_proxy  # the one in use (set_profile)

    def make_certificate(self) -> str:
        """A local CA (trustme) and the fake storage host's certificate for 127.0.0.1: the CA
        goes to every FUSE process (SSL_CERT_FILE, which httpx and so ciartfs honour) and to
        curl (--cacert); returns the server's chain and key, one PEM file."""
        import trustme  # a test dependency (pyproject's [test]); ./scripts/setup.sh installs it

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca_pem = self.tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_pem))
        server_pem = self.tmp / "storage-tls.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
        self.env["SSL_CERT_FILE"] = str(self.ca_pem)
        return str(server_pem)

    def set_profile(self, name: str) -> None:
        """uncapped: straight to the servers; https: the same, storage over HTTPS; capped: proxy
        with rate cap and latency; latency: proxy with latency only (nginx when installed); relay:
        proxy.py with latency only (the storage of made-on-the-fly artifacts, which nginx's static
        files do not hold). Sets self.api_url and self.files_url (what to mount / ask)."""
        if name == self.profile:
            return
        a = self.args
        if name in ("uncapped", "https"):
            storage = self.direct["storage_tls"] if name == "https" else None
            self.fake.ask({"publish": {"api": None, "storage": storage, "blob": None}})
            self.api_url, self.files_url = self.direct["api"], self.direct["files"]
        else:
            self.proxy = self.latency_proxy if name == "latency" else self.capped_proxy
            rate = a.rate_mib * MiB if name == "capped" else 0
            self.proxy.ask({"rate": rate, "latency": a.latency_ms / 1000})
            via = {k: f"http://127.0.0.1:{port}" for k, port in self.proxy.ready.items()}
            self.fake.ask({"publish": {"api": via["api"], "storage": via["storage"], "blob": via.get("blob")}})
            self.api_url, self.files_url = via["api"], via["files"]
        self.profile = name

    @property
    def proxied(self) -> bool:
        """The servers are reached through the proxy (which counts bytes and connections)."""
        return self.profile not in ("uncapped", "https")

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
              timeout: float | None = None, mount: FuseMount | None = None) -> tuple[float, str]:
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
            raise TimedOut(f"{shlex.join(argv)[:120]}: no result within {timeout:.0f}s", timeout) from None
        except BaseException:  # Ctrl-C, SIGTERM: the command runs in its own session, stop it here
            self.kill_running(mount)
            raise
        finally:
            self.running = None
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise Failed(f"{shlex.join(argv)[:160]}: exit {proc.returncode}: {stderr.decode(errors='replace')[-500:]}")
        return elapsed, (stdout or b"").decode(errors="replace")

    def kill_running(self, mount: FuseMount | None = None) -> None:
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

    def check_log(self, m: FuseMount) -> None:
        text = m.log_text()
        for marker in ("Traceback", " ERROR ", " WARNING "):
            if marker in text:
                line = next((ln for ln in text.splitlines() if marker.strip() in ln), marker)
                self.log_problems.append(f"{m.log.name}: {line.strip()[:200]}")
                break

    def snapshot(self) -> dict[str, float]:
        return {"fake": self.fake.cpu(), "proxy": self.proxy.cpu(), "files": self.files.cpu()}

    def proxy_stats(self) -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = json.loads(self.proxy.ask({"stats": True}))
        return stats

    def proxy_bytes(self) -> int:
        """Bytes the proxy has delivered to clients so far, all upstreams."""
        return sum(v["bytes"] for v in self.proxy_stats().values())

    def limit(self, tool: str) -> float:
        return float(self.args.cmd_timeout if tool == CIARTFS else self.args.peer_timeout)

    def mount(self, tool: str, build: int, *, taskcluster: bool = False) -> FuseMount:
        """A fresh mount (empty cache dir) of `tool`; peers mount `build`'s directory only.
        `taskcluster`: ciartfs also shows the fake's Taskcluster queue."""
        a = self.args
        if tool == CIARTFS:
            options = ["--timeout", str(a.timeout), "--github-api-url", self.api_url]
            if a.memory_cache:
                options += ["--memory-cache", a.memory_cache]
            if taskcluster:
                options += ["--taskcluster-root-url", self.api_url]
            if a.block_size:
                options += ["--block-size", a.block_size]
            return CiartfsMount(self.tmp, self.mounts, self.env, python=PY, api_url=self.api_url, options=options,
                                on_stop=self.check_log)
        peer = next(p for p in self.peers if p.tool == tool)
        return peer(self.tmp, self.mounts, self.env, url=f"{self.files_url}/{build}/")

    def measure(self, scenario: str, tool: str, mount: FuseMount, run: Callable[[], float], *,
                extra: dict[str, Any] | None = None) -> Sample:
        """Time one command on a FUSE mount, with the filesystem's CPU and peak RSS, the requests
        that reached the servers and the bytes the proxy delivered. The caller adds the sample
        once it has checked the output (untimed). A peer's timeout is recorded here, as a result."""
        before = json.loads(self.fake.ask({"stats": True}))  # clears the request counters
        self.files.ask({"stats": True})
        proxy0 = self.proxy_stats()
        servers0 = self.snapshot()
        cpu0 = mount.cpu()
        try:
            seconds = run()
        except TimedOut as e:
            if tool != CIARTFS:
                self.results.add(scenario, tool, Sample(seconds=None, timeout=e.limit))
                self.timed_out.add((scenario, tool))
                e.recorded = True
            raise
        cpu1 = mount.cpu()
        servers1 = self.snapshot()
        fake = json.loads(self.fake.ask({"stats": True}))
        files = json.loads(self.files.ask({"stats": True}))
        proxy1 = self.proxy_stats()
        sample = Sample(seconds=seconds, cpu=cpu1 - cpu0, rss_mib=mount.hwm_mib(),
                        server_cpu={k: round(servers1[k] - servers0[k], 2) for k in servers0})
        if tool == CIARTFS:
            storage = fake.get("storage", 0)
            if self.proxied:  # nginx may serve storage itself: count at the proxy
                storage = proxy1["storage"]["requests"] - proxy0["storage"]["requests"]
            sample.update(api=fake.get("api", 0), storage=storage)
        else:
            sample.update(head=files["HEAD"], get=files["GET"])
        if self.proxied:  # through the proxy: it counts connections and bytes
            for host in ("api", "storage", "files"):
                sample[f"{host}_conns"] = proxy1[host]["connections"] - proxy0[host]["connections"]
            sample["sent_mib"] = sum(proxy1[h]["bytes"] - proxy0[h]["bytes"] for h in proxy1) / MiB
        sample["blob_log"] = before["blob_log"] + fake["blob_log"]  # (GitHub's blob host: since the mount)
        sample.update(extra or {})
        return sample

    def attempt(self, scenario: str, tool: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Failed as e:
            msg = f"{scenario} / {tool}: {e}"
            log("  FAILED " + msg)
            self.results.failures.append(msg)
            return None

    def fresh(self, scenario: str, tool: str, build: int, body: Callable[[FuseMount, Path], None], *,
              where: Callable[[FuseMount], Path] | None = None, taskcluster: bool = False) -> None:
        """Run `body(mount, build's directory)` on a fresh, cold mount of `tool`, then stop the
        mount. A failure is recorded as one; a peer's timeout as a result (by measure()).
        `where`: the directory to give instead of the build's; `taskcluster`: ciartfs also shows
        the fake's Taskcluster queue."""
        if (scenario, tool) in self.timed_out:
            return

        def go() -> None:
            m = self.mount(tool, build, taskcluster=taskcluster)
            try:
                body(m, where(m) if where else m.root(build))
            except TimedOut as e:
                if not e.recorded:
                    raise
                log(f"  {scenario} / {tool}: {e}: reported as > {e.limit:.0f} s, not run again")
            finally:
                m.stop()

        self.attempt(scenario, tool, go)

    def baseline(self, scenario: str, tool: str, fn: Callable[[], float], parts: list[str]) -> None:
        """One run of a non-FUSE tool: `fn` runs it, checks its output, returns its seconds."""
        def go() -> None:
            b0 = self.proxy_bytes()
            seconds = fn()
            sample = Sample(seconds=seconds)
            if self.proxied:
                sample["sent_mib"] = (self.proxy_bytes() - b0) / MiB
            self.results.add(scenario, tool, sample)
            parts.append(f"{log_short(tool)} {seconds:.3f}s")

        self.attempt(scenario, tool, go)

    # -- scenarios -----------------------------------------------------------------------

    def cold_read(self, scenario: str, profile: str, rnd: int, *, warm: bool) -> None:
        self.set_profile(profile)
        size = self.args.size_mib * MiB
        big_local: Path = self.data["big"]
        parts: list[str] = []

        def body(m: FuseMount, root: Path) -> None:
            target = str(root / BIG_PATH)
            lim = self.limit(m.tool)

            def cat() -> float:
                return self.timed(["cat", target], stdout_to_null=True, mount=m, timeout=lim)[0]

            cold = self.measure(scenario, m.tool, m, cat)
            hot = None
            if warm:
                reset = m.reset_hwm()
                hot = self.measure(WARM, m.tool, m, cat, extra={"rss_reset": reset})
            # untimed: what the cold read fetched (and the tool kept) is the data, byte for byte
            self.timed(["cmp", target, str(big_local)], mount=m, timeout=lim)
            self.results.add(scenario, m.tool, cold)
            parts.append(f"{log_short(m.tool)} {cold['seconds']:.2f}s")
            if hot is not None:
                self.results.add(WARM, m.tool, hot)
                parts.append(f"warm {hot['seconds']:.3f}s")

        self.fresh(scenario, CIARTFS, BIG_BUILD, body)
        https = profile == "https"
        if self.tools["curl"]:
            url = self.storage_url(BIG_BUILD, BIG_PATH)
            trust = ["--cacert", str(self.ca_pem)] if https else []

            def curl() -> float:
                t, out = self.timed(["curl", "-sf", *trust, "-o", "/dev/null", "-w", "%{size_download}", url])
                if int(out) != size:  # to /dev/null (its own speed): the byte count is the check
                    raise Failed(f"curl fetched {out} bytes, expected {size}")
                return t

            self.baseline(scenario, CURL, curl, parts)
            if self.tools["aria2c"] and not https:
                def aria() -> float:
                    d = self.tmp / "aria2"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir()
                    try:
                        t, _ = self.timed(["aria2c", "-x8", "-s8", "--min-split-size=1M", "--file-allocation=none",
                                           "--allow-overwrite=true", "--auto-file-renaming=false", "--check-certificate=false",
                                           "--console-log-level=error", "--summary-interval=0", "--download-result=hide",
                                           "-q", "-d", str(d), "-o", "out", url])
                        self.timed(["cmp", str(d / "out"), str(big_local)])  # untimed
                    finally:
                        shutil.rmtree(d, ignore_errors=True)
                    return t

                self.baseline(scenario, ARIA, aria, parts)
        for peer in [] if https else self.peers:  # (they mount the plain files host)
            self.fresh(scenario, peer.tool, BIG_BUILD, body)
        if warm:
            def local() -> float:
                if rnd == 0:
                    self.timed(["cat", str(big_local)], stdout_to_null=True)  # into the page cache
                return self.timed(["cat", str(big_local)], stdout_to_null=True)[0]

            self.baseline(WARM, LOCAL, local, parts)
        log(f"  {scenario}: " + ", ".join(parts))

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """An empty directory for a baseline's downloads, removed afterwards."""
        d = self.tmp / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def grep_mount(self, scenario: str, m: FuseMount, root: Path, expected: set[str], timeout: float) -> Sample:
        """Time `grep -rl NEEDLE root` on a mount, check that it found `expected` (paths relative
        to `root`) and nothing else, and record the sample."""
        out: list[str] = []

        def run() -> float:
            t, text = self.timed(["grep", "-rl", NEEDLE, str(root)], mount=m, timeout=timeout)
            out.append(text)
            return t

        s = self.measure(scenario, m.tool, m, run)
        found = {os.path.relpath(line, root) for line in out[0].split("\n") if line}
        if found != expected:
            raise Failed(f"grep -rl found {len(found)} files {sorted(found)[:3]}..., expected {len(expected)}: "
                         f"{sorted(expected)[:3]}...")
        self.results.add(scenario, m.tool, s)
        return s

    def grep(self) -> None:
        self.set_profile("latency")
        expected = set(self.data["needles"])
        parts: list[str] = []

        def body(m: FuseMount, root: Path) -> None:
            s = self.grep_mount(GREP, m, root, expected, self.limit(m.tool))
            parts.append(f"{log_short(m.tool)} {s['seconds']:.2f}s")

        self.fresh(GREP, CIARTFS, GREP_BUILD, body)
        if self.tools["curl"] and self.tools["xargs"]:
            def recipe() -> float:
                with self.scratch("recipe") as d:
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
                return t

            self.baseline(GREP, RECIPE, recipe, parts)
        for peer in self.peers:
            self.fresh(GREP, peer.tool, GREP_BUILD, body)
        log(f"  {GREP}: " + ", ".join(parts))

    def ls(self) -> None:
        self.set_profile("latency")
        sizes: dict[str, int] = self.data["ls_sizes"]
        parts: list[str] = []

        def body(m: FuseMount, root: Path) -> None:
            out: list[str] = []

            def run() -> float:
                t, text = self.timed(["ls", "-l", str(root / "many")], mount=m, timeout=self.limit(m.tool))
                out.append(text)
                return t

            s = self.measure(LS, m.tool, m, run)
            seen = {}  # every file listed, with its exact size
            for line in out[0].splitlines():
                f = line.split()
                if len(f) >= 9 and f[0].startswith("-"):
                    seen[f[-1]] = int(f[4])
            if seen != sizes:
                wrong = [n for n in sizes if seen.get(n) != sizes[n]][:3]
                raise Failed(f"ls -l listed {len(seen)} files; wrong or missing sizes: {wrong}")
            self.results.add(LS, m.tool, s)
            parts.append(f"{log_short(m.tool)} {s['seconds']:.2f}s")

        self.fresh(LS, CIARTFS, LS_BUILD, body)
        if self.tools["curl"]:
            def names() -> float:
                url = shlex.quote(self.api(f"{LS_BUILD}/artifacts"))
                if self.tools["jq"]:
                    script = f"curl -sf -H 'Accept: application/json' {url} | jq -r '.[].path'"
                else:
                    script = f"curl -sf -H 'Accept: application/json' {url} | grep -o '\"path\" *: *\"[^\"]*\"'"
                t, text = self.timed(script)
                if len(text.splitlines()) != len(sizes):
                    raise Failed(f"listed {len(text.splitlines())} names, expected {len(sizes)}")
                return t

            self.baseline(LS, LS_BASE, names, parts)
        for peer in self.peers:
            self.fresh(LS, peer.tool, LS_BUILD, body)
        log(f"  {LS}: " + ", ".join(parts))

    def unzip(self) -> None:
        """unzip -l on the capped link: how long, and how many bytes the servers sent, counted
        from before mounting to after unmounting (a tool's background reads count too)."""
        self.set_profile("capped")
        expected: dict[str, int] = self.data["zip_sizes"]
        parts: list[str] = []

        def on_fuse(tool: str) -> None:
            done: list[Sample] = []

            def body(m: FuseMount, root: Path) -> None:
                out: list[str] = []

                def run() -> float:
                    t, text = self.timed(["unzip", "-l", str(root / ZIP_PATH)], mount=m, timeout=self.limit(m.tool))
                    out.append(text)
                    return t

                s = self.measure(UNZIP, m.tool, m, run)
                check_unzip_listing(out[0], expected)
                done.append(s)

            b0 = self.proxy_bytes()
            self.fresh(UNZIP, tool, ZIP_BUILD, body)
            if done:  # the mount is stopped now
                s = done[0]
                s["sent_during_command_mib"] = s.get("sent_mib")
                s["sent_mib"] = (self.proxy_bytes() - b0) / MiB
                self.results.add(UNZIP, tool, s)
                parts.append(f"{log_short(tool)} {s['seconds']:.2f}s {s['sent_mib']:.1f} MiB")

        on_fuse(CIARTFS)
        if self.tools["curl"]:
            def recipe() -> float:
                with self.scratch("unzip") as d:
                    url = shlex.quote(self.artifact_url(ZIP_BUILD, ZIP_PATH))
                    t, text = self.timed(f"curl -sfL -o packages.zip {url}\nunzip -l packages.zip", cwd=d)
                    check_unzip_listing(text, expected)
                return t

            self.baseline(UNZIP, UNZIP_BASE, recipe, parts)
        for peer in self.peers:
            on_fuse(peer.tool)
        log(f"  {UNZIP}: " + ", ".join(parts))

    # -- GitHub Actions (issue 18): each against the `gh run download` way ---------------------

    def gh_run_dir(self, name: str) -> Callable[[FuseMount], Path]:
        """The directory of artifact `name` (benchlib/ghdata.py) in a mount."""
        g = self.gh
        return lambda m: m.path / "actions" / g["owner"] / g["repo"] / str(g["runs"][name]) / name

    def gh_download(self, name: str, then: str, check: Callable[[str], None]) -> Callable[[], float]:
        """`gh run download`'s way, timed whole: curl -L the zip from the API with the token
        (curl drops the Authorization header on the redirect to the blob host, which would
        refuse it), unzip it all, then `then` (a shell command run in the unzipped directory)."""
        g = self.gh

        def run() -> float:
            d = self.tmp / "gh-download"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            try:
                url = f"{self.api_url}/repos/{g['owner']}/{g['repo']}/actions/artifacts/{g['artifacts'][name]}/zip"
                script = (f"curl -sfL -H {shlex.quote('Authorization: Bearer ' + g['token'])} "
                          "-H 'Accept: application/vnd.github+json' -H 'X-GitHub-Api-Version: 2022-11-28' "
                          f"-o artifact.zip {shlex.quote(url)}\n"
                          "unzip -q artifact.zip -d out\n"
                          f"cd out\n{then}")
                t, text = self.timed(script, cwd=d)
                check(text)
            finally:
                shutil.rmtree(d, ignore_errors=True)
            return t

        return run

    def gh_scenario(self, scenario: str, name: str, command: Callable[[Path], list[str]], check: Callable[[str], None],
                    then: str) -> None:
        """One ciartfs run of `command(artifact dir)` on a fresh mount, then the baseline. The
        blob host's answers (requests, ranges, bytes) are counted from before mounting to after
        unmounting, so that read-ahead still running after the command counts too."""
        self.set_profile("capped")
        done: list[Sample] = []
        parts: list[str] = []

        def body(m: FuseMount, root: Path) -> None:
            out: list[str] = []

            def run() -> float:
                t, text = self.timed(command(root), mount=m, timeout=self.limit(m.tool))
                out.append(text)
                return t

            s = self.measure(scenario, m.tool, m, run)
            check(out[0])
            done.append(s)

        self.fake.ask({"stats": True})  # (clears the fake's request log)
        blob0 = self.proxy_stats()["blob"]["bytes"]
        self.fresh(scenario, CIARTFS, 0, body, where=self.gh_run_dir(name))
        if done:  # the mount is stopped now
            sample = done[0]
            late = json.loads(self.fake.ask({"stats": True}))
            blob_log = sample["blob_log"] = sample["blob_log"] + late["blob_log"]
            cd = self.gh_expected["central_offset"][name]
            after = requests_after_index(blob_log, cd, self.gh_expected["archive_size"][name])
            sample.update(blob_requests=len(blob_log), blob_requests_after_index=after,
                          central_directory_mib=(self.gh_expected["archive_size"][name] - cd) / MiB,
                          blob_sent_mib=(self.proxy_stats()["blob"]["bytes"] - blob0) / MiB,
                          blob_server_sent_mib=sum(sent for _r, _s, sent in blob_log) / MiB)
            self.results.add(scenario, CIARTFS, sample)
            parts.append(f"ciartfs {sample['seconds']:.3f}s, blob: {sample['blob_requests']} requests "
                         f"({after} after the central directory), {sample['blob_sent_mib']:.2f} MiB")
        if self.tools["curl"] and self.tools["unzip"]:
            self.baseline(scenario, GH_BASE, self.gh_download(name, then, check), parts)
        log(f"  {scenario}: " + ", ".join(parts))

    def gh_read(self) -> None:
        """One 1 MiB member of the 500 MiB artifact: its SHA-256."""
        e = self.gh_expected

        def check(text: str) -> None:
            if text.split()[:1] != [e["large_member_sha256"]]:
                raise Failed(f"sha256sum printed {text.strip()[:100]!r}, expected {e['large_member_sha256']}")

        member = e["large_member"]
        self.gh_scenario(GH_READ, ghdata.LARGE, lambda root: ["sha256sum", str(root / member)], check,
                         f"sha256sum {shlex.quote(member)}")

    def gh_ls(self) -> None:
        """`ls -R` of the 10k-member artifact: every member and directory listed, by name."""
        files: dict[str, int] = self.gh_expected["many_files"]
        want: set[str] = set()
        for path in files:
            parts = path.split("/")
            want.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))

        def check(text: str) -> None:
            seen: set[str] = set()
            here = None
            for line in text.splitlines():
                if line.endswith(":"):  # "./d000:" (both run `ls -R .` in the artifact's directory)
                    here = "" if line == ".:" else line[:-1].removeprefix("./")
                elif line and here is not None:
                    seen.add(f"{here}/{line}" if here else line)
            if seen != want:
                wrong = sorted(seen ^ want)[:3]
                raise Failed(f"ls -R listed {len(seen)} paths, expected {len(want)}; differing: {wrong}")

        self.gh_scenario(GH_LS, ghdata.MANY, lambda root: ["bash", "-c", f"cd {shlex.quote(str(root))} && ls -R ."],
                         check, "ls -R .")

    def gh_grep(self) -> None:
        """`grep -rl` over the 2000 deflated members: exactly the one holding the needle."""
        e = self.gh_expected
        needle = ghdata.needle()

        def check(text: str) -> None:
            found = [line.removeprefix("./") for line in text.splitlines() if line]
            if found != [e["logs_match"]]:
                raise Failed(f"grep -rl found {found[:3]}, expected [{e['logs_match']!r}]")

        self.gh_scenario(GH_GREP, ghdata.LOGS,
                         lambda root: ["bash", "-c", f"cd {shlex.quote(str(root))} && grep -rl {shlex.quote(needle)} ."],
                         check, f"grep -rl {shlex.quote(needle)} .")

    def tc_group(self) -> None:
        """`ls` of a Taskcluster group (--tc-tasks, 5000), then `grep -rl` over it, each on a fresh mount;
        baselines: the API with curl (names), the queue recipe (everything downloaded)."""
        self.set_profile("relay")
        expected: set[str] = self.data["tc_needles"]
        task_ids: list[str] = self.data["tc_task_ids"]
        queue = f"{self.api_url}/api/queue/v1"
        parts: list[str] = []

        def group_dir(m: FuseMount) -> Path:
            return m.path / "taskcluster" / "group" / TC_GROUP_ID

        def ls(m: FuseMount, root: Path) -> None:
            out: list[str] = []

            def run() -> float:
                t, text = self.timed(["ls", str(root)], mount=m)
                out.append(text)
                return t

            s = self.measure(TC_LS, m.tool, m, run)
            listed = set(out[0].split())
            if not set(task_ids) <= listed:  # (and a link per task name)
                raise Failed(f"ls listed {len(listed)} names, not every one of the {len(task_ids)} tasks")
            self.results.add(TC_LS, m.tool, s)
            parts.append(f"ls {s['seconds']:.2f}s (api {s['api']}, storage {s['storage']})")

        def grep(m: FuseMount, root: Path) -> None:
            # (before the walk-ahead, a task took ~90 ms at 20 ms latency: 7.5 minutes for 5k)
            s = self.grep_mount(TC_GREP, m, root, expected, max(self.args.cmd_timeout, 900))
            parts.append(f"grep {s['seconds']:.2f}s (api {s['api']}, storage {s['storage']})")

        self.fresh(TC_LS, CIARTFS, 0, ls, where=group_dir, taskcluster=True)
        self.fresh(TC_GREP, CIARTFS, 0, grep, where=group_dir, taskcluster=True)
        if not (self.tools["curl"] and self.tools["jq"] and self.tools["xargs"]):
            log("  tc-group: " + ", ".join(parts))
            return
        # the group's task ids (and each one's latest run), page by page
        list_tasks = (f"tok=\nwhile :; do\n"
                      f"  page=$(curl -sf {shlex.quote(queue)}/task-group/{TC_GROUP_ID}/list${{tok:+?continuationToken=$tok}})\n"
                      "  jq -r '.tasks[] | \"\\(.status.taskId) \\(.status.runs | last | .runId)\"' <<<\"$page\"\n"
                      "  tok=$(jq -r '.continuationToken // empty' <<<\"$page\")\n"
                      "  [ -n \"$tok\" ] || break\n"
                      "done")

        def names() -> float:
            t, text = self.timed(list_tasks)
            if [line.split()[0] for line in text.splitlines()] != task_ids:
                raise Failed(f"listed {len(text.splitlines())} tasks, expected {len(task_ids)}")
            return t

        self.baseline(TC_LS, TC_LS_BASE, names, parts)

        def recipe() -> float:
            with self.scratch("tc-recipe") as d:
                # each task's artifact list (one page: these tasks have fewer than 1000), then
                # every artifact (the queue redirects to storage), 8 curls at once, each reusing its
                # connection for 50 URLs; then grep locally
                script = (f"{list_tasks} > tasks\n"
                          f"awk '{{print \"{queue}/task/\" $1 \"/runs/\" $2 \"/artifacts\"; print \"-o\"; "
                          "print \"lists/\" $1 \".\" $2 \".json\"}' tasks | xargs -P8 -n 150 curl -sf --create-dirs\n"
                          f"jq -r --arg q {shlex.quote(queue)} 'input_filename as $f | ($f | ltrimstr(\"lists/\") "
                          "| rtrimstr(\".json\") | split(\".\")) as [$t, $r] | .artifacts[] "
                          "| \"\\($q)/task/\\($t)/runs/\\($r)/artifacts/\\(.name)\", \"-o\", \"files/\\($t)/\\($r)/\\(.name)\"' "
                          "lists/*.json | xargs -P8 -n 150 curl -sfL --create-dirs\n"
                          f"cd files && grep -rl {NEEDLE} . || true")
                t, text = self.timed(script, cwd=d)
                found = {line.removeprefix("./") for line in text.split("\n") if line}
                files = sum(len(f) for _, _, f in os.walk(d / "files"))
                if found != expected or files != len(task_ids):
                    raise Failed(f"recipe downloaded {files} files and found {len(found)}: {sorted(found)[:3]}")
            return t

        self.baseline(TC_GREP, TC_RECIPE, recipe, parts)
        log("  tc-group: " + ", ".join(parts))

    def link_check(self) -> dict[str, Any]:
        """Show the link: what the uncapped path and the proxy can carry, and that the cap
        and the latency are what they claim."""
        info: dict[str, Any] = {"latency_shaper": self.latency_proxy.name}
        if not self.tools["curl"]:
            return info
        size = self.args.size_mib * MiB

        def rate(url: str) -> tuple[float, float]:
            out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{time_starttransfer}",
                                  url], capture_output=True, text=True, timeout=self.args.cmd_timeout).stdout.split()
            return int(out[0]) / float(out[1]) / MiB, float(out[2])

        self.set_profile("uncapped")
        info["direct_mib_s"] = rate(self.storage_url(BIG_BUILD, BIG_PATH))[0]
        info["files_direct_mib_s"] = rate(f"{self.files_url}/{BIG_BUILD}/{BIG_PATH}")[0]  # not the peers' bottleneck
        self.set_profile("latency")  # the latency-only proxy: its own ceiling
        url = self.storage_url(BIG_BUILD, BIG_PATH)
        info["proxy_nocap_mib_s"], _ = rate(url)
        self.set_profile("capped")
        small = self.storage_url(LS_BUILD, "many/file-0000.txt")
        info["capped_first_byte_ms"] = statistics.median(rate(small)[1] for _ in range(5)) * 1000
        # 2 s worth of capped transfer, measured over the tail (after the first byte)
        rng = f"0-{min(size, 2 * self.args.rate_mib * MiB) - 1}"
        out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-r", rng,
                              "-w", "%{size_download} %{time_total} %{time_starttransfer}",
                              self.storage_url(BIG_BUILD, BIG_PATH)], capture_output=True, text=True, timeout=60).stdout.split()
        info["capped_stream_mib_s"] = int(out[0]) / (float(out[1]) - float(out[2])) / MiB
        return info

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        self.start_servers()
        missing = {t: why for t, why in (("curl", "curl is not installed (apt-get install curl)"),
                                         ("aria2c", "aria2c is not installed (apt-get install aria2)"),
                                         ("xargs", "xargs is not installed (apt-get install findutils)"),
                                         ("unzip", "unzip is not installed (apt-get install unzip)"))
                   if not self.tools[t]}
        for label, needs in ((CURL, ("curl",)), (ARIA, ("curl", "aria2c")), (RECIPE, ("curl", "xargs")),
                             (LS_BASE, ("curl",)), (UNZIP_BASE, ("curl", "unzip")), (GH_BASE, ("curl", "unzip"))):
            why = "; ".join(missing[t] for t in needs if t in missing)
            if why:
                self.results.skipped[label] = why
                log(f"note: skipping the baseline {label}: {why}")
        for peer in PEERS:
            if peer not in self.peers:
                why = "--no-peers" if a.no_peers else f"{peer.binary} is not installed (apt-get install {peer.apt})"
                self.results.skipped[peer.tool] = why
                log(f"note: skipping the FUSE peer {peer.tool}: {why}")
        if not self.tools["unzip"]:
            self.results.notes.append(f"{UNZIP}: not run, for any tool: {missing['unzip']}")
        self.link = self.link_check()
        if "capped_stream_mib_s" in self.link:
            log("link: direct {direct_mib_s:.0f} MiB/s (fake storage, one curl stream, no proxy), "
                "files host {files_direct_mib_s:.0f} MiB/s; latency-only proxy ({latency_shaper}) {proxy_nocap_mib_s:.0f} MiB/s; "
                "capped {capped_stream_mib_s:.1f} MiB/s per stream, "
                "first byte {capped_first_byte_ms:.0f} ms".format(**self.link))
        size = a.size_mib * MiB
        peers = tuple(p.tool for p in PEERS)  # all of them: a skipped one shows as skipped
        only = a.only
        declared = (("cold-uncapped", COLD_UNCAPPED, size, (CIARTFS, CURL, ARIA, *peers)),
                    ("cold-capped", COLD_CAPPED, size, (CIARTFS, CURL, ARIA, *peers)),
                    ("cold-https", COLD_HTTPS, size, (CIARTFS, CURL)),
                    ("cold-uncapped", WARM, size, (CIARTFS, LOCAL, *peers)),
                    ("grep", GREP, None, (CIARTFS, RECIPE, *peers)),
                    ("ls", LS, None, (CIARTFS, LS_BASE, *peers)),
                    ("unzip", UNZIP, None, (CIARTFS, UNZIP_BASE, *peers)),
                    ("gh-read", GH_READ, None, (CIARTFS, GH_BASE)),
                    ("gh-ls", GH_LS, None, (CIARTFS, GH_BASE)),
                    ("gh-grep", GH_GREP, None, (CIARTFS, GH_BASE)),
                    ("tc-group", TC_LS, None, (CIARTFS, TC_LS_BASE)),
                    ("tc-group", TC_GREP, None, (CIARTFS, TC_RECIPE)))
        for key, scenario, nbytes, tools in declared:
            if key in only:
                count = a.tc_tasks if key == "tc-group" else None
                self.results.scenario(scenario, nbytes=nbytes, tools=tools, count=count)
        started = last = time.monotonic()
        for rnd in range(a.runs):
            now = time.monotonic()
            # bounded: no new run unless one as long as the last one still fits the budget
            if rnd and now - started + (now - last) > a.budget_s:
                note = (f"stopped after {rnd} of {a.runs} runs: another run (the last took {now - last:.0f}s) would "
                        f"not fit the time budget ({a.budget_s:.0f}s)")
                self.results.notes.append(note)
                log("note: " + note)
                break
            last = now
            self.results.runs_done = rnd + 1
            log(f"run {rnd + 1}/{a.runs}")
            if "cold-uncapped" in only:
                self.cold_read(COLD_UNCAPPED, "uncapped", rnd, warm=True)
            if "cold-capped" in only:
                self.cold_read(COLD_CAPPED, "capped", rnd, warm=False)
            if "cold-https" in only:
                self.cold_read(COLD_HTTPS, "https", rnd, warm=False)
            if "grep" in only:
                self.grep()
            if "ls" in only:
                self.ls()
            if self.tools["unzip"] and "unzip" in only:
                self.unzip()
            if "gh-read" in only:
                self.gh_read()
            if "gh-ls" in only:
                self.gh_ls()
            if "gh-grep" in only:
                self.gh_grep()
            if "tc-group" in only:
                self.tc_group()

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
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"cleanup: {m.path}: {e}")
        for h in reversed(self.helpers):
            try:
                h.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
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





def run_scale(args: argparse.Namespace, figures: dict[str, Any], targets: list[Target]) -> None:
    """Issue 17's scale scenarios (after the others, whose servers are stopped by now): their
    figures into `figures`, the targets judged into `targets`."""
    import benchlib.diskcache as diskcache  # (scripts/ is on sys.path)
    import benchlib.flat as flat

    quick = args.quick
    python = str(VENV_PY)
    with tempfile.TemporaryDirectory(prefix="ciartfs-scale-") as d:
        tmp = Path(d)
        for part in SCALE:  # (each its own mount points and cache dirs)
            (tmp / part).mkdir()
        if "flat" in args.only:
            log("flat: one directory of N artifacts, ls, find -name, ls -l")
            figures["flat"], found = flat.flat_targets(python, REPO, tmp / "flat", (10_000,) if quick else (10_000, 100_000))
            targets += found
        if "memory" in args.only:
            log("memory: N artifacts listed, drop_caches, re-list; builds browsed")
            # (500 builds even with --quick: forgetting starts at 200k entries)
            figures["memory"], found = flat.memory_targets(python, REPO, tmp / "memory", 10_000 if quick else 100_000)
            targets += found
        if "disk-cache" in args.only:
            log("disk cache: start-up, index RAM, eviction")
            figures["disk_cache"], found = diskcache.disk_targets(tmp / "disk-cache", 260_000 if quick else 2_600_000)
            targets += found


def guarded(what: str, step: Callable[[], None]) -> int:
    """Run `step`; its exit status (130: interrupted, 1: failed), the failure printed, so that
    the results so far are still reported."""
    try:
        step()
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'SIGINT'}) in {what}: cleaning up; results so far follow")
        return 130
    except Exception:  # noqa: BLE001 - print it, then still report the results so far
        import traceback
        traceback.print_exc()
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller files, fewer runs, shorter peer timeout (about 3 minutes)")
    p.add_argument("--runs", type=int, help="runs per scenario and tool, as many as fit the time budget "
                                            "(default 5 in 17 minutes; --quick 2 in 4 minutes)")
    p.add_argument("--budget-min", type=float, help="minutes the runs may take before no new one starts "
                                                    "(default 17, --quick 4); a full pass takes about 9 minutes")
    p.add_argument("--size-mib", type=int, help="size of the large file (default 512, --quick 64)")
    p.add_argument("--zip-mib", type=int, help="size of the zip (default 200, --quick 32)")
    p.add_argument("--peer-timeout", type=float, help="seconds a FUSE peer's command may take (default 90, --quick 30)")
    p.add_argument("--no-peers", action="store_true", help="leave out the FUSE peers (rclone, httpdirfs)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--rate-mib", type=float, default=25.0, help="capped scenarios: MiB/s per connection (default 25)")
    p.add_argument("--latency-ms", type=float, default=20.0, help="ms before each response's first byte (default 20)")
    p.add_argument("--memory-cache", help="ciartfs --memory-cache (default: ciartfs's own, 256M)")
    p.add_argument("--block-size", help="ciartfs --block-size (default: ciartfs's own)")
    p.add_argument("--timeout", type=float, default=30.0, help="ciartfs --timeout (default 30)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs)")
    p.add_argument("--only", metavar="SCENARIO[,...]", default=",".join(SCENARIOS),
                   help=f"run only these scenarios, of: {', '.join(SCENARIOS)} (default: all; cold-uncapped "
                        "includes the warm re-read)")
    p.add_argument("--gh-large-mib", type=int, default=500,
                   help="size of the GitHub artifact one member of which is read (default 500)")
    p.add_argument("--tc-tasks", type=int, help="tasks in the Taskcluster group (default 5000, --quick 1000)")
    args = p.parse_args(argv)
    args.tc_tasks = args.tc_tasks or (1000 if args.quick else 5000)
    args.runs = args.runs or (2 if args.quick else 5)
    args.size_mib = args.size_mib or (64 if args.quick else 512)
    args.zip_mib = args.zip_mib or (32 if args.quick else 200)
    args.peer_timeout = args.peer_timeout or (30.0 if args.quick else 90.0)
    if args.runs < 1 or args.size_mib < 1 or args.zip_mib < 1 or args.peer_timeout <= 0 or args.gh_large_mib < 2:
        p.error("--runs, --size-mib, --zip-mib, --gh-large-mib and --peer-timeout must be positive")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SCENARIOS))
    if unknown or not args.only:
        p.error(f"--only: unknown scenario {', '.join(unknown) or '(none given)'}; the scenarios: {', '.join(SCENARIOS)}")
    args.grep_files, args.ls_files, args.zip_members = 2000, 1000, 2000
    # a command that takes longer than this has failed (a 1 MiB/s link would be a failure too)
    args.cmd_timeout = 120.0 + max(args.size_mib, args.gh_large_mib) / max(1.0, args.rate_mib) * 3
    # the runs' time budget: the script is bounded in time (plus data generation, link check, report)
    if args.budget_min is not None and args.budget_min <= 0:
        p.error("--budget-min must be positive")
    args.budget_s = args.budget_min * 60 if args.budget_min is not None else (240.0 if args.quick else 1020.0)
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
        if set(args.only) - set(SCALE):
            status = guarded("the scenarios", bench.run)
    finally:
        bench.cleanup()
    scale: dict[str, Any] = {}
    scale_targets: list[Target] = []
    if status == 0:
        status = guarded("the scale scenarios", lambda: run_scale(args, scale, scale_targets))
    out = report(args, bench.results, bench.link, bench.log_problems, info, scale_targets)
    out["scale"] = scale
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    if bench.results.failures and status == 0:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
