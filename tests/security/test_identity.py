"""Attacks of the class *identity* (SECURITY.md, guarantees 1, 2 and 3).

User code tries to become someone else or to reach processes that are not its own:
``setuid(0)`` and friends, capabilities, ``ptrace`` and ``process_vm_readv``, signals
to its parent, to pid 1, to ``-1`` and to the host pids of the service, the zygote and
a neighbour session, and reading other processes' ``/proc/<pid>/{environ,cmdline,mem}``.
Each test checks the effect from the host: the worker's real credentials, capability
sets and seccomp mode in the host's ``/proc``, the worker's PID namespace, the service
(this pytest process), the zygote and a neighbour session that must keep answering with
its state.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import psutil
import pytest

from sandbox import Session, ZygoteClient
from sandbox.uids import UID_RANGE_SIZE, UID_RANGE_START
from tests.security.harness import Neighbour, assert_answers, uid_of, worker_of

pytestmark = [pytest.mark.anyio, pytest.mark.attack, pytest.mark.timeout(30)]


def status_fields(pid: int | str) -> dict[str, str]:
    """``/proc/<pid>/status`` as the host reads it."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


# -- credentials ------------------------------------------------------------------------

BECOME_ROOT = """
import os
attempts = {}
for name, attempt in {
    "setuid": lambda: os.setuid(0),
    "seteuid": lambda: os.seteuid(0),
    "setresuid": lambda: os.setresuid(0, 0, 0),
    "setreuid": lambda: os.setreuid(0, 0),
    "setgid": lambda: os.setgid(0),
    "setresgid": lambda: os.setresgid(0, 0, 0),
    "setgroups": lambda: os.setgroups([0]),
    "setuid to a neighbour's uid": lambda: os.setuid(NEIGHBOUR_UID),
}.items():
    try:
        attempt()
        attempts[name] = "succeeded"
    except OSError as exc:
        attempts[name] = type(exc).__name__
(attempts, os.getresuid(), os.getresgid(), os.getgroups())
"""


async def test_becoming_root_or_another_uid_fails(neighbour: Neighbour, session: Session) -> None:
    uid = uid_of(session)
    neighbour_uid = uid_of(neighbour.session)
    code = BECOME_ROOT.replace("NEIGHBOUR_UID", str(neighbour_uid))
    outcome = await session.run_python(code)

    assert outcome.reply.status == "ok", outcome.reply.error
    attempts, resuid, resgid, groups = eval(outcome.reply.value or "")
    assert set(attempts.values()) == {"PermissionError"}, attempts
    assert resuid == (uid, uid, uid)
    assert resgid == (uid, uid, uid)
    assert groups == []
    # What the kernel says, read from the host.
    worker = psutil.Process(worker_of(session).pid)
    assert tuple(worker.uids()) == (uid, uid, uid)
    assert tuple(worker.gids()) == (uid, uid, uid)
    assert status_fields(worker.pid)["Groups"] == ""
    await assert_answers(session)
    await neighbour.assert_intact()


async def test_the_worker_runs_as_its_own_unprivileged_uid_on_the_host(
    neighbour: Neighbour, session: Session
) -> None:
    uid = uid_of(session)
    worker = psutil.Process(worker_of(session).pid)

    assert 0 not in tuple(worker.uids())
    assert 0 not in tuple(worker.gids())
    assert set(worker.uids()) == {uid}
    assert UID_RANGE_START <= uid < UID_RANGE_START + UID_RANGE_SIZE
    assert uid != uid_of(neighbour.session)
    assert uid != os.getuid()
    await neighbour.assert_intact()


CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")


async def test_the_worker_has_no_capabilities_no_new_privs_and_seccomp(
    neighbour: Neighbour, session: Session
) -> None:
    inside_code = (
        "fields = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "{name: value.strip() for name, value in fields.items()}"
    )
    outcome = await session.run_python(inside_code)
    assert outcome.reply.status == "ok", outcome.reply.error
    inside = eval(outcome.reply.value or "{}")
    host = status_fields(worker_of(session).pid)

    for view in (inside, host):
        for name in CAPABILITY_SETS:
            assert int(view[name], 16) == 0, (name, view[name])
        assert view["NoNewPrivs"] == "1"
        assert view["Seccomp"] == "2"
    await neighbour.assert_intact()


