"""Streamed runs against real workers: output reaches subscribers while the run goes
on, bounded as replies are, and a worker that abuses the stream is a lost worker."""

from __future__ import annotations

import asyncio

import pytest

from sandbox import Session, protocol
from sandbox.run import (
    OutputDisplay,
    OutputDropped,
    OutputText,
    Run,
    RunEvent,
    RunFinished,
)

pytestmark = pytest.mark.anyio

# A cell's way to the worker's own PythonSession, to emit outputs as display() would.
_THE_WORKERS_SESSION = (
    "import gc\n"
    "from sandbox.executor import PythonSession\n"
    "from sandbox.protocol import RichOutput\n"
    "session, = [o for o in gc.get_objects() if isinstance(o, PythonSession)]\n"
)


async def _events(run: Run) -> list[RunEvent]:
    return [event async for event in run.events()]


def _streamed(events: list[RunEvent], name: str = "stdout") -> str:
    return "".join(e.text for e in events if isinstance(e, OutputText) and e.name == name)


async def test_the_first_output_arrives_while_the_run_still_runs(session: Session) -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"
    run = await session.start_python(code, timeout=10, stream=True)
    events = run.events()
    first = await anext(events)
    assert isinstance(first, OutputText)
    assert first.name == "stdout"
    # print() writes the text and its newline apart: the first may come alone.
    assert first.text in ("first", "first\n")
    assert not run.done()  # the run sleeps on: the output came before its end
    rest = [first] + [event async for event in events]
    outcome = await run.outcome()
    assert _streamed(rest) == outcome.reply.stdout == "first\nsecond\n"
    assert isinstance(rest[-1], RunFinished)
    assert rest[-1].outcome is outcome


async def test_streamed_text_is_the_replys_stdout_and_stderr(session: Session) -> None:
    code = (
        "import sys, os\n"
        "for i in range(50):\n"
        "    print(i, 'ünïcode €', flush=True)\n"
        "    print('warn', i, file=sys.stderr)\n"
        "os.write(1, 'split: 😀'.encode()[:-1])\n"
        "os.write(1, 'split: 😀'.encode()[-1:])"
    )
    run = await session.start_python(code, timeout=10, stream=True)
    events = await _events(run)
    outcome = await run.outcome()
    assert outcome.reply.stdout.endswith("split: 😀")
    assert _streamed(events, "stdout") == outcome.reply.stdout
    assert _streamed(events, "stderr") == outcome.reply.stderr
    assert "warn 49" in _streamed(events, "stderr")


async def test_a_60_mb_print_streams_a_bounded_cut_and_the_reply_is_cut_as_before(
    session: Session,
) -> None:
    keep = session.policy.limits.output_chars
    worker = session.worker
    assert worker is not None
    received = 0
    receive = worker.receive

    async def counting_receive() -> protocol.WorkerFrame:
        nonlocal received
        message = await receive()
        if isinstance(message, protocol.OutputChunk):
            received += len(message.text)
        return message

    worker.receive = counting_receive  # type: ignore[method-assign]
    code = "print('HEAD' + 'x' * 60_000_000 + 'TAIL')"
    run = await session.start_python(code, timeout=10, stream=True)
    events = await _events(run)
    outcome = await run.outcome()
    assert outcome.reply.status == "ok", outcome.reply.error
    assert outcome.reply.truncated
    assert len(outcome.reply.stdout) <= keep
    streamed = _streamed(events)
    assert received == len(streamed)  # nothing dropped on the way to the subscriber
    assert received <= keep  # not 60 MB: what the reply holds
    assert streamed == outcome.reply.stdout  # what the reply cut, the stream cut
    assert streamed.startswith("HEAD")
    assert streamed.endswith("TAIL\n")
    assert not any(isinstance(event, OutputDropped) for event in events)


async def test_a_streamed_command_streams_its_output(session: Session) -> None:
    run = await session.start_command("echo one && sleep 1.5 && echo two", stream=True)
    events = run.events()
    first = await anext(events)
    assert first == OutputText("stdout", "one\n")  # echo writes its line at once
    assert not run.done()
    rest = [first] + [event async for event in events]
    outcome = await run.outcome()
    assert outcome.reply.status == "ok", outcome.reply.error
    assert _streamed(rest) == outcome.reply.stdout == "one\ntwo\n"


async def test_a_run_not_started_to_stream_publishes_only_its_end(session: Session) -> None:
    run = await session.start_python("print('quiet')", timeout=10)
    events = await _events(run)
    assert len(events) == 1
    assert isinstance(events[0], RunFinished)
    assert events[0].outcome.reply.stdout == "quiet\n"


