"""A worker's reply always reaches the service: what cannot be encoded is escaped, or
sent as an error, never the end of the worker."""

from __future__ import annotations

from sandbox import protocol
from sandbox.output import BoundedBuffer
from sandbox.worker import build_reply, encode_reply


def _decoded(frame: bytes) -> protocol.RunReply:
    [payload] = protocol.FrameDecoder().feed(frame)
    message = protocol.decode_worker_message(payload)
    assert isinstance(message, protocol.RunReply)
    return message


def test_a_reply_that_cannot_be_encoded_is_sent_as_an_error() -> None:
    unencodable = protocol.RunReply(run_id=7, status="ok", value="\ud800", execution_count=3)
    reply = _decoded(encode_reply(unencodable))
    assert (reply.run_id, reply.status, reply.execution_count) == (7, "error", 3)
    assert reply.error is not None
    assert "could not be sent" in reply.error


def test_a_reply_over_the_frame_cap_is_sent_as_an_error() -> None:
    huge = protocol.RunReply(run_id=1, status="ok", stdout="x" * protocol.DEFAULT_MAX_FRAME)
    reply = _decoded(encode_reply(huge))
    assert reply.status == "error"


def test_lone_surrogates_in_a_reply_are_escaped_within_the_limit() -> None:
    surrogates = "\udcff" * 1000
    reply = build_reply(
        1, 100, 1, BoundedBuffer(100), BoundedBuffer(100), status="ok", value=surrogates
    )
    assert reply.value is not None
    assert reply.value.startswith("\\udcff")
    assert len(reply.value) <= 100
    assert reply.truncated
    assert _decoded(encode_reply(reply)).value == reply.value  # sent as it is
