"""Tier 1: requests that carry a JSON body (Taskcluster's startDownload, a PUT): framed by the
layer itself on the wire, their answers read whatever their framing, signed only with the credential the caller names and
only for its origin, never redirected, retried only when idempotent."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from ciartfs.errors import UpstreamError
from ciartfs.net.client import HttpClient
from ciartfs.net.credentials import HeaderCredential, origin_of
from ciartfs.net.pool import PoolPerOrigin
from ciartfs.net.wire import parse_url
from loopback_server import LoopbackServer, read_head

DOC = {"acceptDownloadMethods": {"getUrl": True}}
SENT = json.dumps(DOC, separators=(",", ":")).encode()


class RecordingServer(LoopbackServer):
    """Reads each request whole (head, then a body of its Content-Length) and answers with the
    next scripted raw answer (or a 200 JSON echo of the body), keep-alive."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []  # request line, headers, body
        self.script: list[bytes] = []
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while (request := read_head(conn, buf)) is not None:
                head, buf = request
                line, *fields = head.split(b"\r\n")
                headers = {}
                for field in fields:
                    name, _, value = field.decode().partition(":")
                    assert name.lower() not in headers, f"{name} sent twice"
                    headers[name.lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append((line, headers, body))
                if self.script:
                    conn.sendall(self.script.pop(0))
                else:
                    echo = json.dumps({"got": body.decode()}).encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(echo)).encode() + b"\r\n\r\n" + echo)


@pytest.fixture
def server():
    s = RecordingServer()
    try:
        yield s
    finally:
        s.close()


def _client(server: RecordingServer, *credentials) -> HttpClient:
    return HttpClient(timeout=5.0, credentials=credentials, transport=PoolPerOrigin(max_per_origin=4))


async def test_a_body_is_framed_by_the_layer_and_the_connection_stays_in_step(server):
    client = _client(server)
    try:
        answer = await client.send_json("PUT", server.url + "/start-download/a%2Fb", DOC, credential=None,
                                         idempotent=True)
        assert answer == {"got": SENT.decode()}
        # the next request on the same connection reads its own answer: nothing was left over
        assert await client.get_json(server.url + "/after", credentials=False) == {"got": ""}
    finally:
        await client.aclose()
    (line, headers, body), (line2, headers2, body2) = server.requests
    assert line == b"PUT /start-download/a%2Fb HTTP/1.1"
    assert headers["content-length"] == str(len(SENT)) and body == SENT
    assert headers["content-type"] == "application/json"
    assert line2 == b"GET /after HTTP/1.1" and "content-length" not in headers2 and body2 == b""
    assert server.accepted == 1


async def test_a_chunked_answer_to_a_put_is_read_to_its_end(server):
    """The answer to a request with a body, chunked: read whole, the connection left in step."""
    server.script.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"9\r\n{\"ok\": 1}\r\n0\r\n\r\n")
    client = _client(server)
    try:
        assert await client.send_json("PUT", server.url + "/x", DOC, credential=None, idempotent=True) == {"ok": 1}
        assert await client.get_json(server.url + "/after", credentials=False) == {"got": ""}
    finally:
        await client.aclose()
    assert server.accepted == 1


async def test_only_the_named_credential_signs_it_and_only_for_its_origin(server):
    mine = HeaderCredential(origins=frozenset({origin_of(server.url)}), headers={"Authorization": "mine"})
    temporary = HeaderCredential(origins=frozenset({origin_of(server.url)}), headers={"Authorization": "temporary"})
    elsewhere = HeaderCredential(origins=frozenset({origin_of("https://other.example")}),
                                 headers={"Authorization": "elsewhere"})
    client = _client(server, mine)
    try:
        await client.send_json("PUT", server.url + "/a", DOC, credential=temporary, idempotent=True)
        await client.send_json("PUT", server.url + "/b", DOC, credential=elsewhere, idempotent=True)
        await client.send_json("PUT", server.url + "/c", DOC, credential=None, idempotent=True)
    finally:
        await client.aclose()
    auth = [headers.get("authorization") for _, headers, _ in server.requests]
    assert auth == ["temporary", None, None]  # the client's own never; another origin's never


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_so_no_credential_goes_to_its_host(server, status):
    other = RecordingServer()
    try:
        server.script.append(f"HTTP/1.1 {status} Moved\r\nLocation: {other.url}/elsewhere\r\n"
                             f"Content-Length: 0\r\n\r\n".encode())
        temporary = HeaderCredential(origins=frozenset({origin_of(server.url), origin_of(other.url)}),
                                     headers={"Authorization": "temporary"})
        client = _client(server)
        try:
            with pytest.raises(UpstreamError, match="never redirected"):
                await client.send_json("PUT", server.url + "/a", DOC, credential=temporary, idempotent=True)
        finally:
            await client.aclose()
        assert len(server.requests) == 1 and server.requests[0][1]["authorization"] == "temporary"
        assert other.requests == [] and other.accepted == 0
    finally:
        other.close()


async def test_retried_only_when_idempotent(server):
    unavailable = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
    client = _client(server)
    try:
        server.script.append(unavailable)
        answer = await client.send_json("PUT", server.url + "/a", DOC, credential=None, idempotent=True)
        assert answer == {"got": SENT.decode()} and len(server.requests) == 2
        server.script.append(unavailable)
        with pytest.raises(UpstreamError, match="not retried"):
            await client.send_json("POST", server.url + "/b", DOC, credential=None, idempotent=False)
        assert len(server.requests) == 3
    finally:
        await client.aclose()


async def test_a_callers_content_length_is_refused_and_bodies_are_bounded():
    pool = PoolPerOrigin(max_per_origin=1)
    target = parse_url("http://127.0.0.1:9/x")
    try:
        with pytest.raises(httpx.LocalProtocolError):
            await pool.send("PUT", target, [("Content-Length", "3")], b"abc")
        with pytest.raises(httpx.LocalProtocolError):
            await pool.send("PUT", target, [], b"x" * ((64 << 10) + 1))
    finally:
        await pool.aclose()
    client = HttpClient(timeout=1.0)
    try:
        with pytest.raises(ValueError):
            await client.send_json("GET", "http://127.0.0.1:9/x", DOC, credential=None, idempotent=True)
    finally:
        await client.aclose()
