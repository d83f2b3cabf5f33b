"""The policy reference is generated from the model, and diffs read as a review."""

from __future__ import annotations

from pathlib import Path

from sandbox.policy import Policy, load_policy, parse_policy
from sandbox.policy_docs import REGENERATE, render_reference, review_changes

ROOT = Path(__file__).resolve().parents[3]
POLICIES = ROOT / "policies"


def review(before: Policy, after: Policy) -> list[str]:
    return [str(change) for change in review_changes(before, after)]


# --- The reference ----------------------------------------------------------------------


def test_docs_policy_md_is_current() -> None:
    committed = (ROOT / "docs" / "POLICY.md").read_text(encoding="utf-8")
    assert committed == render_reference(), f"docs/POLICY.md is stale: run `{REGENERATE}`"


def test_reference_lists_every_key_with_its_default_and_unit() -> None:
    reference = render_reference()
    assert "| `memory_mb` | integer | `2048` | MiB | > 0 | lower |" in reference
    assert "| `processes` | integer | `64` | processes |" in reference
    assert "| `launchers_allowed` | boolean | `false` |" in reference
    for section, field in Policy.model_fields.items():
        assert f"## [{section}]" in reference
        model = field.annotation
        assert isinstance(model, type)
        for key in getattr(model, "model_fields", {}):
            assert f"| `{key}` |" in reference, f"{section}.{key} is missing"


def test_reference_lists_the_checks_footprints_and_launchers() -> None:
    reference = render_reference()
    assert "wall_timeout_s must not exceed max_timeout_s" in reference
    assert "| `pandas` | 80 | numpy |" in reference
    assert "`-exec`, `-execdir`, `-ok`, `-okdir`" in reference


def test_table_cells_escape_pipes() -> None:
    assert "&&, \\|\\|, ;" in render_reference()


# --- The diff ---------------------------------------------------------------------------


def test_default_to_strict_reads_as_a_review() -> None:
    lines = review(load_policy(POLICIES / "default.toml"), load_policy(POLICIES / "strict.toml"))
    assert "limits.memory_mb: 2048 → 1024 (tighter)" in lines
    assert "commands.shell_operators: true → false (tighter)" in lines
    assert any(line.startswith("commands.allow: removed ") for line in lines)


def test_strict_is_nowhere_looser_than_default() -> None:
    changes = review_changes(
        load_policy(POLICIES / "default.toml"), load_policy(POLICIES / "strict.toml")
    )
    assert [str(change) for change in changes if change.judgement == "looser"] == []


def test_default_to_dev_flags_launchers_and_layers() -> None:
    lines = review(load_policy(POLICIES / "default.toml"), load_policy(POLICIES / "dev.toml"))
    assert "isolation layer seccomp: required → preferred (looser)" in lines
    added = next(line for line in lines if line.startswith("commands.allow: added"))
    assert "(looser); launchers, see `policy check`: sh, bash" in added
    assert "commands.launchers_allowed: false → true (looser)" in " ".join(lines)


def test_identical_policies_have_no_changes() -> None:
    policy = load_policy(POLICIES / "default.toml")
    assert review_changes(policy, policy) == []


def test_each_change_is_judged_by_its_direction() -> None:
    before = parse_policy(
        "[commands]\nallow = ['ls', 'find']\n"
        "[commands.rules.find]\ndeny_args = ['-exec', '-execdir', '-ok', '-okdir', '-delete']\n"
    )
    after = parse_policy(
        "[limits]\nmemory_mb = 4096\n[sessions]\nwarm_pool = 5\n"
        "[commands]\nallow = ['find', 'wc']\n"
        "[commands.rules.find]\ndeny_args = ['-exec', '-execdir', '-ok', '-okdir']\n"
        "[python]\npreload = ['numpy']\n"
    )
    lines = review(before, after)
    assert "limits.memory_mb: 2048 → 4096 (looser)" in lines
    assert "sessions.warm_pool: 2 → 5 (changed)" in lines
    assert "commands.allow: added wc (looser)" in lines
    assert "commands.allow: removed ls (tighter)" in lines
    assert "commands.rules.find.deny_args: removed -delete (looser)" in lines
    assert 'python.preload: ["numpy", "pandas", "matplotlib"] → ["numpy"] (changed)' in lines
