"""What every confinement layer shares: the worker it confines and how it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.policy import Policy


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a layer needs to know about the worker it confines."""

    policy: Policy
    workspace: str  # host path of the session's workspace directory
    uid: int | None  # unprivileged uid to become; None when the service is not root
    channel_fd: int  # the only fd that survives confinement
    session_key: str  # names per-session kernel objects (cgroup directories)
    cgroup_parent: str = "codesherpa"  # the group every worker of one service sits under
    executables: tuple[str, ...] = field(default_factory=tuple)  # resolved allowed programs


@dataclass(frozen=True)
class LayerStatus:
    name: str
    active: bool
    detail: str

    def describe(self) -> str:
        return ("active: " if self.active else "inactive: ") + self.detail
