"""Confinement: the kernel layers that hold a session worker in.

Applied in the worker, before any user code, in this order (SECURITY.md); the
cgroup is made and entered by the intermediate process before the worker starts:

1. process      own session and group, child subreaper, dies with the service
2. namespaces   pid (worker is init), mount, net, ipc, uts
3. cgroup       memory, pids and cpu limits for the whole session
4. identity     unprivileged uid, no capabilities, not dumpable, no-new-privs
5. rlimits      cpu, address space, nproc, nofile, fsize, stack, core 0
6. landlock     read-only system, read-write workspace and tmp, execute allowlist
7. seccomp      Docker's denylist and more, sockets, foreign architectures
8. environment  allowlisted variables, no inherited fds but the channel

A layer the policy requires that fails stops the worker before it serves anything;
a preferred layer that fails is reported in the worker's hello and in /readyz.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sandbox.confine import (
    cgroup,
    environment,
    identity,
    landlock_layer,
    namespaces,
    process,
    rlimits,
    seccomp_layer,
)
from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.errors import ConfinementError

__all__ = [
    "LayerStatus",
    "WorkerSpec",
    "cgroup_for_worker",
    "confine_worker",
    "unshare_for_worker",
]


def unshare_for_worker(spec: WorkerSpec) -> str | None:
    """Run in the intermediate process, before it forks the worker."""
    if "namespaces" not in spec.policy.isolation.wanted():
        return "not wanted by the policy"
    return namespaces.unshare_for_worker()


def _active(report: dict[str, str], layer: str) -> bool:
    return report.get(layer, "").startswith("active")


def cgroup_for_worker(spec: WorkerSpec, pid: int) -> LayerStatus | None:
    """Run in the intermediate process, after it forked the worker and before the worker
    starts: the cgroup layer, applied from outside.

    The worker's own memory stays as the zygote left it: the layer's Python work (mount
    tables, paths, files) copied shared pages when the worker did it itself.
    None when the policy does not want the layer.
    """
    if "cgroup" not in spec.policy.isolation.wanted():
        return None
    try:
        return cgroup.apply(spec, spec.cgroup_parent, pid=pid)
    except OSError as exc:
        return LayerStatus("cgroup", False, str(exc))


def confine_worker(
    spec: WorkerSpec, unshare_error: str | None, cgroup_status: LayerStatus | None
) -> dict[str, str]:
    """Apply every wanted layer in order; return each layer's status line.

    ``cgroup_status`` is what the intermediate process reported for the cgroup layer,
    which it applied before the worker started (see ``cgroup_for_worker``).
    """
    isolation = spec.policy.isolation
    wanted = set(isolation.wanted())

    def cgroup_applied() -> LayerStatus:
        if cgroup_status is None:
            return LayerStatus("cgroup", False, "the intermediate process reported nothing")
        return cgroup_status

    steps: list[tuple[str, Callable[[], LayerStatus]]] = [
        ("process", lambda: process.apply(spec)),
        ("namespaces", lambda: namespaces.apply(spec, unshare_error)),
        ("cgroup", cgroup_applied),
        ("identity", lambda: identity.apply(spec)),
        ("rlimits", lambda: rlimits.apply(spec)),
        ("landlock", lambda: landlock_layer.apply(spec, private_tmp=_active(report, "namespaces"))),
        ("seccomp", lambda: seccomp_layer.apply(spec)),
        ("environment", lambda: environment.apply(spec)),
    ]
    report: dict[str, str] = {}
    for name, step in steps:
        if name not in wanted:
            if name == "namespaces":
                os.chdir(spec.workspace)
            report[name] = "inactive: not wanted by the policy"
            continue
        try:
            status = step()
        except OSError as exc:
            status = LayerStatus(name, False, str(exc))
            if name == "namespaces":
                os.chdir(spec.workspace)
        report[name] = status.describe()
        if not status.active and name in isolation.required:
            raise ConfinementError(
                f"required isolation layer '{name}' is not available: {status.detail}", report
            )
    return report
