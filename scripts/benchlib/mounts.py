"""The FUSE filesystems the benchmark mounts: ciartfs, and its peers rclone and httpdirfs.

Each mount is one foreground process we start in its own session, on a fresh mountpoint with
a fresh cache dir; it counts once the mountpoint is mounted and answers a stat. It is stopped
by pid (SIGTERM, which unmounts cleanly, then SIGKILL) and `fusermount3 -u -z` if the mount
is still there, in `stop()`, which the benchmark also calls from its `finally`.

The peers mount the static files host (scripts/benchlib/files.py), one build per mount:
  rclone     apt-get install rclone     `rclone mount :http:` with --vfs-cache-mode full
  httpdirfs  apt-get install httpdirfs  `httpdirfs --cache`
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchlib.common import Failed, log, proc_cpu, proc_hwm_kib
from benchlib.data import PROJECT
from ciartfs.cli.mountpoint import is_mounted

MOUNT_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class FuseMount:
    """One FUSE filesystem process on a fresh mountpoint with a fresh cache dir."""

    tool = "?"  # the label in the results
    short = "fuse"  # file names
    count = 0  # shared by all kinds: every mountpoint is tmp/mnt<n> (the cleanup looks for those)
    make_cache_dir = False  # True: create the cache dir before starting (ciartfs makes its own)

    def __init__(self, tmp: Path, registry: list[FuseMount], env: dict[str, str],
                 on_stop: Callable[[FuseMount], None] | None = None) -> None:
        FuseMount.count += 1
        n = FuseMount.count
        self.path = tmp / f"mnt{n}"
        self.cache = tmp / f"cache{n}"
        self.log = tmp / "logs" / f"{self.short}{n}.log"
        self.registry = registry
        self.on_stop = on_stop
        self.path.mkdir()
        if self.make_cache_dir:
            self.cache.mkdir()
        argv = self.command()
        with open(self.log.with_suffix(".stderr"), "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True)
        registry.append(self)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(str(self.path)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failed(f"{self.tool} did not mount (exit {self.proc.poll()}): {self.log_text()[-1500:]}")
            time.sleep(0.02)
        os.stat(self.path)  # answered by the filesystem

    def command(self) -> list[str]:
        raise NotImplementedError

    def root(self, build: int) -> Path:
        """Where `build`'s artifacts are in this mount."""
        raise NotImplementedError

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
        """SIGTERM (each of these unmounts on it), then SIGKILL; and never leave the mount behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log(f"  {self.tool} pid {self.pid} ignored SIGTERM for {STOP_TIMEOUT:.0f}s; killing it")
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if is_mounted(str(self.path)):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            if self in self.registry:
                self.registry.remove(self)
                if self.on_stop:
                    self.on_stop(self)
            shutil.rmtree(self.cache, ignore_errors=True)


class CiartfsMount(FuseMount):
    """`python -P -m ciartfs mount -f`: every build of the fake, under /<vcs>/<user>/<repo>/<build>/<node>/.
    (-P: the ciartfs the venv has, not one in the working directory: an A/B run from a worktree
    measured that worktree's code twice.)"""

    tool = "ciartfs"
    short = "ciartfs"

    def __init__(self, tmp: Path, registry: list[FuseMount], env: dict[str, str], *, python: str, api_url: str,
                 options: list[str], on_stop: Callable[[FuseMount], None] | None = None) -> None:
        self.python, self.api_url, self.options = python, api_url, options
        super().__init__(tmp, registry, env, on_stop)

    def command(self) -> list[str]:
        # CIARTFS_BENCH_WRAP: a program the daemon's command line is passed to (a profiler's
        # wrapper: it must run the command and pass SIGTERM on)
        wrap = [os.environ["CIARTFS_BENCH_WRAP"]] if os.environ.get("CIARTFS_BENCH_WRAP") else []
        return [*wrap, self.python, "-P", "-m", "ciartfs", "mount", "-f", str(self.path), "--circleci-host", self.api_url,
                "--cache-dir", str(self.cache), "--log-file", str(self.log), *self.options]

    def root(self, build: int) -> Path:
        return self.path.joinpath(*PROJECT, str(build), "0")


class PeerMount(FuseMount):
    """A peer mounting one build's directory of the static files host (URL ends with /)."""

    binary = "?"
    apt = "?"
    make_cache_dir = True

    def __init__(self, tmp: Path, registry: list[FuseMount], env: dict[str, str], *, url: str) -> None:
        self.url = url
        super().__init__(tmp, registry, env)

    def root(self, build: int) -> Path:
        return self.path

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.binary) is not None


class RcloneMount(PeerMount):
    # --vfs-cache-mode full: the setup (reads are cached on disk, so a re-read is local).
    # Everything else is rclone's default, notably HEAD requests on (no --http-no-head): rclone
    # HEADs each file of a listing for its size and time, which `ls -l` needs.
    # --config: a file that does not exist, so no user config is read (rclone notes it, once).
    tool = "rclone mount (vfs full)"
    short = "rclone"
    binary = "rclone"
    apt = "rclone"

    def command(self) -> list[str]:
        return ["rclone", "mount", ":http:", str(self.path), "--http-url", self.url, "--vfs-cache-mode", "full",
                "--cache-dir", str(self.cache), "--config", str(self.cache.with_name(self.cache.name + "-rclone.conf")),
                "--read-only"]


class HttpdirfsMount(PeerMount):
    # --cache: httpdirfs's permanent (on-disk) cache, the closest to ciartfs's and rclone's
    # full VFS cache; -f: foreground, our child. Defaults otherwise (8 MiB segments, 10 conns).
    tool = "httpdirfs --cache"
    short = "httpdirfs"
    binary = "httpdirfs"
    apt = "httpdirfs"

    def command(self) -> list[str]:
        return ["httpdirfs", "-f", "--cache", "--cache-location", str(self.cache), self.url, str(self.path)]


PEERS: tuple[type[PeerMount], ...] = (RcloneMount, HttpdirfsMount)
