"""The policy: what a session may do, loaded from a TOML file and validated once.

The model is owned by ``sandbox`` (it is what the zygote and the workers enforce);
``service`` only reads it.  Unknown keys and impossible values are errors that name
the file, the key and the reason, so a broken policy never starts a service.

Reading order: the tables that tune validation (units, module footprints, launchers),
the sections of a policy file, the cross-key checks each section runs, and the
loader that turns pydantic's errors into ``file: key: reason`` lines.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    model_validator,
)

from sandbox.errors import PolicyError
from sandbox.launchers import SHELL, Reach, launcher_exposures, launcher_for

# GPT Actions reject replies above 100,000 characters.
ACTIONS_REPLY_LIMIT_CHARS = 100_000

# The largest RLIMIT_NOFILE Linux accepts by default (fs.nr_open).
KERNEL_NR_OPEN = 1_048_576

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

# A key's unit is in its name; keys without one of these suffixes say theirs in
# their field metadata (see ``_about``).
UNIT_SUFFIXES: dict[str, str] = {"_s": "seconds", "_mb": "MiB", "_chars": "characters"}

# How a reviewer reads a change of a key: which way restricts sessions more.
Tighter = Literal["lower", "false", "fewer", "more"]


# --- What the preloaded modules cost ---------------------------------------------


@dataclass(frozen=True)
class ModuleFootprint:
    """Memory a preloaded module needs in a session, and what importing it pulls in."""

    mb: int
    imports: tuple[str, ...] = ()


# limits.memory_mb is also every process's address-space limit (RLIMIT_AS), and a
# worker inherits the zygote's mappings, so what counts is virtual size.  Measured
# VmSize after import (Python 3.11, one BLAS thread as workers run): interpreter and
# worker 43 MiB; numpy +82; pandas +47 and matplotlib.pyplot +40 on top of numpy;
# PIL +0 (it loads lazily).  The table adds about half again so a session can use
# the modules, not only import them.  Modules not listed are not counted.
INTERPRETER_FOOTPRINT_MB = 50

PRELOAD_FOOTPRINT: dict[str, ModuleFootprint] = {
    "numpy": ModuleFootprint(120),
    "pandas": ModuleFootprint(80, imports=("numpy",)),
    "matplotlib": ModuleFootprint(70, imports=("numpy",)),
    "PIL": ModuleFootprint(15),
}


def preload_closure(modules: Iterable[str]) -> list[str]:
    """The modules a preload list imports, its own and what they pull in, in order."""
    closure: list[str] = []
    pending = list(modules)
    while pending:
        name = pending.pop(0)
        top = name.split(".")[0]
        if top in closure:
            continue
        closure.append(top)
        footprint = PRELOAD_FOOTPRINT.get(top)
        if footprint is not None:
            pending.extend(footprint.imports)
    return closure


def preload_needs_mb(modules: Iterable[str]) -> int:
    """Memory a session needs before its own work: interpreter plus preloaded modules."""
    return INTERPRETER_FOOTPRINT_MB + sum(
        PRELOAD_FOOTPRINT[name].mb for name in preload_closure(modules) if name in PRELOAD_FOOTPRINT
    )


# --- Checks across keys ------------------------------------------------------------

SectionT = TypeVar("SectionT", bound=BaseModel)


@dataclass(frozen=True)
class Check(Generic[SectionT]):
    """A rule between keys of one section (or of the whole policy).

    ``rule`` is the sentence docs/POLICY.md lists and every error repeats;
    ``breaches`` says, for each way a model breaks it, what was found.
    """

    key: str
    rule: str
    breaches: Callable[[SectionT], Iterable[str]]


class PolicyProblems(ValueError):
    """Breaches found by a section's checks, each as (key within the section, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))
        self.problems = problems


def _enforce(model: SectionT, checks: Iterable[Check[SectionT]]) -> None:
    problems = [
        (check.key, f"{found}; {check.rule}") for check in checks for found in check.breaches(model)
    ]
    if problems:
        raise PolicyProblems(problems)


