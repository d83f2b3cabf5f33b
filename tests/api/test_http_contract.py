"""The HTTP contract of docs/api.md, through a real service process."""

from __future__ import annotations

import json
import threading

import httpx
import psutil
import pytest

from tests.api.server import ADMIN, Server


def test_seed_pandas_example_returns_df_head(client: httpx.Client) -> None:
    reply = client.post(
        "/repl",
        json={
            "code": [
                "import pandas as pd",
                "df = pd.DataFrame({'a': [1, 2], 'b': [3, 4]})",
                "df.head()",
            ]
        },
    ).json()
    assert reply["status"] == "ok", reply
    assert "a  b" in reply["result"]
    for field in (
        "result",
        "error",
        "suggestion",
        "session_id",
        "status",
        "execution_count",
        "truncated",
        "duration_ms",
    ):
        assert field in reply
    assert reply["error"] is None


def test_implicit_session_is_keyed_by_conversation(client: httpx.Client) -> None:
    first = client.post(
        "/repl", json={"code": "v = 'A'"}, headers={"openai-conversation-id": "conv-a"}
    )
    client.post("/repl", json={"code": "v = 'B'"}, headers={"openai-conversation-id": "conv-b"})
    again = client.post(
        "/repl", json={"code": "v"}, headers={"openai-conversation-id": "conv-a"}
    ).json()
    assert again["result"] == "'A'"
    assert again["session_id"] == first.json()["session_id"]


def test_an_overlong_conversation_id_is_refused_naming_the_header(client: httpx.Client) -> None:
    before = {entry["session_id"] for entry in client.get("/sessions").json()}
    reply = client.post(
        "/repl",
        json={"code": "marker = 1"},
        headers={"openai-conversation-id": "c" * 257},
    )
    assert reply.status_code == 422
    assert "openai-conversation-id" in reply.json()["error"]
    # Refused before anything ran: no implicit session was made for it.
    assert {entry["session_id"] for entry in client.get("/sessions").json()} == before


def test_explicit_session_lifecycle(client: httpx.Client) -> None:
    created = client.post("/sessions")
    assert created.status_code == 201
    session_id = created.json()["session_id"]
    assert len(session_id) >= 22
    client.post("/repl", json={"code": "n = 5", "session_id": session_id})
    info = client.get(f"/sessions/{session_id}").json()
    assert info["alive"]
    assert info["execution_count"] == 1
    assert any(s["session_id"] == session_id for s in client.get("/sessions").json())
    restarted = client.post(f"/sessions/{session_id}/restart").json()
    assert restarted["execution_count"] == 0
    gone = client.post("/repl", json={"code": "n", "session_id": session_id}).json()
    assert gone["status"] == "error"
    assert "NameError" in gone["error"]
    assert client.delete(f"/sessions/{session_id}").status_code == 204
    after = client.post("/repl", json={"code": "1", "session_id": session_id})
    assert after.status_code == 410
    assert set(after.json()) == {"error", "suggestion", "code"}


def test_unknown_session_is_404_with_json_error(client: httpx.Client) -> None:
    reply = client.post("/repl", json={"code": "1", "session_id": "nope"})
    assert reply.status_code == 404
    assert reply.json()["error"] == "no such session"


def test_command_sees_repl_files_and_denials_name_the_rule(client: httpx.Client) -> None:
    session_id = client.post("/sessions").json()["session_id"]
    client.post(
        "/repl", json={"code": "open('notes.txt','w').write('hello\\n')", "session_id": session_id}
    )
    listed = client.post(
        "/command", json={"command": "cat notes.txt", "session_id": session_id}
    ).json()
    assert listed["status"] == "ok"
    assert listed["result"] == "hello\n"
    assert listed["exit_code"] == 0
    denied = client.post(
        "/command", json={"command": "bash -c id", "session_id": session_id}
    ).json()
    assert denied["status"] == "denied"
    assert "allowlist" in denied["error"]
    assert "ls" in denied["suggestion"]
    client.delete(f"/sessions/{session_id}")


