"""A run's life in its own task, without a worker: what its callers and holders see."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sandbox import protocol
from sandbox.policy import Limits
from sandbox.run import (
    OutputDisplay,
    OutputDropped,
    OutputText,
    Run,
    RunEvent,
    RunFinished,
    RunOutcome,
)


def _outcome() -> RunOutcome:
    return RunOutcome(protocol.RunReply(run_id=1, status="ok", value="42"))


def _run() -> Run:
    return Run(protocol.RunPython(run_id=1, code="6 * 7"), timeout=1.0)


def test_a_cancelled_caller_cancels_its_own_wait_not_another_callers() -> None:
    async def scenario() -> tuple[RunOutcome, bool]:
        finish = asyncio.Event()

        async def life() -> RunOutcome:
            await finish.wait()
            return _outcome()

        run = _run()
        run.start(life())
        first = asyncio.create_task(run.outcome())
        second = asyncio.create_task(run.outcome())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        finish.set()
        return await second, run.abandoned

    outcome, abandoned = asyncio.run(scenario())
    assert outcome.reply.value == "42"
    assert abandoned  # the cancelled caller abandoned it; the other still got the end


def test_every_holder_is_told_of_the_end_even_when_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    told: list[str] = []

    async def scenario() -> list[object]:
        async def life() -> RunOutcome:
            await asyncio.sleep(0)
            return _outcome()

        run = _run()
        run.start(life())

        def failing() -> None:
            raise RuntimeError("a holder's bug")

        run.when_done(failing)
        run.when_done(lambda: told.append("slot"))
        seen = [event async for event in run.events()]
        await run.outcome()
        run.when_done(lambda: told.append("late"))  # after the end: called at once
        return seen

    assert asyncio.run(scenario()) == []  # nobody published; the stream still ended
    assert told == ["slot", "late"]
    assert "a run's end callback failed" in caplog.text


def test_the_error_of_a_run_nobody_waits_for_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async def life() -> RunOutcome:
            await asyncio.sleep(0.01)
            raise OSError("no worker could be made")

        run = _run()
        run.start(life())
        caller = asyncio.create_task(run.outcome())
        await asyncio.sleep(0)
        caller.cancel()
        await asyncio.sleep(0.05)
        assert run.done()

    asyncio.run(scenario())
    assert "a run whose caller went away failed: no worker could be made" in caplog.text


# --- events: streamed output, and subscribers that fall behind -------------------


LIMITS = Limits(output_chars=20_000, reply_chars=60_000)


def _streamed_run() -> Run:
    return Run(protocol.RunPython(run_id=1, code="...", stream=True), timeout=1.0, limits=LIMITS)


def _chunk(text: str, run_id: int = 1) -> protocol.OutputChunk:
    return protocol.OutputChunk(run_id=run_id, name="stdout", text=text)


def test_a_subscriber_that_reads_gets_every_output_in_order_then_the_end() -> None:
    async def scenario() -> list[RunEvent]:
        finish = asyncio.Event()

        async def life() -> RunOutcome:
            await finish.wait()
            outcome = _outcome()
            run.publish(RunFinished(outcome))
            return outcome

        run = _streamed_run()
        run.start(life())
        seen: list[RunEvent] = []

        async def read() -> None:
            async for event in run.events():
                seen.append(event)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0)
        for text in ("a", "b", "c"):
            assert run.take_output(_chunk(text))
            await asyncio.sleep(0)
        display = protocol.RichOutput(output_type="display_data", data={"text/plain": "d"})
        assert run.take_output(protocol.DisplayOutput(run_id=1, output=display))
        finish.set()
        await reader
        return seen

    seen = asyncio.run(scenario())
    assert seen[:3] == [OutputText("stdout", t) for t in "abc"]
    assert isinstance(seen[3], OutputDisplay)
    assert seen[3].output.data == {"text/plain": "d"}
    assert isinstance(seen[4], RunFinished)
    assert len(seen) == 5


def test_a_subscriber_that_falls_behind_is_told_what_it_missed_before_the_end() -> None:
    budget = 1000

    async def scenario() -> tuple[list[RunEvent], int, int]:
        finish = asyncio.Event()

        async def life() -> RunOutcome:
            await finish.wait()
            outcome = _outcome()
            run.publish(RunFinished(outcome))
            return outcome

        run = _streamed_run()
        run.subscriber_budget = budget
        run.start(life())
        events = run.events()
        first = asyncio.ensure_future(anext(events))  # subscribed; reads nothing more
        await asyncio.sleep(0)
        for _ in range(100):  # 10 times the budget
            assert run.take_output(_chunk("x" * 100))
        held = run._subscribers[0]._held
        finish.set()
        seen = [await first] + [event async for event in events]
        return seen, held, len(run._subscribers)

    seen, held, subscribers_left = asyncio.run(scenario())
    assert held <= budget
    kept = [event for event in seen if isinstance(event, OutputText)]
    assert 0 < len(kept) < 10
    dropped = seen[-2]
    assert isinstance(dropped, OutputDropped)
    assert dropped.characters == 100 * 100 - 100 * len(kept)
    assert isinstance(seen[-1], RunFinished)
    assert subscribers_left == 0


def test_a_run_that_failed_still_tells_a_late_subscriber_what_it_missed() -> None:
    async def scenario() -> list[RunEvent]:
        async def life() -> RunOutcome:
            await asyncio.sleep(0)
            for _ in range(20):
                run.take_output(_chunk("y" * 100))
            raise OSError("no worker could be made")

        run = _streamed_run()
        run.subscriber_budget = 500
        run.start(life())
        events = run.events()
        first = asyncio.ensure_future(anext(events))
        with contextlib.suppress(OSError):
            await run.outcome()
        return [await first] + [event async for event in events]

    seen = asyncio.run(scenario())
    assert isinstance(seen[-1], OutputDropped)
    texts = sum(len(event.text) for event in seen if isinstance(event, OutputText))
    assert texts + seen[-1].characters == 2000


def test_only_a_streamed_run_takes_output_and_only_its_own() -> None:
    plain = _run()
    assert not plain.take_output(_chunk("x"))
    streamed = _streamed_run()
    assert not streamed.take_output(_chunk("x", run_id=2))
    assert streamed.take_output(_chunk("x"))  # nobody subscribed: dropped, not an error


def test_a_worker_streaming_more_than_its_reply_could_hold_breaks_the_protocol() -> None:
    run = _streamed_run()
    for _ in range(20):
        assert run.take_output(_chunk("x" * 1000))  # the reply's cap, to the character
    assert run.take_output(protocol.OutputChunk(run_id=1, name="stderr", text="e" * 20_000))
    assert not run.take_output(_chunk("x"))
    big = protocol.RichOutput(output_type="display_data", data={"text/plain": "d" * 50_000})
    assert run.take_output(protocol.DisplayOutput(run_id=1, output=big))
    assert run.take_output(protocol.DisplayOutput(run_id=1, output=big))
    assert not run.take_output(protocol.DisplayOutput(run_id=1, output=big))


def test_a_caller_wakes_one_loop_step_after_the_run_ends() -> None:
    # Each loop step between the worker's reply and its caller is paid by every run.
    async def scenario() -> int:
        finish = asyncio.Event()

        async def life() -> RunOutcome:
            await finish.wait()
            return _outcome()

        run = _run()
        run.start(life())
        caller = asyncio.create_task(run.outcome())
        while not run.done():
            await asyncio.sleep(0)
            finish.set()
        steps = 0
        while not caller.done():
            await asyncio.sleep(0)
            steps += 1
        assert caller.result().reply.value == "42"
        return steps

    assert asyncio.run(scenario()) == 1


def test_a_caller_after_the_end_gets_the_outcome_or_the_failure() -> None:
    async def scenario() -> tuple[RunOutcome, BaseException | None]:
        async def life() -> RunOutcome:
            return _outcome()

        async def failing() -> RunOutcome:
            raise OSError("no worker could be made")

        ended, failed = _run(), _run()
        ended.start(life())
        failed.start(failing())
        await asyncio.sleep(0.01)
        try:
            await failed.outcome()
        except OSError as exc:
            failure: BaseException | None = exc
        else:
            failure = None
        return await ended.outcome(), failure

    outcome, failure = asyncio.run(scenario())
    assert outcome.reply.value == "42"
    assert isinstance(failure, OSError)
