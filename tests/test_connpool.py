"""Tier 1: the connection pool against a real HTTP/1.1 server on loopback that counts the
TCP connections it accepts: keep-alive reuse, the per-origin bound, and no slot or socket
lost to a request that timed out."""

from __future__ import annotations

import socket
import threading

import pytest
import trio

from ciartfs.errors import UpstreamTimeout
from ciartfs.http import HttpClient

BODY = b"0123456789"


class CountingServer:
    """Answers GET /hang never, any other GET with a 206 of BODY's first 4 bytes; keep-alive."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.open_now = 0
        self.peak_open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open_now += 1
                self.peak_open = max(self.peak_open, self.open_now)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                if head.split(b" ")[1] == b"/hang":
                    conn.recv(1)  # until the client gives up and closes
                    return
                conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/10\r\n"
                             b"Content-Length: 4\r\n\r\n" + BODY[:4])
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.open_now -= 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    s = CountingServer()
    try:
        yield s
    finally:
        s.close()


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
