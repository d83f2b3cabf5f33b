"""The wire protocol: framing round-trips, caps hold before buffering, garbage is refused."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sandbox import protocol
from sandbox.errors import FrameTooLarge, ProtocolError

replies = st.builds(
    protocol.RunReply,
    run_id=st.integers(min_value=0, max_value=2**31),
    status=st.sampled_from(["ok", "error", "timeout", "killed", "denied"]),
    stdout=st.text(max_size=200),
    stderr=st.text(max_size=200),
    value=st.one_of(st.none(), st.text(max_size=50)),
    truncated=st.booleans(),
)


@given(messages=st.lists(replies, min_size=1, max_size=5), chunk=st.integers(1, 64))
def test_frames_round_trip_whatever_the_chunking(
    messages: list[protocol.RunReply], chunk: int
) -> None:
    stream = b"".join(protocol.encode(m) for m in messages)
    decoder = protocol.FrameDecoder()
    payloads: list[bytes] = []
    for start in range(0, len(stream), chunk):
        payloads += decoder.feed(stream[start : start + chunk])
    assert [protocol.decode_worker_message(p) for p in payloads] == messages


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = protocol.FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed(protocol.HEADER.pack(1025))


def test_encoder_refuses_a_message_above_the_cap() -> None:
    with pytest.raises(FrameTooLarge):
        protocol.encode(protocol.RunReply(run_id=1, status="ok", stdout="x" * 2000), max_frame=1000)


@given(garbage=st.binary(max_size=300))
def test_garbage_payloads_raise_protocol_error_only(garbage: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode_worker_message(garbage)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"kind": "reply", "run_id": 1, "status": "pwned"}',
        b'{"kind": "reply", "run_id": "1", "status": "ok", "extra": 1}',
        b'{"kind": "exec", "code": "x"}',
        b"[]",
        # Names that become metrics labels and audit fields: a worker may not invent them.
        b'{"kind": "reply", "run_id": 1, "status": "killed", "limit": "made-up-1"}',
        b'{"kind": "reply", "run_id": 1, "status": "denied", "denied_rule": "made-up-1"}',
    ],
)
def test_forged_or_malformed_worker_frames_are_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_worker_message(payload)


def test_requests_round_trip() -> None:
    for message in (
        protocol.RunPython(run_id=3, code="1+1"),
        protocol.RunCommand(run_id=4, command="ls"),
    ):
        encoded = protocol.encode(message)
        assert protocol.decode_request(encoded[protocol.HEADER.size :]) == message


# --- the zygote's control messages -------------------------------------------------


def test_zygote_requests_are_told_apart_by_their_op() -> None:
    spawn = protocol.decode_zygote_request(b'{"op": "spawn", "workspace": null}')
    assert spawn == protocol.SpawnRequest(workspace=None)
    assert isinstance(protocol.decode_zygote_request(b'{"op": "drain"}'), protocol.DrainRequest)
    assert isinstance(protocol.decode_zygote_request(b'{"op": "status"}'), protocol.StatusRequest)


@pytest.mark.parametrize(
    "data",
    [b'{"op": "fork-bomb"}', b'{"op": "spawn", "extra": 1}', b"not json", b"{}"],
)
def test_a_zygote_request_it_does_not_know_is_refused(data: bytes) -> None:
    with pytest.raises(ValidationError):
        protocol.decode_zygote_request(data)


def test_a_zygote_refusal_reaches_the_service_as_its_own_words() -> None:
    refusal = protocol.ZygoteRefusal(error="no uid left").model_dump_json().encode()
    with pytest.raises(ProtocolError, match="no uid left"):
        protocol.decode_zygote_reply(refusal, protocol.WorkerMade)
    with pytest.raises(ProtocolError, match="malformed"):
        protocol.decode_zygote_reply(b'{"ok": true, "pid": "x"}', protocol.WorkerMade)
    made = protocol.WorkerMade(pid=7, workspace="/w", uid=None, session_key="k", quota=False)
    assert (
        protocol.decode_zygote_reply(made.model_dump_json().encode(), protocol.WorkerMade) == made
    )


# --- a streamed run's frames -------------------------------------------------------

rich_outputs = st.builds(
    protocol.RichOutput,
    output_type=st.sampled_from(["execute_result", "display_data"]),
    data=st.dictionaries(st.sampled_from(["text/plain", "text/html", "image/png"]), st.text()),
)
streamed = st.one_of(
    st.builds(
        protocol.OutputChunk,
        run_id=st.integers(min_value=0, max_value=2**31),
        name=st.sampled_from(["stdout", "stderr"]),
        text=st.text(min_size=1, max_size=200),
    ),
    st.builds(
        protocol.DisplayOutput,
        run_id=st.integers(min_value=0, max_value=2**31),
        output=rich_outputs,
    ),
)


@given(
    messages=st.lists(st.one_of(streamed, replies), min_size=1, max_size=6),
    chunk=st.integers(1, 64),
)
def test_streamed_frames_and_replies_round_trip_in_order(
    messages: list[protocol.WorkerFrame], chunk: int
) -> None:
    stream = b"".join(protocol.encode(m) for m in messages)
    decoder = protocol.FrameDecoder()
    payloads: list[bytes] = []
    for start in range(0, len(stream), chunk):
        payloads += decoder.feed(stream[start : start + chunk])
    assert [protocol.decode_worker_message(p) for p in payloads] == messages


@pytest.mark.parametrize(
    "payload",
    [
        b'{"kind": "output", "run_id": 1, "name": "stdin", "text": "x"}',
        b'{"kind": "output", "run_id": 1, "name": "stdout", "text": 7}',
        b'{"kind": "output", "run_id": "one", "name": "stdout", "text": "x"}',
        b'{"kind": "output", "run_id": 1, "name": "stdout", "text": "x", "extra": 1}',
        b'{"kind": "output", "run_id": 1, "name": "stdout"}',
        b'{"kind": "output", "run_id": 1, "name": "stdout", "text": ""}',
        b'{"kind": "display", "run_id": 1, "output": {"output_type": "stream", "data": {}}}',
        b'{"kind": "display", "run_id": 1, "output": {"output_type": "display_data",'
        b' "data": {"text/plain": 1}}}',
        b'{"kind": "display", "run_id": 1}',
    ],
)
def test_malformed_streamed_frames_are_rejected(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_worker_message(payload)


def test_a_worker_hint_larger_than_its_caps_is_refused() -> None:
    def reply(names: list[str]) -> bytes:
        hint = {"kind": "dataframe-columns", "names": names, "total": len(names)}
        return json.dumps({"kind": "reply", "run_id": 1, "status": "error", "hint": hint}).encode()

    within = ["c" * protocol.MAX_HINT_NAME_CHARS] * protocol.MAX_HINT_NAMES
    decoded = protocol.decode_worker_message(reply(within))
    assert isinstance(decoded, protocol.RunReply)
    assert decoded.hint is not None
    assert decoded.hint.names == within
    for beyond in ([*within, "c"], ["c" * (protocol.MAX_HINT_NAME_CHARS + 1)]):
        with pytest.raises(ProtocolError):
            protocol.decode_worker_message(reply(beyond))
