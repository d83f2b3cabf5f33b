"""Which destinations a policy allows: first by the name the client gave, then by the
address the proxy resolved it to and will connect to.

Two questions, asked in this order, each answered with the policy key that refused:

* ``network.allow``: is ``host:port``, as the client named it, listed?  An IP literal
  passes only if that literal is listed; ``*`` and ``*.example.org`` match names only.
  An IPv4 address in a form other than a.b.c.d (``16909060``, ``0177.0.0.1``), which
  the resolver would turn into an address without asking DNS, never passes.
* ``network.allow_private``: is the address the proxy resolved one it may reach?
  Loopback, private, link-local (169.254.169.254 and the other metadata addresses),
  shared, reserved, multicast, unspecified and the host's own addresses are refused
  unless a CIDR of ``allow_private`` covers them.  The service's own port on loopback,
  on the host's addresses or on the address it listens on is refused even then.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from sandbox.policy.network import DEFAULT_PORTS, Network, split_entry

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_KEY = "network.allow"
ALLOW_PRIVATE_KEY = "network.allow_private"


@dataclass(frozen=True)
class Refusal:
    key: str  # the policy key that refused, named in the 403 and the audit line
    reason: str


@dataclass(frozen=True)
class HostRule:
    host: str  # a lower-case name, "*", "*.domain", or a normalised IP literal
    ports: tuple[int, ...]

    def matches(self, host: str, port: int, host_is_ip: bool) -> bool:
        if port not in self.ports:
            return False
        if host_is_ip:
            return host == self.host
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated; :: and ::1 aside
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT
# Not host addresses to reach, though ipaddress (3.11) calls them global: the forms
# above, site-local, local-use NAT64 (which the proxy cannot unwrap), documentation and
# SRv6 SIDs; and all of the IETF's 192.0.0.0/24 (3.11 misses 192.0.0.8 and others).
# Refused unless allow_private covers them, as is anything is_reserved.
_NOT_HOSTS = (
    ipaddress.ip_network("192.0.0.0/24"),
    _IPV4_COMPATIBLE,
    _IPV4_TRANSLATED,
    ipaddress.ip_network("fec0::/10"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("3fff::/20"),
    ipaddress.ip_network("5f00::/16"),
)


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, compatible, translated, 6to4,
    NAT64), which is where a connection to it ends up; else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        compatible = address in _IPV4_COMPATIBLE and int(address) > 1
        if compatible or address in _IPV4_TRANSLATED or address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address


def ip_literal(host: str) -> IPAddress | None:
    """The address a host names as an IP literal (brackets and a final dot aside)."""
    try:
        return ipaddress.ip_address(host.strip("[]").rstrip("."))
    except ValueError:
        return None


def normalise_host(host: str) -> tuple[str, bool]:
    """The host as rules compare it, and whether it is an IP literal."""
    address = ip_literal(host)
    if address is not None:
        return str(unwrap(address)), True
    return host.strip("[]").lower().rstrip("."), False


_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


def is_numeric_form(host: str) -> bool:
    """Whether a host that is not an IP literal to ``ipaddress`` is one to the resolver
    (``16909060``, ``0x7f.1``, ``0177.0.0.1``, ``1.2.3``: inet_aton's forms), or
    ends in a numeric label, which no name does."""
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):
        return _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]) is not None
    return True


def _rule(entry: str) -> HostRule:
    host, port = split_entry(entry)
    ports = (port,) if port is not None else DEFAULT_PORTS
    normalised, _is_ip = normalise_host(host) if host != "*" else (host, False)
    return HostRule(normalised, ports)


class DestinationPolicy:
    """The ``[network]`` section compiled for the proxy, with what it learnt of the host."""

    def __init__(
        self,
        network: Network,
        own_addresses: Iterable[IPAddress] = (),
        service_ports: Iterable[int] = (),
    ) -> None:
        self.rules = tuple(_rule(entry) for entry in network.allow)
        self.private = tuple(ipaddress.ip_network(cidr) for cidr in network.allow_private)
        self.own_addresses = frozenset(own_addresses)
        self.service_ports = frozenset(service_ports)

    def check_name(self, host: str, port: int) -> Refusal | None:
        """``network.allow``: the destination as the client named it."""
        normalised, is_ip = normalise_host(host)
        if not is_ip and is_numeric_form(normalised):
            return Refusal(
                ALLOW_KEY,
                f"{host} is an IPv4 address in a form other than a.b.c.d; network.allow "
                "matches IP literals only as listed, in that form",
            )
        if any(rule.matches(normalised, port, is_ip) for rule in self.rules):
            return None
        return Refusal(ALLOW_KEY, f"{host}:{port} is not in network.allow")

    def _is_service(self, address: IPAddress, port: int) -> bool:
        local = address.is_loopback or address.is_unspecified or address in self.own_addresses
        return port in self.service_ports and local

    def check_address(self, address: IPAddress, port: int) -> Refusal | None:
        """``network.allow_private``: the address the proxy would connect to."""
        given, address = address, unwrap(address)
        if self._is_service(address, port):
            return Refusal(ALLOW_PRIVATE_KEY, f"{address}:{port} is the service itself")
        if any(address in network or given in network for network in self.private):
            return None
        if address.is_multicast or address.is_unspecified:
            return Refusal(ALLOW_PRIVATE_KEY, f"{address} is not a host address")
        if address.is_reserved or any(
            given in network or address in network for network in _NOT_HOSTS
        ):
            return Refusal(
                ALLOW_PRIVATE_KEY,
                f"{given} is a reserved or deprecated address, and network.allow_private "
                "does not cover it",
            )
        if not address.is_global or address in self.own_addresses:
            return Refusal(
                ALLOW_PRIVATE_KEY,
                f"{address} is a loopback, private, link-local or own address, and "
                "network.allow_private does not cover it",
            )
        return None

    def pick_address(
        self, addresses: Iterable[IPAddress], port: int
    ) -> tuple[IPAddress | None, Refusal | None]:
        """The first resolved address the policy allows, or the first refusal."""
        first_refusal: Refusal | None = None
        for address in addresses:
            refusal = self.check_address(address, port)
            if refusal is None:
                return address, None
            first_refusal = first_refusal or refusal
        return None, first_refusal or Refusal("destination", "the name has no address")
