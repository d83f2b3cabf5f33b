"""Throughput: trivial runs per second of several sessions at once, beside the anchors'."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.client import TRIVIAL, BenchError, CodeSherpa, bare_worker, empty_endpoint
from bench.counts import Counts
from bench.stats import rounded


def _blast(senders: list[Callable[[], object]], per_client: int) -> float:
    """Requests per second with one thread per sender, all released at once."""
    barrier = threading.Barrier(len(senders) + 1)
    failures: list[BaseException] = []

    def loop(send: Callable[[], object]) -> None:
        barrier.wait()
        try:
            for _ in range(per_client):
                send()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=loop, args=(send,)) for send in senders]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{len(failures)} clients failed; first: {failures[0]!r}")
    return len(senders) * per_client / elapsed


def measure_throughput(counts: Counts, cs_url: str, empty_url: str) -> dict[str, Any]:
    """Trivial runs per second, `clients` sessions at once, beside the anchor's routes."""
    setup = CodeSherpa(cs_url)
    session_ids = [setup.create_session() for _ in range(counts.clients)]
    clients = [CodeSherpa(cs_url) for _ in session_ids]
    empties = [empty_endpoint(empty_url) for _ in session_ids]
    bares = [bare_worker(empty_url, index) for index in range(len(session_ids))]
    requests = [c.prepared_run(s, TRIVIAL) for c, s in zip(clients, session_ids, strict=True)]
    for client, session_id in zip(clients, session_ids, strict=True):
        client.run_ok(session_id, TRIVIAL)

    def codesherpa_sender(client: CodeSherpa, request: bytes) -> Callable[[], object]:
        return lambda: client.timed(request)

    senders: dict[str, list[Callable[[], object]]] = {
        "empty": [anchor.timed for anchor in empties],
        "bare_worker": [anchor.timed for anchor in bares],
        "codesherpa": [codesherpa_sender(c, r) for c, r in zip(clients, requests, strict=True)],
    }
    rates: dict[str, list[float]] = {side: [] for side in senders}
    try:
        # A short warm-up of each, then alternating rounds.
        for side in senders.values():
            _blast(side, max(1, counts.requests_per_client // 10))
        for _ in range(counts.throughput_rounds):
            for name, side in senders.items():
                rates[name].append(_blast(side, counts.requests_per_client))
        for session_id in session_ids:
            setup.delete(session_id)
    finally:
        for client in (setup, *clients):
            client.close()
        for anchor in (*empties, *bares):
            anchor.close()
    return {
        "clients": counts.clients,
        "requests_per_round": counts.clients * counts.requests_per_client,
        **{f"{side}_rps": rounded(statistics.median(rates[side]), 1) for side in rates},
        **{f"{side}_rps_rounds": [rounded(r, 1) for r in rates[side]] for side in rates},
    }
