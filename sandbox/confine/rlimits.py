"""Layer 5: resource limits each process of the session inherits."""

from __future__ import annotations

import resource

from sandbox.confine.base import LayerStatus, WorkerSpec

MB = 1024 * 1024
STACK_BYTES = 16 * MB


def limits_for(spec: WorkerSpec) -> dict[int, int]:
    limits = spec.policy.limits
    return {
        resource.RLIMIT_CPU: limits.cpu_time_s,
        resource.RLIMIT_NOFILE: limits.open_files,
        resource.RLIMIT_FSIZE: limits.file_size_mb * MB,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_STACK: STACK_BYTES,
        # No raising of its own priority, which also keeps a session the core watch made
        # SCHED_IDLE from switching itself back (sched_setscheduler checks this limit).
        resource.RLIMIT_NICE: 0,
        # No real-time policy either (SCHED_FIFO, SCHED_RR), whatever the service inherited.
        resource.RLIMIT_RTPRIO: 0,
        # Counted per uid: it bounds a session only once the session has its own uid.
        resource.RLIMIT_NPROC: limits.processes,
        # Address space is a coarse stand-in for the cgroup's memory limit; it also turns
        # a runaway allocation into a MemoryError the user can read.
        resource.RLIMIT_AS: limits.memory_mb * MB,
    }


def apply(spec: WorkerSpec) -> LayerStatus:
    for kind, value in limits_for(spec).items():
        _soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value))
    return LayerStatus(
        "rlimits", True, "cpu, address space, nproc, nofile, fsize, stack; core, nice and rtprio 0"
    )
