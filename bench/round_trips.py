"""The trivial round trip: /repl beside the empty endpoint, Jupyter and the bare worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench import jupyter_anchor
from bench.client import FIRST_RESULT, TRIVIAL, BenchError, CodeSherpa, bare_worker, empty_endpoint
from bench.counts import Counts
from bench.stats import summary


def measure_round_trips(
    counts: Counts, cs_url: str, empty_url: str, kernel: jupyter_anchor.Kernel | None
) -> dict[str, Any]:
    """Trivial round trips, one sample of each side per round, in rotating order."""
    codesherpa = CodeSherpa(cs_url)
    empty = empty_endpoint(empty_url)
    session_id = codesherpa.create_session()
    codesherpa.run_ok(session_id, FIRST_RESULT)
    repl = codesherpa.prepared_run(session_id, TRIVIAL)
    samples: dict[str, list[float]] = {"empty": [], "codesherpa": [], "jupyter": []}
    in_service: list[float] = []

    def sample_codesherpa(keep: bool) -> None:
        took, body = codesherpa.timed(repl)
        if keep:
            reply = json.loads(body)
            if reply["status"] != "ok" or reply["result"] != "2":
                raise BenchError(f"1+1 gave {reply}")
            samples["codesherpa"].append(took)
            in_service.append(float(reply["duration_ms"]))

    def sample_empty(keep: bool) -> None:
        took = empty.timed()
        if keep:
            samples["empty"].append(took)

    def sample_jupyter(keep: bool) -> None:
        if kernel is None:
            return
        took = kernel.execute_until_reply(TRIVIAL) * 1000
        if keep:
            samples["jupyter"].append(took)

    sides: list[Callable[[bool], None]] = [sample_empty, sample_codesherpa, sample_jupyter]
    try:
        for index in range(counts.warmup + counts.round_trips):
            keep = index >= counts.warmup
            shift = index % len(sides)
            for side in sides[shift:] + sides[:shift]:
                side(keep)
        codesherpa.delete(session_id)
    finally:
        codesherpa.close()
        empty.close()
    result: dict[str, Any] = {
        "empty": summary(samples["empty"]),
        "codesherpa": summary(samples["codesherpa"]),
        # The part of a /repl round trip spent in Session.run (lock, worker exchange),
        # as the service reports it in duration_ms; the rest is HTTP, routing, replies.
        "codesherpa_in_session_run": summary(in_service),
        "jupyter": summary(samples["jupyter"]) if samples["jupyter"] else None,
    }
    return result


def measure_bare_worker_floor(counts: Counts, empty_url: str) -> dict[str, Any]:
    """The bare worker's round trip beside the empty endpoint's, alternating.

    A rotation of its own, so that adding this anchor leaves the judged round trips as
    they were measured: every side in a rotation runs with caches the others evicted.
    """
    empty = empty_endpoint(empty_url)
    bare = bare_worker(empty_url, 0)
    samples: dict[str, list[float]] = {"empty": [], "bare_worker": []}
    try:
        for index in range(counts.warmup + counts.round_trips):
            order = [("empty", empty), ("bare_worker", bare)]
            for name, anchor in order[index % 2 :] + order[: index % 2]:
                took = anchor.timed()
                if index >= counts.warmup:
                    samples[name].append(took)
    finally:
        empty.close()
        bare.close()
    return {name: summary(taken) for name, taken in samples.items()}
