"""Directories where a mount writes (cache, status) must be the user's own.

A mount, often run as root, writes files there and later trusts what it reads back (cached
blocks are checked against a checksum kept in its index, which proves integrity, not origin).
A directory another local user owns or may write to lets that user plant blocks or symlinks,
so it is refused, never repaired.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotPrivate(OSError):
    """A directory that is not this user's own private directory."""


def why_not_private(path: Path | str, st: os.stat_result) -> str | None:
    """Why a directory with this (l)stat result may not be trusted, or None."""
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory (a symlink?)"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def ensure_private_dir(path: Path) -> None:
    """Create `path` (0700, with its parents) or check the existing one: ours, a real directory,
    not writable by others; a wider mode of our own directory is narrowed to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    problem = why_not_private(path, st)
    if problem:
        raise NotPrivate(problem)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
