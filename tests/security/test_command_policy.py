"""Command-policy bypass attempts (the attack class "command-policy bypass: `;`, `&&`,
`|`, `$(…)`, backticks, newlines, env prefixes, launchers such as `sh -c`, `env`,
`xargs`, `find -exec`, and `subprocess` from the REPL").

Two layers are attacked.  ``/command`` (``session.run_command``): every line would, in a
shell, create a marker file; the worker must deny it with a stable rule name before
anything runs, and the marker must be absent from the host's view of the workspace.
Then the kernel layer, from the REPL, where no parser stands in the way: the execute
allowlist (Landlock) must refuse every program the policy does not name, however it is
started.  Controls show the markers do appear when the policy allows the action.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sandbox import Session
from sandbox.confine.landlock_layer import elf_interpreter
from tests.security.harness import probe

pytestmark = [pytest.mark.anyio, pytest.mark.attack]

MARKERS = ("pwned", "first")


def markers_in(session: Session) -> set[str]:
    return set(MARKERS) & set(os.listdir(session.workspace))


# --- /command: the parser's early, named denial -----------------------------------------

# Each line would create `pwned` (and, where a first command precedes the attack,
# `first`) if a shell ran it.  Expected: denied, naming the rule, nothing run.
BYPASSES = [
    ("semicolon", "touch first; sh -c 'touch pwned'", "allowlist"),
    ("and", "touch first && sh -c 'touch pwned'", "allowlist"),
    ("or", "false || bash -c 'touch pwned'", "allowlist"),
    ("pipe", "echo touch pwned | sh", "allowlist"),
    ("pipe into python", 'echo \'open("pwned", "w")\' | python3', "allowlist"),
    ("dollar substitution", "echo $(touch pwned)", "expansion"),
    ("backticks", "echo `touch pwned`", "expansion"),
    ("variable", "touch first $HOME/pwned", "expansion"),
    ("quoted substitution", 'echo "$(touch pwned)"', "expansion"),
    ("newline", "touch first\nsh -c 'touch pwned'", "allowlist"),
    ("carriage return", "touch first\r\nsh -c 'touch pwned'", "allowlist"),
    ("env prefix", "PATH=/tmp touch pwned", "env-prefix"),
    ("preload prefix", "LD_PRELOAD=/mnt/data/x.so touch pwned", "env-prefix"),
    ("sh -c", "sh -c 'touch pwned'", "allowlist"),
    ("bash", "bash -c 'touch pwned'", "allowlist"),
    ("quoted launcher", "'s'h -c 'touch pwned'", "allowlist"),
    ("escaped launcher", "s\\h -c 'touch pwned'", "allowlist"),
    ("glob launcher", "s? -c 'touch pwned'", "allowlist"),
    ("env", "env touch pwned", "allowlist"),
    ("xargs", "echo pwned | xargs touch", "allowlist"),
    ("nohup", "nohup touch pwned", "allowlist"),
    ("timeout", "timeout 5 touch pwned", "allowlist"),
    ("setsid", "setsid touch pwned", "allowlist"),
    ("nice", "nice touch pwned", "allowlist"),
    ("python3 -c", "python3 -c \"open('pwned', 'w')\"", "allowlist"),
    ("find -exec", "find . -maxdepth 0 -exec touch pwned ;", "argument"),
    ("find -execdir", "find . -maxdepth 0 -execdir touch pwned ;", "argument"),
    ("find -ok", "find . -maxdepth 0 -ok touch pwned ;", "argument"),
    ("find -exec=", "find . -exec=touch pwned", "argument"),
    ("absolute path", "/usr/bin/touch pwned", "program-path"),
    ("relative path", "./sh -c 'touch pwned'", "program-path"),
    ("loader", "/lib64/ld-linux-x86-64.so.2 /bin/sh -c 'touch pwned'", "program-path"),
    ("background", "touch first & touch pwned", "background"),
    ("subshell", "(touch pwned)", "subshell"),
    ("brace group", "{ touch pwned; }", "allowlist"),
]


@pytest.mark.parametrize(
    ("line", "rule"), [pytest.param(line, rule, id=name) for name, line, rule in BYPASSES]
)
async def test_command_bypass_is_denied_by_name_and_runs_nothing(
    session: Session, line: str, rule: str
) -> None:
    outcome = await session.run_command(line)
    assert outcome.reply.status == "denied", outcome.reply
    assert outcome.reply.denied_rule == rule
    assert outcome.reply.exit_code is None
    assert markers_in(session) == set()


# In a cell a newline ends the `!` line, so those lines are two lines there.
CELL_BYPASSES = [(name, line, rule) for name, line, rule in BYPASSES if "\n" not in line]


@pytest.mark.parametrize(
    ("line", "rule"), [pytest.param(line, rule, id=name) for name, line, rule in CELL_BYPASSES]
)
async def test_a_bang_line_in_a_cell_meets_the_same_denial_and_runs_nothing(
    session: Session, line: str, rule: str
) -> None:
    outcome = await session.run_python(f"!{line}")
    assert outcome.reply.status == "denied", outcome.reply
    assert outcome.reply.denied_rule == rule
    assert markers_in(session) == set()


async def test_find_delete_is_denied_and_deletes_nothing(session: Session) -> None:
    await session.run_command("touch keep-me")
    outcome = await session.run_command("find . -name keep-me -delete")
    assert outcome.reply.status == "denied"
    assert outcome.reply.denied_rule == "argument"
    assert (Path(session.workspace) / "keep-me").exists()


async def test_allowed_command_chains_do_create_markers(session: Session) -> None:
    # Control: with allowed programs the same operators run, so the markers above
    # would have appeared had the line been accepted.
    outcome = await session.run_command("touch first; echo done && touch pwned | cat")
    assert outcome.reply.status == "ok", outcome.reply
    assert markers_in(session) == {"first", "pwned"}


async def test_programs_copied_into_the_workspace_cannot_be_run_by_command(
    session: Session,
) -> None:
    copied = await session.run_command("cp /bin/sh sh && cp /bin/sh touch")
    # Landlock lets a session read only the programs it may run, so the copy itself
    # may already fail; either way nothing below may run a shell.
    assert copied.reply.status == "ok" or "Permission denied" in copied.reply.stderr
    for line in ("./sh -c 'touch pwned'", "sh -c 'touch pwned'"):
        outcome = await session.run_command(line)
        assert outcome.reply.status == "denied", (line, outcome.reply)
    # A name on the allowlist resolves through the policy's PATH, never the workspace.
    shadowed = await session.run_command("touch pwned")
    assert shadowed.reply.status == "ok"
    assert (Path(session.workspace) / "pwned").stat().st_size == 0


# --- the kernel layer, from the REPL ----------------------------------------------------

# A shell builtin makes the marker, so a shell that ran would need no other program.
SHELL_MARKER = "echo x > pwned"


def permission_denied(result: dict[str, Any]) -> bool:
    return result == {"ok": False, "errno": 13, "error": "PermissionError"}


async def test_allowed_programs_still_run_from_the_repl(session: Session) -> None:
    results = await probe(
        session,
        """
        attempt("ls", lambda: subprocess.run(["ls", "/usr/lib"], capture_output=True).returncode)
        attempt("touch", lambda: subprocess.run(["touch", "control"]).returncode)
        """,
    )
    assert results == {"ls": {"ok": True, "value": "0"}, "touch": {"ok": True, "value": "0"}}
    assert (Path(session.workspace) / "control").exists()


async def test_subprocess_shells_from_the_repl_are_refused_by_the_kernel(
    session: Session,
) -> None:
    results = await probe(
        session,
        f"""
        marker = {SHELL_MARKER!r}
        attempt("sh", lambda: subprocess.run(["sh", "-c", marker]))
        attempt("bash", lambda: subprocess.run(["/bin/bash", "-c", marker]))
        attempt("shell=True", lambda: subprocess.run(marker, shell=True))
        attempt("python3", lambda: subprocess.run(
            ["python3", "-c", "open('pwned', 'w')"]))
        attempt("env", lambda: subprocess.run(["env", "sh", "-c", marker]))
        attempt("id", lambda: subprocess.run(["/usr/bin/id"], capture_output=True))
        attempt("os.system", lambda: os.system(marker))
        attempt("popen", lambda: os.popen(marker).close())
        attempt("posix_spawn", lambda: os.waitpid(
            os.posix_spawn("/bin/sh", ["sh", "-c", marker], {{}}), 0))
        """,
    )
    for name in ("sh", "bash", "shell=True", "python3", "env", "id", "popen", "posix_spawn"):
        assert permission_denied(results[name]), (name, results[name])
    # os.system reports the shell's failure as "command not runnable" (127).
    assert results["os.system"] == {"ok": True, "value": str(127 << 8)}
    assert markers_in(session) == set()


async def test_execv_in_a_forked_child_is_refused(session: Session) -> None:
    results = await probe(
        session,
        f"""
        def fork_and_exec(path, argv):
            child = os.fork()
            if child == 0:
                try:
                    os.execv(path, argv)
                except OSError as exc:
                    os._exit(exc.errno)
                os._exit(0)
            return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        attempt("sh", lambda: fork_and_exec("/bin/sh", ["sh", "-c", {SHELL_MARKER!r}]))
        attempt("dash", lambda: fork_and_exec("/usr/bin/dash", ["dash", "-c",
                                                                {SHELL_MARKER!r}]))
        attempt("execve", lambda: fork_and_exec("/usr/bin/env", ["env"]))
        """,
    )
    # The child exits with the errno of the failed exec: EACCES (13).
    for name, result in results.items():
        assert result == {"ok": True, "value": "13"}, (name, result)
    assert markers_in(session) == set()


async def test_programs_copied_into_writable_places_cannot_be_executed(
    session: Session,
) -> None:
    results = await probe(
        session,
        f"""
        python = os.path.realpath(sys.executable)
        # /bin/sh itself is unreadable to a session; an allowed program is the binary
        # it can copy, and a copy must not run where the original may.
        program = os.path.realpath(shutil.which("ls"))
        copies = {{"sh": (program, "/mnt/data/sh"), "python": (python, "/mnt/data/py"),
                   "tmp sh": (program, "/tmp/sh"), "shm sh": (program, "/dev/shm/sh")}}
        for name, (source, target) in copies.items():
            shutil.copy(source, target)
            os.chmod(target, 0o755)
        attempt("sh", lambda: subprocess.run(["/mnt/data/sh", "-c", {SHELL_MARKER!r}]))
        attempt("python", lambda: subprocess.run(["./py", "-c", "open('pwned', 'w')"]))
        attempt("tmp sh", lambda: subprocess.run(["/tmp/sh", "-c", {SHELL_MARKER!r}]))
        attempt("shm sh", lambda: subprocess.run(["/dev/shm/sh", "-c", {SHELL_MARKER!r}]))
        def memfd():
            fd = os.memfd_create("sh", 0)
            with open(program, "rb") as shell:
                os.write(fd, shell.read())
            return subprocess.run([f"/proc/self/fd/{{fd}}", "-c", {SHELL_MARKER!r}],
                                  pass_fds=(fd,))
        attempt("memfd", memfd)
        """,
    )
    for name, result in results.items():
        assert permission_denied(result), (name, result)
    assert markers_in(session) == set()


async def test_find_exec_from_the_repl_cannot_start_other_programs(session: Session) -> None:
    results = await probe(
        session,
        f"""
        def find_exec(*program):
            run = subprocess.run(["find", ".", "-maxdepth", "0", "-exec", *program, ";"],
                                 capture_output=True, text=True)
            return run.stdout + run.stderr
        attempt("sh", lambda: find_exec("sh", "-c", {SHELL_MARKER!r}))
        attempt("id", lambda: find_exec("/usr/bin/id"))
        attempt("control", lambda: find_exec("touch", "first"))
        """,
    )
    # Control: find -exec itself works with an allowed program.
    assert results["control"]["ok"], results
    assert markers_in(session) == {"first"}
    for name in ("sh", "id"):
        assert results[name]["ok"], results
        assert "Permission denied" in results[name]["value"], results[name]
    assert "uid=" not in results["id"]["value"]


def _loader() -> str:
    loader = elf_interpreter("/bin/sh")
    if loader is None:
        pytest.skip("/bin/sh is not dynamically linked")
    return loader


async def test_the_elf_loader_cannot_launch_programs_off_the_allowlist(
    session: Session,
) -> None:
    loader = _loader()
    results = await probe(
        session,
        f"""
        attempt("loader sh", lambda: subprocess.run(
            [{loader!r}, "/bin/sh", "-c", {SHELL_MARKER!r}]).returncode)
        """,
    )
    assert markers_in(session) == set(), results
    assert not results["loader sh"]["ok"] or results["loader sh"]["value"] != "0", results
