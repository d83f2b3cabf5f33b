"""Prometheus metrics: what ran, what was refused, what was killed, and how long it took."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

RUN_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """One registry per app, so several apps in one process never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "codesherpa_runs",
            "Runs by kind and outcome.",
            ["kind", "status"],
            registry=self.registry,
        )
        self._runs_by_label: dict[tuple[str, str], Counter] = {}
        self._durations_by_kind: dict[str, Histogram] = {}
        self.denials = Counter(
            "codesherpa_denials",
            "Commands refused, by policy rule.",
            ["rule"],
            registry=self.registry,
        )
        self.kills = Counter(
            "codesherpa_kills",
            "Workers killed or lost, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "codesherpa_run_duration_seconds",
            "Wall time of runs.",
            ["kind"],
            buckets=RUN_BUCKETS_S,
            registry=self.registry,
        )
        self.rejections = Counter(
            "codesherpa_rejected_requests",
            "Requests refused by quotas and limits.",
            ["reason"],
            registry=self.registry,
        )
        self.sessions_alive = Gauge(
            "codesherpa_sessions_alive", "Live sessions.", registry=self.registry
        )
        self.warm_pool = Gauge(
            "codesherpa_warm_pool_size",
            "Confined workers ready in the zygote.",
            registry=self.registry,
        )
        self.zygote_restarts = Gauge(
            "codesherpa_zygote_restarts",
            "Times the zygote was restarted.",
            registry=self.registry,
        )

    def record_run(self, kind: str, status: str, seconds: float, kill_reason: str | None) -> None:
        # Looked up once per label set: labels() validates and locks on every call.
        runs = self._runs_by_label.get((kind, status))
        if runs is None:
            runs = self._runs_by_label[kind, status] = self.runs.labels(kind=kind, status=status)
        durations = self._durations_by_kind.get(kind)
        if durations is None:
            durations = self._durations_by_kind[kind] = self.run_seconds.labels(kind=kind)
        runs.inc()
        durations.observe(seconds)
        if status == "killed":
            self.kills.labels(reason=kill_reason or "crash").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
