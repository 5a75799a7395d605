"""The one HTTP layer: timeouts, retries, redirects with credential scoping, ranged GETs.
Beside it: credentials.py (what a credential is and where it may go), ranges.py (a ranged
reply checked against its request), pool.py (connections, and the 429 limiter per origin),
wire.py (HTTP/1.1 syntax).

Invariants:
- Every public call finishes within `timeout` seconds (retries included) or raises
  `UpstreamTimeout`; nothing above this module builds a request or sees httpx.
- Credentials go only on the first hop of a request whose caller says its URL was built by a
  provider (API documents; artifact URLs a provider built or recognised by their documented
  pattern: `credentials=True`), and then only to the origins their `Credential` names
  (credentials.py). No
  redirect ever carries them, not even one back to the API origin, and a cached redirect
  target is always fetched without them. Redirects are followed here, not by httpx, because
  httpx only strips `Authorization` and would forward a custom header such as `Circle-Token`.
- With an `AddressRule`, every new connection is checked against it (see `addresses`): a
  refused peer is `AddressRefused` (EACCES) at once, never retried.
- A ranged reply is verified (offset, length, total) before it is returned (ranges.py); a
  mismatch is retried, never passed on; a total that cannot be a file's size (>= 2**63) is a
  bad answer.
- Memory per call is bounded by the requested length (plus one network chunk), even when a
  server ignores Range and sends the whole body. A caller that asks for it (`take_whole`) gets
  such a body instead, as a `WholeBody` it streams and closes itself (its memory its own).
- Only what may go differently next time is retried (a dropped connection, 5xx, 429, a short
  body): an answer that breaks HTTP (`BrokenAnswer`), an https URL redirecting to http, and
  JSON that cannot be parsed fail at once.
- A request with a body (`send_json`: a JSON document the provider built, PUT or POST) goes
  to exactly the URL given, never redirected (a 3xx is an error: a 303 would turn it into a
  GET elsewhere), with only the one credential its caller names, on the same origin rule; it
  is retried only when its caller says it is idempotent.
- An API answer's bytes, decoded and parsed, are held against the shared `MemoryBudget`
  (see bodies.py) until its caller is done with the document: the budget running out fails
  the attempt as retryable, an answer that could never fit fails it as a bad listing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.utils
import functools
import json
import logging
import random
import re
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import httpx
import trio

from ciartfs.errors import (
    AddressRefused,
    ArtifactExpired,
    BadListing,
    Forbidden,
    NotFound,
    Offline,
    UpstreamError,
    UpstreamTimeout,
    redact_url,
)
from ciartfs.net import bodies, ranges
from ciartfs.net.addresses import AddressRule
from ciartfs.net.bodies import Hold, MemoryBudget
from ciartfs.net.credentials import Credential
from ciartfs.net.pool import READ_SIZE, PoolPerOrigin, Reply, ViaHttpx
from ciartfs.net.ranges import BodyCut, RangeReply, WholeBody
from ciartfs.net.wire import BrokenAnswer, Target, parse_url

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_REDIRECTS = 5
USER_AGENT = "ciartfs/0.1"
# Hostile or broken servers must not make us buffer without bound: listings larger than
# this are refused (CircleCI's largest real listings are a few MB).
MAX_JSON_BYTES = 64 << 20
# Default bound on the bytes of answers in flight, decoded and parsed (--max-inflight-memory).
DEFAULT_INFLIGHT_MEMORY = 256 << 20
# Larger answers are measured and parsed on a worker thread, not on the FUSE loop.
PARSE_IN_THREAD_BYTES = 256 << 10
# Backoff between retries: full jitter on an exponential base, capped so that a few retries
# still fit in the default 30 s operation budget.
BACKOFF_BASE = 0.2
BACKOFF_CAP = 4.0
# A resolved redirect target (presigned URL) is reused for ranged reads until it fails or
# gets this old; presigned URLs commonly live 15-60 minutes.
REDIRECT_TARGET_MAX_AGE = 600.0
# At most this many are remembered (least recently used dropped): a long-lived mount reads
# from ever more artifacts, and a presigned URL is a few hundred bytes.
REDIRECT_TARGETS_KEPT = 20_000
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Redirect bodies up to this size are read to the end so their connection can be reused.
DRAIN_LIMIT = 64 << 10
# A suffix Range answered with the whole resource: a body up to this much beyond the tail is
# streamed for it; a larger one is closed unread and the tail asked for by offset.
SUFFIX_STREAM_SLACK = 1 << 20
# A retry is only worth starting with at least this much of the operation's time left.
MIN_ATTEMPT_TIME = 0.25

# A byte of a header value outside ASCII: header values are read as Latin-1, one character a byte
_NON_ASCII = re.compile("[\x80-\xff]")


def location_url(value: str) -> str:
    """A Location header's URL (its bytes read as Latin-1) as the server meant it: raw UTF-8 as
    sent (a storage key "café" is "caf%C3%A9", an IDN host its punycode), not each byte taken
    for a Latin-1 character and encoded again ("caf%C3%83%C2%A9"). Bytes that are not UTF-8
    are percent-encoded one by one, as sent."""
    if value.isascii():
        return value
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _NON_ASCII.sub(lambda m: f"%{ord(m[0]):02X}", value)


def _refused_fetch(url: str, redirected_to: str | None) -> str:
    via = f" (redirected to {redact_url(redirected_to)})" if redirected_to is not None else ""
    return f"refused to fetch {redact_url(url)}{via}"


class Sender(Protocol):
    """What HttpClient sends through: `PoolPerOrigin`, or `ViaHttpx` around an httpx transport."""

    async def send(self, method: str, target: Target, headers: Sequence[tuple[str, str]],
                   body: bytes = b"") -> Reply: ...

    async def aclose(self) -> None: ...


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _StaleTarget(Exception):
    """A cached redirect target no longer works: resolve the original URL again."""


class _SuffixIgnored(Exception):
    """Storage answered a suffix Range (`bytes=-n`) with the whole resource, which it names
    (Azure Blob storage knows only `bytes=a-` and `bytes=a-b`): ask for the tail by offset."""

    def __init__(self, total: int) -> None:
        super().__init__(f"suffix range ignored ({total} bytes)")
        self.total = total


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """An API's request budget as its last answer stated it (GitHub's X-RateLimit-* headers)."""

    limit: int | None
    remaining: int
    reset: float | None  # Unix time the budget is renewed


def _rate_limit_of(headers: Mapping[str, str]) -> RateLimit | None:
    remaining = headers.get("x-ratelimit-remaining", "").strip()
    if not remaining.isdigit():
        return None
    limit, reset = headers.get("x-ratelimit-limit", "").strip(), headers.get("x-ratelimit-reset", "").strip()
    return RateLimit(int(limit) if limit.isdigit() else None, int(remaining), float(reset) if reset.isdigit() else None)


def _rate_limited(resp: Reply) -> _Retry | None:
    """A 403 or 429 that says a rate limit was hit (GitHub: a `Retry-After`, or
    `X-RateLimit-Remaining: 0` with the reset time) is a wait, not a refusal of the token."""
    if resp.status_code not in (403, 429):
        return None
    after = _parse_retry_after(resp.headers.get("retry-after"))
    budget = _rate_limit_of(resp.headers)
    if after is None and budget is not None and budget.remaining == 0 and budget.reset is not None:
        after = max(0.0, budget.reset - time.time()) + 1.0  # the reset second itself, and a margin
    if after is None:
        return None
    resets = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + after))
    return _Retry(f"API rate limit hit (HTTP {resp.status_code}; the budget resets at {resets})", after)


@dataclasses.dataclass(frozen=True)
class JsonReply:
    """An API answer with what paging and conditional requests need: `doc` is None when the
    server answered 304 Not Modified to `If-None-Match`."""

    doc: Any
    etag: str | None = None
    next_url: str | None = None  # Link: <...>; rel="next"

    @property
    def not_modified(self) -> bool:
        return self.doc is None


_LINK_NEXT = re.compile(r'<([^<>]*)>\s*;[^,]*?\brel="?next"?', re.IGNORECASE)


def link_next(value: str | None) -> str | None:
    """The rel="next" URL of a `Link` header (RFC 8288), as GitHub pages its listings."""
    if not value:
        return None
    match = _LINK_NEXT.search(value)
    return match.group(1).strip() if match else None


class _RedirectTargets:
    """Artifact URL -> the target it redirected to, for REDIRECT_TARGET_MAX_AGE (on trio's clock:
    tests may mock it); the REDIRECT_TARGETS_KEPT most recently used are kept. A URL whose target
    expired or was dropped (it failed) is still known to redirect (`redirects`). One OrderedDict,
    not cachetools' TTLCache beside an LRUCache: their bookkeeping (a timer context, links, two
    caches updated per answer) was a measurable share of a listed artifact's CPU."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[str, tuple[str | None, float]] = collections.OrderedDict()

    def get(self, url: str) -> str | None:
        entry = self._entries.get(url)
        if entry is None or entry[0] is None:
            return None
        if trio.current_time() >= entry[1]:
            self._entries[url] = (None, 0.0)
            return None
        self._entries.move_to_end(url)
        return entry[0]

    def redirects(self, url: str) -> bool:
        return url in self._entries

    def set(self, url: str, target: str) -> None:
        entries = self._entries
        entries[url] = (target, trio.current_time() + REDIRECT_TARGET_MAX_AGE)
        entries.move_to_end(url)
        if len(entries) > REDIRECT_TARGETS_KEPT:
            entries.popitem(last=False)

    def drop(self, url: str) -> None:
        """`url`'s target failed: resolve it again (it still redirects)."""
        if url in self._entries:
            self._entries[url] = (None, 0.0)


