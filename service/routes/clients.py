"""What a client reads to connect: the plugin manifest, the OpenAPI document, offline docs.

A language model learns the service from these alone, so they carry the working
habits (sessions, /mnt/data, plots as links, limits) with the active policy's real
numbers, and stay within what ChatGPT accepts: the manifest's field lengths, and for
GPT Actions 300 characters per operation description and 700 per parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from sandbox import Policy
from service.deps import ActivePolicy
from service.errors import NotFound
from service.settings import Settings
from service.shipped import shipped

router = APIRouter(include_in_schema=False)

WELL_KNOWN = shipped(".well-known")
MANIFEST_TEMPLATE = WELL_KNOWN / "ai-plugin.json"
LOGO = WELL_KNOWN / "logo.png"

# The plugin manifest's documented field limits (characters).
MANIFEST_LIMITS = {
    "name_for_human": 20,
    "name_for_model": 50,
    "description_for_human": 100,
    "description_for_model": 8000,
}
# GPT Actions' limits on the OpenAPI document (characters).
OPERATION_TEXT_LIMIT = 300
PARAMETER_TEXT_LIMIT = 700

BEARER_SCHEME = "bearerAuth"
# ChatGPT asks the user before each call of a consequential operation, and offers
# "always allow" only for the others. Running code and commands is the product and
# stays inside the session's sandbox (no network, its own workspace), so asking on
# every run would make the interpreter unusable: runPython, runCommand, uploads and
# restarts are not consequential. Deleting a session or a file destroys the user's
# work for good, so the user confirms those.
CONSEQUENTIAL = frozenset({"deleteSession", "deleteFile"})
# Path parameters FastAPI leaves undescribed; a model needs to know where values come from.
PARAMETER_DESCRIPTIONS = {
    "session_id": "The session's id, as returned in session_id by runPython, runCommand or "
    "createSession.",
    "path": "A path relative to the workspace (/mnt/data inside the session), e.g. "
    "'figure-1.png' or 'out/data.csv'.",
}

# Swagger UI and ReDoc, shipped inside the fastapi-offline wheel: /docs works with no
# internet, and a page of this origin loads nothing from anywhere else.
DOCS_ASSETS = resources.files("fastapi_offline") / "static"
DOCS_ASSET_NAMES = frozenset(
    {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"}
)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def policy_facts(public_url: str, policy: Policy) -> dict[str, str]:
    """The active policy's numbers and names, for texts that teach a model the limits."""
    limits = policy.limits
    network = (
        "Sessions reach only these hosts, through the service's egress proxy: "
        f"{', '.join(policy.network.allow) or 'none'}."
        if policy.network.enabled
        else "The network is off: installing packages or downloading anything fails, so work "
        "with what is installed and with the files in /mnt/data."
    )
    return {
        "public_url": public_url,
        "preload": ", ".join(policy.python.preload) or "nothing beyond the standard library",
        "network": network,
        "wall_timeout_s": f"{limits.wall_timeout_s:g}",
        "max_timeout_s": f"{limits.max_timeout_s:g}",
        "memory_mb": str(limits.memory_mb),
        "workspace_mb": str(limits.workspace_mb),
        "output_chars": str(limits.output_chars),
        "commands": ", ".join(policy.commands.allow) or "none",
    }


def _fill(value: Any, values: dict[str, str]) -> Any:
    """Every ``{name}`` in the template's strings replaced; an unknown name is a KeyError."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda match: values[match.group(1)], value)
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    return value


def plugin_manifest(settings: Settings, policy: Policy, tokens_on: bool) -> dict[str, Any]:
    template = json.loads(MANIFEST_TEMPLATE.read_text(encoding="utf-8"))
    manifest: dict[str, Any] = _fill(template, policy_facts(settings.public_url, policy))
    manifest["auth"] = (
        # OpenAI's verification tokens are issued per plugin when an operator registers
        # it; a service key (one tenant's token) is entered in ChatGPT's plugin settings.
        {"type": "service_http", "authorization_type": "bearer", "verification_tokens": {}}
        if tokens_on
        else {"type": "none"}
    )
    return manifest


@router.get("/.well-known/ai-plugin.json")
async def ai_plugin(request: Request, policy: ActivePolicy) -> JSONResponse:
    settings: Settings = request.app.state.settings
    manifest = plugin_manifest(settings, policy, tokens_on=bool(request.app.state.tokens))
    return JSONResponse(manifest)


@router.get("/.well-known/logo.png")
async def logo() -> FileResponse:
    return FileResponse(LOGO, media_type="image/png")


def openapi_builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """A replacement for ``app.openapi``: FastAPI's document, made ready for GPT Actions."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)  # generated once, cached in app.openapi_schema
            prepare_for_actions(document, secured=bool(app.state.tokens))
        return app.openapi_schema  # type: ignore[return-value]  # set by FastAPI.openapi

    return openapi


def prepare_for_actions(document: dict[str, Any], secured: bool) -> None:
    """Consequence flags, parameter descriptions, one error shape, bearer auth."""
    components = document.setdefault("components", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation["x-openai-isConsequential"] = operation.get("operationId") in CONSEQUENTIAL
            _describe_parameters(operation)
            _document_responses(operation)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    if secured:
        components["securitySchemes"] = {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "A token the operator issued; it names your tenant.",
            }
        }
        document["security"] = [{BEARER_SCHEME: []}]


def _describe_parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        described = PARAMETER_DESCRIPTIONS.get(parameter["name"])
        if described and not parameter.get("description"):
            parameter["description"] = described


def _document_responses(operation: dict[str, Any]) -> None:
    responses = operation.get("responses", {})
    for response in responses.values():
        content = response.get("content", {})
        # A route that streams raw bytes declares its media type in openapi_extra;
        # FastAPI still adds an untyped JSON entry, which would mislead a model.
        if len(content) > 1 and content.get("application/json") == {"schema": {}}:
            del content["application/json"]
    if "422" in responses:
        # Our handler answers validation errors as {error, suggestion}, like every error.
        responses["422"]["content"] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
        }


@router.get("/openapi.yaml")
async def openapi_yaml(request: Request) -> Response:
    document = request.app.openapi()
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    return Response(text, media_type="application/yaml")


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    assets = f"{root}/docs/assets"
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - interactive docs",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        # No call to the public validator badge service: the page stays on this origin.
        swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None},
    )
    return _offline(page, request)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - reference",
        redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
        redoc_favicon_url=f"{root}/docs/assets/favicon.png",
        with_google_fonts=False,
    )
    return _offline(page, request)


def _offline(page: HTMLResponse, request: Request) -> HTMLResponse:
    """The browser itself refuses anything but this origin and the API's public URL."""
    settings: Settings = request.app.state.settings
    page.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; "
        f"connect-src 'self' {settings.public_url}; frame-ancestors 'none'"
    )
    return page


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> FileResponse:
    if name not in DOCS_ASSET_NAMES:
        raise NotFound(f"no such asset: {name}")
    return FileResponse(
        Path(str(DOCS_ASSETS / name)), headers={"Cache-Control": "public, max-age=86400"}
    )
