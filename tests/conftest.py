"""Shared fixtures: a running zygote with the test policy, and sessions from it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox import Session, ZygoteClient, load_policy, workspaces
from sandbox.policy import Policy
from tests.zygotes import stop_zygote

ROOT = Path(__file__).resolve().parent.parent
TEST_POLICY = ROOT / "tests" / "policies" / "test.toml"


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(TEST_POLICY)


@pytest.fixture(scope="session")
def zygote(policy: Policy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZygoteClient]:
    client = ZygoteClient(policy, str(tmp_path_factory.mktemp("state")))
    client.start()
    yield client
    stop_zygote(client)


@pytest.fixture
async def session(zygote: ZygoteClient) -> AsyncIterator[Session]:
    started = await Session.start(zygote)
    yield started
    await started.close()
    workspaces.remove(started.workspace)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
