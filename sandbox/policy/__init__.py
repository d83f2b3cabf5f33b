"""The policy: what a session may do, loaded from a TOML file and validated once.

The model is owned by ``sandbox`` (it is what the zygote and the workers enforce);
``service`` only reads it.  Unknown keys and impossible values are errors that name
the file, the key and the reason, so a broken policy never starts a service.

Reading order: the tables that tune validation (``tables``: units, module footprints;
launchers are in ``sandbox/launchers.py``), the sections of a policy file
(``sections``), the cross-key checks each section runs (``checks``), the ``[network]``
section and its grammar of hosts (``network``), what a valid policy grants that a
reviewer should know (``review``), and the loader that turns
pydantic's errors into ``file: key: reason`` lines (``loading``).
"""

from sandbox.policy.checks import (
    COMMANDS_CHECKS,
    ISOLATION_CHECKS,
    LIMITS_CHECKS,
    PACKAGES_CHECKS,
    POLICY_CHECKS,
    PYTHON_CHECKS,
    SESSIONS_CHECKS,
    Check,
    PolicyProblems,
    format_number,
)
from sandbox.policy.loading import load_policy, parse_policy
from sandbox.policy.network import Network
from sandbox.policy.review import PolicyWarning, policy_warnings
from sandbox.policy.sections import (
    Commands,
    Isolation,
    Limits,
    Packages,
    Policy,
    ProgramRule,
    PythonSettings,
    Sessions,
)
from sandbox.policy.tables import (
    ALL_LAYERS,
    INTERPRETER_FOOTPRINT_MB,
    PRELOAD_FOOTPRINT,
    UNIT_SUFFIXES,
    LayerName,
    preload_needs_mb,
)

__all__ = [
    "ALL_LAYERS",
    "COMMANDS_CHECKS",
    "INTERPRETER_FOOTPRINT_MB",
    "ISOLATION_CHECKS",
    "LIMITS_CHECKS",
    "PACKAGES_CHECKS",
    "POLICY_CHECKS",
    "PRELOAD_FOOTPRINT",
    "PYTHON_CHECKS",
    "SESSIONS_CHECKS",
    "UNIT_SUFFIXES",
    "Check",
    "Commands",
    "Isolation",
    "LayerName",
    "Limits",
    "Network",
    "Packages",
    "Policy",
    "PolicyProblems",
    "PolicyWarning",
    "ProgramRule",
    "PythonSettings",
    "Sessions",
    "format_number",
    "load_policy",
    "parse_policy",
    "policy_warnings",
    "preload_needs_mb",
]
