"""A streamed run's output: sent as it comes, gathered into few frames, and cut as the
reply is cut, so a flood sends about two heads' worth whatever its size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sandbox import protocol
from sandbox.output import OMISSION_MARKER, BoundedBuffer
from sandbox.output_stream import CHUNK_BYTES, COALESCE_S, OutputStream


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _stream(keep: int) -> tuple[OutputStream, list[protocol.OutputChunk], _Clock]:
    sent: list[protocol.OutputChunk] = []
    clock = _Clock()
    return OutputStream(7, keep, sent.append, clock=clock), sent, clock  # type: ignore[arg-type]


def _written(stream: OutputStream, buffers: list[BoundedBuffer], index: int, data: bytes) -> None:
    """What the capture's thread does with one read."""
    buffers[index].write(data)
    stream.feed(index, data)


def _text(sent: list[protocol.OutputChunk], name: str) -> str:
    return "".join(chunk.text for chunk in sent if chunk.name == name)


def test_the_first_output_goes_at_once_and_what_follows_is_gathered() -> None:
    stream, sent, clock = _stream(keep=1000)
    stream.feed(0, b"first\n")
    assert stream.due_in() is None  # sent: nothing waits
    assert [chunk.text for chunk in sent] == ["first\n"]
    for line in (b"a\n", b"b\n", b"c\n"):
        clock.now += 0.01
        stream.feed(0, line)
        wait = stream.due_in()
        assert wait is not None
        assert 0 < wait <= COALESCE_S
    assert len(sent) == 1  # within the window: held back
    clock.now += COALESCE_S
    assert stream.due_in() is None
    assert [chunk.text for chunk in sent] == ["first\n", "a\nb\nc\n"]
    assert all(chunk.run_id == 7 and chunk.name == "stdout" for chunk in sent)


def test_a_full_frame_goes_without_waiting_for_the_window() -> None:
    stream, sent, _clock = _stream(keep=10 * CHUNK_BYTES)
    stream.feed(1, b"x")
    stream.due_in()
    stream.feed(1, b"y" * CHUNK_BYTES)
    assert stream.due_in() is None
    assert [len(chunk.text) for chunk in sent] == [1, CHUNK_BYTES]
    assert {chunk.name for chunk in sent} == {"stderr"}


def test_a_character_split_between_reads_is_sent_whole() -> None:
    stream, sent, clock = _stream(keep=1000)
    buffers = [BoundedBuffer(1000), BoundedBuffer(1000)]
    encoded = "é€😀".encode()
    for byte in encoded:
        _written(stream, buffers, 0, bytes([byte]))
        clock.now += 1
        stream.due_in()
    stream.finish(buffers)
    assert _text(sent, "stdout") == "é€😀"
    assert "\ufffd" not in _text(sent, "stdout")


def test_a_flood_sends_the_head_as_it_comes_then_the_marker_and_tail_at_the_end() -> None:
    keep = 1000
    stream, sent, clock = _stream(keep)
    buffers = [BoundedBuffer(keep), BoundedBuffer(keep)]
    _written(stream, buffers, 0, b"H" * keep)
    for _ in range(10_000):  # 10 MB more
        _written(stream, buffers, 0, b"x" * 1000)
        clock.now += 1
        stream.due_in()
    _written(stream, buffers, 0, b"TAIL")
    before_the_end = _text(sent, "stdout")
    assert before_the_end == "H" * keep  # nothing beyond the head while it runs
    stream.finish(buffers)
    streamed = _text(sent, "stdout")
    omitted = keep + 10_000 * 1000 + 4 - 2 * keep
    assert streamed == "H" * keep + OMISSION_MARKER.format(omitted=omitted) + (
        "x" * (keep - 4) + "TAIL"
    )
    assert len(streamed) < 3 * keep


@given(
    reads=st.lists(
        st.tuples(st.sampled_from([0, 1]), st.binary(min_size=1, max_size=40)), max_size=30
    ),
    keep=st.integers(min_value=8, max_value=120),
)
def test_what_is_streamed_is_the_whole_output_or_its_head_marker_and_tail(
    reads: list[tuple[int, bytes]], keep: int
) -> None:
    stream, sent, clock = _stream(keep)
    buffers = [BoundedBuffer(keep), BoundedBuffer(keep)]
    for index, data in reads:
        _written(stream, buffers, index, data)
        clock.now += 0.02
        stream.due_in()
    stream.finish(buffers)
    for index, name in enumerate(("stdout", "stderr")):
        whole = b"".join(data for i, data in reads if i == index)
        if len(whole) <= 2 * keep:
            expected = whole.decode("utf-8", errors="replace")
        else:
            expected = (
                whole[:keep].decode("utf-8", errors="replace")
                + OMISSION_MARKER.format(omitted=len(whole) - 2 * keep)
                + whole[-keep:].decode("utf-8", errors="replace")
            )
        assert _text(sent, name) == expected


def test_a_channel_that_fails_stops_the_stream_without_raising() -> None:
    calls: list[protocol.OutputChunk] = []

    def failing(chunk: protocol.OutputChunk) -> None:
        calls.append(chunk)
        raise BrokenPipeError

    stream = OutputStream(1, 100, failing)
    stream.feed(0, b"a")
    stream.due_in()
    stream.feed(0, b"b")
    stream.finish([BoundedBuffer(100), BoundedBuffer(100)])
    assert stream.broken
    assert len(calls) == 1


def _display(text: str) -> protocol.RichOutput:
    return protocol.RichOutput(output_type="display_data", data={"text/plain": text})


def test_displays_stream_within_the_runs_room_and_never_after_its_end() -> None:
    sent: list[protocol.OutputChunk | protocol.DisplayOutput] = []
    one_frame = len(protocol.DisplayOutput(run_id=3, output=_display("x" * 100)).model_dump_json())
    stream = OutputStream(3, 100, sent.append, display_room=10 * one_frame)
    for _ in range(1000):  # a loop of display() calls
        stream.send_display(_display("x" * 100))
    assert len(sent) == 10
    stream.finish([BoundedBuffer(100), BoundedBuffer(100)])
    sent.clear()
    stream = OutputStream(3, 100, sent.append, display_room=10 * one_frame)
    stream.finish([BoundedBuffer(100), BoundedBuffer(100)])
    stream.send_display(_display("late"))  # a thread of the user's, after the run
    assert sent == []
