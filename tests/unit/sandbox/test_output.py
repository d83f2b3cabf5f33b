"""Bounded output: memory stays flat for any volume, and the cut is announced."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from sandbox.output import BoundedBuffer, StreamCollector, truncate_output


@given(text=st.text(max_size=500), limit=st.integers(min_value=60, max_value=400))
def test_truncate_output_never_exceeds_the_limit(text: str, limit: int) -> None:
    cut, truncated = truncate_output(text, limit)
    assert len(cut) <= limit
    assert truncated == (len(text) > limit)
    if not truncated:
        assert cut == text


def test_truncated_text_keeps_head_and_tail_and_counts_the_rest() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    cut, truncated = truncate_output(text, 200)
    assert truncated
    assert cut.startswith("HEAD")
    assert cut.endswith("TAIL")
    assert "characters omitted" in cut


def test_bounded_buffer_holds_at_most_twice_its_keep_whatever_is_written() -> None:
    buffer = BoundedBuffer(keep=1000)
    for _ in range(10_000):
        buffer.write(b"y" * 997)
    held = len(buffer._head) + sum(len(chunk) for chunk in buffer._tail)
    assert held <= 2 * 1000 + 997
    assert buffer.total == 10_000 * 997
    text, truncated = buffer.text(limit=1500)
    assert truncated
    assert len(text) <= 1500


def test_collector_drains_every_stream_and_stops_at_end_of_file() -> None:
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    collector = StreamCollector([out_read, err_read], keep=100)
    os.write(out_write, b"a" * 50_000)
    os.write(err_write, b"b" * 30)
    os.close(out_write)
    os.close(err_write)
    out, err = collector.finish()
    assert out.total == 50_000
    assert err.total == 30
    assert err.text(limit=100) == ("b" * 30, False)


def test_collector_does_not_wait_for_a_writer_that_never_closes() -> None:
    read_fd, write_fd = os.pipe()
    collector = StreamCollector([read_fd], keep=100)
    os.write(write_fd, b"partial")
    (buffer,) = collector.finish(linger_s=0.1)
    os.close(write_fd)
    assert buffer.total == 7
