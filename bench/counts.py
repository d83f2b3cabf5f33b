"""How much each measurement samples: a full run, and a quick run that checks it works."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    round_trips: int  # interleaved samples per side
    warmup: int
    jupyter_starts: int
    starts_per_jupyter_start: int  # CodeSherpa session starts between two kernel starts
    idle_sessions: int
    clients: int  # concurrent sessions of the throughput figure
    requests_per_client: int
    throughput_rounds: int  # alternating empty / CodeSherpa rounds
    neighbour_requests: int
    hostile_timeout_s: float
    scaling_max: int
    stream_first_chunks: int  # samples per side
    stream_rounds: int  # alternating runs of the volume cell
    stream_mb: int  # what the volume cell prints


FULL = Counts(
    round_trips=600,
    warmup=30,
    jupyter_starts=5,
    starts_per_jupyter_start=6,
    idle_sessions=50,
    clients=8,
    requests_per_client=100,
    throughput_rounds=3,
    neighbour_requests=800,
    hostile_timeout_s=10.0,
    scaling_max=200,
    stream_first_chunks=30,
    stream_rounds=3,
    stream_mb=20,
)
QUICK = Counts(
    round_trips=20,
    warmup=3,
    jupyter_starts=1,
    starts_per_jupyter_start=2,
    idle_sessions=3,
    clients=8,
    requests_per_client=5,
    throughput_rounds=1,
    neighbour_requests=20,
    hostile_timeout_s=3.0,
    scaling_max=4,
    stream_first_chunks=3,
    stream_rounds=1,
    stream_mb=2,
)
# Between two session starts, as between two users' first requests: the zygote refills
# its warm pool after handing out a worker (bench/confinement_cost.py pauses alike).
PAUSE_BETWEEN_STARTS_S = 0.1
