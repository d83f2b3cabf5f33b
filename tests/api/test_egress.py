"""The egress path through a real service: a run reaches an allowed host, a refused
one gets a reply whose suggestion names the policy key, and every connection is one
line of the audit log (tenant, session, host, port, bytes, verdict)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server import (
    ADMIN,
    TEST_POLICY,
    Server,
    audit_entries,
    free_port,
    start_server,
    stop_server,
)
from tests.loopback_http import LoopbackServer, loopback_server

TOKEN = "token-of-the-egress-tenant"


@dataclass
class Egress:
    server: Server
    allowed: LoopbackServer
    audit: Path


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Egress]:
    tmp = tmp_path_factory.mktemp("egress")
    service_port = free_port()
    with loopback_server("allowed", "127.0.0.2") as allowed:
        policy = tmp / "policy.toml"
        allow = [f"127.0.0.2:{allowed.port}", f"127.0.0.1:{service_port}"]
        policy.write_text(
            TEST_POLICY.read_text().split("[network]")[0]
            + f'[network]\nmode = "allowlist"\nallow = {allow!r}\n'
            'allow_private = ["127.0.0.2/32", "127.0.0.1/32"]\n'
        )
        audit = tmp / "audit.log"
        env = {"CODESHERPA_AUDIT_LOG": str(audit), "CODESHERPA_TOKENS": f"egress-tenant:{TOKEN}"}
        running = start_server(tmp, env=env, policy=policy, port=service_port)
        try:
            yield Egress(running, allowed, audit)
        finally:
            stop_server(running)


@pytest.fixture
def client(egress: Egress) -> Iterator[httpx.Client]:
    with egress.server.client(TOKEN) as http:
        yield http


def fetch(client: httpx.Client, url: str) -> dict[str, Any]:
    code = f"import urllib.request\nurllib.request.urlopen({url!r}, timeout=10).read().decode()"
    reply: dict[str, Any] = client.post("/repl", json={"code": code}).json()
    return reply


def egress_lines(egress: Egress) -> list[dict[str, Any]]:
    return [
        entry
        for entry in audit_entries(egress.audit, lambda _entries: True)
        if entry["kind"] == "egress"
    ]


def next_egress_line(egress: Egress, before: int) -> dict[str, Any]:
    """The audit log's egress line after the ``before`` it had (it follows the reply)."""

    def written(entries: list[dict[str, Any]]) -> bool:
        return len([entry for entry in entries if entry["kind"] == "egress"]) > before

    entries = audit_entries(egress.audit, written)
    lines = [entry for entry in entries if entry["kind"] == "egress"]
    assert len(lines) == before + 1, lines
    return lines[-1]


def test_a_run_reaches_an_allowed_host_and_the_connection_is_audited(
    egress: Egress, client: httpx.Client
) -> None:
    before = len(egress_lines(egress))
    reply = fetch(client, egress.allowed.url)
    assert reply["status"] == "ok", reply
    assert reply["result"] == repr("hello from allowed; got 0 bytes")
    line = next_egress_line(egress, before)
    assert line["session"] == reply["session_id"]
    assert line["tenant"] == "egress-tenant"
    assert (line["host"], line["port"], line["verdict"]) == (
        "127.0.0.2",
        egress.allowed.port,
        "allowed",
    )
    assert line["bytes_up"] > 0
    assert line["bytes_down"] > 0


def test_a_refused_host_gets_an_error_and_a_suggestion_naming_network_allow(
    egress: Egress, client: httpx.Client
) -> None:
    unlisted = f"http://127.0.0.2:{egress.allowed.port + 1}/"
    before = len(egress_lines(egress))
    reply = fetch(client, unlisted)
    assert reply["status"] == "error"
    assert "HTTP Error 403: Forbidden by network.allow" in reply["error"]
    assert "network.allow" in reply["suggestion"]
    assert f"127.0.0.2:{egress.allowed.port}" in reply["suggestion"]
    line = next_egress_line(egress, before)
    assert line["session"] == reply["session_id"]
    assert (line["verdict"], line["key"], line["port"]) == (
        "refused",
        "network.allow",
        egress.allowed.port + 1,
    )


def test_the_service_itself_is_refused_though_listed_and_covered(
    egress: Egress, client: httpx.Client
) -> None:
    service = egress.server.url + "/healthz"
    before = len(egress_lines(egress))
    reply = fetch(client, service)
    assert reply["status"] == "error"
    assert "Forbidden by network.allow_private" in reply["error"]
    assert "network.allow_private" in reply["suggestion"]
    line = next_egress_line(egress, before)
    assert line["session"] == reply["session_id"]
    assert line["verdict"] == "refused"
    assert "the service itself" in line["reason"]


def test_readyz_shows_the_proxy_and_how_it_is_confined(egress: Egress) -> None:
    with egress.server.client() as http:
        detail = http.get("/readyz", headers=ADMIN).json()
    assert detail["ready"] is True
    assert detail["egress"]["ready"] is True
    assert isinstance(detail["egress"]["pid"], int)
    layers = " ".join(detail["egress"]["layers"])
    assert "landlock ABI" in layers
    assert "seccomp: the worker's denylist" in layers
