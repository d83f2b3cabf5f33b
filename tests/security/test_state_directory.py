"""Other programs on the host meet a running service's state directory (the service
side is attack surface too: SECURITY.md, guarantee 2): a second ``codesherpa serve``,
``codesherpa doctor`` or any zygote started on the same directory must not clear its
workspaces or kill its sessions.  One process owns a state directory at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox import Session, StateDirectoryInUse, ZygoteClient, load_policy, state_lock
from tests.api.server import ROOT, TEST_POLICY, Server, free_port, start_server, stop_server

pytestmark = [pytest.mark.attack, pytest.mark.anyio]

CLI_TIMEOUT_S = 120


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path)
    yield running
    stop_server(running)


@pytest.fixture
def session_with_state(server: Server) -> Iterator[tuple[httpx.Client, str, Path]]:
    """A session holding a variable and a file, and the workspaces directory on the host."""
    with server.client() as client:
        session_id = client.post("/sessions").json()["session_id"]
        setup = "kept = 'still here'\nopen('notes.txt', 'w').write('mine')"
        reply = client.post("/repl", json={"code": setup, "session_id": session_id}).json()
        assert reply["status"] == "ok", reply
        yield client, session_id, server.state_dir / "workspaces"


def _codesherpa(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _assert_session_intact(client: httpx.Client, session_id: str, workspaces: Path) -> None:
    code = "kept, open('notes.txt').read()"
    reply = client.post("/repl", json={"code": code, "session_id": session_id}).json()
    assert reply["status"] == "ok", reply
    assert reply["result"] == "('still here', 'mine')"
    assert not reply.get("restarted")
    assert any(workspaces.iterdir())


def test_a_second_serve_on_the_same_state_directory_refuses_and_touches_nothing(
    server: Server, session_with_state: tuple[httpx.Client, str, Path]
) -> None:
    client, session_id, workspaces = session_with_state
    before = sorted(entry.name for entry in workspaces.iterdir())
    second = _codesherpa(
        "serve",
        "--port",
        str(free_port()),
        env={
            "CODESHERPA_STATE_DIR": str(server.state_dir),
            "CODESHERPA_POLICY": str(TEST_POLICY),
        },
    )
    assert second.returncode == 1
    assert str(server.state_dir) in second.stderr
    assert f"pid {server.process.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert sorted(entry.name for entry in workspaces.iterdir()) == before
    _assert_session_intact(client, session_id, workspaces)
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_doctor_beside_a_running_service_leaves_its_sessions_alone(
    server: Server, session_with_state: tuple[httpx.Client, str, Path], tmp_path: Path
) -> None:
    client, session_id, workspaces = session_with_state
    before = sorted(entry.name for entry in workspaces.iterdir())
    doctor_tmp = tmp_path / "doctor-tmp"
    doctor_tmp.mkdir()
    report = _codesherpa(
        "doctor",
        "--policy",
        str(TEST_POLICY),
        # Pointed at the service's own directory on purpose: doctor must not use it.
        env={"CODESHERPA_STATE_DIR": str(server.state_dir), "TMPDIR": str(doctor_tmp)},
    )
    assert report.returncode in (0, 1), report.stderr
    assert "isolation layers on this host" in report.stdout
    assert sorted(entry.name for entry in workspaces.iterdir()) == before
    _assert_session_intact(client, session_id, workspaces)
    # Its own directory is gone when it is done.
    assert list(doctor_tmp.iterdir()) == []


def test_a_zygote_on_a_directory_another_process_owns_clears_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    left_by_owner = state_dir / "workspaces" / "0123abcd"
    left_by_owner.mkdir(parents=True)
    (left_by_owner / "data.csv").write_text("the owner's")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sandbox import state_lock; "
            f"state_lock.acquire({str(state_dir)!r}); print('held', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        zygote = ZygoteClient(load_policy(str(TEST_POLICY)), str(state_dir))
        with pytest.raises(StateDirectoryInUse) as refused:
            zygote.start()
        assert refused.value.pid == holder.pid
        assert (left_by_owner / "data.csv").read_text() == "the owner's"
        assert zygote.pid is None
        assert not state_lock.owns(str(state_dir))
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # Once the owner is gone (however it ended), the directory can be taken.
    with state_lock.claimed(str(state_dir)):
        assert state_lock.owns(str(state_dir))
    assert not state_lock.owns(str(state_dir))


def test_the_lock_file_is_private(server: Server) -> None:
    lock = server.state_dir / state_lock.LOCK_NAME
    assert lock.stat().st_mode & 0o777 == 0o600
    assert lock.read_text().strip() == str(server.process.pid)


async def test_a_second_zygote_of_the_same_process_clears_nothing(
    zygote: ZygoteClient,
) -> None:
    # A library user starting a second client on the directory its first one serves:
    # that process owns the lock already, so only the running clients tell it apart.
    session = await Session.start(zygote)
    try:
        assert (await session.run_python("open('kept.txt', 'w').write('x')")).reply.status == "ok"
        second = ZygoteClient(zygote.policy, zygote.state_dir)
        with pytest.raises(StateDirectoryInUse):
            second.start()
        assert second.pid is None
        assert (Path(session.workspace) / "kept.txt").exists()
        assert (await session.run_python("open('kept.txt').read()")).reply.value == "'x'"
    finally:
        await session.close()
