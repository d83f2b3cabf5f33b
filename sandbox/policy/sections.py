"""The sections of a policy file: one pydantic model each, and the whole policy.

Each section's validator runs its cross-key checks (``checks.py``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from sandbox.policy.checks import (
    COMMANDS_CHECKS,
    ISOLATION_CHECKS,
    LIMITS_CHECKS,
    PACKAGES_CHECKS,
    POLICY_CHECKS,
    PYTHON_CHECKS,
    SESSIONS_CHECKS,
    PolicyProblems,
    enforce,
)
from sandbox.policy.network import NETWORK_POLICY_CHECKS, Network
from sandbox.policy.tables import ALL_LAYERS, KERNEL_NR_OPEN, LayerName, Tighter


def _about(*, unit: str | None = None, tighter: Tighter | None = None) -> dict[str, JsonValue]:
    """Field metadata for reviewers: the unit of a key without a unit suffix, and which
    way of changing it restricts sessions more (absent: neither, just different)."""
    about: dict[str, JsonValue] = {}
    if unit is not None:
        about["unit"] = unit
    if tighter is not None:
        about["tighter"] = tighter
    return about


MIGRATE_ISOLATION_NETWORK = (
    "this key was replaced by the [network] section: delete it and write "
    '[network] mode = "off" (it was false), or mode = "allowlist" with the hosts sessions '
    "may reach in network.allow (it was true: there is no unfiltered network any more)"
)

# --- The sections of a policy file -------------------------------------------------


class _Section(BaseModel):
    # strict: TOML has real booleans and numbers, so "yes" or "30" in quotes is a typo
    # to report, not a value to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Limits(_Section):
    """Per-run and per-session resource limits."""

    wall_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Wall-clock time of one run when the request names no timeout.",
        json_schema_extra=_about(tighter="lower"),
    )
    max_timeout_s: float = Field(
        40.0,
        gt=0,
        description="Largest `timeout` a request may ask for; larger ones are clamped.",
        json_schema_extra=_about(tighter="lower"),
    )
    interrupt_grace_s: float = Field(
        2.0,
        gt=0,
        description="Time a run gets after SIGINT before its worker is killed and replaced.",
        json_schema_extra=_about(tighter="lower"),
    )
    cpu_time_s: int = Field(
        120,
        gt=0,
        description="CPU time one worker may use in its whole life (RLIMIT_CPU).",
        json_schema_extra=_about(tighter="lower"),
    )
    memory_mb: int = Field(
        2048,
        gt=0,
        description=(
            "Memory of a session, all its processes together (cgroup), and the "
            "address space of each (RLIMIT_AS)."
        ),
        json_schema_extra=_about(tighter="lower"),
    )
    processes: int = Field(
        64,
        gt=0,
        description="Processes and threads a session may have at once (cgroup pids.max).",
        json_schema_extra=_about(unit="processes", tighter="lower"),
    )
    open_files: int = Field(
        256,
        ge=32,
        le=KERNEL_NR_OPEN,
        description="Open file descriptors per process (RLIMIT_NOFILE).",
        json_schema_extra=_about(unit="file descriptors", tighter="lower"),
    )
    file_size_mb: int = Field(
        256,
        gt=0,
        description="Largest single file a session may write (RLIMIT_FSIZE).",
        json_schema_extra=_about(tighter="lower"),
    )
    workspace_mb: int = Field(
        512,
        gt=0,
        description="Total size of a session's workspace (its tmpfs quota).",
        json_schema_extra=_about(tighter="lower"),
    )
    output_chars: int = Field(
        20_000,
        ge=200,
        description="Characters kept of each of stdout and stderr per run (head and tail).",
        json_schema_extra=_about(tighter="lower"),
    )
    reply_chars: int = Field(
        60_000,
        ge=1_000,
        description="Largest reply body the service sends.",
        json_schema_extra=_about(tighter="lower"),
    )

    @model_validator(mode="after")
    def _coherent(self) -> Limits:
        enforce(self, LIMITS_CHECKS)
        return self


class Sessions(_Section):
    """How many sessions exist and how long they live."""

    idle_ttl_s: float = Field(
        1800.0,
        gt=0,
        description="A session idle this long is ended.",
        json_schema_extra=_about(tighter="lower"),
    )
    max_lifetime_s: float = Field(
        14_400.0,
        gt=0,
        description="A session this old is ended, busy or not.",
        json_schema_extra=_about(tighter="lower"),
    )
    max_per_tenant: int = Field(
        8,
        gt=0,
        description="Live sessions one tenant may hold.",
        json_schema_extra=_about(unit="sessions", tighter="lower"),
    )
    max_total: int = Field(
        64,
        gt=0,
        description="Live sessions on this service, all tenants together.",
        json_schema_extra=_about(unit="sessions", tighter="lower"),
    )
    warm_pool: int = Field(
        2,
        ge=0,
        description="Confined workers kept ready so a new session starts at once.",
        json_schema_extra=_about(unit="workers"),
    )
    queue_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long a request waits for its session's previous run to finish.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Sessions:
        enforce(self, SESSIONS_CHECKS)
        return self


class ProgramRule(_Section):
    """Extra argument rules for one allowed program."""

    deny_args: list[str] = Field(
        default_factory=list,
        description="Arguments this program must not receive (exactly, or as `ARG=value`).",
        json_schema_extra=_about(tighter="more"),
    )


class Commands(_Section):
    """Which programs `/command` and the REPL's subprocesses may run."""

    allow: list[str] = Field(
        default_factory=list,
        description="Program names (looked up in `path`) that may run; nothing else may.",
        json_schema_extra=_about(tighter="fewer"),
    )
    shell_operators: bool = Field(
        True,
        description="Allow pipes, &&, ||, ; and redirections between allowed programs.",
        json_schema_extra=_about(tighter="false"),
    )
    launchers_allowed: bool = Field(
        False,
        description=(
            "Allow programs that can run other programs (sh, env, xargs, python, "
            "find -exec, ...); when false such a policy is refused at load time."
        ),
        json_schema_extra=_about(tighter="false"),
    )
    rules: dict[str, ProgramRule] = Field(
        default_factory=dict,
        description="Per-program argument rules, keyed by program name.",
    )
    path: list[str] = Field(
        default_factory=lambda: ["/usr/local/bin", "/usr/bin", "/bin"],
        description="Absolute directories searched for allowed programs, in order.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Commands:
        enforce(self, COMMANDS_CHECKS)
        return self


class Isolation(_Section):
    """Which confinement layers must be active."""

    required: list[LayerName] = Field(
        default_factory=list,
        description="Layers without which the service refuses to start.",
    )
    preferred: list[LayerName] = Field(
        default_factory=lambda: list(ALL_LAYERS),
        description="Layers used when the host has them; a missing one is logged.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Isolation:
        enforce(self, ISOLATION_CHECKS)
        return self

    def wanted(self) -> list[LayerName]:
        return [layer for layer in ALL_LAYERS if layer in self.required or layer in self.preferred]


class PythonSettings(_Section):
    """The interpreter the sessions get."""

    preload: list[str] = Field(
        default_factory=lambda: ["numpy", "pandas", "matplotlib"],
        description="Modules imported in the zygote so every session starts with them warm.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> PythonSettings:
        enforce(self, PYTHON_CHECKS)
        return self


class Packages(_Section):
    """Whether sessions may install packages (`%pip`, `!pip`, `/command pip install`)."""

    install: Literal["off", "index"] = Field(
        "off",
        description=(
            '"off": a `%pip`, `!pip` or `/command pip` line installs nothing, and the reply '
            'names this key. "index": pip installs from `index_url` into the session\'s own '
            "site directory (`.packages` in its workspace), counted in its quota."
        ),
    )
    index_url: str = Field(
        "",
        description=(
            "The package index pip installs from (a PEP 503 simple index: http, https or "
            "file URL). Empty: the index the host's pip is configured with, read when the "
            "service starts; credentials in the host's URL (user:password@, a query "
            "string) are dropped, with a warning in the log, and never reach a session. "
            "A plain-http index given here is trusted for pip as given."
        ),
    )
    only_binary: bool = Field(
        True,
        description=(
            "Install binary wheels only: no package's build code runs in a session. "
            "false lets pip build source distributions inside the sandbox."
        ),
    )

    @model_validator(mode="after")
    def _coherent(self) -> Packages:
        enforce(self, PACKAGES_CHECKS)
        return self


class Policy(_Section):
    """A whole policy file."""

    limits: Limits = Field(default_factory=Limits)
    sessions: Sessions = Field(default_factory=Sessions)
    commands: Commands = Field(default_factory=Commands)
    isolation: Isolation = Field(default_factory=Isolation)
    python: PythonSettings = Field(default_factory=PythonSettings)
    packages: Packages = Field(default_factory=Packages)
    network: Network = Field(default_factory=Network)

    @model_validator(mode="before")
    @classmethod
    def _no_isolation_network(cls, data: object) -> object:
        # The old key meant "the host's whole network"; nothing maps onto it safely, so
        # a file that still has it is refused with the way to say what it meant.
        isolation = data.get("isolation") if isinstance(data, dict) else None
        if isinstance(isolation, dict) and "network" in isolation:
            raise PolicyProblems([("isolation.network", MIGRATE_ISOLATION_NETWORK)])
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        enforce(self, POLICY_CHECKS + NETWORK_POLICY_CHECKS)
        return self

    def digest(self) -> str:
        """A short, stable hash that names this exact policy in replies and logs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
