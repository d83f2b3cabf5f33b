"""Scaling: session start time and per-session memory as live sessions grow."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.client import CodeSherpa
from bench.counts import PAUSE_BETWEEN_STARTS_S, Counts
from bench.log import log
from bench.stats import MB, processes_by_uid, rounded, uss_bytes

SCALING_CHECKPOINTS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 125, 150, 175, 200)


def measure_scaling(counts: Counts, cs_url: str) -> dict[str, Any]:
    """Session start time and per-session USS as live sessions grow to scaling_max."""
    codesherpa = CodeSherpa(cs_url)
    checkpoints = sorted({c for c in SCALING_CHECKPOINTS if c <= counts.scaling_max})
    checkpoints = sorted({*checkpoints, counts.scaling_max})
    sessions: dict[str, int] = {}
    starts: list[dict[str, float]] = []
    memory: list[dict[str, float]] = []
    try:
        while len(sessions) < counts.scaling_max:
            session_id, total, create = codesherpa.start_to_first_result()
            sessions[session_id] = codesherpa.uid(session_id)
            starts.append(
                {
                    "sessions": len(sessions),
                    "start_ms": rounded(total),
                    "create_ms": rounded(create),
                }
            )
            if len(sessions) in checkpoints:
                time.sleep(1.0)
                by_uid = processes_by_uid(sessions.values())
                total_uss = sum(uss_bytes(by_uid[uid]) for uid in sessions.values())
                memory.append(
                    {
                        "sessions": len(sessions),
                        "uss_per_session_mb": rounded(total_uss / len(sessions) / MB, 3),
                        "uss_total_mb": rounded(total_uss / MB, 1),
                    }
                )
                log(
                    f"scaling: {len(sessions)} sessions, {memory[-1]['uss_per_session_mb']} MB each"
                )
            time.sleep(PAUSE_BETWEEN_STARTS_S)
        started = time.perf_counter()
        for session_id in sessions:
            codesherpa.delete(session_id)
        delete_ms = (time.perf_counter() - started) * 1000 / max(1, len(sessions))
    finally:
        codesherpa.close()
    bands = []
    for low, high in zip([0, *checkpoints[:-1]], checkpoints, strict=True):
        band = [s["start_ms"] for s in starts if low < s["sessions"] <= high]
        if band:
            bands.append({"sessions": high, "start_median_ms": rounded(statistics.median(band))})
    return {
        "starts": starts,
        "start_median_by_band": bands,
        "memory": memory,
        "delete_ms_per_session": rounded(delete_ms),
    }


def plot_scaling(scaling: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [s["sessions"] for s in scaling["starts"]]
    left.scatter(xs, [s["start_ms"] for s in scaling["starts"]], s=8, alpha=0.4, label="each start")
    bands = scaling["start_median_by_band"]
    left.plot(
        [b["sessions"] for b in bands],
        [b["start_median_ms"] for b in bands],
        marker="o",
        color="C1",
        label="median per band",
    )
    left.axhline(20, color="C3", linestyle="--", linewidth=1, label="target 20 ms")
    left.set_xlabel("live sessions")
    left.set_ylabel("new session → first pandas result (ms)")
    left.set_title("session start")
    left.legend()
    memory = scaling["memory"]
    right.plot(
        [m["sessions"] for m in memory],
        [m["uss_per_session_mb"] for m in memory],
        marker="o",
        label="USS per session",
    )
    right.axhline(4, color="C3", linestyle="--", linewidth=1, label="target 4 MB")
    right.set_xlabel("live sessions")
    right.set_ylabel("private memory per idle session (MB, USS)")
    right.set_ylim(bottom=0)
    right.set_title("memory per session")
    right.legend()
    figure.suptitle("CodeSherpa scaling (bench/policy.toml, one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
