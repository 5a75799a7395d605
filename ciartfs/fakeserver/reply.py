"""How fake-server routes answer: raise Reply(status, body), or Served once streamed."""

from __future__ import annotations

import json
from typing import Any


class Reply(Exception):
    """Raised inside a route to answer with this status and body."""

    def __init__(self, status: int, body: bytes | Any = b"", content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.content_type = content_type
        self.headers = headers or {}


class Served(Exception):
    """The handler already wrote its answer (streamed body)."""

    def __init__(self, status: int) -> None:
        self.status = status