async def test_displays_are_streamed_in_order_with_the_text_around_them(
    session: Session,
) -> None:
    # display() is another module's; its hook into the worker is the session's emit().
    code = _THE_WORKERS_SESSION + (
        "print('before')\n"
        "session.emit(RichOutput(output_type='display_data', data={'text/plain': 'shown'}))\n"
        "print('after')"
    )
    run = await session.start_python(code, timeout=10, stream=True)
    events = await _events(run)
    outcome = await run.outcome()
    assert outcome.reply.status == "ok", outcome.reply.error
    displays = [i for i, event in enumerate(events) if isinstance(event, OutputDisplay)]
    assert len(displays) == 1
    (at,) = displays
    assert _streamed(events[:at]) == "before\n"
    assert _streamed(events[at:]) == "after\n"
    assert isinstance(events[-1], RunFinished)
    display = events[at]
    assert isinstance(display, OutputDisplay)
    assert display.output.data == {"text/plain": "shown"}
    # The listener lasts one run: a run that does not stream sends no display frame.
    quiet = await session.run_python(
        "session.emit(RichOutput(output_type='display_data', data={'text/plain': 'x'}))"
    )
    assert quiet.reply.status == "ok", quiet.reply.error


async def test_a_subscriber_that_never_reads_is_told_what_it_missed(session: Session) -> None:
    code = "import time\nfor i in range(40):\n    print(str(i).rjust(99, '.'), flush=True)\n" + (
        "    time.sleep(0.02)"
    )
    run = await session.start_python(code, timeout=10, stream=True)
    run.subscriber_budget = 1000
    events = run.events()
    first = asyncio.ensure_future(anext(events))  # subscribed; reads nothing more
    outcome = await run.outcome()
    assert run._subscribers[0]._held <= 1000  # what it held unread stayed bounded
    seen = [await first] + [event async for event in events]
    assert isinstance(seen[-1], RunFinished)
    assert isinstance(seen[-2], OutputDropped)  # told before the end, at the latest
    dropped = sum(event.characters for event in seen if isinstance(event, OutputDropped))
    assert len(_streamed(seen)) + dropped == len(outcome.reply.stdout) == 4000


def _forge(frame: str) -> str:
    """Code that writes ``frame`` (a dict's source) to the worker's channel."""
    return (
        "import os, stat, json, struct\n"
        f"forged = json.dumps({frame}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
        "            os.write(fd, struct.pack('>I', len(forged)) + forged)\n"
        "    except OSError:\n"
        "        pass"
    )


@pytest.mark.parametrize(
    ("stream", "run_id", "text"),
    [(True, 999, "'FORGED'"), (False, None, "'FORGED'"), (True, None, "'FORGED' * 10_000")],
    ids=["another-runs-chunk", "chunk-of-a-run-not-streamed", "more-than-the-reply-holds"],
)
async def test_a_forged_chunk_is_a_lost_worker(
    session: Session, stream: bool, run_id: int | None, text: str
) -> None:
    await session.run_python("kept = 1")
    run_id = run_id if run_id is not None else session._run_ids + 1
    frame = f"{{'kind': 'output', 'run_id': {run_id}, 'name': 'stdout', 'text': {text}}}"
    run = await session.start_python(_forge(frame), timeout=10, stream=stream)
    events = await _events(run)
    outcome = await run.outcome()
    assert outcome.reply.status == "killed"
    assert "broke the protocol" in (outcome.reply.error or "")
    assert outcome.restarted
    assert "FORGED" not in _streamed(events)
    after = await session.run_python("'clean'")
    assert after.reply.value == "'clean'"


async def test_a_run_killed_mid_stream_still_recovers(session: Session) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n"
        "    print('tick', flush=True)\n"
        "    time.sleep(0.01)"
    )
    run = await session.start_python(code, timeout=1, stream=True)
    events = await _events(run)
    outcome = await run.outcome()
    assert outcome.reply.status == "killed"
    assert outcome.restarted
    assert _streamed(events).startswith("tick\ntick\n")
    assert isinstance(events[-1], RunFinished)
    streamed_again = await session.start_python("print('fresh')", timeout=10, stream=True)
    assert _streamed(await _events(streamed_again)) == "fresh\n"


async def test_a_run_displaying_in_a_loop_is_interrupted_and_keeps_its_namespace(
    session: Session,
) -> None:
    # An interrupt that lands while a display's frame is being written waits for the
    # frame to be whole: the run is interrupted, not its channel broken.
    code = _THE_WORKERS_SESSION + (
        "kept = 'still here'\n"
        "shown = RichOutput(output_type='display_data', data={'text/plain': 'x' * 50})\n"
        "while True:\n"
        "    session.emit(shown)\n"
        "    session.outputs.clear()"
    )
    run = await session.start_python(code, timeout=1, stream=True)
    events = await _events(run)
    outcome = await run.outcome()
    assert outcome.reply.status == "timeout", outcome.reply.error
    assert not outcome.restarted
    displays = [event for event in events if isinstance(event, OutputDisplay)]
    room = session.policy.limits.reply_chars
    assert 0 < len(displays) <= room // 50  # within the reply's cap, not one per call
    after = await session.run_python("kept")
    assert after.reply.value == "'still here'"
