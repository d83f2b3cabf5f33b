"""Layer 7, seccomp: real attacks, from a real process, under the real filter.

Every test forks.  The child puts itself in a new session (so nothing it does can reach
the caller's terminal), applies the layer exactly as a worker does, attempts the attack
with raw syscalls through ctypes and reports what the kernel said over a pipe as JSON.
The parent asserts that the effect did not happen.  Where the host allows it, a control
runs the same attack without the filter, so that a test which cannot fail is noticed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import select
import signal
import socket
import subprocess
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from sandbox.confine import seccomp_layer
from sandbox.confine.base import WorkerSpec
from sandbox.policy import ALL_LAYERS, Isolation, Network, Policy

_unavailable = seccomp_layer.probe() if platform.machine() == "x86_64" else "not x86-64"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.attack,
    # The syscall numbers and the machine code below are x86-64.
    pytest.mark.skipif(
        _unavailable is not None, reason=f"seccomp layer unavailable: {_unavailable}"
    ),
]

CHILD_DEADLINE_S = 10.0

# x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_ioctl = 16
SYS_getpid = 39
SYS_socket = 41
SYS_socketpair = 53
SYS_clone = 56
SYS_ptrace = 101
SYS_personality = 135
SYS_chroot = 161
SYS_mount = 165
SYS_keyctl = 250
SYS_unshare = 272
SYS_perf_event_open = 298
SYS_open_by_handle_at = 304
SYS_setns = 308
SYS_process_vm_readv = 310
SYS_kcmp = 312
SYS_bpf = 321
SYS_userfaultfd = 323
SYS_io_uring_setup = 425
SYS_fsopen = 430
SYS_pidfd_open = 434
SYS_clone3 = 435
SYS_pidfd_getfd = 438
# The x32 ABI: x86-64 numbers with this bit set, entered through the 64-bit gate.
X32_SYSCALL_BIT = 0x4000_0000

CLONE_THREAD = 0x0001_0000
CLONE_NEWUSER = 0x1000_0000
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_SESSION_KEYRING = -3
PTRACE_TRACEME = 0
KCMP_FILE = 0
UFFD_USER_MODE_ONLY = 1
BPF_MAP_CREATE = 0
BPF_ATTR_SIZE = 72
AT_FDCWD = -100

# i386 getpid through the 32-bit gate: mov eax, 20; int 0x80; ret.
INT80_GETPID = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"

# Bytes in the parent's memory that process_vm_readv in a child tries to read back.
PARENT_SECRET = b"codesherpa parent memory, not for children"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def raw_syscall(number: int, *args: object) -> dict[str, int]:
    """The kernel's answer to one syscall: its result, and errno when it failed."""
    converted = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(number), *converted))
    return {"result": result, "errno": ctypes.get_errno() if result == -1 else 0}


def refused_with(answer: dict[str, int]) -> int:
    """The errno of a failed syscall, or 0 if it succeeded."""
    return answer["errno"] if answer["result"] == -1 else 0


