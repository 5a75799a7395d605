"""Tiers 1-2: the address rule. Which class an address is in; which classes a mount allows
(from its configured API hosts, or the override); and the client really checking the address a
connection reached, against real servers: decimal and hex IPv4 forms, `localhost`, 0.0.0.0,
IPv4-mapped IPv6, a redirect chain, DNS rebinding and a link-local peer."""

from __future__ import annotations

import socket

import pytest
import trio

from ciartfs.errors import AddressRefused
from ciartfs.fakeserver import InternalService
from ciartfs.fakeserver.internal import SECRET
from ciartfs.net.addresses import RESOLVE_RETRY_AFTER, AddressClass, AddressRule, classify
from ciartfs.net.client import HttpClient
from ciartfs.net.pool import PoolPerOrigin
from local_addresses import link_local_ipv6, private_ipv4

PUBLIC_API = "140.82.112.3"  # a public address: a mount whose API host is on the internet

L, P, LL, G = AddressClass.LOOPBACK, AddressClass.PRIVATE, AddressClass.LINK_LOCAL, AddressClass.PUBLIC


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", L), ("127.8.9.10", L), ("::1", L), ("0.0.0.0", L), ("0.1.2.3", L), ("::", L),
    ("::ffff:127.0.0.1", L), ("::ffff:7f00:1", L), ("64:ff9b::7f00:1", L),
    ("169.254.169.254", LL), ("169.254.0.1", LL), ("fe80::1", LL), ("fe80::fc:ff:fe00:1%eth0", LL),
    ("::ffff:169.254.169.254", LL), ("64:ff9b::a9fe:a9fe", LL),
    ("10.0.0.1", P), ("172.16.5.4", P), ("192.168.1.1", P), ("100.64.0.1", P), ("192.0.2.2", P),
    ("fd00::2", P), ("fec0::1", P), ("::ffff:10.1.2.3", P), ("224.0.0.1", P),
    ("8.8.8.8", G), ("140.82.112.3", G), ("2606:4700::1111", G), ("::ffff:8.8.8.8", G),
])
def test_classify(address, expected):
    assert classify(address) is expected


async def test_only_public_peers_when_the_api_host_is_public():
    rule = AddressRule([PUBLIC_API])
    await rule.check("artifacts.example", "52.216.1.1")
    for host, peer in (("localhost", "127.0.0.1"), ("x.example", "10.0.0.1"), ("x.example", "::ffff:192.168.0.1"),
                       ("metadata", "169.254.169.254")):
        with pytest.raises(AddressRefused, match=peer.replace(".", r"\.")):
            await rule.check(host, peer)


async def test_the_api_host_class_is_allowed_and_no_other():
    loopback = AddressRule(["127.0.0.1"])
    await loopback.check("localhost", "127.0.0.1")
    await loopback.check("other", "::1")
    for peer in ("10.0.0.1", "fd00::2", "169.254.169.254", "fe80::1"):
        with pytest.raises(AddressRefused):
            await loopback.check("other", peer)
    private = AddressRule(["10.1.2.3", PUBLIC_API])
    await private.check("storage.internal", "10.9.9.9")
    with pytest.raises(AddressRefused):
        await private.check("localhost", "127.0.0.1")


async def test_override_allows_loopback_and_private_never_link_local():
    rule = AddressRule([PUBLIC_API], allow_private=True)
    for peer in ("127.0.0.1", "10.0.0.1", "fd00::2", "8.8.8.8"):
        await rule.check("x", peer)
    for peer in ("169.254.169.254", "fe80::1", "::ffff:169.254.169.254"):
        with pytest.raises(AddressRefused, match="link-local"):
            await rule.check("x", peer)


