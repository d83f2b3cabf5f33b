"""HTTP abuse against a real service process (the attack class "HTTP abuse: huge
bodies, deep JSON, wrong types, path traversal, session-id guessing, cross-tenant
access, floods of sessions and requests", and guarantee 2: the service keeps
answering, never crashes, never shows a traceback).

One service runs for the module on loopback with two tenants, alice and bob.  Every
error answer must be JSON ``{error, suggestion}`` without a Python traceback, and after
each abuse the service must still answer ``/readyz``.  The file routes are attacked as
the filesystem class asks: traversal in the path, and symlinks a session planted read
back (and written through) by the root service, with a host canary that must neither
leak nor change.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server import Server, start_server, stop_server

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

ALICE = "alice-token-" + secrets.token_hex(8)
BOB = "bob-token-" + secrets.token_hex(8)
MAX_PER_TENANT = 4  # tests/policies/test.toml
MAX_BODY_BYTES = 2 * 1024 * 1024  # the service's default cap
TRACEBACK_SIGNS = ("Traceback", 'File "/', "site-packages", '.py", line')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("abuse"), env={"CODESHERPA_TOKENS": f"alice:{ALICE},bob:{BOB}"}
    )
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def alice(server: Server) -> Iterator[httpx.Client]:
    with server.client(ALICE) as client:
        yield client
        _delete_all_sessions(client)


@pytest.fixture
def bob(server: Server) -> Iterator[httpx.Client]:
    with server.client(BOB) as client:
        yield client
        _delete_all_sessions(client)


def _delete_all_sessions(client: httpx.Client) -> None:
    listed = client.get("/sessions")
    if listed.status_code == 200:
        for session in listed.json():
            client.delete(f"/sessions/{session['session_id']}")


def assert_clean_error(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A request error: the expected status, a JSON {error, suggestion}, no traceback."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    for sign in TRACEBACK_SIGNS:
        assert sign not in response.text, response.text[:2000]
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "suggestion", "code"}, body
    assert isinstance(body["code"], str)
    assert body["code"]
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["suggestion"] is None or isinstance(body["suggestion"], str)
    return body


def assert_still_serving(server: Server) -> None:
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    assert server.process.poll() is None, "the service process died"


# --- bodies -----------------------------------------------------------------------------


def test_huge_declared_body_is_413(alice: httpx.Client, server: Server) -> None:
    reply = alice.post("/repl", json={"code": "x" * (MAX_BODY_BYTES + 1024)})
    assert_clean_error(reply, 413)
    assert_still_serving(server)


def test_huge_streamed_body_without_length_is_413(alice: httpx.Client, server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"code": "'
        for _ in range(64):
            yield b"x" * 65536  # 4 MiB in all, chunked: no Content-Length to refuse early
        yield b'"}'

    reply = alice.post("/repl", content=chunks(), headers={"content-type": "application/json"})
    assert_clean_error(reply, 413)
    assert_still_serving(server)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep-array"),
        pytest.param('{"a":' * 50_000 + "1" + "}" * 50_000, id="deep-object"),
        pytest.param('{"code": ' + "[" * 100_000 + "]" * 100_000 + "}", id="deep-field"),
        pytest.param('{"code": "1", "timeout": ' + "[" * 50_000 + "]" * 50_000 + "}", id="deep-2"),
    ],
)
def test_deeply_nested_json_is_a_4xx_without_traceback(
    alice: httpx.Client, server: Server, body: str
) -> None:
    reply = alice.post("/repl", content=body, headers={"content-type": "application/json"})
    assert_clean_error(reply, 400, 413, 422)
    assert_still_serving(server)


def test_malformed_json_is_a_4xx_without_traceback(alice: httpx.Client) -> None:
    for body in (b"{not json", b"\xff\xfe\x00", b'{"code": "1"', b"null", b"[]", b'"code"'):
        reply = alice.post("/repl", content=body, headers={"content-type": "application/json"})
        assert_clean_error(reply, 400, 422)


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/repl", {"code": 5}, "code"),
        ("/repl", {"code": {"nested": "dict"}}, "code"),
        ("/repl", {"code": "1", "timeout": "soon"}, "timeout"),
        ("/repl", {"code": "1", "timeout": [1]}, "timeout"),
        ("/repl", {"code": "1", "session_id": 123}, "session_id"),
        ("/repl", {"code": "1", "session_id": ["a"]}, "session_id"),
        ("/repl", {"code": "1", "__proto__": {}}, "__proto__"),
        ("/command", {"command": ["ls", "-l"]}, "command"),
        ("/command", {"command": None}, "command"),
        ("/command", {"command": "ls", "timeout": {"$gt": 0}}, "timeout"),
        ("/command", {"cmd": "ls"}, "cmd"),
    ],
)
def test_wrong_types_are_422_naming_the_field(
    alice: httpx.Client, route: str, body: dict[str, Any], field: str
) -> None:
    reply = alice.post(route, json=body)
    error = assert_clean_error(reply, 422)["error"]
    assert field in error, error


# --- identity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer wrong-token-0123456789",
        f"Basic {ALICE}",
        f"Bearer {ALICE}x",
        f"Bearer {ALICE[:-1]}",
        "Bearer " + "A" * 8_000,
    ],
)
def test_missing_or_wrong_tokens_are_401(server: Server, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        for method, path in (("GET", "/sessions"), ("POST", "/sessions"), ("POST", "/repl")):
            reply = client.request(method, path, json={"code": "1"})
            assert_clean_error(reply, 401)
    assert_still_serving(server)


@pytest.mark.parametrize("header", ["Authorization", "openai-conversation-id", "X-Filler"])
def test_oversized_headers_are_refused_and_the_service_survives(
    server: Server, header: str
) -> None:
    value = ("Bearer " + ALICE if header == "Authorization" else "") + "A" * 100_000
    with httpx.Client(base_url=server.url, headers={header: value}, timeout=30) as client:
        try:
            reply = client.post("/repl", json={"code": "1"})
        except httpx.TransportError:
            pass  # the HTTP parser may drop the connection outright: fine
        else:
            # Either the HTTP parser (plain text 400/431) or the app (JSON 4xx) refuses.
            assert 400 <= reply.status_code < 500, reply.status_code
            assert "Traceback" not in reply.text
    assert_still_serving(server)


TRAVERSALS = [
    "..%2f..%2fetc",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%5c..%5cetc",
    "%252e%252e%252fetc",
    "..;",
    "%00",
    "....%2f%2f",
]


@pytest.mark.parametrize("segment", TRAVERSALS)
def test_path_traversal_in_session_routes_is_a_json_404(
    alice: httpx.Client, server: Server, segment: str
) -> None:
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/restart"),
        ("POST", "/interrupt"),
    ):
        # Sent as written: the client must not normalise the dots away.
        url = httpx.URL(f"{server.url}/sessions/{segment}{suffix}")
        reply = alice.request(method, url, follow_redirects=True)
        # A trailing-slash redirect may come first: it must stay on this service.
        assert all(
            hop.headers["location"].startswith(f"{server.url}/sessions/") for hop in reply.history
        )
        assert_clean_error(reply, 404)
        assert "root:" not in reply.text
    assert_still_serving(server)


FILE_TRAVERSALS = [
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2fetc%2fpasswd",
    "sub/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "....//....//etc/passwd",
    "ok.txt%00.png",
    "..%2fpwned-put",
]


def test_path_traversal_in_file_routes_is_a_json_404(alice: httpx.Client, server: Server) -> None:
    session_id = alice.post("/sessions").json()["session_id"]
    alice.post(
        "/repl", json={"code": "open('ok.txt', 'w').write('fine')", "session_id": session_id}
    )
    base = f"{server.url}/sessions/{session_id}/files"
    # Control: an ordinary file comes back.
    assert alice.get(f"{base}/ok.txt").text == "fine"
    for segment in FILE_TRAVERSALS:
        url = httpx.URL(f"{base}/{segment}")
        for reply in (
            alice.get(url, follow_redirects=True),
            alice.put(url, content=b"pwned"),
            alice.delete(url),
        ):
            assert_clean_error(reply, 400, 404)
            assert "root:" not in reply.text
    written = list(Path(server.state_dir).parent.rglob("pwned-put*"))
    assert written == []
    assert alice.get(f"{base}/ok.txt").text == "fine"
    assert_still_serving(server)


@pytest.fixture
def host_canary() -> Iterator[Path]:
    """A host file any uid may read and write (0o666), where a worker can name it."""
    directory = Path(tempfile.mkdtemp(prefix="codesherpa-http-", dir="/var/tmp"))
    try:
        directory.chmod(0o755)
        canary = directory / "canary.txt"
        canary.write_text(f"host-canary-{secrets.token_hex(12)}")
        canary.chmod(0o666)
        yield canary
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_links_a_session_plants_are_never_followed_by_the_files_api(
    alice: httpx.Client, server: Server, host_canary: Path
) -> None:
    session_id = alice.post("/sessions").json()["session_id"]
    secret = host_canary.read_text()
    planted = alice.post(
        "/repl",
        json={
            "session_id": session_id,
            "code": (
                "import os\n"
                "open('ok.txt', 'w').write('fine')\n"
                "os.symlink('/etc/passwd', 'passwd-link')\n"
                f"os.symlink({str(host_canary)!r}, 'canary-link')\n"
                "os.symlink('/etc', 'etc-dir')\n"
                "os.symlink('/proc/self/root/etc/passwd', 'proc-link')\n"
                "sorted(os.listdir())"
            ),
        },
    ).json()
    assert planted["status"] == "ok", planted
    base = f"/sessions/{session_id}/files"
    assert alice.get(f"{base}/ok.txt").text == "fine"  # control
    replies = [
        alice.get(f"{base}/{name}")
        for name in ("passwd-link", "canary-link", "etc-dir/passwd", "proc-link")
    ]
    replies.append(alice.put(f"{base}/canary-link", content=b"overwritten"))
    replies.append(alice.put(f"{base}/etc-dir/pwned", content=b"pwned"))
    for reply in replies:
        assert_clean_error(reply, 400, 404)
    listing = alice.get(base)
    assert listing.status_code == 200
    everything = "\n".join(reply.text for reply in [*replies, listing])
    assert "root:" not in everything
    assert secret not in everything
    # The service wrote nothing through the links, and deleting one removes only the link.
    assert host_canary.read_text() == secret
    assert not Path("/etc/pwned").exists()
    alice.delete(f"{base}/canary-link")
    assert host_canary.read_text() == secret
    assert_still_serving(server)


def test_forged_signed_file_links_are_404(alice: httpx.Client, server: Server) -> None:
    session_id = alice.post("/sessions").json()["session_id"]
    alice.post(
        "/repl", json={"code": "open('ok.txt', 'w').write('fine')", "session_id": session_id}
    )
    with httpx.Client(base_url=server.url) as anonymous:
        for query in ("", "?expires=99999999999&signature=" + "0" * 64, "?signature=x"):
            assert_clean_error(anonymous.get(f"/files/{session_id}/ok.txt{query}"), 404)


def test_session_ids_are_long_random_and_urlsafe(alice: httpx.Client) -> None:
    ids = [alice.post("/sessions").json()["session_id"] for _ in range(MAX_PER_TENANT)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", session_id), session_id
        assert len(session_id) * 6 >= 128, session_id  # base64url: 6 bits a character


def test_guessed_session_ids_are_404_like_any_unknown_id(alice: httpx.Client) -> None:
    real = alice.post("/sessions").json()["session_id"]
    bodies = set()
    guesses = [
        secrets.token_urlsafe(24),
        real[:-1] + ("A" if real[-1] != "A" else "B"),  # one character off
        real.upper() if real.upper() != real else real.lower(),
        real + "=",
        "0",
        "default",
        "local",
        "1" * 32,
    ]
    for guess in guesses:
        for reply in (
            alice.get(f"/sessions/{guess}"),
            alice.post("/repl", json={"code": "1", "session_id": guess}),
            alice.post("/command", json={"command": "ls", "session_id": guess}),
        ):
            body = assert_clean_error(reply, 404)
            bodies.add(body["error"])
    assert bodies == {"no such session"}


def test_another_tenants_session_is_a_404_and_stays_untouched(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    session_id = alice.post("/sessions").json()["session_id"]
    alice.post("/repl", json={"code": "secret = 'alice-only'", "session_id": session_id})
    unknown = bob.get(f"/sessions/{secrets.token_urlsafe(24)}")
    for reply in (
        bob.get(f"/sessions/{session_id}"),
        bob.delete(f"/sessions/{session_id}"),
        bob.post(f"/sessions/{session_id}/restart"),
        bob.post(f"/sessions/{session_id}/interrupt"),
        bob.post("/repl", json={"code": "secret", "session_id": session_id}),
        bob.post("/command", json={"command": "ls", "session_id": session_id}),
    ):
        # Exactly what an id that never existed gets: existence is not revealed.
        assert_clean_error(reply, 404)
        assert reply.json() == unknown.json()
        assert "alice-only" not in reply.text
    assert all(s["session_id"] != session_id for s in bob.get("/sessions").json())
    still = alice.post("/repl", json={"code": "secret", "session_id": session_id}).json()
    assert still["result"] == "'alice-only'"


# --- floods -----------------------------------------------------------------------------


def test_a_request_flood_is_answered_and_the_service_stays_ready(server: Server) -> None:
    def one_client(_: int) -> int:
        # A client of its own each: 200 separate connections, as a flood of clients would
        # open.  (One httpx.Client shared by the threads, with keep-alive off, failed
        # once on its own side under load: a read on a descriptor its pool had closed.)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return client.get("/livez").status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one_client, range(200)))
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) > 0
    assert_still_serving(server)


def test_a_session_flood_ends_in_429_and_other_tenants_still_get_sessions(
    alice: httpx.Client, bob: httpx.Client, server: Server
) -> None:
    barrier = threading.Barrier(12)

    def create(_: int) -> httpx.Response:
        with server.client(ALICE) as client:
            barrier.wait()
            return client.post("/sessions")

    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(create, range(12)))
    created = [r for r in replies if r.status_code == 201]
    refused = [r for r in replies if r.status_code != 201]
    assert len(created) == MAX_PER_TENANT, [r.status_code for r in replies]
    for reply in refused:
        assert_clean_error(reply, 429)
        assert int(reply.headers["Retry-After"]) > 0
    assert len(alice.get("/sessions").json()) == MAX_PER_TENANT
    # The implicit session counts too: no way around the quota.
    assert_clean_error(alice.post("/repl", json={"code": "1"}), 429)
    # Another tenant is not starved by alice's flood.
    other = bob.post("/sessions")
    assert other.status_code == 201, other.text
    assert_still_serving(server)


def test_concurrent_runs_on_one_session_wait_briefly_then_get_429(
    alice: httpx.Client, server: Server
) -> None:
    session_id = alice.post("/sessions").json()["session_id"]
    slow = {"code": "import time\ntime.sleep(3)\n'done'", "session_id": session_id, "timeout": 8}
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda _: alice.post("/repl", json=slow), range(4)))
    done = [r for r in replies if r.status_code == 200]
    assert len(done) == 1, [r.status_code for r in replies]
    assert done[0].json()["result"] == "'done'"
    for reply in replies:
        if reply.status_code != 200:
            assert_clean_error(reply, 429)
            assert "Retry-After" in reply.headers
    assert_still_serving(server)


def test_the_service_log_holds_no_unexpected_error(server: Server) -> None:
    """Runs last: reads what the service logged while this module abused it."""
    log = Path(server.state_dir).parent / "server.log"
    text = log.read_text(errors="replace")
    assert "startup complete" in text  # control: this is the service's log
    assert "unexpected error" not in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
