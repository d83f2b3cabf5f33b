"""A real service process on loopback, started once per module."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api.server import Server, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture
def session(client: httpx.Client) -> Iterator[str]:
    """A session of its own (a workspace to look at), deleted after: the tenant may hold 4."""
    response = client.post("/sessions")
    assert response.status_code == 201, response.text
    session_id = str(response.json()["session_id"])
    yield session_id
    client.delete(f"/sessions/{session_id}")
