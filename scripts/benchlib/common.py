"""What scripts/bench.py and its helper modules share: logging, the failure type, /proc readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Failed(Exception):
    """A scenario run did not produce a valid result (timeout, wrong output, exit status)."""


class TimedOut(Failed):
    """The command ran past its time limit. For a FUSE peer this is a result ("> N s"), not
    a failure: the issue measured some peers at a minute or more."""

    def __init__(self, msg: str, limit: float) -> None:
        super().__init__(msg)
        self.limit = limit
        self.recorded = False  # set once the timeout is in the results as a sample


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): field 3 onwards."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def proc_cpu(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop_and_unmount(proc: subprocess.Popen[bytes], mountpoint: str, wait: float) -> None:
    """Stop a filesystem's process by its pid (SIGTERM, SIGKILL after `wait` s), then unmount
    what it left mounted."""
    from ciartfs.cli.mountpoint import is_mounted  # (scripts/ may run before ciartfs is importable)

    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)


def proc_tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants, including exited children it has
    reaped (a helper that runs nginx: its workers, and the old ones a reload replaced)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += sum(int(x) for x in _stat_fields(p)[11:15])  # utime stime cutime cstime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total / CLK_TCK


NGINX_ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"


def nginx_shaper_available() -> bool:
    """nginx with the echo module (Debian: nginx libnginx-mod-http-echo), for benchlib/nginx.py."""
    return shutil.which("nginx") is not None and os.path.exists(NGINX_ECHO_MODULE)


def _status_kib(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM), 0 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def proc_hwm_kib(pid: int) -> int:
    """Peak RSS."""
    return _status_kib(pid, "VmHWM:")


def proc_rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS:")


def serve_commands(ready: dict[str, Any], answer: Callable[[dict[str, Any]], str]) -> None:
    """A helper process's side of the protocol: one `READY {json}` line, then one answer line
    per JSON command read from stdin, until stdin closes (the benchmark exiting)."""
    print("READY " + json.dumps(ready), flush=True)
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            reply = f"error: {e}"
        print(reply, flush=True)
