"""The error tree (service/errors.py) as MCP: a tool error whose text ends with the code.

A model reads the sentence and the suggestion; a client can still branch on the code.
"""

from __future__ import annotations

from mcp.server.fastmcp.exceptions import ToolError

from service.errors import ServiceError


def tool_error(error: ServiceError) -> ToolError:
    text = " ".join(part for part in (error.message + ".", error.suggestion) if part)
    return ToolError(f"{text} (code: {error.code})")
