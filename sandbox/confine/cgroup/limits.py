"""What a session group is given, and what is read back from it: one table per version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sandbox.confine.cgroup.files import keyed
from sandbox.policy import Policy

# Every session weighs the same as any other group beside it.  These are the kernels'
# defaults, written anyway so a session never inherits another figure.
V1_CPU_SHARES = 1024
V2_CPU_WEIGHT = 100
# At most one full CPU per session: on a two-core host a CPU burner still leaves a core to
# its neighbours.  None keeps only the equal weight, letting a lone session use every core.
CPU_QUOTA_CPUS: float | None = 1.0
# A short period: a throttled burner runs in 10 ms slices rather than 100 ms ones, so a
# neighbour waits less for the CPU (the benchmark's neighbour p99 improved beside both a
# CPU burn and a fork bomb; the share over time is the same).
CPU_PERIOD_US = 10_000

MB = 1024 * 1024


@dataclass(frozen=True)
class SessionLimits:
    memory_bytes: int
    processes: int  # processes and threads, as the pids controller counts them

    @classmethod
    def from_policy(cls, policy: Policy) -> SessionLimits:
        return cls(policy.limits.memory_mb * MB, policy.limits.processes)


class Need(Enum):
    """What a missing or refused control file means for the layer."""

    REQUIRED = "required"  # missing or refused: the session would be unbounded; fail
    IF_PRESENT = "if present"  # missing: the kernel lacks the feature; refused: fail
    BEST_EFFORT = "best effort"  # missing or refused: skip it and say so


@dataclass(frozen=True)
class Setting:
    """One control file written into a new session group."""

    controller: str  # the controller (for v1, its tree) that owns the file
    filename: str
    value: Callable[[SessionLimits], str | None]  # None: keep the kernel's value
    need: Need


@dataclass(frozen=True)
class Reading:
    """One figure usage() reports, and the file it comes from."""

    controller: str
    filename: str
    key: str
    parse: Callable[[str], int | None]


def _memory(limits: SessionLimits) -> str:
    return str(limits.memory_bytes)


def _processes(limits: SessionLimits) -> str:
    return str(limits.processes)


def _quota_us() -> int | None:
    return None if CPU_QUOTA_CPUS is None else round(CPU_QUOTA_CPUS * CPU_PERIOD_US)


def _v1_period(_: SessionLimits) -> str | None:
    return None if _quota_us() is None else str(CPU_PERIOD_US)


def _v1_quota(_: SessionLimits) -> str | None:
    quota = _quota_us()
    return None if quota is None else str(quota)


def _v2_max(_: SessionLimits) -> str | None:
    quota = _quota_us()
    return None if quota is None else f"{quota} {CPU_PERIOD_US}"


def _usec_as_ns(text: str) -> int | None:
    usec = keyed("usage_usec")(text)
    return None if usec is None else usec * 1000


def _constant(value: str) -> Callable[[SessionLimits], str]:
    return lambda _: value


# Order matters: a limit before the memory+swap limit that may not be below it; the cfs
# period before the quota measured against it.
V1_SETTINGS = (
    Setting("memory", "memory.limit_in_bytes", _memory, Need.REQUIRED),
    # memory+swap capped at the same figure, so swapping is no way round the limit.  The
    # file exists only when the kernel accounts swap.
    Setting("memory", "memory.memsw.limit_in_bytes", _memory, Need.IF_PRESENT),
    Setting("pids", "pids.max", _processes, Need.REQUIRED),
    Setting("cpu", "cpu.shares", _constant(str(V1_CPU_SHARES)), Need.BEST_EFFORT),
    # v1 refuses a quota above the parent's; the parent's smaller quota then rules anyway.
    Setting("cpu", "cpu.cfs_period_us", _v1_period, Need.BEST_EFFORT),
    Setting("cpu", "cpu.cfs_quota_us", _v1_quota, Need.BEST_EFFORT),
)
V2_SETTINGS = (
    Setting("memory", "memory.max", _memory, Need.REQUIRED),
    # Absent when the kernel does not account swap.
    Setting("memory", "memory.swap.max", _constant("0"), Need.IF_PRESENT),
    Setting("pids", "pids.max", _processes, Need.REQUIRED),
    # Absent when the tree does not offer the cpu controller.
    Setting("cpu", "cpu.weight", _constant(str(V2_CPU_WEIGHT)), Need.BEST_EFFORT),
    Setting("cpu", "cpu.max", _v2_max, Need.BEST_EFFORT),
)
V1_READINGS = (
    Reading("memory", "memory.usage_in_bytes", "memory_bytes", int),
    Reading("memory", "memory.max_usage_in_bytes", "memory_peak_bytes", int),
    Reading("pids", "pids.current", "pids", int),
    Reading("cpuacct", "cpuacct.usage", "cpu_ns", int),
)
V2_READINGS = (
    Reading("memory", "memory.current", "memory_bytes", int),
    Reading("memory", "memory.peak", "memory_peak_bytes", int),
    Reading("pids", "pids.current", "pids", int),
    Reading("cpu", "cpu.stat", "cpu_ns", _usec_as_ns),
)
