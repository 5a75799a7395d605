"""Shared fixtures: the fake CI server (in this process), the filesystem in-process, and real
mounts (a subprocess).

The tiers, named by the test files' prefixes (pyproject's python_files collects them):
  t1_  units and components: one layer in this process (the tree, the reader, the HTTP
       transport against loopback servers, the fake server against the services' specs).
  t2_  the filesystem in-process: the real ArtifactFS from `Mount(settings)` over the fake,
       its handlers called as the kernel calls them (`inproc`, tests/inproc.py), under trio's
       MockClock (`clock`): listings, TTLs, error mapping, forget, xattrs, what is kept.
  t3_  real mounts (`mount`: `ciartfs mount -f` in a subprocess): what only the kernel shows,
       reads through the page cache, mmap, ordinary tools on the tree.
  t4_  faults and hostile input through real mounts: misbehaving hosts, bad artifacts, URLs
       chosen by others, memory bounds, random listings.
  t5_  the commands as a user runs them: the CLI, signals, a browser, an ordinary user.
Logic goes in the lowest tier that can show it; a real mount only for what needs the kernel.
Datasets the tiers share are in tests/datasets.py.

Real-mount tests skip where /dev/fuse is unusable, unless CIARTFS_REQUIRE_FUSE=1 (set by
.ci/run), which turns that skip into a failure: CI must really mount.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from ciartfs.cli.mountpoint import is_mounted
from ciartfs.fakeserver import FakeCI, demo_dataset
from inproc import ErrorLines, InProcFactory, install_readdir_shim

TOKEN = "secret-token"
MOUNT_TIMEOUT = 20.0


def fuse_problem() -> str | None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        return f"/dev/fuse is not usable: {e.strerror}"
    os.close(fd)
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def require_fuse() -> None:
    problem = fuse_problem()
    if problem is None:
        return
    if os.environ.get("CIARTFS_REQUIRE_FUSE") == "1":
        pytest.fail(f"CIARTFS_REQUIRE_FUSE=1 but {problem}")
    pytest.skip(problem)


def serving(server: FakeCI) -> Iterator[FakeCI]:
    """A fixture's body for a fake server: started, yielded, stopped whatever the test did."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake() -> Iterator[FakeCI]:
    yield from serving(FakeCI(tokens={TOKEN}))


@pytest.fixture
def demo_fake(fake: FakeCI) -> FakeCI:
    demo_dataset(fake)
    return fake


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a ciartfs process: no token and no user config unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRCLE", "CIARTFS_", "GH_", "GITHUB_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg-run")
    env.update(extra)
    return env


SPECS_DIR = Path(os.environ.get("CIARTFS_SPECS") or Path(__file__).resolve().parent / "specs")
"""The services' specs, copied unchanged into tests/specs/ (its README names sources and
licences) so that a clean checkout checks the fakes; CIARTFS_SPECS names another copy."""


def blob(seed: int, size: int) -> bytes:
    """Reproducible artifact bytes."""
    return random.Random(seed).randbytes(size)


def expect_errno(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"{fn.__name__}{args}: {info.value}"


def wait_for(predicate, timeout: float = 15.0) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@dataclasses.dataclass
class Mounted:
    path: Path
    log: Path
    proc: subprocess.Popen[bytes]
    expect_errors: bool = False

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Unmount cleanly (SIGTERM), and whatever happens, leave no mount behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if is_mounted(str(self.path)):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)


class MountFactory:
    def __init__(self, tmp_path: Path, fake: FakeCI) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        self.mounts: list[Mounted] = []

    def __call__(self, *args: str, token: str | None = None, cache_dir: Path | None = None,
                 name: str = "mnt", env: dict[str, str] | None = None) -> Mounted:
        require_fuse()
        path = self.tmp_path / f"{name}{len(self.mounts)}"
        path.mkdir()
        log = self.tmp_path / f"{name}{len(self.mounts)}.log"
        cmd = [sys.executable, "-m", "ciartfs", "mount", "-f", str(path),
               "--circleci-host", self.fake.api_url, "--github-api-url", self.fake.api_url,
               "--cache-dir", str(cache_dir or self.tmp_path / "cache"),
               "--log-file", str(log), "-v", "--timeout", "5", *args]
        extra = {"CIRCLE_TOKEN": token} if token else {}
        extra.update(env or {})
        with open(log.with_suffix(".stderr"), "wb") as stderr:  # the child keeps its own copy
            proc = subprocess.Popen(cmd, env=clean_env(self.tmp_path, **extra), stdout=subprocess.DEVNULL, stderr=stderr)
        mounted = Mounted(path, log, proc)
        self.mounts.append(mounted)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(str(path)):
            if proc.poll() is not None or time.monotonic() > deadline:
                mounted.stop()
                pytest.fail(f"mount did not come up (exit {proc.poll()}):\n{mounted.log_text()}"
                            f"{log.with_suffix('.stderr').read_text(errors='replace')}")
            time.sleep(0.05)
        os.stat(path)  # answered by the filesystem
        return mounted

    def close(self) -> list[str]:
        """Stop every mount; returns problems found in their logs."""
        problems = []
        for m in self.mounts:
            m.stop()
            text = m.log_text() + m.log.with_suffix(".stderr").read_text(errors="replace")
            if "Traceback" in text:
                problems.append(f"{m.path}: a traceback in the log:\n{text[-4000:]}")
            if " ERROR " in text and not m.expect_errors:
                problems.append(f"{m.path}: an unexpected ERROR line in the log:\n{text[-4000:]}")
            if is_mounted(str(m.path)):
                problems.append(f"{m.path}: still mounted after stop")
        return problems


@pytest.fixture
def mount(tmp_path: Path, fake: FakeCI) -> Iterator[MountFactory]:
    """mount(*extra_args, token=..., cache_dir=...) -> Mounted; all unmounted at teardown,
    and a traceback or an unexpected ERROR in a mount's log fails the test."""
    yield from mounting(MountFactory(tmp_path, fake))


def mounting(factory: MountFactory) -> Iterator[MountFactory]:
    """A fixture's body for a MountFactory: every mount unmounted at teardown, and a traceback
    or an unexpected ERROR in a mount's log fails the test."""
    try:
        yield factory
    finally:
        problems = factory.close()
    if problems:
        pytest.fail("\n\n".join(problems))


# -- the in-process tier (tests/inproc.py) -------------------------------------------------------

@pytest.fixture
def clock() -> MockClock:
    """trio's clock for the test: real speed (timeouts still fire), and `jump`-able, so a
    test steps over a TTL (`fs.advance`) instead of sleeping through it."""
    return MockClock(rate=1.0)


@pytest.fixture
async def inproc(tmp_path: Path, fake: FakeCI, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcFactory]:
    """`await inproc(**flags)` -> InProcFS: the real ArtifactFS over the fake, called without the
    kernel. An internal error in a handler, or an ERROR log line the test did not expect
    (`fs.expect_errors = True`), fails the test."""
    install_readdir_shim(monkeypatch)
    current = trio.lowlevel.current_clock()
    errors = ErrorLines()
    logger = logging.getLogger("ciartfs")
    logger.addHandler(errors)
    problems: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            factory = InProcFactory(tmp_path, fake.api_url, nursery,
                                    current if isinstance(current, MockClock) else None)
            try:
                yield factory
            finally:
                problems = await factory.aclose()
                nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(errors)
    if errors.lines and not any(fs.expect_errors for fs in factory.made):
        problems.append("unexpected ERROR log lines:\n" + "\n".join(errors.lines))
    if problems:
        pytest.fail("\n\n".join(problems))
