"""The address rule: which peers a connection may reach.

URLs chosen by others (a CircleCI listing's `url`, a Taskcluster `reference` artifact, any
redirect) could point at the machine's own services or a cloud metadata service, and their
answers would become readable files. So every new connection is checked against this rule.

Invariants:
- The check is on the address the socket actually connected to (`getpeername`, after DNS and
  the kernel's own parsing), once per new connection, before a byte is sent: a host name,
  `localhost`, a decimal or hex IPv4 form (`2130706433`, `0x7f.1`), `0.0.0.0`, an IPv4-mapped
  IPv6 address or a name that re-resolves (DNS rebinding) all end up as the address checked.
- Link-local peers (169.254.0.0/16, fe80::/10: metadata services) are never allowed.
- Loopback and private peers are allowed only when a configured API host is itself in that
  class (the demo, the tests and self-hosted CI live there), or with `allow_private`.
- Public peers are allowed.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import socket
from collections.abc import Iterable

import trio

from ciartfs.errors import AddressRefused

# NAT64's well-known prefix: a gateway connects on to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Deprecated site-local IPv6 (ipaddress calls it global): private networks still use it.
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
# "This network": connecting to 0.0.0.0 (or ::) reaches the machine itself.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# A configured API host name that did not resolve is tried again after this many seconds, not
# on every refusal: without DNS each try could take the resolver's whole timeout.
RESOLVE_RETRY_AFTER = 30.0


class AddressClass(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"


@functools.lru_cache(maxsize=1024)
def classify(address: str) -> AddressClass:
    """The class of an IP address as a socket reports it (a zone suffix is ignored)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.is_link_local:
        return AddressClass.LINK_LOCAL
    if ip.is_loopback or ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return AddressClass.LOOPBACK
    if ip.is_global and not ip.is_multicast and not (isinstance(ip, ipaddress.IPv6Address) and ip in _SITE_LOCAL):
        return AddressClass.PUBLIC
    return AddressClass.PRIVATE


def _literal_class(host: str) -> AddressClass | None:
    try:
        return classify(host)
    except ValueError:
        return None


class AddressRule:
    """The rule for one mount: `api_hosts` are the configured API hosts (names or addresses).

    Which classes they are in is learned without delaying the mount: an address literal at
    once; a name when it is first connected to (the API host is the first thing a mount asks),
    or resolved on demand the first time a loopback or private peer shows up before that."""

    def __init__(self, api_hosts: Iterable[str], *, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._api_hosts = frozenset(h.lower() for h in api_hosts)
        self._allowed: set[AddressClass] = {AddressClass.PUBLIC}
        self._unresolved: set[str] = set()
        for host in self._api_hosts:
            cls = _literal_class(host)
            if cls is None:
                self._unresolved.add(host)
            elif cls is not AddressClass.LINK_LOCAL:
                self._allowed.add(cls)
        self._resolving = trio.Lock()
        self._next_resolve = -float("inf")  # trio time of the next try to resolve `_unresolved`

    @property
    def allowed(self) -> frozenset[AddressClass]:
        """The classes allowed so far (for status and tests)."""
        return frozenset(AddressClass) - {AddressClass.LINK_LOCAL} if self.allow_private else frozenset(self._allowed)

    async def check(self, host: str, peer: str) -> None:
        """Raise AddressRefused unless a connection to `host` that reached `peer` may be used."""
        cls = classify(peer)
        where = peer if host == peer else f"{host} is at {peer}"
        if cls is AddressClass.LINK_LOCAL:
            raise AddressRefused(f"{where}, a link-local address (never fetched)")
        if self.allow_private or cls in self._allowed:
            return
        if host.lower() in self._api_hosts:
            # the configured API host is itself here: addresses of its class are this CI's own
            self._allowed.add(cls)
            return
        if self._unresolved and trio.current_time() >= self._next_resolve:
            await self._resolve_api_hosts()
            if cls in self._allowed:
                return
        raise AddressRefused(f"{where}, a {cls.value} address, and no configured API host is at one "
                             f"(--allow-private-addresses allows loopback and private addresses)")

    async def _resolve_api_hosts(self) -> None:
        async with self._resolving:
            if trio.current_time() < self._next_resolve:
                return  # another task just tried
            self._next_resolve = trio.current_time() + RESOLVE_RETRY_AFTER
            for host in sorted(self._unresolved):
                try:
                    infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
                except OSError:
                    continue  # asked again later: a DNS hiccup must not fix the answer
                self._unresolved.discard(host)
                for *_, sockaddr in infos:
                    cls = classify(str(sockaddr[0]))
                    if cls is not AddressClass.LINK_LOCAL:
                        self._allowed.add(cls)
