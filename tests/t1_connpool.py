"""Tier 1: the HTTP/1.1 transport and its pool against a real server on loopback that counts
the TCP connections it accepts: keep-alive reuse, the per-origin bound, no slot or socket lost
to a request that timed out, the body framings servers use (Content-Length, chunked, ended by
closing), connections a server closes or leaves out of step, broken answers refused at once (an
answer cut short is retried), and TLS with certificates checked."""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time

import pytest
import trio
import trio.testing
import trustme

from ciartfs.errors import BadListing, UpstreamError, UpstreamTimeout
from ciartfs.net import pool as connpool
from ciartfs.net.client import HttpClient
from ciartfs.net.pool import MAX_INFORMATIONAL, PoolPerOrigin, _Origin, _Slots
from ciartfs.net.wire import HEAD_END, ResponseParser, parse_url
from loopback_server import LoopbackServer, read_head

BODY = b"0123456789"
JSON_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"6\r\n{\"a\": \r\n3\r\n[1]\r\n1\r\n}\r\n0\r\n\r\n")
PARTIAL = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/10\r\nContent-Length: 4\r\n"
RANGE_ONLY = b"Content-Range: bytes 0-3/10\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# path -> (raw answer, what the server does next): "keep" the connection, "close" it
SCRIPTS: dict[bytes, tuple[bytes, str]] = {
    b"/chunked": (JSON_CHUNKED, "keep"),
    b"/until-close": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"b\": 2}", "close"),
    b"/conn-close": (PARTIAL + b"Connection: close\r\n\r\n" + BODY[:4], "keep"),
    b"/then-close": (PARTIAL + b"\r\n" + BODY[:4], "close"),
    b"/extra": (PARTIAL + b"\r\n" + BODY[:4] + b"JUNK", "keep"),
    b"/short": (PARTIAL + b"\r\n" + BODY[:2], "close"),
    # framed by Content-Length and sent whole with the head, but not the bytes Content-Range names
    b"/length-short-of-range": (RANGE_ONLY.join((b"HTTP/1.1 206 Partial Content\r\n", b"Content-Length: 3\r\n\r\n"))
                                + BODY[:3], "keep"),
    b"/length-beyond-range": (RANGE_ONLY.join((b"HTTP/1.1 206 Partial Content\r\n", b"Content-Length: 5\r\n\r\n"))
                              + BODY[:5], "keep"),
    b"/not-modified": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "keep"),
    b"/huge-head": (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (200 << 10) + b"\r\n\r\n", "close"),
    # legal but unusual: bare LF line ends (RFC 9112 2.2), a folded field (5.2), 1xx heads before
    b"/bare-lf": (b"HTTP/1.1 206 Partial Content\nContent-Range: bytes 0-3/10\nContent-Length: 4\n\n" + BODY[:4], "keep"),
    b"/folded": (PARTIAL + b"X-Long: one\r\n two\r\n\r\n" + BODY[:4], "keep"),
    b"/continue": (b"HTTP/1.1 100 Continue\r\n\r\n" + PARTIAL + b"\r\n" + BODY[:4], "keep"),
    b"/two-lengths": (PARTIAL + b"Content-Length: 3\r\n\r\n" + BODY[:4], "close"),
    b"/space-before-colon": (PARTIAL.replace(b"Content-Length:", b"Content-Length :") + b"\r\n" + BODY[:4], "close"),
    b"/early-hints": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" * 3 + CONTINUE
                      + PARTIAL + b"\r\n" + BODY[:4], "keep"),
    # answers that break HTTP/1.1 whatever is asked: each fails at once (see BROKEN)
    b"/http09": (BODY, "keep"),  # HTTP/0.9: a bare body, and the connection left open
    b"/http09-close": (b"0123\r\n\r\n", "close"),
    b"/spdy": (b"SPDY/3 200 OK\r\n" + RANGE_ONLY + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/status-2000": (b"HTTP/1.1 2000 OK\r\n" + RANGE_ONLY + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/status-099": (b"HTTP/1.1 099 OK\r\n" + RANGE_ONLY + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/negative-length": (b"HTTP/1.1 206 Partial Content\r\n" + RANGE_ONLY + b"Content-Length: -4\r\n\r\n" + BODY[:4], "keep"),
    b"/huge-length": (b"HTTP/1.1 206 Partial Content\r\n" + RANGE_ONLY + b"Content-Length: 1" + b"0" * 23 + b"\r\n\r\n"
                      + BODY[:4], "keep"),
    b"/5000-digit-length": (b"HTTP/1.1 206 Partial Content\r\n" + RANGE_ONLY + b"Content-Length: " + b"4" * 5000
                            + b"\r\n\r\n" + BODY[:4], "keep"),
    b"/huge-length-after-1xx": (CONTINUE + b"HTTP/1.1 206 Partial Content\r\n" + RANGE_ONLY
                              + b"Content-Length: 10000000000000000000\r\n\r\n" + BODY[:4], "keep"),
    b"/cr-in-location": (b"HTTP/1.1 302 Found\r\nLocation: /a?signature=SECRET\rb\r\nContent-Length: 0\r\n\r\n", "keep"),
    b"/nul-in-location": (b"HTTP/1.1 302 Found\r\nLocation: /a?signature=SECRET\x00b\r\nContent-Length: 0\r\n\r\n", "keep"),
    b"/continue-storm": (CONTINUE * 5000 + PARTIAL + b"\r\n" + BODY[:4], "keep"),
    b"/status-600": (b"HTTP/1.1 600 OK\r\n" + RANGE_ONLY + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/http2-status-line": (b"HTTP/2.0 206 Partial Content\r\n" + RANGE_ONLY + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/switching-protocols": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n" + BODY, "keep"),
    b"/same-length-twice": (PARTIAL + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/length-and-chunked": (PARTIAL + b"Transfer-Encoding: chunked\r\n\r\n4\r\n" + BODY[:4] + b"\r\n0\r\n\r\n", "keep"),
    b"/gzip-transfer-coding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b", "close"),
    b"/bad-chunk": ((b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n{}\r\n0\r\n\r\n"), "keep"),
    b"/chunked-trailers": ((b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3;x=1\r\n[1]\r\n0\r\nX-Checksum: abc\r\n\r\n"), "keep"),
    b"/chunked-then-junk": (JSON_CHUNKED + b"JUNK", "keep"),
    b"/chunked-cut": (JSON_CHUNKED[:-10], "close"),
    b"/http10-keep-alive": (b"HTTP/1.0 206 Partial Content\r\nConnection: keep-alive\r\n" + RANGE_ONLY
                            + b"Content-Length: 4\r\n\r\n" + BODY[:4], "keep"),
    b"/not-gzip-json": ((b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                         b"Content-Length: 6\r\n\r\n[1, 2]"), "keep"),
    # cut short by the server closing: worth a retry
    b"/head-cut": (b"HTTP/1.1 206 Partial Content\r\nContent-", "close"),
    # a redirect whose own body breaks off: its Location is all that matters
    b"/redirect-cut": (b"HTTP/1.1 302 Found\r\nLocation: /a\r\nContent-Length: 10\r\n\r\n01234", "close"),
    # a storage key "café" sent as raw UTF-8, in the path and the query
    b"/utf8-redirect": (b"HTTP/1.1 302 Found\r\nLocation: /caf\xc3\xa9?k=\xc3\xa9\r\nContent-Length: 0\r\n\r\n", "keep"),
    b"/latin1-redirect": (b"HTTP/1.1 302 Found\r\nLocation: /caf\xe9\r\nContent-Length: 0\r\n\r\n", "keep"),
}
TRICKLED = PARTIAL + b"X-Amz-Request-Id: " + b"r" * 200 + b"\r\n\r\n" + BODY[:4]
BROKEN = ["/status-600", "/http2-status-line", "/switching-protocols", "/same-length-twice", "/length-and-chunked",
          "/gzip-transfer-coding", "/huge-head", "/two-lengths", "/space-before-colon", "/http09", "/http09-close", "/spdy",
          "/status-2000",
          "/status-099", "/negative-length", "/huge-length", "/5000-digit-length", "/huge-length-after-1xx",
          "/cr-in-location", "/nul-in-location", "/continue-storm"]


class CountingServer(LoopbackServer):
    """Answers GET /hang never, the paths in SCRIPTS as scripted, any other GET with a 206 of
    BODY's first 4 bytes (its head alone to a HEAD) (/limited/* after 20 ms, or 429 while `limit` others are being
    served); keep-alive. With `tls`, over TLS with that context."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.paths: list[bytes] = []  # request targets, as received
        self.open_now = 0
        self.peak_open = 0
        self.lock = threading.Lock()
        # /limited/*: a rate-limited host, answering 429 while `limit` requests are being served
        self.limit = 4
        self.serving = 0
        self.served = 0
        self.refused = 0
        super().__init__("https" if tls else "http")

    def on_accept(self) -> None:
        with self.lock:
            self.open_now += 1
            self.peak_open = max(self.peak_open, self.open_now)

    def serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while (request := read_head(conn, buf)) is not None:
                head, buf = request
                path = head.split(b" ")[1]
                with self.lock:
                    self.paths.append(path)
                if path == b"/trickle":  # a head a byte at a time
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for i in range(len(TRICKLED)):
                        conn.sendall(TRICKLED[i:i + 1])
                        time.sleep(0.002)
                    continue
                if path == b"/continue-forever":  # 1xx heads until the client gives up
                    while True:
                        conn.sendall(CONTINUE * 1000)
                if path == b"/hang":
                    conn.recv(1)  # until the client gives up and closes
                    return
                if path.startswith(b"/limited/"):
                    with self.lock:
                        busy = self.serving >= self.limit
                        self.refused += busy
                        self.serving += not busy
                    if busy:
                        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n")
                        continue
                    time.sleep(0.02)
                    with self.lock:
                        self.serving -= 1
                        self.served += 1
                if path in SCRIPTS:
                    answer, then = SCRIPTS[path]
                    conn.sendall(answer)
                    if then == "close":
                        return
                    continue
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/10\r\n"
                             b"Content-Length: 4\r\n\r\n" + (b"" if head.startswith(b"HEAD ") else BODY[:4]))
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
            with self.lock:
                self.open_now -= 1


@pytest.fixture
def server():
    s = CountingServer()
    try:
        yield s
    finally:
        s.close()


async def test_a_body_received_into_one_buffer_keeps_the_connection_in_step(server):
    """`into`: a Content-Length body is received straight into one buffer (pool.read_into);
    the connection then carries the next request, whichever way that one is read."""
    client = HttpClient(timeout=5)
    try:
        for path in ("/a", "/bare-lf", "/continue", "/b"):
            reply = await client.get_range(server.url + path, 0, 4, into=True)
            assert bytes(reply.buffer) == BODY[:4] and reply.data == b""
            assert (await client.get_range(server.url + path, 0, 4)).data == BODY[:4]
        # bytes beyond the body: ours are read, the connection is retired (not reused out of step)
        reply = await client.get_range(server.url + "/extra", 0, 4, into=True)
        assert bytes(reply.buffer) == BODY[:4]
        assert bytes((await client.get_range(server.url + "/c", 0, 4, into=True)).buffer) == BODY[:4]
    finally:
        await client.aclose()
    assert server.accepted == 2


async def test_sequential_requests_share_one_connection(server):
    client = HttpClient(timeout=5)
    try:
        for _ in range(50):
            reply = await client.get_range(server.url + "/a", 0, 4)
            assert reply.data == BODY[:4] and reply.total == 10
    finally:
        await client.aclose()
    assert server.accepted == 1


async def test_concurrency_is_bounded_per_origin_and_connections_are_reused(server):
    client = HttpClient(timeout=5, max_connections=4)
    results = []

    async def one(i: int) -> None:
        results.append((await client.get_range(f"{server.url}/f{i}", 0, 4)).data)

    try:
        for _ in range(3):
            async with trio.open_nursery() as n:
                for i in range(40):
                    n.start_soon(one, i)
    finally:
        await client.aclose()
    assert results == [BODY[:4]] * 120
    assert server.peak_open <= 4 and server.accepted <= 4


async def test_a_request_that_times_out_gives_back_its_slot(server):
    client = HttpClient(timeout=0.5, max_connections=1)
    try:
        with pytest.raises(UpstreamTimeout):
            await client.get_range(server.url + "/hang", 0, 4)
        with trio.fail_after(3):  # the only slot is free again, and the broken connection is not reused
            assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    assert server.accepted == 2


async def test_chunked_and_close_delimited_bodies(server):
    client = HttpClient(timeout=5)
    try:
        assert await client.get_json(server.url + "/chunked") == {"a": [1]}
        assert await client.get_json(server.url + "/chunked") == {"a": [1]}
        assert server.accepted == 1  # a chunked body read to its end leaves the connection reusable
        assert await client.get_json(server.url + "/until-close") == {"b": 2}
        assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    assert server.accepted == 2 and client.requests_made == 4


async def test_connections_the_server_closes_are_not_reused(server):
    client = HttpClient(timeout=5)
    try:
        # "Connection: close", and a close with no notice after an answer: the next request
        # goes out on a new connection at once (no failed attempt, no retry)
        for path in ("/conn-close", "/then-close", "/then-close", "/a"):
            assert (await client.get_range(server.url + path, 0, 4)).data == BODY[:4]
            time.sleep(0.05)  # the server's close has reached us before the next request
    finally:
        await client.aclose()
    assert client.requests_made == 4 and server.accepted == 4  # each answer above ended its connection


async def test_bytes_beyond_the_body_retire_the_connection(server):
    client = HttpClient(timeout=5)
    try:
        assert (await client.get_range(server.url + "/extra", 0, 4)).data == BODY[:4]
        # the "JUNK" must not be read as the start of the next answer
        assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    assert client.requests_made == 2 and server.accepted == 2


async def test_unusual_heads_are_read(server):
    client = HttpClient(timeout=5)
    try:
        for path in ("/bare-lf", "/folded", "/continue", "/a"):
            reply = await client.get_range(server.url + path, 0, 4)
            assert (reply.data, reply.total) == (BODY[:4], 10), path
    finally:
        await client.aclose()
    assert server.accepted == 1  # and each left the connection in step


async def test_chunked_bodies_end_where_their_last_chunk_says(server):
    client = HttpClient(timeout=5)
    try:
        assert await client.get_json(server.url + "/chunked-trailers") == [1]  # trailers are not body
        assert await client.get_json(server.url + "/chunked-trailers") == [1]
        assert server.accepted == 1
        assert await client.get_json(server.url + "/chunked-then-junk") == {"a": [1]}
        assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]  # the junk was not an answer
        assert server.accepted == 2
    finally:
        await client.aclose()


async def test_an_http10_answer_keeps_its_connection_when_it_says_so(server):
    client = HttpClient(timeout=5)
    try:
        for _ in range(3):
            assert (await client.get_range(server.url + "/http10-keep-alive", 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    assert server.accepted == 1


async def test_a_head_answer_has_no_body(server):
    pool = PoolPerOrigin(max_per_origin=2)  # the transport itself: HttpClient sends no HEAD
    try:
        for _ in range(2):
            with trio.fail_after(2):  # not a wait for the 4 bytes its Content-Length names
                response = await pool.send("HEAD", parse_url(server.url + "/head"), [])
                assert (response.status_code, response.headers["content-length"]) == (206, "4")
                assert [chunk async for chunk in response.aiter_raw()] == []
                await response.aclose()
    finally:
        await pool.aclose()
    assert server.accepted == 1  # and the connection stayed in step


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("path", ["/short", "/head-cut", "/chunked-cut"])
async def test_answers_cut_short_are_retried_not_returned(server, path, into):
    client = HttpClient(timeout=1.5)
    try:
        with pytest.raises((UpstreamError, UpstreamTimeout)):
            await client.get_range(server.url + path, 0, 4, into=into)
        assert client.requests_made >= 2  # retried, each time on a fresh connection
        assert server.accepted == client.requests_made
    finally:
        await client.aclose()


@pytest.mark.parametrize("path", ["/length-short-of-range", "/length-beyond-range"])
async def test_a_body_that_came_with_its_head_is_checked_against_its_content_range(server, path):
    """A small body arrives with its head and is taken whole, without a read (`body_in_hand`):
    it must still be exactly what Content-Range names, or it is asked for again, never returned."""
    client = HttpClient(timeout=1.5)
    try:
        with pytest.raises((UpstreamError, UpstreamTimeout)):
            await client.get_range(server.url + path, 0, 4)
        assert client.requests_made >= 2  # a mismatch is retried
    finally:
        await client.aclose()


@pytest.mark.parametrize("path", BROKEN)
async def test_broken_answers_are_errors_at_once_not_data(server, path):
    # a timeout far beyond the test's: had it been retried, there would be more than one request
    client = HttpClient(timeout=60)
    try:
        with pytest.raises(UpstreamError, match="broken HTTP answer") as raised:
            await client.get_range(server.url + path, 0, 4)
        assert not isinstance(raised.value, UpstreamTimeout)
        assert "SECRET" not in str(raised.value)  # the offending line is described, never quoted
        assert client.requests_made == 1 and server.accepted == 1  # asked once, not again
        with trio.fail_after(5):  # the connection went (it is out of step), the client works on
            assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
        assert server.accepted == 2
    finally:
        await client.aclose()


async def test_a_broken_chunked_body_is_an_error_at_once(server):
    client = HttpClient(timeout=60)
    try:
        with pytest.raises(UpstreamError, match="broken HTTP body"):
            await client.get_json(server.url + "/bad-chunk")
        assert client.requests_made == 1
    finally:
        await client.aclose()


async def test_a_listing_that_does_not_decode_as_its_content_encoding_is_a_bad_listing(server):
    client = HttpClient(timeout=60)
    try:
        with pytest.raises(BadListing, match="does not decode"):
            await client.get_json(server.url + "/not-gzip-json")
        assert client.requests_made == 1
    finally:
        await client.aclose()


async def test_a_stream_of_1xx_heads_is_refused_after_a_bounded_number(server, monkeypatch):
    """Little CPU whatever the server sends: a few 1xx heads are read (103 Early Hints), an
    endless stream of them is refused after MAX_INFORMATIONAL, counted in heads parsed."""
    events = 0
    head = ResponseParser.head

    def counting(self, data):
        nonlocal events
        events += 1
        return head(self, data)

    monkeypatch.setattr(ResponseParser, "head", counting)
    client = HttpClient(timeout=60)
    try:
        assert (await client.get_range(server.url + "/early-hints", 0, 4)).data == BODY[:4]
        events = 0
        with pytest.raises(UpstreamError, match="informational"):
            await client.get_range(server.url + "/continue-forever", 0, 4)
        assert client.requests_made == 2  # not retried
        assert events == MAX_INFORMATIONAL + 1, events  # the heads allowed, the one too many
    finally:
        await client.aclose()


async def test_a_head_trickling_in_is_searched_once_not_once_per_read(server, monkeypatch):
    scanned, searches = 0, 0

    class CountingSearch:  # connpool's search for a head's end, counting the bytes it looks at
        def search(self, data, pos=0):
            nonlocal scanned, searches
            scanned, searches = scanned + len(data) - pos, searches + 1
            return HEAD_END.search(data, pos)

    monkeypatch.setattr(connpool, "HEAD_END", CountingSearch())
    client = HttpClient(timeout=30)
    try:
        assert (await client.get_range(server.url + "/trickle", 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    assert searches > 20, "the head came in a few reads: nothing trickled"
    # each byte once, plus the two before each read's bytes (searching it all again each read
    # was quadratic: 2.3 s of CPU for a 100 KiB head arriving a byte at a time)
    assert scanned <= len(TRICKLED) + 2 * searches, (scanned, searches)


async def test_a_redirect_whose_body_breaks_off_is_still_followed(server):
    client = HttpClient(timeout=5)
    try:
        assert (await client.get_range(server.url + "/redirect-cut", 0, 4)).data == BODY[:4]
        assert client.requests_made == 2 and server.paths == [b"/redirect-cut", b"/a"]
    finally:
        await client.aclose()


async def test_raw_utf8_in_location_is_followed_as_sent(server):
    client = HttpClient(timeout=5)
    try:
        for path in ("/utf8-redirect", "/latin1-redirect"):
            assert (await client.get_range(server.url + path, 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    # the bytes as sent, percent-encoded; not each taken for a Latin-1 character ("%C3%83%C2%A9")
    assert server.paths == [b"/utf8-redirect", b"/caf%C3%A9?k=%C3%A9", b"/latin1-redirect", b"/caf%E9"]


@pytest.fixture
def tls_server():
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()  # what a client trusting the test CA uses
    ca.configure_trust(client_ctx)
    s = CountingServer(tls=server_ctx)
    try:
        yield s, client_ctx
    finally:
        s.close()


async def test_tls_with_a_trusted_certificate(tls_server):
    server, client_ctx = tls_server
    client = HttpClient(timeout=5, transport=PoolPerOrigin(max_per_origin=4, ssl_context=client_ctx))
    try:
        for _ in range(3):
            assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
        assert await client.get_json(server.url + "/chunked") == {"a": [1]}
    finally:
        await client.aclose()
    assert server.accepted == 1


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("path", ["/short", "/head-cut", "/chunked-cut"])
async def test_tls_answers_cut_short_are_retried_not_returned(tls_server, path, into):
    """The server closing a TLS connection mid-answer, without close_notify (pool._SocketTLS
    reads it as the end, as HTTP's framing then tells): cut short, retried, never returned."""
    server, client_ctx = tls_server
    client = HttpClient(timeout=1.5, transport=PoolPerOrigin(max_per_origin=4, ssl_context=client_ctx))
    try:
        with pytest.raises((UpstreamError, UpstreamTimeout)):
            await client.get_range(server.url + path, 0, 4, into=into)
        assert client.requests_made >= 2
        assert server.accepted == client.requests_made
    finally:
        await client.aclose()


LARGE = bytes(range(256)) * (12 << 10)  # 3 MiB


@pytest.mark.parametrize("write_size", [1 << 20, 1000])
async def test_tls_bodies_of_many_records_read_back_exact_on_one_connection(write_size):
    """A body read over TLS comes in reads of many records (pool._SocketTLS): large ones, and a
    server that sends a small record per write; keep-alive stays in step across answers."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    accepted = 0

    async def serve(stream: trio.SSLStream) -> None:
        nonlocal accepted
        accepted += 1
        received = b""
        while True:
            while HEAD_END.search(received) is None:
                data = await stream.receive_some()
                if not data:
                    return
                received += data
            end = HEAD_END.search(received).end()
            head, received = received[:end], received[end:]
            first, last = (int(x) for x in head.split(b"bytes=")[1].split(b"\r\n")[0].split(b"-"))
            body = LARGE[first:last + 1]
            await stream.send_all(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
                                  b"Content-Length: %d\r\n\r\n" % (first, last, len(LARGE), len(body)))
            for i in range(0, len(body), write_size):
                await stream.send_all(body[i:i + write_size])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_ssl_over_tcp, serve, 0, server_ctx, host="127.0.0.1"))
        port = listeners[0].transport_listener.socket.getsockname()[1]
        client = HttpClient(timeout=10, transport=PoolPerOrigin(max_per_origin=1, ssl_context=client_ctx))
        try:
            for start, length in ((0, len(LARGE)), (12345, 1 << 20), (len(LARGE) - 7, 7)):
                reply = await client.get_range(f"https://127.0.0.1:{port}/big", start, length)
                assert reply.data == LARGE[start:start + length]
                # decrypted straight into one buffer (pool._SocketTLS.receive_into)
                reply = await client.get_range(f"https://127.0.0.1:{port}/big", start, length, into=True)
                assert bytes(reply.buffer) == LARGE[start:start + length] and reply.data == b""
        finally:
            await client.aclose()
        nursery.cancel_scope.cancel()
    assert accepted == 1


async def test_tls_certificates_are_verified(tls_server):
    server, _ = tls_server
    client = HttpClient(timeout=1.5)  # the system's CAs, which never signed the test CA
    try:
        with pytest.raises(UpstreamError, match="connection failed"):
            await client.get_range(server.url + "/a", 0, 4)
    finally:
        await client.aclose()


async def test_a_304_has_no_body_whatever_its_content_length(server):
    pool = PoolPerOrigin(max_per_origin=2)  # the transport itself: HttpClient never reads a 304's body
    try:
        for _ in range(2):
            with trio.fail_after(2):  # not a wait for 10 bytes that never come
                response = await pool.send("GET", parse_url(server.url + "/not-modified"), [])
                assert response.status_code == 304
                assert [chunk async for chunk in response.aiter_raw()] == []
                await response.aclose()
    finally:
        await pool.aclose()
    assert server.accepted == 1  # read whole, the connection stays in step


async def test_origins_without_connections_are_forgotten(server):
    pool = PoolPerOrigin(max_per_origin=2)
    client = HttpClient(timeout=5, transport=pool)
    try:
        assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
        assert len(pool._origins) == 1  # its connection is pooled
        other = CountingServer()
        try:
            for _ in range(2):
                assert (await client.get_range(other.url + "/conn-close", 0, 4)).data == BODY[:4]
        finally:
            other.close()
        assert len(pool._origins) == 1  # nothing left of the other host: its entry is gone
    finally:
        await client.aclose()


async def test_a_tls_request_that_times_out_is_closed_within_its_deadline(tls_server):
    server, client_ctx = tls_server
    client = HttpClient(timeout=0.5, transport=PoolPerOrigin(max_per_origin=1, ssl_context=client_ctx))
    try:
        with trio.fail_after(3), pytest.raises(UpstreamTimeout):
            await client.get_range(server.url + "/hang", 0, 4)
        with trio.fail_after(3):
            assert (await client.get_range(server.url + "/a", 0, 4)).data == BODY[:4]
    finally:
        await client.aclose()
    assert server.accepted == 2


async def test_idle_connections_are_closed_when_expired_or_closed_by_the_server(server):
    pool = PoolPerOrigin(max_per_origin=4, keepalive_expiry=0.5)
    client = HttpClient(timeout=5, transport=pool)
    try:
        async with trio.open_nursery() as nursery:  # at once: three connections
            for _ in range(3):
                nursery.start_soon(client.get_range, server.url + "/a", 0, 4)
        assert server.accepted == 3 and pool._idle_count == 3
        assert await pool.close_expired() == 0  # fresh and open: kept for reuse
        assert server.open_now == 3
        await trio.sleep(0.6)
        assert await pool.close_expired() == 3
        assert pool._idle_count == 0 and not pool._origins  # the host is forgotten too
        with trio.fail_after(3):  # the server sees every socket closed
            while server.open_now:
                await trio.sleep(0.01)
        # a connection the server closed goes at once, well before its expiry
        pool.keepalive_expiry = 60
        assert (await client.get_range(server.url + "/then-close", 0, 4)).data == BODY[:4]
        assert pool._idle_count == 1
        with trio.fail_after(3):
            while server.open_now:
                await trio.sleep(0.01)
        assert await pool.close_expired() == 1
        assert pool._idle_count == 0
    finally:
        await client.aclose()


def test_429_halves_an_origins_concurrency_once_per_burst_and_answers_grow_it_back():
    origin = _Origin(("http", "h", 80), 32)
    sent_before = origin.generation
    origin.answered(429, sent_before)
    assert origin.slots.limit == 16
    for _ in range(10):  # the rest of the burst: sent before the cut, no news
        origin.answered(429, sent_before)
    assert origin.slots.limit == 16
    origin.answered(429, origin.generation)  # sent under the new limit, refused again
    assert origin.slots.limit == 8
    for _ in range(8):  # a round of answers without 429: one more at once
        origin.answered(206, origin.generation)
    assert origin.slots.limit == 9
    for _ in range(10_000):
        origin.answered(200, origin.generation)
    assert origin.slots.limit == 32  # never above the pool's bound
    for _ in range(10):
        origin.answered(429, origin.generation)
    assert origin.slots.limit == 1  # never below one


async def test_a_freed_slot_goes_to_the_longest_waiting_request_never_to_a_newcomer():
    slots = _Slots(1)
    order: list[str] = []

    async def request(name: str, done: trio.Event) -> None:
        await slots.acquire()
        order.append(name)
        await done.wait()
        slots.release()

    done = {name: trio.Event() for name in "abcd"}
    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(request, name, done[name])
            await trio.testing.wait_all_tasks_blocked()
        assert order == ["a"] and slots.taken == 1 and slots.waiting()
        done["a"].set()  # freed: b's, handed over while b still sleeps
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(request, "d", done["d"])  # a newcomer, with c still waiting: waits behind it
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b"] and slots.taken == 1
        for name in "bcd":
            done[name].set()
    assert order == ["a", "b", "c", "d"] and slots.taken == 0 and not slots.waiting()


async def test_a_request_cancelled_while_waiting_for_a_slot_takes_none():
    slots = _Slots(1)
    await slots.acquire()
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def waits() -> None:
            with scope:
                await slots.acquire()
                raise AssertionError("took a slot that was never freed")

        nursery.start_soon(waits)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    slots.release()  # nobody left waiting: nothing handed over
    assert slots.taken == 0 and not slots.waiting()
    with trio.CancelScope() as cancelled:  # a request cancelled before it asks takes none either
        cancelled.cancel()
        await slots.acquire()
    assert slots.taken == 0


async def test_a_lower_limit_waits_for_releases_and_a_higher_one_lets_waiters_in_at_once():
    slots = _Slots(4)
    for _ in range(4):
        await slots.acquire()
    slots.set_limit(2)  # nothing taken back from requests out
    got = []

    async def waits(i: int) -> None:
        await slots.acquire()
        got.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):  # one at a time: they wait in this order
            nursery.start_soon(waits, i)
            await trio.testing.wait_all_tasks_blocked()
        slots.release()
        slots.release()  # 2 out, at the limit: still nobody in
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and slots.taken == 2
        slots.set_limit(4)  # two more at once: the two that waited longest (run in either order)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(got) == [0, 1] and slots.taken == 4
        slots.release()
    assert sorted(got) == [0, 1, 2] and got[2] == 2 and slots.taken == 4


async def test_a_host_that_answers_429_gets_fewer_requests_at_once(server):
    client = HttpClient(timeout=20, max_connections=32)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(160):
                nursery.start_soon(client.get_range, f"{server.url}/limited/{i}", 0, 4)
    finally:
        await client.aclose()
    assert server.served == 160
    # 32 at once against a limit of 4 would be refused ~28 times per round of retries
    assert server.refused < 100, server.refused


async def test_a_request_larger_than_the_send_buffer_arrives_whole_and_a_closed_connection_fails_cleanly():
    """Plain TCP writes a request head straight to the socket; what the socket's buffer does
    not take goes on through trio's send_all, from where the write stopped. Heads are read off
    the descriptor. A connection used after it was closed fails as a transport error, never on
    another descriptor."""
    ours, theirs = trio.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = connpool._Connection(trio.SocketStream(ours), ours)
    payload = bytes(range(256)) * 4096  # 1 MiB: many times what the buffer takes at once
    got = bytearray()

    async def drain() -> None:
        while len(got) < len(payload):
            await trio.sleep(0.001)  # a slow reader: the writer must wait, not drop bytes
            got.extend(await theirs.recv(65536))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await conn.send_all(payload)
    assert bytes(got) == payload
    await theirs.send(b"HTTP/1.1 200 OK\r\n")
    assert await conn.receive_head(100) == b"HTTP/1.1 200 OK\r\n"
    theirs.close()
    assert await conn.receive_head(100) == b""  # the peer closed: end of stream
    await conn.aclose()
    with pytest.raises(connpool.httpx.TransportError):
        await conn.send_all(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(connpool.httpx.TransportError):
        await conn.receive_head(100)
