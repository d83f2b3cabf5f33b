"""POST /repl and /command as Server-Sent Events (spec: "Streaming"), on a real server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest

from service.schemas import CommandResponse, ReplResponse
from tests.api.server import Server, start_server, stop_server

SSE = {"Accept": "text/event-stream"}
HEARTBEAT_S = 1
# Runs past their caller end within this (spec); the test policy's grace is 1 s.
ABANDONED_RUN_ENDS_S = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("streaming"),
        env={
            "CODESHERPA_SSE_HEARTBEAT_S": str(HEARTBEAT_S),
            # One run at a time: a run its client left must hand its slot back.
            "CODESHERPA_RUNS_AT_ONCE_PER_TENANT": "1",
        },
    )
    yield running
    stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@dataclass
class Event:
    name: str
    data: str
    at: float  # when it arrived (time.monotonic)

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Stream:
    """What a client read of one event stream, as it read it."""

    events: list[Event] = field(default_factory=list)
    comments: list[tuple[str, float]] = field(default_factory=list)


def read_events(lines: Iterator[str]) -> Iterator[Event | tuple[str, float]]:
    """Events and comments as an SSE client parses them (the WHATWG rules we use)."""
    name, data = "message", []
    for line in lines:
        now = time.monotonic()
        if line.startswith(":"):
            yield (line[1:].strip(), now)
        elif line == "":
            if data:
                yield Event(name, "\n".join(data), now)
            name, data = "message", []
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> Stream:
    """Read a whole event stream."""
    read = Stream()
    with client.stream("POST", path, json=body, headers=SSE) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for item in read_events(response.iter_lines()):
            if isinstance(item, Event):
                read.events.append(item)
            else:
                read.comments.append(item)
    return read


@pytest.fixture
def new_session(client: httpx.Client) -> Iterator[Callable[[], str]]:
    """Make sessions for one test, ended after it (a tenant may hold only a few)."""
    made: list[str] = []

    def make() -> str:
        session_id: str = client.post("/sessions").json()["session_id"]
        made.append(session_id)
        return session_id

    yield make
    for session_id in made:
        client.delete(f"/sessions/{session_id}")


def session_status(client: httpx.Client, session_id: str) -> dict[str, Any]:
    status: dict[str, Any] = client.get(f"/sessions/{session_id}").json()
    return status


def comparable(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without what differs between two runs of the same code in two sessions."""
    return {k: v for k, v in reply.items() if k not in ("duration_ms", "session_id")}


def test_done_carries_exactly_the_reply_the_plain_request_gets(
    client: httpx.Client, new_session: Callable[[], str]
) -> None:
    code = "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nx = 6 * 7\nx"
    streamed_in, plain_in = new_session(), new_session()
    read = stream(client, "/repl", {"code": code, "session_id": streamed_in})
    plain = client.post("/repl", json={"code": code, "session_id": plain_in})

    done = read.events[-1]
    assert done.name == "done"
    assert [event.name for event in read.events].count("done") == 1
    # Exactly a reply body: the model's own JSON, byte for byte.
    assert ReplResponse.model_validate_json(done.data).model_dump_json() == done.data
    assert done.json()["session_id"] == streamed_in
    assert comparable(done.json()) == comparable(plain.json())
    assert done.json()["result"].startswith("to stdout")


