"""The cross-key checks each section runs, and how their breaches are reported."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel

from sandbox.launchers import launcher_exposures
from sandbox.policy.tables import (
    ACTIONS_REPLY_LIMIT_CHARS,
    ALL_LAYERS,
    INTERPRETER_FOOTPRINT_MB,
    PRELOAD_FOOTPRINT,
    preload_closure,
    preload_needs_mb,
)
from sandbox.policy.urls import has_credentials, redacted

if TYPE_CHECKING:
    # The sections run these checks, so they import this module, not the reverse.
    from sandbox.policy.sections import (
        Commands,
        Isolation,
        Limits,
        Packages,
        Policy,
        PythonSettings,
        Sessions,
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


def enforce(model: SectionT, checks: Iterable[Check[SectionT]]) -> None:
    problems = [
        (check.key, f"{found}; {check.rule}") for check in checks for found in check.breaches(model)
    ]
    if problems:
        raise PolicyProblems(problems)


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


# An index pip reads: a URL with one of these schemes and a location.
_INDEX_URL = re.compile(r"^(?:https?://[^\s/?#]+|file://)/?[^\s]*$")


def _index_url_problems(packages: Packages) -> Iterator[str]:
    url = packages.index_url
    if url and not _INDEX_URL.match(url):
        yield f"{redacted(url)!r} is not an http, https or file URL"
    elif has_credentials(url):
        # The policy reaches every session (and pip's command line there): no secrets in it.
        yield f"{redacted(url)!r} carries credentials (user:password@ or a query string)"


PACKAGES_CHECKS: tuple[Check[Packages], ...] = (
    Check(
        "index_url",
        "index_url is empty (the host pip's index) or an http, https or file URL with no "
        "spaces, and no credentials: no user:password@ and no query string, as every "
        "session could read them.",
        _index_url_problems,
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


def _index_out_of_reach(policy: Policy) -> Iterator[str]:
    packages = policy.packages
    parts = urlsplit(packages.index_url)
    if packages.install != "index" or parts.scheme not in ("http", "https") or not parts.hostname:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        yield f"{redacted(packages.index_url)!r} has no valid port"
        return
    if not policy.network.enabled:
        yield f'{parts.hostname}:{port} is reached over the network, and network.mode is "off"'
        return
    # Imported here: the proxy's matching imports this package.
    from sandbox.egress.destinations import DestinationPolicy

    if DestinationPolicy(policy.network).check_name(parts.hostname, port) is not None:
        yield f"{parts.hostname}:{port} is not in network.allow"


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
    Check(
        "packages.index_url",
        'an http or https packages.index_url needs network.mode = "allowlist" with its '
        "host and port in network.allow: pip reaches the index through the egress proxy.",
        _index_out_of_reach,
    ),
)
