"""Run a checked command plan as the worker's own children, without a shell.

Every program of a run shares one process group so an interrupt reaches all of
them; whatever is left when the run ends (``nohup``, ``setsid``, double forks) is
killed by the worker's sweep of its descendants, see ``sandbox.reaper``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
from dataclasses import dataclass

from sandbox.commands import Pipeline, SimpleCommand, resolve_program
from sandbox.policy import Commands


@dataclass
class CommandResult:
    exit_code: int | None
    interrupted: bool = False


def _expand(command: SimpleCommand) -> list[str]:
    argv: list[str] = []
    for word in command.argv:
        matches = sorted(glob.glob(word.text)) if word.glob else []
        argv.extend(matches or [word.text])
    return argv


def _open_redirect(path: str, append: bool, write: bool) -> int:
    if write:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    else:
        flags = os.O_RDONLY
    return os.open(path, flags | os.O_CLOEXEC, 0o644)


class CommandRunner:
    def __init__(self, policy: Commands, env: dict[str, str]) -> None:
        self._policy = policy
        self._env = env

    def run(self, plan: list[Pipeline], stdout_fd: int, stderr_fd: int) -> CommandResult:
        status: int | None = 0
        for pipeline in plan:
            if pipeline.joiner == "&&" and status != 0:
                continue
            if pipeline.joiner == "||" and status == 0:
                continue
            try:
                status = self._run_pipeline(pipeline, stdout_fd, stderr_fd)
            except KeyboardInterrupt:
                return CommandResult(exit_code=None, interrupted=True)
        return CommandResult(exit_code=status)

    def _run_pipeline(self, pipeline: Pipeline, stdout_fd: int, stderr_fd: int) -> int:
        processes: list[subprocess.Popen[bytes]] = []
        opened: list[int] = []
        previous_read: int | None = None
        group = 0
        try:
            for position, command in enumerate(pipeline.commands):
                last = position == len(pipeline.commands) - 1
                stdin = previous_read if previous_read is not None else subprocess.DEVNULL
                if command.stdin is not None:
                    stdin = _open_redirect(command.stdin, False, write=False)
                    opened.append(stdin)
                next_read = None
                if command.stdout is not None:
                    out = _open_redirect(command.stdout, command.stdout_append, write=True)
                    opened.append(out)
                elif last:
                    out = stdout_fd
                else:
                    next_read, out = os.pipe()
                    opened.append(out)
                if command.stderr_to_stdout:
                    err = out
                elif command.stderr is not None:
                    err = _open_redirect(command.stderr, command.stderr_append, write=True)
                    opened.append(err)
                else:
                    err = stderr_fd
                argv = _expand(command)
                executable = resolve_program(argv[0], self._policy) or argv[0]
                try:
                    process = subprocess.Popen(
                        argv,
                        executable=executable,
                        stdin=stdin,
                        stdout=out,
                        stderr=err,
                        env=self._env,
                        process_group=group,
                        close_fds=True,
                    )
                except OSError as exc:
                    os.write(err, f"{argv[0]}: {exc.strerror}\n".encode())
                    return 126 if isinstance(exc, PermissionError) else 127
                finally:
                    if previous_read is not None:
                        os.close(previous_read)
                    previous_read = next_read
                    for fd in opened:
                        os.close(fd)
                    opened.clear()
                group = group or process.pid
                processes.append(process)
            codes = [process.wait() for process in processes]
            return _shell_style_code(codes[-1])
        except KeyboardInterrupt:
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, 9)
            for process in processes:
                process.wait()
            raise
        except OSError as exc:  # a redirect target that cannot be opened
            os.write(stderr_fd, f"{exc.filename}: {exc.strerror}\n".encode())
            return 1
        finally:
            if previous_read is not None:
                os.close(previous_read)
            for fd in opened:
                os.close(fd)


def _shell_style_code(returncode: int) -> int:
    # Like a shell: a program killed by signal N reports 128 + N.
    return 128 - returncode if returncode < 0 else returncode
