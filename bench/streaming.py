"""Streaming: a cell's stdout as it runs, over SSE beside a Jupyter kernel's iopub stream.

Two figures, each side by side, the sides alternating:

- first chunk: from sending a cell that prints at once (then keeps printing a moment)
  to the client holding its first stdout (``event: stdout``; Jupyter's first ``stream``
  message);
- throughput: a cell writes ``stream_mb`` MB to stdout in 64 KiB writes; MB/s is the
  cell's output over the time from sending it to the end of its stream (``done``;
  Jupyter's idle status), beside the bytes of stdout the client received.

CodeSherpa's stream carries exactly the reply's text: each stream's head (about half of
``limits.output_chars``) live, then, just before ``done``, what the reply keeps of the
rest (the omission marker and the tail).  No policy lets a client receive 20 MB: two
streams of ``output_chars`` and their framing must fit ``reply_chars``, itself at most
100,000 characters, so ``output_chars`` is at most 49,000.  The run keeps
bench/policy.toml's cap, and the throughput figure is the rate at which the streamed
cell's output is produced and handled up to the end of its stream, with the bytes the
client received (``delivered_bytes``) beside it.  Jupyter delivers every byte.
"""

from __future__ import annotations

import json
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import jupyter_anchor
from bench.client import TRIVIAL, BenchError, CodeSherpa
from bench.counts import Counts
from bench.sse import EventStreamClient
from bench.stats import MB, rounded, summary

WRITE_BYTES = 64 * 1024
# Prints at once, then keeps printing for about 0.2 s: the first chunk must not wait
# for the run's end.
FIRST_CHUNK_CELL = (
    "import time\n"
    "print('started', flush=True)\n"
    "for _ in range(20):\n"
    "    time.sleep(0.01)\n"
    "    print('.', end='', flush=True)\n"
)


def volume_cell(megabytes: int) -> str:
    line = f"'x' * {WRITE_BYTES - 1} + '\\n'"
    writes = megabytes * MB // WRITE_BYTES
    return (
        f"import sys\n_line = {line}\n"
        f"for _ in range({writes}):\n    sys.stdout.write(_line)\n"
        "sys.stdout.flush()\n"
    )


@dataclass(frozen=True)
class StreamedRun:
    """One cell's stdout as a client received it; times in seconds from sending it."""

    first_stdout_s: float | None
    end_s: float  # CodeSherpa's `done`, Jupyter's idle status: the stream's end
    stdout_bytes: int  # as received, UTF-8
    stdout_events: int


def codesherpa_streamed_run(client: EventStreamClient, request: bytes) -> StreamedRun:
    first: float | None = None
    end: float | None = None
    received = events = 0
    started = time.perf_counter()
    for event in client.events(request):
        if event.name == "stdout":
            first = event.at if first is None else first
            received += len(json.loads(event.data)["text"].encode())
            events += 1
        elif event.name == "done":
            reply = json.loads(event.data)
            if reply["status"] != "ok":
                raise BenchError(f"a streamed run ended {reply['status']}: {reply['error']}")
            end = event.at
        elif event.name == "error":
            raise BenchError(f"a streamed run failed: {event.data}")
    if end is None:
        raise BenchError("a streamed run ended without its done event")
    return StreamedRun(_since(started, first), end - started, received, events)


def jupyter_streamed_run(kernel: jupyter_anchor.Kernel, code: str) -> StreamedRun:
    client = kernel.client
    first: float | None = None
    received = events = 0
    started = time.perf_counter()
    msg_id = client.execute(code)
    while True:
        message = client.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "stream" and message["content"]["name"] == "stdout":
            first = time.perf_counter() if first is None else first
            received += len(message["content"]["text"].encode())
            events += 1
        elif kind == "error":
            raise BenchError(f"the kernel failed: {message['content'].get('evalue')}")
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            end = time.perf_counter()
            break
    client.get_shell_msg(timeout=120)
    return StreamedRun(_since(started, first), end - started, received, events)


def _since(started: float, moment: float | None) -> float | None:
    return None if moment is None else moment - started


def first_chunk_ms(run: StreamedRun) -> float:
    if run.first_stdout_s is None:
        raise BenchError("a cell that prints at once streamed no stdout before its end")
    return run.first_stdout_s * 1000


def output_cap_chars(policy: Path) -> int:
    with policy.open("rb") as file:
        return int(tomllib.load(file)["limits"]["output_chars"])


def _throughput(runs: list[StreamedRun], megabytes: int) -> dict[str, Any]:
    return {
        # The cell's output over the time to its stream's end; beside it, what arrived.
        "mb_per_s": rounded(statistics.median(megabytes / run.end_s for run in runs), 1),
        "end_ms": rounded(statistics.median(run.end_s * 1000 for run in runs), 2),
        "delivered_bytes": min(run.stdout_bytes for run in runs),
        "delivered_mb_per_s": rounded(
            statistics.median(run.stdout_bytes / MB / run.end_s for run in runs), 3
        ),
        "runs": [asdict(run) for run in runs],
    }


def measure_streaming(
    counts: Counts, cs_url: str, jupyter_env: dict[str, str] | None, policy: Path
) -> dict[str, Any]:
    """First-chunk latency and throughput of streamed stdout, CodeSherpa and Jupyter in turn."""
    setup = CodeSherpa(cs_url)
    session_id = setup.create_session()
    setup.run_ok(session_id, TRIVIAL)
    stream = EventStreamClient(cs_url)
    first_chunk_request = stream.prepare(
        "/repl", {"code": FIRST_CHUNK_CELL, "session_id": session_id}
    )
    volume = volume_cell(counts.stream_mb)
    volume_request = stream.prepare("/repl", {"code": volume, "session_id": session_id})
    kernel = jupyter_anchor.Kernel(jupyter_env) if jupyter_env is not None else None
    sides: dict[str, dict[str, Callable[[], StreamedRun]]] = {
        "codesherpa": {
            "first_chunk": lambda: codesherpa_streamed_run(stream, first_chunk_request),
            "volume": lambda: codesherpa_streamed_run(stream, volume_request),
        }
    }
    if kernel is not None:
        sides["jupyter"] = {
            "first_chunk": lambda: jupyter_streamed_run(kernel, FIRST_CHUNK_CELL),
            "volume": lambda: jupyter_streamed_run(kernel, volume),
        }
    names = list(sides)
    first_chunk: dict[str, list[float]] = {name: [] for name in names}
    volume_runs: dict[str, list[StreamedRun]] = {name: [] for name in names}
    try:
        for name in names:  # warm-up: each cell once
            sides[name]["first_chunk"]()
            sides[name]["volume"]()
        for index in range(counts.stream_first_chunks):
            for name in names if index % 2 == 0 else names[::-1]:
                first_chunk[name].append(first_chunk_ms(sides[name]["first_chunk"]()))
        for index in range(counts.stream_rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                volume_runs[name].append(sides[name]["volume"]())
        setup.delete(session_id)
    finally:
        if kernel is not None:
            kernel.shutdown()
        stream.close()
        setup.close()
    result: dict[str, Any] = {
        "cell_mb": counts.stream_mb,
        "write_bytes": WRITE_BYTES,
        "output_cap_chars": output_cap_chars(policy),
    }
    for name in ("codesherpa", "jupyter"):
        result[name] = (
            {
                "first_chunk": summary(first_chunk[name]),
                "throughput": _throughput(volume_runs[name], counts.stream_mb),
            }
            if name in sides
            else None
        )
    return result
