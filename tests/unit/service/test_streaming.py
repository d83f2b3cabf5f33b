"""Server-Sent Events framing, and a response that notices a client leave while nothing
flows (no server, no worker: the ASGI messages themselves)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.types import Message

from sandbox import protocol
from sandbox.run import OutputDropped, OutputText, Run, RunOutcome
from service.replies import Reply
from service.run_stream import IDLE, RunStream
from service.schemas import ReplResponse
from service.streaming import EventStreamResponse, encode, frame, wants_event_stream


@pytest.mark.parametrize(
    ("accept", "streams"),
    [
        ("text/event-stream", True),
        ("application/json, text/event-stream;q=0.5", True),
        ("Text/Event-Stream", True),
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("text/event-streams", False),
    ],
)
def test_only_an_accept_naming_event_streams_gets_one(accept: str | None, streams: bool) -> None:
    assert wants_event_stream(accept) is streams


def _parse(raw: bytes) -> list[tuple[str, str]]:
    """Events as an SSE client reads them: data lines joined with line feeds."""
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        fields = [line.split(": ", 1) for line in block.split("\n")]
        name = next(value for key, value in fields if key == "event")
        events.append((name, "\n".join(value for key, value in fields if key == "data")))
    return events


def test_a_line_break_in_data_cannot_end_the_event_early() -> None:
    raw = frame("stdout", "one\ntwo\r\nthree\rfour")
    assert _parse(raw) == [("stdout", "one\ntwo\nthree\nfour")]


def test_output_text_is_json_even_with_a_lone_surrogate() -> None:
    text = "caf\u00e9 \ud800 done\n"
    raw = encode(OutputText("stderr", text))
    [(name, data)] = _parse(raw)
    assert name == "stderr"
    assert json.loads(data) == {"text": text}


def test_dropped_output_and_the_heartbeat_have_their_own_lines() -> None:
    assert _parse(encode(OutputDropped(1234))) == [("dropped", '{"characters": 1234}')]
    assert encode(IDLE) == b": keepalive\n\n"


def test_a_client_that_leaves_while_nothing_flows_ends_the_stream_at_once() -> None:
    async def scenario() -> tuple[float, list[Message]]:
        forever = asyncio.Event()

        async def life() -> RunOutcome:
            await forever.wait()
            return RunOutcome(protocol.RunReply(run_id=1, status="ok"))

        async def reply() -> Reply:
            return Reply(ReplResponse.model_construct(), "{}")

        run = Run(protocol.RunPython(run_id=1, code="", stream=True), timeout=60)
        run.start(life())
        abandoned = asyncio.Event()
        stream = RunStream(run, reply, abandoned.set)
        sent: list[Message] = []

        async def receive() -> Message:
            await asyncio.sleep(0.1)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        started = time.monotonic()
        # A heartbeat far away: nothing is written after the headers.
        response = EventStreamResponse(stream, heartbeat_s=60)
        await asyncio.wait_for(response({"type": "http"}, receive, send), 5)
        await asyncio.wait_for(abandoned.wait(), 1)
        left_after = time.monotonic() - started
        forever.set()
        return left_after, sent

    left_after, sent = asyncio.run(scenario())
    assert left_after < 1
    assert [message["type"] for message in sent] == ["http.response.start"]
    assert (b"x-accel-buffering", b"no") in sent[0]["headers"]
