"""Which destinations a [network] section allows: by name as the client gave it
(network.allow), then by the address the proxy resolved (network.allow_private)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.egress.destinations import (
    ALLOW_KEY,
    ALLOW_PRIVATE_KEY,
    DestinationPolicy,
    IPAddress,
)
from sandbox.policy import Network


def destinations(
    allow: list[str],
    allow_private: list[str] | None = None,
    own: tuple[str, ...] = (),
    service_ports: tuple[int, ...] = (),
) -> DestinationPolicy:
    network = Network(
        mode="allowlist",
        allow=allow,
        allow_private=allow_private or [],
        allow_all_reason="the rules under test",
    )
    addresses = [ipaddress.ip_address(address) for address in own]
    return DestinationPolicy(network, addresses, service_ports)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# --- network.allow: the name as the client gave it --------------------------------------


@pytest.mark.parametrize(
    ("entry", "host", "port"),
    [
        ("data.example.org", "data.example.org", 443),
        ("data.example.org", "DATA.Example.ORG", 80),
        ("data.example.org", "data.example.org.", 443),  # the absolute form
        ("data.example.org:8443", "data.example.org", 8443),
        ("*.example.org", "a.example.org", 443),
        ("*.example.org", "a.b.example.org", 443),
        ("*", "anything.example", 80),
        ("10.1.2.3", "10.1.2.3", 443),
        ("10.1.2.3:9000", "10.1.2.3", 9000),
        ("[2001:db8::1]:8080", "2001:db8::1", 8080),
        ("[2001:db8::1]:8080", "2001:0db8:0::1", 8080),  # the same literal, spelt otherwise
    ],
)
def test_a_listed_destination_passes(entry: str, host: str, port: int) -> None:
    assert destinations([entry]).check_name(host, port) is None


@pytest.mark.parametrize(
    ("entry", "host", "port"),
    [
        ("data.example.org", "data.example.org", 8080),  # not a default port
        ("data.example.org:8443", "data.example.org", 443),  # a port replaces the defaults
        ("data.example.org", "evil-data.example.org", 443),
        ("data.example.org", "data.example.org.evil.example", 443),
        ("*.example.org", "example.org", 443),  # the pattern needs a label before it
        ("*.example.org", "badexample.org", 443),
        ("*", "10.1.2.3", 443),  # "*" is every name, never an address
        ("*", "::1", 443),
        ("data.example.org", "93.184.216.34", 443),  # an address, though the name resolves to it
        ("10.1.2.3", "10.1.2.4", 443),
        ("10.1.2.3", "::ffff:10.1.2.3", 8080),
        ("*", "127.0.0.1.", 443),  # a literal with a final dot is still a literal
    ],
)
def test_anything_else_is_refused_naming_network_allow(entry: str, host: str, port: int) -> None:
    refusal = destinations([entry]).check_name(host, port)
    assert refusal is not None
    assert refusal.key == ALLOW_KEY


@pytest.mark.parametrize(
    "host",
    [
        "16909060",  # 1.2.3.4, as the resolver (inet_aton) reads it
        "0x01020304",
        "1.2.3",
        "1.2.772",
        "0177.0.0.1",  # 127.0.0.1, octal
        "127.1",
        "0x7f.0.0.1",
        "127.000.000.001",
        "4294967296",  # no name ends in a numeric label
        "1.2.3.4.5",
        "16909060.",
    ],
)
def test_an_ipv4_address_in_another_form_is_refused_even_by_star(host: str) -> None:
    policy = destinations(["*", "1.2.3.4", "127.0.0.1", "*:8080"])
    refusal = policy.check_name(host, 443)
    assert refusal is not None
    assert refusal.key == ALLOW_KEY
    assert "a.b.c.d" in refusal.reason


@pytest.mark.parametrize("host", ["1password.example", "123.example", "a1.b2.c3", "0x.example"])
def test_names_with_numeric_labels_inside_are_names(host: str) -> None:
    assert destinations(["*"]).check_name(host, 443) is None


def test_a_listed_literal_with_a_final_dot_passes() -> None:
    assert destinations(["127.0.0.1"]).check_name("127.0.0.1.", 443) is None


@given(st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True))
def test_a_wildcard_matches_exactly_the_names_below_its_domain(name: str) -> None:
    policy = destinations(["*.example.org"])
    assert policy.check_name(f"{name}.example.org", 443) is None
    assert policy.check_name(f"{name}example.org", 443) is not None
    assert policy.check_name(f"{name}.example.org.{name}", 443) is not None


@given(st.integers(1, 65535))
def test_without_a_port_only_80_and_443_pass(port: int) -> None:
    refused = destinations(["data.example.org"]).check_name("data.example.org", port)
    assert (refused is None) == (port in (80, 443))


# --- network.allow_private: the address the proxy will connect to ----------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "100.64.0.1",  # shared address space (carrier NAT)
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "240.0.0.1",  # reserved
        "255.255.255.255",
        # ipaddress (3.11) calls these global:
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "::808:808",  # IPv4-compatible, deprecated even wrapping a public address
        "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
        "::ffff:0:808:808",  # IPv4-translated, public
        "fec0::1",  # site-local
        "64:ff9b:1::7f00:1",  # local-use NAT64
        "64:ff9b:1:7f00:1::",
        "3fff::1",  # documentation
        "5f00::1",  # SRv6 SIDs, reserved
    ],
)
def test_addresses_that_are_not_public_hosts_are_refused(address: str) -> None:
    refusal = destinations(["*"]).check_address(ip(address), 443)
    assert refusal is not None
    assert refusal.key == ALLOW_PRIVATE_KEY


def test_a_public_address_passes() -> None:
    assert destinations(["*"]).check_address(ip("93.184.216.34"), 443) is None
    assert destinations(["*"]).check_address(ip("2606:2800:220:1::1"), 443) is None


def test_the_hosts_own_public_address_is_refused_unless_covered() -> None:
    own = ("93.184.216.34",)
    assert destinations(["*"], own=own).check_address(ip("93.184.216.34"), 443) is not None
    covered = destinations(["*"], ["93.184.216.34/32"], own=own)
    assert covered.check_address(ip("93.184.216.34"), 443) is None


def test_allow_private_opens_exactly_its_cidrs() -> None:
    policy = destinations(["*"], ["10.1.2.0/24", "127.0.0.1/32"])
    assert policy.check_address(ip("10.1.2.200"), 443) is None
    assert policy.check_address(ip("127.0.0.1"), 8080) is None
    assert policy.check_address(ip("::ffff:127.0.0.1"), 8080) is None
    assert policy.check_address(ip("10.1.3.1"), 443) is not None
    assert policy.check_address(ip("127.0.0.2"), 443) is not None
    assert policy.check_address(ip("169.254.169.254"), 80) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "0.0.0.0", "::ffff:127.0.0.1", "10.9.8.7"])
def test_the_services_own_port_is_refused_even_where_allow_private_covers_it(
    address: str,
) -> None:
    everything = ["0.0.0.0/0", "::/0"]
    policy = destinations(["*"], everything, own=("10.9.8.7",), service_ports=(8000,))
    refusal = policy.check_address(ip(address), 8000)
    assert refusal is not None
    assert "the service itself" in refusal.reason
    assert policy.check_address(ip(address), 8001) is None  # its neighbours, as covered


def test_pick_address_takes_the_first_allowed_and_says_why_when_none_is() -> None:
    policy = destinations(["*"])
    chosen, refusal = policy.pick_address([ip("127.0.0.1"), ip("93.184.216.34")], 443)
    assert (chosen, refusal) == (ip("93.184.216.34"), None)
    chosen, refusal = policy.pick_address([ip("127.0.0.1"), ip("10.0.0.1")], 443)
    assert chosen is None
    assert refusal is not None
    assert refusal.key == ALLOW_PRIVATE_KEY


# What must never pass without allow_private, written out rather than asked of
# ipaddress (whose is_global is what the code checks, and is wrong for some of these).
FORBIDDEN_IPV4 = [
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
]  # fmt: skip
FORBIDDEN_IPV6 = [
    ipaddress.ip_network(cidr)
    for cidr in (
        "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
        "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10",
        "ff00::/8",
    )
]  # fmt: skip
# IPv6 forms that carry an IPv4 address, which is then what must not be forbidden.
CARRIERS = [ipaddress.ip_network(c) for c in ("::ffff:0:0/96", "64:ff9b::/96")]


def forbidden(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in FORBIDDEN_IPV6):
            return True
        if any(address in network for network in CARRIERS):
            address = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        elif address.sixtofour is not None:
            address = address.sixtofour
        else:
            return False
    return any(address in network for network in FORBIDDEN_IPV4)


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "::7f00:1", "::ffff:0:a00:1", "fec0::1", "64:ff9b:1::1", "2002:a00::"]
)
def test_the_forbidden_table_says_what_it_should(address: str) -> None:
    assert forbidden(ip(address))
    assert not forbidden(ip("93.184.216.34"))


@given(st.ip_addresses())
def test_no_forbidden_address_is_allowed_unless_covered(address: IPAddress) -> None:
    if destinations(["*"]).check_address(address, 443) is None:
        assert not forbidden(address)