def _about(*, unit: str | None = None, tighter: Tighter | None = None) -> dict[str, JsonValue]:
    """Field metadata for reviewers: the unit of a key without a unit suffix, and which
    way of changing it restricts sessions more (absent: neither, just different)."""
    about: dict[str, JsonValue] = {}
    if unit is not None:
        about["unit"] = unit
    if tighter is not None:
        about["tighter"] = tighter
    return about


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
        _enforce(self, LIMITS_CHECKS)
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
        _enforce(self, SESSIONS_CHECKS)
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
        _enforce(self, COMMANDS_CHECKS)
        return self


class Isolation(_Section):
    """Which confinement layers must be active, and whether the network is reachable."""

    required: list[LayerName] = Field(
        default_factory=list,
        description="Layers without which the service refuses to start.",
    )
    preferred: list[LayerName] = Field(
        default_factory=lambda: list(ALL_LAYERS),
        description="Layers used when the host has them; a missing one is logged.",
    )
    network: bool = Field(
        False,
        description="Whether sessions may open network sockets.",
        json_schema_extra=_about(tighter="false"),
    )

    @model_validator(mode="after")
    def _coherent(self) -> Isolation:
        _enforce(self, ISOLATION_CHECKS)
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
        _enforce(self, PYTHON_CHECKS)
        return self


class Policy(_Section):
    """A whole policy file."""

    limits: Limits = Field(default_factory=Limits)
    sessions: Sessions = Field(default_factory=Sessions)
    commands: Commands = Field(default_factory=Commands)
    isolation: Isolation = Field(default_factory=Isolation)
    python: PythonSettings = Field(default_factory=PythonSettings)

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        _enforce(self, POLICY_CHECKS)
        return self

    def digest(self) -> str:
        """A short, stable hash that names this exact policy in replies and logs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- The checks each section runs --------------------------------------------------


def format_number(value: float) -> str:
    """30.0 as 30, 0.5 as 0.5, 100000 as 100000: how a TOML file would say it."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def _above(value: float, limit: float, unit: str, limit_name: str) -> Iterator[str]:
    if value > limit:
        amount = f"{format_number(value)} {unit}"
        yield f"{amount} is above {limit_name} ({format_number(limit)} {unit})"


def _output_beyond_reply(limits: Limits) -> Iterator[str]:
    needed = 2 * limits.output_chars + 2_000
    if needed > limits.reply_chars:
        yield (
            f"2 x {limits.output_chars} + 2000 = {needed} characters is above "
            f"reply_chars ({limits.reply_chars} characters)"
        )


LIMITS_CHECKS: tuple[Check[Limits], ...] = (
    Check(
        "wall_timeout_s",
        "wall_timeout_s must not exceed max_timeout_s: the default run would otherwise "
        "ask for more time than any run may have.",
        lambda limits: _above(limits.wall_timeout_s, limits.max_timeout_s, "s", "max_timeout_s"),
    ),
    Check(
        "reply_chars",
        f"reply_chars must not exceed {ACTIONS_REPLY_LIMIT_CHARS:,}: GPT Actions "
        "(ChatGPT) reject larger replies, so every big reply would fail.",
        lambda limits: _above(
            limits.reply_chars, ACTIONS_REPLY_LIMIT_CHARS, "characters", "the GPT Actions limit"
        ),
    ),
    Check(
        "output_chars",
        "two streams of output_chars plus 2,000 characters for the error and framing "
        "must fit in reply_chars.",
        _output_beyond_reply,
    ),
)

