"""The session worker: one confined process that owns one namespace and workspace.

It reads framed requests from its channel, runs them, and writes one reply per
request; a streamed run's output and displays go first, as they are produced.  It
never trusts that user code left the process tidy: standard streams are re-pointed
for every run, the SIGINT handler is restored, and every process that a command or an
interrupted run left behind is killed before the reply goes out (the service then
sweeps the session's cgroup too).  A Python run that finishes may keep
background processes, as in Jupyter.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; signal.py wraps it
import _thread
import collections
import contextlib
import errno
import functools
import io
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from sandbox import protocol, reaper, session_packages, workspace
from sandbox.command_runner import CommandResult, CommandRunner
from sandbox.commands import CommandDenied, parse_and_check
from sandbox.display import DisplayLimits
from sandbox.error_hints import failure_notes
from sandbox.errors import FrameTooLarge
from sandbox.executor import CellOutcome, PythonSession
from sandbox.output import BoundedBuffer, OutputCapture, truncate_output
from sandbox.output_stream import OutputStream
from sandbox.policy import Policy


class _RunState:
    running = False
    interrupted = False  # a SIGINT arrived during this run, whatever user code made of it
    # The worker is writing a frame for user code (a display): an interrupt then waits
    # for the frame to be whole, or the channel would carry half of one.
    deferred = False
    pending = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    # Only user code is interrupted; the worker's own bookkeeping never is.
    if _RunState.running:
        _RunState.interrupted = True
        if _RunState.deferred:
            _RunState.pending = True
            return
        raise KeyboardInterrupt


# The worker exits with these codes when user code has taken every descriptor, or
# every process slot, it may use: it can no longer capture a run, and a fresh worker
# is the only way back.
EXIT_OUT_OF_DESCRIPTORS = 75
EXIT_OUT_OF_PROCESSES = 76
# The reply lists at most this many changed files (the frame must stay small).
MAX_CHANGED_FILES = 100
# An exception's type name is the user's too (a class can be named anything).
MAX_EXC_TYPE_CHARS = 200


def _new_capture(keep: int) -> OutputCapture:
    try:
        return OutputCapture(keep)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            os._exit(EXIT_OUT_OF_DESCRIPTORS)
        raise
    except RuntimeError:  # "can't start new thread": user threads hold every pid
        os._exit(EXIT_OUT_OF_PROCESSES)


def _text_stream(fd: int) -> io.TextIOWrapper:
    # The stream lives as long as the worker; closefd=False leaves the fd to dup2.
    raw = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
    return io.TextIOWrapper(
        raw, encoding="utf-8", errors="backslashreplace", line_buffering=True, write_through=True
    )


def _fresh_std_streams() -> None:
    sys.stdout = _text_stream(1)
    sys.stderr = _text_stream(2)
    sys.stdin = io.TextIOWrapper(open(os.devnull, "rb"), encoding="utf-8")  # noqa: SIM115


class Worker:
    def __init__(self, channel: socket.socket, policy: Policy, layers: dict[str, str]) -> None:
        self._channel = channel
        self._policy = policy
        self._layers = layers
        self._session = PythonSession(
            DisplayLimits.for_reply(policy.limits.output_chars, policy.limits.reply_chars)
        )
        self._commands = CommandRunner(policy.commands, dict(os.environ))
        # A cell's `!cmd` line is checked and run as a /command line is.
        self._session.magics.run_command = lambda line, stdout_fd: self._commands.run(
            parse_and_check(line, policy.commands), stdout_fd, 2
        )
        self._packages = session_packages.for_worker(policy.packages, os.getcwd())
        self._session.magics.installer = self._packages
        self._keep = policy.limits.output_chars
        self._devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self._capture = _new_capture(self._keep)
        self._decoder = protocol.FrameDecoder()
        self._frames: collections.deque[bytes] = collections.deque()
        # A streamed run's output goes out from the capture's thread too: frames must
        # not interleave.
        self._send_lock = _thread.allocate_lock()
        # Signals reach only this thread: only here can one cut a frame in half.
        self._main_thread = _thread.get_ident()

    @contextmanager
    def _captured_output(self, stream: OutputStream | None) -> Iterator[list[BoundedBuffer]]:
        """Point fds 1 and 2 at the capture for the duration of one run.

        Yields the run's stdout and stderr buffers, complete once the block has left;
        a streamed run's output has then all been sent.
        """
        if not self._capture.intact:
            # User code closed or replaced the capture's pipes: start over.
            self._capture.close()
            self._capture = _new_capture(self._keep)
        out_fd, err_fd = self._capture.begin(stream)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        buffers: list[BoundedBuffer] = []
        try:
            yield buffers
        finally:
            for std_stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    std_stream.flush()
            # A descriptor opened at start: a cell that took every free one cannot stop
            # the worker from putting its standard streams back.
            os.dup2(self._devnull, 1)
            os.dup2(self._devnull, 2)
            buffers.extend(self._capture.end())
            if stream is not None:
                stream.finish(buffers)

    def _stream(self, request: protocol.RunPython | protocol.RunCommand) -> OutputStream | None:
        if not request.stream:
            return None
        display_room = self._policy.limits.reply_chars
        return OutputStream(request.run_id, self._keep, self._send, display_room)

    def _send_display(self, stream: OutputStream, output: protocol.RichOutput) -> None:
        """Send one of a streamed run's outputs as it is made, after the text before it."""
        in_main_thread = _thread.get_ident() == self._main_thread
        if in_main_thread:
            _RunState.deferred = True
        try:
            self._capture.flush_stream()
            stream.send_display(output)
        except (ValueError, FrameTooLarge):
            pass  # not sendable: the reply still carries it
        finally:
            if in_main_thread:
                _RunState.deferred = False
        if in_main_thread and _RunState.pending:
            _RunState.pending = False
            raise KeyboardInterrupt

    # -- channel ----------------------------------------------------------------------

    def _send(self, message: protocol.Hello | protocol.RunReply | protocol.StreamedOutput) -> None:
        frame = encode_reply(message) if isinstance(message, protocol.RunReply) else None
        with self._send_lock:
            self._channel.sendall(frame or protocol.encode(message))

    def _receive(self) -> protocol.RunPython | protocol.RunCommand | None:
        # One recv usually brings a whole request (the service sends one and waits).
        while not self._frames:
            try:
                data = self._channel.recv(protocol.READ_SIZE)
            except InterruptedError:
                continue
            if not data:
                return None
            self._frames.extend(self._decoder.feed(data))
        return protocol.decode_request(self._frames.popleft())

    # -- loop -------------------------------------------------------------------------

    def serve(self) -> None:
        self._send(protocol.Hello(pid=os.getpid(), workspace=os.getcwd(), layers=self._layers))
        while True:
            request = self._receive()
            if request is None:
                return
            # User code may have replaced the handler.  The C module's own call: the
            # signal module's wrapper converts the old handler to an enum, and a function
            # is none, so each call raised and caught a ValueError.
            if _signal.getsignal(signal.SIGINT) is not _on_sigint:
                _signal.signal(signal.SIGINT, _on_sigint)
            _RunState.interrupted = False
            _RunState.pending = False
            # What the service killed between requests (a command's strays) is collected.
            reaper.reap_zombies()
            if isinstance(request, protocol.RunPython):
                reply = self._run_python(request)
            else:
                reply = self._run_command(request)
            self._send(reply)

    def _run_python(self, request: protocol.RunPython) -> protocol.RunReply:
        before = workspace.snapshot()
        outcome: CellOutcome | None = None
        stream = self._stream(request)
        if stream is not None:
            self._session.output_listener = functools.partial(self._send_display, stream)
        with self._captured_output(stream) as streams:
            try:
                _RunState.running = True
                outcome = self._session.run(request.code)
                _RunState.running = False
            except KeyboardInterrupt:
                _RunState.running = False
            if outcome is None:
                outcome = CellOutcome(error="KeyboardInterrupt", exc_type="KeyboardInterrupt")
            _RunState.running = False
            if _RunState.interrupted:
                # An interrupted run (a timeout, say) leaves nothing it started running,
                # even if it caught the interrupt; a run that finishes may keep its
                # background processes, as in Jupyter.
                reaper.kill_descendants()
            self._session.display.show_open_figures()
            # Last: the figures just shown are the run's outputs too.  One emitted later
            # (a thread of the user's) is in no stream: it ended with the block.
            self._session.output_listener = None
        reaper.reap_zombies()
        stdout, stderr = streams
        notes = failure_notes(outcome.exception)  # a policy refusal, facts for suggestions
        return self._reply(
            request.run_id,
            stdout,
            stderr,
            status="denied" if notes.denied_rule else "error" if outcome.error else "ok",
            value=outcome.value,
            error=notes.error or outcome.error,
            exc_type=outcome.exc_type,
            denied_rule=notes.denied_rule,
            hint=notes.hint,
            files=workspace.changed_files(before, workspace.snapshot()),
            outputs=self._session.outputs,
            value_at=self._session.value_at,
            outputs_cut=self._session.display.cut,
        )

    def _plan(self, line: str) -> Callable[[], CommandResult]:
        """What a /command line runs (a pip line installs); raises ``CommandDenied``."""
        if session_packages.installs_packages(line):
            return session_packages.plan(line, self._packages)
        plan = parse_and_check(line, self._policy.commands)
        return lambda: self._commands.run(plan, 1, 2)

    def _run_command(self, request: protocol.RunCommand) -> protocol.RunReply:
        try:
            run = self._plan(request.command)
        except CommandDenied as denial:
            return protocol.RunReply(
                run_id=request.run_id,
                status="denied",
                error=f"denied by rule '{denial.rule}': {denial.message}",
                denied_rule=denial.rule,
                execution_count=self._session.execution_count,
            )
        before = workspace.snapshot()
        with self._captured_output(self._stream(request)) as streams:
            try:
                _RunState.running = True
                result = run()
                _RunState.running = False
            except KeyboardInterrupt:
                _RunState.running = False
                result = None
            _RunState.running = False
            # Nothing a command started may outlive it: background jobs, nohup, setsid.
            reaper.kill_descendants()
        interrupted = result is None or result.interrupted
        exit_code = None if result is None else result.exit_code
        stdout, stderr = streams
        if interrupted:
            status, error = "error", "KeyboardInterrupt: the command was interrupted"
        elif exit_code:
            status, error = "error", f"exit code {exit_code}"
        else:
            status, error = "ok", None
        return self._reply(
            request.run_id,
            stdout,
            stderr,
            status=status,
            error=error,
            exc_type="KeyboardInterrupt" if interrupted else None,
            exit_code=exit_code,
            files=workspace.changed_files(before, workspace.snapshot()),
        )

    def _reply(
        self,
        run_id: int,
        stdout: BoundedBuffer,
        stderr: BoundedBuffer,
        outputs_cut: bool = False,
        **fields: object,
    ) -> protocol.RunReply:
        return build_reply(
            run_id,
            self._keep,
            self._session.execution_count,
            stdout,
            stderr,
            outputs_cut,
            **fields,
        )


