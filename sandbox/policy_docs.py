"""What a reviewer reads about policies: the reference, and the changes between two.

Both are generated from the model in ``sandbox.policy``, so neither can drift from
the code.  ``python -m sandbox.policy_docs > docs/POLICY.md`` rewrites the reference;
a test fails when the committed file is stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from sandbox.launchers import LAUNCHERS, Launcher, launcher_for
from sandbox.policy import (
    ALL_LAYERS,
    COMMANDS_CHECKS,
    INTERPRETER_FOOTPRINT_MB,
    ISOLATION_CHECKS,
    LIMITS_CHECKS,
    PACKAGES_CHECKS,
    POLICY_CHECKS,
    PRELOAD_FOOTPRINT,
    PYTHON_CHECKS,
    SESSIONS_CHECKS,
    UNIT_SUFFIXES,
    Check,
    Policy,
    ProgramRule,
    format_number,
)
from sandbox.policy.network import NETWORK_CHECKS, NETWORK_POLICY_CHECKS

REGENERATE = "python -m sandbox.policy_docs > docs/POLICY.md"

# The cross-key checks each section runs, in the order the reference lists them.
SECTION_CHECKS: dict[str, Sequence[Check[Any]]] = {
    "limits": LIMITS_CHECKS,
    "sessions": SESSIONS_CHECKS,
    "commands": COMMANDS_CHECKS,
    "isolation": ISOLATION_CHECKS,
    "python": PYTHON_CHECKS,
    "packages": PACKAGES_CHECKS,
    "network": NETWORK_CHECKS,
}


# --- Field metadata ----------------------------------------------------------------


def _about(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def unit_of(key: str, field: FieldInfo) -> str:
    for suffix, unit in UNIT_SUFFIXES.items():
        if key.endswith(suffix):
            return unit
    return str(_about(field).get("unit", ""))


def _tighter(field: FieldInfo) -> str:
    return str(_about(field).get("tighter", ""))


def tighter_when(field: FieldInfo) -> str:
    """Which way of changing the key restricts sessions more, or '' for neither."""
    words = {"fewer": "fewer entries", "more": "more entries", "off": '"off"'}
    return words.get(_tighter(field), _tighter(field))


def default_of(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is list:
        (item,) = get_args(annotation)
        return "list of layers" if get_origin(item) is Literal else f"list of {_type_name(item)}s"
    if origin is dict:
        return "table per program"
    if origin is Literal:
        return "one of " + ", ".join(f'"{value}"' for value in get_args(annotation))
    names = {float: "number", int: "integer", bool: "boolean", str: "string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value)


_BOUND_SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _bounds(field: FieldInfo) -> str:
    words = []
    for constraint in field.metadata:
        for attribute, sign in _BOUND_SIGNS.items():
            bound = getattr(constraint, attribute, None)
            if bound is not None:
                words.append(f"{sign} {format_number(bound)}")
    return ", ".join(words)


# --- The reference -----------------------------------------------------------------


def _row(cells: Sequence[str]) -> str:
    # A bare | inside a cell (`||`, `print | cmd`) would end the cell.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _key_table(model: type[BaseModel]) -> Iterator[str]:
    yield "| key | type | default | unit | allowed | tighter when | description |"
    yield "|---|---|---|---|---|---|---|"
    for key, field in model.model_fields.items():
        cells = [
            f"`{key}`",
            _type_name(field.annotation),
            f"`{_toml(default_of(field))}`",
            unit_of(key, field) or "-",
            _bounds(field) or "-",
            tighter_when(field) or "-",
            field.description or "",
        ]
        yield _row(cells)


def _checks(checks: Sequence[Check[Any]]) -> Iterator[str]:
    for check in checks:
        yield f"- {check.rule}"


def _launcher_rows() -> Iterator[str]:
    # One row per distinct entry: sh, bash, dash ... share what they grant.
    grouped: dict[int, tuple[Launcher, list[str]]] = {}
    for program, launcher in LAUNCHERS.items():
        grouped.setdefault(id(launcher), (launcher, []))[1].append(program)
    yield "| programs | reach | grants | neutralised by deny_args |"
    yield "|---|---|---|---|"
    for launcher, programs in grouped.values():
        names = ", ".join(f"`{name}`" for name in programs)
        neutralised = ", ".join(f"`{arg}`" for arg in launcher.neutralised_by) or "nothing"
        yield _row([names, launcher.reach.value, launcher.grants, neutralised])


def _footprint_rows() -> Iterator[str]:
    yield "| module | MiB | also imports |"
    yield "|---|---|---|"
    yield _row(["(interpreter and worker)", str(INTERPRETER_FOOTPRINT_MB), "-"])
    for module, footprint in PRELOAD_FOOTPRINT.items():
        yield _row([f"`{module}`", str(footprint.mb), ", ".join(footprint.imports) or "-"])


def render_reference() -> str:
    """docs/POLICY.md, generated from the policy model."""
    units = ", ".join(f"`{suffix}` {unit}" for suffix, unit in UNIT_SUFFIXES.items())
    lines = [
        "# Policy reference",
        "",
        f"<!-- Generated from sandbox/policy/ by `{REGENERATE}`; do not edit. -->",
        "",
        "A policy is a TOML file with the sections below; `policies/` holds commented",
        "presets, of which `default.toml` is what `make run` serves. Every key is optional:",
        "a missing key takes the default shown here. Unknown keys and impossible values",
        "are refused when the policy loads, each with the file, the key and the reason, so",
        "a broken policy never starts a service. `codesherpa policy check FILE` prints",
        "those errors and warnings about launchers; `codesherpa policy show` prints the",
        "effective policy; `codesherpa policy diff A B` lists what changes between two.",
        "",
        f"Units are in key names: {units}; keys without a suffix name their unit",
        'in the tables. "Tighter when" says which way of changing a key restricts sessions',
        "more; `policy diff` judges each change by it.",
    ]
    for section, section_field in Policy.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        lines += ["", f"## [{section}]", "", model.__doc__ or "", "", *_key_table(model)]
        if section == "commands":
            lines += [
                "",
                "### [commands.rules.PROGRAM]",
                "",
                ProgramRule.__doc__ or "",
                "",
                *_key_table(ProgramRule),
            ]
        checks = SECTION_CHECKS.get(section, ())
        if checks:
            lines += ["", "Checked when the policy loads:", "", *_checks(checks)]
    lines += [
        "",
        "## Checks across sections",
        "",
        *_checks(POLICY_CHECKS),
        *_checks(NETWORK_POLICY_CHECKS),
        "",
        "## Memory the preloaded modules need",
        "",
        "`limits.memory_mb` must be at least the interpreter's share plus every module",
        "`python.preload` imports, counted once. It is also each process's address-space",
        "limit and workers inherit the zygote's mappings, so these are virtual sizes with",
        "room to work. Modules not listed count as 0 MiB.",
        "",
        *_footprint_rows(),
        "",
        "## Launchers",
        "",
        "Programs that can run other programs. With `commands.launchers_allowed = false`",
        f'a policy allowing one that "{LAUNCHERS["sh"].reach.value}" is refused unless its',
        "deny_args neutralise it; the others load, and `policy check` warns about each.",
        "Names with a version suffix (`python3.11`) are looked up without it.",
        "",
        *_launcher_rows(),
        "",
        "Layers: " + ", ".join(f"`{layer}`" for layer in ALL_LAYERS) + ".",
    ]
    return "\n".join(lines) + "\n"


# --- What changes between two policies -----------------------------------------------

Judgement = Literal["tighter", "looser", "changed"]
_LAYER_STRENGTH = {"required": 2, "preferred": 1, "off": 0}


@dataclass(frozen=True)
class Change:
    """One difference a reviewer should read, judged for the sessions' sake."""

    key: str
    what: str
    judgement: Judgement
    note: str = ""

    def __str__(self) -> str:
        line = f"{self.key}: {self.what} ({self.judgement})"
        return f"{line}; {self.note}" if self.note else line


