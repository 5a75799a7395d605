"""Growing files (a running Taskcluster task's live log): one shared stream per open artifact.

While a task runs, its `live.log` is a `reference` to the worker's livelog server, which
answers 200 with no Content-Length, ignores Range, and streams until the task ends. Such a file
cannot be read by range or probed for a size, so it is served from one streaming GET.

Invariants:
- A live artifact is never asked for its size: its size is the bytes seen so far (while a
  stream is open), or the count its last stream reached (0 before any was opened). Listing
  never touches the network for it.
- One streaming GET per live artifact while any handle has it open, shared by every reader;
  it is closed when the last handle is released. A stream that ended (the task resolved, or
  the body was a plain one) serves what it got until then.
- Memory is bounded whatever the log's size: arrived bytes go to an unlinked temporary file
  (written by a worker thread); at most PENDING_LIMIT bytes wait in memory, and while they do
  the body is not read further (TCP pushes back on the server). A stream stops with an error
  at `max_size` bytes.
- A read never waits long: it returns what has arrived; at the end of what has arrived it
  waits only for the first answer (the operation timeout) or for QUIET_SECONDS after the last
  arrival, then returns b"". So `tail -f` (which polls) follows the log, and `cat` ends.
- Content-Encoding gzip/deflate is decoded as it arrives (a resolved log's backing storage
  keeps it gzip-encoded), in a worker thread, one bounded step at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import cachetools
import trio

from ciartfs.errors import CiartfsError, UpstreamError, redact_url

log = logging.getLogger(__name__)

# Bytes arrived but not yet in the temporary file: the body is not read further meanwhile.
PENDING_LIMIT = 4 << 20
# A read at the end of what has arrived waits this long after the last arrival: a burst (the
# backlog a new stream brings) is read whole, a quiet log answers b"" at once.
QUIET_SECONDS = 0.2
# Decoding produces at most this much per step (a bomb stops within a step of the cap).
DECODE_STEP = 1 << 20
# Last sizes seen of live artifacts no stream has open (shown by `ls -l`).
SIZES_KEPT = 10_000
_ENCODINGS = (None, "identity", "gzip", "x-gzip", "deflate")


# (url, credentials) -> `async with` it for (body chunks, Content-Encoding): HttpClient.stream
Opener = Callable[[str, bool], contextlib.AbstractAsyncContextManager[tuple[AsyncIterator[bytes], str | None]]]
# At most this long an open waits, after the first answer, for the backlog to come in.
SETTLE_SECONDS = 1.0


class LiveStream:
    """One artifact's streaming GET and the bytes it brought (see the module docstring)."""

    def __init__(self, key: str, url: str, spool_dir: Path | None, max_size: int) -> None:
        self.key, self.url, self.max_size = key, url, max_size
        # unlinked at once: nothing left behind; it lives as long as the stream (close() closes it)
        self.file = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115
        self.written = 0  # bytes [0, written) are in the file
        self.pending = bytearray()  # bytes [written, seen) not yet
        self.answered = False  # the server's answer (its head) has come
        self.ended = False  # the body ended, failed, or the stream was closed
        self.error: CiartfsError | None = None
        self.last_arrival = trio.current_time()
        self.changed = trio.Event()
        self.drained = trio.Event()
        self.users = 0
        self.scope = trio.CancelScope()
        self._writing = False
        self._closing = False

    @property
    def seen(self) -> int:
        return self.written + len(self.pending)

    def _note(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def add(self, data: bytes) -> None:
        if not data:
            return
        if self.seen + len(data) > self.max_size:
            raise UpstreamError(f"{redact_url(self.url)}: live log exceeds {self.max_size} bytes (--max-decoded-size)")
        self.pending += data
        self.last_arrival = trio.current_time()
        self._note()

    def finish(self, error: CiartfsError | None = None) -> None:
        if not self.ended:
            self.ended, self.error = True, error or self.error
            self._note()

    async def write_pending(self) -> None:
        """Move what is pending to the file (one writer at a time)."""
        if self._writing or not self.pending or self._closing:
            return
        self._writing = True
        try:
            batch = bytes(self.pending)
            fd = self.file.fileno()
            try:
                await trio.to_thread.run_sync(os.pwrite, fd, batch, self.written)
            except OSError as e:  # (a full disk): the stream stops, what arrived stays readable
                if not self.file.closed:
                    self.error = UpstreamError(f"{redact_url(self.url)}: cannot spool the live log: {e.strerror}")
                    self.scope.cancel()
                return
            # readers may have sliced `pending` meanwhile: it still held these bytes
            del self.pending[:len(batch)]
            self.written += len(batch)
        finally:
            self._writing = False
            if self._closing:  # closed meanwhile: only now, so the descriptor cannot be reused under the write
                self.file.close()
            self.drained.set()
            self.drained = trio.Event()

    async def make_room(self) -> None:
        """Wait until fewer than PENDING_LIMIT bytes are pending (or spooling failed)."""
        while len(self.pending) >= PENDING_LIMIT and self.error is None and not self._closing:
            if self._writing:
                await self.drained.wait()
            else:
                await self.write_pending()

    async def wait_for(self, offset: int, first_wait: float) -> None:
        """Return once bytes past `offset` have arrived, or the stream ended, or waiting longer
        would not be brief (see the module docstring)."""
        first_deadline = trio.current_time() + first_wait
        while self.seen <= offset and not self.ended:
            deadline = first_deadline if not self.answered else self.last_arrival + QUIET_SECONDS
            if trio.current_time() >= deadline:
                return
            with trio.move_on_at(deadline):
                await self.changed.wait()

    async def settle(self, first_wait: float) -> None:
        """Return once the first answer has come and the burst after it has (quiet for
        QUIET_SECONDS, at most SETTLE_SECONDS), or the stream ended, or `first_wait` passed
        without an answer."""
        first_deadline = trio.current_time() + first_wait
        settle_deadline: float | None = None
        while not self.ended:
            now = trio.current_time()
            if self.answered:
                if settle_deadline is None:
                    settle_deadline = now + SETTLE_SECONDS
                deadline = min(settle_deadline, self.last_arrival + QUIET_SECONDS)
            else:
                deadline = first_deadline
            if now >= deadline:
                return
            with trio.move_on_at(deadline):
                await self.changed.wait()

    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` arrived bytes from `offset` (b"" at or past what has arrived)."""
        end = min(offset + length, self.seen)
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            if self._closing:
                raise UpstreamError(f"{redact_url(self.url)}: live log closed")
            if pos < self.written:
                want = min(end, self.written) - pos
                try:
                    chunk = await trio.to_thread.run_sync(os.pread, self.file.fileno(), want, pos)
                except (OSError, ValueError) as e:  # (ValueError: closed by the last release)
                    raise UpstreamError(f"{redact_url(self.url)}: live log spool unreadable: {e}") from None
                if not chunk:
                    raise UpstreamError(f"{redact_url(self.url)}: live log spool file is short")
            else:
                lo = pos - self.written
                chunk = bytes(self.pending[lo:lo + end - pos])
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Stop the stream and drop its bytes (the last reader is gone)."""
        self.scope.cancel()
        self.finish()
        self._closing = True
        if not self._writing:
            self.file.close()


class LiveLogs:
    """Every open live stream, by artifact key; streams run in the background nursery."""

    def __init__(self, opener: Opener, *, timeout: float, max_size: int, spool_dir: Path | None = None) -> None:
        self._opener = opener
        self.timeout = timeout
        self.max_size = max_size
        self.spool_dir = spool_dir
        self.streams: dict[str, LiveStream] = {}
        self._sizes: cachetools.LRUCache[str, int] = cachetools.LRUCache(SIZES_KEPT)
        self._nursery: trio.Nursery | None = None
        self.opened = 0  # streaming GETs started (for tests and status)

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def size(self, key: str) -> int:
        """Bytes seen so far (no network)."""
        stream = self.streams.get(key)
        return stream.seen if stream is not None else self._sizes.get(key, 0)

    async def acquire(self, key: str, url: str, credentials: bool) -> LiveStream:
        """The artifact's shared stream (started if none is open), its first answer waited for
        briefly so that the backlog is in when the opener looks at the size."""
        stream = self.streams.get(key)
        # a stream that broke is not shared with a new reader: it gets a fresh one (its own
        # readers keep theirs until they close)
        if stream is None or (stream.ended and stream.error is not None):
            if self._nursery is None:
                raise UpstreamError("internal: live logs are not started")
            try:
                stream = LiveStream(key, url, self.spool_dir, self.max_size)
            except OSError as e:
                raise UpstreamError(f"cannot make a spool file for a live log in {self.spool_dir}: {e.strerror}") from None
            self.streams[key] = stream
            self.opened += 1
            self._nursery.start_soon(self._run, stream, credentials)
        stream.users += 1
        try:
            await stream.settle(self.timeout)
        except BaseException:
            self.release(stream)
            raise
        if stream.error is not None and stream.seen == 0:
            error = stream.error
            self.release(stream)
            raise error
        return stream

    def release(self, stream: LiveStream) -> None:
        stream.users -= 1
        if stream.users <= 0:
            if self.streams.get(stream.key) is stream:
                self._sizes[stream.key] = stream.seen
                del self.streams[stream.key]
            stream.close()

    async def _run(self, stream: LiveStream, credentials: bool) -> None:
        url = redact_url(stream.url)
        with stream.scope:
            try:
                async with self._opener(stream.url, credentials) as (chunks, encoding):
                    if encoding not in _ENCODINGS:
                        raise UpstreamError(f"{url}: unsupported Content-Encoding {encoding!r}")
                    inflater = _Inflater() if encoding not in (None, "identity") else None
                    stream.answered = True
                    stream.last_arrival = trio.current_time()
                    stream._note()
                    async for chunk in chunks:
                        if inflater is None:
                            stream.add(chunk)
                        else:
                            await inflater.feed(stream, chunk)
                        await stream.make_room()
                        if stream.pending and not stream._writing:
                            self._nursery.start_soon(stream.write_pending)  # type: ignore[union-attr]
                    if inflater is not None and not inflater.zlib.eof:
                        raise UpstreamError(f"{url}: the live log's {encoding} stream is truncated")
                log.debug("%s: live log ended after %d bytes", url, stream.seen)
                stream.finish()
            except CiartfsError as e:
                log.warning("%s: live log stream failed after %d bytes: %s", url, stream.seen, e)
                stream.finish(e)
            except zlib.error as e:
                log.warning("%s: live log does not decode: %s", url, e)
                stream.finish(UpstreamError(f"{url}: live log does not decode as its Content-Encoding says"))
            except Exception as e:  # a bug must not kill the background nursery (the mount)
                log.exception("%s: live log stream failed", url)
                stream.finish(UpstreamError(f"{url}: internal error streaming ({type(e).__name__})"))
        stream.finish()


class _Inflater:
    """gzip or zlib (47: either header), member after member (`cat a.gz b.gz`)."""

    def __init__(self) -> None:
        self.zlib = zlib.decompressobj(wbits=47)

    async def feed(self, stream: LiveStream, chunk: bytes) -> None:
        data = chunk
        while data:
            if self.zlib.eof:  # another member may follow; zero padding may too
                data = data.lstrip(b"\0")
                if not data:
                    return
                self.zlib = zlib.decompressobj(wbits=47)
            inflater = self.zlib
            out = await trio.to_thread.run_sync(inflater.decompress, data, DECODE_STEP)
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            stream.add(out)
            await stream.make_room()
