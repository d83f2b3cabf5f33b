"""The ``[network]`` section: no network, or egress through the service's proxy only.

Kept apart from the other sections because its entries have a grammar of their own
(host patterns with ports, CIDRs) that the proxy matches with the same code
(``sandbox.egress.destinations``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox.policy.checks import Check, enforce

if TYPE_CHECKING:
    from sandbox.policy.sections import Policy

# Ports a destination named without one may use: plain HTTP and HTTPS.
DEFAULT_PORTS = (80, 443)


def split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 literal, as (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("text after ']' must be ':port'")
        port_text = rest[1:] if rest else None
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    else:
        host, port_text = entry, None
    if port_text is None:
        return host.lower(), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host.lower(), int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def entry_problem(entry: str) -> str | None:
    """Why an ``allow`` entry is not a host, ``*.domain`` pattern or IP literal (± port)."""
    try:
        host, _port = split_entry(entry)
    except ValueError as exc:
        return f"{entry!r}: {exc}"
    if host == "*" or _is_ip(host):
        return None
    name = host.removeprefix("*.")
    if "*" in name:
        return f"{entry!r}: a wildcard is allowed only as a whole first label ('*.example.org')"
    labels = name.split(".")
    if not name or set(name) - _HOST_CHARACTERS or any(not label for label in labels):
        return f"{entry!r} is not a host name"
    return None


def _bad_entries(network: Network) -> Iterator[str]:
    for entry in network.allow:
        problem = entry_problem(entry)
        if problem is not None:
            yield problem


def _bad_networks(network: Network) -> Iterator[str]:
    for cidr in network.allow_private:
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            yield f"{cidr!r} is not a CIDR ({exc})"


def _allow_all_without_reason(network: Network) -> Iterator[str]:
    valid = [entry for entry in network.allow if not entry_problem(entry)]
    if (
        any(split_entry(entry)[0] == "*" for entry in valid)
        and not network.allow_all_reason.strip()
    ):
        yield "'*' allows every public host"


NETWORK_CHECKS: tuple[Check[Network], ...] = (
    Check(
        "allow",
        "allow entries are host names, '*.example.org' patterns or IP literals, each with "
        "an optional ':port' (default ports 80 and 443).",
        _bad_entries,
    ),
    Check(
        "allow_private",
        "allow_private entries are CIDRs such as '10.1.2.0/24' or '127.0.0.1/32'.",
        _bad_networks,
    ),
    Check(
        "allow",
        "allow = ['*'] needs allow_all_reason: say why sessions may reach any public host.",
        _allow_all_without_reason,
    ),
)


class Network(BaseModel):
    """Whether sessions reach the network, and then which hosts, through the egress proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: Literal["off", "allowlist"] = Field(
        "off",
        description=(
            '"off": no socket but AF_UNIX, a network namespace with loopback down. '
            '"allowlist": still no route out; the only way out is the service\'s egress '
            "proxy (HTTP_PROXY and HTTPS_PROXY are set in the session), which reaches "
            "only what `allow` names."
        ),
        json_schema_extra={"tighter": "off"},
    )
    allow: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts the proxy may reach: names, '*.example.org' patterns or IP literals, "
            "each with an optional ':port' (default ports 80 and 443). A destination is "
            "matched as the client named it: an IP literal passes only if listed, never "
            "because a listed name resolves to it."
        ),
        json_schema_extra={"tighter": "fewer"},
    )
    allow_private: list[str] = Field(
        default_factory=list,
        description=(
            "CIDRs the proxy may reach although loopback, private, link-local or the "
            "host's own; by default none. The service's own port is refused even here."
        ),
        json_schema_extra={"tighter": "fewer"},
    )
    allow_all_reason: str = Field(
        "",
        description="Why `allow` holds '*' (every public host); required with it.",
    )
    max_connections: int = Field(
        256,
        gt=0,
        description="Connections through the proxy one session may open in its life.",
        json_schema_extra={"unit": "connections", "tighter": "lower"},
    )
    max_open_connections: int = Field(
        16,
        gt=0,
        description="Connections through the proxy one session may hold open at once.",
        json_schema_extra={"unit": "connections", "tighter": "lower"},
    )
    max_mb: int = Field(
        1024,
        gt=0,
        description="Bytes, both ways together, one session may move through the proxy.",
        json_schema_extra={"tighter": "lower"},
    )
    idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A proxied connection with no bytes either way this long is closed.",
        json_schema_extra={"tighter": "lower"},
    )

    @model_validator(mode="after")
    def _coherent(self) -> Network:
        enforce(self, NETWORK_CHECKS)
        return self

    @property
    def enabled(self) -> bool:
        return self.mode == "allowlist"


def _allowlist_without_namespace(policy: Policy) -> Iterator[str]:
    if policy.network.enabled and "namespaces" not in policy.isolation.required:
        yield "namespaces is not in isolation.required"


NETWORK_POLICY_CHECKS: tuple[Check[Policy], ...] = (
    Check(
        "network.mode",
        'network.mode = "allowlist" needs "namespaces" in isolation.required: a session '
        "without its own network namespace is on the host's network, and the proxy "
        "filters nothing.",
        _allowlist_without_namespace,
    ),
)
