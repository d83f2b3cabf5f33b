"""Idle memory: the private memory (USS) each idle session keeps."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import psutil

from bench.client import CodeSherpa
from bench.counts import PAUSE_BETWEEN_STARTS_S, Counts
from bench.stats import MB, processes_by_uid, rounded, session_uid_processes, uss_bytes


def _zygote_process() -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "sandbox.zygote" in cmdline:
            return process
    return None


def measure_idle_memory(counts: Counts, cs_url: str) -> dict[str, Any]:
    """USS of each idle session's processes, summed and divided by the session count."""
    codesherpa = CodeSherpa(cs_url)
    sessions: dict[str, int] = {}
    try:
        for _ in range(counts.idle_sessions):
            session_id, _, _ = codesherpa.start_to_first_result()
            sessions[session_id] = codesherpa.uid(session_id)
            time.sleep(PAUSE_BETWEEN_STARTS_S)
        time.sleep(2.0)  # idle
        by_uid = processes_by_uid(sessions.values())
        uss = [uss_bytes(by_uid[uid]) for uid in sessions.values()]
        pss = []
        for uid in sessions.values():
            total = 0
            for process in by_uid[uid]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_full_info().pss
            pss.append(total)
        session_uids = set(sessions.values())
        pool = [p for p in session_uid_processes() if p.uids().real not in session_uids]
        zygote = _zygote_process()
        zygote_uss = uss_bytes([zygote]) if zygote else 0
        zygote_rss = zygote.memory_info().rss if zygote else 0
        for session_id in sessions:
            codesherpa.delete(session_id)
    finally:
        codesherpa.close()
    return {
        "sessions": len(sessions),
        "processes_per_session": statistics.mean(len(by_uid[uid]) for uid in sessions.values()),
        "uss_per_session_mb": rounded(sum(uss) / len(uss) / MB, 2),
        "uss_max_mb": rounded(max(uss) / MB, 2),
        "pss_per_session_mb": rounded(sum(pss) / len(pss) / MB, 2),
        "warm_pool_workers": len(pool),
        "zygote_uss_mb": rounded(zygote_uss / MB, 1),
        "zygote_rss_mb": rounded(zygote_rss / MB, 1),
    }
