"""Policies: unknown keys and impossible values are refused with file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from sandbox.errors import PolicyError
from sandbox.launchers import LAUNCHERS, Reach, launcher_exposures, launcher_for
from sandbox.policy import (
    ALL_LAYERS,
    UNIT_SUFFIXES,
    Policy,
    load_policy,
    parse_policy,
    policy_warnings,
    preload_needs_mb,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def problems(text: str) -> str:
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "p.toml")
    return str(error.value)


def sections() -> list[tuple[str, type[BaseModel]]]:
    found = []
    for name, field in Policy.model_fields.items():
        assert isinstance(field.annotation, type)
        assert issubclass(field.annotation, BaseModel)
        found.append((name, field.annotation))
    return found


# --- The schema ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_policies_load(path: Path) -> None:
    load_policy(path)


def test_every_key_has_a_one_line_description_and_a_default() -> None:
    for section, model in sections():
        for key, field in model.model_fields.items():
            assert field.description, f"{section}.{key} has no description"
            assert "\n" not in field.description
            assert not field.is_required(), f"{section}.{key} has no default"


def test_every_numeric_key_names_its_unit() -> None:
    for section, model in sections():
        for key, field in model.model_fields.items():
            if field.annotation not in (int, float):
                continue
            extra = field.json_schema_extra
            named_in_key = key.endswith(tuple(UNIT_SUFFIXES))
            named_in_metadata = isinstance(extra, dict) and "unit" in extra
            assert named_in_key or named_in_metadata, f"{section}.{key} has no unit"


def test_an_empty_file_is_the_model_defaults() -> None:
    policy = parse_policy("")
    assert policy.limits.memory_mb == 2048
    assert policy.commands.launchers_allowed is False
    assert policy.network.mode == "off"


# --- Unknown keys ------------------------------------------------------------------


def test_unknown_key_names_file_and_key_and_the_close_name() -> None:
    assert problems("[limits]\nwall_timeout = 3\n") == (
        "p.toml: limits.wall_timeout: unknown key (did you mean 'wall_timeout_s'?)"
    )


def test_misspelt_section_suggests_the_section() -> None:
    assert "p.toml: limit: unknown key (did you mean 'limits'?)" in problems("[limit]\nx = 1\n")


def test_key_in_the_wrong_section_names_the_right_one() -> None:
    message = problems("[limits]\nidle_ttl_s = 30\n")
    assert "p.toml: limits.idle_ttl_s: unknown key (did you mean sessions.idle_ttl_s?)" in message


def test_misspelt_key_in_a_program_rule_is_suggested() -> None:
    message = problems("[commands]\nallow = ['ls']\n[commands.rules.ls]\ndeny_arg = []\n")
    assert "commands.rules.ls.deny_arg: unknown key (did you mean 'deny_args'?)" in message


def test_unknown_key_with_nothing_close_has_no_suggestion() -> None:
    assert problems("[limits]\nzzz = 1\n") == "p.toml: limits.zzz: unknown key"


def test_misspelt_layer_is_suggested() -> None:
    message = problems("[isolation]\nrequired = ['seccom']\n")
    assert "isolation.required.0: 'seccom' is not a layer" in message
    assert "(did you mean 'seccomp'?)" in message


# --- Impossible values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[limits]\nmemory_mb = -1\n", "limits.memory_mb: must be greater than 0, not -1"),
        ("[limits]\nwall_timeout_s = -5\n", "limits.wall_timeout_s: must be greater than 0"),
        ("[sessions]\nwarm_pool = -1\n", "sessions.warm_pool: must be at least 0, not -1"),
        ("[limits]\nopen_files = 9999999\n", "limits.open_files: must be at most 1048576"),
        (
            "[limits]\nwall_timeout_s = 50\nmax_timeout_s = 40\n",
            "limits.wall_timeout_s: 50 s is above max_timeout_s (40 s); "
            "wall_timeout_s must not exceed max_timeout_s",
        ),
        (
            "[limits]\nreply_chars = 200000\n",
            "limits.reply_chars: 200000 characters is above the GPT Actions limit",
        ),
        (
            "[limits]\noutput_chars = 30000\n",
            "limits.output_chars: 2 x 30000 + 2000 = 62000 characters is above reply_chars",
        ),
        (
            "[limits]\nmax_timeout_s = 100\n[sessions]\nmax_lifetime_s = 60\nidle_ttl_s = 30\n",
            "limits.max_timeout_s: 100 s is above sessions.max_lifetime_s (60 s)",
        ),
        (
            "[sessions]\nidle_ttl_s = 20000\n",
            "sessions.idle_ttl_s: 20000 s is above max_lifetime_s (14400 s); "
            "idle_ttl_s must not exceed max_lifetime_s",
        ),
        (
            "[sessions]\nmax_per_tenant = 10\nmax_total = 5\nwarm_pool = 1\n",
            "sessions.max_per_tenant: 10 sessions is above max_total (5 sessions)",
        ),
        (
            "[sessions]\nmax_total = 4\nmax_per_tenant = 2\nwarm_pool = 8\n",
            "sessions.warm_pool: 8 workers is above max_total (4 workers)",
        ),
        (
            "[limits]\nmemory_mb = 256\n",
            "limits.memory_mb: 256 MiB is below the 320 MiB needed "
            "(interpreter 50 + numpy 120 + pandas 80 + matplotlib 70)",
        ),
        ("[commands]\nallow = ['/bin/ls']\n", "commands.allow: '/bin/ls' is not a program name"),
        (
            "[commands]\nallow = ['ls']\n[commands.rules.cat]\ndeny_args = []\n",
            "commands.rules: 'cat' has rules but is not allowed",
        ),
        ("[commands]\npath = ['bin']\n", "commands.path: 'bin' is relative"),
        (
            "[isolation]\nrequired = ['seccomp']\npreferred = ['seccomp']\n",
            "isolation.required: layers listed as both required and preferred: ['seccomp']",
        ),
        ("[python]\npreload = ['a b']\n", "python.preload: 'a b' is not a module name"),
        (
            "[commands]\nshell_operators = 'yes'\n",
            "commands.shell_operators: must be true or false",
        ),
        ("[limits]\nmemory_mb = '512'\n", "limits.memory_mb: must be an integer, not '512'"),
        ("limits = 3\n", "limits: must be a table of keys, not 3"),
    ],
)
def test_impossible_values_are_refused_with_file_key_and_reason(text: str, line: str) -> None:
    assert f"p.toml: {line}" in problems(text)


def test_invalid_toml_is_named() -> None:
    assert problems("[limits\n").startswith("p.toml: not valid TOML:")


def test_every_problem_is_reported_at_once() -> None:
    message = problems("[limits]\nmemory_mb = -1\nwall = 3\n[sessions]\nmax_total = 0\n")
    assert len(message.splitlines()) == 3


def test_memory_needed_counts_what_preloaded_modules_import_once() -> None:
    assert preload_needs_mb([]) == 50
    assert preload_needs_mb(["pandas"]) == 50 + 80 + 120
    assert preload_needs_mb(["numpy", "pandas"]) == 50 + 80 + 120
    assert preload_needs_mb(["matplotlib.pyplot"]) == 50 + 70 + 120
    assert preload_needs_mb(["json"]) == 50


def test_small_memory_is_fine_without_preloaded_modules() -> None:
    parse_policy("[limits]\nmemory_mb = 64\n[python]\npreload = []\n")


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as error:
        load_policy(tmp_path / "absent.toml")
    assert "cannot read policy" in str(error.value)


def test_digest_changes_with_content() -> None:
    assert parse_policy("").digest() != parse_policy("[limits]\nmemory_mb = 1024\n").digest()


# --- Launchers -------------------------------------------------------------------------


# Launchers a reviewer would name first; each must be in the table.
NAMED_LAUNCHERS = [
    "sh",
    "bash",
    "dash",
    "zsh",
    "env",
    "xargs",
    "nohup",
    "timeout",
    "nice",
    "setsid",
    "stdbuf",
    "python",
    "python3",
    "perl",
    "ruby",
    "node",
    "find",
    "awk",
    "gawk",
    "sed",
    "tar",
    "git",
    "make",
    "ssh",
    "busybox",
    "strace",
    "gdb",
    "vim",
    "vi",
    "less",
    "more",
]


@pytest.mark.parametrize("program", NAMED_LAUNCHERS)
def test_known_launchers_say_in_one_sentence_what_they_grant(program: str) -> None:
    launcher = LAUNCHERS[program]
    assert launcher.grants.endswith(".")
    assert launcher.grants.count(". ") == 0


def test_versioned_names_are_launchers_too() -> None:
    assert launcher_for("python3.11") is LAUNCHERS["python3"]
    assert launcher_for("ls") is None


def test_a_launcher_is_refused_while_launchers_are_not_allowed() -> None:
    message = problems("[commands]\nallow = ['ls', 'sh']\n")
    assert "p.toml: commands.allow: 'sh' is a launcher: a shell runs any command line" in message
    assert "launchers_allowed = false" in message


def test_find_refused_names_the_deny_args_it_lacks() -> None:
    text = "[commands]\nallow = ['find']\n[commands.rules.find]\ndeny_args = ['-exec', '-ok']\n"
    message = problems(text)
    assert "'find' is a launcher" in message
    assert "deny '-execdir', '-okdir' in commands.rules.find" in message


def test_neutralised_find_is_not_a_launcher() -> None:
    policy = parse_policy(
        "[commands]\nallow = ['find']\n"
        "[commands.rules.find]\ndeny_args = ['-exec', '-execdir', '-ok', '-okdir']\n"
    )
    assert policy_warnings(policy) == []


def test_shell_only_launchers_load_and_warn_that_they_are_inert() -> None:
    policy = parse_policy(
        f"[commands]\nallow = ['awk']\n[isolation]\nrequired = {list(ALL_LAYERS)}\npreferred = []\n"
    )
    (warning,) = policy_warnings(policy)
    assert warning.key == "commands.allow"
    assert "'awk' is a launcher: system()" in warning.message
    assert "Inert while no shell is allowed" in warning.message


def test_shell_only_launchers_are_not_inert_beside_a_shell() -> None:
    policy = parse_policy("[commands]\nallow = ['sed', 'sh']\nlaunchers_allowed = true\n")
    messages = [warning.message for warning in policy_warnings(policy)]
    assert any("'sed'" in m and "A shell is allowed here" in m for m in messages)


def test_allowed_launchers_load_and_each_is_warned_about() -> None:
    policy = parse_policy(
        "[commands]\nallow = ['ls', 'env', 'xargs', 'python3']\nlaunchers_allowed = true\n"
    )
    messages = [warning.message for warning in policy_warnings(policy)]
    for program in ("env", "xargs", "python3"):
        assert any(m.startswith(f"'{program}' is a launcher: ") for m in messages), program
    assert not any("'ls'" in m for m in messages)


def test_sort_compress_program_warns_but_loads() -> None:
    policy = parse_policy("[commands]\nallow = ['sort']\n")
    (warning,) = policy_warnings(policy)
    assert "--compress-program" in warning.message
    assert LAUNCHERS["sort"].reach is Reach.FIXED_ARGUMENTS


def test_network_and_unused_layers_are_warned_about() -> None:
    policy = parse_policy(
        "[isolation]\nrequired = ['namespaces']\npreferred = ['process']\n"
        "[network]\nmode = 'allowlist'\nallow = ['pypi.internal.example']\n"
    )
    keys = {warning.key for warning in policy_warnings(policy)}
    assert keys == {"isolation", "network.mode"}


# --- Presets ---------------------------------------------------------------------------


def test_default_preset_is_shared_safe() -> None:
    policy = load_policy(POLICIES / "default.toml")
    assert policy.isolation.required == list(ALL_LAYERS)
    assert policy.network.mode == "off"
    assert policy.commands.launchers_allowed is False
    exposures = launcher_exposures(policy.commands)
    assert {exposure.program for exposure in exposures} == {"awk", "sed"}
    assert all(exposure.launcher.reach is Reach.THROUGH_SHELL for exposure in exposures)


def test_strict_preset_is_minimal() -> None:
    policy = load_policy(POLICIES / "strict.toml")
    assert policy.isolation.required == list(ALL_LAYERS)
    assert policy.commands.shell_operators is False
    assert len(policy.commands.allow) <= 8
    assert policy_warnings(policy) == []


def test_dev_preset_says_it_is_unsafe_to_expose_before_anything_else() -> None:
    head = (POLICIES / "dev.toml").read_text().splitlines()[:5]
    assert any("UNSAFE TO EXPOSE" in line for line in head)
    policy = load_policy(POLICIES / "dev.toml")
    assert policy.isolation.required == []
    assert policy.commands.launchers_allowed is True
