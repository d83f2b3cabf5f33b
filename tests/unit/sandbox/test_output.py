"""Bounded output: memory stays flat for any volume, and the cut is announced."""

from __future__ import annotations

import os
import subprocess
import time

from hypothesis import given
from hypothesis import strategies as st

from sandbox.output import BoundedBuffer, OutputCapture, truncate_output


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


def test_capture_drains_more_than_a_pipe_holds_while_the_run_writes() -> None:
    capture = OutputCapture(keep=100)
    out_fd, err_fd = capture.begin()
    # Far beyond a pipe's 64 KiB: without the draining thread this write would block.
    os.write(out_fd, b"a" * 1_000_000)
    os.write(err_fd, b"b" * 30)
    out, err = capture.end()
    capture.close()
    assert out.total == 1_000_000
    assert len(out._head) + sum(len(chunk) for chunk in out._tail) <= 2 * 100 + 65536
    assert err.text(limit=100) == ("b" * 30, False)


def test_output_written_between_runs_belongs_to_no_run() -> None:
    capture = OutputCapture(keep=100)
    out_fd, _ = capture.begin()
    os.write(out_fd, b"first")
    first, _ = capture.end()
    os.write(out_fd, b"between")  # a background process, say
    capture.begin()
    os.write(out_fd, b"second")
    second, _ = capture.end()
    capture.close()
    assert first.text(limit=100) == ("first", False)
    assert second.text(limit=100) == ("second", False)


def test_a_run_ends_without_waiting_for_writers_that_keep_the_pipe() -> None:
    capture = OutputCapture(keep=100)
    out_fd, _ = capture.begin()
    kept = os.dup(out_fd)  # a background process still holding stdout
    os.write(kept, b"partial")
    out, _ = capture.end()
    os.close(kept)
    capture.close()
    assert out.total == 7


def test_a_run_ends_beside_processes_that_write_without_pause() -> None:
    capture = OutputCapture(keep=100)
    out_fd, _ = capture.begin()
    # `yes` left running in the background by earlier cells, writing into the run.
    floods = [subprocess.Popen(["yes", "y" * 4000], stdout=out_fd) for _ in range(3)]
    try:
        time.sleep(0.2)
        out, _ = capture.end()  # returns although the pipe never stays empty for long
    finally:
        for flood in floods:
            flood.kill()
            flood.wait()
        capture.close()
    assert out.total > 1_000_000
    assert len(out._head) + sum(len(chunk) for chunk in out._tail) <= 2 * 100 + 65536


def test_a_capture_whose_pipe_user_code_closed_is_not_intact() -> None:
    capture = OutputCapture(keep=100)
    assert capture.intact
    out_fd, _ = capture.begin()
    capture.end()
    os.close(out_fd)
    assert not capture.intact
    capture.close()


def test_closing_a_capture_leaves_a_reused_descriptor_number_alone() -> None:
    capture = OutputCapture(keep=100)
    out_fd, _ = capture.begin()
    capture.end()
    os.close(out_fd)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, out_fd)  # user code's own pipe now holds the freed number
    capture.close()
    try:
        assert os.fstat(out_fd).st_ino == os.fstat(write_fd).st_ino
    finally:
        for fd in {read_fd, write_fd, out_fd}:  # read_fd may be out_fd's number
            os.close(fd)
