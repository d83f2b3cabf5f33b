"""What the caller should do next, from the structured outcome of a run.

A table of rules, checked in order; the first that matches writes the suggestion.
Rules see only the outcome after truncation (status, exception type, limit hit,
denied rule, truncation, restart) and the active policy, so each sentence names the
real limits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sandbox import Policy
from sandbox.protocol import ErrorHint


@dataclass(frozen=True)
class Outcome:
    kind: str  # "python" or "command"
    status: str
    exc_type: str | None
    error: str | None
    limit: str | None
    denied_rule: str | None
    truncated: bool
    restarted: bool
    exit_code: int | None
    # What the worker saw beyond the error's text (a DataFrame's columns, say).
    hint: ErrorHint | None = None
    # An output's picture was too big for the reply: its metadata.url links the file.
    outputs_linked: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[Outcome], bool]
    advice: Callable[[Outcome, Policy], str]


# Modules people reach for, and the preloaded ones that do the same job (only those the
# active policy preloads are offered).
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "seaborn": ("matplotlib", "pandas"),
    "plotly": ("matplotlib",),
    "bokeh": ("matplotlib",),
    "altair": ("matplotlib",),
    "scipy": ("numpy",),
    "sklearn": ("numpy",),
    "statsmodels": ("numpy", "pandas"),
    "polars": ("pandas",),
    "tabulate": ("pandas",),
}
# Modules whose only use is the network: no alternative makes them work here.
NETWORK_MODULES = frozenset({"requests", "httpx", "aiohttp", "urllib3", "boto3", "openai"})
_MISSING = re.compile(r"No module named '([^'.]+)")
# Names an IPython kernel defines and plain Python does not (display() is a builtin
# here): a NameError for one of them says nothing about a restart.
IPYTHON_ONLY_NAMES = frozenset({"get_ipython", "In", "Out"})
_UNDEFINED = re.compile(r"^NameError: name '([^']+)' is not defined")


def undefined_name(outcome: Outcome) -> str | None:
    found = _UNDEFINED.match(outcome.error or "")
    return found.group(1) if found else None


def missing_module(outcome: Outcome) -> str | None:
    """The top-level name of the module an import could not find."""
    found = _MISSING.search(outcome.error or "")
    return found.group(1) if found else None


def _missing_module_advice(outcome: Outcome, policy: Policy) -> str:
    preload = policy.python.preload
    name = missing_module(outcome)
    usable = [module for module in ALTERNATIVES.get(name or "", ()) if module in preload]
    instead = f"Use {' or '.join(usable)} instead. " if usable else ""
    network = "" if policy.network.enabled else " and the network is off"
    return (
        f"That module is not installed{network}. {instead}Preinstalled: "
        f"{', '.join(preload) or 'nothing'} and the standard library."
    )


def _hint_kind(outcome: Outcome) -> str | None:
    return outcome.hint.kind if outcome.hint else None


def _hint_names(outcome: Outcome) -> str:
    hint = outcome.hint
    if hint is None:
        return ""
    more = hint.total - len(hint.names)
    return ", ".join(hint.names) + (f" (and {more} more)" if more > 0 else "")


def _allowed_hosts(policy: Policy) -> str:
    return ", ".join(policy.network.allow) or "none"


def _network_advice(outcome: Outcome, policy: Policy) -> str:
    if policy.network.enabled:
        return (
            "That host could not be reached from the sandbox: check the host name and port. "
            "Sessions reach only the hosts the policy's network.allow lists, through the "
            f"service's proxy (HTTP_PROXY): {_allowed_hosts(policy)}."
        )
    return (
        "The network is off in this sandbox (policy key network.mode), so no host can be "
        "reached. Work with files in /mnt/data instead: ask the user to upload the data."
    )


# The egress proxy's refusals name their policy key in the reason phrase, which is what
# clients show ("Tunnel connection failed: 403 Forbidden by network.allow").
_PROXY_REFUSAL = re.compile(r"Forbidden by (network\.[a-z_]+)")

_EGRESS_ADVICE: dict[str, str] = {
    "network.allow": (
        "The sandbox's egress proxy refused that host: sessions may reach only the hosts "
        "the policy key network.allow lists ({allowed}). Use one of those, or ask the "
        "operator to add the host to network.allow."
    ),
    "network.allow_private": (
        "The egress proxy refused that address: it is loopback, private, link-local or the "
        "host's own, which the proxy reaches only where the policy key "
        "network.allow_private covers it. Use a public address of an allowed host."
    ),
}


def egress_refusal_key(outcome: Outcome) -> str | None:
    found = _PROXY_REFUSAL.search(outcome.error or "")
    return found.group(1) if found else None


def _egress_advice(outcome: Outcome, policy: Policy) -> str:
    key = egress_refusal_key(outcome) or "network.allow"
    template = _EGRESS_ADVICE.get(
        key,
        "This session has used its network budget (policy key {key}): the egress proxy "
        "refuses further connections. Work with what was downloaded already.",
    )
    return template.format(allowed=_allowed_hosts(policy), key=key)


def _program_advice(outcome: Outcome, policy: Policy) -> str:
    program = _hint_names(outcome)
    if program in policy.commands.allow:
        return f"'{program}' is allowed but not installed here. Do that step in Python instead."
    return (
        f"'{program}' cannot run in this sandbox: a subprocess may run only the programs the "
        f"policy's commands.allow lists: {_allowed(policy)}. Do the rest in Python."
    )


def _allowed(policy: Policy) -> str:
    names = policy.commands.allow
    shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
    return shown or "none"


RULES: tuple[Rule, ...] = (
    Rule(
        "packages-off",
        lambda o: o.denied_rule == "packages",
        lambda o, p: (
            "Installing packages is off in this sandbox (policy key packages.install). "
            f"Preinstalled: {', '.join(p.python.preload) or 'nothing'} and the standard library."
        ),
    ),
    Rule(
        "package-option",
        lambda o: o.denied_rule == "package-option",
        lambda o, p: (
            "pip installs here only from the policy's index (packages.index_url) into this "
            "session's own site directory; run the line again without that option."
        ),
    ),
    Rule(
        "cell-command-denied",
        lambda o: o.kind == "python" and o.status == "denied",
        lambda o, p: (
            f"That ! line was refused by the '{o.denied_rule}' rule and nothing of it ran. "
            f"Programs the policy's commands.allow lists: {_allowed(p)}. Commands run without "
            "a shell; do the rest in Python."
        ),
    ),
    Rule(
        "denied",
        lambda o: o.status == "denied",
        lambda o, p: (
            f"That command was refused by the '{o.denied_rule}' rule. Allowed programs: "
            f"{_allowed(p)}. Commands run without a shell; for anything else use /repl."
        ),
    ),
    Rule(
        "timeout",
        lambda o: o.status == "timeout",
        lambda o, p: (
            "The run was interrupted at its time limit but your variables were kept. Split the "
            "work into smaller steps or pass a larger timeout "
            f"(at most {p.limits.max_timeout_s:g} s)."
        ),
    ),
    Rule(
        "memory",
        lambda o: o.limit == "memory" or o.exc_type == "MemoryError",
        lambda o, p: (
            f"The session's memory limit is {p.limits.memory_mb} MB. Process the data in chunks "
            "(e.g. pandas read_csv(chunksize=...)), use smaller dtypes, or delete large objects."
        ),
    ),
    Rule(
        "killed",
        lambda o: o.status == "killed",
        lambda o, p: (
            "The session's worker was stopped and a fresh one now serves it: variables are gone "
            "but files in the workspace were kept. Re-run your setup code, in smaller steps."
        ),
    ),
    Rule(
        "ipython-name",
        lambda o: o.exc_type == "NameError" and undefined_name(o) in IPYTHON_ONLY_NAMES,
        lambda o, p: (
            f"'{undefined_name(o)}' belongs to an IPython kernel; cells here are plain Python. "
            "display(obj) shows rich output, and IPython.display objects work with it."
        ),
    ),
    Rule(
        "name-after-restart",
        lambda o: o.exc_type == "NameError" and o.restarted,
        lambda o, p: (
            "The session was restarted, so earlier variables are gone: re-run the setup code."
        ),
    ),
    Rule("egress-refused", lambda o: egress_refusal_key(o) is not None, _egress_advice),
    Rule("network", lambda o: _hint_kind(o) == "network", _network_advice),
    Rule(
        "dataframe-columns",
        lambda o: _hint_kind(o) == "dataframe-columns",
        lambda o, p: f"That label is not a column. The DataFrame's columns are: {_hint_names(o)}.",
    ),
    Rule("program-refused", lambda o: _hint_kind(o) == "program-refused", _program_advice),
    Rule(
        "network-module",
        lambda o: o.exc_type == "ModuleNotFoundError" and missing_module(o) in NETWORK_MODULES,
        lambda o, p: (
            _missing_module_advice(o, p)
            if p.network.enabled
            else f"'{missing_module(o)}' talks to the network, which is off in this sandbox. "
            "Work with files in /mnt/data instead: ask the user to upload the data."
        ),
    ),
    Rule(
        "missing-module",
        lambda o: o.exc_type in ("ModuleNotFoundError", "ImportError"),
        _missing_module_advice,
    ),
    Rule(
        "file-not-found",
        lambda o: o.exc_type == "FileNotFoundError",
        lambda o, p: (
            "Paths are relative to the session workspace (/mnt/data). List it with "
            "os.listdir('.') or the command 'ls -la', or upload the file first."
        ),
    ),
    Rule(
        "syntax",
        lambda o: o.exc_type in ("SyntaxError", "IndentationError", "TabError"),
        lambda o, p: (
            "The code did not parse. When sending a list of lines, each item is one line joined "
            "with newlines: keep indentation inside each line and do not split a statement."
        ),
    ),
    Rule(
        "interrupted",
        lambda o: o.exc_type == "KeyboardInterrupt",
        lambda o, p: "The run was interrupted on request; variables were kept.",
    ),
    Rule(
        "picture-linked",
        lambda o: o.outputs_linked and o.status == "ok",
        lambda o, p: (
            "A figure was too large to include in the reply: open the link in its output's "
            "metadata.url (also in files), or show a smaller one (plt.figure(figsize=(6, 4)))."
        ),
    ),
    Rule(
        "truncated",
        lambda o: o.truncated,
        lambda o, p: (
            f"Output was cut to {p.limits.output_chars} characters per stream. Print a summary "
            "(df.head(), len(x), describe()) or write the full output to a file in the workspace."
        ),
    ),
    Rule(
        "command-failed",
        lambda o: o.kind == "command" and o.status == "error",
        lambda o, p: (
            "The command failed; read stderr in `error`, fix the arguments, and run it again."
        ),
    ),
    Rule(
        "python-error",
        lambda o: o.status == "error",
        lambda o, p: (
            "Read the error above, fix the code and run it again; earlier variables are kept."
        ),
    ),
)


def quiet(outcome: Outcome) -> bool:
    """A run that went well and left nothing to tell: no rule applies to it.

    Most runs: asking each rule cost a trivial run a measurable share of its reply.
    tests/unit/service/test_suggestions.py checks the table against it.
    """
    return (
        outcome.status == "ok"
        and outcome.error is None
        and outcome.exc_type is None
        and outcome.limit is None
        and outcome.denied_rule is None
        and outcome.hint is None
        and not (outcome.truncated or outcome.restarted or outcome.outputs_linked)
    )


def suggest(outcome: Outcome, policy: Policy) -> str | None:
    if quiet(outcome):
        return None
    for rule in RULES:
        if rule.applies(outcome):
            return rule.advice(outcome, policy)
    return None
