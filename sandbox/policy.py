"""The policy: what a session may do, loaded from a TOML file and validated once.

The model is owned by ``sandbox`` (it is what the zygote and the workers enforce);
``service`` only reads it.  Unknown keys and impossible values are errors that name
the file, the key and the reason, so a broken policy never starts a service.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox.errors import PolicyError

# GPT Actions reject replies above 100,000 characters; leave room for JSON framing.
ACTIONS_REPLY_LIMIT_CHARS = 100_000

LayerName = Literal[
    "process",
    "namespaces",
    "cgroup",
    "identity",
    "rlimits",
    "landlock",
    "seccomp",
    "environment",
]
ALL_LAYERS: tuple[LayerName, ...] = (
    "process",
    "namespaces",
    "cgroup",
    "identity",
    "rlimits",
    "landlock",
    "seccomp",
    "environment",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Section):
    """Per-run and per-session resource limits."""

    wall_timeout_s: float = Field(30.0, gt=0, description="Default wall-clock time of one run.")
    max_timeout_s: float = Field(40.0, gt=0, description="Largest `timeout` a request may ask for.")
    interrupt_grace_s: float = Field(
        2.0, gt=0, description="Time a run gets after SIGINT before the worker is killed."
    )
    cpu_time_s: int = Field(
        120, gt=0, description="CPU seconds a worker may use in its life (RLIMIT_CPU)."
    )
    memory_mb: int = Field(2048, gt=0, description="Memory of a session, all its processes.")
    processes: int = Field(64, gt=0, description="Processes and threads of a session.")
    open_files: int = Field(256, ge=32, description="Open file descriptors per process.")
    file_size_mb: int = Field(256, gt=0, description="Largest single file a session may write.")
    workspace_mb: int = Field(512, gt=0, description="Total size of a session's workspace.")
    output_chars: int = Field(
        20_000, ge=200, description="Characters kept of each of stdout and stderr per run."
    )
    reply_chars: int = Field(
        60_000, ge=1_000, description="Largest reply body, in characters, the service sends."
    )

    @model_validator(mode="after")
    def _coherent(self) -> Limits:
        if self.wall_timeout_s > self.max_timeout_s:
            raise ValueError("wall_timeout_s must not exceed max_timeout_s")
        if self.reply_chars > ACTIONS_REPLY_LIMIT_CHARS:
            raise ValueError(
                f"reply_chars above {ACTIONS_REPLY_LIMIT_CHARS} would break GPT Actions clients"
            )
        if 2 * self.output_chars + 2_000 > self.reply_chars:
            raise ValueError("two streams of output_chars plus the error must fit in reply_chars")
        return self


class Sessions(_Section):
    """How many sessions exist and how long they live."""

    idle_ttl_s: float = Field(1800.0, gt=0, description="A session idle this long is ended.")
    max_lifetime_s: float = Field(14_400.0, gt=0, description="A session this old is ended.")
    max_per_tenant: int = Field(8, gt=0, description="Live sessions one tenant may hold.")
    max_total: int = Field(64, gt=0, description="Live sessions on this service.")
    warm_pool: int = Field(2, ge=0, description="Confined workers kept ready to serve.")
    queue_wait_s: float = Field(
        10.0, ge=0, description="How long a request waits for its session's previous run."
    )


class ProgramRule(_Section):
    """Extra argument rules for one allowed program."""

    deny_args: list[str] = Field(
        default_factory=list, description="Arguments this program must not receive."
    )


class Commands(_Section):
    """Which programs `/command` and the REPL's subprocesses may run."""

    allow: list[str] = Field(
        default_factory=list, description="Program names (looked up on PATH) that may run."
    )
    shell_operators: bool = Field(
        True, description="Allow pipes, &&, ||, ; and redirections between allowed programs."
    )
    rules: dict[str, ProgramRule] = Field(
        default_factory=dict, description="Per-program argument rules, keyed by program name."
    )
    path: list[str] = Field(
        default_factory=lambda: ["/usr/local/bin", "/usr/bin", "/bin"],
        description="Directories searched for allowed programs, in order.",
    )

    @model_validator(mode="after")
    def _rules_name_allowed_programs(self) -> Commands:
        unknown = sorted(set(self.rules) - set(self.allow))
        if unknown:
            raise ValueError(f"rules given for programs that are not allowed: {unknown}")
        for name in self.allow:
            if "/" in name or not name:
                raise ValueError(f"allow entries are program names, not paths: {name!r}")
        return self


class Isolation(_Section):
    """Which confinement layers must be active, and whether the network is reachable."""

    required: list[LayerName] = Field(
        default_factory=list, description="Layers without which the service refuses to start."
    )
    preferred: list[LayerName] = Field(
        default_factory=lambda: list(ALL_LAYERS),
        description="Layers used when the host has them; a missing one is logged.",
    )
    network: bool = Field(False, description="Whether sessions may open network sockets.")

    @model_validator(mode="after")
    def _disjoint(self) -> Isolation:
        both = sorted(set(self.required) & set(self.preferred))
        if both:
            raise ValueError(f"layers listed as both required and preferred: {both}")
        return self

    def wanted(self) -> list[LayerName]:
        return [layer for layer in ALL_LAYERS if layer in self.required or layer in self.preferred]


class PythonSettings(_Section):
    """The interpreter the sessions get."""

    preload: list[str] = Field(
        default_factory=lambda: ["numpy", "pandas", "matplotlib"],
        description="Modules imported in the zygote so every session starts with them warm.",
    )


class Policy(_Section):
    """A whole policy file."""

    limits: Limits = Field(default_factory=Limits)
    sessions: Sessions = Field(default_factory=Sessions)
    commands: Commands = Field(default_factory=Commands)
    isolation: Isolation = Field(default_factory=Isolation)
    python: PythonSettings = Field(default_factory=PythonSettings)

    @model_validator(mode="after")
    def _timeouts_fit_sessions(self) -> Policy:
        if self.limits.max_timeout_s > self.sessions.max_lifetime_s:
            raise ValueError("limits.max_timeout_s must not exceed sessions.max_lifetime_s")
        return self

    def digest(self) -> str:
        """A short, stable hash that names this exact policy in replies and logs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"{source}: {key}: {reason}")
    return "\n".join(lines)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_describe(exc, source)) from None


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror}") from None
    return parse_policy(text, str(path))
