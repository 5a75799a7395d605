"""Tier 4: an ordinary user, not root, runs the README's commands: mount, list, read, unmount.

The user is created for the test run and gets its own install of ciartfs (a venv on the
system's python3 under /var/tmp): the checkout's venv may live where only root can read it.
/dev/fuse is opened to users as the fuse3 package's udev rule does on a normal Debian machine
(0666) for the duration of a test and restored after; containers often leave it 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciartfs.cli.mountpoint import is_mounted
from conftest import blob, require_fuse, wait_for

USER = "ciartfs-nonroot-test"
LOCK_PATH = "/run/lock/ciartfs-nonroot-test.lock"
SYSTEM_PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[1]


class User:
    def __init__(self, name: str, base: Path, home: Path) -> None:
        self.name, self.base, self.home = name, base, home
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.ciartfs = str(base / "venv/bin/ciartfs")

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "XDG_CACHE_HOME": str(self.home / ".cache"),
               "XDG_CONFIG_HOME": str(self.home / ".config"), "LANG": "C.UTF-8"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.home,
                              user=self.uid, group=self.gid, extra_groups=[], stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    """A non-root user with a home and its own install of ciartfs; removed afterwards."""
    require_fuse()
    if os.geteuid() != 0:
        pytest.skip("creating a user for the test needs root")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    # Two suites on one machine would share the user (one deleting it under the other) and
    # /dev/fuse's mode (changed below): each holds this lock while it uses them.
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when closed)
        yield from _made_user()


def _made_user() -> Iterator[User]:
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        created = True
    base = Path(tempfile.mkdtemp(prefix="ciartfs-nonroot-", dir="/var/tmp"))
    try:
        os.chmod(base, 0o755)
        src = base / "src"
        shutil.copytree(REPO / "ciartfs", src / "ciartfs", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, src / name)
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(base / "venv")], check=True)
        subprocess.run([str(base / "venv/bin/pip"), "install", "-q", str(src)], check=True, capture_output=True)
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        home = base / "home"
        home.mkdir(mode=0o700)
        entry = pwd.getpwnam(USER)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield User(USER, base, home)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if created:
            subprocess.run(["userdel", USER], capture_output=True)


@contextlib.contextmanager
def fuse_device_mode(mode: int) -> Iterator[None]:
    before = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", mode)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


@pytest.fixture
def user_mounts(user: User) -> Iterator[list[tuple[Path, int]]]:
    """(mountpoint, daemon pid) of the user's mounts: unmounted and stopped whatever happens."""
    mounts: list[tuple[Path, int]] = []
    try:
        yield mounts
    finally:
        for path, pid in mounts:
            if is_mounted(str(path)):
                subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_an_ordinary_user_mounts_lists_reads_and_unmounts(user, user_mounts, fake):
    data = blob(7, 3 << 20)
    build = fake.add_project("github", "acme", "api").add_build(build_num=5, status="success", lifecycle="finished")
    build.add_artifact("dist/app.bin", data)
    build.add_artifact("logs/test.log", b"PASSED one\nFAILED two\n")
    mp = user.home / "ci"
    assert user.run("mkdir", str(mp)).returncode == 0
    with fuse_device_mode(0o666):
        result = user.run(user.ciartfs, "mount", str(mp), "--circleci-host", fake.api_url)
    assert result.returncode == 0, result.stderr
    user_mounts.append((mp, int(re.search(r"\(pid (\d+)", result.stdout).group(1))))
    listed = user.run("ls", str(mp / "github/acme/api/latest/0"))
    assert listed.returncode == 0 and listed.stdout.split() == ["dist", "logs"], listed
    digest = user.run("sha256sum", str(mp / "github/acme/api/5/0/dist/app.bin"))
    assert digest.stdout.split()[0] == hashlib.sha256(data).hexdigest(), digest
    grep = user.run("grep", "-r", "FAILED", str(mp / "github/acme/api/5/"))
    assert grep.stdout.strip().endswith("logs/test.log:FAILED two"), grep
    assert (user.home / ".cache/ciartfs/blocks").is_dir()  # the user's own cache
    assert user.home.joinpath(".cache/ciartfs").stat().st_uid == user.uid
    with pytest.raises(PermissionError):  # not even root enters it without --allow-other
        os.listdir(mp)
    status = user.run(user.ciartfs, "status")
    assert str(mp) in status.stdout, status
    result = user.run(user.ciartfs, "unmount", str(mp))
    assert result.returncode == 0, result.stderr
    assert not is_mounted(str(mp))
    pid = user_mounts[-1][1]
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))


def test_a_user_without_access_to_dev_fuse_is_told_why_and_what_to_do(user, user_mounts, fake):
    mp = user.home / "ci2"
    assert user.run("mkdir", str(mp)).returncode == 0
    with fuse_device_mode(0o600):
        result = user.run(user.ciartfs, "mount", str(mp), "--circleci-host", fake.api_url)
    assert result.returncode != 0 and not is_mounted(str(mp))
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ciartfs: /dev/fuse is not accessible to user {USER}"), line
    assert "chmod 0666 /dev/fuse" in line