def encode_reply(reply: protocol.RunReply) -> bytes:
    """The reply's frame; one that cannot be encoded is sent as an error that can be.

    ``build_reply`` keeps every text encodable and small; this is the last guard, since
    nothing a run makes may cost the session its worker and namespace.
    """
    try:
        return protocol.encode(reply)
    except (ValueError, FrameTooLarge) as exc:
        return protocol.encode(
            protocol.RunReply(
                run_id=reply.run_id,
                status="error",
                error=f"the run's reply could not be sent: {type(exc).__name__}",
                execution_count=reply.execution_count,
            )
        )


def build_reply(
    run_id: int,
    limit: int,
    execution_count: int,
    stdout: BoundedBuffer,
    stderr: BoundedBuffer,
    outputs_cut: bool = False,
    **fields: object,
) -> protocol.RunReply:
    """A run's reply, its output and texts cut to ``limit`` characters each.

    Its rich outputs were bounded as they were made; ``outputs_cut`` says whether any was.
    """
    out_text, out_cut = stdout.text(limit)
    err_text, err_cut = stderr.text(limit)
    cut_any = out_cut or err_cut or outputs_cut
    for name in ("value", "error"):
        text = fields.get(name)
        if isinstance(text, str):
            # Cut first: the text may be huge, and its escapes only lengthen it.
            cut_text, cut = truncate_output(text, limit)
            clean = protocol.escape_surrogates(cut_text)
            if len(clean) > limit:
                clean, cut = truncate_output(clean, limit)[0], True
            fields[name] = clean
            cut_any = cut_any or cut
    exc_type = fields.get("exc_type")
    if isinstance(exc_type, str):
        fields["exc_type"] = protocol.escape_surrogates(exc_type[:MAX_EXC_TYPE_CHARS])
    files = fields.get("files")
    if isinstance(files, list) and len(files) > MAX_CHANGED_FILES:
        fields["files"] = files[:MAX_CHANGED_FILES]
        cut_any = True
    return protocol.RunReply.model_validate(
        {
            "run_id": run_id,
            "stdout": out_text,
            "stderr": err_text,
            "truncated": cut_any,
            "execution_count": execution_count,
            **fields,
        }
    )


def run_worker(channel_fd: int, policy: Policy, layers: dict[str, str]) -> None:
    """Serve the channel until it closes.  Called in the forked, confined child."""
    channel = socket.socket(fileno=channel_fd)
    _fresh_std_streams()
    signal.signal(signal.SIGINT, _on_sigint)
    # The service may let go of this worker at any time: then nothing is left to answer.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        Worker(channel, policy, layers).serve()
