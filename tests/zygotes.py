"""Ending a test's own zygote without leaving anything on the host."""

from __future__ import annotations

import contextlib

from sandbox import ZygoteClient
from sandbox.confine import cgroup


def stop_zygote(client: ZygoteClient) -> None:
    """Stop the zygote, then remove its cgroup parent group.

    The parent is the run's own (named by its state directory), as a service removes
    its own when it stops: left, every test run would add one to the host.
    """
    client.stop()
    with contextlib.suppress(OSError, ValueError):  # no cgroups here (as in containers)
        cgroup.remove_all_sessions(client.cgroup_parent)
