"""Fixtures shared by the attack suite; its plain helpers are in harness.py."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from sandbox import ZygoteClient

# Before the first import of harness: its asserts report like a test's own.
pytest.register_assert_rewrite("tests.security.harness")

from tests.security.harness import Neighbour, open_session, worker_of  # noqa: E402


@pytest.fixture
async def neighbour(zygote: ZygoteClient) -> AsyncIterator[Neighbour]:
    """A session started before the attacker's, holding a value it must keep."""
    async with open_session(zygote) as started:
        token = secrets.token_hex(8)
        outcome = await started.run_python(f"kept = {token!r}")
        assert outcome.reply.status == "ok"
        yield Neighbour(started, worker_of(started).pid, token)
