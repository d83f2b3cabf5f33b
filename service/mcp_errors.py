"""The error tree (service/errors.py) as MCP: a tool error whose text ends with the code.

A model reads the sentence and the suggestion; a client can still branch on the code.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mcp.server.fastmcp.exceptions import ToolError
from pydantic import ValidationError

from service.errors import InvalidRequest, ServiceError
from service.schemas import CommandRequest, ReplRequest


def tool_error(error: ServiceError) -> ToolError:
    text = " ".join(part for part in (error.message + ".", error.suggestion) if part)
    return ToolError(f"{text} (code: {error.code})")


RequestModel = TypeVar("RequestModel", ReplRequest, CommandRequest)


def validated(model: type[RequestModel], **fields: Any) -> RequestModel:
    """The request as the HTTP route would take it; its refusal names the field, as a 422."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise InvalidRequest(f"invalid request: {problems}", "Fix the named field.") from None