def test_the_short_path_answers_as_the_fastapi_routes_do(client: httpx.Client) -> None:
    # With application/json a valid request takes execution_fast_path; with another JSON
    # media type, FastAPI's route (which reads any */*+json body as JSON).
    def exchange(headers: dict[str, str]) -> list[tuple[int, dict[str, object]]]:
        session_id = client.post("/sessions").json()["session_id"]
        requests = [
            ("/repl", {"code": ["print('out')", "6 * 7"]}),
            ("/repl", {"code": "1 / 0"}),
            ("/command", {"command": "ls"}),
            ("/command", {"command": "bash -c id"}),
        ]
        replies = []
        for path, fields in requests:
            body = json.dumps({**fields, "session_id": session_id}).encode()
            reply = client.post(path, content=body, headers=headers)
            answer = reply.json()
            answer.pop("duration_ms")
            answer.pop("session_id")
            replies.append((reply.status_code, answer))
        client.delete(f"/sessions/{session_id}")
        return replies

    short = exchange({"Content-Type": "application/json; charset=utf-8"})
    assert short == exchange({"Content-Type": "application/vnd.api+json"})
    assert [answer["status"] for _, answer in short] == ["ok", "error", "ok", "denied"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "1", "surprise": True}, "surprise"),
        ({"code": 5}, "code"),
        ({}, "code"),
        ({"code": "1", "timeout": "soon"}, "timeout"),
    ],
)
def test_bad_requests_get_422_naming_the_field(
    client: httpx.Client, body: dict[str, object], field: str
) -> None:
    reply = client.post("/repl", json=body)
    assert reply.status_code == 422
    assert field in reply.json()["error"]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/repl", b'{"code": "x = \'\\ud800\'"}', "code"),
        ("/repl", b'{"code": ["a = 1", "b = \'\\udc80\'"]}', "code"),
        ("/command", b'{"command": "echo \\ud800"}', "command"),
    ],
)
def test_a_lone_surrogate_in_the_code_is_refused_naming_the_field(
    client: httpx.Client, route: str, body: bytes, field: str
) -> None:
    # JSON lets an escaped lone surrogate through; it is not text a worker can be given.
    reply = client.post(route, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert field in reply.json()["error"]
    assert client.post("/repl", json={"code": "1 + 1"}).json()["result"] == "2"


def test_malformed_and_deeply_nested_json_are_4xx(client: httpx.Client) -> None:
    broken = client.post(
        "/repl", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= broken.status_code < 500
    deep = "[" * 100_000 + "]" * 100_000
    nested = client.post(
        "/repl", content=f'{{"code": {deep}}}', headers={"content-type": "application/json"}
    )
    assert 400 <= nested.status_code < 500
    assert "Traceback" not in nested.text


def test_huge_body_is_413(client: httpx.Client) -> None:
    reply = client.post("/repl", json={"code": "x" * (3 * 1024 * 1024)})
    assert reply.status_code == 413
    assert "error" in reply.json()


def test_timeout_keeps_variables_over_http(client: httpx.Client) -> None:
    session_id = client.post("/sessions").json()["session_id"]
    client.post("/repl", json={"code": "kept = 99", "session_id": session_id})
    timed_out = client.post(
        "/repl", json={"code": "while True: pass", "session_id": session_id, "timeout": 1}
    ).json()
    assert timed_out["status"] == "timeout"
    assert (
        "state was kept" in timed_out["suggestion"]
        or "variables were kept" in timed_out["suggestion"]
    )
    assert (
        client.post("/repl", json={"code": "kept", "session_id": session_id}).json()["result"]
        == "99"
    )
    client.delete(f"/sessions/{session_id}")


def test_reply_never_exceeds_the_reply_cap_even_with_escaped_output(client: httpx.Client) -> None:
    code = (
        "import os, sys\n"
        "os.write(1, bytes(range(32)) * 5000)\n"
        "print('\\x00' * 100000, file=sys.stderr)\n"
        "'\\x01' * 100000"
    )
    reply = client.post("/repl", json={"code": code})
    assert len(reply.content.decode()) <= 20_000
    assert reply.json()["truncated"] is True


def test_reply_never_exceeds_the_reply_cap_with_long_file_names(client: httpx.Client) -> None:
    # A hundred changed files whose paths are near the 4096-byte limit.
    code = (
        "import os\n"
        "deep = '/'.join(['d' * 250] * 15)\n"
        "os.makedirs(deep)\n"
        "for i in range(100):\n"
        "    open(f'{deep}/{i:03}', 'w').close()\n"
        "'done'"
    )
    session_id = client.post("/sessions").json()["session_id"]
    reply = client.post("/repl", json={"code": code, "session_id": session_id})
    client.delete(f"/sessions/{session_id}")
    assert len(reply.content.decode()) <= 20_000
    body = reply.json()
    assert body["result"] == "'done'"
    assert body["truncated"] is True
    assert len(body["files"]) < 100


def test_service_memory_stays_flat_under_an_output_flood(
    server: Server, client: httpx.Client
) -> None:
    service = psutil.Process(server.process.pid)
    flood = {"code": "import os\nwhile True:\n    os.write(1, b'y' * 65536)", "timeout": 2}
    client.post("/repl", json=flood)
    baseline = service.memory_info().rss
    for _ in range(3):
        reply = client.post("/repl", json=flood).json()
        assert reply["truncated"]
    assert service.memory_info().rss - baseline < 20 * 1024 * 1024


def test_concurrent_requests_to_one_session_are_serialised(
    client: httpx.Client, server: Server
) -> None:
    session_id = client.post("/sessions").json()["session_id"]
    client.post("/repl", json={"code": "counter = 0", "session_id": session_id})
    results: list[int] = []

    def bump() -> None:
        with server.client() as own:
            code = "import time\nc = counter\ntime.sleep(0.05)\ncounter = c + 1\ncounter"
            reply = own.post("/repl", json={"code": code, "session_id": session_id})
            if reply.status_code == 200:
                results.append(int(reply.json()["result"]))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = client.post("/repl", json={"code": "counter", "session_id": session_id}).json()
    assert int(final["result"]) == len(results)
    assert sorted(results) == list(range(1, len(results) + 1))


def test_livez_and_readyz_report_the_sandbox(client: httpx.Client) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz", headers=ADMIN).json()
    assert ready["ready"] is True
    assert set(ready["isolation"]) >= {"namespaces", "seccomp", "landlock", "cgroup"}
    assert json.dumps(ready)
