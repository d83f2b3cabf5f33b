"""Small statistics and memory helpers shared by the measurements."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence

import psutil

SESSION_UID_FIRST = 200_000  # sandbox.uids.UID_RANGE_START
SESSION_UID_LAST = 265_535  # UID_RANGE_START + UID_RANGE_SIZE - 1
_UID_IN_ISOLATION = re.compile(r"uid and gid (\d+)")


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "median_ms": round(statistics.median(samples_ms), 3),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "min_ms": round(min(samples_ms), 3),
        "max_ms": round(max(samples_ms), 3),
    }


def uid_from_isolation(isolation: dict[str, str]) -> int | None:
    """The session's uid from GET /sessions/{id}: its identity layer reads 'uid and gid N'."""
    match = _UID_IN_ISOLATION.search(isolation.get("identity", ""))
    return int(match.group(1)) if match else None


def processes_by_uid(uids: Iterable[int]) -> dict[int, list[psutil.Process]]:
    wanted = set(uids)
    found: dict[int, list[psutil.Process]] = {uid: [] for uid in wanted}
    for process in psutil.process_iter(["uids"]):
        try:
            real = process.info["uids"].real
        except (psutil.Error, AttributeError):
            continue
        if real in wanted:
            found[real].append(process)
    return found


def session_uid_processes() -> list[psutil.Process]:
    """Every process whose real uid is in the session range (workers, warm pool included)."""
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            real = process.info["uids"].real
        except (psutil.Error, AttributeError):
            continue
        if SESSION_UID_FIRST <= real <= SESSION_UID_LAST:
            found.append(process)
    return found


def uss_bytes(processes: Iterable[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().uss
        except psutil.Error:
            continue
    return total


def tree_uss_bytes(pid: int) -> int:
    """USS of a process and its descendants (a Jupyter kernel is one process, usually)."""
    root = psutil.Process(pid)
    return uss_bytes([root, *root.children(recursive=True)])


MB = 2**20


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)
