#!/usr/bin/env python3
"""Client CPU per request of the HTTP pool (ciartfs.net.pool), against a loopback server.

    .venv/bin/python scripts/measure_client_cpu.py [--requests N] [--runs N]

The two answers a directory listing costs per artifact: an API's 302 to a presigned storage
URL, and storage's 206 of a small range (heads shaped as CircleCI's and S3's are). Measured:
CPU time of the thread running trio (`time.thread_time`), over N requests on one keep-alive
connection, each request sent, its head parsed, its body read and the connection given back.
Twice: against a server on loopback in its own process (what a request costs, the kernel's
share included), and over an in-memory connection that answers at once (the pool's own share:
no socket, no waiting). Prints the median of the runs in microseconds per request, and the
spread. On a loaded machine the loopback figures are noisy; the in-memory ones much less.

To compare two versions of the code, run it with each on PYTHONPATH, interleaved, e.g.
`git archive 2be653b | tar -x -C /tmp/before` then
`PYTHONPATH=/tmp/before .venv/bin/python scripts/measure_client_cpu.py`.

Where the machine is too busy for CPU times, count instructions, which load does not change:
`--in-memory-only partial` (or `redirect`) runs that case alone, once, without a server, so
`valgrind --tool=callgrind python scripts/measure_client_cpu.py --in-memory-only partial
--requests N` for two values of N gives the instructions per request as the difference of the
two totals divided by the difference of the Ns (start-up and warm-up cancel out).

`--listing N` measures a listed artifact's whole client path instead (`HttpClient.get_range`
of a size probe: the API's 302, then storage's 206 of a small file, 96 at once, in memory);
under callgrind, likewise the difference of two Ns. To measure another checkout with it, run
this file with that checkout's venv (its ciartfs is the one imported).
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import time

import trio

import ciartfs
from ciartfs.net import pool as connpool
from ciartfs.net.client import HttpClient
from ciartfs.net.pool import PoolPerOrigin
from ciartfs.net.wire import parse_url

BODY = bytes(range(256)) * 2  # a small range: 512 bytes
PARTIAL = (b"HTTP/1.1 206 Partial Content\r\n"
           b"x-amz-id-2: 5P4PjYX1qXVRIbQc3rDzGrkK/2n0MmjT8TkO0LeNk6bEXsGW0C3+v1JYIxbYb6gRVLG2MUfe8Fw=\r\n"
           b"x-amz-request-id: 8K3J1S5N0X7Q2W9E\r\n"
           b"Date: Wed, 02 Dec 2026 14:00:00 GMT\r\n"
           b"Last-Modified: Tue, 01 Dec 2026 09:12:44 GMT\r\n"
           b"ETag: \"9b2cf535f27731c974343645a3985328\"\r\n"
           b"x-amz-server-side-encryption: AES256\r\n"
           b"Accept-Ranges: bytes\r\n"
           b"Content-Range: bytes 0-511/1048576\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Server: AmazonS3\r\n"
           b"Content-Length: 512\r\n\r\n") + BODY
REDIRECT = (b"HTTP/1.1 302 Found\r\n"
            b"Date: Wed, 02 Dec 2026 14:00:00 GMT\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 0\r\n"
            b"Connection: keep-alive\r\n"
            b"Location: https://circle-production-customer-artifacts.s3.amazonaws.com/picard/5f1a/"
            b"6123abcd-0000-4000-8000-0123456789ab-0-build/artifacts/dist/app.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            b"&X-Amz-Credential=ASIAQXXXXXXXXXXXXXXX%2F20261202%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261202T140000Z"
            b"&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature="
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"
            b"Strict-Transport-Security: max-age=15724800; includeSubDomains\r\n"
            b"X-Request-Id: 0123456789abcdef0123456789abcdef\r\n"
            b"Server: nginx\r\n\r\n")
ANSWERS = {b"/partial": PARTIAL, b"/redirect": REDIRECT}


def serve(sock: socket.socket) -> None:
    """One connection at a time, keep-alive: enough for one client sending serially."""
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                else:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    conn.sendall(ANSWERS[head.split(b" ", 2)[1]])
                    continue
                break


class AnsweringStream:
    """A connection whose server answers every request at once with the same bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.pending = b""

    async def send_all(self, data: bytes) -> None:
        self.pending = self.answer

    async def receive_some(self, max_bytes: int) -> bytes:
        data, self.pending = self.pending[:max_bytes], self.pending[max_bytes:]
        return data

    async def aclose(self) -> None:
        pass


class IdleSocket:
    def is_readable(self) -> bool:
        return False

    def close(self) -> None:
        pass


class InMemoryPool(PoolPerOrigin):
    async def _connect(self, target):  # type: ignore[no-untyped-def]
        return connpool._Connection(AnsweringStream(ANSWERS[target.path.encode()]), IdleSocket())  # type: ignore[arg-type]


