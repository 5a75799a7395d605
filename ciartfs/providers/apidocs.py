"""API documents (listings, build and task summaries) with persistence and offline use.

A provider says, per call, whether an answer can never change (`keep=True`, or a predicate
on the answer: a completed build's artifact list, a resolved run's). Such answers are kept in
the disk cache next to the blocks, so a later mount lists what it has seen without asking the
API. Every answer is also remembered as "last seen"; with `--offline` nothing goes to the
network: kept and last-seen answers are served, anything else is EIO with a clear log line.
"""

from __future__ import annotations

import inspect
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio

from ciartfs.data.cache import DiskStore
from ciartfs.errors import Offline, redact_url
from ciartfs.net.client import HttpClient

log = logging.getLogger(__name__)

Keep = bool | Callable[[Any], bool] | Callable[[Any], Awaitable[bool]] | None


class JsonDocs(Protocol):
    """What a listing needs of ApiDocs (and of wrappers such as CircleCI's TokenAwareDocs)."""

    async def get_json(self, url: str, params: Any = None, *, keep: Keep = None) -> Any: ...


class ApiDocs:
    def __init__(self, http: HttpClient, disk: DiskStore | None, *, offline: bool = False) -> None:
        self.http = http
        self.disk = disk
        self.offline = offline
        self.api_calls_saved = 0

    async def get_json(self, url: str, params: Mapping[str, str | int] | None = None, *,
                       keep: Keep = None, also_ok: frozenset[int] = frozenset()) -> Any:
        full = url + ("?" + urllib.parse.urlencode(sorted(params.items())) if params else "")
        if keep is not None and keep is not False:
            doc = await self._load("doc|" + full)
            if doc is not None:
                self.api_calls_saved += 1
                return doc
        if self.offline:
            # a document kept as final by an older version (a resolved task's status) is also last seen
            doc = await self._load("last|" + full) or await self._load("doc|" + full)
            if doc is not None:
                log.info("offline: %s as last seen", redact_url(full))
                return doc
            raise Offline(f"offline: {redact_url(full)} was never fetched, so it is not in the cache")
        # the document's memory stays counted against the in-flight memory bound while it is
        # held here, across awaits (the caller then parses it into records without one)
        async with self.http.json_answer(url, params, also_ok=also_ok) as doc:
            immutable = keep(doc) if callable(keep) else bool(keep)
            if inspect.isawaitable(immutable):  # decided by another answer still on its way
                immutable = await immutable
            await self._store(("doc|" if immutable else "last|") + full, doc)
            return doc

    async def _load(self, key: str) -> Any:
        if self.disk is None or not self.disk.might_have(key):
            return None
        raw = await trio.to_thread.run_sync(self.disk.get, key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # as from the network: malformed or nested too deep
            return None

    async def _store(self, key: str, doc: Any) -> None:
        if self.disk is None:
            return
        raw = json.dumps(doc, separators=(",", ":")).encode()
        await trio.to_thread.run_sync(self.disk.put, key, raw)
