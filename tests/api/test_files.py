"""Workspace files over HTTP: upload, list, download, delete, signed links, planted links."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.server import Server


@pytest.fixture
def session_id(client: httpx.Client) -> Iterator[str]:
    created = client.post("/sessions")
    assert created.status_code == 201
    yield str(created.json()["session_id"])
    client.delete(f"/sessions/{created.json()['session_id']}")


def test_uploaded_file_is_seen_by_the_repl_and_downloads_unchanged(
    client: httpx.Client, session_id: str
) -> None:
    payload = bytes(range(256)) * 100
    put = client.put(f"/sessions/{session_id}/files/data/blob.bin", content=payload)
    assert put.status_code == 201, put.text
    seen = client.post(
        "/repl",
        json={"code": "len(open('data/blob.bin', 'rb').read())", "session_id": session_id},
    ).json()
    assert seen["result"] == str(len(payload))
    assert client.get(f"/sessions/{session_id}/files/data/blob.bin").content == payload
    names = [entry["name"] for entry in client.get(f"/sessions/{session_id}/files").json()]
    assert names == ["data/blob.bin"]


def test_a_file_named_outside_latin_1_downloads_with_its_name(
    client: httpx.Client, session_id: str
) -> None:
    made = client.post(
        "/repl", json={"code": "open('图.png', 'wb').write(b'png')", "session_id": session_id}
    ).json()
    [link] = [entry["url"] for entry in made["files"]]
    for url in (f"/sessions/{session_id}/files/图.png", link):
        download = client.get(url)
        assert download.status_code == 200
        assert download.content == b"png"
        assert "filename*=UTF-8''%E5%9B%BE.png" in download.headers["content-disposition"]


def test_a_file_name_that_is_not_utf8_is_listed_escaped(
    client: httpx.Client, session_id: str
) -> None:
    # An archive from elsewhere may hold such names; the listing must still answer.
    made = client.post(
        "/repl",
        json={"code": "open(b'\\xff.txt', 'wb').write(b'x')", "session_id": session_id},
    ).json()
    assert made["status"] == "ok", made["error"]
    listing = client.get(f"/sessions/{session_id}/files")
    assert listing.status_code == 200
    assert [entry["name"] for entry in listing.json()] == ["\\udcff.txt"]


def test_multipart_upload_is_accepted(client: httpx.Client, session_id: str) -> None:
    put = client.put(
        f"/sessions/{session_id}/files/table.csv",
        files={"file": ("table.csv", b"a,b\n1,2\n", "text/csv")},
    )
    assert put.status_code == 201, put.text
    assert client.get(f"/sessions/{session_id}/files/table.csv").text == "a,b\n1,2\n"


def test_uploaded_file_belongs_to_the_session_which_can_overwrite_it(
    client: httpx.Client, session_id: str
) -> None:
    client.put(f"/sessions/{session_id}/files/notes.txt", content=b"v1")
    code = "open('notes.txt', 'w').write('v2')\nopen('notes.txt').read()"
    reply = client.post("/repl", json={"code": code, "session_id": session_id}).json()
    assert reply["result"] == "'v2'", reply


def test_delete_removes_the_file(client: httpx.Client, session_id: str, server: Server) -> None:
    client.put(f"/sessions/{session_id}/files/gone.txt", content=b"x")
    assert client.delete(f"/sessions/{session_id}/files/gone.txt").status_code == 204
    assert client.get(f"/sessions/{session_id}/files/gone.txt").status_code == 404
    assert client.delete(f"/sessions/{session_id}/files/gone.txt").status_code == 404


def test_plotted_figure_link_opens_without_a_token(client: httpx.Client, session_id: str) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')"
    reply = client.post("/repl", json={"code": code, "session_id": session_id}).json()
    (figure,) = reply["files"]
    assert figure["mime"] == "image/png"
    fetched = httpx.get(figure["url"])
    assert fetched.status_code == 200
    assert fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert fetched.headers["content-security-policy"].startswith("sandbox")


def test_tampered_or_expired_signed_links_fetch_nothing(
    client: httpx.Client, session_id: str
) -> None:
    client.put(f"/sessions/{session_id}/files/a.txt", content=b"secret-a")
    client.put(f"/sessions/{session_id}/files/b.txt", content=b"secret-b")
    url = next(
        e["url"] for e in client.get(f"/sessions/{session_id}/files").json() if e["name"] == "a.txt"
    )
    assert httpx.get(url).content == b"secret-a"
    retargeted = url.replace("/a.txt?", "/b.txt?")
    assert httpx.get(retargeted).status_code == 404
    expired = (
        url.split("expires=")[0]
        + f"expires={int(time.time()) - 10}&signature="
        + url.split("signature=")[1]
    )
    assert httpx.get(expired).status_code == 404


@pytest.mark.parametrize(
    # Encoded, so the client sends the dots instead of normalising them away.
    "path",
    ["%2e%2e/%2e%2e/etc/passwd", "%2e%2e", "a/%2e%2e/%2e%2e/x", "%2Fetc%2Fpasswd", "x%00y"],
)
def test_traversal_paths_are_404(client: httpx.Client, session_id: str, path: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        reply = client.request(method, f"/sessions/{session_id}/files/{path}", content=b"x")
        assert reply.status_code in (404, 405), (method, path, reply.status_code)
        assert "root:" not in reply.text


def test_planted_symlink_to_etc_shadow_downloads_nothing(
    client: httpx.Client, session_id: str, tmp_path: Path
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("host-canary-7f3a")
    os.chmod(tmp_path, 0o755)
    code = (
        "import os\n"
        "os.symlink('/etc/shadow', 'shadow')\n"
        f"os.symlink({str(canary)!r}, 'canary')\n"
        "os.makedirs('d', exist_ok=True)\n"
        "os.symlink('/etc', 'd/etc')"
    )
    planted = client.post("/repl", json={"code": code, "session_id": session_id}).json()
    assert planted["status"] == "ok", planted
    for path in ("shadow", "canary", "d/etc/shadow", "d/etc/passwd"):
        reply = client.get(f"/sessions/{session_id}/files/{path}")
        assert reply.status_code == 404
        assert "root:" not in reply.text
        assert "host-canary" not in reply.text
    listed = client.get(f"/sessions/{session_id}/files").json()
    assert [e["name"] for e in listed] == []


def test_upload_through_a_planted_symlink_writes_nothing_outside(
    client: httpx.Client, session_id: str, tmp_path: Path
) -> None:
    target_dir = tmp_path / "outside"
    target_dir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(target_dir, 0o777)
    code = (
        f"import os\nos.symlink({str(target_dir)!r}, 'out')\n"
        f"os.symlink({str(target_dir / 'f')!r}, 'f')"
    )
    client.post("/repl", json={"code": code, "session_id": session_id})
    assert client.put(f"/sessions/{session_id}/files/out/new.txt", content=b"x").status_code == 404
    assert client.put(f"/sessions/{session_id}/files/f", content=b"x").status_code == 404
    assert not (target_dir / "new.txt").exists()
    assert not (target_dir / "f").exists()


def test_upload_beyond_the_workspace_quota_is_413_and_leaves_no_partial_file(
    client: httpx.Client, session_id: str
) -> None:
    too_big = b"z" * (70 * 1024 * 1024)  # the test policy's quota is 64 MB
    reply = client.put(f"/sessions/{session_id}/files/big.bin", content=too_big)
    assert reply.status_code == 413
    assert "quota" in reply.json()["error"]
    assert client.get(f"/sessions/{session_id}/files/big.bin").status_code == 404