class ListingStream(AnsweringStream):
    """The two hops of a listed artifact: the API host answers each request with a 302 to its
    own storage URL, the storage host with a 206 of a whole 2000-byte file. Each send and
    receive passes through the scheduler once, as a socket's wait does."""

    SMALL_FILE = (b"HTTP/1.1 206 Partial Content\r\nx-amz-request-id: 8K3J1S5N0X7Q2W9E\r\n"
                  b"Date: Wed, 02 Dec 2026 14:00:00 GMT\r\nETag: \"9b2cf535f27731c974343645a3985328\"\r\n"
                  b"Accept-Ranges: bytes\r\nContent-Range: bytes 0-1999/2000\r\nContent-Type: application/octet-stream\r\n"
                  b"Server: AmazonS3\r\nContent-Length: 2000\r\n\r\n") + bytes(range(250)) * 8

    def __init__(self, storage: bool) -> None:
        super().__init__(b"")
        self.storage = storage

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.storage:
            self.pending = self.SMALL_FILE
        else:  # REDIRECT's Location, on the storage host, at this artifact's path
            path = bytes(data).split(b" ", 2)[1]
            self.pending = REDIRECT.replace(b"https://circle-production-customer-artifacts.s3.amazonaws.com/picard/5f1a/",
                                            b"http://storage.invalid" + path + b"/")

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return await super().receive_some(max_bytes)


class InMemoryListingPool(PoolPerOrigin):
    async def _connect(self, target):  # type: ignore[no-untyped-def]
        return connpool._Connection(ListingStream(target.host == "storage.invalid"), IdleSocket())  # type: ignore[arg-type]


async def listing_run(artifacts: int) -> float:
    """Client CPU seconds per listed artifact: `HttpClient.get_range` of a size probe (16 KiB)
    of `artifacts` artifacts, 96 at once, each an API 302 and then storage's 206."""
    client = HttpClient(timeout=30, transport=InMemoryListingPool(max_per_origin=96, max_idle=300))
    limit = trio.Semaphore(96)

    async def probe(i: int) -> None:
        async with limit:
            reply = await client.get_range(f"http://api.invalid/artifacts/{i}/file-{i}.txt", 0, 16 << 10)
            assert reply.total == 2000 and len(reply.data) == 2000

    async def probes(first: int, count: int) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(first, first + count):
                nursery.start_soon(probe, i)

    try:
        await probes(10**9, 200)  # warm up: the connections, imports, caches
        start = time.thread_time()
        await probes(0, artifacts)
        return (time.thread_time() - start) / artifacts
    finally:
        await client.aclose()


async def one_run(url: str, path: str, requests: int, in_memory: bool) -> float:
    """Client CPU seconds per request over `requests` requests."""
    pool = (InMemoryPool if in_memory else PoolPerOrigin)(max_per_origin=4)
    target = parse_url(url + path)
    headers = [("Accept", "*/*"), ("User-Agent", "ciartfs/0.1"), ("Accept-Encoding", "identity"), ("Range", "bytes=0-511")]

    async def request() -> None:
        reply = await pool.send("GET", target, headers)
        async for _ in reply.aiter_raw():
            pass
        await reply.aclose()

    try:
        for _ in range(50):  # warm up: the connection, imports, caches
            await request()
        start = time.thread_time()
        for _ in range(requests):
            await request()
        return (time.thread_time() - start) / requests
    finally:
        await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per run (default 3000; 10x in memory)")
    parser.add_argument("--runs", type=int, default=7, help="runs per answer, the median reported (default 7)")
    parser.add_argument("--in-memory-only", choices=["partial", "redirect"],
                        help="run this answer once, in memory, exactly --requests times, and print nothing (for valgrind)")
    parser.add_argument("--listing", type=int, metavar="N",
                        help="instead: N listed artifacts (an API 302, then a 206) through HttpClient.get_range, "
                             "96 at once, in memory; prints the CPU per artifact (for valgrind: the difference of two Ns)")
    args = parser.parse_args()
    if args.listing:
        print(f"{trio.run(listing_run, args.listing) * 1e6:.1f} us/listed artifact CPU")
        return
    if args.in_memory_only:
        trio.run(one_run, "http://in-memory.invalid", "/" + args.in_memory_only, args.requests, True)
        return
    sock = socket.create_server(("127.0.0.1", 0))
    server = multiprocessing.Process(target=serve, args=(sock,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        print(f"ciartfs from {ciartfs.__path__[0]}")
        results: dict[tuple[str, bool], list[float]] = {(path, in_memory): [] for in_memory in (False, True)
                                                         for path in ("/partial", "/redirect")}
        for _ in range(args.runs):  # interleaved, so that a busy moment does not hit one kind only
            for (path, in_memory), per_request in results.items():
                requests = args.requests * (10 if in_memory else 1)
                per_request.append(trio.run(one_run, url, path, requests, in_memory) * 1e6)
        for (path, in_memory), per_request in results.items():
            kind = ("206 with 512 bytes" if path == "/partial" else "302 (presigned Location)") + (
                ", in memory" if in_memory else ", loopback")
            print(f"{kind:36} {statistics.median(per_request):6.1f} us/request CPU (median of {args.runs}; "
                  f"min {min(per_request):.1f}, max {max(per_request):.1f})")
    finally:
        server.terminate()
        server.join()
        sock.close()


if __name__ == "__main__":
    main()
