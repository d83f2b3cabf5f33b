"""Wheels and a PEP 503 simple index, built by the tests: no network, no build tool.

A wheel is a zip with the package's files and a ``.dist-info`` holding METADATA,
WHEEL and RECORD (the wheel format, PEP 427); the index is one directory per
project with an ``index.html`` linking its files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def wheel(name: str, version: str, files: dict[str, str | bytes]) -> tuple[str, bytes]:
    """A pure-Python wheel of ``files`` (path in the wheel -> content): (file name, bytes)."""
    dist_info = f"{name}-{version}.dist-info"
    contents: dict[str, bytes] = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()
    }
    contents[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    ).encode()
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: codesherpa-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    record = "".join(
        f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents.items()
    )
    contents[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


def module_wheel(name: str, version: str = "0.1", source: str | None = None) -> tuple[str, bytes]:
    """A wheel of one module ``name`` whose ``VERSION`` is ``version``."""
    body = source if source is not None else f"VERSION = {version!r}\n"
    return wheel(name, version, {f"{name}.py": body})


def sdist(name: str, version: str) -> tuple[str, bytes]:
    """A source distribution (never built here: only_binary must refuse it)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}-{version}/setup.py", "raise SystemExit('built')\n")
    return f"{name}-{version}.zip", buffer.getvalue()


def simple_index(distributions: dict[str, list[tuple[str, bytes]]]) -> dict[str, bytes]:
    """The files of a simple index: ``<project>/index.html`` and the files beside it."""
    files: dict[str, bytes] = {}
    for project, dists in distributions.items():
        links = "".join(
            f'<a href="{file_name}#sha256={hashlib.sha256(data).hexdigest()}">{file_name}</a>\n'
            for file_name, data in dists
        )
        files[f"{project}/index.html"] = f"<html><body>\n{links}</body></html>\n".encode()
        for file_name, data in dists:
            files[f"{project}/{file_name}"] = data
    files["index.html"] = "".join(
        f'<a href="{project}/">{project}</a>\n' for project in distributions
    ).encode()
    return files
