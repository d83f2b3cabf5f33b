"""Layer 4: become an unprivileged uid with no capabilities that cannot regain any."""

from __future__ import annotations

import os

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.process import PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, prctl


def apply(spec: WorkerSpec) -> LayerStatus:
    detail = "already unprivileged"
    if spec.uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(spec.uid, spec.uid, spec.uid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
        detail = f"uid and gid {spec.uid}"
    # Not dumpable: other processes of the same uid cannot ptrace or read /proc/<pid>/mem.
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.geteuid() == 0 or os.getuid() == 0:
        return LayerStatus("identity", False, "still root: the service was not started as root")
    return LayerStatus("identity", True, f"{detail}; no capabilities; not dumpable; no-new-privs")
