"""CodeSherpa's sandbox: confined Python sessions, usable without the service.

policy = load_policy("policies/default.toml")
zygote = ZygoteClient(policy, state_dir)
zygote.start()
session = await Session.start(zygote)
outcome = await session.run_python("1 + 1")
"""

from sandbox.commands import CommandDenied, parse_and_check
from sandbox.errors import (
    ConfinementError,
    PolicyError,
    ProtocolError,
    SandboxError,
    StateDirectoryInUse,
    WorkerBusy,
    WorkerLost,
    ZygoteUnavailable,
)
from sandbox.handle import WorkerHandle
from sandbox.policy import Policy, load_policy, parse_policy
from sandbox.protocol import RunReply
from sandbox.session import RunOutcome, Session
from sandbox.zygote_client import ZygoteClient

__all__ = [
    "CommandDenied",
    "ConfinementError",
    "Policy",
    "PolicyError",
    "ProtocolError",
    "RunOutcome",
    "RunReply",
    "SandboxError",
    "Session",
    "StateDirectoryInUse",
    "WorkerBusy",
    "WorkerHandle",
    "WorkerLost",
    "ZygoteClient",
    "ZygoteUnavailable",
    "load_policy",
    "parse_and_check",
    "parse_policy",
]
