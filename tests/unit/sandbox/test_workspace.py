"""What a run changed in the workspace: the snapshot a worker takes before and after."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox import workspace
from sandbox.protocol import ChangedFile


def test_a_snapshot_names_every_regular_file_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "out" / "plots").mkdir(parents=True)
    (tmp_path / "out" / "plots" / "figure-1.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty").mkdir()

    seen = workspace.snapshot(str(tmp_path))

    assert set(seen) == {"data.csv", "out/plots/figure-1.png"}
    assert seen["data.csv"][1] == 4
    assert seen["out/plots/figure-1.png"][1] == 4


def test_a_snapshot_of_the_current_directory_uses_bare_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    (tmp_path / "top.txt").write_text("xy")
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        seen = workspace.snapshot()
    finally:
        os.chdir(previous)

    assert set(seen) == {"top.txt", "sub/notes.txt"}


def test_symlinks_are_neither_followed_nor_listed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "link-to-dir").symlink_to(outside)
    (root / "link-to-file").symlink_to(outside / "secret.txt")

    assert workspace.snapshot(str(root)) == {}


def test_changed_files_are_the_new_and_the_modified_ones_by_name(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("same")
    (tmp_path / "edited.txt").write_text("old")
    before = workspace.snapshot(str(tmp_path))
    (tmp_path / "edited.txt").write_text("longer now")
    (tmp_path / "new.txt").write_text("n")

    changed = workspace.changed_files(before, workspace.snapshot(str(tmp_path)))

    assert changed == [ChangedFile(name="edited.txt", size=10), ChangedFile(name="new.txt", size=1)]