SESSIONS_CHECKS: tuple[Check[Sessions], ...] = (
    Check(
        "idle_ttl_s",
        "idle_ttl_s must not exceed max_lifetime_s: such an idle limit could never end a session.",
        lambda sessions: _above(
            sessions.idle_ttl_s, sessions.max_lifetime_s, "s", "max_lifetime_s"
        ),
    ),
    Check(
        "max_per_tenant",
        "max_per_tenant must not exceed max_total: one tenant cannot hold more sessions "
        "than the service has.",
        lambda sessions: _above(
            sessions.max_per_tenant, sessions.max_total, "sessions", "max_total"
        ),
    ),
    Check(
        "warm_pool",
        "warm_pool must not exceed max_total: workers beyond that could never serve a session.",
        lambda sessions: _above(sessions.warm_pool, sessions.max_total, "workers", "max_total"),
    ),
)


def _path_like_programs(commands: Commands) -> Iterator[str]:
    for name in commands.allow:
        if not name or "/" in name or name != name.strip() or " " in name:
            yield f"{name!r} is not a program name"


def _rules_for_programs_not_allowed(commands: Commands) -> Iterator[str]:
    for program in sorted(set(commands.rules) - set(commands.allow)):
        yield f"{program!r} has rules but is not allowed"


def _relative_directories(commands: Commands) -> Iterator[str]:
    for directory in commands.path:
        if not directory.startswith("/"):
            yield f"{directory!r} is relative"


COMMANDS_CHECKS: tuple[Check[Commands], ...] = (
    Check(
        "allow",
        "allow entries are program names, not paths: the program is looked up in commands.path.",
        _path_like_programs,
    ),
    Check(
        "rules",
        "every commands.rules.<program> must name a program in commands.allow.",
        _rules_for_programs_not_allowed,
    ),
    Check(
        "path",
        "path entries must be absolute: a relative one resolves against the session's "
        "workspace, where a session can plant programs.",
        _relative_directories,
    ),
)


def _both_required_and_preferred(isolation: Isolation) -> Iterator[str]:
    both = [
        layer
        for layer in ALL_LAYERS
        if layer in isolation.required and layer in isolation.preferred
    ]
    if both:
        yield f"layers listed as both required and preferred: {both}"


ISOLATION_CHECKS: tuple[Check[Isolation], ...] = (
    Check(
        "required",
        "a layer is either required or preferred, not both.",
        _both_required_and_preferred,
    ),
)

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

PYTHON_CHECKS: tuple[Check[PythonSettings], ...] = (
    Check(
        "preload",
        "preload entries are importable module names such as 'numpy' or 'matplotlib.pyplot'.",
        lambda python: (
            f"{name!r} is not a module name"
            for name in python.preload
            if not _MODULE_NAME.match(name)
        ),
    ),
)


def _memory_below_preload(policy: Policy) -> Iterator[str]:
    needed = preload_needs_mb(policy.python.preload)
    if policy.limits.memory_mb < needed:
        parts = [f"interpreter {INTERPRETER_FOOTPRINT_MB}"] + [
            f"{name} {PRELOAD_FOOTPRINT[name].mb}"
            for name in preload_closure(policy.python.preload)
            if name in PRELOAD_FOOTPRINT
        ]
        yield (
            f"{policy.limits.memory_mb} MiB is below the {needed} MiB needed ({' + '.join(parts)})"
        )


def _launchers_while_refused(policy: Policy) -> Iterator[str]:
    if policy.commands.launchers_allowed:
        return
    for exposure in launcher_exposures(policy.commands):
        if exposure.runs_any_program:
            yield f"{exposure.program!r} is a launcher: {exposure.describe()}"


def _max_timeout_above_lifetime(policy: Policy) -> Iterator[str]:
    yield from _above(
        policy.limits.max_timeout_s,
        policy.sessions.max_lifetime_s,
        "s",
        "sessions.max_lifetime_s",
    )


POLICY_CHECKS: tuple[Check[Policy], ...] = (
    Check(
        "limits.max_timeout_s",
        "limits.max_timeout_s must not exceed sessions.max_lifetime_s: no run can outlive "
        "its session.",
        _max_timeout_above_lifetime,
    ),
    Check(
        "limits.memory_mb",
        "limits.memory_mb must hold the interpreter and the modules in python.preload, or "
        "sessions die starting up: raise memory_mb or preload less.",
        _memory_below_preload,
    ),
    Check(
        "commands.allow",
        "with commands.launchers_allowed = false no allowed program may run any other "
        "program: remove it, neutralise it with deny_args, or set launchers_allowed = true "
        "knowingly.",
        _launchers_while_refused,
    ),
)


