"""How a fake-server API module plugs into the fake's HTTP hosts, and how its routes answer.

An API module exposes `routes(fake) -> list[Route]`. Each Route names the host it answers on
(one of HOSTS), the raw-path prefix it owns ("" = any path: the host's fallback) and
`handle(request)`. The dispatch (server.FakeCI) walks the host's routes whose prefix matches,
longest prefix first: a handler answers by raising Reply (a status and body) or, once it
has streamed its own answer through `request.handler`, Served; returning None passes the
request to the next matching route, and a request no route answers is 404.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable, Iterable
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ciartfs.fakeserver.model import Recorded

# The fake's hosts: the CI's API host, the S3-like storage host its presigned URLs name, a
# Taskcluster worker's livelog server, circle-artifacts.com's stand-in (HTML served directly),
# and the Azure Blob storage stand-in GitHub Actions' artifact URLs name (azureblob.py).
HOSTS = ("api", "storage", "livelog", "html", "blob")


class Reply(Exception):
    """Raised inside a route to answer with this status and body."""

    def __init__(self, status: int, body: bytes | Any = b"", content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.content_type = content_type
        self.headers = headers or {}


class Served(Exception):
    """The handler already wrote its answer (streamed body); -1: the connection was cut."""

    def __init__(self, status: int) -> None:
        self.status = status


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """One request as the routes see it. `handler` is there for answers streamed by hand."""

    host: str  # one of HOSTS
    method: str
    path: str  # the request target as sent: raw path and query
    raw_path: str  # still percent-encoded, without the query
    query: dict[str, str]
    headers: Message  # case-insensitive `get`
    body: bytes
    record: Recorded  # the request log's entry: a streamed answer sets its status before the body
    handler: BaseHTTPRequestHandler


@dataclasses.dataclass(frozen=True)
class Route:
    host: str  # one of HOSTS
    prefix: str  # raw paths starting with this ("" = any path)
    handle: Callable[[Request], None]  # raises Reply or Served; returns None to pass the request on


def write_body(handler: BaseHTTPRequestHandler, parts: Iterable[bytes | memoryview], *, complete: bool,
               counted: Callable[[int], None] | None = None) -> None:
    """Write a body's `parts`; `counted(bytes so far)` before each write (a client holding the
    bytes sees them counted). Not `complete`: the promised bytes will never come, so hang up."""
    sent = 0
    for part in parts:
        sent += len(part)
        if counted is not None:
            counted(sent)
        handler.wfile.write(part)
    if not complete:
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True
