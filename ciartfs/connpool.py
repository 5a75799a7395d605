"""HTTP/1.1 keep-alive connections, pooled per origin at O(1) cost per request.

An httpx transport built from httpcore's single connections (`httpcore.AsyncHTTPConnection`,
the same objects httpcore's own pool holds). httpcore's pool rescans every connection on
each request and each response close, calling poll(2) on every idle one and, for each idle
one, counting the idle ones again (quadratic). With 16-32 connections busy on small ranged
GETs, that scan cost more CPU than the requests themselves (py-spy of `grep -r` over 2000
small artifacts). Here a request takes the most recently used idle connection of its origin,
checks only that one, and gives it back when its response is closed.

Bounds: at most `max_per_origin` connections open per origin (a request waits for a slot;
the caller's deadline covers the wait), at most `max_idle` idle connections in all.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpcore
import httpx
import trio

# httpcore's errors as httpx's (the layer above catches httpx.TransportError and subclasses).
_ERRORS: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _as_httpx(e: Exception) -> Exception:
    for theirs, ours in _ERRORS:
        if isinstance(e, theirs):
            return ours(str(e))
    return e


async def _close(conn: httpcore.AsyncHTTPConnection) -> None:
    with trio.CancelScope(shield=True):  # a socket must not leak because its task was cancelled
        try:
            await conn.aclose()
        except Exception:
            pass


class _Origin:
    def __init__(self, max_connections: int) -> None:
        self.slots = trio.Semaphore(max_connections)
        self.idle: list[httpcore.AsyncHTTPConnection] = []


class _Body(httpx.AsyncByteStream):
    """A response body; closing it hands the connection back (or closes a spent one)."""

    def __init__(self, pool: PoolPerOrigin, origin: _Origin, conn: httpcore.AsyncHTTPConnection,
                 response: httpcore.Response) -> None:
        self._pool, self._origin, self._conn, self._response = pool, origin, conn, response
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except Exception as e:
            raise _as_httpx(e) from e

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with trio.CancelScope(shield=True):
                await self._response.aclose()
        except Exception:
            await _close(self._conn)
        else:
            await self._pool._give_back(self._origin, self._conn)
        finally:
            self._origin.slots.release()


class PoolPerOrigin(httpx.AsyncBaseTransport):
    def __init__(self, *, max_per_origin: int, max_idle: int = 128, keepalive_expiry: float = 5.0) -> None:
        self.max_per_origin = max_per_origin
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self._origins: dict[tuple[bytes, bytes, int | None], _Origin] = {}
        self._idle_count = 0
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # certificates verified, as httpx does by default
        return self._ssl

    async def _take_idle(self, origin: _Origin) -> httpcore.AsyncHTTPConnection | None:
        while origin.idle:
            conn = origin.idle.pop()
            self._idle_count -= 1
            if conn.is_idle() and not conn.has_expired():
                return conn
            await _close(conn)
        return None

    async def _give_back(self, origin: _Origin, conn: httpcore.AsyncHTTPConnection) -> None:
        if conn.is_idle() and not self._closed and self._idle_count < self.max_idle:
            origin.idle.append(conn)
            self._idle_count += 1
        elif not conn.is_closed():
            await _close(conn)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(self.max_per_origin)
        await origin.slots.acquire()
        conn: httpcore.AsyncHTTPConnection | None = None
        try:
            conn = await self._take_idle(origin)
            if conn is None:
                conn = httpcore.AsyncHTTPConnection(
                    httpcore.Origin(url.raw_scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80)),
                    ssl_context=self._ssl_context() if url.scheme == "https" else None,
                    keepalive_expiry=self.keepalive_expiry,
                )
            core_request = httpcore.Request(
                method=request.method,
                url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
            try:
                response = await conn.handle_async_request(core_request)
            except Exception as e:
                raise _as_httpx(e) from e
        except BaseException:
            if conn is not None:
                await _close(conn)
            origin.slots.release()
            raise
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(self, origin, conn, response), extensions=response.extensions)

    async def aclose(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                await _close(origin.idle.pop())
        self._idle_count = 0
