"""HTTP/1.1 on the wire: URLs as request targets, request heads, and the response heads read
without h11 (`connpool` hands anything else to h11).

Why not httpx.URL and h11 for everything: a directory listing costs two small GETs per
artifact, and that path is CPU-bound. httpx's character-by-character URL check and h11's
per-event validation were half the client CPU of such a GET (0.68 ms per listed file before,
0.31 ms after, serial, loopback). So the common case is checked with a few regular
expressions, each answer a plain status line and header lines; whatever falls outside
goes to httpx.URL or h11, and the tests check both paths agree where both apply.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
# A URL taken as it is: http(s), a host name or IPv4 address, a port, and a path and query
# of RFC 3986 characters without dot segments (no "/." at all, to keep the test simple).
# Anything else goes through httpx.URL (userinfo, IDNA, IPv6, spaces, fragments, "..": it
# normalises and percent-encodes them as httpx always has).
_PLAIN_URL = re.compile(r"(https?)://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?([/?][A-Za-z0-9._~!$&'()*+,;=:@/?%-]*)?",
                        re.ASCII | re.IGNORECASE)
# A host httpx checks as an IPv4 address: the fast path takes it only when it is one.
_IPV4_STYLE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


@functools.lru_cache(maxsize=64)
def _is_ipv4_address(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: scheme and host lowercase, the port explicit, `path` the request
    target (path and query, never a fragment)."""

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
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


# What `plain_head` reads: a status line and header lines as RFC 9112 writes them (CRLF
# endings, tokens for names, no obsolete line folding, no control characters in values).
HEAD_END = re.compile(rb"\n\r?\n")
# (A status is 100-599, RFC 9110 15: "099" is not 99; anything else goes to h11 to judge.)
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e\x80-\xff]*)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
_REQUEST_TARGET = re.compile(r"[\x21-\x7e]+")
# Set from the target (Host) or fixed by a request without a body: from a caller, a second Host
# would be refused by servers, and a length or chunked framing would leave one waiting for a body.
_SET_HERE = frozenset({"host", "content-length", "transfer-encoding"})
OWS = " \t"  # optional whitespace around a field value (RFC 9110 5.6.3)
# The largest body a Content-Length may declare: a size the kernel can show (off_t). A larger
# one (10^23) is a broken answer, not a body to wait for; its digits are counted before int()
# reads them (Python refuses more than 4300 digits with a ValueError).
MAX_CONTENT_LENGTH = 2**63 - 1
_MAX_LENGTH_DIGITS = len(str(MAX_CONTENT_LENGTH))


class BrokenAnswer(httpx.RemoteProtocolError):
    """An answer the server sent whole that breaks HTTP/1.1 (not "HTTP/", a status outside
    100-599, a bad or conflicting Content-Length, control characters in a header, endless 1xx
    heads): asking again gets the same answer, so callers fail at once rather than retry.
    An answer cut short by a closed connection is a plain RemoteProtocolError: worth a retry.
    Messages never quote the server's bytes (a header may carry a presigned signature)."""


def request_fields(target: Target, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A request's header fields as sent, Host first, every part checked: a header value from a
    credential or a target from a Location header must not be able to add a line (request
    splitting). The same list goes on the wire and, should h11 read the answer, to h11."""
    if not _REQUEST_TARGET.fullmatch(target.path):
        raise httpx.LocalProtocolError(f"illegal request target {target.path!r}")
    fields = [("Host", target.authority)]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise httpx.LocalProtocolError(f"illegal header {name!r}")
        if name.lower() in _SET_HERE:
            raise httpx.LocalProtocolError(f"{name} is not the caller's to set")
        fields.append((name, value.strip(OWS)))  # surrounding whitespace is not part of a value
    return fields


def request_head(method: str, path: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """The head of a request whose target and fields `request_fields` has checked."""
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"illegal method {method!r}")
    lines = [f"{method} {path} HTTP/1.1", *(name + ": " + value for name, value in fields), "", ""]
    return "\r\n".join(lines).encode("ascii")


def plain_head(head: bytes) -> tuple[int, bool, dict[str, str]] | None:
    """(status, HTTP/1.1?, headers) of a final answer's head (it ends with its blank line), or
    None for anything h11 should judge: 1xx, bare LF endings, folding, malformed lines."""
    lines = head.split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None or lines[-2:] != [b"", b""] or status.group(2)[0] == ord("1"):
        return None
    fields = []
    for line in lines[1:-2]:
        field = _FIELD_LINE.fullmatch(line)
        if field is None:
            return None
        fields.append((field.group(1), field.group(2).strip(b" \t")))
    return int(status.group(2)), status.group(1) == b"1", header_dict(fields)


def content_length(headers: dict[str, str], status: int) -> int | None:
    """The body's length when Content-Length frames it (204 and 304 have none, whatever it
    says); None when h11 should frame the body or judge the head: Transfer-Encoding, no
    Content-Length, or one that is not a number or repeated with different values.
    BrokenAnswer for a number above MAX_CONTENT_LENGTH (h11 would take up to 20 digits)."""
    if "transfer-encoding" in headers:
        return None
    declared = headers.get("content-length")
    if declared is None:
        return 0 if status in (204, 304) else None
    values = {v.strip() for v in declared.split(",")}  # repeated headers must agree
    value = values.pop()
    if values or not value.isdigit() or not value.isascii():
        return None
    if len(value) > _MAX_LENGTH_DIGITS or int(value) > MAX_CONTENT_LENGTH:
        raise BrokenAnswer("Content-Length larger than any file (2^63 - 1 bytes)")
    return 0 if status in (204, 304) else int(value)
