"""Syscalls by ctypes from a real worker (the attack class "syscalls by ctypes: unshare,
mount, bpf, keyctl, io_uring, 32-bit int 0x80", with the ptrace half of "identity").

User code in the REPL calls the kernel directly through ``ctypes``; no Python-level
check stands in the way.  Each attack uses arguments a confined-but-unfiltered process
would be allowed (so the refusal comes from the seccomp filter, not from bad input),
asserts the seccomp errno, and checks the effect where there is one: the namespace link
did not change, no mount appeared, no kernel object fd was created, no key was
registered for the worker's uid, no directory was made by a foreign-ABI syscall.
A control runs a harmless syscall through the same harness, and the same machine-code
stub through the native ``syscall`` instruction, so the tests can fail.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import secrets
import textwrap
from typing import Any

import pytest

from sandbox import Session, scheduling
from tests.security.harness import worker_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.attack,
    # The syscall numbers and the machine code below are x86-64.
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 syscall numbers"),
]

_HARNESS = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def raw(number, *args):
    ctypes.set_errno(0)
    result = int(libc.syscall(ctypes.c_long(number), *args))
    return {"result": result, "errno": ctypes.get_errno() if result == -1 else 0}

def fds():
    return sorted(os.listdir("/proc/self/fd"))

L = ctypes.c_long
"""


async def run_attack(session: Session, body: str) -> dict[str, Any]:
    """Run ``body`` (which sets ``report``) in the worker; return the report."""
    code = _HARNESS + textwrap.dedent(body) + "\nprint(json.dumps(report))"
    reply = (await session.run_python(code, timeout=10)).reply
    assert reply.status == "ok", reply.error
    report: dict[str, Any] = json.loads(reply.stdout)
    return report


def refused_by_seccomp(call: dict[str, Any]) -> bool:
    return bool(call["result"] == -1 and call["errno"] == errno.EPERM)


async def test_the_ctypes_harness_reaches_the_kernel(session: Session) -> None:
    report = await run_attack(
        session,
        """
        report = {"getpid": raw(39), "getuid": raw(102), "os_uid": os.getuid()}
        """,
    )
    assert report["getpid"] == {"result": 1, "errno": 0}  # the worker is init of its pidns
    assert report["getuid"]["result"] == report["os_uid"] != 0


async def test_unshare_of_a_user_namespace_is_refused(session: Session) -> None:
    # In a forked child: a multi-threaded caller would get EINVAL for a trivial reason.
    report = await run_attack(
        session,
        """
        read_end, write_end = os.pipe()
        before = os.readlink("/proc/self/ns/user")
        child = os.fork()
        if child == 0:
            outcome = {}
            for name, flags in (("user", 0x10000000), ("user+mount", 0x10020000),
                                ("net", 0x40000000)):
                outcome[name] = raw(272, L(flags))
            outcome["ns"] = os.readlink("/proc/self/ns/user")
            os.write(write_end, json.dumps(outcome).encode())
            os._exit(0)
        os.close(write_end)
        report = json.loads(os.read(read_end, 65536))
        os.waitpid(child, 0)
        report["before"] = before
        """,
    )
    for name in ("user", "user+mount", "net"):
        assert refused_by_seccomp(report[name]), report
    assert report["ns"] == report["before"]


async def test_clone_into_new_namespaces_is_refused(session: Session) -> None:
    report = await run_attack(
        session,
        """
        SIGCHLD = 17
        report = {}
        for name, flags in (("newuser", 0x10000000), ("newns", 0x00020000),
                            ("newpid", 0x20000000)):
            call = raw(56, L(flags | SIGCHLD), L(0), L(0), L(0), L(0))
            if call["result"] == 0:
                os._exit(0)  # the child of a clone that should not have happened
            if call["result"] > 0:
                os.waitpid(call["result"], 0)
            report[name] = call
        report["clone3"] = raw(435, L(0), L(0))
        """,
    )
    for name in ("newuser", "newns", "newpid"):
        assert refused_by_seccomp(report[name]), report
    assert report["clone3"] == {"result": -1, "errno": errno.ENOSYS}


async def test_mount_over_the_workspace_is_refused(session: Session) -> None:
    report = await run_attack(
        session,
        """
        open("/mnt/data/still-here", "w").write("x")
        before = open("/proc/self/mountinfo").read()
        c = ctypes.c_char_p
        report = {
            "mount tmpfs": raw(165, c(b"tmpfs"), c(b"/mnt/data"), c(b"tmpfs"), L(0), None),
            "mount bind": raw(165, c(b"/"), c(b"/mnt/data"), None, L(0x1000), None),
            "umount": raw(166, c(b"/proc"), L(2)),
            "fsopen": raw(430, c(b"tmpfs"), L(0)),
            "open_tree": raw(428, L(-100), c(b"/"), L(1)),
            "pivot_root": raw(155, c(b"/mnt/data"), c(b"/mnt/data")),
            "chroot": raw(161, c(b"/mnt/data")),
            "same mounts": open("/proc/self/mountinfo").read() == before,
            "marker": os.path.exists("/mnt/data/still-here"),
        }
        """,
    )
    assert report.pop("same mounts") is True
    assert report.pop("marker") is True
    for name, call in report.items():
        assert refused_by_seccomp(call), (name, call)


