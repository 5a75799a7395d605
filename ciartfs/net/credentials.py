"""Credentials and their scope: what authenticates us, and the only origins it may go to.

Invariants:
- An origin is (scheme, host, port) exactly as a request to the URL would connect
  (`origin_of`, from the same parse the connection uses): a URL's spelling (case, a default
  port written out, userinfo, dot segments) never changes which origin it names.
- A credential applies to its listed origins, and to a family of hosts only over https
  (`https_host_suffixes`): never over plain http, never on another port unless listed.
- A credential with `path_prefixes` applies only under them, and never to a path with dot
  segments: two CI systems' APIs on one origin (the demo's fake serves all of them) each get
  their own headers.

This is one of two gates. The other is the client's (see client.py): a request carries a
credential only on the first hop of a URL its caller says a provider built, never on a redirect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import httpx

from ciartfs.net.wire import parse_url


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) exactly as a request to `url` would connect; ("", "", 0) for a URL
    that no request can be sent to."""
    try:
        return parse_url(url).origin
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return "", "", 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Credential:
    """What authenticates us, and the only places it may be sent.

    `origins` are exact (scheme, host, port) matches; `https_host_suffixes` admit a family
    of hosts over https only (CircleCI serves artifacts from `*.circle-artifacts.com`).
    This is the second gate: a request gets the headers only if its caller also says the URL
    is one a provider built (`credentials=True`), and only on its first hop.
    Subclasses say which headers a request gets (static, or signed per request).
    """

    origins: frozenset[tuple[str, str, int]] = frozenset()
    https_host_suffixes: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()

    def applies_to(self, url: str) -> bool:
        try:
            target = parse_url(url)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            return False
        return self.applies_to_target(target.origin, target.path)

    def applies_to_target(self, origin: tuple[str, str, int], path: str) -> bool:
        """`path`: the request target as sent (its query included)."""
        if self.path_prefixes:
            segments = path.split("?", 1)[0].split("/")
            if "." in segments or ".." in segments or not path.startswith(self.path_prefixes):
                return False
        if origin in self.origins:
            return True
        scheme, host, _ = origin
        return scheme == "https" and any(host.endswith(s) for s in self.https_host_suffixes)

    def headers_for(self, method: str, url: str) -> Mapping[str, str]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeaderCredential(Credential):
    """The same headers on every request (an API token)."""

    headers: Mapping[str, str] = dataclasses.field(repr=False)

    def headers_for(self, method: str, url: str) -> Mapping[str, str]:
        return self.headers
