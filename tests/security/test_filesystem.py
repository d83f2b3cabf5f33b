"""Filesystem attacks from a real worker (the attack class "filesystem", and
SECURITY.md guarantee 3: no shared files, tmp or shm).

Every attack runs inside a confined session; the test then looks at the *host* for
its effect: a file that must not exist, a secret that must not appear in any field of
any reply.  Host targets live in two places:

* ``/usr/local/bin`` — the worker's mount namespace shows it (every non-system
  top-level directory it covers), so only Landlock (and the per-session uid, which the
  0o777/0o644 modes take out of the way) stops the attack;
* pytest's ``tmp_path`` under ``/tmp`` — hidden behind the worker's private ``/tmp``.

Controls show that the same action works on an allowed target (the workspace), so a
test cannot pass because the action itself is broken.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import RunReply, Session, ZygoteClient
from sandbox.confine import runtime
from tests.security.harness import (
    VISIBLE_TMP,
    Results,
    everything_said,
    open_session,
    probe,
    probe_with_reply,
)

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

# The sandbox's refusals; ENOENT only where the mount namespace hides the target.
DENIED = frozenset({errno.EACCES, errno.EPERM})
HIDDEN = DENIED | {errno.ENOENT}


def refused(result: dict[str, Any], allowed: frozenset[int] = HIDDEN) -> bool:
    return result["ok"] is False and result["errno"] in allowed


def host_entries(path: Path) -> list[str]:
    return sorted(os.listdir(path))


@dataclass(frozen=True)
class Outside:
    """A host directory outside every workspace, open to every uid by its modes."""

    root: Path  # 0o755
    drop: Path  # 0o777: any uid may write here, unless the sandbox stops it
    canary: Path  # 0o644 file holding `secret`
    secret: str
    visible: bool  # whether the worker's mount namespace shows this path at all

    @property
    def refusals(self) -> frozenset[int]:
        """What an attack on this place may fail with: never "missing" if it is visible."""
        return DENIED if self.visible else HIDDEN


@pytest.fixture(params=["visible", "pytest-tmp"])
def outside(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outside]:
    visible = request.param == "visible"
    if visible:
        root = Path(tempfile.mkdtemp(prefix="codesherpa-attack-", dir=VISIBLE_TMP))
    else:
        root = tmp_path / "outside"
        root.mkdir()
    root.chmod(0o755)
    drop = root / "drop"
    drop.mkdir()
    drop.chmod(0o777)  # world-writable on purpose: only the sandbox may stop a write
    secret = f"host-canary-{secrets.token_hex(12)}"
    canary = root / "canary.txt"
    canary.write_text(secret + "\n")
    canary.chmod(0o644)
    try:
        yield Outside(root, drop, canary, secret, visible)
    finally:
        if visible:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def two_sessions(zygote: ZygoteClient) -> AsyncIterator[tuple[Session, Session]]:
    async with open_session(zygote) as first, open_session(zygote) as second:
        yield first, second


# --- writes outside the workspace -------------------------------------------------------


async def test_absolute_path_writes_from_the_repl_never_reach_the_host(
    session: Session, outside: Outside
) -> None:
    drop = str(outside.drop)
    results = await probe(
        session,
        f"""
        import shutil
        drop = {drop!r}
        attempt("visible", lambda: os.path.isdir(drop))
        attempt("control", lambda: open("/mnt/data/control.txt", "w").write("mine"))
        attempt("open", lambda: open(drop + "/pwned-open", "w").write("x"))
        attempt("os.open", lambda: os.open(drop + "/pwned-os-open", os.O_CREAT | os.O_WRONLY))
        attempt("mkdir", lambda: os.mkdir(drop + "/pwned-dir"))
        attempt("symlink", lambda: os.symlink("/mnt/data", drop + "/pwned-symlink"))
        attempt("copy", lambda: shutil.copy("/mnt/data/control.txt", drop + "/pwned-copy"))
        attempt("rename", lambda: os.rename("/mnt/data/control.txt", drop + "/pwned-rename"))
        attempt("mkfifo", lambda: os.mkfifo(drop + "/pwned-fifo"))
        """,
    )
    assert results["control"]["ok"], results
    assert (Path(session.workspace) / "control.txt").read_text() == "mine"
    # The worker sees the target (visible) or not (pytest-tmp): know which layer is tested.
    assert results["visible"]["value"] == repr(outside.visible)
    for name in ("open", "os.open", "mkdir", "symlink", "copy", "mkfifo"):
        assert refused(results[name], outside.refusals), (name, results[name])
    # rename() across file systems fails before any permission check.
    assert refused(results["rename"], outside.refusals | {errno.EXDEV}), results
    assert host_entries(outside.drop) == []


async def test_absolute_path_writes_from_commands_never_reach_the_host(
    session: Session, outside: Outside
) -> None:
    drop = outside.drop
    control = await session.run_command("touch control && cp control control-copy")
    assert control.reply.status == "ok", control.reply
    assert {"control", "control-copy"} <= set(os.listdir(session.workspace))
    for line in (
        f"touch {drop}/pwned-touch",
        f"cp control {drop}/pwned-cp",
        f"mkdir {drop}/pwned-mkdir",
        f"echo pwned > {drop}/pwned-redirect",
        f"echo pwned >> {drop}/pwned-append",
        f"cp -r /mnt/data {drop}/pwned-tree",
    ):
        reply = (await session.run_command(line)).reply
        assert reply.status == "error", (line, reply)
        assert reply.exit_code != 0, (line, reply)
    assert host_entries(drop) == []


# --- reads outside the workspace --------------------------------------------------------


async def test_reading_a_host_file_by_absolute_path_reveals_nothing(
    session: Session, outside: Outside
) -> None:
    canary = str(outside.canary)
    assert outside.secret in outside.canary.read_text()  # control: the secret is there
    results, reply = await probe_with_reply(
        session,
        f"""
        canary = {canary!r}
        open("/mnt/data/own.txt", "w").write("own-data")
        attempt("control", lambda: open("/mnt/data/own.txt").read())
        attempt("exists", lambda: os.path.exists(canary))
        attempt("open", lambda: open(canary).read())
        attempt("os.open", lambda: os.read(os.open(canary, os.O_RDONLY), 4096))
        attempt("listdir", lambda: os.listdir(os.path.dirname(canary)))
        attempt("mmap", lambda: __import__("mmap").mmap(
            os.open(canary, os.O_RDONLY), 0, prot=1).read())
        """,
    )
    assert results["control"] == {"ok": True, "value": "'own-data'"}
    assert results["exists"]["value"] == repr(outside.visible)
    for name in ("open", "os.open", "listdir", "mmap"):
        assert refused(results[name], outside.refusals), (name, results[name])
    commands = [
        (await session.run_command(line)).reply
        for line in (
            f"cat {canary}",
            f"head -c 100 {canary}",
            f"grep -r host-canary {outside.root}",
            f"cp {canary} stolen.txt",
        )
    ]
    assert all(c.status == "error" for c in commands), commands
    assert not (Path(session.workspace) / "stolen.txt").exists()
    assert outside.secret not in everything_said(reply, *commands)


async def test_dot_dot_traversal_from_the_workspace_stays_inside(
    session: Session, outside: Outside
) -> None:
    up = "../" * 12
    canary = up + str(outside.canary).lstrip("/")
    drop = up + str(outside.drop).lstrip("/")
    results, reply = await probe_with_reply(
        session,
        f"""
        attempt("read", lambda: open({canary!r}).read())
        attempt("write", lambda: open({drop!r} + "/pwned", "w").write("x"))
        attempt("dirfd-read", lambda: os.read(
            os.open({canary!r}, os.O_RDONLY, dir_fd=os.open(".", os.O_RDONLY)), 4096))
        attempt("parent-of-workspace", lambda: sorted(os.listdir("/mnt/data/..")))
        """,
    )
    for name in ("read", "write", "dirfd-read"):
        assert refused(results[name], outside.refusals), (name, results[name])
    # /mnt/data/.. is the worker's own small /mnt, never the host's /mnt nor the workspaces.
    parent = results["parent-of-workspace"]
    assert refused(parent, DENIED) or parent == {"ok": True, "value": "['data']"}, parent
    command = (await session.run_command(f"cat {canary}")).reply
    assert command.status == "error"
    assert outside.secret not in everything_said(reply, command)
    assert host_entries(outside.drop) == []


# --- links ------------------------------------------------------------------------------


def _shadow_line() -> str | None:
    try:
        with open("/etc/shadow", encoding="utf-8") as shadow:
            return shadow.readline().strip() or None
    except OSError:
        return None


@pytest.mark.parametrize("planted_by", ["session", "host"])
@pytest.mark.parametrize("target", ["canary", "/etc/shadow"])
async def test_symlink_planted_in_the_workspace_reads_nothing(
    session: Session, outside: Outside, planted_by: str, target: str
) -> None:
    if target == "canary":
        destination, secret = str(outside.canary), outside.secret
    else:
        shadow = _shadow_line()
        if shadow is None:
            pytest.skip("no readable /etc/shadow on this host")
        destination, secret = target, shadow
    write_target = str(outside.drop / "pwned-through-link")
    if planted_by == "host":
        os.symlink(destination, os.path.join(session.workspace, "link"))
        os.symlink(write_target, os.path.join(session.workspace, "write-link"))
    results, reply = await probe_with_reply(
        session,
        f"""
        if {planted_by == "session"}:
            os.symlink({destination!r}, "link")
            os.symlink({write_target!r}, "write-link")
        attempt("is-link", lambda: os.readlink("link"))
        attempt("read", lambda: open("link").read())
        attempt("write", lambda: open("write-link", "w").write("x"))
        """,
    )
    assert results["is-link"] == {"ok": True, "value": repr(destination)}
    assert refused(results["read"], outside.refusals if target == "canary" else DENIED)
    assert refused(results["write"], outside.refusals), results
    commands = [
        (await session.run_command(line)).reply
        for line in ("cat link", "grep -r : link", "cp link copied", "echo x > write-link")
    ]
    assert all(c.status == "error" for c in commands), commands
    assert not (Path(session.workspace) / "copied").exists()
    assert secret not in everything_said(reply, *commands)
    assert host_entries(outside.drop) == []


async def test_hard_link_to_a_file_outside_the_workspace_cannot_be_made(
    session: Session, outside: Outside
) -> None:
    results = await probe(
        session,
        f"""
        open("own.txt", "w").write("own")
        open("/tmp/private.txt", "w").write("tmp")
        attempt("control", lambda: os.link("own.txt", "own-link"))
        attempt("canary", lambda: os.link({str(outside.canary)!r}, "hl-canary"))
        attempt("passwd", lambda: os.link("/etc/passwd", "hl-passwd"))
        attempt("tmp", lambda: os.link("/tmp/private.txt", "hl-tmp"))
        attempt("python", lambda: os.link(os.path.realpath(__import__("sys").executable),
                                          "hl-python"))
        """,
    )
    assert results["control"]["ok"], results
    assert os.stat(os.path.join(session.workspace, "own-link")).st_nlink == 2
    for name in ("canary", "passwd", "tmp", "python"):
        assert refused(results[name], HIDDEN | {errno.EXDEV}), (name, results[name])
    command = (await session.run_command(f"cp -l {outside.canary} hl-cp")).reply
    assert command.status == "error"
    left = set(os.listdir(session.workspace))
    assert not {"hl-canary", "hl-passwd", "hl-tmp", "hl-python", "hl-cp"} & left


# --- /proc, /sys, /dev ------------------------------------------------------------------


async def test_proc_root_links_lead_nowhere_outside(session: Session, outside: Outside) -> None:
    canary = str(outside.canary)
    drop = str(outside.drop)
    results, reply = await probe_with_reply(
        session,
        f"""
        open("own.txt", "w").write("own-through-proc")
        attempt("control", lambda: open("/proc/self/root/mnt/data/own.txt").read())
        for via in ("/proc/1/root", "/proc/self/root", "/proc/thread-self/root"):
            attempt("read " + via, lambda via=via: open(via + {canary!r}).read())
            attempt("write " + via, lambda via=via: open(via + {drop!r} + "/pwned", "w").write("x"))
        attempt("read cwd", lambda: open("/proc/self/cwd/../.." + {canary!r}).read())
        workspace_fd = os.open("/mnt/data", os.O_RDONLY)
        walk = f"/proc/self/fd/{{workspace_fd}}/../.."
        attempt("fd walk", lambda: open(walk + {canary!r}).read())
        """,
    )
    assert results.pop("control") == {"ok": True, "value": "'own-through-proc'"}
    for name, result in results.items():
        assert result["ok"] is False, (name, result)
    assert outside.secret not in everything_said(reply)
    assert host_entries(outside.drop) == []


def _pids_cgroup_root() -> Path | None:
    for candidate in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        if (Path(candidate) / "cgroup.procs").exists():
            return Path(candidate)
    return None


async def test_proc_and_sys_writes_change_nothing_on_the_host(session: Session) -> None:
    cgroup_root = _pids_cgroup_root()
    if cgroup_root is None:
        pytest.skip("no cgroup hierarchy with cgroup.procs on this host")
    rogue_group = cgroup_root / f"codesherpa-attack-{secrets.token_hex(6)}"
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    try:
        results = await probe(
            session,
            f"""
            before = open("/proc/self/cgroup").read()
            attempt("control", lambda: open("/proc/self/status").read(10))
            # Writing back the value already there: harmless even if it were allowed.
            attempt("core_pattern", lambda: open("/proc/sys/kernel/core_pattern", "w").write(
                {core_pattern!r}))
            attempt("cgroup mkdir", lambda: os.mkdir({str(rogue_group)!r}))
            attempt("cgroup escape", lambda: open({str(cgroup_root / "cgroup.procs")!r}, "w")
                    .write(str(os.getpid())))
            attempt("sys write", lambda: open("/sys/kernel/mm/transparent_hugepage/enabled", "w")
                    .write("never"))
            attempt("sys read", lambda: os.listdir("/sys/class/net"))
            attempt("same cgroup", lambda: open("/proc/self/cgroup").read() == before)
            """,
        )
        assert results["control"]["ok"], results
        assert results.pop("same cgroup")["value"] == "True", results
        for name in ("core_pattern", "cgroup mkdir", "cgroup escape", "sys write", "sys read"):
            assert results[name]["ok"] is False, (name, results[name])
        assert not rogue_group.exists()
        assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern
    finally:
        with contextlib.suppress(OSError):
            rogue_group.rmdir()


RAW_DEVICES = ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda",
               "/dev/nvme0n1", "/dev/loop0", "/dev/kvm")  # fmt: skip


async def test_device_nodes_cannot_be_made_or_opened(session: Session) -> None:
    existing = [device for device in RAW_DEVICES if os.path.exists(device)]
    assert existing, "control: this host has at least one raw device to attack"
    sda_existed = os.path.lexists("/dev/sda")
    planted = f"/dev/codesherpa-attack-{secrets.token_hex(6)}"
    exclusive = "os.O_WRONLY | os.O_CREAT | os.O_EXCL"  # never writes an existing device
    try:
        results = await probe(
            session,
            f"""
            attempt("control fifo", lambda: os.mkfifo("fifo"))
            attempt("control zero", lambda: open("/dev/zero", "rb").read(4))
            attempt("mknod mem", lambda: os.mknod("mem", 0o666 | 0o020000, os.makedev(1, 1)))
            attempt("mknod disk", lambda: os.mknod("disk", 0o666 | 0o060000, os.makedev(254, 0)))
            attempt("mknod tmp", lambda: os.mknod("/tmp/mem", 0o666 | 0o020000,
                                                  os.makedev(1, 1)))
            for device in {existing!r}:
                attempt("read " + device, lambda device=device: open(device, "rb").read(16))
            attempt("create sda", lambda: os.open("/dev/sda", {exclusive}, 0o666))
            attempt("create planted", lambda: os.open({planted!r}, {exclusive}, 0o666))
            """,
        )
        assert results.pop("control fifo")["ok"], results
        assert results.pop("control zero") == {"ok": True, "value": repr(b"\0" * 4)}
        for name, result in results.items():
            assert result["ok"] is False, (name, result)
        entries = {
            name: stat.S_IFMT(os.lstat(os.path.join(session.workspace, name)).st_mode)
            for name in os.listdir(session.workspace)
        }
        assert entries == {"fifo": stat.S_IFIFO}
        assert os.path.lexists("/dev/sda") == sda_existed
        assert not os.path.lexists(planted)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(planted)
        if not sda_existed and os.path.isfile("/dev/sda"):
            os.unlink("/dev/sda")  # a regular file a broken sandbox left, never a device


# --- other sessions ---------------------------------------------------------------------


async def _attack_neighbour(
    attacker: Session, victim: Session, secret: str
) -> tuple[Results, list[RunReply]]:
    """Everything ``attacker`` can try against ``victim``'s workspace, by every path."""
    host = victim.workspace
    results, reply = await probe_with_reply(
        attacker,
        f"""
        import glob
        host = {host!r}
        attempt("device", lambda: os.stat(host).st_dev)
        attempt("read", lambda: open(host + "/secret.txt").read())
        attempt("list", lambda: os.listdir(host))
        attempt("write", lambda: open(host + "/pwned", "w").write("x"))
        attempt("list root", lambda: os.listdir(os.path.dirname(host)))
        attempt("glob", lambda: [open(p).read() for p in glob.glob(
            os.path.dirname(host) + "/*/secret.txt")])
        attempt("proc", lambda: [open(f"/proc/{{p}}/root/mnt/data/secret.txt").read()
                                 for p in os.listdir("/proc") if p.isdigit()])
        attempt("own", lambda: open("/mnt/data/secret.txt").read())
        """,
    )
    commands = [
        (await attacker.run_command(line)).reply
        for line in (f"cat {host}/secret.txt", f"cp {host}/secret.txt stolen", f"touch {host}/x")
    ]
    assert secret not in everything_said(reply, *commands)
    assert all(c.status == "error" for c in commands), commands
    assert not {"pwned", "x"} & set(os.listdir(host))
    for name in ("read", "list", "write"):
        assert refused(results[name]), (name, results[name])
    return results, [reply, *commands]


