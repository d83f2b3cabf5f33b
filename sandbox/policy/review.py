"""Warnings: allowed, but a reviewer should know."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sandbox.launchers import SHELL, Reach, launcher_exposures, launcher_for
from sandbox.policy.sections import Policy
from sandbox.policy.tables import ALL_LAYERS


@dataclass(frozen=True)
class PolicyWarning:
    key: str
    message: str


def policy_warnings(policy: Policy) -> list[PolicyWarning]:
    """What a valid policy grants that a reviewer should read twice."""
    found = []
    shells_allowed = any(launcher_for(p) is SHELL for p in policy.commands.allow)
    landlock_required = "landlock" in policy.isolation.required
    for exposure in launcher_exposures(policy.commands):
        program, launcher = exposure.program, exposure.launcher
        message = f"{program!r} is a launcher: {exposure.describe()}."
        if launcher.reach is Reach.THROUGH_SHELL:
            if shells_allowed:
                message += " A shell is allowed here, so this runs any command line."
            elif landlock_required:
                message += " Inert while no shell is allowed: Landlock refuses to execute one."
            else:
                message += " Inert only where Landlock runs, and this policy does not require it."
        found.append(PolicyWarning("commands.allow", message))
    unused = [layer for layer in ALL_LAYERS if layer not in policy.isolation.wanted()]
    if unused:
        found.append(
            PolicyWarning(
                "isolation",
                f"layers neither required nor preferred are never applied: {', '.join(unused)}.",
            )
        )
    found += _network_warnings(policy)
    return found


_METADATA = ipaddress.ip_address("169.254.169.254")
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def _network_warnings(policy: Policy) -> list[PolicyWarning]:
    network = policy.network
    if not network.enabled:
        return []
    hosts = ", ".join(network.allow) or "nothing"
    found = [PolicyWarning("network.mode", f"sessions reach {hosts} through the egress proxy.")]
    if any(entry.split(":")[0] == "*" for entry in network.allow):
        found.append(
            PolicyWarning(
                "network.allow",
                f"'*': every public host ({network.allow_all_reason.strip()}).",
            )
        )
    for cidr in network.allow_private:
        covered = ipaddress.ip_network(cidr)
        if _METADATA in covered:
            found.append(
                PolicyWarning("network.allow_private", f"{cidr} covers the cloud metadata address.")
            )
        if any(address in covered for address in _LOOPBACK):
            found.append(
                PolicyWarning(
                    "network.allow_private",
                    f"{cidr} covers loopback: every service on the host's loopback is reachable "
                    "but the service's own port, which the proxy always refuses.",
                )
            )
    return found


def service_address_refusals(policy: Policy, listen_host: str) -> list[PolicyWarning]:
    """What ``policy check`` refuses for a service listening on ``listen_host``: an
    ``allow_private`` that covers the service's own address (all of loopback, for a
    service listening on every address)."""
    try:
        listen = ipaddress.ip_address(listen_host)
    except ValueError:
        return []
    own = list(_LOOPBACK) if listen.is_unspecified else [listen]
    return [
        PolicyWarning(
            "network.allow_private",
            f"{cidr} covers {address}, where the service listens ({listen_host}): sessions "
            "would reach the service's neighbours there, and only the proxy's refusal of its "
            "port would keep them from the service itself. Narrow it, or check with --listen.",
        )
        for cidr in policy.network.allow_private
        if policy.network.enabled
        for address in own
        if address in ipaddress.ip_network(cidr)
    ]
