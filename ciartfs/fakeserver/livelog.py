"""A fake worker livelog server, as a running Taskcluster task's `live.log` reference names it:

    GET /log/<token>   200, Transfer-Encoding: chunked, no Content-Length, Range ignored:
                       what was written so far, then each write as it happens, until the
                       task resolves (the last chunk), or 404 once it has (the worker is gone)

`routes(fake)` mounts it on the FakeCI's "livelog" host; the log is found by its token in the
fake's storage (storage.BlobStore.live_log). A test writes with `FakeLiveLog.write` and
resolves the task with `FakeTask.resolve`, which finishes the log.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ciartfs.fakeserver.routing import Reply, Request, Route, Served

if TYPE_CHECKING:
    from ciartfs.fakeserver.server import FakeCI

# How often a streaming answer looks at its stop switch when nothing is written.
POLL_SECONDS = 0.05


@dataclasses.dataclass(eq=False)
class FakeLiveLog:
    """A log being written: `write` appends (wakes every streaming answer), `finish` ends it."""

    data: bytearray = dataclasses.field(default_factory=bytearray)
    finished: bool = False
    token: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))
    # The demo's running task writes a line this often, from the first time its log is asked
    # for until it is finished or the fake stops.
    tick_every: float | None = None
    tick_line: Callable[[int], bytes] = lambda n: f"[tick {n:05d}] still running ...\n".encode()
    _cond: threading.Condition = dataclasses.field(default_factory=threading.Condition, repr=False)
    _ticking: bool = False

    def write(self, data: bytes) -> None:
        with self._cond:
            if self.finished:
                raise ValueError("the log is finished")
            self.data += data
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def snapshot(self) -> bytes:
        with self._cond:
            return bytes(self.data)

    def wait_past(self, offset: int, timeout: float) -> tuple[bytes, bool]:
        """(bytes after `offset`, finished), waiting up to `timeout` for there to be some."""
        with self._cond:
            if len(self.data) <= offset and not self.finished:
                self._cond.wait(timeout)
            return bytes(self.data[offset:]), self.finished

    def start_ticking(self, stopping: threading.Event) -> None:
        with self._cond:
            if self.tick_every is None or self._ticking:
                return
            self._ticking = True
        threading.Thread(target=self._tick, args=(stopping,), name="fake-livelog-tick", daemon=True).start()

    def _tick(self, stopping: threading.Event) -> None:
        """Write `tick_line(n)` every `tick_every` seconds until finished or `stopping`."""
        assert self.tick_every is not None
        n = 0
        while not stopping.wait(self.tick_every):
            try:
                self.write(self.tick_line(n))
            except ValueError:
                return
            n += 1


def routes(fake: FakeCI) -> list[Route]:
    return [Route("livelog", "", lambda request: serve(fake, request))]


def serve(fake: FakeCI, request: Request) -> None:
    if request.method != "GET":
        raise Reply(405, b"method not allowed\n", content_type="text/plain")
    handler, stopping = request.handler, fake.stopping
    parts = request.raw_path.split("/")
    live = fake.blobs.live_log(parts[2]) if len(parts) == 3 and parts[1] == "log" else None
    if live is None or live.finished:
        raise Reply(404, b"not found\n", content_type="text/plain")
    live.start_ticking(stopping)
    # Range is ignored (as the real server does); the answer streams until the log ends
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        sent = 0
        while not stopping.is_set():
            data, finished = live.wait_past(sent, POLL_SECONDS)
            if data:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                handler.wfile.flush()
                sent += len(data)
            if finished and len(data) == 0:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
                break
        else:  # the server stops: cut the stream (a worker going away)
            handler.close_connection = True
            raise Served(-1)
    except OSError:  # the reader went away
        handler.close_connection = True
        raise Served(-1) from None
    raise Served(200)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
