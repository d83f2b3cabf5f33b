"""CodeSherpa's HTTP routes as the benchmark calls them, over a RawClient."""

from __future__ import annotations

import json
import time
from typing import Any

from bench.rawhttp import RawClient
from bench.stats import uid_from_isolation

FIRST_RESULT = "import pandas as pd; pd.__version__"
TRIVIAL = "1+1"
CPU_BURN = "while True: pass"
FORK_BOMB = "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass"


class BenchError(RuntimeError):
    pass


class CodeSherpa:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = RawClient(url, timeout=120)

    def close(self) -> None:
        self.http.close()

    def create_session(self) -> str:
        status, body = self.http.request("POST", "/sessions")
        if status != 201:
            raise BenchError(f"POST /sessions answered {status}: {body}")
        return str(body["session_id"])

    def run(self, session_id: str, code: str, timeout: float | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"code": code, "session_id": session_id}
        if timeout is not None:
            request["timeout"] = timeout
        status, body = self.http.request("POST", "/repl", request)
        if status != 200:
            raise BenchError(f"POST /repl answered {status}: {body}")
        return dict(body)

    def run_ok(self, session_id: str, code: str) -> dict[str, Any]:
        reply = self.run(session_id, code)
        if reply["status"] != "ok":
            raise BenchError(f"{code!r} did not run: {reply['status']}: {reply['error']}")
        return reply

    def prepared_run(self, session_id: str, code: str) -> bytes:
        return self.http.prepare("POST", "/repl", {"code": code, "session_id": session_id})

    def timed(self, request: bytes) -> tuple[float, bytes]:
        """Send a prepared request; (milliseconds until its reply was read, the body)."""
        started = time.perf_counter()
        status, body = self.http.send(request)
        took = (time.perf_counter() - started) * 1000
        if status != 200:
            raise BenchError(f"a timed request answered {status}: {body[:300]!r}")
        return took, body

    def info(self, session_id: str) -> dict[str, Any]:
        status, body = self.http.request("GET", f"/sessions/{session_id}")
        if status != 200:
            raise BenchError(f"GET /sessions/{session_id} answered {status}: {body}")
        return dict(body)

    def uid(self, session_id: str) -> int:
        uid = uid_from_isolation(self.info(session_id)["isolation"])
        if uid is None:
            raise BenchError("the session reports no uid of its own (is the service root?)")
        return uid

    def delete(self, session_id: str) -> None:
        status, body = self.http.request("DELETE", f"/sessions/{session_id}")
        if status not in (204, 404, 410):
            raise BenchError(f"DELETE /sessions/{session_id} answered {status}: {body}")

    def start_to_first_result(self) -> tuple[str, float, float]:
        """A new session up to the value of FIRST_RESULT: (id, total ms, POST /sessions ms)."""
        started = time.perf_counter()
        session_id = self.create_session()
        created = time.perf_counter()
        reply = self.run_ok(session_id, FIRST_RESULT)
        finished = time.perf_counter()
        if not reply["result"]:
            raise BenchError("pandas did not report a version")
        return session_id, (finished - started) * 1000, (created - started) * 1000


class Anchor:
    """One route of the anchor server (bench/anchor_app.py), called with /repl's body."""

    def __init__(self, url: str, path: str) -> None:
        self.path = path
        self.http = RawClient(url, timeout=60)
        # The same body a /repl call sends, so every side reads the same bytes.
        self.request = self.http.prepare("POST", path, {"code": TRIVIAL, "session_id": "x" * 32})

    def close(self) -> None:
        self.http.close()

    def timed(self) -> float:
        started = time.perf_counter()
        status, _ = self.http.send(self.request)
        took = (time.perf_counter() - started) * 1000
        if status != 200:
            raise BenchError(f"POST {self.path} answered {status}")
        return took


def empty_endpoint(url: str) -> Anchor:
    return Anchor(url, "/echo")


def bare_worker(url: str, worker: int) -> Anchor:
    """A bench/bare_worker.py worker, checked once to answer as a /repl would."""
    anchor = Anchor(url, f"/bare/{worker}")
    status, body = anchor.http.send(anchor.request)
    if status != 200 or json.loads(body)["result"] != "2":
        anchor.close()
        raise BenchError(f"the bare worker answered {status}: {body[:300]!r}")
    return anchor
