"""HTTP/1.1 keep-alive connections on trio streams, pooled per origin.

This is the transport under `HttpClient`, in place of httpcore's. Why our own: a directory
listing costs two small GETs per artifact (the artifact URL's redirect, then a ranged GET for
the size) and that path is CPU-bound. Measured per small ranged GET on loopback (client CPU):
0.42 ms through httpcore's connection, 0.17 ms with h11 on a trio stream (less since). And
for large bodies h11 copies every byte four times on the way through its receive buffer.

For the same reason a request is a parsed `wire.Target` plus a header list, and an answer a
`Reply` (status, a dict of headers, a body stream), not `httpx.Request`/`httpx.Response`:
building those was a tenth of the CPU of an `ls -l` of 1000 artifacts. `ViaHttpx` sends
through any httpx transport instead (the tests script one).

Each exchange writes its request head itself (`wire.request_head`), finds where each answer
head ends and has llhttp read it (`wire.ResponseParser`, through httptools). A body framed by
Content-Length - every ranged GET - is then read straight off the socket in large reads, no
more than Content-Length, as is a body that ends when the server closes; a chunked one goes
through llhttp. Over plain TCP, request heads are written and answer heads read on the
socket's descriptor itself (`_Connection`): trio's stream calls cost more than those small
writes and reads (bodies still go through trio, which lets other tasks in between reads). A
caller that wants the whole body in one buffer (a run of blocks) has it
received straight into it (`Reply.read_into`: `recv_into`, or over TLS the records decrypted
into it): no chunk objects allocated, none joined.

Pooling: a request takes the most recently used idle connection of its origin (checking
only that one: not expired, not readable - a readable idle socket means the server closed
it), and its body's `aclose` gives the connection back when the exchange ended cleanly.
Bounds: at most `max_per_origin` connections per origin, fewer while the origin answers 429
(see `_Origin`; a request waits for a slot, the caller's deadline covers the wait), at most
`max_idle` idle connections in all.

TLS: through the ssl module's SSLSocket (`_SocketTLS`), non-blocking, trio waiting for its
descriptor: OpenSSL reads the socket and decrypts into the caller's buffer, and a receive
takes every record already here. trio's SSLStream hands over one record (at most 16 KiB) per
`receive_some`, through a Python state machine and two memory BIOs (each byte copied into
one, then out of it): receiving 512 MiB over loopback cost 2.4 CPU-s per GiB that way
(records batched), 1.56 through SSLSocket.

Addresses: with an `AddressRule`, each new connection's peer address is checked once, right
after connecting and before TLS or any request byte (`AddressRefused` otherwise); a pooled
connection was checked when it was made, so reuse costs nothing.

Broken answers: an answer the server sent whole that breaks HTTP/1.1 (see `BrokenAnswer`) is
told apart from one a closed connection cut short, so that the caller can fail at once on the
first and retry the second. The rule: llhttp refusing bytes is a broken answer (it judges
only bytes that came); the server closing the connection before a head or a body ended cut
the answer short. Answers that do not
start with "HTTP/" (HTTP/0.9, SPDY) are refused at their first bytes, and 1xx heads before the
final one are bounded in number and bytes, so a server streaming them costs little CPU.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence

import httpx
import trio

from ciartfs.buffers import unfilled
from ciartfs.net.addresses import AddressRule
from ciartfs.net.wire import HEAD_END, BrokenAnswer, ResponseParser, Target, header_dict, request_fields, request_head

# Largest read from a socket while streaming a body: big reads cost fewer Python calls per
# byte (a 512 MiB cold read is CPU-bound on this path).
READ_SIZE = 1 << 20
# Request bodies are small JSON documents a provider built (Taskcluster's startDownload):
# nothing larger is ever sent.
MAX_REQUEST_BODY = 64 << 10
# Reads while waiting for a head: most answers (redirects, small artifacts) fit whole. Also
# the reads of a chunked body (API answers): llhttp hands each read's bytes over as a copy, so
# a smaller read keeps the two within what the memory budget counts per answer (READ_SIZE).
HEAD_READ_SIZE = 64 << 10
# Longest wait to close a connection politely (TLS close_notify) before just closing it.
CLOSE_TIMEOUT = 1.0
# Response heads larger than this are refused (S3 presigned redirects are a few KiB).
MAX_HEAD_BYTES = 100 << 10
# Informational (1xx) heads accepted before the final one: we never send Expect, so at most a
# few 103 Early Hints or 102 Processing are legitimate. Their bytes count against MAX_HEAD_BYTES.
MAX_INFORMATIONAL = 16
class Reply:
    """An answer: status, headers (see `header_dict`) and a body read once with `aiter_raw`
    (bytes as sent: no content decoding). `aclose` must follow: it hands the connection
    back, or closes it when the body was not read to its end."""

    __slots__ = ("status_code", "headers", "stream")

    def __init__(self, status_code: int, headers: dict[str, str], stream: httpx.AsyncByteStream) -> None:
        self.status_code = status_code
        self.headers = headers
        self.stream = stream

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self.stream.__aiter__()

    def body_length(self) -> int | None:
        """The body's length, when it can be read with `read_into` (this pool's answers framed
        by Content-Length, nothing of them read yet); None otherwise (read it with `aiter_raw`)."""
        stream = self.stream
        return stream.length_for_into() if isinstance(stream, _Body) else None

    def finished(self) -> bool:
        """The body was read to its end, or had no bytes (this pool's answers; False for others)."""
        stream = self.stream
        return isinstance(stream, _Body) and stream.finished()

    def body_in_hand(self) -> bytes | None:
        """The whole body, when it is framed by Content-Length and came with the head (a small
        file's, most often), none of it read yet: taken without a body iterator (an async
        generator per answer). None otherwise (read it with `aiter_raw`)."""
        stream = self.stream
        return stream.body_in_hand() if isinstance(stream, _Body) else None

    async def read_all(self) -> bytearray:
        """The whole body (`body_length` bytes) received straight into one buffer: no chunk
        objects, no join. A closed connection cuts it short as `aiter_raw` does (an error: the
        buffer is never handed out unless every byte of it was received)."""
        stream = self.stream
        length = stream.length_for_into() if isinstance(stream, _Body) else None
        assert isinstance(stream, _Body) and length is not None
        buffer = unfilled(length)  # (page-aligned: the disk cache writes its blocks with O_DIRECT)
        await stream.read_into(buffer)
        return buffer

    async def aclose(self) -> None:
        await self.stream.aclose()




class ViaHttpx:
    """Sends through an httpx transport (e.g. a scripted one in tests), with the pool's interface."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(self, method: str, target: Target, headers: Sequence[tuple[str, str]], body: bytes = b"") -> Reply:
        fields = list(headers)
        if body:
            fields.append(("Content-Length", str(len(body))))
        response = await self.transport.handle_async_request(
            httpx.Request(method, target.url, headers=fields, content=body or None))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return Reply(response.status_code, header_dict(response.headers.raw), response.stream)

    async def aclose(self) -> None:
        await self.transport.aclose()


class _SocketTLS(trio.abc.Stream):
    """TLS through the ssl module's own socket (`SSLSocket`, non-blocking, on a duplicate of the
    connection's descriptor), waiting with trio for the descriptor: OpenSSL reads the socket
    itself and decrypts into the caller's buffer. trio's SSLStream goes through memory BIOs, two
    more copies of every byte, and a Python state machine per record (see the module docstring).
    Errors are the ssl module's (SSLError is an OSError); a peer closing without close_notify
    reads as the end, as SSLStream's https_compatible mode does (HTTP frames its bodies)."""

    def __init__(self, sock: trio.socket.SocketType, context: ssl.SSLContext, server_hostname: str) -> None:
        fd = os.dup(sock.fileno())
        try:
            raw = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            raw.setblocking(False)
            self.tls = context.wrap_socket(raw, server_hostname=server_hostname, do_handshake_on_connect=False)
        except BaseException:
            raw.close()
            raise
        self.fd = fd

    async def _wait(self, wants: ssl.SSLError) -> None:
        if isinstance(wants, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(self.fd)
        else:
            await trio.lowlevel.wait_readable(self.fd)

    async def do_handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                await self._wait(e)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        await trio.lowlevel.checkpoint_if_cancelled()
        while view:
            try:
                view = view[self.tls.send(view):]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                await self._wait(e)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.fd)

    async def receive_into(self, view: memoryview) -> int:
        """Up to len(view) bytes, decrypted straight into `view`: waits for the first record,
        then takes every record already here (one checkpoint, not one per 16 KiB record)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        got = 0
        while True:
            try:
                n = self.tls.recv_into(view[got:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as e:
                if got:
                    break
                await self._wait(e)
                continue
            if not n:
                break  # the end (close_notify, or the connection closed)
            got += n
            if got == len(view):
                break
        await trio.lowlevel.cancel_shielded_checkpoint()
        return got

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buffer = bytearray(max_bytes or HEAD_READ_SIZE)
        got = await self.receive_into(memoryview(buffer))
        return bytes(buffer[:got]) if got < len(buffer) else bytes(buffer)

    async def aclose(self) -> None:
        # No close_notify: an HTTP/1.1 body is framed (the server never needs it), and a
        # peer that stopped reading must not hold us. The connection's own socket closes next.
        trio.lowlevel.notify_closing(self.fd)
        self.tls.close()
        await trio.lowlevel.checkpoint()


class _Connection:
    __slots__ = ("stream", "socket", "idle_since", "plain")

    def __init__(self, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.stream = stream
        self.socket = socket
        self.idle_since = 0.0
        # plain TCP: request heads are written and answer heads read on the socket's own
        # descriptor (see send_all and receive), asked for each time: -1 once closed, never a
        # number reused since by another file
        self.plain = type(stream) is trio.SocketStream

    async def send_all(self, data: bytes) -> None:
        """A request head of a few hundred bytes fits the socket's send buffer: written at
        once, without trio's send_all (a conflict check and two checkpoints, one a round
        through the scheduler: more than the write itself, twice per listed artifact). What
        does not fit, and TLS, go the usual way."""
        sent = 0
        fd = self.socket.fileno() if self.plain else -1
        if fd >= 0:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                pass
            except OSError as e:
                raise httpx.WriteError(f"sending the request: {e}") from None
            if sent == len(data):
                return
        try:
            await self.stream.send_all(memoryview(data)[sent:] if sent else data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise httpx.WriteError(f"sending the request: {e}") from None

    async def receive(self, max_bytes: int) -> bytes:
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise httpx.ReadError(f"reading the answer: {e}") from None
        return data if type(data) is bytes else bytes(data)  # (trio's streams give bytes)

    async def receive_head(self, max_bytes: int) -> bytes:
        """`receive`, for an answer's head: plain TCP reads the descriptor and waits only when
        nothing is there (trio's receive_some also goes once through the scheduler after each
        read). Not for bodies: a body's reads go through trio, whose pass through the scheduler
        after each lets FUSE requests in while a large body keeps arriving."""
        fd = self.socket.fileno() if self.plain else -1
        if fd < 0:  # TLS, or closed (trio says so)
            return await self.receive(max_bytes)
        while True:
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as e:
                raise httpx.ReadError(f"reading the answer: {e}") from None
            try:
                await trio.lowlevel.wait_readable(self.socket)
            except (trio.ClosedResourceError, OSError) as e:
                raise httpx.ReadError(f"reading the answer: {e}") from None

    async def receive_into(self, view: memoryview) -> int:
        """Up to len(view) bytes received into `view`: how many (0: the server closed)."""
        stream = self.stream
        try:
            if isinstance(stream, trio.SocketStream):
                return await stream.socket.recv_into(view)
            if isinstance(stream, _SocketTLS):
                return await stream.receive_into(view)
            data = await stream.receive_some(len(view))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise httpx.ReadError(f"reading the answer: {e}") from None
        view[:len(data)] = data
        return len(data)

    async def aclose(self) -> None:
        # Shielded: a socket must not leak because its task was cancelled. Bounded: TLS sends
        # close_notify, which must not wait forever on a peer that stopped reading.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            try:
                await self.stream.aclose()
            except Exception:  # noqa: BLE001 - a failed close leaves nothing to do: the socket is closed next
                pass
        self.socket.close()  # a no-op when aclose got that far


class _Exchange:
    """One request/response on a connection. Heads are found here (HEAD_END) and read by
    `ResponseParser` (llhttp); a body framed by Content-Length - every ranged GET - is then read
    straight off the socket in large reads, no more than Content-Length, as is one that ends
    when the server closes; a chunked body goes through llhttp."""

    __slots__ = ("conn", "parser", "status", "headers", "remaining", "until_close", "prefix", "reusable", "done",
                 "started")

    def __init__(self, conn: _Connection, method: str) -> None:
        self.conn = conn
        self.parser = ResponseParser(method)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.remaining: int | None = None  # body bytes still to read directly; None: chunked, or until close
        self.until_close = False  # the body ends when the server closes the connection
        self.prefix = b""  # body bytes that came with the head
        self.reusable = False  # the connection can carry the next request once the body is read
        self.done = False  # the body was read to its end
        self.started = False  # the body's reading began (by `body` or `body_into`)

    async def response_head(self) -> None:
        received = b""
        head_bytes = 0  # of the heads before, 1xx ones: all count against MAX_HEAD_BYTES
        informational = 0
        searched = 0  # no head end before this: a head trickling in is searched once, not once per read
        while True:
            end = HEAD_END.search(received, searched)
            if end is None:
                if head_bytes + len(received) > MAX_HEAD_BYTES:
                    raise BrokenAnswer(f"answer heads larger than {MAX_HEAD_BYTES} bytes")
                searched = max(0, len(received) - 2)  # an end ("\n\r\n") may span the next read
                data = await self.conn.receive_head(HEAD_READ_SIZE)
                if not data:
                    raise httpx.RemoteProtocolError("the server closed the connection before the answer's head ended")
                received += data
                if not b"HTTP/".startswith(received[:5]):  # HTTP/0.9 (a bare body), SPDY, TLS, junk
                    raise BrokenAnswer("the answer does not start with HTTP/")
                continue
            head_bytes += end.end()
            if head_bytes > MAX_HEAD_BYTES:
                raise BrokenAnswer(f"answer heads larger than {MAX_HEAD_BYTES} bytes")
            head = self.parser.head(received[:end.end()])
            received, searched = received[end.end():], 0
            if head is not None:
                break
            informational += 1  # 103 Early Hints and the like; never endless
            if informational > MAX_INFORMATIONAL:
                raise BrokenAnswer(f"more than {MAX_INFORMATIONAL} informational (1xx) heads")
            if not b"HTTP/".startswith(received[:5]):
                raise BrokenAnswer("the answer does not start with HTTP/")
        self.status, self.headers, self.reusable = head.status, head.headers, head.keep_alive
        self.prefix = received
        length = head.length
        if length is None:  # chunked (through llhttp), or until the server closes (off the socket)
            self.until_close = head.until_close
            return
        if len(received) > length:  # bytes beyond the body: ours are the first `length`,
            self.prefix = received[:length]  # and the connection is out of step
            self.reusable = False
        self.remaining = length - len(self.prefix)
        self.done = length == 0  # nothing to read: the connection is free at once

    async def body(self) -> AsyncIterator[bytes]:
        self.started = True
        if self.until_close:  # every byte until the server closes: no framing to check
            if self.prefix:
                prefix, self.prefix = self.prefix, b""
                yield prefix
            while data := await self.conn.receive(READ_SIZE):
                yield data
            self.done, self.reusable = True, False
            return
        if self.remaining is None:  # chunked: through llhttp
            parser = self.parser
            data, self.prefix = self.prefix, b""
            while True:
                if data:
                    for chunk in parser.body(data):
                        yield chunk
                    if parser.ended:
                        break
                data = await self.conn.receive(HEAD_READ_SIZE)
                if not data:
                    raise httpx.RemoteProtocolError("server closed the connection inside a chunked body")
            self.done = True
            self.reusable = self.reusable and not parser.trailing
            return
        if self.prefix:
            prefix, self.prefix = self.prefix, b""
            yield prefix
        while self.remaining > 0:
            data = await self.conn.receive(min(self.remaining, READ_SIZE))
            if not data:
                raise httpx.RemoteProtocolError(f"server closed the connection {self.remaining} bytes short of the body")
            self.remaining -= len(data)
            yield data
        self.done = True

    def body_in_hand(self) -> bytes | None:
        """The whole body, taken, when it is framed by Content-Length, came with the head and
        none of it was read yet."""
        if self.remaining != 0 or self.started:
            return None
        self.started = self.done = True
        body, self.prefix = self.prefix, b""
        return body

    def length_for_into(self) -> int | None:
        """The body's length when it is framed by Content-Length and none of it was read yet."""
        if self.remaining is None or self.done or self.started:
            return None
        return self.remaining + len(self.prefix)

    async def body_into(self, buffer: bytearray) -> None:
        """The body (`length_for_into` bytes, len(buffer)) into `buffer`, straight off the socket."""
        self.started = True
        view = memoryview(buffer)
        got = len(self.prefix)
        view[:got] = self.prefix
        self.prefix = b""
        assert self.remaining is not None and got + self.remaining == len(buffer)
        while self.remaining > 0:
            n = await self.conn.receive_into(view[got:got + min(self.remaining, READ_SIZE)])
            if not n:
                raise httpx.RemoteProtocolError(f"server closed the connection {self.remaining} bytes short of the body")
            got += n
            self.remaining -= n
        self.done = True


