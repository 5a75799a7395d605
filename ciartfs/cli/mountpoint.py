"""Mount point checks: is a path mounted, is that mount stale, may this user mount there.

Read from /proc/self/mountinfo and the /dev/fuse device; used by `mount`, `unmount` and tests.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat

from ciartfs.cli.usage import UsageError


def _unescape_mount_path(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def is_mounted(path: str) -> bool:
    """True if `path` is a mount point, also when it is a dead FUSE mount (ENOTCONN)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape_mount_path(fields[4]) == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def is_stale(path: str) -> bool:
    """A FUSE mount whose process is gone. statvfs always reaches the filesystem; stat may be
    answered from the kernel's attribute cache."""
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def check_mountpoint(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UsageError(f"{path} is a stale mount (its ciartfs process is gone); "
                             f"run 'ciartfs unmount {path}' first") from None
        raise UsageError(f"mountpoint {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        if is_stale(path):
            raise UsageError(f"{path} is a stale mount (its ciartfs process is gone); run 'ciartfs unmount {path}' first")
        raise UsageError(f"mountpoint {path} is busy: something is already mounted there")
    problem = fuse_access_problem()
    if problem:
        raise UsageError(problem)


def fuse_access_problem(device: str = "/dev/fuse") -> str | None:
    """Why this user cannot mount, or None. libfuse opens /dev/fuse as the user (then mounts
    through the setuid fusermount3 when not root), so the device itself must be open to them."""
    try:
        st = os.stat(device)
    except OSError as e:
        return (f"{device} is missing ({e.strerror}): FUSE is not available here "
                f"(load the fuse kernel module, or give the container /dev/fuse)")
    try:
        os.close(os.open(device, os.O_RDWR))
    except OSError as e:
        if os.geteuid() == 0:
            return f"{device} is not usable ({e.strerror}); is FUSE allowed here?"
        return (f"{device} is not accessible to {_user_name()} ({e.strerror}; mode {stat.S_IMODE(st.st_mode):04o}, "
                f"owner uid {st.st_uid}): ask an administrator to run 'chmod 0666 {device}' (the fuse3 "
                f"package's default), or mount as root")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing, and users other than root mount through it: install the fuse3 package"
    return None


def _user_name() -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"uid {os.geteuid()}"
