"""Three real replicas behind Debian's nginx, routed by the shipped deploy/nginx config.

What holds: every request of a session reaches the replica that holds it, whichever
session key the client uses (X-Session-Id, openai-conversation-id, or only its bearer
token); sessions spread over the replicas; a signed link reaches the replica that signed
it; a session asked of the wrong replica gets a clear 404; an event stream is not held
back; and killing one replica loses only that replica's sessions while the others keep
answering.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from tests.deploy.cluster import TOKENS, Cluster, running_cluster

pytestmark = pytest.mark.timeout(180)

RUNS = 20
# With three replicas a new key lands on a given one with probability about 1/3 (the
# ring's shares are uneven by a few percent): this many keys all miss one replica about
# once in a million runs.
SPREAD_TRIES = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def routing_key() -> str:
    """What a client picks before it creates a session: random, like a session id."""
    return secrets.token_urlsafe(24)


def create(http: httpx.Client, key: str) -> str:
    reply = http.post("/sessions", headers={"X-Session-Id": key})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["session_id"])


def run(http: httpx.Client, key: str, session_id: str, code: str | list[str]) -> dict[str, Any]:
    reply = http.post(
        "/repl", json={"code": code, "session_id": session_id}, headers={"X-Session-Id": key}
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["status"] == "ok", body
    return body


def spread_sessions(cluster: Cluster, tenants: list[str]) -> dict[str, tuple[str, str, str]]:
    """New sessions with fresh keys until every live replica holds one.

    Returns {session_id: (tenant, key, replica)}; tenants take turns so no tenant nears
    its per-replica cap.
    """
    live = set(cluster.replicas) - cluster.killed
    created: dict[str, tuple[str, str, str]] = {}
    for attempt in range(SPREAD_TRIES):
        tenant = tenants[attempt % len(tenants)]
        key = routing_key()
        with cluster.client(TOKENS[tenant]) as http:
            session_id = create(http, key)
        replica = cluster.holder(tenant, session_id)
        assert replica is not None, f"no replica holds {session_id}"
        created[session_id] = (tenant, key, replica)
        if {where for _, _, where in created.values()} == live:
            break
    return created


def delete_all(cluster: Cluster, created: dict[str, tuple[str, str, str]]) -> None:
    for session_id, (tenant, key, _) in created.items():
        with cluster.client(TOKENS[tenant]) as http:
            http.delete(f"/sessions/{session_id}", headers={"X-Session-Id": key})


def test_every_request_of_a_session_reaches_the_replica_that_holds_it(cluster: Cluster) -> None:
    key = routing_key()
    with cluster.client(TOKENS["alice"]) as http:
        session_id = create(http, key)
        run(http, key, session_id, "count = 0")
        for expected in range(1, RUNS + 1):
            body = run(http, key, session_id, ["count += 1", "count"])
            assert body["result"] == str(expected), body
            assert body["session_id"] == session_id
        # Routes with the session id in the path follow the same key.
        command = http.post(
            "/command",
            json={"command": "echo kept > note.txt", "session_id": session_id},
            headers={"X-Session-Id": key},
        )
        assert command.status_code == 200, command.text
        files = http.get(f"/sessions/{session_id}/files", headers={"X-Session-Id": key})
        assert files.status_code == 200, files.text
        assert "note.txt" in files.text
        info = http.get(f"/sessions/{session_id}", headers={"X-Session-Id": key})
        assert info.status_code == 200, info.text
        assert info.json()["execution_count"] == RUNS + 1
    assert cluster.holder("alice", session_id) is not None


def test_a_conversation_keeps_its_implicit_session_on_one_replica(cluster: Cluster) -> None:
    conversation = {"openai-conversation-id": f"conversation-{routing_key()}"}
    with cluster.client(TOKENS["alice"]) as http:
        first = http.post("/repl", json={"code": "total = 0"}, headers=conversation)
        assert first.status_code == 200, first.text
        session_id = first.json()["session_id"]
        for expected in range(1, 11):
            reply = http.post("/repl", json={"code": ["total += 1", "total"]}, headers=conversation)
            assert reply.status_code == 200, reply.text
            assert reply.json()["result"] == str(expected)
            assert reply.json()["session_id"] == session_id
    assert cluster.holder("alice", session_id, conversation) is not None


def test_a_client_that_sends_only_its_token_keeps_all_its_sessions_on_one_replica(
    cluster: Cluster,
) -> None:
    with cluster.client(TOKENS["bob"]) as http:
        sessions = []
        for _ in range(2):
            created = http.post("/sessions")
            assert created.status_code == 201, created.text
            sessions.append(created.json()["session_id"])
        for session_id in sessions:
            for expected in range(1, 4):
                reply = http.post(
                    "/repl",
                    json={"code": ["x = globals().get('x', 0) + 1", "x"], "session_id": session_id},
                )
                assert reply.status_code == 200, reply.text
                assert reply.json()["result"] == str(expected)
    assert len({cluster.holder("bob", session_id) for session_id in sessions}) == 1


def test_an_mcp_client_keeps_its_session_through_the_router(cluster: Cluster) -> None:
    """An MCP client sends only its bearer token (and Mcp-Session-Id, which the router
    ignores): the token pins its MCP session and CodeSherpa session to one replica."""

    async def main() -> list[str]:
        headers = {"Authorization": f"Bearer {TOKENS['bob']}"}
        results = []
        async with (
            httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=120)) as http,
            streamable_http_client(f"{cluster.router.url}/mcp", http_client=http) as (
                read,
                write,
                _,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await session.call_tool("run_python", {"code": "kept = 20"})
            for _ in range(5):
                reply = await session.call_tool("run_python", {"code": "kept += 1; kept"})
                assert not reply.isError, reply.content
                first = reply.content[0]
                assert isinstance(first, TextContent)
                results.append(json.loads(first.text)["result"])
        return results

    assert anyio.run(main) == ["21", "22", "23", "24", "25"]


def test_an_event_stream_passes_the_router_as_it_is_produced(cluster: Cluster) -> None:
    key = routing_key()
    code = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')"
    with cluster.client(TOKENS["alice"]) as http:
        session_id = create(http, key)
        body = {"code": code, "session_id": session_id, "timeout": 10}
        headers = {"X-Session-Id": key, "Accept": "text/event-stream"}
        arrivals: list[tuple[float, str]] = []
        with http.stream("POST", "/repl", json=body, headers=headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("event: "):
                    arrivals.append((time.monotonic(), line.removeprefix("event: ")))
    first_output = next(at for at, name in arrivals if name == "stdout")
    done = next(at for at, name in arrivals if name == "done")
    assert done - first_output > 1.5  # not held back by the router until the run ended


def test_sessions_spread_across_the_replicas(cluster: Cluster) -> None:
    created = spread_sessions(cluster, ["carol", "alice"])
    where = Counter(replica for _, _, replica in created.values())
    assert set(where) == set(cluster.replicas), f"sessions per replica: {dict(where)}"
    # Each answers through the router, at the replica that created it; then goes away.
    for session_id, (tenant, key, _) in created.items():
        with cluster.client(TOKENS[tenant]) as http:
            assert (
                http.get(f"/sessions/{session_id}", headers={"X-Session-Id": key}).status_code
                == 200
            )
            deleted = http.delete(f"/sessions/{session_id}", headers={"X-Session-Id": key})
            assert deleted.status_code == 204, deleted.text
            assert cluster.holder(tenant, session_id) is None


def test_a_signed_link_reaches_the_replica_that_signed_it(cluster: Cluster) -> None:
    created = spread_sessions(cluster, ["carol"])
    seen = set()
    for session_id, (tenant, key, replica) in created.items():
        if replica in seen:
            continue
        seen.add(replica)
        with cluster.client(TOKENS[tenant]) as http:
            body = run(http, key, session_id, f"open('hello.txt', 'w').write('from {replica}')")
        (link,) = [entry["url"] for entry in body["files"] if entry["name"] == "hello.txt"]
        assert link.startswith(f"{cluster.router.url}/r/{replica}/files/{session_id}/")
        # No bearer token, no session key: the link alone.
        fetched = httpx.get(link, timeout=30)
        assert fetched.status_code == 200, fetched.text
        assert fetched.text == f"from {replica}"
        tampered = httpx.get(link.replace("/hello.txt?", "/other.txt?"), timeout=30)
        assert tampered.status_code == 404
        assert tampered.json()["error"]
    delete_all(cluster, created)
    assert seen == set(cluster.replicas)
    # The router's log keeps neither signatures nor tokens.
    log = cluster.router.access_log()
    assert "/files/" in log
    assert "signature" not in log
    assert not any(token in log for token in TOKENS.values())


def test_a_replica_base_url_routes_like_the_router_url(cluster: Cluster) -> None:
    """Each replica's public URL (router URL + /r/NAME) is what its OpenAPI document
    names as the server: any route under it is routed by session key, like without it."""
    with cluster.client(TOKENS["alice"]) as http:
        document = http.get("/openapi.json")
        assert document.status_code == 200, document.text
        (server,) = document.json()["servers"]
        base = server["url"]
        assert re.fullmatch(re.escape(cluster.router.url) + r"/r/codesherpa-\d", base), base
        key = routing_key()
        created = http.post(f"{base}/sessions", headers={"X-Session-Id": key})
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        for expected in range(1, 6):
            reply = http.post(
                f"{base}/repl",
                json={"code": ["n = globals().get('n', 0) + 1", "n"], "session_id": session_id},
                headers={"X-Session-Id": key},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["result"] == str(expected)
        # The same session through the plain router URL: the key decides, not the prefix.
        assert run(http, key, session_id, "n")["result"] == "5"
        http.delete(f"/sessions/{session_id}", headers={"X-Session-Id": key})
        unknown = http.get(f"{cluster.router.url}/r/")
        assert unknown.status_code == 404
        assert unknown.json()["error"]


def test_a_session_asked_of_the_wrong_replica_gets_a_clear_404(cluster: Cluster) -> None:
    key = routing_key()
    with cluster.client(TOKENS["alice"]) as http:
        session_id = create(http, key)
        run(http, key, session_id, "secret_state = 42")
        # As after a rescale: the same session, a key that now hashes to another replica.
        for _ in range(50):
            moved = {"X-Session-Id": routing_key()}
            reply = http.post(
                "/repl", json={"code": "secret_state", "session_id": session_id}, headers=moved
            )
            if reply.status_code != 200:
                break
        else:
            pytest.fail("no key routed the session to another replica")
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"] == "no such session"
        assert "Start a new session" in reply.json()["suggestion"]
        # Never silently another session's state: the right replica still has it.
        assert run(http, key, session_id, "secret_state")["result"] == "42"
        http.delete(f"/sessions/{session_id}", headers={"X-Session-Id": key})


def test_killing_a_replica_loses_only_its_sessions(tmp_path: Any) -> None:
    with running_cluster(tmp_path) as cluster:
        created = spread_sessions(cluster, ["alice", "carol"])
        links = {}
        for session_id, (tenant, key, _) in created.items():
            with cluster.client(TOKENS[tenant]) as http:
                body = run(
                    http,
                    key,
                    session_id,
                    [f"mark = {session_id!r}", "open('f.txt', 'w').write(mark)"],
                )
                links[session_id] = body["files"][0]["url"]
        victim = next(replica for _, _, replica in created.values())
        cluster.kill(victim)

        for session_id, (tenant, key, replica) in created.items():
            with cluster.client(TOKENS[tenant]) as http:
                reply = http.post(
                    "/repl",
                    json={"code": "mark", "session_id": session_id},
                    headers={"X-Session-Id": key},
                )
            if replica != victim:
                # The other replicas keep answering, with their sessions' state.
                assert reply.status_code == 200, reply.text
                assert reply.json()["result"] == repr(session_id)
                assert httpx.get(links[session_id], timeout=30).status_code == 200
                continue
            # The victim's sessions are gone, and say so: the next replica on the ring
            # answers 404, or nginx answers 502 in JSON when it has no replica to try.
            assert reply.status_code in (404, 410, 502), reply.text
            assert reply.json()["error"]
            assert "new session" in reply.json()["suggestion"]
            link = httpx.get(links[session_id], timeout=30)
            assert link.status_code == 502, link.text
            assert "new session" in link.json()["suggestion"]

        # New sessions still start, whatever replica their key would have picked.
        for _ in range(6):
            key = routing_key()
            with cluster.client(TOKENS["carol"]) as http:
                session_id = create(http, key)
                assert run(http, key, session_id, "1 + 1")["result"] == "2"
            assert cluster.holder("carol", session_id) not in (None, victim)