class _Slots:
    """How many of an origin's requests are out (`taken`, at most `limit`), and who waits for a
    slot: what trio.CapacityLimiter did here, with its checkpoints and fairness (first come,
    first served: none taken past a waiting task; a freed slot handed straight to the first),
    without what this pool never used: a set of borrowers, a statistics object asked for at
    each release, and its wake-up pass run even with nobody waiting. A slot is counted, not
    owned by a task: the task that closes a body may not be the one that sent its request."""

    __slots__ = ("limit", "taken", "_waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self._waiting = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.taken < self.limit and not self._waiting:
            self.taken += 1
            # (a pass through the scheduler as CapacityLimiter makes: taking a free slot without
            # it let a grep's next requests run ahead of the FUSE requests, slower overall)
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._waiting.park()  # woken with a slot counted for it (`_hand_over`)

    def release(self) -> None:
        self.taken -= 1
        if self._waiting:
            self._hand_over()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._hand_over()

    def waiting(self) -> bool:
        return bool(self._waiting)

    def _hand_over(self) -> None:
        while self._waiting and self.taken < self.limit:
            self._waiting.unpark()  # (a task cancelled while parked has left the lot: never handed one)
            self.taken += 1


class _Origin:
    """One origin's idle connections, and how many requests may be out at once: the pool's
    `max_per_origin`, until the server answers 429 Too Many Requests. Then half as many, and
    one more for each round of answers without a 429 (additive increase, multiplicative
    decrease, as TCP does). A 429 cuts the limit only if its request was sent under the current
    limit: one burst of 429s, answers to requests sent before the cut, cuts once."""

    def __init__(self, key: tuple[str, str, int], max_connections: int) -> None:
        self.key = key
        self.max_connections = max_connections
        self.slots = _Slots(max_connections)
        self.idle: list[_Connection] = []
        self.generation = 0  # bumped by each cut
        self.answers = 0  # answers without a 429 since the limit last changed

    def unused(self) -> bool:
        return not self.idle and self.slots.taken == 0 and not self.slots.waiting()

    def answered(self, status: int, generation: int) -> None:
        limit = self.slots.limit
        if status == 429:
            if generation == self.generation and limit > 1:
                self.slots.set_limit(max(1, limit // 2))
                self.generation += 1
                self.answers = 0
        elif limit < self.max_connections:
            self.answers += 1
            if self.answers >= limit:
                self.slots.set_limit(limit + 1)
                self.answers = 0


class _Body(httpx.AsyncByteStream):
    """A response body; closing it hands the connection back (or closes a spent one)."""

    def __init__(self, pool: PoolPerOrigin, origin: _Origin, exchange: _Exchange) -> None:
        self._pool, self._origin, self._exchange = pool, origin, exchange
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._exchange.body()

    def length_for_into(self) -> int | None:
        return None if self._closed else self._exchange.length_for_into()

    def finished(self) -> bool:
        return self._exchange.done

    def body_in_hand(self) -> bytes | None:
        return None if self._closed else self._exchange.body_in_hand()

    async def read_into(self, buffer: bytearray) -> None:
        await self._exchange.body_into(buffer)

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


def _peer_address(sock: trio.socket.SocketType) -> str:
    """The IP address a connected socket reached."""
    try:
        return str(sock.getpeername()[0])
    except OSError as e:  # reset between connect and here
        raise httpx.ConnectError(f"connection lost at once: {e}") from None


class PoolPerOrigin:
    def __init__(self, *, max_per_origin: int, max_idle: int = 128, keepalive_expiry: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, address_rule: AddressRule | None = None) -> None:
        self._address_rule = address_rule  # None: any peer (tests of the transport alone)
        self.max_per_origin = max_per_origin
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self._origins: dict[tuple[str, str, int], _Origin] = {}
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
        if origin.unused() and self._origins.get(origin.key) is origin:
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

    async def _connect(self, target: Target) -> _Connection:
        host, port = target.host, target.port
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as e:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {e}") from None
        if self._address_rule is not None:
            # the address connected to, not the host's spelling: see `addresses`
            try:
                await self._address_rule.check(host, _peer_address(tcp.socket))
            except BaseException:
                tcp.socket.close()
                raise
        try:
            stream: trio.abc.Stream = tcp
            if target.scheme == "https":
                tls = _SocketTLS(tcp.socket, self._ssl_context(), host)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await tls.aclose()
                    raise
                stream = tls
        except (OSError, trio.BrokenResourceError) as e:
            tcp.socket.close()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {e}") from None
        return _Connection(stream, tcp.socket)

    async def send(self, method: str, target: Target, headers: Sequence[tuple[str, str]], body: bytes = b"") -> Reply:
        """Send a request (GET without a body, or a small JSON PUT/POST whose `body` the
        provider built) and return once the answer's head is in. The body's Content-Length is
        set here and only here (`request_fields` refuses a caller's). No timeouts here: the
        caller's one deadline covers the slot, connecting and reading (a cancel scope per
        socket operation was a measurable share of a small GET's CPU)."""
        fields = request_fields(target, headers)
        if body:
            if len(body) > MAX_REQUEST_BODY:
                raise httpx.LocalProtocolError(f"request body of {len(body)} bytes, more than {MAX_REQUEST_BODY}")
            fields.append(("Content-Length", str(len(body))))
        request = request_head(method, target.path, fields) + body
        origin = self._origins.get(target.origin)
        if origin is None:
            origin = self._origins[target.origin] = _Origin(target.origin, self.max_per_origin)
        await origin.slots.acquire()
        generation = origin.generation
        conn: _Connection | None = None
        try:
            conn = await self._take_idle(origin) or await self._connect(target)
            exchange = _Exchange(conn, method)
            await conn.send_all(request)
            await exchange.response_head()
        except BaseException:
            if conn is not None:
                await conn.aclose()
            self._release(origin)
            raise
        origin.answered(exchange.status, generation)
        return Reply(exchange.status, exchange.headers, _Body(self, origin, exchange))

    async def aclose(self) -> None:
        self._closed = True
        for origin in list(self._origins.values()):  # a request ending meanwhile drops its origin
            while origin.idle:
                await origin.idle.pop().aclose()
        self._idle_count = 0
