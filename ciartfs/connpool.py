"""HTTP/1.1 keep-alive connections on trio streams, pooled per origin, as an httpx transport.

`HttpClient` speaks httpx (`httpx.Request` in, `httpx.Response` out); this is the transport
underneath, in place of httpcore's. Why our own: a directory listing costs two small GETs per
artifact (the artifact URL's redirect, then a ranged GET for the size) and that path is
CPU-bound. Measured per small ranged GET on loopback (client CPU): 0.42 ms through
httpcore's connection, 0.17 ms with h11 on a trio stream. And for large bodies h11 copies
every byte four times on the way through its receive buffer.

So: h11 (the parser httpcore itself uses) parses each request and response head; a body
framed by Content-Length - every ranged GET - is then read straight off the socket in large
reads, no more than Content-Length; anything else (chunked, close-delimited, no body) goes
through h11. A fresh h11.Connection per exchange keeps that switch simple.

Pooling: a request takes the most recently used idle connection of its origin (checking
only that one: not expired, not readable - a readable idle socket means the server closed
it), and its body's `aclose` gives the connection back when the exchange ended cleanly.
Bounds: at most `max_per_origin` connections per origin (a request waits for a slot; the
caller's deadline covers the wait), at most `max_idle` idle connections in all.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator

import h11
import httpx
import trio

# Largest read from a socket while streaming a body: big reads cost fewer Python calls per
# byte (a 512 MiB cold read is CPU-bound on this path).
READ_SIZE = 1 << 20
# Reads while waiting for a head: most answers (redirects, small artifacts) fit whole.
HEAD_READ_SIZE = 64 << 10
# Longest wait to close a connection politely (TLS close_notify) before just closing it.
CLOSE_TIMEOUT = 1.0
# Response heads larger than this are refused (S3 presigned redirects are a few KiB).
MAX_HEAD_BYTES = 100 << 10


def _limit(request: httpx.Request, key: str) -> float | None:
    return request.extensions.get("timeout", {}).get(key)


def _deadline(timeout: float | None) -> contextlib.AbstractContextManager[object]:
    """A timeout for one socket operation, when the request names one. HttpClient names none
    (one deadline bounds each whole call), and a cancel scope per operation is a measurable
    share of a small GET's CPU."""
    return contextlib.nullcontext() if timeout is None else trio.fail_after(timeout)


