"""HTTP/1.1 on the wire: URLs as request targets, request heads, and answers read by llhttp.

Why not httpx.URL and h11: a directory listing costs two small GETs per artifact, and that
path is CPU-bound. httpx's character-by-character URL check and h11's per-event validation
were half the client CPU of such a GET (0.68 ms per listed file before, 0.31 ms after, serial,
loopback). So the common URL is checked with one regular expression (whatever falls outside
goes to httpx.URL; the tests check both agree), and answers are read by httptools: llhttp, the
C parser of Node.js, strict, one parser for every framing, and 2-2.7x faster than the regular
expressions it replaced on the heads this client sees (an S3 206, a presigned 302).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import httptools
import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
# A URL taken as it is: http(s), a host name or IPv4 address, a port, and a path and query
# of RFC 3986 characters without dot segments (no "/." at all, to keep the test simple).
# Anything else goes through httpx.URL (userinfo, IDNA, IPv6, spaces, fragments, "..": it
# normalises and percent-encodes them as httpx always has).
# (Case spelled out for the scheme, not re.IGNORECASE: that folds the case of every character
# matched, 3x the cost on a presigned URL of 300 characters, parsed at every redirect.)
_PLAIN_URL = re.compile(r"([hH][tT][tT][pP][sS]?)://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?([/?][A-Za-z0-9._~!$&'()*+,;=:@/?%-]*)?",
                        re.ASCII)
# A host httpx checks as an IPv4 address: the fast path takes it only when it is one.
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


@functools.lru_cache(maxsize=64)
def _is_ipv4_address(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


class Target(NamedTuple):
    """Where a request goes: scheme and host lowercase, the port explicit, `path` the request
    target (path and query, never a fragment). (A named tuple: made twice per listed artifact,
    at a fraction of a frozen dataclass's cost.)"""

    scheme: str
    host: str  # an IPv6 address without its brackets
    port: int
    path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def authority(self) -> str:
        """The Host header: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_url(url: str) -> Target:
    """The target of an http(s) URL; httpx.InvalidURL or httpx.UnsupportedProtocol if it has none."""
    m = _PLAIN_URL.fullmatch(url)
    if m is not None and (m.group(4) is None or "/." not in m.group(4)):
        scheme, host, port, path = m.groups()
        scheme = scheme.lower()
        number = int(port) if port else DEFAULT_PORTS[scheme]
        if 0 < number < 65536 and (not _IPV4_STYLE.fullmatch(host) or _is_ipv4_address(host)):
            path = path or "/"
            return Target(scheme, host.lower(), number, path if path[0] == "/" else "/" + path)
    parsed = httpx.URL(url)
    if parsed.scheme not in DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {parsed.scheme!r}")
    if not parsed.host:
        raise httpx.InvalidURL("no host in the URL")
    number = parsed.port or DEFAULT_PORTS[parsed.scheme]
    if not 0 < number < 65536:  # httpx lets these through; connecting would fail oddly
        raise httpx.InvalidURL(f"port {number} out of range")
    return Target(parsed.scheme, parsed.raw_host.decode("ascii").lower(), number, parsed.raw_path.decode("ascii"))


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers by lowercase name; a repeated header's values joined with ", " (RFC 9110 5.3)."""
    return _joined((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw)


def _joined(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Decoded (lowercase name, value) pairs by name, a repeated name's values joined in order."""
    headers: dict[str, str] = {}
    for key, text in fields:
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


# The end of a response head: its blank line (CRLF, or a bare LF, which we accept as h11 did).
HEAD_END = re.compile(rb"\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Set from the target (Host) or fixed by a request without a body: from a caller, a second Host
# would be refused by servers, and a length or chunked framing would leave one waiting for a body.
_SET_HERE = frozenset({"host", "content-length", "transfer-encoding"})
OWS = " \t"  # optional whitespace around a field value (RFC 9110 5.6.3)
# The largest body a Content-Length may declare: a size the kernel can show (off_t). A larger
# one (2^64 - 1 passes llhttp) is a broken answer, not a body to wait for.
MAX_CONTENT_LENGTH = 2**63 - 1
_MAX_LENGTH_DIGITS = len(str(MAX_CONTENT_LENGTH))
# An obsolete line folding (RFC 9112 5.2): a field line continued on the next line, which starts
# with whitespace. llhttp refuses it; a user agent must read it as one space, as h11 did.
_OBS_FOLD = re.compile(rb"[ \t]*\r?\n[ \t]+")


class BrokenAnswer(httpx.RemoteProtocolError):
    """An answer the server sent whole that breaks HTTP/1.1 (not "HTTP/", a status outside
    100-599, a bad or conflicting Content-Length, control characters in a header, endless 1xx
    heads): asking again gets the same answer, so callers fail at once rather than retry.
    An answer cut short by a closed connection is a plain RemoteProtocolError: worth a retry.
    Messages never quote the server's bytes (a header may carry a presigned signature)."""


# Header fields found legal, as given -> as sent: most requests repeat theirs (Accept, User-Agent,
# a size probe's Range, a token), and checking each field of each request with two regular
# expressions cost more than looking it up. Bounded (emptied when full): block reads ask for ever
# other Ranges.
_LEGAL_FIELDS: dict[tuple[str, str], tuple[str, str]] = {}
LEGAL_FIELDS_KEPT = 1024
_LEGAL_METHODS = frozenset({"GET", "HEAD", "PUT", "POST"})


def request_fields(target: Target, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A request's header fields as sent, Host first, every part checked: a header value from a
    credential or a target from a Location header must not be able to add a line (request
    splitting)."""
    path = target.path
    # one or more of "!" to "~" (printable ASCII but space): three C calls, not a regular
    # expression over a presigned URL's few hundred characters, twice per listed artifact
    if not (path.isascii() and path.isprintable() and path and " " not in path):
        raise httpx.LocalProtocolError(f"illegal request target {target.path!r}")
    fields = [("Host", target.authority)]
    legal = _LEGAL_FIELDS
    for field in headers:
        checked = legal.get(field)
        if checked is None:
            name, value = field
            if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                raise httpx.LocalProtocolError(f"illegal header {name!r}")
            if name.lower() in _SET_HERE:
                raise httpx.LocalProtocolError(f"{name} is not the caller's to set")
            checked = (name, value.strip(OWS))  # surrounding whitespace is not part of a value
            if len(legal) >= LEGAL_FIELDS_KEPT:
                legal.clear()
            legal[field] = checked
        fields.append(checked)
    return fields


def request_head(method: str, path: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """The head of a request whose target and fields `request_fields` has checked."""
    if method not in _LEGAL_METHODS and not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"illegal method {method!r}")
    lines = [f"{method} {path} HTTP/1.1", *(name + ": " + value for name, value in fields), "", ""]
    return "\r\n".join(lines).encode("ascii")


def _head_fields(head: bytes) -> dict[str, str]:
    """`header_dict` of a head llhttp accepted whole (unfolded), split here in one pass rather
    than handed over by llhttp field by field: a call back into Python per field was the
    largest share of reading a head. What llhttp accepted makes the split exact: every line
    after the status line is a field line (a token, a colon, then a value without CR, LF or
    NUL), each ended by LF or CRLF, and the blank line last."""
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\n")[1:-2]:  # (the blank line, and after its LF)
        name, _, value = line.partition(":")
        key = name.lower()
        value = value.strip(" \t\r")  # OWS either side (RFC 9110 5.5), and the line's CR
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


class Head:
    """A final answer's head, as `ResponseParser.head` read it."""

    __slots__ = ("status", "headers", "keep_alive", "length", "until_close")

    def __init__(self, status: int, headers: dict[str, str], keep_alive: bool, length: int | None,
                 until_close: bool) -> None:
        self.status = status
        self.headers = headers  # by lowercase name, see `header_dict`
        self.keep_alive = keep_alive  # llhttp's judgement: HTTP/1.1 without "close" (or 1.0 with keep-alive), framed
        # Body bytes framed by Content-Length, for the caller to read off the socket (0: no body,
        # as for 204, 304 or an answer to HEAD); None: chunked, read through `ResponseParser.body`,
        # or (`until_close`) every byte until the server closes the connection, read off the socket.
        self.length = length
        self.until_close = until_close


class ResponseParser:
    """One exchange's answer, read by llhttp (httptools): each head the caller found the end of
    (1xx ones, then the final one), then the body when Content-Length does not frame it.

    llhttp's strictness is ours, with additions: a status outside 100-599 (llhttp reads any three
    digits), a version other than HTTP/1.0 and 1.1, a Content-Length above MAX_CONTENT_LENGTH, a
    transfer coding other than chunked alone, and a 101 (we never ask to switch protocols) are
    broken answers too; no 1xx answer has a body. And two leniencies h11 had, both allowed to a
    user agent by RFC 9112: a bare LF ends a line (2.2), and an obsolete line folding is read as
    one space (5.2)."""

    __slots__ = ("_parser", "_bodiless", "_head_ended", "_keep_alive", "_chunks", "ended", "trailing")

    def __init__(self, method: str) -> None:
        self._parser = self._llhttp()
        self._bodiless = method == "HEAD"  # its answer says what a GET's body would be, and has none
        self._head_ended = False
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self.ended = False  # llhttp read the whole message (head and body)
        self.trailing = False  # and bytes came after it: the connection is out of step

    def _llhttp(self) -> httptools.HttpResponseParser:
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        return parser

    # llhttp's callbacks (httptools looks them up once, by name; None: not called, and cheaper
    # to look up than a missing attribute). No on_header: the head's fields are split from its
    # bytes once llhttp accepted them (`_head_fields`), and a chunked body's trailers are dropped.
    on_status = on_header = on_chunk_header = on_chunk_complete = None

    def on_message_begin(self) -> None:
        self.trailing = self.ended

    def on_headers_complete(self) -> None:
        self._head_ended = True
        self._keep_alive = self._parser.should_keep_alive()  # (llhttp forgets it once the message ended)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.ended = True

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise BrokenAnswer("a switch of protocols (101) that was never asked for") from None
        except httptools.HttpParserError as e:
            # llhttp's reasons name the rule broken, never quote the bytes
            raise BrokenAnswer(str(e) or type(e).__name__) from None

    def _feed_head(self, data: bytes) -> bytes:
        """Feeds a head to llhttp; returns the bytes it accepted (`data`, or `data` unfolded)."""
        try:
            self._feed(data)
        except BrokenAnswer:
            # llhttp refuses an obsolete line folding; unfolded, the head is read again (rare:
            # looking for folds in every head cost more than the rest of reading it)
            first = data.find(b"\n") + 1  # whitespace before the first field line is llhttp's to refuse
            unfolded = data[:first] + _OBS_FOLD.sub(b" ", data[first:])
            if unfolded == data:
                raise
            self._parser = self._llhttp()
            self._feed(unfolded)
            return unfolded
        return data

    def head(self, data: bytes) -> Head | None:
        """The final answer's head from `data`, exactly one head (HEAD_END found its blank line);
        None for an informational (1xx) one, which another head follows. BrokenAnswer for one
        that breaks HTTP/1.1 (see the class docstring)."""
        self._head_ended = self.ended = False
        accepted = self._feed_head(data)
        if not self._head_ended:  # (HEAD_END and llhttp agree on where a head ends)
            raise BrokenAnswer("the head did not end at its blank line")
        status = self._parser.get_status_code()
        if not 100 <= status <= 599 or status == 101:
            raise BrokenAnswer("a status outside 100-599 (RFC 9110 15)" if status != 101
                               else "a switch of protocols (101) that was never asked for")
        if data[5:8] not in (b"1.1", b"1.0"):
            raise BrokenAnswer("not an HTTP/1.0 or HTTP/1.1 answer")
        headers = _head_fields(accepted)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > _MAX_LENGTH_DIGITS
                                     or int(declared) > MAX_CONTENT_LENGTH):
            raise BrokenAnswer("Content-Length larger than any file (2^63 - 1 bytes)")  # (llhttp checked its digits)
        if status < 200:
            # No 1xx answer has a body (RFC 9112 6.3); llhttp gives 104-199 one when they declare
            # a length. A fresh parser reads the next head from its first byte.
            self._parser = self._llhttp()
            return None
        coding = headers.get("transfer-encoding")
        if coding is not None and coding.strip(OWS).lower() != "chunked":
            # we ask for no other (no TE header: RFC 9112 7.4), and llhttp would hand over a gzip
            # or a twice chunked body as it came, as if those were the bytes
            raise BrokenAnswer("a transfer coding other than chunked")
        if self.ended or self._bodiless:
            length: int | None = 0
        elif declared is not None:
            length = int(declared)  # llhttp refuses it beside Transfer-Encoding, or twice
        else:  # chunked, or without either header until the connection ends (RFC 9112 6.3)
            length = None
        return Head(status, headers, self._keep_alive, length, length is None and coding is None)

    def body(self, data: bytes) -> list[bytes]:
        """The body bytes in `data`, the next bytes after the head of a chunked body: chunks
        decoded, trailers dropped. `ended` once the body is whole; bytes after it are
        not read (`trailing`). BrokenAnswer for a body that breaks HTTP/1.1 (a bad chunk)."""
        chunks: list[bytes] = []
        self._chunks = chunks
        try:
            self._feed(data)
        except BrokenAnswer:
            if not self.ended:
                raise
            self.trailing = True  # the body is whole; what came after it is not an answer
        return chunks

