"""The service's own reads and writes of a workspace: bounded, and never waiting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sandbox import workspaces
from service import workspace_files
from service.workspace_files import NotRegular, TooLarge, Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(str(tmp_path))


def test_a_read_stops_one_byte_past_its_cap(tmp_path: Path, workspace: Workspace) -> None:
    (tmp_path / "data").write_bytes(b"x" * 10)
    assert workspace.read_capped("data", 10) == b"x" * 10
    # Sparse and huge: only cap + 1 bytes are read before it is refused.
    os.truncate(tmp_path / "data", 1 << 40)
    with pytest.raises(TooLarge):
        workspace.read_capped("data", 10)


def test_a_fifo_is_refused_without_waiting_for_the_other_end(
    tmp_path: Path, workspace: Workspace
) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegular):
        workspace.create("fifo")
    with pytest.raises(NotRegular):
        workspace.read_capped("fifo", 10)


def test_a_write_never_truncates_what_it_then_refuses(tmp_path: Path, workspace: Workspace) -> None:
    (tmp_path / "kept").write_bytes(b"kept")
    os.link(tmp_path / "kept", tmp_path / "second-name")
    if workspace._own_filesystem:
        pytest.skip("a hard link is refused only outside a workspace's own filesystem")
    with pytest.raises(workspace_files.UnsafePath):
        workspace.create("second-name")
    assert (tmp_path / "kept").read_bytes() == b"kept"


def test_a_listing_visits_a_bounded_number_of_entries(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(300):
        (tmp_path / f"d{index:03d}").mkdir()
        (tmp_path / f"d{index:03d}" / "file").write_bytes(b"")
    monkeypatch.setattr(workspace_files, "MAX_VISITED", 100)
    opened = 0
    open_dir = workspace._open

    def counting_open(path: str, flags: int, mode: int = 0) -> int:
        nonlocal opened
        opened += 1
        return open_dir(path, flags, mode)

    monkeypatch.setattr(workspace, "_open", counting_open)
    assert len(workspace.listing()) < 100
    assert opened <= 100
    # Under the bound, the same tree is listed in full.
    monkeypatch.setattr(workspace_files, "MAX_VISITED", 1000)
    assert len(workspace.listing()) == 300


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_handing_a_workspace_over_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(30):
        (tmp_path / str(index)).write_bytes(b"")
    monkeypatch.setattr(workspaces, "MAX_HANDED_OVER", 10)
    workspaces.hand_over(str(tmp_path), 54321)
    handed = [path for path in tmp_path.iterdir() if path.lstat().st_uid == 54321]
    assert len(handed) == 10


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_directory_swapped_for_a_link_while_handing_over_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "workspace"
    (workspace / "inner").mkdir(parents=True)
    (workspace / "inner" / "mine.txt").write_text("")
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret.txt").write_text("")
    real_scandir = os.scandir

    def swap_when_listed(directory: Any) -> Any:
        named = f"/proc/self/fd/{directory}" if isinstance(directory, int) else directory
        if not (workspace / "was-inner").exists() and os.path.samefile(named, workspace / "inner"):
            # The session's process, still running, swaps the directory for a link just
            # as the service comes to list it.
            (workspace / "inner").rename(workspace / "was-inner")
            (workspace / "inner").symlink_to(outside)
        return real_scandir(directory)

    monkeypatch.setattr(os, "scandir", swap_when_listed)
    workspaces.hand_over(str(workspace), 54321)
    assert (workspace / "was-inner").is_dir()  # the swap did happen mid-walk
    assert (workspace / "was-inner" / "mine.txt").lstat().st_uid == 54321
    assert (outside / "secret.txt").lstat().st_uid != 54321
    assert outside.lstat().st_uid != 54321
