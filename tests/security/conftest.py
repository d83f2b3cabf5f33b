"""Fixtures shared by the attack suite; its plain helpers are in harness.py."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from sandbox import Policy, ZygoteClient, workspaces
from tests.zygotes import stop_zygote

# Before the first import of harness: its asserts report like a test's own.
pytest.register_assert_rewrite("tests.security.harness")

from tests.security.harness import (  # noqa: E402
    VISIBLE_TMP,
    Neighbour,
    open_session,
    worker_of,
)


@pytest.fixture
async def neighbour(zygote: ZygoteClient) -> AsyncIterator[Neighbour]:
    """A session started before the attacker's, holding a value it must keep."""
    async with open_session(zygote) as started:
        token = secrets.token_hex(8)
        outcome = await started.run_python(f"kept = {token!r}")
        assert outcome.reply.status == "ok"
        yield Neighbour(started, worker_of(started).pid, token)


@pytest.fixture(scope="module")
def visible_zygote(policy: Policy) -> Iterator[ZygoteClient]:
    """A zygote whose state directory lies where a worker's view shows it (no tmpfs of
    the worker covers it), unlike the ``zygote`` fixture's, under /tmp."""
    state_dir = tempfile.mkdtemp(prefix="codesherpa-state-", dir=VISIBLE_TMP)
    client = ZygoteClient(policy, state_dir)
    client.start()
    try:
        yield client
    finally:
        stop_zygote(client)
        workspaces.remove_all(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