def _judge_scalar(tighter: str, before: Any, after: Any) -> Judgement:
    if tighter == "lower":
        return "tighter" if after < before else "looser"
    if tighter == "false":
        return "tighter" if after is False else "looser"
    if tighter == "off":
        return "tighter" if after == "off" else "looser"
    return "changed"


def _scalar_note(key: str, after: Any) -> str:
    if key == "network.mode":
        return (
            "NETWORK ON: sessions reach network.allow through the egress proxy"
            if after != "off"
            else "network off"
        )
    if key == "commands.launchers_allowed" and after:
        return "programs that can run any program may now be allowed"
    return ""


def _list_changes(key: str, tighter: str, before: list[Any], after: list[Any]) -> Iterator[Change]:
    if tighter not in ("fewer", "more"):
        if before != after:
            yield Change(key, f"{_toml(before)} → {_toml(after)}", "changed")
        return
    added = [item for item in after if item not in before]
    removed = [item for item in before if item not in after]
    more_is: Judgement = "tighter" if tighter == "more" else "looser"
    fewer_is: Judgement = "looser" if tighter == "more" else "tighter"
    if added:
        yield Change(key, f"added {', '.join(added)}", more_is, _launcher_note(key, added))
    if removed:
        yield Change(key, f"removed {', '.join(removed)}", fewer_is)