async def _neighbours_cannot_read_each_other(zygote: ZygoteClient, open_up: bool) -> None:
    async with two_sessions(zygote) as (first, second):
        secrets_of = {}
        for owner in (first, second):
            secret = f"session-secret-{secrets.token_hex(12)}"
            chmod = "os.chmod('/mnt/data', 0o755)" if open_up else "pass"
            written = await owner.run_python(
                f"import os\nopen('secret.txt', 'w').write({secret!r})\n{chmod}"
            )
            assert written.reply.status == "ok", written.reply
            secrets_of[owner.workspace] = secret
        views = []
        for victim, attacker in ((first, second), (second, first)):
            results, _ = await _attack_neighbour(attacker, victim, secrets_of[victim.workspace])
            # The only secret.txt it reaches through /proc is its own.
            assert results["own"]["value"] == repr(secrets_of[attacker.workspace])
            views.append(results["device"])
        # The mount namespace lays an empty tmpfs over the directory of all workspaces,
        # so neither worker even sees the other's; Landlock and the uids stand behind it.
        assert all(not view["ok"] and view.get("errno") == errno.ENOENT for view in views), views


async def test_another_sessions_workspace_is_out_of_reach(
    visible_zygote: ZygoteClient,
) -> None:
    await _neighbours_cannot_read_each_other(visible_zygote, open_up=False)


