"""What scripts/bench.py and its helper modules share: logging, the failure type, /proc readers."""

from __future__ import annotations

import json
import os
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
