"""A run read while it goes, without a worker: the order of what a reader gets, the
heartbeats between, and what a reader that leaves does to the run."""

from __future__ import annotations

import asyncio

from sandbox import protocol
from sandbox.run import OutputText, Run, RunFinished, RunOutcome
from service.replies import Reply
from service.run_stream import IDLE, RunStream, StreamItem
from service.schemas import ReplResponse

REPLY = Reply(ReplResponse.model_construct(), '{"result": "done"}')


def _run() -> Run:
    return Run(protocol.RunPython(run_id=1, code="print(1)", stream=True), timeout=5.0)


def _outcome() -> RunOutcome:
    return RunOutcome(protocol.RunReply(run_id=1, status="ok"))


async def _reply() -> Reply:
    return REPLY


def test_output_comes_in_order_with_heartbeats_while_idle_and_the_reply_last() -> None:
    async def scenario() -> list[StreamItem]:
        run = _run()

        async def life() -> RunOutcome:
            # In the run's first step, before the reader's task first runs (as when a
            # worker's first output was read before it, under uvloop).
            run.publish(OutputText("stdout", "1\n"))
            await asyncio.sleep(0.25)  # quiet: heartbeats
            run.publish(OutputText("stderr", "2\n"))
            outcome = _outcome()
            run.publish(RunFinished(outcome))
            return outcome

        run.start(life())
        stream = RunStream(run, _reply, lambda: None)
        items = [item async for item in stream.items(idle_s=0.1)]
        stream.close()
        return items

    items = asyncio.run(scenario())
    assert items[0] == OutputText("stdout", "1\n")
    assert items[-2:] == [OutputText("stderr", "2\n"), REPLY]
    assert set(items[1:-2]) == {IDLE}
    assert len(items[1:-2]) >= 2


def test_a_reader_that_leaves_abandons_the_run_and_unsubscribes() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        run = _run()
        abandoned: list[bool] = []

        async def life() -> RunOutcome:
            await asyncio.sleep(0.2)
            run.publish(OutputText("stdout", "nobody reads this\n"))
            return _outcome()

        run.start(life())
        stream = RunStream(run, _reply, lambda: abandoned.append(True))

        async def read() -> None:
            async for _ in stream.items(idle_s=10):
                pass

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        watched_while_read = run.watched
        reader.cancel()  # the client hung up
        stream.close()
        await asyncio.sleep(0)
        return watched_while_read, bool(abandoned), run.watched

    watched_while_read, abandoned, watched_after = asyncio.run(scenario())
    assert watched_while_read
    assert abandoned
    assert not watched_after