class Resolver(trio.abc.HostnameResolver):
    """Names -> addresses, changeable while running (DNS rebinding); anything else fails."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        self.asked.append(name)
        if name not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return socket.getaddrinfo(self.names[name], port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


async def test_configured_api_host_name_is_resolved_when_needed(autojump_clock):
    resolver = Resolver({})
    trio.socket.set_custom_hostname_resolver(resolver)
    rule = AddressRule(["ci.internal"])
    await rule.check("cdn.example", "52.216.1.1")  # a public peer needs no lookup
    assert resolver.asked == []
    with pytest.raises(AddressRefused):  # cannot resolve the API host (yet): nothing but public
        await rule.check("storage.internal", "10.0.0.7")
    resolver.names["ci.internal"] = "10.0.0.5"
    with pytest.raises(AddressRefused):  # a failed lookup is not retried at once...
        await rule.check("storage.internal", "10.0.0.7")
    assert resolver.asked == ["ci.internal"]
    await trio.sleep(RESOLVE_RETRY_AFTER)  # ...but after a while (the fake clock jumps)
    await rule.check("storage.internal", "10.0.0.7")
    assert resolver.asked == ["ci.internal", "ci.internal"]
    with pytest.raises(AddressRefused):
        await rule.check("localhost", "127.0.0.1")
    # the API host itself, reached at its address: that class is its own
    learned = AddressRule(["ci.internal"])
    await learned.check("ci.internal", "192.168.7.7")
    await learned.check("storage.internal", "192.168.8.8")


# -- the client, against real servers ----------------------------------------------------------

def client_for(rule: AddressRule) -> HttpClient:
    return HttpClient(timeout=3, address_rule=rule)


@pytest.fixture
def internal():
    with InternalService("127.0.0.1") as service:
        yield service


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "localhost", "0.0.0.0",
                                  "[::ffff:127.0.0.1]"])
async def test_every_spelling_of_loopback_is_refused_before_a_byte_is_sent(internal, host):
    client = client_for(AddressRule([PUBLIC_API]))
    try:
        with pytest.raises(AddressRefused, match=r"loopback address") as caught:
            await client.get_range(f"http://{host}:{internal.port}/latest/meta-data/", 0, 100)
    finally:
        await client.aclose()
    assert internal.requests == []
    assert "127.0.0.1" in str(caught.value)  # the address reached, whatever the spelling


async def test_loopback_is_fetched_when_the_api_host_is_on_loopback(internal):
    client = client_for(AddressRule(["127.0.0.1"]))
    try:
        reply = await client.get_range(f"http://localhost:{internal.port}/x", 0, 1 << 20)
    finally:
        await client.aclose()
    assert SECRET.encode() in reply.data and len(internal.requests) == 1


async def test_a_redirect_chain_ending_at_a_refused_address_is_refused(internal):
    rule = AddressRule(["127.0.0.1"])  # loopback allowed, private not
    with InternalService(private_ipv4()) as private:
        client = client_for(rule)
        try:
            with pytest.raises(AddressRefused, match="private address") as caught:
                await client.get_range(internal.redirect_url(internal.redirect_url(private.url + "/secret")), 0, 100)
        finally:
            await client.aclose()
        assert private.requests == []
    assert [path.split("?")[0] for path, _ in internal.requests] == ["/redirect", "/redirect"]
    assert "redirected to" in str(caught.value)


async def test_dns_rebinding_is_caught_on_the_next_connection():
    """A name that first resolves to an allowed address and then to loopback: the check is on
    each new connection's peer, not on the name or on the first answer."""
    private = private_ipv4()
    with InternalService("0.0.0.0") as service:  # reachable at both addresses
        resolver = Resolver({"files.example": private})
        trio.socket.set_custom_hostname_resolver(resolver)
        # private allowed, loopback not; no keep-alive: every request connects (and resolves) anew
        pool = PoolPerOrigin(max_per_origin=4, keepalive_expiry=0.0, address_rule=AddressRule([private]))
        client = HttpClient(timeout=3, transport=pool)
        url = f"http://files.example:{service.port}/data"
        try:
            assert SECRET.encode() in (await client.get_range(url, 0, 1 << 20)).data
            resolver.names["files.example"] = "127.0.0.1"
            with pytest.raises(AddressRefused, match=r"127\.0\.0\.1, a loopback address"):
                await client.get_range(url, 0, 1 << 20)
        finally:
            await client.aclose()
    assert len(service.requests) == 1 and resolver.asked == ["files.example", "files.example"]


async def test_a_link_local_peer_is_refused_even_with_the_override():
    address = link_local_ipv6()
    with InternalService(address) as service:
        trio.socket.set_custom_hostname_resolver(Resolver({"metadata.example": address}))
        client = client_for(AddressRule(["127.0.0.1", address.split("%")[0]], allow_private=True))
        try:
            with pytest.raises(AddressRefused, match="link-local"):
                await client.get_range(f"http://metadata.example:{service.port}/latest/meta-data/", 0, 100)
        finally:
            await client.aclose()
        assert service.requests == []