class _Connection:
    __slots__ = ("stream", "socket", "idle_since")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket
        self.idle_since = 0.0

    async def send_all(self, data: bytes, timeout: float | None) -> None:
        try:
            with _deadline(timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise httpx.WriteError(f"sending the request: {e}") from None

    async def receive(self, max_bytes: int, timeout: float | None) -> bytes:
        try:
            with _deadline(timeout):
                return await self.stream.receive_some(max_bytes)
        except trio.TooSlowError:
            raise httpx.ReadTimeout("timed out waiting for the server") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise httpx.ReadError(f"reading the answer: {e}") from None

    async def aclose(self) -> None:
        # Shielded: a socket must not leak because its task was cancelled. Bounded: TLS sends
        # close_notify, which must not wait forever on a peer that stopped reading.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            try:
                await self.stream.aclose()
            except Exception:
                pass
        self.socket.close()  # a no-op when aclose got that far


class _Exchange:
    """One request/response on a connection: h11 for the heads, the socket for sized bodies."""

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self.conn = conn
        self.read_timeout = read_timeout
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.remaining: int | None = None  # body bytes still to read directly; None: through h11
        self.prefix = b""  # body bytes h11 had already buffered with the head
        self.done = False
        self.reusable = False

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise httpx.RemoteProtocolError(str(e)) from None
            if event is not h11.NEED_DATA:
                return event
            data = await self.conn.receive(HEAD_READ_SIZE, self.read_timeout)
            try:
                self.h11.receive_data(data)  # b"": the server closed its side
            except h11.RemoteProtocolError as e:
                raise httpx.RemoteProtocolError(str(e)) from None

    async def response_head(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like
            if isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("server closed the connection without an answer")
            assert isinstance(event, h11.Response)
            break
        names = [name for name, _ in event.headers]
        # 204 and 304 never have a body, whatever Content-Length says: h11 knows that rule
        if b"content-length" in names and b"transfer-encoding" not in names and event.status_code not in (204, 304):
            # h11 has checked the value (digits, repeated values agree)
            declared = next(v for n, v in event.headers if n == b"content-length")
            length = int(declared.split(b",")[0])
            self.prefix, _ = self.h11.trailing_data
            self.reusable = event.http_version == b"1.1" and not any(
                n == b"connection" and b"close" in v.lower() for n, v in event.headers)
            if len(self.prefix) > length:  # bytes beyond the body: ours are the first `length`,
                self.prefix = self.prefix[:length]  # and the connection is out of step
                self.reusable = False
            self.remaining = length - len(self.prefix)
            self.done = length == 0  # nothing to read: the connection is free at once
        return event

    async def body(self) -> AsyncIterator[bytes]:
        if self.remaining is None:
            while True:
                event = await self.next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise httpx.RemoteProtocolError("connection closed inside the body")
            self.done = True
            self.reusable = (self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
                             and not self.h11.trailing_data[0])
            return
        if self.prefix:
            prefix, self.prefix = self.prefix, b""
            yield prefix
        while self.remaining > 0:
            data = await self.conn.receive(min(self.remaining, READ_SIZE), self.read_timeout)
            if not data:
                raise httpx.RemoteProtocolError(f"server closed the connection {self.remaining} bytes short of the body")
            self.remaining -= len(data)
            yield data
        self.done = True


class _Origin:
    def __init__(self, key: tuple[bytes, bytes, int | None], max_connections: int) -> None:
        self.key = key
        self.slots = trio.Semaphore(max_connections)
        self.idle: list[_Connection] = []


class _Body(httpx.AsyncByteStream):
    """A response body; closing it hands the connection back (or closes a spent one)."""

    def __init__(self, pool: PoolPerOrigin, origin: _Origin, exchange: _Exchange) -> None:
        self._pool, self._origin, self._exchange = pool, origin, exchange
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._exchange.body()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        exchange = self._exchange
        try:
            if exchange.done and exchange.reusable:
                self._pool._give_back(self._origin, exchange.conn)
            else:  # unread or broken: the rest of the body would arrive on the next request
                await exchange.conn.aclose()
        finally:
            self._pool._release(self._origin)


class PoolPerOrigin(httpx.AsyncBaseTransport):
    def __init__(self, *, max_per_origin: int, max_idle: int = 128, keepalive_expiry: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_per_origin = max_per_origin
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self._origins: dict[tuple[bytes, bytes, int | None], _Origin] = {}
        self._idle_count = 0
        self._ssl = ssl_context
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # certificates verified, as httpx does by default
        return self._ssl

    def _release(self, origin: _Origin) -> None:
        origin.slots.release()
        self._forget_if_unused(origin)

    def _forget_if_unused(self, origin: _Origin) -> None:
        if origin.slots.value == self.max_per_origin and not origin.idle and self._origins.get(origin.key) is origin:
            # nobody holds or awaits a slot and nothing is pooled: forget the origin, so that
            # a long-lived mount reading from many hosts does not keep one entry per host
            self._origins.pop(origin.key, None)

    async def close_expired(self) -> int:
        """Close idle connections past their keep-alive expiry (or closed by their server), and
        forget origins left empty; returns how many were closed. Reuse only ever checks the
        newest idle connection of an origin that is asked again, so without this sweep a host
        never revisited (a presigned storage host, a build's region) keeps its sockets open,
        half-closed by the server, until unmount."""
        now = trio.current_time()
        closed = 0
        for origin in list(self._origins.values()):
            # oldest first; reuse pops from the end, so the expired ones are at the front
            while origin.idle and (now - origin.idle[0].idle_since >= self.keepalive_expiry
                                   or origin.idle[0].socket.is_readable()):
                conn = origin.idle.pop(0)
                self._idle_count -= 1
                closed += 1
                await conn.aclose()
            self._forget_if_unused(origin)
        return closed

    async def close_expired_forever(self) -> None:
        """Sweep with `close_expired` every keep-alive period, until cancelled (unmount)."""
        while True:
            await trio.sleep(self.keepalive_expiry)
            await self.close_expired()

    async def _take_idle(self, origin: _Origin) -> _Connection | None:
        now = trio.current_time()
        while origin.idle:
            conn = origin.idle.pop()
            self._idle_count -= 1
            if now - conn.idle_since < self.keepalive_expiry and not conn.socket.is_readable():
                return conn
            await conn.aclose()
        return None

    def _give_back(self, origin: _Origin, conn: _Connection) -> None:
        if not self._closed and self._idle_count < self.max_idle:
            conn.idle_since = trio.current_time()
            origin.idle.append(conn)
            self._idle_count += 1
        else:
            # not pooled: closed at once, without awaiting (we may be in a cancelled scope)
            conn.socket.close()

    async def _connect(self, url: httpx.URL, timeout: float | None) -> _Connection:
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with _deadline(timeout):
                tcp = await trio.open_tcp_stream(host, port)
                stream: trio.abc.Stream = tcp
                if url.scheme == "https":
                    stream = trio.SSLStream(tcp, self._ssl_context(), server_hostname=host, https_compatible=True)
                    await stream.do_handshake()
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, trio.BrokenResourceError) as e:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {e}") from None
        return _Connection(stream, tcp.socket)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        key = (url.raw_scheme, url.raw_host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(key, self.max_per_origin)
        await origin.slots.acquire()
        conn: _Connection | None = None
        try:
            conn = await self._take_idle(origin)
            if conn is None:
                conn = await self._connect(url, _limit(request, "connect"))
            exchange = _Exchange(conn, _limit(request, "read"))
            try:
                head = exchange.h11.send(h11.Request(method=request.method, target=url.raw_path,
                                                     headers=request.headers.raw))
                body = [exchange.h11.send(h11.Data(data=chunk)) async for chunk in request.stream if chunk]
                end = exchange.h11.send(h11.EndOfMessage())
            except h11.LocalProtocolError as e:
                raise httpx.LocalProtocolError(str(e)) from None
            await conn.send_all(b"".join([head, *body, end]), _limit(request, "write"))
            response = await exchange.response_head()
        except BaseException:
            if conn is not None:
                await conn.aclose()
            self._release(origin)
            raise
        return httpx.Response(status_code=response.status_code, headers=response.headers.raw_items(),
                              stream=_Body(self, origin, exchange))

    async def aclose(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                await origin.idle.pop().aclose()
        self._idle_count = 0
