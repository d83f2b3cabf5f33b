"""What a session sees of the host (SECURITY.md, "The service side is attack surface
too"): the interpreter's own installation, the library directories and the allowed
programs; never the checkout or virtualenv the service runs from, nor a socket or
settings file kept there; and no other session's workspace, not even as a line of its
mount table.

The checkout is the zygote's ``PYTHONPATH`` (the service starts it so).  To plant a
socket and a settings file beside a checkout without touching the real one, the
planting tests start a zygote whose checkout is a copy of the ``sandbox`` package in a
temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox import Session, ZygoteClient, workspaces, zygote_client
from sandbox.confine import runtime
from sandbox.policy import Policy
from tests.security.harness import open_session, probe
from tests.zygotes import stop_zygote

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

CHECKOUT = Path(__file__).resolve().parents[2]
# What a mount table may show of other sessions' workspaces.
MOUNT_TABLES = ("/proc/self/mounts", "/proc/self/mountinfo", "/proc/1/mountinfo")
MOUNT_STATISTICS = "/proc/self/mountstats"


def host_mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return [line.split()[4] for line in table]


def mounts_under(directory: str) -> list[str]:
    return [point for point in host_mount_points() if point.startswith(directory.rstrip("/"))]


# --- the checkout and the virtualenv ---------------------------------------------------


async def test_no_file_of_the_checkout_is_readable_or_listable(session: Session) -> None:
    venv_programs = sorted(
        str(Path(sys.executable).parent / name)
        for name in os.listdir(Path(sys.executable).parent)
        if not name.startswith("python")
    )
    targets = {
        "pyproject": CHECKOUT / "pyproject.toml",
        "git": CHECKOUT / ".git",
        "sandbox source": CHECKOUT / "sandbox" / "worker.py",
    }
    for name, target in targets.items():
        assert target.exists(), f"the {name} target must exist on the host: {target}"
    results = await probe(
        session,
        f"""
        targets = {{name: path for name, path in {[(n, str(p)) for n, p in targets.items()]}}}
        for name, path in targets.items():
            attempt("read " + name, lambda: open(path, "rb").read(64))
        attempt("list checkout", lambda: os.listdir({str(CHECKOUT)!r}))
        attempt("exists", lambda: [p for p in targets.values() if os.path.lexists(p)])
        attempt("venv programs", lambda: [p for p in {venv_programs!r} if os.path.lexists(p)])
        attempt("venv config", lambda: open({str(Path(sys.prefix) / "pyvenv.cfg")!r}).read())
        import sandbox.worker
        attempt("read own module", lambda: open(sandbox.worker.__file__, "rb").read(64))
        allowed = {sorted(runtime.INSTALLATION | runtime.LIBRARY_DIRECTORIES)!r}
        attempt("sys.path", lambda: [p for p in sys.path
                                     if not any(p == a or p.startswith(a + "/") for a in allowed)])
        attempt("cwd", lambda: os.readlink("/proc/self/cwd"))
        attempt("exe", lambda: os.readlink("/proc/self/exe"))
        attempt("environ", lambda: dict(os.environ))
        # The block the zygote was started with (PYTHONPATH names the checkout).
        attempt("environ block", lambda: open("/proc/self/environ", "rb").read())
        """,
    )
    for name in targets:
        assert not results[f"read {name}"]["ok"], (name, results[f"read {name}"])
    assert not results["list checkout"]["ok"], results["list checkout"]
    assert results["exists"] == {"ok": True, "value": "[]"}
    # The virtualenv holds only the interpreter's link and where it leads, made for
    # sys.executable; not the service's own configuration.
    assert results["venv programs"] == {"ok": True, "value": "[]"}
    if sys.prefix != sys.base_prefix:
        real_home = os.path.dirname(os.path.realpath(sys.executable))
        assert results["venv config"]["value"] == repr(f"home = {real_home}\n")
    assert not results["read own module"]["ok"], results["read own module"]
    # Only the interpreter's installation and library directories: not the checkout
    # (PYTHONPATH) nor what the editable install's .pth file added.
    assert results["sys.path"] == {"ok": True, "value": "[]"}
    assert results["cwd"]["value"] == repr("/mnt/data")
    assert str(CHECKOUT) not in results["exe"]["value"]
    assert str(CHECKOUT) not in results["environ"]["value"]
    assert not results["environ block"]["ok"], results["environ block"]


@pytest.fixture
def copied_checkout(tmp_path: Path) -> Path:
    """A checkout of the sandbox package in a temporary directory, with what an operator
    might keep beside it: a settings file with a token, and a listening unix socket."""
    checkout = tmp_path / "checkout"
    shutil.copytree(
        CHECKOUT / "sandbox",
        checkout / "sandbox",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # Open to every uid, as a checkout usually is: only the session's view may stop it.
    for directory in (tmp_path, checkout, checkout / "sandbox"):
        directory.chmod(0o755)
    return checkout


@pytest.fixture
def checkout_zygote(
    copied_checkout: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ZygoteClient]:
    monkeypatch.setattr(zygote_client, "_PACKAGE_PARENT", str(copied_checkout))
    client = ZygoteClient(policy, tempfile.mkdtemp(prefix="codesherpa-state-"))
    client.start()
    try:
        yield client
    finally:
        stop_zygote(client)
        workspaces.remove_all(client.state_dir)
        shutil.rmtree(client.state_dir, ignore_errors=True)


@contextlib.contextmanager
def listening_socket(path: Path) -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        path.chmod(0o777)  # any uid may connect: only the session's view may stop it
        listener.listen(4)
        listener.setblocking(False)
        yield listener
    finally:
        listener.close()
        path.unlink(missing_ok=True)


async def test_a_socket_and_a_settings_file_beside_the_checkout_are_out_of_reach(
    checkout_zygote: ZygoteClient, copied_checkout: Path
) -> None:
    token = f"checkout-canary-{secrets.token_hex(12)}"
    settings = copied_checkout / "codesherpa.toml"
    settings.write_text(f'tokens = "tenant:{token}"\n')
    settings.chmod(0o644)
    with listening_socket(copied_checkout / "service.sock") as listener:
        async with open_session(checkout_zygote) as session:
            results = await probe(
                session,
                f"""
                def connect():
                    with socket.socket(socket.AF_UNIX) as client:
                        client.connect({str(copied_checkout / "service.sock")!r})
                        client.sendall(b"hello from a session")
                attempt("connect", connect)
                attempt("settings", lambda: open({str(settings)!r}).read())
                attempt("sandbox", lambda: os.listdir({str(copied_checkout / "sandbox")!r}))
                attempt("sys.path", lambda: [p for p in sys.path
                                             if p.startswith({str(copied_checkout)!r})])
                """,
            )
            assert not results["connect"]["ok"], results["connect"]
            assert not results["settings"]["ok"], results["settings"]
            assert not results["sandbox"]["ok"], results["sandbox"]
            assert results["sys.path"] == {"ok": True, "value": "[]"}
            with pytest.raises(BlockingIOError):
                listener.accept()
            # The session's sandbox was imported from the copy, before the fork.
            origin = await session.run_python("import sandbox; sandbox.__file__")
            assert origin.reply.value == repr(str(copied_checkout / "sandbox" / "__init__.py"))
    assert token not in json.dumps(results)


# --- other sessions' workspaces ---------------------------------------------------------


@pytest.fixture(params=["covered", "visible"])
def any_zygote(
    request: pytest.FixtureRequest, zygote: ZygoteClient, visible_zygote: ZygoteClient
) -> ZygoteClient:
    return zygote if request.param == "covered" else visible_zygote


@contextlib.asynccontextmanager
async def two_sessions(zygote: ZygoteClient) -> AsyncIterator[tuple[Session, Session]]:
    async with open_session(zygote) as first, open_session(zygote) as second:
        yield first, second


async def mount_view(session: Session) -> dict[str, str]:
    code = f"""
        import json
        view = {{}}
        for path in {[*MOUNT_TABLES, MOUNT_STATISTICS]!r}:
            try:
                with open(path) as table:
                    view[path] = table.read()
            except PermissionError:  # mountstats is 0400, and the worker not dumpable
                pass
        # Whole, through the workspace: a reply's output is cut to its cap.
        with open("/mnt/data/mount-view.json", "w") as out:
            json.dump(view, out)
        """
    outcome = await session.run_python(textwrap.dedent(code), timeout=10)
    assert outcome.reply.status == "ok", outcome.reply.error
    view: dict[str, str] = json.loads(Path(session.workspace, "mount-view.json").read_text())
    return view


async def test_no_session_sees_another_workspace_in_its_mount_table(
    any_zygote: ZygoteClient,
) -> None:
    root = os.path.realpath(workspaces.workspaces_root(any_zygote.state_dir))
    async with two_sessions(any_zygote) as (first, second):
        names = {os.path.basename(s.workspace) for s in (first, second)}
        # Control: the host's mount table lists both, so the search below can find them.
        on_host = "\n".join(host_mount_points())
        assert all(name in on_host for name in names)
        for session, other in ((first, second), (second, first)):
            view = await mount_view(session)
            assert set(MOUNT_TABLES) <= set(view)
            for path, table in view.items():
                assert os.path.basename(other.workspace) not in table, path
                # Not even its own: the session knows it as /mnt/data only.
                assert os.path.basename(session.workspace) not in table, path
                assert root + "/" not in table, path
            own = view["/proc/self/mountinfo"].splitlines()
            assert any(line.split()[4] == "/mnt/data" for line in own)


async def test_a_session_cannot_reach_another_workspace_by_its_path(
    any_zygote: ZygoteClient,
) -> None:
    async with two_sessions(any_zygote) as (first, second):
        Path(second.workspace, "mine.txt").write_text("second's")
        results = await probe(
            first,
            f"""
            attempt("read", lambda: open({second.workspace + "/mine.txt"!r}).read())
            attempt("statvfs", lambda: os.statvfs({second.workspace!r}).f_blocks)
            attempt("list root", lambda: os.listdir({os.path.dirname(second.workspace)!r}))
            """,
        )
        assert not results["read"]["ok"], results["read"]
        assert not results["list root"]["ok"], results["list root"]
        if results["statvfs"]["ok"]:
            # Where the state directory is visible, the name leads to the directory the
            # workspace is mounted on, not to the workspace: another filesystem.
            assert results["statvfs"]["value"] != repr(os.statvfs(second.workspace).f_blocks)


async def test_the_workspaces_root_is_released_when_its_zygote_stops(policy: Policy) -> None:
    state_dir = tempfile.mkdtemp(prefix="codesherpa-state-")
    before = mounts_under(state_dir)
    client = ZygoteClient(policy, state_dir)
    client.start()
    try:
        root = workspaces.workspaces_root(state_dir)
        assert workspaces.is_mount_point(root)
        async with open_session(client) as session:
            # Refused while a workspace is mounted beneath it: the session keeps its own.
            workspaces.release_root(state_dir)
            assert workspaces.is_mount_point(root)
            assert (await session.run_python("1 + 1")).reply.value == "2"
    finally:
        stop_zygote(client)
    try:
        assert before == []
        assert mounts_under(state_dir) == []
    finally:
        workspaces.remove_all(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="workspaces are mounts only for a root service")
async def test_leftover_clean_up_removes_workspaces_and_the_root_mount() -> None:
    state_dir = tempfile.mkdtemp(prefix="codesherpa-state-")
    try:
        workspaces.prepare_root(state_dir)
        workspaces.mount_root(state_dir)
        leftover = workspaces.new_path(state_dir)
        workspaces.create(leftover, None, 8)
        assert len(mounts_under(state_dir)) == 2
        workspaces.remove_all(state_dir)
        assert mounts_under(state_dir) == []
        assert os.listdir(workspaces.workspaces_root(state_dir)) == []
    finally:
        workspaces.remove_all(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


# --- what a session still has -----------------------------------------------------------


async def test_the_libraries_and_the_allowed_programs_still_work(session: Session) -> None:
    code = """
        import json, subprocess, sys
        import numpy, pandas
        import matplotlib.pyplot as plt
        lazily = [m for m in ("pandas.io.stata", "numpy.lib.recfunctions")
                  if m not in sys.modules]
        import pandas.io.stata, numpy.lib.recfunctions
        frame = pandas.DataFrame({"x": numpy.arange(4)})
        figure, axes = plt.subplots()
        axes.plot(frame["x"])
        figure.savefig("/mnt/data/figure.png")
        fresh = subprocess.run(
            [sys.executable, "-c", "import numpy; print(int(numpy.arange(5).sum()))"],
            capture_output=True, text=True,
        )
        print(json.dumps({"sum": int(frame["x"].sum()), "lazily": lazily,
                          "fresh": fresh.stdout.strip() or fresh.stderr[-300:]}))
        """
    outcome = await session.run_python(textwrap.dedent(code), timeout=10)
    assert outcome.reply.status == "ok", outcome.reply.error
    report = json.loads(outcome.reply.stdout)
    assert report["sum"] == 6
    # A module first imported after the fork comes from the bound library directory.
    assert report["lazily"] != []
    # An interpreter started through sys.executable finds the same libraries.
    assert report["fresh"] == "10"
    assert Path(session.workspace, "figure.png").stat().st_size > 1000
    listing = await session.run_command("ls /mnt/data")
    assert listing.reply.status == "ok", listing.reply.error
    assert "figure.png" in listing.reply.stdout
