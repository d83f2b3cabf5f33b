"""Loading a policy file, and errors a person can act on: ``file: key: reason`` lines."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from sandbox.errors import PolicyError
from sandbox.policy.checks import PolicyProblems
from sandbox.policy.sections import Policy
from sandbox.policy.tables import ALL_LAYERS


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
    if kind == "literal_error" and item["loc"][:1] != ("isolation",):
        return f"must be {ctx.get('expected', 'one of the listed values')}, not {value!r}"
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