async def test_kernel_object_syscalls_are_refused_and_create_no_fd(session: Session) -> None:
    report = await run_attack(
        session,
        """
        before = fds()
        report = {}
        # bpf(BPF_MAP_CREATE, {BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry}).
        attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)
        report["bpf"] = raw(321, L(0), attr, L(ctypes.sizeof(attr)))
        # io_uring_setup(8 entries, zeroed params): allowed to anyone when not filtered.
        params = ctypes.create_string_buffer(120)
        report["io_uring_setup"] = raw(425, L(8), params)
        report["io_uring_enter"] = raw(426, L(0), L(0), L(0), L(0), None, L(0))
        # perf_event_open: software cpu-clock, own process, user space only; allowed at
        # perf_event_paranoid=2 without the filter.
        pe = (ctypes.c_uint32 * 32)()
        pe[0], pe[1], pe[2] = 1, 128, 0  # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_CPU_CLOCK
        flags = (ctypes.c_uint64).from_buffer(pe, 40)
        flags.value = (1 << 0) | (1 << 5) | (1 << 6)  # disabled, exclude_kernel, exclude_hv
        report["perf_event_open"] = raw(298, pe, L(0), L(-1), L(-1), L(0))
        # userfaultfd(UFFD_USER_MODE_ONLY | O_CLOEXEC): allowed unprivileged when unfiltered.
        report["userfaultfd"] = raw(323, L(1 | 0o2000000))
        report["fanotify_init"] = raw(300, L(0), L(0))
        report["open_by_handle_at"] = raw(304, L(-100), ctypes.create_string_buffer(128), L(0))
        report["same fds"] = fds() == before
        """,
    )
    assert report.pop("same fds") is True
    for name, call in report.items():
        assert refused_by_seccomp(call), (name, call)


async def test_keyrings_cannot_be_reached_and_register_nothing(session: Session) -> None:
    uid = session.worker.uid if session.worker else None
    assert uid is not None, "these tests need per-session uids (run as root)"
    description = f"codesherpa-canary-{secrets.token_hex(6)}"
    report = await run_attack(
        session,
        f"""
        c = ctypes.c_char_p
        KEY_SPEC_SESSION_KEYRING, KEY_SPEC_USER_KEYRING = -3, -4
        report = {{
            # keyctl(KEYCTL_GET_KEYRING_ID, user keyring, create)
            "keyctl": raw(250, L(0), L(KEY_SPEC_USER_KEYRING), L(1)),
            # keyctl(KEYCTL_JOIN_SESSION_KEYRING, name)
            "join": raw(250, L(1), c(b"codesherpa")),
            "add_key": raw(248, c(b"user"), c({description.encode()!r}), c(b"secret"), L(6),
                           L(KEY_SPEC_SESSION_KEYRING)),
            "request_key": raw(249, c(b"user"), c({description.encode()!r}), None, L(0)),
        }}
        """,
    )
    for name, call in report.items():
        assert refused_by_seccomp(call), (name, call)
    with open("/proc/key-users", encoding="ascii") as key_users:
        owners = {int(line.split(":")[0]) for line in key_users if line.strip()}
    assert uid not in owners
    with open("/proc/keys", encoding="utf-8") as keys:
        assert description not in keys.read()


async def test_ptrace_of_its_own_child_is_refused(session: Session) -> None:
    # No Yama on this host: without the filter a process may trace its own children.
    report = await run_attack(
        session,
        """
        import signal, time
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        report = {
            "attach": raw(101, L(16), L(child), L(0), L(0)),  # PTRACE_ATTACH
            "seize": raw(101, L(0x4206), L(child), L(0), L(0)),  # PTRACE_SEIZE
            "traceme": raw(101, L(0), L(0), L(0), L(0)),
            "process_vm_readv": raw(310, L(child), None, L(0), None, L(0), L(0)),
            "pidfd_getfd": raw(438, L(os.pidfd_open(child)), L(0), L(0)),
        }
        with open(f"/proc/{child}/status") as status:
            tracer = [line for line in status if line.startswith("TracerPid:")][0]
        report["tracer"] = tracer.split()[1]
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        """,
    )
    assert report.pop("tracer") == "0"
    for name, call in report.items():
        assert refused_by_seccomp(call), (name, call)


