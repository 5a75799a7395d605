"""What a running mount tells `ciartfs status`: a JSON file per mount process in a private
runtime directory, rewritten every few seconds and removed at unmount. Never a secret.

Invariants (the directory is where a mount, often run as root, writes files, so another local
user must not be able to choose what it writes to or read what it says):
- the directory is the user's own: `$XDG_RUNTIME_DIR/ciartfs`, else `run/` under the default
  cache dir, never a shared, predictable /tmp path; one not owned by this user, not a directory
  (a symlink), or writable by others is refused;
- every file in it is opened relative to the directory's descriptor with O_NOFOLLOW, and
  created with O_EXCL: a planted symlink is never followed;
- what `ciartfs status` prints has control characters removed (a mount point or URL could
  carry terminal escapes).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ciartfs.config import default_cache_dir
from ciartfs.private_dir import NotPrivate, why_not_private
from ciartfs.providers import registry

# How often a mount rewrites its status file (seconds): fresh enough for a human.
PUBLISH_INTERVAL = 2.0

_PID_FILE = re.compile(r"[0-9]{1,10}\.json")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UnsafeRuntimeDir(NotPrivate):
    """The status directory is not this user's private directory."""


def runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "ciartfs" if xdg else default_cache_dir() / "run"


@contextlib.contextmanager
def _open_dir(create: bool) -> Iterator[int]:
    """A descriptor of the runtime directory, checked: ours, a real directory, not writable by
    others. Raises FileNotFoundError (when not `create`) or UnsafeRuntimeDir."""
    path = runtime_dir()
    if create:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except NotADirectoryError:
        raise UnsafeRuntimeDir(f"{path} is not a directory (a symlink?)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # the last component is a symlink
            raise UnsafeRuntimeDir(f"{path} is a symlink") from None
        raise
    try:
        st = os.fstat(fd)
        problem = why_not_private(path, st)
        if problem:
            raise UnsafeRuntimeDir(problem)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # ours: make it private rather than refuse
        yield fd
    finally:
        os.close(fd)


def publish(pid: int, doc: dict[str, Any]) -> None:
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    name, tmp = f"{pid}.json", f"{pid}.json.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with _open_dir(create=True) as dir_fd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)  # left by a killed writer of this pid
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a link, never follows it


def withdraw(pid: int) -> None:
    with contextlib.suppress(OSError), _open_dir(create=False) as dir_fd:
        os.unlink(f"{pid}.json", dir_fd=dir_fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(name: str, dir_fd: int) -> dict[str, Any] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            doc = json.loads(f.read(1 << 20))
        except ValueError:
            return None
    return doc if isinstance(doc, dict) else None


def active_mounts() -> list[dict[str, Any]]:
    """Status documents of live mount processes; files of dead ones are removed. A directory
    that is not this user's own gives UnsafeRuntimeDir."""
    out: list[dict[str, Any]] = []
    try:
        with _open_dir(create=False) as dir_fd:
            for name in sorted(os.listdir(dir_fd)):
                if not _PID_FILE.fullmatch(name):
                    continue
                doc = _read(name, dir_fd)
                if doc is None:
                    continue
                try:
                    pid = int(doc["pid"])
                except (ValueError, KeyError, TypeError):
                    continue
                if pid <= 0:
                    continue
                if not _alive(pid):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
                    continue
                out.append(doc)
    except FileNotFoundError:
        return []
    return out


def printable(text: str) -> str:
    """`text` without control characters (terminal escapes, newlines, NUL)."""
    return _CONTROL.sub("", text)


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
    ]
    for provider in registry.providers():  # each says what it published
        described = provider.describe(s)
        if described is not None:
            lines.append(f"  {provider.title + ':':<16}{described}")
    lines += [
        (f"  cache:          {s['cache_dir']}  disk {human(doc['disk_bytes'])} of {human(s['cache_size'])}, "
         f"memory {human(doc['memory_bytes'])} of {human(s['memory_cache'])}; {doc.get('inodes', 0)} inodes"),
        f"  requests:       {st['http_requests']}  (fetched {human(st['bytes_fetched'])}, served {human(st['bytes_served'])})",
        (f"  block reads:    {reads}  hit ratio {hit_ratio:.0%}  (memory {st['memory_hits']}, disk {st['disk_hits']}, "
         f"network {st['misses']})"),
        f"  errors:         {sum(doc['errors'].values())}" + (
            "  (" + ", ".join(f"{k} {v}" for k, v in sorted(doc["errors"].items())) + ")" if doc["errors"] else ""),
    ]
    return "\n".join(printable(line) for line in lines)
