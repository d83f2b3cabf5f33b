"""Layer 4: become an unprivileged uid with no capabilities that cannot regain any."""

from __future__ import annotations

import os
import signal

from sandbox.confine.base import LayerStatus, WorkerSpec
from sandbox.confine.process import (
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    prctl,
)


def apply(spec: WorkerSpec) -> LayerStatus:
    detail = "already unprivileged"
    if spec.uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(spec.uid, spec.uid, spec.uid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
        # A change of uid clears the parent-death signal: arm it again, or a worker
        # would outlive a service that crashed.  (Had the service died in between,
        # the worker finds its channel closed and exits.)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        detail = f"uid and gid {spec.uid}"
    # Not dumpable: other processes of the same uid cannot ptrace or read /proc/<pid>/mem.
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.geteuid() == 0 or os.getuid() == 0:
        return LayerStatus("identity", False, "still root: the service was not started as root")
    return LayerStatus("identity", True, f"{detail}; no capabilities; not dumpable; no-new-privs")