async def test_a_session_that_opens_its_own_workspace_is_still_unreadable_to_others(
    visible_zygote: ZygoteClient,
) -> None:
    # chmod 755 on one's own workspace (files are 0644 by umask) leaves only the sandbox
    # between the two sessions: the uid's mode bits no longer refuse.
    await _neighbours_cannot_read_each_other(visible_zygote, open_up=True)


async def test_private_tmp_and_shm_are_shared_with_no_one(
    visible_zygote: ZygoteClient,
) -> None:
    name = f"codesherpa-private-{secrets.token_hex(8)}"
    secret = f"tmp-secret-{secrets.token_hex(12)}"
    async with two_sessions(visible_zygote) as (first, second):
        written = await probe(
            first,
            f"""
            for base in ("/tmp", "/dev/shm"):
                attempt("write " + base, lambda base=base: open(
                    base + "/" + {name!r}, "w").write({secret!r}))
            """,
        )
        assert all(result["ok"] for result in written.values()), written
        kept = await probe(first, f'attempt("read back", lambda: open("/tmp/{name}").read())')
        assert kept["read back"] == {"ok": True, "value": repr(secret)}
        results, reply = await probe_with_reply(
            second,
            f"""
            for base in ("/tmp", "/dev/shm"):
                attempt("list " + base, lambda base=base: os.listdir(base))
                attempt("read " + base, lambda base=base: open(base + "/" + {name!r}).read())
            """,
        )
        # Only what the worker's mount view binds back (an interpreter or its libraries
        # installed under /tmp on this host) may be listed there; nothing of the other
        # session.
        bound_back = sorted(
            {
                path.split("/")[2]
                for path in runtime.INSTALLATION | runtime.LIBRARY_DIRECTORIES
                if path.startswith("/tmp/") and len(path.split("/")) > 2
            }
        )
        assert results["list /tmp"] == {"ok": True, "value": repr(bound_back)}
        assert results["list /dev/shm"] == {"ok": True, "value": "[]"}
        assert refused(results["read /tmp"], frozenset({errno.ENOENT}))
        assert refused(results["read /dev/shm"], frozenset({errno.ENOENT}))
        assert secret not in everything_said(reply)
        assert not os.path.lexists(f"/tmp/{name}")
        assert not os.path.lexists(f"/dev/shm/{name}")
