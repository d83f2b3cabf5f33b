"""Workspace files as MCP content: text as text, images as image content, else a link.

Every byte comes through ``service.workspace_access``: read off the event loop and
never more than the cap, whatever size the file had a moment before.
"""

from __future__ import annotations

import base64

from mcp.types import ContentBlock, ImageContent, TextContent

from service import workspace_access
from service.errors import NotFound, ServiceError, SessionExpired, TooLarge
from service.mcp_errors import tool_error
from service.registry import SessionRecord
from service.schemas import FileInfo
from service.workspace_files import guess_mime

IMAGE_MIMES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGES = 4
MAX_IMAGE_BYTES = 4 * 1024 * 1024


async def images(record: SessionRecord, created: list[FileInfo]) -> list[ImageContent]:
    """The first images a run created, as image content; the others keep their links."""
    found: list[ImageContent] = []
    for info in created:
        if info.mime not in IMAGE_MIMES or len(found) >= MAX_IMAGES:
            continue
        try:
            data = await workspace_access.read_capped(record, info.name, MAX_IMAGE_BYTES)
        except SessionExpired:  # the workspace is gone: the reply's links say the rest
            break
        except ServiceError:
            continue
        encoded = base64.b64encode(data).decode()
        found.append(ImageContent(type="image", data=encoded, mimeType=info.mime))
    return found


async def file_content(record: SessionRecord, path: str, url: str) -> list[ContentBlock]:
    """One workspace file as content; ToolError when it cannot be returned here."""
    reply_chars = record.session.policy.limits.reply_chars
    try:
        data = await workspace_access.read_capped(record, path, max(reply_chars, MAX_IMAGE_BYTES))
    except (NotFound, TooLarge) as exc:
        exc.suggestion = f"List the workspace with list_files, or download it from {url}"
        raise tool_error(exc) from None
    except ServiceError as exc:
        raise tool_error(exc) from None
    mime = guess_mime(path)
    if mime in IMAGE_MIMES:
        image = ImageContent(type="image", data=base64.b64encode(data).decode(), mimeType=mime)
        return [TextContent(type="text", text=f"{path} ({len(data)} bytes): {url}"), image]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [
            TextContent(
                type="text",
                text=f"{path} is binary ({len(data)} bytes, {mime}); download it from {url} or "
                "read it with run_python.",
            )
        ]
    if len(text) > reply_chars:
        text = (
            text[:reply_chars]
            + f"\n[cut at {reply_chars} characters: read the rest with run_python]"
        )
    return [TextContent(type="text", text=text)]
