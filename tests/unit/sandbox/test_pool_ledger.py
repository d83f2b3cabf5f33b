"""The pool ledger: what a dead zygote's directory still lists is removed, nothing else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandbox import pool_ledger, workspaces

# No group of this name exists: clearing must still remove the workspaces.
PARENT = "codesherpa-ledger-test"
KEY = "0123456789abcdef"


def _workspace(state_dir: Path) -> str:
    workspaces.prepare_root(str(state_dir))
    path = workspaces.new_path(str(state_dir))
    os.mkdir(path)
    Path(path, "data.txt").write_text("x")
    return path


def test_a_listed_workspace_is_removed_with_the_ledger(tmp_path: Path) -> None:
    ready = _workspace(tmp_path)
    pool_ledger.record(str(tmp_path), 41, ready, KEY)
    assert pool_ledger.clear(str(tmp_path), 41, PARENT) == 1
    assert not os.path.exists(ready)
    assert not os.path.exists(pool_ledger.ledger_dir(str(tmp_path), 41))


def test_a_struck_worker_keeps_its_workspace(tmp_path: Path) -> None:
    handed_out = _workspace(tmp_path)
    pool_ledger.record(str(tmp_path), 41, handed_out, KEY)
    pool_ledger.strike(str(tmp_path), 41, handed_out)
    assert pool_ledger.clear(str(tmp_path), 41, PARENT) == 0
    assert Path(handed_out, "data.txt").read_text() == "x"


def test_another_zygotes_ledger_is_left_alone(tmp_path: Path) -> None:
    theirs = _workspace(tmp_path)
    pool_ledger.record(str(tmp_path), 42, theirs, KEY)
    assert pool_ledger.clear(str(tmp_path), 41, PARENT) == 0
    assert os.path.isdir(theirs)
    assert os.listdir(pool_ledger.ledger_dir(str(tmp_path), 42)) == [os.path.basename(theirs)]


def test_an_entry_that_names_no_workspace_token_removes_nothing(tmp_path: Path) -> None:
    workspaces.prepare_root(str(tmp_path))
    precious = Path(workspaces.workspaces_root(str(tmp_path)), "precious")
    precious.mkdir()
    pool_ledger.record(str(tmp_path), 41, str(precious), KEY)
    assert pool_ledger.clear(str(tmp_path), 41, PARENT) == 0
    assert precious.is_dir()


def test_the_ledgers_are_private_to_the_service(tmp_path: Path) -> None:
    pool_ledger.record(str(tmp_path), 41, _workspace(tmp_path), KEY)
    for directory in (
        pool_ledger.ledgers_root(str(tmp_path)),
        pool_ledger.ledger_dir(str(tmp_path), 41),
    ):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
