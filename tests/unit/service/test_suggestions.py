"""Each suggestion rule: when it fires, and that it names the active policy's real limits."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from sandbox.policy import Policy, parse_policy
from sandbox.protocol import ErrorHint
from service.suggestions import RULES, Outcome, quiet, suggest

POLICY = parse_policy(
    """
[limits]
wall_timeout_s = 5
max_timeout_s = 17
memory_mb = 777
output_chars = 1234

[python]
preload = ["numpy", "pandas", "matplotlib"]

[commands]
allow = ["ls", "cat", "grep"]
"""
)
CLEAN = Outcome(
    kind="python",
    status="ok",
    exc_type=None,
    error=None,
    limit=None,
    denied_rule=None,
    truncated=False,
    restarted=False,
    exit_code=None,
)


def outcome(**changes: object) -> Outcome:
    return dataclasses.replace(CLEAN, **changes)  # type: ignore[arg-type]


def failed(exc_type: str, error: str, **changes: object) -> Outcome:
    return outcome(status="error", exc_type=exc_type, error=error, **changes)


def rule_for(case: Outcome, policy: Policy = POLICY) -> str | None:
    return next((rule.name for rule in RULES if rule.applies(case)), None)


def advice(case: Outcome, policy: Policy = POLICY) -> str:
    text = suggest(case, policy)
    assert text is not None
    return text


def test_a_clean_run_gets_no_suggestion() -> None:
    assert suggest(CLEAN, POLICY) is None


def test_denied_command_names_the_rule_and_what_is_allowed() -> None:
    case = outcome(kind="command", status="denied", denied_rule="allowlist")
    assert rule_for(case) == "denied"
    text = advice(case)
    assert "'allowlist' rule" in text
    assert "ls, cat, grep" in text
    assert "without a shell" in text


def test_a_refused_bang_line_in_a_cell_lists_the_allowed_programs() -> None:
    case = outcome(status="denied", denied_rule="allowlist", exc_type="CommandNotAllowed")
    assert rule_for(case) == "cell-command-denied"
    text = advice(case)
    assert "'allowlist' rule" in text
    assert "commands.allow" in text
    assert "ls, cat, grep" in text
    assert "/repl" not in text  # the caller is in /repl already


def test_pip_in_a_cell_says_installing_is_off_and_what_is_preinstalled() -> None:
    for kind in ("python", "command"):
        case = outcome(kind=kind, status="denied", denied_rule="packages")
        assert rule_for(case) == "packages-off"
        text = advice(case)
        assert "packages.install" in text
        assert "numpy, pandas, matplotlib" in text


def test_a_refused_pip_option_says_where_installs_come_from_and_go() -> None:
    for kind in ("python", "command"):
        case = outcome(kind=kind, status="denied", denied_rule="package-option")
        assert rule_for(case) == "package-option"
        text = advice(case)
        assert "packages.index_url" in text
        assert "site directory" in text


EGRESS_POLICY = parse_policy(
    "[isolation]\nrequired = ['namespaces']\npreferred = []\n"
    "[network]\nmode = 'allowlist'\nallow = ['data.example.org', '*.mirror.example']\n"
)


@pytest.mark.parametrize(
    "error",
    [
        # urllib, plain http: the proxy's status line.
        "urllib.error.HTTPError: HTTP Error 403: Forbidden by network.allow",
        # urllib and requests over CONNECT (https): the tunnel's status line.
        "URLError: <urlopen error Tunnel connection failed: 403 Forbidden by network.allow>",
        "ProxyError: ('Unable to connect to proxy', OSError('Tunnel connection failed: "
        "403 Forbidden by network.allow'))",
    ],
)
def test_a_proxy_refusal_names_network_allow_and_the_allowed_hosts(error: str) -> None:
    case = failed(error.split(":")[0], error, hint=ErrorHint(kind="network"))
    assert rule_for(case) == "egress-refused"
    text = advice(case, EGRESS_POLICY)
    assert "network.allow" in text
    assert "data.example.org, *.mirror.example" in text


def test_a_proxy_refusal_of_a_private_address_names_allow_private() -> None:
    case = failed("HTTPError", "HTTP Error 403: Forbidden by network.allow_private")
    text = advice(case, EGRESS_POLICY)
    assert "network.allow_private" in text
    assert "network.allow " not in text


def test_a_proxy_refusal_by_a_budget_names_its_key() -> None:
    case = failed("HTTPError", "HTTP Error 403: Forbidden by network.max_connections")
    assert "network.max_connections" in advice(case, EGRESS_POLICY)


def test_a_failed_connection_says_the_network_is_off_naming_the_key() -> None:
    case = failed("URLError", "URLError: <urlopen error>", hint=ErrorHint(kind="network"))
    assert rule_for(case) == "network"
    text = advice(case)
    assert "network is off" in text
    assert "network.mode" in text
    networked = parse_policy(
        "[isolation]\nrequired = ['namespaces']\npreferred = []\n"
        "[network]\nmode = 'allowlist'\nallow = ['data.example.org']\n"
    )
    assert "could not be reached" in advice(case, networked)
    assert "data.example.org" in advice(case, networked)


def test_a_key_error_on_a_dataframe_names_its_columns() -> None:
    hint = ErrorHint(kind="dataframe-columns", names=["a", "b", "c"], total=3)
    case = failed("KeyError", "KeyError: 'nope'", hint=hint)
    assert rule_for(case) == "dataframe-columns"
    assert "The DataFrame's columns are: a, b, c." in advice(case)


def test_a_dataframe_with_more_columns_than_the_hint_holds_says_how_many_more() -> None:
    hint = ErrorHint(kind="dataframe-columns", names=["c0", "c1"], total=502)
    text = advice(failed("KeyError", "KeyError: 'x'", hint=hint))
    assert "c0, c1 (and 500 more)" in text


def test_a_plain_key_error_is_an_ordinary_error() -> None:
    assert rule_for(failed("KeyError", "KeyError: 'x'")) == "python-error"


def test_a_subprocess_the_policy_refuses_lists_the_allowed_programs() -> None:
    hint = ErrorHint(kind="program-refused", names=["curl"], total=1)
    case = failed("PermissionError", "PermissionError: [Errno 13]: 'curl'", hint=hint)
    assert rule_for(case) == "program-refused"
    text = advice(case)
    assert "'curl' cannot run" in text
    assert "commands.allow" in text
    assert "ls, cat, grep" in text


def test_an_allowed_program_that_is_missing_is_said_to_be_missing() -> None:
    hint = ErrorHint(kind="program-refused", names=["grep"], total=1)
    case = failed("FileNotFoundError", "FileNotFoundError: 'grep'", hint=hint)
    assert rule_for(case) == "program-refused"
    assert "allowed but not installed" in advice(case)


def test_timeout_says_state_was_kept_and_gives_the_maximum() -> None:
    case = outcome(status="timeout", exc_type="KeyboardInterrupt", limit="wall")
    assert rule_for(case) == "timeout"
    text = advice(case)
    assert "variables were kept" in text
    assert "at most 17 s" in text


def test_memory_limit_suggests_chunks_and_dtypes_with_the_limit() -> None:
    for case in (
        failed("MemoryError", "MemoryError"),
        outcome(status="killed", limit="memory", restarted=True),
    ):
        assert rule_for(case) == "memory"
        text = advice(case)
        assert "777 MB" in text
        assert "chunks" in text
        assert "dtypes" in text


def test_killed_worker_says_files_were_kept_and_to_rerun_setup() -> None:
    case = outcome(status="killed", limit="signal", restarted=True)
    assert rule_for(case) == "killed"
    text = advice(case)
    assert "files in the workspace were kept" in text
    assert "Re-run your setup code" in text


def test_name_error_after_a_restart_says_rerun_setup() -> None:
    case = failed("NameError", "NameError: name 'df' is not defined", restarted=True)
    assert rule_for(case) == "name-after-restart"
    assert "re-run the setup code" in advice(case)


def test_a_figure_left_out_of_the_reply_points_at_its_link() -> None:
    case = outcome(truncated=True, outputs_linked=True)
    assert rule_for(case) == "picture-linked"
    assert "metadata.url" in advice(case)


def test_a_name_only_ipython_defines_is_not_blamed_on_a_restart() -> None:
    case = failed("NameError", "NameError: name 'get_ipython' is not defined", restarted=True)
    assert rule_for(case) == "ipython-name"
    assert "display(obj)" in advice(case)


def test_a_name_error_without_restart_is_an_ordinary_error() -> None:
    case = failed("NameError", "NameError: name 'df' is not defined")
    assert rule_for(case) == "python-error"


def test_missing_module_names_what_is_installed_that_could_serve() -> None:
    case = failed("ModuleNotFoundError", "ModuleNotFoundError: No module named 'seaborn'")
    assert rule_for(case) == "missing-module"
    text = advice(case)
    assert "Use matplotlib or pandas instead" in text
    assert "numpy, pandas, matplotlib" in text
    assert "network is off" in text


def test_missing_module_offers_only_what_the_policy_preloads() -> None:
    lean = parse_policy('[python]\npreload = ["numpy"]\n')
    case = failed("ModuleNotFoundError", "ModuleNotFoundError: No module named 'sklearn.linear'")
    text = advice(case, lean)
    assert "Use numpy instead" in text
    assert "pandas" not in text
    unknown = failed("ModuleNotFoundError", "ModuleNotFoundError: No module named 'torch'")
    assert "instead" not in advice(unknown, lean)


def test_a_network_client_module_says_the_network_is_off() -> None:
    case = failed("ModuleNotFoundError", "ModuleNotFoundError: No module named 'requests'")
    assert rule_for(case) == "network-module"
    text = advice(case)
    assert "network, which is off" in text
    assert "/mnt/data" in text


def test_file_not_found_says_to_list_the_workspace() -> None:
    case = failed("FileNotFoundError", "FileNotFoundError: [Errno 2] No such file: 'x.csv'")
    assert rule_for(case) == "file-not-found"
    text = advice(case)
    assert "/mnt/data" in text
    assert "ls -la" in text


@pytest.mark.parametrize("exc_type", ["SyntaxError", "IndentationError", "TabError"])
def test_syntax_error_explains_line_list_joining(exc_type: str) -> None:
    case = failed(exc_type, f"{exc_type}: invalid syntax")
    assert rule_for(case) == "syntax"
    assert "list of lines" in advice(case)


def test_an_interrupt_on_request_keeps_variables() -> None:
    case = failed("KeyboardInterrupt", "KeyboardInterrupt")
    assert rule_for(case) == "interrupted"
    assert "variables were kept" in advice(case)


def test_truncated_output_says_summarize_with_the_cap() -> None:
    case = outcome(truncated=True)
    assert rule_for(case) == "truncated"
    text = advice(case)
    assert "1234 characters" in text
    assert "summary" in text


def test_a_failed_command_points_at_stderr() -> None:
    case = outcome(kind="command", status="error", exit_code=2)
    assert rule_for(case) == "command-failed"
    assert "stderr" in advice(case)


def test_a_python_error_says_fix_and_that_variables_are_kept() -> None:
    case = failed("ValueError", "ValueError: bad")
    assert rule_for(case) == "python-error"
    assert "earlier variables are kept" in advice(case)


def test_every_rule_is_covered_by_a_test_above() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    untested = [rule.name for rule in RULES if f'== "{rule.name}"' not in source]
    assert untested == []


def _every_outcome() -> list[Outcome]:
    hint = ErrorHint(kind="network", names=[], total=0)
    grid = itertools.product(
        ["python", "command"],
        ["ok", "error", "timeout", "killed", "denied"],
        [None, "NameError", "MemoryError", "KeyboardInterrupt"],
        [None, "", "Forbidden by network.allow"],
        [None, "memory", "wall_time"],
        [None, "packages", "allowlist"],
        [False, True],
        [False, True],
        [None, 1],
        [None, hint],
        [False, True],
    )
    return [Outcome(*fields) for fields in grid]


def test_no_rule_applies_to_a_run_the_table_is_not_asked_about() -> None:
    # ``suggest`` skips the table for a quiet run: a rule that would speak there must
    # make ``quiet`` say so first.
    spoken = [case for case in _every_outcome() if quiet(case) and rule_for(case) is not None]
    assert spoken == []
