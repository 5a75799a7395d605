"""Tier 1: the replacement of pyfuse3's wait for the FUSE fd (fuse_loop.py), over a pipe that
stands for /dev/fuse: it returns at once only when a request is queued, never says readable
when nothing is (a read would block the trio thread), and keeps pyfuse3's own answers."""

from __future__ import annotations

import os

import pyfuse3
import pytest
import trio

from ciartfs import fuse_loop


@pytest.fixture
def pipe():
    r, w = os.pipe()
    ends = {"r": r, "w": w}
    yield ends
    for fd in ends.values():
        if fd is not None:
            os.close(fd)


class PyfuseWait:
    """Stands for pyfuse3's `_wait_fuse_readable`: counts calls, answers from a script."""

    def __init__(self, answers=(), before=None) -> None:
        self.calls = 0
        self.answers = list(answers)
        self.before = before  # called with the call's number before it answers

    async def __call__(self) -> bool:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.before is not None:
            self.before(self.calls)
        return self.answers.pop(0)


async def test_a_queued_request_is_read_without_waiting_for_the_fd(pipe):
    os.write(pipe["w"], b"request")
    wait = PyfuseWait()
    assert await fuse_loop.queued_waiter(pipe["r"], wait)() is True
    assert wait.calls == 0, "pyfuse3's wait (lock, wait_readable) was skipped"


async def test_it_still_yields_to_trio_and_is_cancelled_there(pipe):
    os.write(pipe["w"], b"request")
    waiter = fuse_loop.queued_waiter(pipe["r"], PyfuseWait())
    ran = []

    async def other() -> None:
        ran.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(3):  # (each pass a batch of trio's run queue, in any order within it)
            await waiter()  # a flood of queued requests never starves the rest of trio
        assert ran == [True]
    with trio.CancelScope() as scope:
        scope.cancel()
        await waiter()
        pytest.fail("not cancelled")


async def test_nothing_queued_waits_through_pyfuse3_and_checks_again_before_saying_readable(pipe):
    """pyfuse3's wait said readable, but another worker took the request meanwhile: waiting
    again, not returning True (the caller's read(2) of a blocking fd would stop everything)."""
    wait = PyfuseWait([True, True], before=lambda n: n == 2 and os.write(pipe["w"], b"request"))
    assert await fuse_loop.queued_waiter(pipe["r"], wait)() is True
    assert wait.calls == 2
    assert os.read(pipe["r"], 100) == b"request"


async def test_pyfuse3_saying_stop_is_passed_on(pipe):
    wait = PyfuseWait([False])
    assert await fuse_loop.queued_waiter(pipe["r"], wait)() is False
    assert wait.calls == 1


async def test_a_dead_connection_is_readable_so_that_the_read_ends_the_session(pipe):
    os.close(pipe["w"])
    pipe["w"] = None
    wait = PyfuseWait()
    assert await fuse_loop.queued_waiter(pipe["r"], wait)() is True  # POLLHUP: read(2) returns at once
    assert wait.calls == 0


def test_the_fuse_fd_is_found_only_when_there_is_exactly_one(tmp_path):
    fds = tmp_path / "fd"
    fds.mkdir()
    (fds / "0").symlink_to("/dev/null")
    assert fuse_loop.fuse_fd(str(fds)) is None
    (fds / "7").symlink_to("/dev/fuse")
    (fds / "8").symlink_to("socket:[1234]")
    assert fuse_loop.fuse_fd(str(fds)) == 7
    (fds / "9").symlink_to("/dev/fuse")  # which one pyfuse3 reads is not known: not replaced
    assert fuse_loop.fuse_fd(str(fds)) is None


def test_install_only_over_a_checked_pyfuse3_and_a_known_fd(monkeypatch, pipe):
    monkeypatch.setattr(pyfuse3, "_wait_fuse_readable", pyfuse3._wait_fuse_readable)  # restored after
    original = pyfuse3._wait_fuse_readable
    monkeypatch.setattr(fuse_loop, "fuse_fd", lambda: pipe["r"])
    monkeypatch.setattr(pyfuse3, "__version__", "99.0")
    assert not fuse_loop.install() and pyfuse3._wait_fuse_readable is original
    monkeypatch.setattr(pyfuse3, "__version__", next(iter(fuse_loop.PYFUSE3_VERSIONS)))
    monkeypatch.setattr(fuse_loop, "fuse_fd", lambda: None)
    assert not fuse_loop.install() and pyfuse3._wait_fuse_readable is original
    monkeypatch.setattr(fuse_loop, "fuse_fd", lambda: pipe["r"])
    assert fuse_loop.install() and pyfuse3._wait_fuse_readable is not original
    assert fuse_loop.install(), "installed again (a second mount in one process): wraps pyfuse3's own, not itself"


def test_the_installed_pyfuse3_is_one_this_was_checked_against():
    """A new pyfuse3 release must be read (internal.pxi) before it is added to PYFUSE3_VERSIONS:
    fail here, not silently run the old loop, when the pin (pyproject.toml) changes."""
    assert pyfuse3.__version__ in fuse_loop.PYFUSE3_VERSIONS
    assert pyfuse3._wait_fuse_readable is not None and pyfuse3._session_loop is not None
