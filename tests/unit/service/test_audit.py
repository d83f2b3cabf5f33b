"""The audit log: a line per run, in order, with the code's hash and never the code,
written after the step that recorded it, and nothing left unwritten at close."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

import pytest

from service.audit import AuditLog


def _record(audit: AuditLog, session_id: str, text: str = "secret = 42") -> None:
    audit.record(
        tenant="alice",
        session_id=session_id,
        kind="python",
        text=text,
        status="ok",
        duration_ms=1.23456,
        limit=None,
        policy="digest",
    )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_outside_an_event_loop_each_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))
    _record(audit, "s1")
    [entry] = _lines(path)
    assert entry["session"] == "s1"
    assert entry["sha256"] == hashlib.sha256(b"secret = 42").hexdigest()
    assert entry["duration_ms"] == 1.235
    assert str(entry["time"]).endswith("Z")
    assert "secret" not in path.read_text()
    audit.close()


def test_lines_of_one_step_are_written_after_it_in_the_order_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))

    async def step() -> int:
        for index in range(5):
            _record(audit, f"s{index}")
        written_during_the_step = len(path.read_text())
        await asyncio.sleep(0)  # the loop turns once
        await asyncio.sleep(0)
        return written_during_the_step

    assert asyncio.run(step()) == 0
    assert [entry["session"] for entry in _lines(path)] == [f"s{i}" for i in range(5)]
    audit.close()


def test_close_writes_what_a_stopped_loop_left_pending(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))

    async def record_and_leave() -> None:
        _record(audit, "last")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(record_and_leave())
    loop.close()  # the scheduled write never ran
    audit.close()
    assert [entry["session"] for entry in _lines(path)] == ["last"]


def test_a_loop_after_a_closed_one_still_gets_its_lines_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path))

    async def record(session_id: str) -> None:
        _record(audit, session_id)

    first = asyncio.new_event_loop()
    first.run_until_complete(record("first"))
    first.close()

    async def record_and_turn() -> None:
        _record(audit, "second")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(record_and_turn())
    assert [entry["session"] for entry in _lines(path)] == ["first", "second"]
    audit.close()


def test_a_line_the_stream_cannot_encode_as_is_is_escaped_and_loses_no_other_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stdout may be ASCII: a tenant or session name outside it must not fail the write of
    # the lines recorded in the same step, other tenants' among them.
    path = tmp_path / "audit.jsonl"
    stdout = open(path, "w", encoding="ascii")  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stdout", stdout)
    audit = AuditLog("-")

    async def step() -> None:
        _record(audit, "s1")
        audit.record(
            tenant="équipe",
            session_id="s2",
            kind="python",
            text="x",
            status="ok",
            duration_ms=1.0,
            limit=None,
            policy="digest",
        )
        _record(audit, "s3")
        await asyncio.sleep(0)

    asyncio.run(step())
    stdout.close()
    assert [(entry["tenant"], entry["session"]) for entry in _lines(path)] == [
        ("alice", "s1"),
        ("équipe", "s2"),
        ("alice", "s3"),
    ]
