"""A run whose caller is cancelled (an MCP client's cancellation) is counted and audited,
and frees its tenant's run slot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.audit import AuditLog
from service.metrics import Metrics
from service.quotas import TenantQuotas
from service.registry import SessionRecord
from service.routes import execution


class CancelledMidRun:
    """Stands in for a Session whose run is cancelled while the worker has it."""

    policy_digest = "digest"

    async def run_python(self, code: str, timeout: float | None) -> None:
        raise asyncio.CancelledError


def test_a_cancelled_run_is_counted_audited_and_gives_its_slot_back(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    state = SimpleNamespace(
        quotas=TenantQuotas("1000/second", runs_at_once=1),
        metrics=Metrics(),
        audit=AuditLog(str(audit_path)),
    )
    request = SimpleNamespace(app=SimpleNamespace(state=state))
    record = SessionRecord("session-1", "alice", CancelledMidRun())  # type: ignore[arg-type]

    async def call() -> None:
        await execution._run(request, "alice", record, "python", "secret = 1", None)  # type: ignore[arg-type]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
    state.audit.close()
    [line] = [json.loads(text) for text in audit_path.read_text().splitlines()]
    assert (line["tenant"], line["session"], line["status"]) == ("alice", "session-1", "cancelled")
    rendered = state.metrics.render().decode()
    assert 'codesherpa_runs_total{kind="python",status="cancelled"} 1.0' in rendered
    with state.quotas.run_slot("alice"):  # the one slot is free again
        pass
