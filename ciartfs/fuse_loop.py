"""pyfuse3's request loop, made cheaper per request when requests are already queued.

pyfuse3's `_session_loop` (internal.pxi) has each worker await `_wait_fuse_readable()` before
it reads the next request from /dev/fuse: a trio Lock (one checkpoint), then
`trio.lowlevel.wait_readable(fd)` (an epoll registration, the task parked, woken by the next
run-loop pass), for every request, even when the kernel has one queued already (`grep -r`
asks its next question while we answer the last one). The lock and the wait exist because the
fd is blocking: a read with nothing queued would stop the whole trio thread, and two workers
woken by one readiness would both read.

`install()` replaces that function (Cython looks module-level names up in the module's dict
when called) by one that keeps what it guarantees and skips the wait when it can:

- a worker first passes a checkpoint (every request still yields to the rest of trio once,
  and a cancelled loop is cancelled there), then asks poll(2) with a zero timeout whether a
  request is queued; if one is, it returns at once and reads it (no await in between, so no
  other task can take it first);
- otherwise it waits through pyfuse3's own function (its lock, its wait, its handling of a
  session that exits or an fd closed by `pyfuse3.terminate()`, and its count of idle workers,
  which decides when workers are added or retire), and when that says readable, asks poll(2)
  again before returning: a worker that waited may find the request taken by one that did
  not, and then waits again instead of blocking in read(2).

A dead connection (unmounted) polls as readable (POLLERR): the read then ends the session,
as it does after a wait. Guarded: only pyfuse3 versions checked against this description
(PYFUSE3_VERSIONS), and only when exactly one /dev/fuse descriptor is open (pyfuse3 opens
one; which one is not exposed): otherwise pyfuse3's own loop runs unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
from collections.abc import Awaitable, Callable

import pyfuse3
import trio

log = logging.getLogger(__name__)

# pyfuse3 releases whose internal.pxi `_wait_fuse_readable` / `_session_loop` were read for this
PYFUSE3_VERSIONS = frozenset({"3.5.0"})
READY = select.POLLIN | select.POLLERR | select.POLLHUP
# pyfuse3's own, kept at import: what `install` wraps, however often it is called
_PYFUSE3_WAIT: Callable[[], Awaitable[bool]] | None = getattr(pyfuse3, "_wait_fuse_readable", None)


@dataclasses.dataclass
class LoopStats:
    """How the replaced wait ended, for the log at unmount: a request already queued, or after
    pyfuse3's own wait (and how often that wait found the request taken by another worker)."""

    queued: int = 0
    waited: int = 0
    taken: int = 0


stats = LoopStats()


def fuse_fd(fd_dir: str = "/proc/self/fd") -> int | None:
    """The one open /dev/fuse descriptor, or None when there is not exactly one."""
    found = []
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)) == "/dev/fuse":
                found.append(int(name))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return found[0] if len(found) == 1 else None


def queued_waiter(fd: int, wait: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    """A `_wait_fuse_readable` that returns at once when a request is queued on `fd`, and
    otherwise waits through `wait` (pyfuse3's own) and checks again (see the module docstring)."""
    poller = select.poll()
    poller.register(fd, READY)
    poll = poller.poll

    async def wait_fuse_readable() -> bool:
        await trio.lowlevel.checkpoint()
        if poll(0):
            stats.queued += 1
            return True
        while True:
            if not await wait():
                return False
            if poll(0):  # (no await between this and the caller's read)
                stats.waited += 1
                return True
            stats.taken += 1

    return wait_fuse_readable


def install() -> bool:
    """Replace pyfuse3's `_wait_fuse_readable` after `pyfuse3.init` (see the module docstring).
    Returns whether it did; pyfuse3's own loop runs otherwise."""
    original = _PYFUSE3_WAIT
    if pyfuse3.__version__ not in PYFUSE3_VERSIONS or original is None:
        log.debug("pyfuse3 %s: its own request loop", pyfuse3.__version__)
        return False
    fd = fuse_fd()
    if fd is None:
        log.debug("no single /dev/fuse descriptor: pyfuse3's own request loop")
        return False
    pyfuse3._wait_fuse_readable = queued_waiter(fd, original)  # type: ignore[attr-defined]
    return True
