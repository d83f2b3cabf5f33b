"""One owner per state directory: refused to another process, and never taken on a
directory or lock file that someone else could replace or hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import state_lock
from sandbox.errors import StateDirectoryUnsafe

ROOT = Path(__file__).resolve().parents[3]


def test_claims_in_one_process_are_counted_and_the_last_release_frees_it(tmp_path: Path) -> None:
    state_lock.acquire(str(tmp_path))
    state_lock.acquire(str(tmp_path))
    state_lock.release(str(tmp_path))
    assert state_lock.owns(str(tmp_path))
    state_lock.release(str(tmp_path))
    assert not state_lock.owns(str(tmp_path))
    assert (tmp_path / state_lock.LOCK_NAME).stat().st_mode & 0o777 == 0o600


def test_another_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    with state_lock.claimed(str(tmp_path)):
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "from sandbox import state_lock, StateDirectoryInUse\n"
                f"try:\n    state_lock.acquire({str(tmp_path)!r})\n"
                "except StateDirectoryInUse as exc:\n    print(exc.pid)\n",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert other.stdout.strip() == str(os.getpid())


def test_a_state_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StateDirectoryUnsafe, match="writable by others"):
        state_lock.acquire(str(shared))
    assert not (shared / state_lock.LOCK_NAME).exists()


def test_a_state_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(StateDirectoryUnsafe, match="owner uid 4242"):
        state_lock.acquire(str(theirs))


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_lock_file_planted_as_a_link_or_a_fifo_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    lock = tmp_path / state_lock.LOCK_NAME
    if kind == "symlink":
        lock.symlink_to(target)
    else:
        os.mkfifo(lock)
    with pytest.raises(StateDirectoryUnsafe):
        state_lock.acquire(str(tmp_path))
    assert not state_lock.owns(str(tmp_path))
    assert target.read_text() == "untouched"
