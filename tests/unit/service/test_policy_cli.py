"""`codesherpa policy check|show|diff|docs`: what reviewers and operators run."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

from sandbox import load_policy
from service.cli import main

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = str(ROOT / "policies" / "default.toml")
STRICT = str(ROOT / "policies" / "strict.toml")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    code = exit_.value.code
    assert isinstance(code, int)
    return code, out, err


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


def test_check_accepts_a_valid_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policy", "check", STRICT], capsys)
    assert (code, out) == (0, f"{STRICT}: ok\n")


def test_check_names_a_typo_with_file_key_and_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[limits]\nwall_timeout = 3\nmemory_mb = -1\n")
    code, out, err = run(["policy", "check", path], capsys)
    assert code == 1
    assert out == ""
    assert f"{path}: limits.wall_timeout: unknown key (did you mean 'wall_timeout_s'?)" in err
    assert f"{path}: limits.memory_mb: must be greater than 0, not -1" in err


def test_check_refuses_a_launcher_the_policy_does_not_allow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[commands]\nallow = ['ls', 'xargs']\n")
    code, _, err = run(["policy", "check", path], capsys)
    assert code == 1
    assert f"{path}: commands.allow: 'xargs' is a launcher" in err


def test_check_warns_about_allowed_launchers_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[commands]\nallow = ['sh', 'env']\nlaunchers_allowed = true\n")
    code, out, err = run(["policy", "check", path], capsys)
    assert code == 0
    assert out == f"{path}: ok (2 warnings)\n"
    assert f"{path}: commands.allow: warning: 'sh' is a launcher: a shell runs" in err
    assert f"{path}: commands.allow: warning: 'env' is a launcher: runs any program" in err


def test_check_of_a_missing_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["policy", "check", str(tmp_path / "absent.toml")], capsys)
    assert code == 1
    assert "cannot read policy" in err


def test_show_json_fills_in_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[limits]\nmemory_mb = 1024\n")
    code, out, _ = run(["policy", "show", "--policy", path, "--json"], capsys)
    shown = json.loads(out)
    assert code == 0
    assert shown["limits"]["memory_mb"] == 1024
    assert shown["limits"]["wall_timeout_s"] == 30
    assert shown["commands"]["launchers_allowed"] is False


def test_show_text_names_the_file_and_hash(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policy", "show", "--policy", DEFAULT], capsys)
    assert code == 0
    assert out.startswith(f"# effective policy from {DEFAULT} (hash ")
    assert "\n[limits]\nwall_timeout_s = 30" in out


@pytest.mark.parametrize("preset", ["default", "strict", "dev", "container"])
def test_show_prints_toml_that_check_accepts_and_loads_to_the_same_policy(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = str(ROOT / "policies" / f"{preset}.toml")
    code, out, _ = run(["policy", "show", "--policy", source], capsys)
    assert code == 0
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    code, checked, _ = run(["policy", "check", str(shown)], capsys)
    assert code == 0, checked
    assert load_policy(str(shown)) == load_policy(source)


def test_version_names_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"codesherpa {version('codesherpa')}"


def test_diff_default_strict_reads_as_a_review(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policy", "diff", DEFAULT, STRICT], capsys)
    assert code == 0
    assert out.startswith(f"# {DEFAULT} (")
    assert "limits.memory_mb: 2048 → 1024 (tighter)\n" in out
    assert out.rstrip().endswith("0 looser, 1 changed")


def test_diff_of_a_policy_with_itself(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policy", "diff", DEFAULT, DEFAULT], capsys)
    assert code == 0
    assert out.splitlines()[-1] == "no differences"


def test_diff_with_a_broken_policy_fails_with_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[limits]\nwall = 1\n")
    code, out, err = run(["policy", "diff", DEFAULT, path], capsys)
    assert (code, out) == (1, "")
    assert f"{path}: limits.wall: unknown key" in err


def test_docs_prints_the_committed_reference(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["policy", "docs"], capsys)
    assert code == 0
    assert out == (ROOT / "docs" / "POLICY.md").read_text(encoding="utf-8")


EGRESS = (
    "[isolation]\nrequired = ['namespaces']\npreferred = []\n"
    "[network]\nmode = 'allowlist'\nallow = ['127.0.0.1:9000']\nallow_private = ['127.0.0.1/32']\n"
)


def test_check_refuses_allow_private_covering_the_services_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, EGRESS)
    code, out, err = run(["policy", "check", path], capsys)
    assert (code, out) == (1, "")
    assert f"{path}: network.allow_private: 127.0.0.1/32 covers 127.0.0.1" in err
    # A service listening elsewhere: the test servers on loopback are not its neighbours.
    code, out, err = run(["policy", "check", path, "--listen", "10.1.2.3"], capsys)
    assert code == 0
    assert out.startswith(f"{path}: ok")
    assert "covers loopback" in err  # still worth a reviewer's second look


def test_check_refuses_allow_everything_without_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, EGRESS.replace("'127.0.0.1:9000'", "'*'"))
    code, _, err = run(["policy", "check", path, "--listen", "10.1.2.3"], capsys)
    assert code == 1
    assert "network.allow: '*' allows every public host" in err


def test_diff_puts_network_changes_first_and_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = write(tmp_path, "[limits]\nmemory_mb = 1024\n")
    after_path = tmp_path / "after.toml"
    after_path.write_text(EGRESS + "[limits]\nmemory_mb = 512\n")
    code, out, _ = run(["policy", "diff", before, str(after_path)], capsys)
    assert code == 0
    lines = out.splitlines()[1:]
    assert lines[0] == (
        'NETWORK network.mode: "off" → "allowlist" (looser); '
        "NETWORK ON: sessions reach network.allow through the egress proxy"
    )
    assert lines[1] == "NETWORK network.allow: added 127.0.0.1:9000 (looser)"
    assert lines[2] == "NETWORK network.allow_private: added 127.0.0.1/32 (looser)"
    assert "limits.memory_mb: 1024 → 512 (tighter)" in lines[4:]
