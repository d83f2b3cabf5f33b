"""A run whose caller is cancelled (an MCP client's cancellation) is counted and audited,
and holds its tenant's run slot until the session has ended it.  A call cancelled while
still queued for its session ran nothing, and leaves no trace."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandbox.session import AbandonedRunHook
from service.audit import AuditLog
from service.callers import Caller
from service.errors import ApiError
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRecord
from service.routes import execution


class CancelledSession:
    """Stands in for a Session whose caller is cancelled.

    With ``ending`` set, the run had started and the session ends it, as Session._abandon
    does; without, the caller was cancelled while queued for the session.
    """

    policy_digest = "digest"

    def __init__(self, ending: asyncio.Future[None] | None) -> None:
        self.ending = ending

    async def run_python(
        self, code: str, timeout: float | None, on_abandoned: AbandonedRunHook | None
    ) -> None:
        if self.ending is not None and on_abandoned is not None:
            on_abandoned(self.ending)
        raise asyncio.CancelledError


def _service_state(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(
        quotas=TenantQuotas("1000/second", runs_at_once=1),
        metrics=Metrics(),
        audit=AuditLog(str(tmp_path / "audit.jsonl")),
    )


async def _cancelled_call(state: SimpleNamespace, session: CancelledSession) -> None:
    request = SimpleNamespace(app=SimpleNamespace(state=state))
    record = SessionRecord("session-1", Caller("alice"), session)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await execution._run(request, "alice", record, "python", "secret = 1", None)  # type: ignore[arg-type]


def _slot_is_free(quotas: TenantQuotas) -> bool:
    try:
        with quotas.run_slot("alice"):
            return True
    except ApiError:
        return False


def test_a_cancelled_run_is_counted_audited_and_keeps_its_slot_until_it_ends(
    tmp_path: Path,
) -> None:
    state = _service_state(tmp_path)

    async def cancel_then_end() -> tuple[bool, bool]:
        ending = asyncio.get_running_loop().create_future()
        await _cancelled_call(state, CancelledSession(ending))
        while_ending = _slot_is_free(state.quotas)
        ending.set_result(None)
        await asyncio.sleep(0)  # the done callbacks run
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
    asyncio.run(_cancelled_call(state, CancelledSession(None)))
    assert _slot_is_free(state.quotas)
    state.audit.close()
    assert (tmp_path / "audit.jsonl").read_text() == ""
    assert 'status="cancelled"' not in state.metrics.render().decode()
