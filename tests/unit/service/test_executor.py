"""A run whose caller is cancelled (an MCP client's cancellation) is counted and audited,
and holds its tenant's run slot until the session has ended it.  A call cancelled while
still queued for its session ran nothing, and leaves no trace."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest

from sandbox.protocol import RunPython, RunReply
from sandbox.run import Run, RunOutcome
from service.audit import AuditLog
from service.callers import Caller
from service.errors import QuotaExceeded
from service.executor import Executor
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRecord


class StandInSession:
    """Stands in for a Session whose run ends only once ``ending`` is done.

    With ``queued``, its caller is still queued for the session when cancelled.
    """

    policy_digest = "digest"
    policy = None  # only handed on, to the reply that a test replaces

    def __init__(self, ending: asyncio.Future[None], queued: bool = False) -> None:
        self.ending = ending
        self.queued = queued

    async def start_python(self, code: str, timeout: float | None, stream: bool = False) -> Run:
        if self.queued:
            await asyncio.Event().wait()  # until its caller is cancelled
        run = Run(RunPython(run_id=1, code=code), timeout=1.0)
        run.sent = True
        run.start(self._life())
        self.run = run
        return run

    async def _life(self) -> RunOutcome:
        await self.ending
        return RunOutcome(RunReply(run_id=1, status="error", error="interrupted"))


def _service_state(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(
        quotas=TenantQuotas("1000/second", runs_at_once=1),
        metrics=Metrics(),
        audit=AuditLog(str(tmp_path / "audit.jsonl")),
    )


def _executor(state: SimpleNamespace) -> Executor:
    return Executor(
        registry=None,  # type: ignore[arg-type]
        quotas=state.quotas,
        metrics=state.metrics,
        audit=state.audit,
        links=None,  # type: ignore[arg-type]
    )


async def _cancelled_call(state: SimpleNamespace, session: StandInSession) -> None:
    executor = _executor(state)
    record = SessionRecord("session-1", Caller("alice"), session)  # type: ignore[arg-type]
    call = asyncio.create_task(executor._run(Caller("alice"), record, "python", "secret = 1", None))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def _slot_is_free(quotas: TenantQuotas) -> bool:
    try:
        quotas.take_run_slot("alice").release()
    except QuotaExceeded:
        return False
    return True


def test_a_cancelled_run_is_counted_audited_and_keeps_its_slot_until_it_ends(
    tmp_path: Path,
) -> None:
    state = _service_state(tmp_path)

    async def cancel_then_end() -> tuple[bool, bool]:
        ending = asyncio.get_running_loop().create_future()
        await _cancelled_call(state, StandInSession(ending))
        while_ending = _slot_is_free(state.quotas)
        ending.set_result(None)
        await asyncio.sleep(0.01)  # the run ends, then its done callbacks run
        return while_ending, _slot_is_free(state.quotas)

    free_while_ending, free_after = asyncio.run(cancel_then_end())
    assert not free_while_ending
    assert free_after
    state.audit.close()
    text = (tmp_path / "audit.jsonl").read_text()
    [line] = [json.loads(entry) for entry in text.splitlines()]
    assert (line["tenant"], line["session"], line["status"]) == ("alice", "session-1", "cancelled")
    rendered = state.metrics.render().decode()
    assert 'codesherpa_runs_total{kind="python",status="cancelled"} 1.0' in rendered


def test_a_call_cancelled_while_queued_is_neither_audited_nor_counted(tmp_path: Path) -> None:
    state = _service_state(tmp_path)

    async def cancel_while_queued() -> None:
        await _cancelled_call(state, StandInSession(asyncio.Future(), queued=True))

    asyncio.run(cancel_while_queued())
    assert _slot_is_free(state.quotas)
    state.audit.close()
    assert (tmp_path / "audit.jsonl").read_text() == ""
    assert 'status="cancelled"' not in state.metrics.render().decode()


def _audit_statuses(state: SimpleNamespace, tmp_path: Path) -> list[str]:
    state.audit.close()
    text = (tmp_path / "audit.jsonl").read_text()
    return [json.loads(entry)["status"] for entry in text.splitlines()]


def test_a_stream_whose_reader_leaves_abandons_its_run_which_keeps_its_slot(
    tmp_path: Path,
) -> None:
    state = _service_state(tmp_path)

    async def leave_then_end() -> tuple[bool, bool, bool]:
        ending = asyncio.get_running_loop().create_future()
        session = StandInSession(ending)
        record = SessionRecord("session-1", Caller("alice"), session)  # type: ignore[arg-type]
        stream = await _executor(state)._stream(Caller("alice"), record, "python", "x = 1", None)
        await asyncio.sleep(0.01)
        stream.close()  # the client hung up
        stream.close()  # ... and its response ends too: still one cancelled run
        abandoned = session.run.abandoned
        while_ending = _slot_is_free(state.quotas)
        ending.set_result(None)
        await asyncio.sleep(0.01)
        return abandoned, while_ending, _slot_is_free(state.quotas)

    abandoned, free_while_ending, free_after = asyncio.run(leave_then_end())
    assert abandoned
    assert not free_while_ending
    assert free_after
    assert _audit_statuses(state, tmp_path) == ["cancelled"]


def test_a_stream_read_to_its_reply_is_audited_once_with_the_reply_status(
    tmp_path: Path,
) -> None:
    state = _service_state(tmp_path)

    async def read_to_the_end() -> list[object]:
        ending = asyncio.get_running_loop().create_future()
        ending.set_result(None)
        record = SessionRecord(
            "session-1",
            Caller("alice"),
            StandInSession(ending),  # type: ignore[arg-type]
        )
        executor = _executor(state)
        stream = await executor._stream(Caller("alice"), record, "python", "x = 1", None)
        with patch("service.executor.build_reply", lambda outcome, *_: outcome.reply.status):
            items = [item async for item in stream.items(idle_s=5)]
        stream.close()
        return items

    assert asyncio.run(read_to_the_end()) == ["error"]
    assert _audit_statuses(state, tmp_path) == ["error"]
