"""Lifecycle: a dead zygote comes back, shutdown leaves nothing, a crash leaks nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sandbox.zygote_client import cgroup_parent_for
from tests.api.server import ADMIN, Server, start_server, stop_server

# sessions.warm_pool in tests/policies/test.toml
WARM_POOL = 2


def _worker_uid(client: httpx.Client, session_id: str) -> int:
    identity = client.get(f"/sessions/{session_id}").json()["isolation"]["identity"]
    match = re.search(r"uid and gid (\d+)", identity)
    assert match, identity
    return int(match.group(1))


def _processes_of(uid: int) -> list[psutil.Process]:
    """Live processes of a uid.  Zombies are ended processes; here nothing reaps
    them because the test runner is init of its PID namespace and never waits."""
    return [
        p
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"]
        and p.info["uids"].real == uid
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _mounts_under(path: Path) -> list[str]:
    """Mount points beneath ``path``, not ``path`` itself (the directory of all
    workspaces is a mount of its own while the service runs)."""
    below = f"{path}/"
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(below)]


def _session_groups(server: Server) -> set[str]:
    """The session keys that have a cgroup under the service's parent, in any hierarchy."""
    parent = cgroup_parent_for(str(server.state_dir))
    return {group.name for group in Path("/sys/fs/cgroup").glob(f"**/{parent}/*") if group.is_dir()}


def _zombie_children(process: psutil.Process) -> list[int]:
    zombies = []
    for child in process.children():
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
    return zombies


