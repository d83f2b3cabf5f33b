"""Session start: a new session up to its first pandas result, beside a Jupyter kernel's."""

from __future__ import annotations

import time
from typing import Any

from bench import jupyter_anchor
from bench.client import BenchError, CodeSherpa
from bench.counts import PAUSE_BETWEEN_STARTS_S, Counts
from bench.stats import rounded, summary

JUPYTER_SETTLE_S = 0.5


def measure_starts(
    counts: Counts, cs_url: str, jupyter_env: dict[str, str] | None
) -> dict[str, Any]:
    """New session to the value of the first pandas cell, CodeSherpa and Jupyter interleaved."""
    codesherpa = CodeSherpa(cs_url)
    totals: list[float] = []
    creates: list[float] = []
    kernels: list[float] = []
    try:
        for _ in range(counts.jupyter_starts):
            for _ in range(counts.starts_per_jupyter_start):
                session_id, total, create = codesherpa.start_to_first_result()
                totals.append(total)
                creates.append(create)
                codesherpa.delete(session_id)
                time.sleep(PAUSE_BETWEEN_STARTS_S)
            if jupyter_env is not None:
                started = time.perf_counter()
                kernel = jupyter_anchor.Kernel(jupyter_env)
                try:
                    _, value = kernel.execute_until_result(jupyter_anchor.FIRST_RESULT)
                    kernels.append((time.perf_counter() - started) * 1000)
                    if not value:
                        raise BenchError("the kernel's pandas reported no version")
                finally:
                    kernel.shutdown()
                # A kernel takes a moment to wind down (its process, the client's
                # threads); the next CodeSherpa start should not pay for that.
                time.sleep(JUPYTER_SETTLE_S)
    finally:
        codesherpa.close()
    return {
        "codesherpa": summary(totals),
        "codesherpa_post_sessions": summary(creates),
        "jupyter": summary(kernels) if kernels else None,
        "codesherpa_samples_ms": [rounded(x, 2) for x in totals],
        "jupyter_samples_ms": [rounded(x, 1) for x in kernels],
    }
