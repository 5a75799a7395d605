"""API documents (listings, build and task summaries) with persistence and offline use.

Listings paged by `Link` headers (GitHub) come through `get_page`, which also asks again
conditionally: the ETag of the last answer goes in `If-None-Match`, and a 304 (which GitHub
does not count against its rate limit) returns the document kept from that answer.

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

import cachetools
import trio

from ciartfs.data.cache import DiskStore
from ciartfs.data.writebehind import WriteBehind
from ciartfs.errors import Offline, redact_url
from ciartfs.net.client import HttpClient, JsonReply

log = logging.getLogger(__name__)

# Pages remembered with their ETag for conditional requests. Their documents are the "last
# seen" ones in the disk cache; without one, in memory, which bounds how many.
ETAGS_KEPT = 4096
PAGES_IN_MEMORY = 64

Keep = bool | Callable[[Any], bool] | Callable[[Any], Awaitable[bool]] | None


class JsonDocs(Protocol):
    """What a listing needs of ApiDocs (and of wrappers such as CircleCI's TokenAwareDocs)."""

    async def get_json(self, url: str, params: Any = None, *, keep: Keep = None) -> Any: ...


class ApiDocs:
    def __init__(self, http: HttpClient, disk: DiskStore | None, *, offline: bool = False,
                 writes: WriteBehind | None = None) -> None:
        self.http = http
        self.disk = disk
        # the mount's disk write queue: documents are written behind, in batches, as blocks are
        # (a worker-thread hop and an index commit per listing cost ~0.2 ms of CPU each: 5k of
        # them in `grep -r` over a Taskcluster group); without it, each is written at once
        self.writes = writes
        self.offline = offline
        self.api_calls_saved = 0
        self.not_modified = 0  # 304 answers: documents confirmed without being sent again
        self._etags: cachetools.LRUCache[str, str] = cachetools.LRUCache(ETAGS_KEPT)
        self._pages: cachetools.LRUCache[str, Any] = cachetools.LRUCache(PAGES_IN_MEMORY)

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

    async def get_page(self, url: str, *, keep: Keep = None) -> JsonReply:
        """One page of a listing paged by `Link` headers: its document and next page's URL.
        `keep` as in `get_json`; a page that may change is asked for with the ETag of the
        last answer, and a 304 returns that answer's document."""
        if keep is not None and keep is not False:
            kept = _page_of(await self._load("page|" + url))
            if kept is not None:
                self.api_calls_saved += 1
                return kept
        if self.offline:
            kept = _page_of(await self._load("pagelast|" + url)) or _page_of(await self._load("page|" + url))
            if kept is not None:
                log.info("offline: %s as last seen", redact_url(url))
                return kept
            raise Offline(f"offline: {redact_url(url)} was never fetched, so it is not in the cache")
        etag = self._etags.get(url)
        last = await self._last_page(url) if etag else None
        reply = await self.http.get_json_reply(url, if_none_match=etag if last is not None else None)
        if reply.not_modified and last is not None:
            self.not_modified += 1
            return last
        immutable = keep(reply.doc) if callable(keep) else bool(keep)
        if inspect.isawaitable(immutable):
            immutable = await immutable
        saved = {"doc": reply.doc, "next": reply.next_url}
        await self._store(("page|" if immutable else "pagelast|") + url, saved)
        if reply.etag and not immutable:
            self._etags[url] = reply.etag
            if self.disk is None:
                self._pages[url] = saved
        return reply

    async def _last_page(self, url: str) -> JsonReply | None:
        if self.disk is None:
            return _page_of(self._pages.get(url))
        return _page_of(await self._load("pagelast|" + url))

    async def _load(self, key: str) -> Any:
        if self.disk is None:
            return None
        pending = self.writes.pending(key) if self.writes is not None else None
        if pending is not None:
            raw: bytes | None = bytes(pending)  # (ours: bytes already; no copy)
        elif not self.disk.might_have(key):
            return None
        else:
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
        if self.writes is None or not self.writes.queue(key, raw, replace=True):
            await trio.to_thread.run_sync(self.disk.put, key, raw)


def _page_of(saved: Any) -> JsonReply | None:
    """A page kept by `get_page` ({"doc": ..., "next": url}), or None if it is not one."""
    if not isinstance(saved, dict) or saved.get("doc") is None:
        return None
    next_url = saved.get("next")
    return JsonReply(saved["doc"], next_url=next_url if isinstance(next_url, str) else None)
