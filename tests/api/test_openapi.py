"""What a model imports: the OpenAPI document as a GPT Action, the plugin manifest, the logo."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from sandbox import load_policy
from tests.api.server import TEST_POLICY, Server, start_server, stop_server

TOKEN = "alice-token-0123456789abcdef"
PUBLIC_URL = "https://sherpa.example.test"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
# GPT Actions' limits, and the plugin manifest's.
OPERATION_TEXT_LIMIT = 300
PARAMETER_TEXT_LIMIT = 700
MANIFEST_LIMITS = {
    "name_for_human": 20,
    "name_for_model": 50,
    "description_for_human": 100,
    "description_for_model": 8000,
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Tokens on, behind a public HTTPS name (the process still listens on loopback)."""
    running = start_server(
        tmp_path_factory.mktemp("secured"),
        env={"CODESHERPA_TOKENS": f"alice:{TOKEN}", "CODESHERPA_PUBLIC_URL": PUBLIC_URL},
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    with server.client() as client:
        reply = client.get("/openapi.json")
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_yaml_is_the_same_document(server: Server, document: dict[str, Any]) -> None:
    with server.client() as client:
        reply = client.get("/openapi.yaml")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(reply.text) == document


def test_every_operation_fits_gpt_actions(document: dict[str, Any]) -> None:
    operation_ids = []
    for method, path, operation in _operations(document):
        where = f"{method.upper()} {path}"
        assert operation.get("operationId"), f"{where} has no operationId"
        operation_ids.append(operation["operationId"])
        assert operation.get("summary"), f"{where} has no summary"
        assert operation.get("description"), f"{where} has no description"
        for field in ("summary", "description"):
            assert len(operation[field]) <= OPERATION_TEXT_LIMIT, f"{where} {field} too long"
        for parameter in operation.get("parameters", []):
            text = parameter.get("description", "")
            assert text, f"{where} parameter {parameter['name']} has no description"
            assert len(text) <= PARAMETER_TEXT_LIMIT, f"{where} {parameter['name']} too long"
        assert isinstance(operation.get("x-openai-isConsequential"), bool), where
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    assert {"runPython", "runCommand", "listFiles", "uploadFile", "restartSession"} <= set(
        operation_ids
    )


def test_only_destroying_work_is_consequential(document: dict[str, Any]) -> None:
    flags = {
        op["operationId"]: op["x-openai-isConsequential"] for _, _, op in _operations(document)
    }
    assert {name for name, flag in flags.items() if flag} == {"deleteSession", "deleteFile"}


def test_execution_bodies_carry_examples(document: dict[str, Any]) -> None:
    repl = document["paths"]["/repl"]["post"]
    request = _resolve(document, repl["requestBody"]["content"]["application/json"]["schema"])
    assert request["examples"][0]["code"]
    reply = _resolve(document, repl["responses"]["200"]["content"]["application/json"]["schema"])
    assert reply["examples"][0]["status"] == "ok"
    command = document["paths"]["/command"]["post"]
    body = _resolve(document, command["requestBody"]["content"]["application/json"]["schema"])
    assert body["examples"][0]["command"]


def test_errors_are_documented_in_the_shape_they_are_sent(document: dict[str, Any]) -> None:
    """A 422 is {error, suggestion} like every other error, not FastAPI's default."""
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    for method, path, operation in _operations(document):
        invalid = operation["responses"].get("422")
        if invalid is not None:
            schema = invalid["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorResponse"), f"{method} {path}"


def test_servers_entry_is_the_public_url(server: Server, document: dict[str, Any]) -> None:
    assert document["servers"] == [{"url": server.url}]


def test_no_security_scheme_without_tokens(document: dict[str, Any]) -> None:
    assert "security" not in document
    assert "securitySchemes" not in document.get("components", {})


def test_bearer_scheme_when_tokens_are_on(secured: Server) -> None:
    with secured.client() as anonymous:
        document = anonymous.get("/openapi.json").json()
    validate(document, cls=OpenAPIV31SpecValidator)
    schemes = document["components"]["securitySchemes"]
    assert list(schemes.values()) == [
        {"type": "http", "scheme": "bearer", "description": schemes["bearerAuth"]["description"]}
    ]
    assert document["security"] == [{"bearerAuth": []}]
    assert document["servers"] == [{"url": PUBLIC_URL}]


def test_client_endpoints_stay_out_of_the_document(document: dict[str, Any]) -> None:
    for path in ("/mcp", "/docs", "/openapi.yaml", "/.well-known/ai-plugin.json"):
        assert path not in document["paths"]


def _manifest(server: Server) -> dict[str, Any]:
    with server.client() as client:
        reply = client.get("/.well-known/ai-plugin.json")
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def test_manifest_urls_come_from_the_public_url(secured: Server) -> None:
    manifest = _manifest(secured)
    assert manifest["api"]["url"] == f"{PUBLIC_URL}/openapi.json"
    assert manifest["logo_url"] == f"{PUBLIC_URL}/.well-known/logo.png"
    assert manifest["legal_info_url"].startswith(PUBLIC_URL)
    assert not re.search(r"\{\w+\}", json.dumps(manifest)), "every placeholder is filled"


def test_manifest_auth_is_none_on_loopback_without_tokens(server: Server) -> None:
    assert _manifest(server)["auth"] == {"type": "none"}


def test_manifest_auth_is_bearer_service_http_with_tokens(secured: Server) -> None:
    assert _manifest(secured)["auth"] == {
        "type": "service_http",
        "authorization_type": "bearer",
        "verification_tokens": {},
    }


def test_manifest_fits_the_plugin_limits(server: Server) -> None:
    manifest = _manifest(server)
    assert manifest["schema_version"] == "v1"
    for field, limit in MANIFEST_LIMITS.items():
        assert 0 < len(manifest[field]) <= limit, field
    assert manifest["name_for_model"].isidentifier()
    assert manifest["contact_email"]


def test_manifest_teaches_the_working_habits_with_the_policy_numbers(server: Server) -> None:
    text = _manifest(server)["description_for_model"]
    policy = load_policy(TEST_POLICY)
    habits = [
        "session_id",  # sessions and state
        "persist",
        "/mnt/data",  # where files live
        "`files`",  # how plots come back
        "url",
        ", ".join(policy.python.preload),  # what is preinstalled
        "network is off",
        f"{policy.limits.wall_timeout_s:g} s",  # what to do on timeout
        f"at most {policy.limits.max_timeout_s:g} s",
        "variables were kept",
        "truncated",  # and on truncation
        "summary",
    ]
    for habit in habits:
        assert habit in text, habit


def test_logo_is_a_png(server: Server) -> None:
    with server.client() as client:
        reply = client.get("/.well-known/logo.png")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "image/png"
    assert reply.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_manifest_and_document_need_no_token(secured: Server) -> None:
    """ChatGPT fetches them before it has a key; the API itself still refuses."""
    with secured.client() as anonymous:
        for path in ("/.well-known/ai-plugin.json", "/openapi.json", "/openapi.yaml", "/docs"):
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.post("/repl", json={"code": "1"}).status_code == 401
    with httpx.Client(base_url=secured.url, headers={"Authorization": f"Bearer {TOKEN}"}) as ok:
        assert ok.post("/repl", json={"code": "6*7"}).json()["result"] == "42"
