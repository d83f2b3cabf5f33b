"""The cgroup layer on this host's real cgroups: the limits hold and the kill reaches everything.

These tests make real groups and real processes, so they need root.  Each session group
lives under a parent of this run's own (``codesherpa-test-<pid>``) that a fixture removes
even when a test fails.  Run them in a fresh PID namespace so that nothing can outlive
the run::

    unshare --pid --fork --kill-child --mount-proc env PYTHONPATH=. \\
        .venv/bin/python -m pytest -q tests/sandbox/confine/test_cgroup.py

The tests that choose between v1 and v2 read fake mount tables and need nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import select
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox import cpu_demotion
from sandbox.confine import cgroup
from sandbox.confine.base import WorkerSpec
from sandbox.confine.cgroup import groups as cgroup_groups
from sandbox.confine.process import PR_SET_CHILD_SUBREAPER, prctl
from sandbox.policy import Policy

pytestmark = pytest.mark.timeout(60)

PARENT = f"codesherpa-test-{os.getpid()}"
MB = 1024 * 1024
MEMORY_LIMIT_MB = 64
ALLOCATION_BYTES = 200 * MB
PROCESS_LIMIT = 8
NOBODY = 65534


# --- helpers: children that report over a pipe, and reaping them ------------------------


def spec_for(key: str, **limits: int) -> WorkerSpec:
    # Nothing preloaded: the tiny memory limits here need not hold numpy and pandas.
    policy = Policy.model_validate({"limits": limits, "python": {"preload": []}})
    return WorkerSpec(policy=policy, workspace="/tmp", uid=None, channel_fd=-1, session_key=key)


def fork_child(body: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that runs body(report_fd) and always leaves through os._exit."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        exit_code = 0
        try:
            os.close(read_fd)
            body(write_fd)
        except BaseException:
            traceback.print_exc()
            exit_code = 70
        os._exit(exit_code)
    os.close(write_fd)
    return pid, read_fd


def report(fd: int, **facts: Any) -> None:
    os.write(fd, (json.dumps(facts) + "\n").encode())


def read_report(fd: int, timeout_s: float = 10.0) -> dict[str, Any]:
    received = b""
    deadline = time.monotonic() + timeout_s
    while not received.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not readable:
            raise TimeoutError(f"no report from the child; got {received!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError(f"the child left without reporting; got {received!r}")
        received += chunk
    os.close(fd)
    facts: dict[str, Any] = json.loads(received)
    return facts


def apply_and_report(key: str, fd: int, **limits: int) -> None:
    status = cgroup.apply(spec_for(key, **limits), PARENT)
    report(fd, active=status.active, detail=status.detail, pid=os.getpid())


def wait_for_exit(pid: int, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} did not exit")


def killed_by_sigkill(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def still_present(pids: Iterable[int], timeout_s: float = 5.0) -> set[int]:
    """Reap the given processes as they come back to this subreaper; return any left.

    A dead process stays visible as a zombie until its parent reaps it, and an orphan
    reaches this process only once its own parent has gone, so keep trying a moment.
    """
    remaining = set(pids)
    deadline = time.monotonic() + timeout_s
    while remaining and time.monotonic() < deadline:
        for pid in sorted(remaining):
            with contextlib.suppress(ChildProcessError):  # not (yet) a child of ours
                os.waitpid(pid, os.WNOHANG)
            if not psutil.pid_exists(pid):
                remaining.discard(pid)
        time.sleep(0.01)
    return remaining


def members(key: str) -> set[int]:
    pids: set[int] = set()
    for directory in cgroup.session_paths(key, PARENT):
        pids.update(map(int, (directory / "cgroup.procs").read_text().split()))
    return pids


def sleep_then_exit(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(0)


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_cgroups() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    why_not = cgroup.probe(PARENT)
    if why_not is not None:
        cgroup.remove_all_sessions(PARENT)
        pytest.skip(f"this host cannot make session cgroups: {why_not}")
    # Orphans come back to this process, as they come to the worker in production, so
    # the tests can reap them and see them gone.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    yield
    cgroup.remove_all_sessions(PARENT)
    prctl(PR_SET_CHILD_SUBREAPER, 0)


@pytest.fixture
def key(host_cgroups: None) -> Iterator[str]:
    session_key = f"test-{uuid.uuid4().hex[:12]}"
    yield session_key
    cgroup.remove_all_sessions(PARENT)
    assert cgroup.session_paths(session_key, PARENT) == []


# --- the layer on this host ------------------------------------------------------------


def test_probe_finds_limits_possible_and_leaves_no_group(host_cgroups: None) -> None:
    assert cgroup.probe(PARENT) is None
    version = cgroup.select_version(PARENT)
    assert isinstance(version, cgroup.CgroupVersion)
    for tree in version.distinct_trees():
        parent_dir = tree.directory(tree.parent_path)
        assert [entry.name for entry in parent_dir.iterdir() if entry.is_dir()] == []


def test_apply_writes_the_policy_limits_and_moves_the_caller(key: str) -> None:
    def body(fd: int) -> None:
        apply_and_report(key, fd, memory_mb=MEMORY_LIMIT_MB, processes=PROCESS_LIMIT)
        time.sleep(30)

    pid, fd = fork_child(body)
    facts = read_report(fd)
    assert facts["active"], facts["detail"]
    assert f"memory {MEMORY_LIMIT_MB} MB" in facts["detail"]
    assert f"pids {PROCESS_LIMIT}" in facts["detail"]

    version = cgroup.select_version(PARENT)
    assert isinstance(version, cgroup.CgroupVersion)
    limit = str(MEMORY_LIMIT_MB * MB)
    expected = {
        "v1": {
            "memory.limit_in_bytes": limit,
            "memory.memsw.limit_in_bytes": limit,
            "pids.max": str(PROCESS_LIMIT),
            "cpu.shares": "1024",
            "cpu.cfs_quota_us": str(cgroup.CPU_PERIOD_US),  # one CPU
        },
        "v2": {
            "memory.max": limit,
            "memory.swap.max": "0",
            "pids.max": str(PROCESS_LIMIT),
            "cpu.weight": "100",
            "cpu.max": f"{cgroup.CPU_PERIOD_US} {cgroup.CPU_PERIOD_US}",
        },
    }[version.name]
    found = {
        name: (directory / name).read_text().strip()
        for directory in cgroup.session_paths(key, PARENT)
        for name in expected
        if (directory / name).exists()
    }
    assert found == {name: value for name, value in expected.items() if name in found}
    assert {"pids.max"} < set(found)
    assert all(pid in members_of(directory) for directory in cgroup.session_paths(key, PARENT))

    cgroup.kill_and_remove(key, PARENT)
    assert killed_by_sigkill(wait_for_exit(pid))


def allowed_cores(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split()[1]
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


@contextlib.contextmanager
def session_member(
    key: str, *, spinning: bool = False
) -> Iterator[tuple[int, cgroup.CgroupVersion]]:
    """A child in the session's groups, sleeping or spinning, and this host's version.

    The session is ended when the block leaves, and the child must die by SIGKILL.
    """

    def body(fd: int) -> None:
        apply_and_report(key, fd)
        if spinning:
            while True:
                pass
        time.sleep(30)

    pid, fd = fork_child(body)
    try:
        assert read_report(fd)["active"]
        version = cgroup.select_version(PARENT)
        assert isinstance(version, cgroup.CgroupVersion)
        yield pid, version
    finally:
        cgroup.kill_and_remove(key, PARENT)
    assert killed_by_sigkill(wait_for_exit(pid))


def test_a_session_can_be_held_to_every_core_but_the_first_and_given_them_back(
    key: str,
) -> None:
    with session_member(key) as (pid, version):
        if version.cpuset_file(key) is None:
            pytest.skip("no cpuset for session groups on this host")
        cores = cgroup.parse_cpu_list(allowed_cores(pid))
        if len(cores) < 2:
            pytest.skip("one core: none to keep free")

        held = version.confine_cores(key, True)
        assert cgroup.parse_cpu_list(allowed_cores(pid)) == cores[1:]
        assert held is not None
        assert cgroup.parse_cpu_list(held) == cores[1:]
        version.confine_cores(key, False)
        assert cgroup.parse_cpu_list(allowed_cores(pid)) == cores


def test_a_session_can_be_put_behind_every_other_task_and_given_its_weight_back(
    key: str,
) -> None:
    with session_member(key) as (pid, version):
        cpu = version.trees.get("cpu")
        if cpu is None or not (cpu.session_dir(key) / "cpu.idle").exists():
            pytest.skip("no cpu.idle for session groups on this host (Linux 5.15+)")
        group = cpu.session_dir(key)
        assert pid in version.members([group])
        # A weight other than the kernel's default, to see that the session gets it back.
        version.weight = str(int(version.weight) // 2)
        (group / version.weight_file).write_text(version.weight)

        assert version.demote(key, True)
        assert (group / "cpu.idle").read_text().strip() == "1"
        assert (group / version.weight_file).read_text().strip() != version.weight
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert version.demote(key, False)
        assert (group / "cpu.idle").read_text().strip() == "0"
        assert (group / version.weight_file).read_text().strip() == version.weight
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER


def test_a_service_that_could_not_undo_sched_idle_does_not_set_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with session_member(key) as (pid, version):
        # Without CAP_SYS_NICE the release could not give SCHED_OTHER back.
        monkeypatch.setattr(cpu_demotion, "may_restore_policies", lambda: False)

        version.demote(key, True)
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        version.demote(key, False)


def test_a_zero_in_a_threads_list_never_switches_the_service_itself(tmp_path: Path) -> None:
    # cgroup v2 may list a thread that is exiting as 0, which the scheduler calls read
    # as "the calling thread".
    if not cgroup.may_restore_policies():
        pytest.skip("needs CAP_SYS_NICE to undo a regression")
    threads = tmp_path / "cgroup.threads"
    threads.write_text("0\n")
    try:
        assert cpu_demotion._set_policy(threads, os.SCHED_IDLE)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def test_the_runnable_threads_of_a_session_are_counted(key: str) -> None:
    with session_member(key, spinning=True) as (pid, version):
        assert version.runnable_threads(key) == 1
        os.kill(pid, signal.SIGSTOP)
        for _ in range(100):  # until the stop has landed
            if version.runnable_threads(key) == 0:
                break
            time.sleep(0.01)
        assert version.runnable_threads(key) == 0


def test_cpu_lists_are_read_and_the_first_core_left_free() -> None:
    assert cgroup.parse_cpu_list("0-3,6\n") == [0, 1, 2, 3, 6]
    assert cgroup.all_cores_but_the_first("0-3,6") == "1,2,3,6"
    assert cgroup.all_cores_but_the_first("2,4") == "4"
    assert cgroup.all_cores_but_the_first("0") is None


def members_of(directory: Path) -> set[int]:
    return set(map(int, (directory / "cgroup.procs").read_text().split()))


def allocate_and_touch(size: int) -> None:
    # Repeating a byte writes every page, so all of it is really charged.
    block = bytearray(b"\x01") * size
    assert len(block) == size


def test_control_the_allocation_succeeds_without_the_layer(host_cgroups: None) -> None:
    pid, fd = fork_child(lambda fd: allocate_and_touch(ALLOCATION_BYTES))
    os.close(fd)
    status = wait_for_exit(pid)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0


def test_allocation_beyond_the_memory_limit_is_oom_killed(key: str) -> None:
    def body(fd: int) -> None:
        apply_and_report(key, fd, memory_mb=MEMORY_LIMIT_MB)
        allocate_and_touch(ALLOCATION_BYTES)

    pid, fd = fork_child(body)
    facts = read_report(fd)
    assert facts["active"], facts["detail"]
    assert killed_by_sigkill(wait_for_exit(pid))

    # The order the service follows: read the counters, then remove the group.
    assert cgroup.oom_killed(key, PARENT)
    peak = cgroup.usage(key, PARENT).get("memory_peak_bytes")
    assert peak is None or peak <= MEMORY_LIMIT_MB * MB
    cgroup.kill_and_remove(key, PARENT)
    assert cgroup.session_paths(key, PARENT) == []
    assert not cgroup.oom_killed(key, PARENT)


def test_fork_loop_stops_at_the_pids_limit_and_the_kill_leaves_nothing(key: str) -> None:
    def body(fd: int) -> None:
        status = cgroup.apply(spec_for(key, processes=PROCESS_LIMIT), PARENT)
        forked: list[int] = []
        refused = False
        for _ in range(4 * PROCESS_LIMIT):
            try:
                child = os.fork()
            except BlockingIOError:
                refused = True
                break
            if child == 0:
                sleep_then_exit(30)
            forked.append(child)
        report(fd, active=status.active, detail=status.detail, forked=forked, refused=refused)
        time.sleep(30)

    pid, fd = fork_child(body)
    facts = read_report(fd)
    assert facts["active"], facts["detail"]
    forked: list[int] = facts["forked"]
    # No forked child exits before the kill, so PROCESS_LIMIT - 1 forks and a refusal
    # mean the group held exactly PROCESS_LIMIT processes at its fullest, never more.
    assert facts["refused"]
    assert len(forked) == PROCESS_LIMIT - 1
    assert members(key) == {pid, *forked}
    assert cgroup.usage(key, PARENT)["pids"] == PROCESS_LIMIT

    cgroup.kill_and_remove(key, PARENT)
    assert killed_by_sigkill(wait_for_exit(pid))
    assert still_present(forked) == set()
    assert cgroup.session_paths(key, PARENT) == []


def test_kill_reaches_a_double_forked_daemon(key: str) -> None:
    def body(fd: int) -> None:
        status = cgroup.apply(spec_for(key), PARENT)
        middle = os.fork()
        if middle == 0:
            os.setsid()
            if os.fork() == 0:
                report(fd, active=status.active, daemon=os.getpid(), session=os.getsid(0))
                sleep_then_exit(30)
            os._exit(0)
        os.waitpid(middle, 0)

    pid, fd = fork_child(body)
    facts = read_report(fd)
    assert facts["active"]
    daemon = facts["daemon"]
    assert os.WEXITSTATUS(wait_for_exit(pid)) == 0
    # It left the process tree and the session of its starter, but not the cgroup.
    assert facts["session"] != os.getsid(0)
    assert psutil.pid_exists(daemon)
    assert members(key) == {daemon}

    cgroup.kill_and_remove(key, PARENT)
    assert still_present([daemon]) == set()
    assert cgroup.session_paths(key, PARENT) == []


def test_kill_and_remove_is_idempotent(key: str) -> None:
    cgroup.kill_and_remove(key, PARENT)  # never made

    pid, fd = fork_child(lambda fd: apply_and_report(key, fd))
    assert read_report(fd)["active"]
    assert os.WIFEXITED(wait_for_exit(pid))
    directories = cgroup.session_paths(key, PARENT)
    assert directories  # an empty group stays until someone removes it
    directories[-1].rmdir()  # one tree's group is already gone

    cgroup.kill_and_remove(key, PARENT)
    cgroup.kill_and_remove(key, PARENT)
    assert cgroup.session_paths(key, PARENT) == []
    assert cgroup.usage(key, PARENT) == {}
    assert not cgroup.oom_killed(key, PARENT)


def test_usage_reports_memory_pids_and_cpu_of_a_live_session(key: str) -> None:
    def body(fd: int) -> None:
        apply_and_report(key, fd)
        busy_until = time.monotonic() + 0.05
        while time.monotonic() < busy_until:
            pass
        time.sleep(30)

    pid, fd = fork_child(body)
    assert read_report(fd)["active"]
    time.sleep(0.1)
    figures = cgroup.usage(key, PARENT)
    assert figures["pids"] == 1
    assert figures["memory_bytes"] > 0
    assert figures["cpu_ns"] > 0
    assert not cgroup.oom_killed(key, PARENT)
    cgroup.kill_and_remove(key, PARENT)
    assert killed_by_sigkill(wait_for_exit(pid))


def test_apply_without_root_reports_inactive_and_raises_nothing(key: str) -> None:
    def body(fd: int) -> None:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        apply_and_report(key, fd)

    pid, fd = fork_child(body)
    facts = read_report(fd)
    assert os.WEXITSTATUS(wait_for_exit(pid)) == 0
    assert not facts["active"]
    assert "not root" in facts["detail"]
    assert cgroup.session_paths(key, PARENT) == []


def test_session_keys_cannot_name_a_path(host_cgroups: None) -> None:
    with pytest.raises(ValueError, match="session key"):
        cgroup.usage("../../escape", PARENT)
    with pytest.raises(ValueError, match="parent"):
        cgroup.select_version("../escape")


# --- cgroup v2's one-shot kill, on this host's unified tree ----------------------------


def unified_tree() -> cgroup.Tree | None:
    """This host's v2 tree, used without controllers: v2's kill needs none."""
    mount_point = next(
        (
            Path(line.split()[4])
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.partition(" - ")[2].startswith("cgroup2 ")
        ),
        None,
    )
    own = next(
        (
            line.split(":", 2)[2]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.startswith("0::")
        ),
        None,
    )
    if mount_point is None or own is None:
        return None
    return cgroup.Tree(mount_point, "/", "", own, posixpath.join(own, PARENT))


def test_v2_kill_ends_every_process_with_cgroup_kill(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = unified_tree()
    if tree is None or not (tree.directory(tree.anchor_path) / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 tree here")
    version = cgroup.CgroupV2(dict.fromkeys(("memory", "pids", "cpu"), tree))
    session_dir = tree.session_dir(key)
    session_dir.mkdir(parents=True)
    try:
        if not (session_dir / "cgroup.kill").exists():
            pytest.skip("cgroup.kill needs Linux 5.14")

        def body(fd: int) -> None:
            (session_dir / "cgroup.procs").write_text("0")
            if os.fork() == 0:
                os.setsid()
                report(fd, escaped=os.getpid())
                sleep_then_exit(30)
            time.sleep(30)

        pid, fd = fork_child(body)
        escaped = read_report(fd)["escaped"]
        assert members_of(session_dir) == {pid, escaped}
        # Without the per-process fallback, only cgroup.kill can end them in time.
        monkeypatch.setattr(cgroup_groups, "_kill_if_member", lambda pid, memberships: None)
        version.kill_and_remove(key)
        assert killed_by_sigkill(wait_for_exit(pid))
        assert still_present([escaped]) == set()
        assert not session_dir.exists()
        version.kill_and_remove(key)  # and again: nothing to do
    finally:
        version.kill_and_remove(key)
        tree.directory(tree.parent_path).rmdir()


# --- choosing v1 or v2 from the mount table (fake trees, no root needed) -----------------


def mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """Lines of /proc/self/mountinfo for (root, mount point, fstype, super options)."""
    return "\n".join(
        f"{30 + n} 23 0:{30 + n} {root} {point} rw,relatime - {fstype} {fstype} {options}"
        for n, (root, point, fstype, options) in enumerate(mounts)
    )


def offer_controllers(group_dir: Path, controllers: str) -> None:
    group_dir.mkdir(parents=True, exist_ok=True)
    (group_dir / "cgroup.controllers").write_text(controllers + "\n")


def test_this_hosts_layout_uses_v1_nested_in_the_callers_groups(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    offer_controllers(unified, "")
    version = cgroup.select_version(
        "codesherpa",
        mountinfo=mountinfo(
            ("/", "/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
            ("/", "/sys/fs/cgroup/cpuacct", "cgroup", "rw,cpuacct"),
            ("/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            ("/", "/sys/fs/cgroup/freezer", "cgroup", "rw,freezer"),
            ("/", "/sys/fs/cgroup/pids", "cgroup", "rw,pids"),
            ("/", str(unified), "cgroup2", "rw"),
        ),
        proc_cgroup="8:pids:/\n6:freezer:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/",
    )
    assert isinstance(version, cgroup.CgroupV1)
    assert [str(path) for path in version.session_dirs("s1")] == [
        "/sys/fs/cgroup/memory/process_api/abc/codesherpa/s1",
        "/sys/fs/cgroup/pids/codesherpa/s1",
        "/sys/fs/cgroup/cpu/codesherpa/s1",
        "/sys/fs/cgroup/cpuacct/codesherpa/s1",
        "/sys/fs/cgroup/freezer/codesherpa/s1",
    ]
    assert ("memory", "/process_api/abc/codesherpa/s1") in version.memberships("s1")


@pytest.mark.parametrize(
    ("cpuset_options", "held_to_cores"), [("rw,cpuset", True), ("rw,cpuset,cpu", False)]
)
def test_a_cpuset_tree_is_used_only_when_it_holds_no_other_controller(
    cpuset_options: str, held_to_cores: bool
) -> None:
    # Its set-up may fail on its own, and then it must take nothing else with it.
    version = cgroup.select_version(
        "codesherpa",
        mountinfo=mountinfo(
            ("/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            ("/", "/sys/fs/cgroup/pids", "cgroup", "rw,pids"),
            ("/", "/sys/fs/cgroup/cpuset", "cgroup", cpuset_options),
        ),
        proc_cgroup="3:cpuset:/\n2:pids:/\n1:memory:/",
    )
    assert isinstance(version, cgroup.CgroupV1)
    assert ("cpuset" in version.trees) is held_to_cores


def test_a_pure_v2_host_uses_one_group_under_the_service(tmp_path: Path) -> None:
    offer_controllers(tmp_path / "system.slice" / "cs.service", "cpu io memory pids")
    version = cgroup.select_version(
        "codesherpa",
        mountinfo=mountinfo(("/", str(tmp_path), "cgroup2", "rw,nsdelegate")),
        proc_cgroup="0::/system.slice/cs.service\n",
    )
    assert isinstance(version, cgroup.CgroupV2)
    assert version.session_dirs("s1") == [tmp_path / "system.slice/cs.service/codesherpa/s1"]


def test_v2_is_preferred_when_its_tree_offers_the_controllers(tmp_path: Path) -> None:
    offer_controllers(tmp_path / "unified", "memory pids")
    version = cgroup.select_version(
        "codesherpa",
        mountinfo=mountinfo(
            ("/", "/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
            ("/", str(tmp_path / "unified"), "cgroup2", "rw"),
        ),
        proc_cgroup="1:cpu:/\n0::/\n",
    )
    assert isinstance(version, cgroup.CgroupV2)


def test_a_container_showing_a_subtree_maps_its_paths(tmp_path: Path) -> None:
    version = cgroup.select_version(
        "codesherpa",
        mountinfo=mountinfo(
            ("/docker/abc", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            ("/docker/abc", "/sys/fs/cgroup/pids", "cgroup", "rw,pids"),
        ),
        proc_cgroup="2:pids:/docker/abc\n1:memory:/docker/abc/app\n",
    )
    assert isinstance(version, cgroup.CgroupV1)
    assert [str(path) for path in version.session_dirs("s1")] == [
        "/sys/fs/cgroup/memory/app/codesherpa/s1",
        "/sys/fs/cgroup/pids/codesherpa/s1",
    ]


def test_an_absolute_parent_starts_at_the_top_of_the_tree(tmp_path: Path) -> None:
    offer_controllers(tmp_path, "memory pids")
    version = cgroup.select_version(
        "/codesherpa",
        mountinfo=mountinfo(("/", str(tmp_path), "cgroup2", "rw")),
        proc_cgroup="0::/system.slice/cs.service\n",
    )
    assert isinstance(version, cgroup.CgroupV2)
    assert version.session_dirs("s1") == [tmp_path / "codesherpa/s1"]


def test_no_memory_or_pids_controller_anywhere_says_why(tmp_path: Path) -> None:
    offer_controllers(tmp_path, "cpu io")
    why_not = cgroup.select_version(
        "codesherpa",
        mountinfo=mountinfo(
            ("/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            ("/", str(tmp_path), "cgroup2", "rw"),
        ),
        proc_cgroup="1:memory:/\n0::/\n",
    )
    assert why_not == (
        f"cgroup v2 at {tmp_path} offers no memory or pids controller at /; "
        "cgroup v1: no pids controller mounted"
    )
