"""The session workspace over HTTP: list, upload, download, delete, and signed links."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from sandbox.protocol import escape_surrogates
from service import workspace_access
from service.deps import OwnedSession, Registry
from service.errors import BadRequest, FileNotFound
from service.links import LinkSigner
from service.registry import SessionRecord
from service.schemas import ErrorResponse, WorkspaceEntry
from service.workspace_access import NOT_FOUND_HINT
from service.workspace_files import READ_CHUNK, guess_mime

router = APIRouter(tags=["files"])
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 410, 413, 422)
}


def signer(request: Request) -> LinkSigner:
    links: LinkSigner = request.app.state.links
    return links


async def _stream_file(record: SessionRecord, path: str) -> Response:
    download = await workspace_access.open_download(record, path)
    return StreamingResponse(
        download.chunks(),
        media_type=guess_mime(path),
        headers={
            "Content-Length": str(download.size),
            "Content-Disposition": content_disposition(path.rsplit("/", 1)[-1]),
            "X-Content-Type-Options": "nosniff",
            # A file a session wrote must never run as a page of this origin.
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


def content_disposition(name: str) -> str:
    """``inline`` with the file's name, which HTTP headers can carry only as ASCII.

    RFC 6266: ``filename`` holds an ASCII stand-in for old clients, ``filename*`` the
    name itself, percent-encoded (RFC 8187).
    """
    stand_in = name.encode("ascii", "replace").decode("ascii").replace('"', "").replace("\\", "")
    encoded = quote(name, safe="", errors="surrogateescape")
    return f"inline; filename=\"{stand_in}\"; filename*=UTF-8''{encoded}"


@router.get(
    "/sessions/{session_id}/files",
    operation_id="listFiles",
    summary="List the workspace",
    description="Files in the session's workspace (/mnt/data inside the session), with links.",
    responses=_ERRORS,
)
async def list_files(record: OwnedSession, request: Request) -> list[WorkspaceEntry]:
    links = signer(request)
    return [
        WorkspaceEntry(
            # A name that is not UTF-8 is listed escaped (its link cannot reach it).
            name=escape_surrogates(f.name),
            size=f.size,
            mime=f.mime,
            modified=f.modified,
            url=links.url(record.session_id, f.name),
        )
        for f in await workspace_access.listing(record)
    ]


@router.get(
    "/sessions/{session_id}/files/{path:path}",
    operation_id="downloadFile",
    summary="Download a file",
    description="The raw bytes of one workspace file.",
    responses=_ERRORS,
    openapi_extra={
        "responses": {
            "200": {"description": "The file", "content": {"application/octet-stream": {}}}
        }
    },
)
async def download_file(record: OwnedSession, path: str) -> Response:
    return await _stream_file(record, path)


async def _body_chunks(request: Request) -> AsyncIterator[bytes]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        uploads = [value for value in form.values() if isinstance(value, UploadFile)]
        if len(uploads) != 1:
            raise BadRequest("send exactly one file part in the multipart body")
        while data := await uploads[0].read(READ_CHUNK):
            yield data
        return
    async for data in request.stream():
        yield data


@router.put(
    "/sessions/{session_id}/files/{path:path}",
    operation_id="uploadFile",
    summary="Upload a file",
    description="Writes the request body (raw, or one multipart file part) to the workspace.",
    responses=_ERRORS,
    status_code=201,
    openapi_extra={
        # The route reads the body itself (streamed to disk), so FastAPI cannot infer it.
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"contentMediaType": "application/octet-stream"}
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"contentMediaType": "application/octet-stream"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def upload_file(record: OwnedSession, path: str, request: Request) -> WorkspaceEntry:
    declared = request.headers.get("content-length")
    size = await workspace_access.write(
        record,
        path,
        _body_chunks(request),
        int(declared) if declared and declared.isdigit() else None,
    )
    links = signer(request)
    return WorkspaceEntry(
        name=path,
        size=size,
        mime=guess_mime(path),
        modified=None,
        url=links.url(record.session_id, path),
    )


@router.delete(
    "/sessions/{session_id}/files/{path:path}",
    operation_id="deleteFile",
    summary="Delete a file",
    description="Removes one file (or an empty directory) from the workspace.",
    responses=_ERRORS,
    status_code=204,
)
async def delete_file(record: OwnedSession, path: str) -> Response:
    await workspace_access.delete(record, path)
    return Response(status_code=204)


@router.get("/files/{session_id}/{path:path}", include_in_schema=False)
async def signed_file(
    session_id: str,
    path: str,
    request: Request,
    registry: Registry,
    expires: Annotated[int, Query()] = 0,
    signature: Annotated[str, Query(max_length=128)] = "",
) -> Response:
    """A signed link: no bearer token, the signature is the credential."""
    if not signer(request).verify(session_id, path, expires, signature):
        raise FileNotFound("no such file, or the link expired", NOT_FOUND_HINT)
    record = registry.find(session_id)
    if record is None:
        raise FileNotFound("no such file, or the link expired", NOT_FOUND_HINT)
    return await _stream_file(record, path)
