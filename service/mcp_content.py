"""Run replies and workspace files as MCP content: images as image content, else a link.

Every byte of a file comes through ``service.workspace_access``: read off the event
loop and never more than the cap, whatever size the file had a moment before.  A run's
images are those its reply kept in ``outputs`` (within the reply cap, taken out of the
JSON text so they are sent once), then the figures and image files it saved, while
all of them together stay within ``MAX_IMAGE_BYTES``; any other keeps its link.
"""

from __future__ import annotations

import base64

from mcp.types import ContentBlock, ImageContent, TextContent

from service import workspace_access
from service.errors import NotFound, ServiceError, TooLarge
from service.mcp_errors import tool_error
from service.registry import SessionRecord
from service.rich_outputs import FILENAME_KEY
from service.schemas import CommandResponse, Output, ReplResponse
from service.workspace_files import guess_mime

IMAGE_MIMES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGES = 4
# All of a reply's images together; and the most a read_file call reads.
MAX_IMAGE_BYTES = 4 * 1024 * 1024


async def run_content(
    record: SessionRecord, reply: ReplResponse | CommandResponse
) -> list[ContentBlock]:
    """A run's reply as JSON text, then its images (at most ``MAX_IMAGES``, within the cap)."""
    images: list[ImageContent] = []
    shown: set[str] = set()  # files an output stands for: one image each
    room = MAX_IMAGE_BYTES
    outputs = reply.outputs if isinstance(reply, ReplResponse) else []
    for output in outputs:
        name = output.metadata.get(FILENAME_KEY)
        if isinstance(name, str):
            shown.add(name)
        for mime, data in output.data.items():
            if mime in IMAGE_MIMES and len(images) < MAX_IMAGES:
                images.append(ImageContent(type="image", data=data, mimeType=mime))
                room -= len(data) * 3 // 4
    if isinstance(reply, ReplResponse):
        reply = reply.model_copy(update={"outputs": [_without_images(o) for o in outputs]})
    for output in outputs:
        name = output.metadata.get(FILENAME_KEY)
        if isinstance(name, str) and not IMAGE_MIMES & output.data.keys():
            found = await _image(record, name, "image/png", room)
            if found is not None and len(images) < MAX_IMAGES:
                images.append(found)
                room -= len(found.data) * 3 // 4
    for info in reply.files:
        if info.mime in IMAGE_MIMES and info.name not in shown and len(images) < MAX_IMAGES:
            found = await _image(record, info.name, info.mime, room)
            if found is not None:
                images.append(found)
                room -= len(found.data) * 3 // 4
    return [TextContent(type="text", text=reply.model_dump_json()), *images]


def _without_images(output: Output) -> Output:
    data = {mime: text for mime, text in output.data.items() if mime not in IMAGE_MIMES}
    return output.model_copy(update={"data": data})


async def _image(record: SessionRecord, name: str, mime: str, room: int) -> ImageContent | None:
    """The file as image content if it fits in ``room`` bytes; None leaves it its link."""
    if room <= 0:
        return None
    try:
        data = await workspace_access.read_capped(record, name, room)
    except ServiceError:  # too large, gone, or the session with it: the link says the rest
        return None
    return ImageContent(type="image", data=base64.b64encode(data).decode(), mimeType=mime)


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