def descriptors_of(pid: int) -> dict[int, str]:
    """What each open descriptor of ``pid`` refers to, as the host reads it."""
    found: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return found


async def test_the_worker_holds_no_descriptor_of_the_service_zygote_or_neighbour(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    # A descriptor shared with another process (its control socket, a pipe, another
    # session's channel) would be a way to reach it.  Everything the worker holds is
    # /dev/null, its own channel or its output capture's two pipes, and no other process
    # holds the same object.
    assert zygote.pid is not None
    worker = descriptors_of(worker_of(session).pid)
    objects = set(worker.values()) - {"/dev/null"}
    sockets = {target for target in objects if target.startswith("socket:")}
    pipes = {target for target in objects if target.startswith("pipe:")}
    assert len(sockets) == 1, worker
    assert len(pipes) == 2, worker
    assert objects == sockets | pipes, worker
    for other in (os.getpid(), zygote.pid, neighbour.pid):
        shared = objects & set(descriptors_of(other).values())
        assert shared == set(), (other, shared)
    await neighbour.assert_intact()


# -- signals ----------------------------------------------------------------------------

KILL_EVERYONE = """
import ctypes, os, re, signal
libc = ctypes.CDLL(None, use_errno=True)
command_line = open("/proc/self/cmdline", "rb").read().split(b"\\0")
named = re.findall(rb"--service-pid\\x00(\\d+)", b"\\0".join(command_line))
targets = sorted({1, os.getppid(), *HOST_PIDS, *(int(pid) for pid in named)})
results = {}
for target in targets:
    for signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
        try:
            os.kill(target, signum)
            results[(target, int(signum))] = "sent"
        except OSError as exc:
            results[(target, int(signum))] = type(exc).__name__
    pidfd = libc.syscall(434, target, 0)  # pidfd_open
    results[(target, "pidfd")] = "opened" if pidfd >= 0 else ctypes.get_errno()
for name, attempt in {
    "process group": lambda: os.killpg(0, signal.SIGKILL),
    "everyone": lambda: os.kill(-1, signal.SIGKILL),
    "everyone, stop": lambda: os.kill(-1, signal.SIGSTOP),
}.items():
    try:
        attempt()
        results[name] = "sent"
    except OSError as exc:
        results[name] = type(exc).__name__
results
"""


async def test_killing_parent_init_and_everyone_spares_the_service_zygote_and_neighbour(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    service = psutil.Process()
    zygote_pid = zygote.pid
    assert zygote_pid is not None
    host_pids = sorted({os.getpid(), os.getppid(), zygote_pid, neighbour.pid})
    code = KILL_EVERYONE.replace("HOST_PIDS", repr(host_pids))
    outcome = await session.run_python(code, timeout=3)

    # The attacker only ever reaches its own PID namespace, where it is init: it may
    # at most end its own session.
    assert outcome.reply.status in {"ok", "killed"}, outcome.reply.error
    if outcome.reply.status == "ok":
        results = eval(outcome.reply.value or "{}")
        for target, result in results.items():
            if isinstance(target, tuple) and target[0] not in (0, 1):
                assert result in {"ProcessLookupError", 3}, (target, result)
    assert service.is_running()
    assert service.status() != psutil.STATUS_STOPPED
    assert zygote.alive()
    assert zygote.pid == zygote_pid
    assert psutil.Process(zygote_pid).status() != psutil.STATUS_STOPPED
    assert psutil.Process(neighbour.pid).status() != psutil.STATUS_STOPPED
    await neighbour.assert_intact()
    await assert_answers(session)


# -- tracing and reading other processes ------------------------------------------------

TRACE_EVERYONE = """
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_SEIZE = 0, 16, 0x4206

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]

child = os.fork()
if child == 0:
    try:
        time.sleep(30)
    finally:
        os._exit(0)
results = {}
for target in sorted({child, 1, *HOST_PIDS}):
    for name, request in (("attach", PTRACE_ATTACH), ("seize", PTRACE_SEIZE)):
        code = libc.ptrace(request, target, None, None)
        results[(target, name)] = "traced" if code == 0 else errno.errorcode[ctypes.get_errno()]
    buffer = ctypes.create_string_buffer(64)
    local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 64)
    remote = IoVec(ctypes.c_void_p(0x400000), 64)
    count = libc.process_vm_readv(target, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    results[(target, "vm_readv")] = "read" if count >= 0 else errno.errorcode[ctypes.get_errno()]
code = libc.ptrace(PTRACE_TRACEME, 0, None, None)
results["traceme"] = "traced" if code == 0 else errno.errorcode[ctypes.get_errno()]
os.kill(child, 9)
os.waitpid(child, 0)
results
"""


async def test_ptrace_and_process_vm_readv_fail_on_every_pid(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    assert zygote.pid is not None
    host_pids = sorted({os.getpid(), zygote.pid, neighbour.pid})
    outcome = await session.run_python(TRACE_EVERYONE.replace("HOST_PIDS", repr(host_pids)))

    assert outcome.reply.status == "ok", outcome.reply.error
    results = eval(outcome.reply.value or "{}")
    assert results, "the attack tried nothing"
    assert set(results.values()) <= {"EPERM", "ESRCH"}, results
    assert "traced" not in results.values()
    assert "read" not in results.values()
    for pid in (os.getpid(), zygote.pid, neighbour.pid, worker_of(session).pid):
        assert status_fields(pid)["TracerPid"] == "0"
    await neighbour.assert_intact()
    await assert_answers(session)


READ_OTHERS = """
import os
own = os.getpid()
visible = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
readings = {}
for pid in sorted(set(visible) | set(HOST_PIDS)):
    for part in ("environ", "cmdline", "mem", "status"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as handle:
                data = handle.read(4096) if part != "mem" else handle.read(1)
            readings[(pid, part)] = data.decode("latin-1")
        except OSError as exc:
            readings[(pid, part)] = type(exc).__name__
(own, visible, readings, os.readlink("/proc/self/ns/pid"))
"""


async def test_other_processes_are_invisible_and_unreadable_from_inside(
    zygote: ZygoteClient, neighbour: Neighbour, session: Session
) -> None:
    # The neighbour holds a secret in its memory: nothing read may contain it.
    secret = secrets.token_hex(16)
    await neighbour.session.run_python(f"secret = {secret!r}")
    assert zygote.pid is not None
    host_pids = sorted({os.getpid(), os.getppid(), zygote.pid, neighbour.pid})
    outcome = await session.run_python(READ_OTHERS.replace("HOST_PIDS", repr(host_pids)))

    assert outcome.reply.status == "ok", outcome.reply.error
    own, visible, readings, pid_namespace = eval(outcome.reply.value or "")
    # The worker is init of a PID namespace of its own, not the host's.
    worker = worker_of(session).pid
    assert own == 1
    assert pid_namespace == os.readlink(f"/proc/{worker}/ns/pid")
    assert pid_namespace != os.readlink("/proc/self/ns/pid")
    assert pid_namespace != os.readlink(f"/proc/{neighbour.pid}/ns/pid")
    # It sees itself and nothing else: no service, zygote, neighbour or host process.
    assert visible == [1]
    assert len(psutil.pids()) > len(visible)
    for (pid, part), data in readings.items():
        if pid == own:
            continue
        assert data == "FileNotFoundError", (pid, part, data[:80])
    assert secret not in (outcome.reply.value or "")
    await neighbour.assert_intact()
    await assert_answers(session)


async def test_a_command_lists_only_the_sessions_own_processes(
    neighbour: Neighbour, session: Session
) -> None:
    outcome = await session.run_command("ls /proc")

    assert outcome.reply.status == "ok", outcome.reply.error
    pids = sorted(int(name) for name in outcome.reply.stdout.split() if name.isdigit())
    # The worker (1) and the ls it started: nothing of the host.
    assert pids[0] == 1
    assert len(pids) <= 2
    assert len(psutil.pids()) > len(pids)
    await neighbour.assert_intact()
