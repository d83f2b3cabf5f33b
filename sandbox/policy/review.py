"""Warnings: allowed, but a reviewer should know."""

from __future__ import annotations

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
    if policy.isolation.network:
        found.append(PolicyWarning("isolation.network", "sessions may open network sockets."))
    return found
