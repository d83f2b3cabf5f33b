"""Every error the sandbox library raises, as one tree.

    SandboxError
    ├── PolicyError            a policy file is unreadable, malformed or impossible
    ├── ConfinementError       a required isolation layer is missing on this host
    ├── ProtocolError          a frame from a worker broke the wire protocol
    │   └── FrameTooLarge      ... by announcing more bytes than the cap allows
    ├── WorkerLost             a worker died or its channel closed mid-conversation
    ├── WorkerBusy             a session already runs something and the wait ran out
    ├── ZygoteUnavailable      the zygote cannot hand out workers right now
    ├── EgressUnavailable      the egress proxy a network allowlist needs did not start
    ├── StateDirectoryInUse    another process owns the state directory
    └── StateDirectoryUnsafe   someone else could change the state directory

User-code outcomes (exceptions, timeouts, kills, policy denials) are not errors of
the library: they come back as a ``RunReply`` with a status.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error raised by ``sandbox``."""


class PolicyError(SandboxError):
    """The policy cannot be used; the message names the file, key and reason."""


class ConfinementError(SandboxError):
    """A layer the policy requires is not available on this host.

    ``report`` holds the status line of every layer tried so far.
    """

    def __init__(self, message: str, report: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class ProtocolError(SandboxError):
    """A worker sent something that is not a valid frame."""


class FrameTooLarge(ProtocolError):
    """A frame announced a length above the cap."""


class WorkerLost(SandboxError):
    """The worker is gone; ``reason`` says how it ended when that is known."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerBusy(SandboxError):
    """The session is still running a previous request."""


class ZygoteUnavailable(SandboxError):
    """No worker could be obtained from the zygote."""


class EgressUnavailable(SandboxError):
    """The egress proxy did not start: a policy with network.mode = "allowlist" then
    starts no sandbox (its sessions would have no way out, and say so nowhere)."""


class StateDirectoryInUse(SandboxError):
    """Another process owns the state directory; ``pid`` is its pid when it said so."""

    def __init__(self, state_dir: str, pid: int | None) -> None:
        holder = f"the process with pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"the state directory {state_dir} is in use by {holder}: stop that service, "
            "or give this one a directory of its own (CODESHERPA_STATE_DIR)"
        )
        self.state_dir = state_dir
        self.pid = pid


class StateDirectoryUnsafe(SandboxError):
    """The state directory, or its lock file, is not this service's alone."""
