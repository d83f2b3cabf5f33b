"""Policies: unknown keys and impossible values are refused with file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import PolicyError
from sandbox.policy import load_policy, parse_policy

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_policies_load(path: Path) -> None:
    load_policy(path)


def test_unknown_key_names_file_and_key() -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy("[limits]\nwall_timeout = 3\n", "my.toml")
    assert "my.toml: limits.wall_timeout: unknown key" in str(error.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[limits]\nmemory_mb = -1\n", "limits.memory_mb"),
        ("[limits]\nwall_timeout_s = 50\nmax_timeout_s = 40\n", "wall_timeout_s must not exceed"),
        ("[limits]\nreply_chars = 200000\n", "GPT Actions"),
        ("[commands]\nallow = ['/bin/ls']\n", "program names, not paths"),
        ("[commands]\nallow = ['ls']\n[commands.rules.cat]\ndeny_args = []\n", "not allowed"),
        ("[isolation]\nrequired = ['seccomp']\npreferred = ['seccomp']\n", "both required"),
        ("[isolation]\nrequired = ['magic']\n", "isolation.required.0"),
        ("limits = 3\n", "limits"),
        ("[limits\n", "not valid TOML"),
    ],
)
def test_impossible_values_are_refused_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "p.toml")
    assert fragment in str(error.value)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as error:
        load_policy(tmp_path / "absent.toml")
    assert "cannot read policy" in str(error.value)


def test_digest_changes_with_content() -> None:
    assert parse_policy("").digest() != parse_policy("[limits]\nmemory_mb = 1024\n").digest()
