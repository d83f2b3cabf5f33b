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
from sandbox.run import Run, RunFinished, RunOutcome
from sandbox.session import Session, SessionState
from sandbox.zygote_client import ZygoteClient

__all__ = [
    "CommandDenied",
    "ConfinementError",
    "Policy",
    "PolicyError",
    "ProtocolError",
    "Run",
    "RunFinished",
    "RunOutcome",
    "RunReply",
    "SandboxError",
    "Session",
    "SessionState",
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