@dataclass(frozen=True)
class ChildOutcome:
    status: int  # as waitpid returns it
    payload: dict[str, Any]  # what the child sent; empty if it died first

    @property
    def killed_by(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def report(self) -> Any:
        assert "error" not in self.payload, self.payload["error"]
        assert self.killed_by is None, f"child killed by signal {self.killed_by}"
        return self.payload["report"]


def policy_with_network(egress_proxy: bool) -> Policy:
    """The default policy, with network.mode "allowlist" (egress through the proxy) or "off"."""
    if not egress_proxy:
        return Policy()
    others = [layer for layer in ALL_LAYERS if layer != "namespaces"]
    return Policy(
        isolation=Isolation(required=["namespaces"], preferred=others),
        network=Network(mode="allowlist"),
    )


def worker_spec(network: bool) -> WorkerSpec:
    return WorkerSpec(
        policy=policy_with_network(network),
        workspace="/nonexistent-workspace",  # the seccomp layer never touches it
        uid=None,
        channel_fd=-1,
        session_key="seccomp-test",
    )


def run_in_child(
    attack: Callable[[], Any],
    *,
    confined: bool = True,
    network: bool = False,
    prepare: Callable[[], None] | None = None,
) -> ChildOutcome:
    """Fork; in the child, confine (unless it is a control), attack, report as JSON."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        exit_code = 1
        payload: dict[str, Any] = {}
        try:
            os.close(read_fd)
            os.setsid()
            if prepare is not None:
                prepare()
            if confined:
                payload["layer"] = seccomp_layer.apply(worker_spec(network)).describe()
            payload["report"] = attack()
            exit_code = 0
        except BaseException as exc:
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                os.write(write_fd, json.dumps(payload).encode())
            finally:
                os._exit(exit_code)
    os.close(write_fd)
    return _collect(pid, read_fd)


def _collect(pid: int, read_fd: int) -> ChildOutcome:
    deadline = time.monotonic() + CHILD_DEADLINE_S
    chunks: list[bytes] = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([read_fd], [], [], max(remaining, 0))
            if not readable:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"child did not finish within {CHILD_DEADLINE_S} s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    return ChildOutcome(status, json.loads(data) if data else {})


def host_is_fully_privileged() -> bool:
    """Root with every capability of the host: the only place some controls mean much."""
    uid_map = Path("/proc/self/uid_map").read_text().split()
    return os.geteuid() == 0 and uid_map == ["0", "0", "4294967295"]


needs_host_root = pytest.mark.skipif(
    not host_is_fully_privileged(), reason="the control needs root in the initial namespace"
)


def seccomp_filter_count() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Seccomp_filters:"):
            return int(line.split()[1])
    return 0


# --- the layer itself -------------------------------------------------------------------


def test_probe_says_yes_here_and_installs_nothing() -> None:
    before = seccomp_filter_count()
    assert seccomp_layer.probe() is None
    assert seccomp_filter_count() == before


@pytest.mark.parametrize("network", [False, True])
def test_apply_loads_one_filter_and_describes_it(network: bool) -> None:
    def state() -> dict[str, str]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return {"mode": fields["Seccomp"], "filters": fields["Seccomp_filters"]}

    outcome = run_in_child(state, network=network)

    assert outcome.report["mode"] == "2"  # SECCOMP_MODE_FILTER
    assert int(outcome.report["filters"]) == seccomp_filter_count() + 1
    assert outcome.payload["layer"].startswith("active: ")
    sockets = "AF_UNIX and TCP sockets only" if network else "AF_UNIX sockets only"
    assert sockets in outcome.payload["layer"]


def test_every_listed_syscall_is_covered_unless_this_architecture_lacks_it() -> None:
    # A typo in the denylist would otherwise pass unnoticed as an unknown name.
    built = seccomp_layer.build_filter(network=False)
    assert set(built.absent) <= {"umount", "stime", "vm86", "vm86old"}
    assert built.unknown == ()


def test_fallback_numbers_agree_with_libseccomp_where_it_knows_them() -> None:
    disagreements = {
        name: (number, known)
        for name, number in seccomp_layer.UNIFIED_SYSCALL_NUMBERS.items()
        if (known := pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)) >= 0
        and known != number
    }
    assert disagreements == {}


# --- namespaces and mounts --------------------------------------------------------------


def _unshare_user_namespace() -> dict[str, Any]:
    before = os.readlink("/proc/self/ns/user")
    answer = raw_syscall(SYS_unshare, CLONE_NEWUSER)
    return {"answer": answer, "same_namespace": os.readlink("/proc/self/ns/user") == before}


def test_unshare_user_namespace_is_refused_and_the_namespace_stays() -> None:
    report = run_in_child(_unshare_user_namespace).report
    assert refused_with(report["answer"]) == errno.EPERM
    assert report["same_namespace"]


def test_control_unshare_user_namespace_works_without_the_filter() -> None:
    report = run_in_child(_unshare_user_namespace, confined=False).report
    if refused_with(report["answer"]) != 0:
        pytest.skip(f"the host refuses user namespaces itself: {report['answer']}")
    assert not report["same_namespace"]


def _private_mount_namespace() -> None:
    # Should the filter ever regress, the attack's mount stays in this child's namespace.
    if host_is_fully_privileged():
        ms_rec, ms_private, clone_newns = 0x4000, 1 << 18, 0x20000
        assert raw_syscall(SYS_unshare, clone_newns)["result"] == 0
        assert raw_syscall(SYS_mount, b"none", b"/", None, ms_rec | ms_private, None)["result"] == 0


def _mount_tmpfs_on(target: Path) -> Callable[[], dict[str, Any]]:
    def attack() -> dict[str, Any]:
        answer = raw_syscall(SYS_mount, b"none", str(target).encode(), b"tmpfs", 0, None)
        mounted = any(
            line.split()[4] == str(target)
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        )
        return {"answer": answer, "mounted": mounted}

    return attack


def test_mount_of_tmpfs_is_refused_and_nothing_is_mounted(tmp_path: Path) -> None:
    outcome = run_in_child(_mount_tmpfs_on(tmp_path), prepare=_private_mount_namespace)
    assert refused_with(outcome.report["answer"]) == errno.EPERM
    assert not outcome.report["mounted"]


@needs_host_root
def test_control_mount_of_tmpfs_works_without_the_filter(tmp_path: Path) -> None:
    outcome = run_in_child(
        _mount_tmpfs_on(tmp_path), confined=False, prepare=_private_mount_namespace
    )
    assert refused_with(outcome.report["answer"]) == 0
    assert outcome.report["mounted"]


NAMESPACE_FLAGS = {
    "newns": 0x0002_0000,
    "newcgroup": 0x0200_0000,
    "newuts": 0x0400_0000,
    "newipc": 0x0800_0000,
    "newuser": 0x1000_0000,
    "newpid": 0x2000_0000,
    "newnet": 0x4000_0000,
}


def _clone_with(flags: int) -> Callable[[], dict[str, Any]]:
    def attack() -> dict[str, Any]:
        # A raw clone with no new stack behaves like fork: the copy must leave at once.
        answer = raw_syscall(SYS_clone, flags | signal.SIGCHLD, 0, 0, 0, 0)
        if answer["result"] == 0:
            os._exit(0)
        if answer["result"] > 0:
            os.waitpid(answer["result"], 0)
        return answer

    return attack


@pytest.mark.parametrize("flag", NAMESPACE_FLAGS.values(), ids=NAMESPACE_FLAGS.keys())
def test_clone_into_a_new_namespace_is_refused(flag: int) -> None:
    assert refused_with(run_in_child(_clone_with(flag)).report) == errno.EPERM


def test_control_clone_into_a_user_namespace_works_without_the_filter() -> None:
    answer = run_in_child(_clone_with(CLONE_NEWUSER), confined=False).report
    if refused_with(answer) != 0:
        pytest.skip(f"the host refuses user namespaces itself: {answer}")
    assert answer["result"] > 0


def test_clone3_answers_enosys_and_creates_nothing() -> None:
    def attack() -> dict[str, Any]:
        # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, ...
        arguments = (ctypes.c_uint64 * 11)(CLONE_NEWUSER, 0, 0, 0, signal.SIGCHLD)
        answer = raw_syscall(SYS_clone3, ctypes.byref(arguments), ctypes.sizeof(arguments))
        if answer["result"] == 0:
            os._exit(0)
        return answer

    assert refused_with(run_in_child(attack).report) == errno.ENOSYS


# --- other denied syscalls --------------------------------------------------------------


def _secret_address() -> int:
    # A fork child has the parent's layout, so this is also where the parent keeps it.
    address = ctypes.cast(ctypes.c_char_p(PARENT_SECRET), ctypes.c_void_p).value
    assert address is not None
    return address


def _read_parent_memory() -> dict[str, int]:
    buffer = ctypes.create_string_buffer(len(PARENT_SECRET))
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), len(PARENT_SECRET))
    remote = (ctypes.c_void_p * 2)(_secret_address(), len(PARENT_SECRET))
    answer = raw_syscall(SYS_process_vm_readv, os.getppid(), local, 1, remote, 1, 0)
    answer["read_the_secret"] = int(buffer.raw == PARENT_SECRET)
    return answer


def _steal_parent_fd() -> dict[str, int]:
    pidfd = raw_syscall(SYS_pidfd_open, os.getppid(), 0)["result"]
    return raw_syscall(SYS_pidfd_getfd, pidfd, 1, 0)


def _io_uring_setup() -> dict[str, int]:
    parameters = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    return raw_syscall(SYS_io_uring_setup, 8, parameters)


def _perf_event_open() -> dict[str, int]:
    attributes = ctypes.create_string_buffer(128)  # PERF_TYPE_HARDWARE, CPU cycles
    ctypes.c_uint32.from_buffer(attributes, 4).value = 128  # .size
    return raw_syscall(SYS_perf_event_open, attributes, 0, -1, -1, 0)


def _bpf_map_create() -> dict[str, int]:
    attributes = (ctypes.c_uint32 * (BPF_ATTR_SIZE // 4))(2, 4, 8, 1)  # an array map
    return raw_syscall(SYS_bpf, BPF_MAP_CREATE, attributes, BPF_ATTR_SIZE)


def _open_by_handle() -> dict[str, int]:
    handle = ctypes.create_string_buffer(136)  # struct file_handle, nonsense contents
    return raw_syscall(SYS_open_by_handle_at, AT_FDCWD, handle, os.O_RDONLY)


# Each attack, run with and without the filter.  The ones that succeed without it as
# root do so harmlessly: they read or duplicate, in a throwaway child.
EPERM_ATTACKS: dict[str, Callable[[], dict[str, int]]] = {
    "ptrace_traceme": lambda: raw_syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0),
    "process_vm_readv_parent": _read_parent_memory,
    "pidfd_getfd_parent_stdout": _steal_parent_fd,
    "kcmp_parent": lambda: raw_syscall(SYS_kcmp, os.getppid(), os.getpid(), KCMP_FILE, 1, 1),
    "keyctl_session_keyring": lambda: raw_syscall(
        SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0
    ),
    "bpf_map_create": _bpf_map_create,
    "perf_event_open_cycles": _perf_event_open,
    "userfaultfd": lambda: raw_syscall(SYS_userfaultfd, UFFD_USER_MODE_ONLY | os.O_CLOEXEC),
    "io_uring_setup": _io_uring_setup,
    "setns_bad_fd": lambda: raw_syscall(SYS_setns, -1, 0),
    "chroot_missing_dir": lambda: raw_syscall(SYS_chroot, b"/nonexistent-codesherpa"),
    "fsopen_tmpfs": lambda: raw_syscall(SYS_fsopen, b"tmpfs", 0),
    "open_by_handle_at": _open_by_handle,
}


@pytest.mark.parametrize("attack", EPERM_ATTACKS.values(), ids=EPERM_ATTACKS.keys())
def test_denied_syscall_fails_with_eperm(attack: Callable[[], dict[str, int]]) -> None:
    answer = run_in_child(attack).report
    assert refused_with(answer) == errno.EPERM
    assert not answer.get("read_the_secret")


@needs_host_root
@pytest.mark.parametrize("attack", EPERM_ATTACKS.values(), ids=EPERM_ATTACKS.keys())
def test_control_denied_syscall_is_not_eperm_without_the_filter(
    attack: Callable[[], dict[str, int]],
) -> None:
    answer = run_in_child(attack, confined=False).report
    assert refused_with(answer) != errno.EPERM, answer


def test_every_listed_syscall_fails_with_eperm() -> None:
    # All arguments are -1, which every one of these rejects, so a regression does nothing.
    names = [name for _why, group in seccomp_layer.DENIED_SYSCALLS for name in group]
    numbers = {
        name: number for name in names if (number := seccomp_layer.resolve(name).number) is not None
    }

    def sweep() -> dict[str, int]:
        return {
            name: refused_with(raw_syscall(number, -1, -1, -1, -1, -1, -1))
            for name, number in numbers.items()
        }

    answers = run_in_child(sweep).report
    assert len(answers) >= 60
    assert "open_tree_attr" in answers  # by number: this libseccomp may not know it
    assert {name: code for name, code in answers.items() if code != errno.EPERM} == {}


PERMITTED_PERSONALITIES = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xFFFF_FFFF]
REFUSED_PERSONALITIES = [
    0x1,
    0x9,
    0x4_0000,  # ADDR_NO_RANDOMIZE
    0x40_0000,  # READ_IMPLIES_EXEC
    0x10_0000,  # MMAP_PAGE_ZERO
    0x2_0009,
    0x7FFF_FFFF,
    0x8000_0000,
    0x8002_0008,
    0xFFFF_FFFE,
    0x1_0000_0000,  # the kernel reads 32 bits: this would be PER_LINUX
    0x1_0000_0008,
    0xFFFF_FFFF_FFFF_FFFF,
]


def test_personality_allows_only_what_docker_allows() -> None:
    def attack() -> dict[str, int]:
        answers = {}
        for value in PERMITTED_PERSONALITIES + REFUSED_PERSONALITIES:
            answers[hex(value)] = refused_with(raw_syscall(SYS_personality, value))
            raw_syscall(SYS_personality, 0)
        return answers

    answers = run_in_child(attack).report
    assert {value: answers[hex(value)] for value in PERMITTED_PERSONALITIES} == dict.fromkeys(
        PERMITTED_PERSONALITIES, 0
    )
    assert {value: answers[hex(value)] for value in REFUSED_PERSONALITIES} == dict.fromkeys(
        REFUSED_PERSONALITIES, errno.EPERM
    )


# --- terminal injection -----------------------------------------------------------------

TERMINAL_COMMANDS = {
    "tiocsti": 0x5412,
    "tiocsti_high_bits": 0x1_0000_5412,  # the kernel truncates to 32 bits
    "tioclinux": 0x541C,
}


def _inject_into_pty(command: int) -> Callable[[], dict[str, Any]]:
    def attack() -> dict[str, Any]:
        _controller, terminal = os.openpty()
        tty.setraw(terminal, termios.TCSANOW)
        os.set_blocking(terminal, False)
        character = ctypes.c_char(b"!")
        answer = raw_syscall(SYS_ioctl, terminal, command, ctypes.byref(character))
        try:
            injected = os.read(terminal, 16).decode()
        except BlockingIOError:
            injected = ""
        return {"answer": answer, "injected": injected}

    return attack


@pytest.mark.parametrize("command", TERMINAL_COMMANDS.values(), ids=TERMINAL_COMMANDS.keys())
def test_terminal_injection_is_refused(command: int) -> None:
    report = run_in_child(_inject_into_pty(command)).report
    assert refused_with(report["answer"]) == errno.EPERM
    assert report["injected"] == ""


@needs_host_root
def test_control_tiocsti_injects_without_the_filter() -> None:
    report = run_in_child(_inject_into_pty(TERMINAL_COMMANDS["tiocsti"]), confined=False).report
    if refused_with(report["answer"]) != 0:
        pytest.skip(f"the host refuses TIOCSTI itself: {report['answer']}")
    assert report["injected"] == "!"


# --- sockets ----------------------------------------------------------------------------

FOREIGN_FAMILIES = {
    "inet_stream": (socket.AF_INET, socket.SOCK_STREAM, 0),
    "inet_dgram": (socket.AF_INET, socket.SOCK_DGRAM, 0),
    "inet6_stream": (socket.AF_INET6, socket.SOCK_STREAM, 0),
    "netlink_route": (socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "vsock": (socket.AF_VSOCK, socket.SOCK_STREAM, 0),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0),
    "inet_with_high_bits": (0x1_0000_0000 | socket.AF_INET, socket.SOCK_STREAM, 0),
}


@pytest.mark.parametrize("family_type_protocol", FOREIGN_FAMILIES.values(), ids=FOREIGN_FAMILIES)
def test_network_off_refuses_sockets_other_than_unix(
    family_type_protocol: tuple[int, int, int],
) -> None:
    def attack() -> dict[str, int]:
        return raw_syscall(SYS_socket, *family_type_protocol)

    assert refused_with(run_in_child(attack).report) == errno.EAFNOSUPPORT


def test_network_off_refuses_socketpair_other_than_unix() -> None:
    def attack() -> dict[str, int]:
        pair = (ctypes.c_int * 2)()
        return raw_syscall(SYS_socketpair, socket.AF_INET, socket.SOCK_STREAM, 0, pair)

    assert refused_with(run_in_child(attack).report) == errno.EAFNOSUPPORT


@pytest.fixture
def loopback_listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP listener and a UDP socket on 127.0.0.1 that the child tries to reach."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        for listener in (tcp, udp):
            listener.bind(("127.0.0.1", 0))
            listener.setblocking(False)
        tcp.listen(1)
        yield tcp, udp


def _reach(tcp_port: int, udp_port: int) -> Callable[[], dict[str, str]]:
    def attack() -> dict[str, str]:
        results = {}
        try:
            socket.create_connection(("127.0.0.1", tcp_port), timeout=2).close()
            results["tcp"] = "connected"
        except OSError as exc:
            results["tcp"] = errno.errorcode.get(exc.errno or 0, str(exc))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"leak", ("127.0.0.1", udp_port))
            results["udp"] = "sent"
        except OSError as exc:
            results["udp"] = errno.errorcode.get(exc.errno or 0, str(exc))
        return results

    return attack


def _arrivals(tcp: socket.socket, udp: socket.socket) -> dict[str, bool]:
    arrived = {}
    try:
        tcp.accept()[0].close()
        arrived["tcp"] = True
    except BlockingIOError:
        arrived["tcp"] = False
    try:
        udp.recv(16)
        arrived["udp"] = True
    except BlockingIOError:
        arrived["udp"] = False
    return arrived


def test_network_off_nothing_reaches_loopback_listeners(
    loopback_listeners: tuple[socket.socket, socket.socket],
) -> None:
    tcp, udp = loopback_listeners
    report = run_in_child(_reach(tcp.getsockname()[1], udp.getsockname()[1])).report
    assert report == {"tcp": "EAFNOSUPPORT", "udp": "EAFNOSUPPORT"}
    assert _arrivals(tcp, udp) == {"tcp": False, "udp": False}


def test_control_loopback_listeners_are_reached_without_the_filter(
    loopback_listeners: tuple[socket.socket, socket.socket],
) -> None:
    tcp, udp = loopback_listeners
    attack = _reach(tcp.getsockname()[1], udp.getsockname()[1])
    report = run_in_child(attack, confined=False).report
    assert report == {"tcp": "connected", "udp": "sent"}
    assert _arrivals(tcp, udp) == {"tcp": True, "udp": True}


# With the egress proxy a session needs a TCP socket to reach the proxy's port in its
# own namespace (Landlock refuses every other port): that, and nothing else, is allowed.
EGRESS_MODE_SOCKETS: dict[str, tuple[tuple[int, int, int], int]] = {
    "inet_stream": ((socket.AF_INET, socket.SOCK_STREAM, 0), 0),
    "inet_stream_tcp": ((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP), 0),
    "inet6_stream": ((socket.AF_INET6, socket.SOCK_STREAM, 0), 0),
    "inet_stream_flags": ((socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0), 0),
    "unix_datagram": ((socket.AF_UNIX, socket.SOCK_DGRAM, 0), 0),
    "inet_udp": ((socket.AF_INET, socket.SOCK_DGRAM, 0), errno.EACCES),
    "inet6_udp": ((socket.AF_INET6, socket.SOCK_DGRAM, 0), errno.EACCES),
    "inet_raw": ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), errno.EACCES),
    "inet_seqpacket": ((socket.AF_INET, socket.SOCK_SEQPACKET, 0), errno.EACCES),
    "inet_sctp_stream": ((socket.AF_INET, socket.SOCK_STREAM, 132), errno.EACCES),
    "inet_mptcp": ((socket.AF_INET, socket.SOCK_STREAM, 262), errno.EACCES),
    "inet_icmp_protocol": ((socket.AF_INET, socket.SOCK_STREAM, 1), errno.EACCES),
    "netlink_route": ((socket.AF_NETLINK, socket.SOCK_RAW, 0), errno.EAFNOSUPPORT),
    "packet": ((socket.AF_PACKET, socket.SOCK_RAW, 0), errno.EAFNOSUPPORT),
    "vsock": ((socket.AF_VSOCK, socket.SOCK_STREAM, 0), errno.EAFNOSUPPORT),
    "ax25": ((3, socket.SOCK_STREAM, 0), errno.EAFNOSUPPORT),
    "unspec": ((0, socket.SOCK_STREAM, 0), errno.EAFNOSUPPORT),
    "inet_with_high_bits": (
        (0x1_0000_0000 | socket.AF_INET, socket.SOCK_STREAM, 0),
        errno.EAFNOSUPPORT,
    ),
}


def test_egress_proxy_mode_allows_tcp_stream_sockets_only() -> None:
    def attack() -> dict[str, dict[str, int]]:
        return {
            name: raw_syscall(SYS_socket, *arguments)
            for name, (arguments, _expected) in EGRESS_MODE_SOCKETS.items()
        }

    report = run_in_child(attack, network=True).report
    refused = {name: refused_with(outcome) for name, outcome in report.items()}
    assert refused == {name: expected for name, (_args, expected) in EGRESS_MODE_SOCKETS.items()}


# --- foreign architectures --------------------------------------------------------------


def _int80_getpid() -> dict[str, int]:
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(INT80_GETPID)
    function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return {"result": function(), "errno": 0}


def _x32_getpid() -> dict[str, int]:
    return raw_syscall(X32_SYSCALL_BIT | SYS_getpid)


FOREIGN_ABI_GETPID: dict[str, Callable[[], dict[str, int]]] = {
    "i386_int80": _int80_getpid,
    "x32": _x32_getpid,
}


def _from_a_thread(attack: Callable[[], dict[str, int]]) -> Callable[[], dict[str, bool]]:
    """Run the attack in a second thread: only a kill of the whole process stops the first."""

    def in_process() -> dict[str, bool]:
        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        thread.join(timeout=3)
        return {"main_thread_survived": True}

    return in_process


@pytest.mark.parametrize("attack", FOREIGN_ABI_GETPID.values(), ids=FOREIGN_ABI_GETPID.keys())
def test_foreign_abi_syscall_kills_the_process(attack: Callable[[], dict[str, int]]) -> None:
    outcome = run_in_child(attack)
    assert outcome.killed_by == signal.SIGSYS
    assert "report" not in outcome.payload


@pytest.mark.parametrize("attack", FOREIGN_ABI_GETPID.values(), ids=FOREIGN_ABI_GETPID.keys())
def test_foreign_abi_syscall_from_a_thread_kills_every_thread(
    attack: Callable[[], dict[str, int]],
) -> None:
    # libseccomp's default for a foreign ABI kills only the calling thread.
    outcome = run_in_child(_from_a_thread(attack))
    assert outcome.killed_by == signal.SIGSYS
    assert "report" not in outcome.payload


def test_control_i386_int80_syscall_returns_without_the_filter() -> None:
    def attack() -> dict[str, int]:
        return {"result": _int80_getpid()["result"], "pid": os.getpid()}

    report = run_in_child(attack, confined=False).report
    assert report["result"] == report["pid"]


def test_control_x32_syscall_returns_without_the_filter() -> None:
    # The child survives: x32 answers getpid, or ENOSYS where the kernel lacks x32.
    answer = run_in_child(_x32_getpid, confined=False).report
    assert refused_with(answer) in (0, errno.ENOSYS)


# --- what must keep working -------------------------------------------------------------


def test_ordinary_work_still_functions_under_the_filter(tmp_path: Path) -> None:
    data_file = tmp_path / "data.txt"
    data_file.write_text("hello from the workspace")

    def work() -> dict[str, Any]:
        results: dict[str, Any] = {}
        results["subprocess"] = subprocess.run(["/bin/true"], check=False).returncode
        results["read_file"] = data_file.read_text()
        collected: list[int] = []
        workers = [threading.Thread(target=collected.append, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        results["threads"] = sorted(collected)
        left, right = socket.socketpair(socket.AF_UNIX)
        left.sendall(b"ping")
        results["unix_socketpair"] = right.recv(4).decode()
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        results["fork_exit_code"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        results["personality_query"] = refused_with(raw_syscall(SYS_personality, 0xFFFF_FFFF))
        results["getpid"] = raw_syscall(SYS_getpid)["result"] == os.getpid()
        return results

    assert run_in_child(work).report == {
        "subprocess": 0,
        "read_file": "hello from the workspace",
        "threads": [0, 1, 2, 3],
        "unix_socketpair": "ping",
        "fork_exit_code": 7,
        "personality_query": 0,
        "getpid": True,
    }


def test_a_thread_started_before_the_filter_is_filtered_too() -> None:
    go = threading.Event()
    answers: dict[str, Any] = {}

    def in_thread() -> None:
        go.wait()
        answers["unshare"] = raw_syscall(SYS_unshare, CLONE_NEWUSER)

    def prepare() -> None:
        thread = threading.Thread(target=in_thread)
        thread.start()
        answers["thread"] = thread

    def attack() -> dict[str, int]:
        go.set()
        answers["thread"].join()
        result: dict[str, int] = answers["unshare"]
        return result

    assert refused_with(run_in_child(attack, prepare=prepare).report) == errno.EPERM
