"""A streamed run's display frames from the worker's side: an interrupt that arrives
while one is written waits until the frame is whole, then interrupts the run."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator

import pytest

from sandbox import load_policy, protocol
from sandbox.output_stream import OutputStream
from sandbox.worker import Worker, _on_sigint, _RunState
from tests.conftest import TEST_POLICY


@pytest.fixture
def worker() -> Iterator[tuple[Worker, socket.socket]]:
    ours, theirs = socket.socketpair()
    made = Worker(theirs, load_policy(TEST_POLICY), {})
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield made, ours
    finally:
        signal.signal(signal.SIGINT, previous)
        _RunState.running = False
        made._capture.close()  # its thread sees the pipes go and ends
        ours.close()
        theirs.close()


def test_an_interrupt_during_a_display_frame_waits_for_the_frame_to_be_whole(
    worker: tuple[Worker, socket.socket],
) -> None:
    made, ours = worker
    send = made._send

    def send_in_two_halves(message: protocol.StreamedOutput) -> None:
        frame = protocol.encode(message)
        made._channel.sendall(frame[:10])
        os.kill(os.getpid(), signal.SIGINT)  # the run's wall clock, mid-frame
        made._channel.sendall(frame[10:])

    made._send = send_in_two_halves  # type: ignore[method-assign]
    stream = OutputStream(5, 1000, made._send, display_room=10_000)
    shown = protocol.RichOutput(output_type="display_data", data={"text/plain": "shown"})
    _RunState.running = True
    with pytest.raises(KeyboardInterrupt):
        made._send_display(stream, shown)
    _RunState.running = False
    made._send = send  # type: ignore[method-assign]
    ours.settimeout(5)
    [payload] = protocol.FrameDecoder().feed(ours.recv(65536))
    assert protocol.decode_worker_message(payload) == protocol.DisplayOutput(run_id=5, output=shown)
    assert _RunState.interrupted