# --- Warnings: allowed, but a reviewer should know -----------------------------------


@dataclass(frozen=True)
class PolicyWarning:
    key: str
    message: str


def policy_warnings(policy: Policy) -> list[PolicyWarning]:
    """What a valid policy grants that a reviewer should read twice."""
    found = []
    shells_allowed = any(launcher_for(p) is SHELL for p in policy.commands.allow)
    landlock_required = "landlock" in policy.isolation.required
    for exposure in launcher_exposures(policy.commands):
        program, launcher = exposure.program, exposure.launcher
        message = f"{program!r} is a launcher: {exposure.describe()}."
        if launcher.reach is Reach.THROUGH_SHELL:
            if shells_allowed:
                message += " A shell is allowed here, so this runs any command line."
            elif landlock_required:
                message += " Inert while no shell is allowed: Landlock refuses to execute one."
            else:
                message += " Inert only where Landlock runs, and this policy does not require it."
        found.append(PolicyWarning("commands.allow", message))
    unused = [layer for layer in ALL_LAYERS if layer not in policy.isolation.wanted()]
    if unused:
        found.append(
            PolicyWarning(
                "isolation",
                f"layers neither required nor preferred are never applied: {', '.join(unused)}.",
            )
        )
    if policy.isolation.network:
        found.append(PolicyWarning("isolation.network", "sessions may open network sockets."))
    return found


# --- Loading, and errors a person can act on -----------------------------------------


def _node_at(path: Iterable[str | int]) -> Any:
    """The model (or type) that describes the value at ``path`` in a policy file."""
    node: Any = Policy
    for part in path:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return None
            node = field.annotation
        elif get_origin(node) in (dict, list):
            node = get_args(node)[-1]
        else:
            return None
    return node


def _suggestion(loc: tuple[str | int, ...]) -> str:
    """'did you mean' for an unknown key: a close name here, or the same name elsewhere."""
    model = _node_at(loc[:-1])
    unknown = str(loc[-1])
    if isinstance(model, type) and issubclass(model, BaseModel):
        close = difflib.get_close_matches(unknown, list(model.model_fields), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]!r}?)"
    for section, field in Policy.model_fields.items():
        other = field.annotation
        if isinstance(other, type) and unknown in getattr(other, "model_fields", {}):
            return f" (did you mean {section}.{unknown}?)"
    return ""


# pydantic's type errors, as what the key must be.
_EXPECTED: dict[str, str] = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a table of keys",
    "dict_type": "a table of keys",
}


# pydantic's bound errors: the words for the bound, and its name in the error context.
_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def _reason(item: Any) -> str:
    kind, ctx, value = item["type"], item.get("ctx", {}), item.get("input")
    if kind == "extra_forbidden":
        return "unknown key" + _suggestion(item["loc"])
    if kind in _BOUNDS:
        words, name = _BOUNDS[kind]
        return f"must be {words} {ctx[name]}, not {value}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, not {value!r}"
    if kind == "literal_error" and isinstance(value, str):
        close = difflib.get_close_matches(value, ALL_LAYERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{value!r} is not a layer; layers are {', '.join(ALL_LAYERS)}{hint}"
    message = str(item["msg"])
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if value is not None and not isinstance(value, dict | list):
        return f"{message}, not {value!r}"
    return message


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        problems = item.get("ctx", {}).get("error")
        if isinstance(problems, PolicyProblems):
            for key, reason in problems.problems:
                where = ".".join([*(str(part) for part in item["loc"]), key])
                lines.append(f"{source}: {where}: {reason}")
            continue
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {_reason(item)}")
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
