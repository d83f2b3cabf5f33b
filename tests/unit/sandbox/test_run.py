"""A run's life in its own task, without a worker: what its callers and holders see."""

from __future__ import annotations

import asyncio

import pytest

from sandbox import protocol
from sandbox.run import Run, RunOutcome


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