# --- foreign ABIs -----------------------------------------------------------------------

# mov eax, 20 (getpid in the i386 table); int 0x80; ret
INT80_GETPID = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"

_MAP_STUB = """
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
# PROT_READ|WRITE|EXEC; MAP_PRIVATE|MAP_ANONYMOUS|MAP_32BIT: the i386 ABI takes 32-bit
# pointers, so the page (and the path in it) must sit below 4 GiB.
page = libc.mmap(None, 4096, 7, 0x22 | 0x40, -1, 0)
assert page not in (None, ctypes.c_void_p(-1).value)
def call(stub, path=b""):
    ctypes.memmove(page + 256, path + b"\\0", len(path) + 1)
    code = stub(page + 256)
    ctypes.memmove(page, code, len(code))
    return ctypes.CFUNCTYPE(ctypes.c_int)(page)()
"""


def _mkdir_stub(native: bool) -> str:
    """Machine code that calls mkdir(path, 0755) through the native or the i386 ABI."""
    if native:
        # mov eax, 83; mov edi, path; mov esi, 0o755; syscall; ret
        return (
            'lambda p: b"\\xb8\\x53\\x00\\x00\\x00\\xbf" + struct.pack("<I", p)'
            ' + b"\\xbe\\xed\\x01\\x00\\x00\\x0f\\x05\\xc3"'
        )
    # push rbx (callee-saved); mov eax, 39; mov ebx, path; mov ecx, 0o755; int 0x80;
    # pop rbx; ret
    return (
        'lambda p: b"\\x53\\xb8\\x27\\x00\\x00\\x00\\xbb" + struct.pack("<I", p)'
        ' + b"\\xb9\\xed\\x01\\x00\\x00\\xcd\\x80\\x5b\\xc3"'
    )


async def test_int_0x80_kills_the_worker_and_the_session_recovers(session: Session) -> None:
    await session.run_python("kept_files = open('before.txt', 'w').write('kept')")
    code = _MAP_STUB + f"print('returned', call(lambda p: {INT80_GETPID!r}))"
    outcome = await session.run_python(code)
    assert outcome.reply.status == "killed", outcome.reply
    assert "SIGSYS" in (outcome.reply.error or "")
    assert "returned" not in outcome.reply.stdout
    assert outcome.restarted
    after = await session.run_python("open('before.txt').read()")
    assert after.reply.status == "ok"
    assert after.reply.value == "'kept'"


async def test_int_0x80_mkdir_makes_nothing(session: Session) -> None:
    control = await session.run_python(
        _MAP_STUB + f"print(call({_mkdir_stub(native=True)}, b'made-natively'))"
    )
    assert control.reply.status == "ok", control.reply
    assert control.reply.stdout == "0\n"
    assert os.path.isdir(os.path.join(session.workspace, "made-natively"))

    attack = await session.run_python(
        _MAP_STUB + f"print(call({_mkdir_stub(native=False)}, b'made-by-int80'))"
    )
    assert attack.reply.status == "killed", attack.reply
    assert attack.restarted
    assert not os.path.exists(os.path.join(session.workspace, "made-by-int80"))
    assert (await session.run_python("1 + 1")).reply.value == "2"


async def test_x32_syscall_numbers_make_nothing(session: Session) -> None:
    outcome = await session.run_python(
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        # mkdir through the x32 table: the native number with bit 30 set.
        "print(libc.syscall(ctypes.c_long(0x40000000 | 83), b'made-by-x32', 0o755))"
    )
    # Killed by the filter (or, on a kernel without x32, refused): never executed.
    assert outcome.reply.status == "killed" or outcome.reply.stdout == "-1\n", outcome.reply
    assert not os.path.exists(os.path.join(session.workspace, "made-by-x32"))
    assert (await session.run_python("'alive'")).reply.value == "'alive'"


SHORTEN_MY_SLICE = """
from sandbox import scheduling
refused = scheduling._set_slice(scheduling.SHORT_SLICE_NS)
refused, scheduling.slice_of(0)
"""


async def test_session_code_cannot_take_a_short_time_slice(session: Session) -> None:
    # The service's event loop wakes ahead of session code by its short slice; a session
    # giving itself the same would take that lead from it and from its neighbours.
    outcome = await session.run_python(SHORTEN_MY_SLICE)
    assert outcome.reply.status == "ok", outcome.reply.error
    refused, granted = eval(outcome.reply.value or "(None, None)")
    assert refused == "sched_setattr refused: Operation not permitted"
    assert granted != scheduling.SHORT_SLICE_NS
    assert scheduling.slice_of(worker_of(session).pid) != scheduling.SHORT_SLICE_NS