def _wait_until(condition: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def _post_quietly(server: Server, body: dict[str, str]) -> None:
    with server.client() as client, contextlib.suppress(httpx.HTTPError):
        client.post("/repl", json=body)


def _start_a_busy_session(client: httpx.Client) -> tuple[str, int]:
    session_id = client.post("/sessions").json()["session_id"]
    code = "import subprocess\nkeep = subprocess.Popen(['sleep', '300'])\nstate = 'kept'"
    reply = client.post("/repl", json={"code": code, "session_id": session_id}).json()
    assert reply["status"] == "ok", reply
    uid = _worker_uid(client, session_id)
    assert len(_processes_of(uid)) >= 2
    return session_id, uid


def test_a_killed_zygote_is_restarted_and_live_sessions_keep_their_state(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        client = server.client()
        session_id, _ = _start_a_busy_session(client)
        written = "open('notes.txt', 'w').write('in the workspace')"
        assert client.post("/repl", json={"code": written, "session_id": session_id}).is_success
        workspaces = server.state_dir / "workspaces"
        # The session's workspace and the pool's: each its own tmpfs.
        before = {entry.name for entry in workspaces.iterdir()}
        assert len(before) == 1 + WARM_POOL
        groups_before = _session_groups(server)
        isolation = client.get(f"/sessions/{session_id}").json()["isolation"]
        assert bool(groups_before) == isolation["cgroup"].startswith("active")
        zygote_pid = client.get("/readyz", headers=ADMIN).json()["zygote"]["pid"]
        os.kill(zygote_pid, signal.SIGKILL)
        assert _wait_until(
            lambda: (
                not psutil.pid_exists(zygote_pid)
                or psutil.Process(zygote_pid).status() == psutil.STATUS_ZOMBIE
            )
        )
        created = client.post("/sessions")
        assert created.status_code == 201
        assert (
            client.post(
                "/repl", json={"code": "1 + 1", "session_id": created.json()["session_id"]}
            ).json()["result"]
            == "2"
        )
        kept = client.post("/repl", json={"code": "state", "session_id": session_id}).json()
        assert kept["result"] == "'kept'"
        read = "open('notes.txt').read()"
        kept = client.post("/repl", json={"code": read, "session_id": session_id}).json()
        assert kept["result"] == "'in the workspace'"
        # The dead zygote's ready workers took their workspaces with them; two
        # sessions and the new pool hold the rest.
        assert _wait_until(lambda: len(list(workspaces.iterdir())) == 2 + WARM_POOL)
        assert len(before - {entry.name for entry in workspaces.iterdir()}) == WARM_POOL
        assert len(_mounts_under(workspaces)) == 2 + WARM_POOL
        if groups_before:  # where the service has cgroups, the pool's went too
            # Removed as each dead worker is reaped, which a loaded machine may delay.
            assert _wait_until(lambda: len(groups_before - _session_groups(server)) == WARM_POOL)
            assert _wait_until(lambda: len(_session_groups(server)) == 2 + WARM_POOL)
        assert "codesherpa_zygote_restarts 1.0" in client.get("/metrics", headers=ADMIN).text
        assert client.get("/readyz", headers=ADMIN).json()["zygote"]["pid"] != zygote_pid
        # The dead zygote's ready workers exited with it; the service reaps them too.
        service = psutil.Process(server.process.pid)
        assert _wait_until(lambda: not _zombie_children(service), timeout_s=20)
        client.close()
    finally:
        stop_server(server)


def test_graceful_shutdown_ends_every_worker_and_removes_workspaces(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    with server.client() as client:
        _, uid = _start_a_busy_session(client)
    stop_server(server)
    assert server.process.returncode is not None
    assert _wait_until(lambda: _processes_of(uid) == [])
    assert list((server.state_dir / "workspaces").iterdir()) == []
    assert _mounts_under(server.state_dir) == []
    parent = cgroup_parent_for(str(server.state_dir))
    assert not any(Path("/sys/fs/cgroup").glob(f"**/{parent}")), "cgroup parent left behind"


@pytest.mark.timeout(180)
def test_nothing_leaks_across_a_crash_and_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    with server.client() as client:
        session_id, uid = _start_a_busy_session(client)
    # A worker in the middle of a run does not read its channel: only the
    # parent-death signal can end it when the service dies.
    busy = threading.Thread(
        target=_post_quietly,
        args=(server, {"code": "import time\ntime.sleep(60)", "session_id": session_id}),
    )
    busy.start()
    time.sleep(1)
    server.process.kill()
    server.process.wait()
    busy.join()
    # Workers die with the service (parent-death signal); their PID namespaces take
    # every process they started with them.
    assert _wait_until(lambda: _processes_of(uid) == [])
    old_mounts = _mounts_under(server.state_dir / "workspaces")
    assert old_mounts  # the crash left workspaces mounted
    old_workspaces = set((server.state_dir / "workspaces").iterdir())
    again = start_server(tmp_path)
    try:
        assert old_workspaces.isdisjoint((again.state_dir / "workspaces").iterdir())
        assert set(old_mounts).isdisjoint(_mounts_under(again.state_dir / "workspaces"))
        with again.client() as client:
            assert client.post("/repl", json={"code": "'fresh'"}).json()["result"] == "'fresh'"
    finally:
        stop_server(again)


def test_a_session_ended_during_a_run_gets_no_fresh_worker(tmp_path: Path) -> None:
    # The run's worker is killed under it; the run must not start a replacement for a
    # session that no longer exists, which nothing would ever end.
    server = start_server(tmp_path)
    try:
        client = server.client()
        session_id = client.post("/sessions").json()["session_id"]
        assert client.post("/repl", json={"code": "1", "session_id": session_id}).is_success
        uid = _worker_uid(client, session_id)
        groups_before = _session_groups(server)
        replies: list[httpx.Response] = []

        def run() -> None:
            with server.client() as runner:
                body = {"code": "import time; time.sleep(60)", "session_id": session_id}
                replies.append(runner.post("/repl", json=body))

        running = threading.Thread(target=run)
        running.start()
        assert _wait_until(lambda: client.get(f"/sessions/{session_id}").json()["busy"])
        assert client.delete(f"/sessions/{session_id}").status_code == 204
        running.join(30)
        reply = replies[0].json()
        assert reply["status"] == "killed"
        assert not reply["restarted"]
        assert "the session was ended" in reply["error"]
        assert "tries again" not in reply["error"]
        assert _wait_until(lambda: _processes_of(uid) == [])
        # Beside the zygote, the service's children are the pool's ready workers (it
        # is their subreaper), and nothing else once the pool is full again.
        zygote = client.get("/readyz", headers=ADMIN).json()["zygote"]["pid"]
        service = psutil.Process(server.process.pid)

        def workers() -> int:
            children = [child for child in service.children() if child.pid != zygote]
            return sum(child.status() != psutil.STATUS_ZOMBIE for child in children)

        assert _wait_until(lambda: workers() == WARM_POOL)
        time.sleep(1.0)  # a replacement would have been made by now
        assert workers() == WARM_POOL
        if groups_before:
            assert len(_session_groups(server)) == WARM_POOL
        client.close()
    finally:
        stop_server(server)
