"""Why a worker ended, told from its exit status: the limit it hit, in a sentence."""

from __future__ import annotations

import signal

from sandbox import protocol
from sandbox.policy import Limits
from sandbox.worker import EXIT_OUT_OF_DESCRIPTORS, EXIT_OUT_OF_PROCESSES
from sandbox.worker_process import describe_returncode

_LIMIT_SIGNALS: dict[signal.Signals, protocol.LimitName] = {
    signal.SIGXCPU: "cpu_time",
    signal.SIGXFSZ: "file_size",
}


def _limit_from_returncode(returncode: int | None) -> protocol.LimitName | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return _LIMIT_SIGNALS.get(signal.Signals(-returncode))
    except ValueError:
        return None


def why_worker_ended(
    returncode: int | None, limits: Limits, hit_memory_limit: bool
) -> tuple[str, protocol.LimitName | None]:
    """The reason a reply gives for a worker that ended with ``returncode``, and its limit."""
    limit = _limit_from_returncode(returncode)
    reason = f"the worker {describe_returncode(returncode)}"
    if returncode == EXIT_OUT_OF_PROCESSES:
        limit = "processes"
        reason = (
            "the worker could not start a thread: the session's processes and threads "
            f"(limit {limits.processes}) were all taken"
        )
    if returncode == EXIT_OUT_OF_DESCRIPTORS:
        limit = "open_files"
        reason = (
            "the worker ran out of file descriptors (open_files limit "
            f"{limits.open_files}); close the files you open"
        )
    if hit_memory_limit:
        limit = "memory"
        reason += f": the session reached its memory limit of {limits.memory_mb} MB"
    return reason, limit
