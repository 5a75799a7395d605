"""What a running mount tells `ciartfs status`: a JSON file per mount process in a private
runtime directory, rewritten every few seconds and removed at unmount. Never a secret."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# How often a mount rewrites its status file (seconds): fresh enough for a human.
PUBLISH_INTERVAL = 2.0


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    suffix = "ciartfs" if os.environ.get("XDG_RUNTIME_DIR") else f"ciartfs-{os.getuid()}"
    return Path(base) / suffix


def status_path(pid: int) -> Path:
    return runtime_dir() / f"{pid}.json"


def publish(pid: int, doc: dict[str, Any]) -> None:
    directory = runtime_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = status_path(pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def withdraw(pid: int) -> None:
    try:
        status_path(pid).unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def active_mounts() -> list[dict[str, Any]]:
    """Status documents of live mount processes; files of dead ones are removed."""
    out = []
    directory = runtime_dir()
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)
            continue
        out.append(doc)
    return out


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_status(doc: dict[str, Any]) -> str:
    s, st = doc["settings"], doc["stats"]
    reads = st["memory_hits"] + st["disk_hits"] + st["misses"]
    hit_ratio = (st["memory_hits"] + st["disk_hits"]) / reads if reads else 0.0
    lines = [
        f"{doc['mountpoint']}  (pid {doc['pid']}, up {doc['uptime']:.0f}s)",
        f"  CircleCI:       {s['circleci_host']}" + ("  (token set)" if s["circleci_token"] else ""),
    ]
    if s.get("taskcluster_root_url"):
        lines.append(f"  Taskcluster:    {s['taskcluster_root_url']}" + ("  (credentials set)" if s["taskcluster_credentials"] else ""))
    lines += [
        f"  cache:          {s['cache_dir']}  disk {human(doc['disk_bytes'])} of {human(s['cache_size'])}, "
        f"memory {human(doc['memory_bytes'])} of {human(s['memory_cache'])}; {doc.get('inodes', 0)} inodes",
        f"  requests:       {st['http_requests']}  (fetched {human(st['bytes_fetched'])}, served {human(st['bytes_served'])})",
        f"  block reads:    {reads}  hit ratio {hit_ratio:.0%}  (memory {st['memory_hits']}, disk {st['disk_hits']}, "
        f"network {st['misses']})",
        f"  errors:         {sum(doc['errors'].values())}" + (
            "  (" + ", ".join(f"{k} {v}" for k, v in sorted(doc["errors"].items())) + ")" if doc["errors"] else ""),
    ]
    return "\n".join(lines)
