"""The benchmark's targets (docs/benchmark.md), judged on one run's figures, and their table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    key: str
    text: str
    limit: float
    at_most: bool  # the ratio must be <= limit (else >= limit)
    judged: bool  # False: shown for information, never failed


TARGETS = (
    Target("session_start_vs_20ms", "session start median <= 20 ms", 1.0, True, True),
    Target(
        "session_start_speedup_vs_jupyter",
        "session start >= 40x faster than Jupyter",
        40,
        False,
        True,
    ),
    Target("repl_p50_vs_empty", "/repl round trip p50 <= 1.5x empty endpoint", 1.5, True, True),
    Target("repl_p99_vs_empty", "/repl round trip p99 vs empty endpoint (info)", 1.5, True, False),
    Target(
        "bare_worker_p50_vs_empty",
        "bare worker round trip p50 vs empty endpoint (info: the floor)",
        1.5,
        True,
        False,
    ),
    Target("repl_p50_vs_jupyter", "/repl round trip p50 <= 0.3x Jupyter execute", 0.3, True, True),
    Target("idle_uss_vs_4mb", "idle session <= 4 MB private (USS)", 1.0, True, True),
    Target(
        "idle_uss_vs_jupyter", "idle session USS vs one Jupyter kernel (info)", 1.0, True, False
    ),
    Target(
        "throughput_vs_empty", "throughput, 8 sessions >= 0.6x empty endpoint", 0.6, False, True
    ),
    Target(
        "bare_worker_throughput_vs_empty",
        "throughput, 8 bare workers vs empty endpoint (info: the ceiling)",
        0.6,
        False,
        False,
    ),
    Target("cpu_burn_neighbour_p99", "neighbour p99 beside a CPU burn <= 2x idle", 2.0, True, True),
    Target(
        "fork_bomb_neighbour_p99", "neighbour p99 beside a fork bomb <= 2x idle", 2.0, True, True
    ),
    Target(
        "stream_first_chunk_vs_jupyter",
        "streamed first stdout p50 vs Jupyter's first stream message (info)",
        1.0,
        True,
        False,
    ),
    Target(
        "stream_throughput_vs_jupyter",
        "a big print streamed, MB/s to its end vs Jupyter iopub (info; output cap)",
        1.0,
        False,
        False,
    ),
)
# Every key the JSON's "ratios" holds, for the smoke test and for readers of the JSON.
METRIC_KEYS = tuple(target.key for target in TARGETS)


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for name in path:
        if not isinstance(node, dict) or node.get(name) is None:
            return None
        node = node[name]
    return node


def _measure(results: dict[str, Any], key: str) -> tuple[float | None, str]:
    """(ratio, what was measured) for one target; ratio None when a side was skipped."""
    start = _get(results, "session_start", "codesherpa", "median_ms")
    start_jupyter = _get(results, "session_start", "jupyter", "median_ms")
    trip = _get(results, "round_trip")
    floor = _get(results, "bare_worker_floor")
    uss = _get(results, "idle_memory", "codesherpa", "uss_per_session_mb")
    uss_jupyter = _get(results, "idle_memory", "jupyter", "idle_uss_mb")
    neighbours = _get(results, "neighbours") or {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b in (None, 0) else round(a / b, 3)

    def times(node: Any, side: str, base: str, field: str) -> tuple[float | None, str]:
        a, b = _get(node, side, field), _get(node, base, field)
        return ratio(a, b), f"{a} ms vs {b} ms"

    def rates(side: str) -> tuple[float | None, str]:
        a, b = _get(results, "throughput", side), _get(results, "throughput", "empty_rps")
        return ratio(a, b), f"{a} vs {b} req/s"

    def hostile(phase: str, idle: str) -> tuple[float | None, str]:
        p99 = _get(neighbours, phase, "neighbour", "p99_ms")
        base = _get(neighbours, idle, "p99_ms")
        return ratio(p99, base), f"{p99} ms vs idle {base} ms"

    def first_chunks() -> tuple[float | None, str]:
        a = _get(results, "streaming", "codesherpa", "first_chunk", "p50_ms")
        b = _get(results, "streaming", "jupyter", "first_chunk", "p50_ms")
        return ratio(a, b), f"{a} ms vs {b} ms"

    def streamed_print() -> tuple[float | None, str]:
        streaming = _get(results, "streaming") or {}
        a = _get(streaming, "codesherpa", "throughput")
        b = _get(streaming, "jupyter", "throughput")
        if a is None or b is None:
            return None, "-"
        return ratio(a["mb_per_s"], b["mb_per_s"]), (
            f"{a['mb_per_s']} vs {b['mb_per_s']} MB/s of {streaming['cell_mb']} MB; "
            f"received {a['delivered_bytes'] // 1024} vs {b['delivered_bytes'] // 1024} KiB"
        )

    measures: dict[str, Callable[[], tuple[float | None, str]]] = {
        "session_start_vs_20ms": lambda: (ratio(start, 20.0), f"{start} ms"),
        "session_start_speedup_vs_jupyter": lambda: (
            ratio(start_jupyter, start),
            f"Jupyter {start_jupyter} ms / {start} ms",
        ),
        "repl_p50_vs_empty": lambda: times(trip, "codesherpa", "empty", "p50_ms"),
        "repl_p99_vs_empty": lambda: times(trip, "codesherpa", "empty", "p99_ms"),
        "bare_worker_p50_vs_empty": lambda: times(floor, "bare_worker", "empty", "p50_ms"),
        "repl_p50_vs_jupyter": lambda: times(trip, "codesherpa", "jupyter", "p50_ms"),
        "idle_uss_vs_4mb": lambda: (ratio(uss, 4.0), f"{uss} MB"),
        "idle_uss_vs_jupyter": lambda: (ratio(uss, uss_jupyter), f"{uss} MB vs {uss_jupyter} MB"),
        "throughput_vs_empty": lambda: rates("codesherpa_rps"),
        "bare_worker_throughput_vs_empty": lambda: rates("bare_worker_rps"),
        "cpu_burn_neighbour_p99": lambda: hostile("cpu_burn", "idle_before_cpu_burn"),
        "fork_bomb_neighbour_p99": lambda: hostile("fork_bomb", "idle_before_fork_bomb"),
        "stream_first_chunk_vs_jupyter": first_chunks,
        "stream_throughput_vs_jupyter": streamed_print,
    }
    return measures[key]()


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for target in TARGETS:
        value, measured = _measure(results, target.key)
        passed: bool | None = None
        if value is not None and target.judged:
            passed = value <= target.limit if target.at_most else value >= target.limit
        rows.append(
            {
                "key": target.key,
                "target": target.text,
                "measured": measured,
                "ratio": value,
                "limit": target.limit,
                "at_most": target.at_most,
                "judged": target.judged,
                "pass": passed,
            }
        )
    return rows


def render(results: dict[str, Any]) -> str:
    rows = results["targets"]
    header = ("target", "measured", "ratio", "result")
    lines = [
        (
            row["target"],
            row["measured"],
            "-" if row["ratio"] is None else f"{row['ratio']:g}",
            "skipped"
            if row["ratio"] is None
            else "info"
            if not row["judged"]
            else "PASS"
            if row["pass"]
            else "FAIL",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(3)]
    out = []
    for line in [header, *lines]:
        out.append(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
            + "  "
            + line[3]
        )
        if line is header:
            out.append("  ".join("-" * width for width in widths) + "  ------")
    judged = [row for row in rows if row["judged"] and row["pass"] is not None]
    passed = sum(1 for row in judged if row["pass"])
    meta = results.get("meta", {})
    load = f"{meta.get('load_average_at_start')} -> {meta.get('load_average_at_end')}"
    out.append(
        f"\n{passed}/{len(judged)} targets hold ({meta.get('mode')} run, "
        f"{meta.get('duration_s')} s, load average {load})"
    )
    return "\n".join(out)
