"""The pool ledger: what a stopped zygote's ledger still lists is removed, nothing else."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import pool_ledger, workspaces
from sandbox.policy import Policy
from sandbox.zygote import ReadyWorker, Zygote

# No group of this name exists: clearing must still remove the workspaces.
PARENT = "codesherpa-ledger-test"
KEY = "0123456789abcdef"
OURS, THEIRS = "00000000000000aa", "00000000000000bb"


@pytest.fixture(autouse=True)
def _release_the_workspaces_root(tmp_path: Path) -> Iterator[None]:
    # A Zygote made in this process (as root) mounts the directory of all workspaces.
    yield
    workspaces.release_root(str(tmp_path))


def _workspace(state_dir: Path) -> str:
    workspaces.prepare_root(str(state_dir))
    path = workspaces.new_path(str(state_dir))
    os.mkdir(path)
    Path(path, "data.txt").write_text("x")
    return path


def _listed(state_dir: Path, ledger: str) -> list[str]:
    directory = pool_ledger.ledger_dir(str(state_dir), ledger)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_a_listed_workspace_is_removed_with_the_ledger(tmp_path: Path) -> None:
    ready = _workspace(tmp_path)
    pool_ledger.record(str(tmp_path), OURS, ready, KEY)
    assert pool_ledger.clear(str(tmp_path), OURS, PARENT) == 1
    assert not os.path.exists(ready)
    assert not os.path.exists(pool_ledger.ledger_dir(str(tmp_path), OURS))


def test_a_struck_worker_keeps_its_workspace(tmp_path: Path) -> None:
    handed_out = _workspace(tmp_path)
    pool_ledger.record(str(tmp_path), OURS, handed_out, KEY)
    pool_ledger.strike(str(tmp_path), OURS, handed_out)
    assert pool_ledger.clear(str(tmp_path), OURS, PARENT) == 0
    assert Path(handed_out, "data.txt").read_text() == "x"


def test_another_zygotes_ledger_is_left_alone(tmp_path: Path) -> None:
    theirs = _workspace(tmp_path)
    pool_ledger.record(str(tmp_path), THEIRS, theirs, KEY)
    assert pool_ledger.clear(str(tmp_path), OURS, PARENT) == 0
    assert os.path.isdir(theirs)
    assert _listed(tmp_path, THEIRS) == [os.path.basename(theirs)]


def test_an_entry_that_names_no_workspace_token_removes_nothing(tmp_path: Path) -> None:
    workspaces.prepare_root(str(tmp_path))
    precious = Path(workspaces.workspaces_root(str(tmp_path)), "precious")
    precious.mkdir()
    pool_ledger.record(str(tmp_path), OURS, str(precious), KEY)
    assert pool_ledger.clear(str(tmp_path), OURS, PARENT) == 0
    assert precious.is_dir()


def test_a_ledger_name_that_is_not_a_token_is_refused(tmp_path: Path) -> None:
    # An empty or relative name would make the ledger directory the root of all ledgers.
    for name in ("", "..", "../workspaces"):
        with pytest.raises(ValueError, match="ledger name"):
            pool_ledger.clear(str(tmp_path), name, PARENT)


def test_the_ledgers_are_private_to_the_service(tmp_path: Path) -> None:
    pool_ledger.record(str(tmp_path), OURS, _workspace(tmp_path), KEY)
    for directory in (
        pool_ledger.ledgers_root(str(tmp_path)),
        pool_ledger.ledger_dir(str(tmp_path), OURS),
    ):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


# -- the zygote's side: listed while ready, struck before it is handed over ------------


def _zygote(state_dir: Path) -> Zygote:
    return Zygote(Policy(), str(state_dir), os.getpid(), PARENT, OURS)


def _ready(zygote: Zygote, state_dir: Path) -> ReadyWorker:
    """A pool entry as fork_worker leaves it, with a channel and pidfd of our own."""
    workspace = _workspace(state_dir)
    pool_ledger.record(str(state_dir), OURS, workspace, KEY)
    ours, theirs = socket.socketpair()
    theirs.close()
    ready = ReadyWorker(os.getpid(), os.pidfd_open(os.getpid()), ours, workspace, None, KEY, False)
    zygote._pool.append(ready)
    return ready


def test_a_ready_worker_is_struck_off_before_the_zygote_hands_it_over(tmp_path: Path) -> None:
    zygote = _zygote(tmp_path)
    ready = _ready(zygote, tmp_path)
    assert _listed(tmp_path, OURS) == [os.path.basename(ready.workspace)]
    taken = zygote.take(None)
    assert taken is ready
    assert _listed(tmp_path, OURS) == []
    ready.close()


def test_a_fork_that_fails_takes_its_new_workspace_and_entry_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zygote = _zygote(tmp_path)

    def fail(*_args: object) -> ReadyWorker:
        raise RuntimeError("the intermediate process could not fork a worker")

    monkeypatch.setattr(zygote, "_start_worker", fail)
    with pytest.raises(RuntimeError):
        zygote.fork_worker(None)
    assert os.listdir(workspaces.workspaces_root(str(tmp_path))) == []
    assert _listed(tmp_path, OURS) == []


def test_a_restarted_sessions_workspace_is_never_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zygote = _zygote(tmp_path)
    kept = _workspace(tmp_path)
    listed_while_forking: list[list[str]] = []

    def fork_and_look(*_args: object) -> ReadyWorker:
        listed_while_forking.append(_listed(tmp_path, OURS))
        raise RuntimeError("stop here")

    monkeypatch.setattr(zygote, "_start_worker", fork_and_look)
    with pytest.raises(RuntimeError):
        zygote.take(kept)
    assert listed_while_forking == [[]]
    assert Path(kept, "data.txt").read_text() == "x"