def _launcher_note(key: str, added: list[str]) -> str:
    launchers = [name for name in added if launcher_for(name) is not None]
    if key != "commands.allow" or not launchers:
        return ""
    return f"launchers, see `policy check`: {', '.join(launchers)}"


def _layer_state(policy: Policy, layer: str) -> str:
    if layer in policy.isolation.required:
        return "required"
    return "preferred" if layer in policy.isolation.preferred else "off"


def _layer_changes(before: Policy, after: Policy) -> Iterator[Change]:
    for layer in ALL_LAYERS:
        old, new = _layer_state(before, layer), _layer_state(after, layer)
        if old != new:
            judgement: Judgement = (
                "tighter" if _LAYER_STRENGTH[new] > _LAYER_STRENGTH[old] else "looser"
            )
            yield Change(f"isolation layer {layer}", f"{old} → {new}", judgement)


def _rule_changes(before: Policy, after: Policy) -> Iterator[Change]:
    tighter = _tighter(ProgramRule.model_fields["deny_args"])
    # A program no longer allowed needs no rules: its removal from allow says it all.
    programs = set(before.commands.rules) | set(after.commands.rules)
    for program in sorted(programs & set(after.commands.allow)):
        old = before.commands.rules.get(program, ProgramRule()).deny_args
        new = after.commands.rules.get(program, ProgramRule()).deny_args
        yield from _list_changes(f"commands.rules.{program}.deny_args", tighter, old, new)


def review_changes(before: Policy, after: Policy) -> list[Change]:
    """Every difference from ``before`` to ``after``, in the order of the reference."""
    changes: list[Change] = []
    for section, section_field in Policy.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        old_section, new_section = getattr(before, section), getattr(after, section)
        for name, field in model.model_fields.items():
            key = f"{section}.{name}"
            old, new = getattr(old_section, name), getattr(new_section, name)
            if key == "commands.rules":
                changes += _rule_changes(before, after)
            elif key in ("isolation.required", "isolation.preferred") or old == new:
                continue
            elif isinstance(old, list):
                changes += _list_changes(key, _tighter(field), old, new)
            else:
                judgement = _judge_scalar(_tighter(field), old, new)
                what = f"{_toml(old)} → {_toml(new)}"
                changes.append(Change(key, what, judgement, _scalar_note(key, new)))
        if section == "isolation":
            changes += _layer_changes(before, after)
    return changes


def main() -> None:
    print(render_reference(), end="")


if __name__ == "__main__":
    main()
