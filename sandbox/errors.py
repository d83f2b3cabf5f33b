"""Every error the sandbox library raises, as one tree.

    SandboxError
    ├── PolicyError            a policy file is unreadable, malformed or impossible
    ├── ConfinementError       a required isolation layer is missing on this host
    ├── ProtocolError          a frame from a worker broke the wire protocol
    │   └── FrameTooLarge      ... by announcing more bytes than the cap allows
    ├── WorkerLost             a worker died or its channel closed mid-conversation
    ├── WorkerBusy             a session already runs something and the wait ran out
    └── ZygoteUnavailable      the zygote cannot hand out workers right now

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
