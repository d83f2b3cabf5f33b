"""The tables that tune validation: the layers, units, and what preloaded modules cost."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

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
Tighter = Literal["lower", "false", "fewer", "more", "off"]


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


# The modules of the `toolbox` extra (pyproject.toml), by import name.  The zygote keeps
# them out while it preloads unless python.preload names them: pandas, for one, imports
# pyarrow as it imports itself whenever pyarrow is installed.
TOOLBOX_MODULES = frozenset(
    {
        "scipy",
        "sklearn",
        "seaborn",
        "statsmodels",
        "openpyxl",
        "xlrd",
        "pyarrow",
        "sympy",
        "networkx",
        "tabulate",
    }
)
