"""Hostile neighbours: a session's round trips while another runs a CPU burn, then a fork bomb."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.client import CPU_BURN, FIRST_RESULT, FORK_BOMB, TRIVIAL, BenchError, CodeSherpa
from bench.counts import Counts
from bench.stats import processes_by_uid, summary


def _neighbour_samples(client: CodeSherpa, request: bytes, n: int, until: float) -> list[float]:
    samples = []
    for _ in range(n):
        if time.monotonic() > until:
            break
        took, _ = client.timed(request)
        samples.append(took)
    return samples


def _hostile_phase(
    counts: Counts, cs_url: str, neighbour: CodeSherpa, request: bytes, code: str
) -> dict[str, Any]:
    """The neighbour's round trips while another session runs code, until its timeout."""
    hostile = CodeSherpa(cs_url)
    try:
        session_id = hostile.create_session()
        hostile.run_ok(session_id, TRIVIAL)
        uid = hostile.uid(session_id)
        replies: list[dict[str, Any]] = []
        timeout = counts.hostile_timeout_s

        def attack() -> None:
            replies.append(hostile.run(session_id, code, timeout=timeout))

        thread = threading.Thread(target=attack)
        started = time.monotonic()
        thread.start()
        time.sleep(0.5)  # let it take its CPU and its pids
        during = len(processes_by_uid([uid])[uid])
        # Stop before the service's timeout ends the attack: every sample is taken under it.
        samples = _neighbour_samples(
            neighbour, request, counts.neighbour_requests, started + timeout - 0.3
        )
        thread.join(timeout + 30)
        if not replies:
            raise BenchError("the hostile run did not answer")
        reply = replies[0]
        after = len(processes_by_uid([uid])[uid])
        # Read again a moment later: processes a run left behind keep running.
        time.sleep(1.0)
        settled = len(processes_by_uid([uid])[uid])
        # The session's next run: does it answer normally after the attack?
        next_run = hostile.run(session_id, TRIVIAL)
        hostile.delete(session_id)
    finally:
        hostile.close()
    return {
        "neighbour": summary(samples),
        "hostile_status": reply["status"],
        "hostile_error": (reply.get("error") or "")[:200],
        "hostile_restarted": reply.get("restarted"),
        "hostile_processes_during": during,
        "hostile_processes_after_reply": after,
        "hostile_processes_1s_after_reply": settled,
        "hostile_next_run_status": next_run["status"],
    }


def measure_neighbours(counts: Counts, cs_url: str) -> dict[str, Any]:
    neighbour = CodeSherpa(cs_url)
    session_id = neighbour.create_session()
    neighbour.run_ok(session_id, FIRST_RESULT)
    request = neighbour.prepared_run(session_id, TRIVIAL)
    idle_other = CodeSherpa(cs_url)
    try:
        _neighbour_samples(neighbour, request, counts.warmup, float("inf"))
        # The idle baseline: another session exists and does nothing.
        other = idle_other.create_session()
        idle_other.run_ok(other, TRIVIAL)
        idle_before_burn = _neighbour_samples(
            neighbour, request, counts.neighbour_requests, float("inf")
        )
        burn = _hostile_phase(counts, cs_url, neighbour, request, CPU_BURN)
        idle_before_bomb = _neighbour_samples(
            neighbour, request, counts.neighbour_requests, float("inf")
        )
        bomb = _hostile_phase(counts, cs_url, neighbour, request, FORK_BOMB)
        idle_other.delete(other)
        neighbour.delete(session_id)
    finally:
        neighbour.close()
        idle_other.close()
    return {
        "idle_before_cpu_burn": summary(idle_before_burn),
        "cpu_burn": burn,
        "idle_before_fork_bomb": summary(idle_before_bomb),
        "fork_bomb": bomb,
    }
