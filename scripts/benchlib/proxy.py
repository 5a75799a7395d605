"""A small HTTP/1.1 reverse proxy that shapes a link: per-connection bandwidth cap and a delay
before each response's first byte. Used by scripts/bench.py in front of the fake CircleCI's
API host and its storage host, and of the static files host the FUSE peers mount.

    python proxy.py NAME=http://127.0.0.1:PORT [NAME=...]

Prints one line `READY {"NAME": port, ...}` once listening on 127.0.0.1 (a fresh port per
upstream). Then reads JSON commands on stdin, one per line, and answers each with one line:

    {"rate": BYTES_PER_SECOND_OR_0, "latency": SECONDS}   -> ok     (0 = no cap / no delay)
    {"stats": true}       -> {"NAME": {"requests": n, "bytes": n, "connections": n}}, counted since start

Stdin closing (the benchmark exiting) stops the proxy. Only what the fake server speaks is
supported: requests without bodies (GET/HEAD) or with Content-Length, responses with
Content-Length (or, failing that, ended by closing the connection).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

CHUNK = 256 * 1024
BURST = 64 * 1024  # bytes a connection may send at once after being idle
HEAD_LIMIT = 64 * 1024


class Link:
    """The shaping in force; changed between scenarios, read at each request and chunk."""

    rate = 0.0  # bytes/s per connection, 0 = uncapped
    latency = 0.0  # seconds before each response's first byte


class Pacer:
    """A token bucket per connection: `rate` bytes/s, at most BURST bytes ahead."""

    def __init__(self) -> None:
        self.t: float | None = None

    async def take(self, n: int) -> None:
        rate = Link.rate
        if rate <= 0:
            self.t = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        floor = now - BURST / rate
        if self.t is None or self.t < floor:
            self.t = floor
        self.t += n / rate
        if self.t > now:
            await asyncio.sleep(self.t - now)


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Proxy:
    def __init__(self, name: str, upstream: str) -> None:
        self.name = name
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.up_host, self.up_port = host, int(port)
        self.requests = 0
        self.bytes = 0
        self.connections = 0

    async def serve(self) -> int:
        server = await asyncio.start_server(self.client, "127.0.0.1", 0, limit=HEAD_LIMIT, backlog=256)
        self.server = server
        return int(server.sockets[0].getsockname()[1])

    async def client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        _nodelay(cwriter)
        self.connections += 1
        pacer = Pacer()
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, fields = _headers(head)
                method = request_line.split(" ", 1)[0].upper()
                body = b""
                if fields.get("content-length", "0").strip() not in ("", "0"):
                    body = await creader.readexactly(int(fields["content-length"]))
                self.requests += 1
                if Link.latency > 0:
                    await asyncio.sleep(Link.latency)
                for attempt in (0, 1):
                    if up is None:
                        ur, uw = await asyncio.open_connection(self.up_host, self.up_port, limit=HEAD_LIMIT)
                        _nodelay(uw)
                        up = (ur, uw)
                    try:
                        up[1].write(head + body)
                        await up[1].drain()
                        rhead = await up[0].readuntil(b"\r\n\r\n")
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        # the upstream closed its idle keep-alive connection: reconnect once
                        up[1].close()
                        up = None
                        if attempt:
                            return
                assert up is not None
                status_line, rfields = _headers(rhead)
                status = int(status_line.split(" ")[1])
                cwriter.write(rhead)
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                close_after = "close" in rfields.get("connection", "").lower()
                if no_body:
                    await cwriter.drain()
                elif "content-length" in rfields:
                    remaining = int(rfields["content-length"])
                    await self._relay(up[0], cwriter, pacer, remaining)
                else:  # body ends when the upstream closes
                    await self._relay(up[0], cwriter, pacer, None)
                    close_after = True
                if close_after or "close" in fields.get("connection", "").lower():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if up is not None:
                up[1].close()
            cwriter.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pacer: Pacer,
                     remaining: int | None) -> None:
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            if Link.rate > 0:  # pace in small steps so the cap holds at sub-block granularity
                want = min(want, BURST)
            data = await reader.read(want)
            if not data:
                if remaining is None:
                    return
                raise ConnectionError("upstream closed mid-body")
            await pacer.take(len(data))
            writer.write(data)
            await writer.drain()
            self.bytes += len(data)
            if remaining is not None:
                remaining -= len(data)


async def control(proxies: list[Proxy]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return  # the benchmark went away
        try:
            cmd = json.loads(line)
            if "rate" in cmd or "latency" in cmd:
                Link.rate = float(cmd.get("rate", Link.rate))
                Link.latency = float(cmd.get("latency", Link.latency))
                answer = "ok"
            elif cmd.get("stats"):
                answer = json.dumps({p.name: {"requests": p.requests, "bytes": p.bytes, "connections": p.connections}
                                 for p in proxies})
            else:
                answer = "error: unknown command"
        except (ValueError, TypeError) as e:
            answer = f"error: {e}"
        print(answer, flush=True)


async def main(argv: list[str]) -> None:
    proxies = [Proxy(*arg.split("=", 1)) for arg in argv]
    ports = {p.name: await p.serve() for p in proxies}
    print("READY " + json.dumps(ports), flush=True)
    await control(proxies)
    for p in proxies:
        p.server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
