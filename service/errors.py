"""Request errors as JSON ``{error, suggestion}``; never a traceback of the service."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("codesherpa")


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        error: str,
        suggestion: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.suggestion = suggestion
        self.headers = headers


def error_body(error: str, suggestion: str | None) -> dict[str, Any]:
    return {"error": error, "suggestion": suggestion}


def _describe_validation(exc: RequestValidationError) -> str:
    problems = []
    for item in exc.errors()[:5]:
        location = [str(part) for part in item.get("loc", ()) if part not in ("body",)]
        field = ".".join(location) or "body"
        message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "")
        problems.append(f"{field}: {message}")
    return "; ".join(problems)


def api_error_response(request: Request, exc: ApiError) -> JSONResponse:
    if exc.status_code == 429:
        request.app.state.metrics.rejections.labels(reason=exc.error.split(" ")[0]).inc()
    return JSONResponse(
        error_body(exc.error, exc.suggestion), status_code=exc.status_code, headers=exc.headers
    )


def internal_error_response() -> JSONResponse:
    return JSONResponse(
        error_body("internal error", "Retry once; if it persists, report it to the operator."),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(
                f"invalid request: {_describe_validation(exc)}",
                "Fix the named field and send the request again; see /openapi.json.",
            ),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), None), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return JSONResponse(
            error_body("the JSON body is nested too deeply", "Send a flat JSON object."),
            status_code=400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return internal_error_response()