def test_a_command_streams_and_ends_with_its_reply(
    client: httpx.Client, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    read = stream(client, "/command", {"command": "seq 3", "session_id": session_id})
    plain = client.post("/command", json={"command": "seq 3", "session_id": session_id})

    done = read.events[-1]
    assert done.name == "done"
    assert CommandResponse.model_validate_json(done.data).model_dump_json() == done.data
    assert comparable(done.json()) == comparable(plain.json())
    assert done.json()["result"] == "1\n2\n3\n"


def test_a_denied_command_streams_its_denial_as_done(client: httpx.Client) -> None:
    read = stream(client, "/command", {"command": "rm -rf /"})
    assert [event.name for event in read.events] == ["done"]
    assert read.events[0].json()["status"] == "denied"


def test_an_idle_stream_gets_a_comment_line_at_each_heartbeat(client: httpx.Client) -> None:
    read = stream(client, "/repl", {"code": "import time\ntime.sleep(3.5)", "timeout": 10})

    assert read.events[-1].name == "done"
    keepalives = [at for text, at in read.comments if text == "keepalive"]
    assert len(keepalives) >= 2
    # While the run went, before its reply.
    assert keepalives[-1] < read.events[-1].at


def test_the_fast_path_leaves_a_stream_to_the_routes(server: Server) -> None:
    # A body the fast path would serve itself (valid JSON, declared length, no other hint).
    body = json.dumps({"code": "1 + 1"}).encode()
    headers = {**SSE, "Content-Type": "application/json", "Content-Length": str(len(body))}
    with server.client() as client:
        response = client.post("/repl", content=body, headers=headers)

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    events = [
        item for item in read_events(iter(response.text.splitlines())) if isinstance(item, Event)
    ]
    assert events[-1].name == "done"
    assert events[-1].json()["result"] == "2"


def test_an_unknown_session_is_a_plain_json_404(client: httpx.Client) -> None:
    response = client.post(
        "/repl", json={"code": "1", "session_id": "no-such-session"}, headers=SSE
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "session_not_found"


def test_a_refused_run_is_a_plain_json_429_before_any_stream(
    client: httpx.Client, server: Server, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    long_run = {"code": "import time\ntime.sleep(3)", "session_id": session_id, "timeout": 10}

    def run_long() -> None:
        with server.client() as own:
            own.post("/repl", json=long_run)

    runner = threading.Thread(target=run_long)
    runner.start()
    try:
        while not session_status(client, session_id)["busy"]:
            time.sleep(0.05)
        response = client.post("/repl", json={"code": "1", "session_id": session_id}, headers=SSE)
    finally:
        runner.join()
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] in ("session_busy", "quota_exceeded")


def _hang_up_during(client: httpx.Client, body: dict[str, Any]) -> float:
    """Start a stream, read until its first heartbeat (the run goes), then hang up; when."""
    with client.stream("POST", "/repl", json=body, headers=SSE) as response:
        for line in response.iter_lines():
            if line.startswith(":"):
                break
    return time.monotonic()


def _ends_within(client: httpx.Client, session_id: str, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while session_status(client, session_id)["busy"]:
        assert time.monotonic() < deadline, "the run went on after its client left"
        time.sleep(0.05)
    return time.monotonic()


def test_a_client_that_hangs_up_interrupts_its_run(
    server: Server, client: httpx.Client, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    client.post("/repl", json={"code": "kept = 'yes'", "session_id": session_id})
    body = {"code": "import time\ntime.sleep(60)", "session_id": session_id, "timeout": 10}
    with server.client() as own:
        _hang_up_during(own, body)
    _ends_within(client, session_id, ABANDONED_RUN_ENDS_S)

    # Interrupted, not killed: the namespace is kept, and the tenant's one run slot is back.
    after = client.post("/repl", json={"code": "kept", "session_id": session_id}).json()
    assert after["result"] == "'yes'"
    assert after["restarted"] is False


def test_a_client_that_hangs_up_gets_a_stubborn_run_killed(
    server: Server, client: httpx.Client, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    stubborn = (
        "import time\nwhile True:\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        pass"
    )
    body = {"code": stubborn, "session_id": session_id, "timeout": 10}
    with server.client() as own:
        left = _hang_up_during(own, body)
    ended = _ends_within(client, session_id, ABANDONED_RUN_ENDS_S)

    assert ended - left < ABANDONED_RUN_ENDS_S
    after = client.post("/repl", json={"code": "1 + 1", "session_id": session_id}).json()
    assert after["result"] == "2"
    assert after["restarted"] is True


def test_output_arrives_while_the_run_still_goes(
    server: Server, client: httpx.Client, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    code = (
        "import sys, time\nprint('first', flush=True)\nprint('oops', file=sys.stderr, flush=True)"
        "\ntime.sleep(2)\nprint('second')"
    )
    body = {"code": code, "session_id": session_id, "timeout": 10}
    events: list[Event] = []
    busy_at_first_output = None
    with server.client() as own, own.stream("POST", "/repl", json=body, headers=SSE) as response:
        for item in read_events(response.iter_lines()):
            if not isinstance(item, Event):
                continue
            events.append(item)
            if busy_at_first_output is None and item.name == "stdout":
                busy_at_first_output = session_status(client, session_id)["busy"]

    assert busy_at_first_output is True
    names = [event.name for event in events]
    assert names.index("stdout") < names.index("done")
    first, done = events[0], events[-1]
    assert first.name == "stdout"
    assert first.json()["text"].startswith("first")
    assert done.at - first.at > 1.5  # the first line came while the run slept
    assert [event.json()["text"] for event in events if event.name == "stderr"] == ["oops\n"]
    stdout = "".join(event.json()["text"] for event in events if event.name == "stdout")
    assert stdout == done.json()["result"] == "first\nsecond\n"


def test_a_command_streams_its_output_as_it_comes(
    server: Server, client: httpx.Client, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    body = {"command": "echo one && sleep 2 && echo two", "session_id": session_id}
    read = stream(client, "/command", body)

    stdout = [event for event in read.events if event.name == "stdout"]
    assert stdout[0].json()["text"].startswith("one")
    assert read.events[-1].at - stdout[0].at > 1.5
    assert read.events[-1].json()["result"] == "one\ntwo\n"


def test_a_60_mb_print_over_sse_leaves_the_service_memory_flat(
    server: Server, client: httpx.Client, new_session: Callable[[], str]
) -> None:
    session_id = new_session()
    service = psutil.Process(server.process.pid)
    warm_up = {"code": "print('x' * 1000)", "session_id": session_id}
    stream(client, "/repl", warm_up)
    baseline = service.memory_info().rss
    peak = baseline
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, service.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        flood = {"code": "print('y' * 60_000_000)", "session_id": session_id, "timeout": 10}
        read = stream(client, "/repl", flood)
    finally:
        sampling = False
        sampler.join()

    done = read.events[-1].json()
    assert done["status"] == "ok"
    assert done["truncated"] is True
    # The stream is cut as the reply is (a head, the marker, a tail), never the 60 MB.
    stdout = "".join(event.json()["text"] for event in read.events if event.name == "stdout")
    assert stdout == done["result"]
    assert "characters omitted" in stdout
    assert peak - baseline < 8 * 1024 * 1024
    assert service.memory_info().rss - baseline < 4 * 1024 * 1024


def test_displays_arrive_as_they_are_produced_the_cells_value_included(
    client: httpx.Client, new_session: Callable[[], str]
) -> None:
    code = "display('shown')\nimport time\ntime.sleep(1.5)\n6 * 7"
    read = stream(client, "/repl", {"code": code, "session_id": new_session(), "timeout": 10})

    done = read.events[-1]
    displays = [event for event in read.events if event.name == "display"]
    assert [event.json()["output_type"] for event in displays] == [
        "display_data",
        "execute_result",
    ]
    assert displays[0].json()["data"]["text/plain"] == "'shown'"
    assert done.at - displays[0].at > 1  # while the cell slept
    assert [event.json() for event in displays] == done.json()["outputs"]