class HttpClient:
    """Async HTTP client for API JSON and ranged artifact reads (see module docstring)."""

    def __init__(
        self,
        *,
        timeout: float,
        credentials: tuple[Credential, ...] = (),
        max_connections: int = 96,
        transport: Sender | httpx.AsyncBaseTransport | None = None,
        offline: bool = False,
        address_rule: AddressRule | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.timeout = timeout
        self.budget = budget or MemoryBudget(DEFAULT_INFLIGHT_MEMORY)
        self.offline = offline  # --offline: no request ever leaves the machine
        self._credentials = credentials
        # Requests go straight to the transport: httpx.AsyncClient's layers (URL merging,
        # cookies, auth and redirect hooks, none of which we use) cost a fifth of the CPU of a
        # small ranged GET. We follow redirects ourselves and never send cookies. (See
        # connpool's docstring for why requests are not httpx.Request objects either.)
        # Idle connections kept: a listing keeps two origins busy at once (the API's artifact
        # URLs and the storage they redirect to), each up to max_connections; fewer idle
        # slots than that closed ~800 connections in a grep -r over 2000 files.
        if isinstance(transport, httpx.AsyncBaseTransport):
            transport = ViaHttpx(transport)
        self._transport: Sender = transport or PoolPerOrigin(
            max_per_origin=max_connections, max_idle=2 * max_connections + 64, address_rule=address_rule)
        # artifact URL -> its resolved redirect target, until that fails or gets too old; a URL
        # that redirected before (its target expired or failed) is still known to redirect:
        # while one request resolves such a URL again, the others wait for its answer instead of
        # each asking the API (GitHub counts every resolution against its rate limit).
        self._targets = _RedirectTargets()
        self._resolving: dict[str, trio.Event] = {}
        self.requests_made = 0
        self._rate_limits: dict[tuple[str, str, int], RateLimit] = {}  # API origin -> last stated budget

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def close_idle_forever(self) -> None:
        """Background work for a long-lived client: close idle connections as they expire."""
        if isinstance(self._transport, PoolPerOrigin):
            await self._transport.close_expired_forever()

    # -- public API -------------------------------------------------------------------------

    async def get_json(self, url: str, params: Mapping[str, str | int] | None = None, *,
                       also_ok: frozenset[int] = frozenset(), credentials: bool = True) -> Any:
        """GET an API document. 404 -> NotFound, 401/403 -> Forbidden, bad JSON -> BadListing.
        Statuses in `also_ok` (e.g. Taskcluster's 424 for error artifacts) return their body.
        API documents are asked for at URLs a provider built: credentials by default."""
        async with self.json_answer(url, params, also_ok=also_ok, credentials=credentials) as doc:
            return doc

    @contextlib.asynccontextmanager
    async def json_answer(self, url: str, params: Mapping[str, str | int] | None = None, *,
                          also_ok: frozenset[int] = frozenset(), credentials: bool = True) -> AsyncIterator[Any]:
        """`async with` it for `get_json`'s document, its memory counted against the budget
        until the block ends: for callers that hold the document across awaits."""
        if params:
            url = url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        with self.budget.hold() as hold:
            reply = await self._bounded(url, self._json_once, url, also_ok, credentials, hold, None)
            yield reply.doc

    async def get_json_reply(self, url: str, *, if_none_match: str | None = None,
                             credentials: bool = True) -> JsonReply:
        """`get_json` with the answer's ETag and Link next page; with `if_none_match` (the
        ETag of a document the caller keeps), a 304 comes back as `JsonReply(None)`."""
        with self.budget.hold() as hold:
            return await self._bounded(url, self._json_once, url, frozenset(), credentials, hold, if_none_match)

    def rate_limit(self, url: str) -> RateLimit | None:
        """The budget the API at `url`'s origin stated in its last answer, if it states one."""
        return self._rate_limits.get(parse_url(url).origin)

    async def send_json(self, method: str, url: str, document: Any, *, credential: Credential | None,
                        idempotent: bool, timeout: float | None = None) -> Any:
        """Send `document` as a JSON body (PUT/POST) to `url`, a URL the provider built, and
        return the JSON answer (statuses as `get_json`). `credential` is the only one that may
        sign it (e.g. temporary credentials the API handed out), and only if it applies to
        the URL's origin; the client's own are not used. No redirect is followed. Retried as
        `get_json` when `idempotent` (sending it twice does no harm), else tried once."""
        if method not in ("PUT", "POST"):
            raise ValueError(f"send_json: {method} does not carry a body")
        body = json.dumps(document, separators=(",", ":")).encode()
        with self.budget.hold() as hold:
            return await self._bounded(url, self._send_json_once, method, url, body, credential, hold,
                                       timeout=timeout, retry=idempotent)

    # The byte reads below take `credentials=True` only for a URL the provider built or
    # recognised by its documented pattern (`Artifact.credentialed`); a URL from elsewhere gets none.

    async def fetch_whole(self, url: str, consume: Callable[[AsyncIterator[bytes], str | None], Awaitable[T]], *,
                          timeout: float | None = None, credentials: bool = False) -> T:
        """Stream the whole raw body of `url` into `consume(chunks, content_encoding)`, called
        afresh on every attempt. For bodies that cannot be read by range (gzip-encoded)."""
        return await self._bounded(url, self._whole_once, url, consume, credentials, timeout=timeout)

    @contextlib.asynccontextmanager
    async def stream(self, url: str, credentials: bool = False) -> AsyncIterator[tuple[AsyncIterator[bytes], str | None]]:
        """`async with` it for (body chunks, Content-Encoding) of a body that may not end for
        hours (a running task's live log). Its answer, redirects and retries included, comes
        within the timeout; its body is read for as long as the caller reads, no longer."""
        resp = await self._bounded(url, self._stream_once, url, credentials)
        try:
            encoding = resp.headers.get("content-encoding", "").strip().lower() or None
            yield _stream_chunks(resp, url), encoding
        finally:
            await resp.aclose()

    async def get_range(self, url: str, start: int, length: int, *, credentials: bool = False,
                        take_whole: bool = False, into: bool = False) -> RangeReply:
        """Bytes [start, start+length) of the resource at `url` (fewer at its end).

        Follows redirects (reusing a resolved target while it works). 404 at the original
        URL -> ArtifactExpired; 401/403 there -> Forbidden. With `take_whole`, a server that
        ignores Range and names the length (200, Content-Length, no Content-Encoding) gets its
        body handed over unread (`RangeReply.whole`) instead of read for the range. With `into`,
        a body the transport can receive straight into one buffer comes as `RangeReply.buffer`
        (a run of blocks: no chunk objects joined).
        """
        if start < 0 or length <= 0:
            raise ValueError("bad range")
        return await self._bounded(url, self._range_once, url, start, length, credentials, take_whole, into)

    async def get_tail(self, url: str, length: int, *, credentials: bool = False) -> RangeReply:
        """The last `length` bytes of the resource (all of it when smaller), with its total:
        one request for a file read from its end (a zip's central directory). `start` of the
        reply says where they begin."""
        if length <= 0:
            raise ValueError("bad range")
        try:
            return await self._bounded(url, self._range_once, url, -1, length, credentials, False, False)
        except _SuffixIgnored as e:  # the size is known now: the same bytes by offset
            return await self.get_range(url, max(0, e.total - length), length, credentials=credentials)

    # -- retry / deadline machinery -----------------------------------------------------------

    async def _bounded(self, url: str, once: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None,
                       retry: bool = True) -> T:
        if self.offline:
            raise Offline(f"offline: {redact_url(url)} is not in the cache")
        timeout = timeout or self.timeout
        deadline = trio.current_time() + timeout
        attempt = 0
        last = "waiting for the first answer"
        # a CancelScope, not trio.fail_after: that one is a generator context manager around
        # it, a measurable cost per request (two per listed artifact)
        with trio.CancelScope(deadline=deadline) as scope:
            while True:
                try:
                    return await once(*args)
                except _StaleTarget:
                    continue  # resolve again from the original URL, at once
                except _Retry as e:
                    last = str(e)
                    attempt += 1
                    if not retry:  # a request that must not be sent twice
                        raise UpstreamError(f"{redact_url(url)}: {last} (not retried: not idempotent)") from None
                    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
                    remaining = deadline - trio.current_time() - MIN_ATTEMPT_TIME
                    if e.retry_after is not None:
                        if e.retry_after > remaining:  # the server asks for more than we have
                            raise UpstreamError(f"{redact_url(url)}: {last}, Retry-After {e.retry_after:g}s "
                                                f"exceeds the time left (gave up after {attempt} attempts)") from None
                        delay = max(delay, e.retry_after)
                    delay = min(delay, remaining)  # one more try fits: shorten the wait
                    if delay < 0:
                        raise UpstreamError(f"{redact_url(url)}: {last} (gave up after {attempt} attempts)") from None
                    log.debug("retrying %s in %.2fs: %s", redact_url(url), delay, last)
                    await trio.sleep(delay)
        assert scope.cancelled_caught  # (the loop only ever returns or raises)
        raise UpstreamTimeout(f"{redact_url(url)}: no complete answer within {timeout:g}s (last: {last})")

    def _open(self, url: str, *, accept: str, byte_range: str | None = None,
              credentials: bool, first_hop: Sequence[tuple[str, str]] = ()) -> _Answer:
        """`async with` it: (streaming reply, final url, redirected) for a GET following redirects.
        `credentials`: the first hop may carry them (see the module docstring); `first_hop`:
        headers for the first hop only (a conditional request's If-None-Match)."""
        return _Answer(self._follow(url, accept, byte_range, credentials, first_hop), url)

    async def _follow(self, url: str, accept: str, byte_range: str | None,
                      credentials: bool, first_hop: Sequence[tuple[str, str]] = ()) -> tuple[Reply, str, bool]:
        headers_base = [("Accept", accept), ("User-Agent", USER_AGENT)]
        # identity for bytes: Range and Content-Length must count the bytes we serve, not gzip's.
        # (Storage that keeps an object gzip-encoded still says so: see RangeReply.encoding.)
        headers_base.append(("Accept-Encoding", "gzip, deflate" if accept == "application/json" else "identity"))
        if byte_range is not None:
            headers_base.append(("Range", "bytes=" + byte_range))  # "first-last", or "-n": the last n
        current, redirected = url, False
        secure = False  # a hop so far went over https: no later one may go without it
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = parse_url(current)
            except httpx.UnsupportedProtocol:
                raise UpstreamError(f"{redact_url(url)}: redirect to a non-HTTP URL" if hop
                                    else f"invalid URL {redact_url(current)}") from None
            except httpx.InvalidURL:
                raise UpstreamError(f"invalid URL {redact_url(current)}") from None
            if secure and target.scheme != "https":
                raise UpstreamError(f"{redact_url(url)}: redirect from https to plain http refused")
            secure = target.scheme == "https"
            headers = headers_base
            if hop == 0:
                headers = [*headers, *first_hop]
            if credentials and hop == 0:  # never on a redirect, whatever host it names
                # the origin checked is the one connected to: both come from the same parse
                for cred in self._credentials:
                    if cred.applies_to_target(target.origin, target.path):
                        # signed (Hawk) over the URL as sent, after any normalising; a header
                        # the API asks for (GitHub's Accept) replaces our default of that name
                        given = cred.headers_for("GET", target.url)
                        names = {k.lower() for k in given}
                        headers = [*(h for h in headers if h[0].lower() not in names), *given.items()]
            resp = await self._send(url, functools.partial(_refused_fetch, url, current if hop else None), "GET", target,
                                    headers)
            if hop == 0 and credentials:
                budget = _rate_limit_of(resp.headers)
                if budget is not None:
                    self._rate_limits[target.origin] = budget
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                await self._drain(resp)
                location = location_url(resp.headers["location"])
                # most Locations are absolute (presigned URLs): urljoin only for the others
                try:
                    absolute = location.startswith(("http://", "https://"))
                    current = location if absolute else urllib.parse.urljoin(current, location)
                except ValueError:  # "//[bad": urljoin refuses it
                    raise UpstreamError(f"{redact_url(url)}: redirect to an invalid URL") from None
                redirected = True
                continue
            return resp, current, redirected
        raise UpstreamError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects")

    async def _send(self, url: str, refused: Callable[[], str], method: str, target: Target,
                    headers: Sequence[tuple[str, str]], body: bytes = b"") -> Reply:
        """One request on the transport, its failures mapped for `_bounded`: timeouts and
        dropped connections are retried, a broken answer is not, and an address refusal names
        the request (`refused()`: made only then, since redacting URLs costs a parse each, which
        was ~1/4 of the client's CPU per request in `ls -l`). No per-operation timeout:
        `_bounded`'s deadline covers it."""
        try:
            self.requests_made += 1
            return await self._transport.send(method, target, headers, body)
        except httpx.TimeoutException as e:
            raise _Retry(f"timeout ({type(e).__name__})") from None
        except BrokenAnswer as e:
            raise UpstreamError(f"{redact_url(url)}: broken HTTP answer ({e}), not retried") from None
        except httpx.TransportError as e:
            raise _Retry(f"connection failed ({type(e).__name__})") from None
        except AddressRefused as e:
            raise AddressRefused(f"{refused()}: {e}") from None

    @staticmethod
    async def _drain(resp: Reply) -> None:
        """Finish a small answer we do not need (a redirect's body) so that its connection goes
        back to the pool: closing it unread drops the connection, and every
        artifact's redirect would then pay a new TCP connection."""
        declared = resp.headers.get("content-length", "")
        try:
            # (a redirect's body is most often empty: nothing to read, no body iterator made)
            if not resp.finished() and declared.isdigit() and int(declared) <= DRAIN_LIMIT:
                async for _ in resp.aiter_raw():
                    pass
        except httpx.TransportError:
            pass  # the redirect is read (its Location); its connection is closed, not reused
        finally:
            await resp.aclose()

    @staticmethod
    def _retry_or_raise(resp: Reply, url: str) -> None:
        """Raise _Retry for retryable statuses, UpstreamError for other unexpected ones."""
        status = resp.status_code
        if status in RETRY_STATUSES:
            raise _Retry(f"HTTP {status}", _parse_retry_after(resp.headers.get("retry-after")))
        raise UpstreamError(f"{redact_url(url)}: unexpected HTTP {status}")

    # -- one attempt each ---------------------------------------------------------------------

    async def _json_once(self, url: str, also_ok: frozenset[int], credentials: bool, hold: Hold,
                         if_none_match: str | None) -> JsonReply:
        hold.release()  # whatever a failed attempt held
        try:
            hold.grow(READ_SIZE)  # the network chunk being read; nothing is sent when memory is spent
        except bodies.BudgetExhausted as e:
            raise _Retry(f"in-flight memory bound reached (see --max-inflight-memory: {e})") from None
        conditional = [("If-None-Match", if_none_match)] if if_none_match else []
        async with self._open(url, accept="application/json", credentials=credentials,
                              first_hop=conditional) as (resp, _final, redirected):
            status = resp.status_code
            if status == 304 and if_none_match and not redirected:
                async for _ in resp.aiter_raw():  # none: a 304 has no body, and its connection is reused
                    pass
                return JsonReply(None, if_none_match)
            limited = _rate_limited(resp)
            if limited is not None:
                raise limited
            if status == 404 and status not in also_ok:
                raise NotFound(f"{redact_url(url)}: HTTP 404")
            if status in (401, 403) and status not in also_ok:
                raise Forbidden(f"{redact_url(url)}: HTTP {status} (check the API token)", status)
            if status != 200 and status not in also_ok:
                self._retry_or_raise(resp, url)
            body = await _receive_json(resp, hold, url)
            etag, next_url = resp.headers.get("etag"), link_next(resp.headers.get("link"))
        try:
            if len(body) < PARSE_IN_THREAD_BYTES:
                doc = json.loads(body)
            else:
                doc = await trio.to_thread.run_sync(json.loads, body)
            if doc is None:  # JSON null: an answer, never confused with 304's "keep yours"
                raise BadListing(f"{redact_url(url)}: the answer is JSON null")
            return JsonReply(doc, etag, next_url)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadListing(f"{redact_url(url)}: malformed JSON ({e})") from None
        except RecursionError:  # "[[[[..." nested deeper than Python's stack
            raise BadListing(f"{redact_url(url)}: JSON nested too deep") from None
        finally:
            body.clear()  # (see bodies.receive)

    async def _send_json_once(self, method: str, url: str, body: bytes, credential: Credential | None,
                              hold: Hold) -> Any:
        hold.release()
        try:
            hold.grow(READ_SIZE + len(body))
        except bodies.BudgetExhausted as e:
            raise _Retry(f"in-flight memory bound reached (see --max-inflight-memory: {e})") from None
        try:
            target = parse_url(url)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise UpstreamError(f"invalid URL {redact_url(url)}") from None
        headers = [("Accept", "application/json"), ("User-Agent", USER_AGENT), ("Accept-Encoding", "gzip, deflate"),
                   ("Content-Type", "application/json")]
        if credential is not None and credential.applies_to_target(target.origin, target.path):
            headers += credential.headers_for(method, target.url).items()
        resp = await self._send(url, lambda: f"refused to send to {redact_url(url)}", method, target, headers, body)
        async with _Answer(_ready(resp, url), url):
            status = resp.status_code
            if 300 <= status < 400:
                raise UpstreamError(f"{redact_url(url)}: HTTP {status}: a {method} is never redirected")
            if status == 404:
                raise NotFound(f"{redact_url(url)}: HTTP 404")
            if status in (401, 403):
                raise Forbidden(f"{redact_url(url)}: HTTP {status} (credentials refused)", status)
            if status != 200:
                self._retry_or_raise(resp, url)
            answer = await _receive_json(resp, hold, url)
        try:
            return json.loads(answer)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadListing(f"{redact_url(url)}: malformed JSON ({e})") from None
        except RecursionError:
            raise BadListing(f"{redact_url(url)}: JSON nested too deep") from None
        finally:
            answer.clear()

    async def _range_once(self, url: str, start: int, length: int, credentials: bool, take_whole: bool,
                          into: bool) -> RangeReply:
        """One attempt at bytes [start, start+length), or at the last `length` bytes when
        start is -1 (a suffix range). Its memory is held against the budget while it is read:
        the bytes kept, their copy into the reply, and a network chunk."""
        held = await self.budget.take(2 * length + READ_SIZE)  # before a connection slot: waits holding nothing
        try:
            return await self._range_attempt(url, start, length, credentials, take_whole, into)
        except ranges.RangeMismatch as e:
            raise _Retry(str(e)) from None
        finally:
            self.budget.give(held)

    async def _range_attempt(self, url: str, start: int, length: int, credentials: bool, take_whole: bool,
                             into: bool) -> RangeReply:
        target = self._targets.get(url)
        resolved: trio.Event | None = None  # set once this request has resolved `url` again
        if target is None and self._targets.redirects(url):
            pending = self._resolving.get(url)
            if pending is not None:
                await pending.wait()
                target = self._targets.get(url)
            if target is None and url not in self._resolving:
                resolved = self._resolving[url] = trio.Event()
        try:
            return await self._range_via(url, target, start, length, credentials, take_whole, into, resolved)
        finally:
            if resolved is not None:
                resolved.set()
                if self._resolving.get(url) is resolved:
                    del self._resolving[url]

    async def _range_via(self, url: str, target: str | None, start: int, length: int, credentials: bool,
                         take_whole: bool, into: bool, resolved: trio.Event | None) -> RangeReply:
        use_target = target is not None
        fetch_url = target or url
        answer = self._open(fetch_url, accept="*/*", byte_range=f"{start}-{start + length - 1}" if start >= 0 else f"-{length}",
                            credentials=credentials and not use_target)
        async with answer as (resp, final, redirected):
            status = resp.status_code
            reached_storage = use_target or redirected
            if not reached_storage:
                limited = _rate_limited(resp)
                if limited is not None:
                    raise limited
            # (Azure Blob answers an expired signed URL with 403, or 400 for a malformed one)
            if status in (400, 401, 403, 404, 410) and reached_storage:
                # Expired presigned URL (S3 answers 403) or a target gone stale: go back to
                # the original URL once; a fresh target failing the same way is final.
                if use_target:
                    self._targets.drop(url)
                    raise _StaleTarget()
                if status in (404, 410):
                    raise ArtifactExpired(f"{redact_url(url)}: storage answered HTTP {status}; the artifact has expired")
                raise Forbidden(f"{redact_url(url)}: storage refused access (HTTP {status})")
            if status in (404, 410):
                raise ArtifactExpired(f"{redact_url(url)}: HTTP {status}; the artifact has expired or was deleted")
            if status in (401, 403):
                raise Forbidden(f"{redact_url(url)}: HTTP {status} (check the API token)")
            if redirected:
                self._targets.set(url, final)
                if resolved is not None:
                    resolved.set()  # the others may go on with it while this body is read
            encoding = _content_encoding(resp)
            if status == 206:
                if start < 0:  # the tail: where it starts follows from the total
                    start = max(0, ranges.total_of(resp, url) - length)
                reply = await ranges.read_partial(resp, url, start, length, into)
                return reply if encoding is None else dataclasses.replace(reply, encoding=encoding)
            if status == 200:
                declared = resp.headers.get("content-length", "")
                if take_whole and start >= 0 and encoding is None and declared.isdigit():
                    total = ranges.resource_size(declared, url, "Content-Length")
                    answer.detach()
                    return RangeReply(0, b"", total, whole=WholeBody(resp, url, self.timeout))
                if start < 0:
                    if encoding is None and declared.isdigit() and int(declared) > length + SUFFIX_STREAM_SLACK:
                        # not worth streaming the whole body for its tail: closed unread
                        raise _SuffixIgnored(ranges.resource_size(declared, url, "Content-Length"))
                    reply = await ranges.read_whole_tail(resp, url, length)
                else:
                    reply = await ranges.read_whole(resp, url, start, length)
                return reply if encoding is None else dataclasses.replace(reply, encoding=encoding)
            if status == 416:
                return ranges.unsatisfiable(resp, url, max(0, start))
            self._retry_or_raise(resp, url)
        raise AssertionError("unreachable")

    async def _whole_once(self, url: str, consume: Callable[[AsyncIterator[bytes], str | None], Awaitable[T]],
                          credentials: bool) -> T:
        target = self._targets.get(url)
        use_target = target is not None
        fetch_url = target or url
        async with self._open(fetch_url, accept="*/*", byte_range=None,
                              credentials=credentials and not use_target) as (resp, _final, _redirected):
            status = resp.status_code
            if status in (401, 403, 404, 410) and use_target:
                self._targets.drop(url)
                raise _StaleTarget()
            if status in (404, 410):
                raise ArtifactExpired(f"{redact_url(url)}: HTTP {status}; the artifact has expired or was deleted")
            if status in (401, 403):
                raise Forbidden(f"{redact_url(url)}: HTTP {status}")
            if status != 200:
                self._retry_or_raise(resp, url)
            return await consume(resp.aiter_raw(), _content_encoding(resp))

    async def _stream_once(self, url: str, credentials: bool) -> Reply:
        resp, _, _ = await self._follow(url, "*/*", None, credentials)
        status = resp.status_code
        if status == 200:
            return resp
        await resp.aclose()
        if status in (404, 410):
            raise ArtifactExpired(f"{redact_url(url)}: HTTP {status}; the artifact has expired or was deleted")
        if status in (401, 403):
            raise Forbidden(f"{redact_url(url)}: HTTP {status}")
        self._retry_or_raise(resp, url)
        raise AssertionError("unreachable")

def _content_encoding(resp: Reply) -> str | None:
    """The coding a body is stored in (lowercase), None for the bytes as they are."""
    value = resp.headers.get("content-encoding")
    if value is None:
        return None
    value = value.strip().lower()
    return None if value in ("", "identity") else value


async def _stream_chunks(resp: Reply, url: str) -> AsyncIterator[bytes]:
    """A streamed body's chunks; the connection failing is an UpstreamError (not retried: the
    bytes before it were served already)."""
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except BrokenAnswer as e:
        raise UpstreamError(f"{redact_url(url)}: broken HTTP body ({e})") from None
    except httpx.TransportError as e:
        raise UpstreamError(f"{redact_url(url)}: connection broke reading the stream ({type(e).__name__})") from None


async def _ready(resp: Reply, url: str) -> tuple[Reply, str, bool]:
    """An answer already in, shaped as `_Answer` expects (not redirected)."""
    return resp, url, False


async def _receive_json(resp: Reply, hold: Hold, url: str) -> bytearray:
    """The decoded body of an API answer, with the memory parsing it will take already held."""
    try:
        body = await bodies.receive(resp.aiter_raw(), resp.headers.get("content-encoding"), hold, MAX_JSON_BYTES)
        try:
            if len(body) < PARSE_IN_THREAD_BYTES:
                hold.grow(bodies.parsed_size_bound(body))
            else:
                hold.grow(await trio.to_thread.run_sync(bodies.parsed_size_bound, body))
        except BaseException:
            body.clear()  # (see bodies.receive)
            raise
    except bodies.BudgetExhausted as e:
        raise _Retry(f"in-flight memory bound reached (see --max-inflight-memory: {e})") from None
    except bodies.TooLarge as e:
        raise BadListing(f"{redact_url(url)}: answer too large: {e} (see --max-inflight-memory)") from None
    except bodies.UnsupportedEncoding as e:
        raise BadListing(f"{redact_url(url)}: {e}") from None
    except zlib.error as e:  # a gzip body that is not gzip: as malformed as bad JSON
        raise BadListing(f"{redact_url(url)}: body does not decode as its Content-Encoding says ({e})") from None
    return body


class _Answer:
    """The context manager `HttpClient._open` returns: a connection failing while the body is
    read becomes a retry, and the body is closed on the way out. (A class, not contextlib's
    generator-based one: that was a measurable share of a small GET's CPU.)"""

    __slots__ = ("_detached", "_opening", "_reply", "_url")

    def __init__(self, opening: Awaitable[tuple[Reply, str, bool]], url: str) -> None:
        self._opening = opening
        self._reply: Reply | None = None
        self._url = url
        self._detached = False

    def detach(self) -> None:
        """The body is handed on unread (`WholeBody`): leaving the block does not close it."""
        self._detached = True

    async def __aenter__(self) -> tuple[Reply, str, bool]:
        answer = await self._opening
        self._reply = answer[0]
        return answer

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        assert self._reply is not None
        if self._detached and error is None:
            return
        try:
            if isinstance(error, httpx.TimeoutException):
                raise _Retry(f"timeout reading body ({type(error).__name__})") from None
            if isinstance(error, BrokenAnswer):
                raise UpstreamError(f"{redact_url(self._url)}: broken HTTP body ({error}), not retried") from None
            if isinstance(error, httpx.TransportError):
                raise _Retry(f"connection broke reading body ({type(error).__name__})") from None
        finally:
            await self._reply.aclose()



# What a caller of HttpClient gets back (see ranges.py); credentials are in credentials.py.
__all__ = ["BodyCut", "HttpClient", "RangeReply", "WholeBody"]
