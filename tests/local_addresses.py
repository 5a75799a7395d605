"""This machine's own non-loopback addresses, for address-rule tests that need a server at a
private or link-local address (they skip where the machine has none)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ciartfs.net.addresses import AddressClass, classify


def private_ipv4() -> str:
    """An IPv4 address of this machine in the private class, else skip."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: picks the outgoing interface, sends nothing
            address = s.getsockname()[0]
        except OSError:
            pytest.skip("no IPv4 interface besides loopback")
    if classify(address) is not AddressClass.PRIVATE:
        pytest.skip(f"this machine's IPv4 address {address} is not a private one")
    return str(address)


def link_local_ipv6() -> str:
    """A link-local IPv6 address of this machine with its zone ("fe80::1%eth0"), else skip."""
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().split("\n")
    except OSError:
        pytest.skip("no /proc/net/if_inet6")
    for line in lines:
        fields = line.split()
        if len(fields) == 6:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            if address.is_link_local:
                return f"{address}%{fields[5]}"
    pytest.skip("no link-local IPv6 address on this machine")
