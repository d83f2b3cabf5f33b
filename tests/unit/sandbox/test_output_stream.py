"""A streamed run's output: sent as it comes, gathered into few frames, and cut as the
reply is cut, so a flood sends about two heads' worth whatever its size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sandbox import protocol
from sandbox.output import BoundedBuffer
from sandbox.output_stream import (
    CHUNK_BYTES,
    COALESCE_S,
    OutputStream,
    display_size,
    live_characters,
)


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


def test_a_flood_sends_the_head_as_it_comes_then_the_rest_of_the_reply_at_the_end() -> None:
    limit = 1000
    stream, sent, clock = _stream(limit)
    buffers = [BoundedBuffer(limit), BoundedBuffer(limit)]
    _written(stream, buffers, 0, b"H" * limit)
    for _ in range(10_000):  # 10 MB more
        _written(stream, buffers, 0, b"x" * 1000)
        clock.now += 1
        stream.due_in()
    _written(stream, buffers, 0, b"TAIL")
    # While it runs: the head every cut of it keeps, and nothing more.
    assert _text(sent, "stdout") == "H" * live_characters(limit)
    stream.finish(buffers)
    reply_text, cut = buffers[0].text(limit)
    assert cut
    assert _text(sent, "stdout") == reply_text  # what the reply cut, the stream cut
    assert reply_text.endswith("TAIL")


@given(
    reads=st.lists(
        st.tuples(st.sampled_from([0, 1]), st.binary(min_size=1, max_size=60)), max_size=30
    ),
    limit=st.integers(min_value=60, max_value=300),
)
def test_the_streamed_text_is_exactly_the_replys_whatever_is_written(
    reads: list[tuple[int, bytes]], limit: int
) -> None:
    stream, sent, clock = _stream(limit)
    buffers = [BoundedBuffer(limit), BoundedBuffer(limit)]
    for index, data in reads:
        _written(stream, buffers, index, data)
        clock.now += 0.02
        stream.due_in()
    live = {name: _text(sent, name) for name in ("stdout", "stderr")}
    stream.finish(buffers)
    for index, name in enumerate(("stdout", "stderr")):
        reply_text, _cut = buffers[index].text(limit)
        assert _text(sent, name) == reply_text
        assert len(live[name]) <= live_characters(limit)


@given(text=st.text(max_size=400), limit=st.integers(min_value=60, max_value=300))
def test_text_that_fits_streams_as_it_comes_up_to_the_head_every_cut_keeps(
    text: str, limit: int
) -> None:
    stream, sent, clock = _stream(limit)
    buffers = [BoundedBuffer(limit), BoundedBuffer(limit)]
    for character in text:
        _written(stream, buffers, 0, character.encode("utf-8", "surrogatepass"))
        clock.now += 1
        stream.due_in()
    encoded = text.encode("utf-8", "surrogatepass")
    expected_live = encoded[:limit].decode("utf-8", "replace")[: live_characters(limit)]
    # A character not yet whole at the head's end waits for the end.
    assert expected_live.startswith(_text(sent, "stdout"))
    assert len(expected_live) - len(_text(sent, "stdout")) <= 1


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
    one_frame = display_size(_display("x" * 100))
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
