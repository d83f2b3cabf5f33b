"""Which pip lines a session may run, and what pip then gets (sandbox/pip_arguments.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.pip_arguments import PipRefused, check_install, check_line
from sandbox.policy import Packages

INDEX = "https://index.invalid/simple"
POLICY = Packages(install="index", index_url=INDEX)


def check(line: str, workspace: Path, policy: Packages = POLICY) -> list[str]:
    return check_line(line, str(workspace), str(workspace), policy).arguments


def refused(line: str, workspace: Path, policy: Packages = POLICY) -> str:
    with pytest.raises(PipRefused) as caught:
        check(line, workspace, policy)
    return caught.value.option


@pytest.mark.parametrize(
    "line",
    ["pip install x", "pip3 install x", "python -m pip install x", "python3.11 -m pip install x"],
)
def test_every_spelling_of_pip_install_gives_its_requirements(line: str, tmp_path: Path) -> None:
    assert check(line, tmp_path) == ["x"]


def test_allowed_options_pass_in_their_long_form(tmp_path: Path) -> None:
    line = (
        "pip install -qU --no-deps --upgrade-strategy eager --timeout 30"
        " 'pandas>=2; python_version>\"3\"'"
    )
    assert check(line, tmp_path) == [
        "--quiet",
        "--upgrade",
        "--no-deps",
        "--upgrade-strategy=eager",
        "--timeout=30",
        'pandas>=2; python_version>"3"',
    ]


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("pip install --target /tmp/x y", "--target"),
        ("pip install -t/tmp/x y", "-t"),
        ("pip install --user y", "--user"),
        ("pip install --prefix=/usr y", "--prefix"),
        ("pip install --root / y", "--root"),
        ("pip install -e .", "-e"),
        ("pip install --editable=.", "--editable"),
        ("pip install --extra-index-url http://127.0.0.1/simple y", "--extra-index-url"),
        ("pip install --trusted-host 127.0.0.1 y", "--trusted-host"),
        ("pip install -i http://127.0.0.1/simple y", "--index-url"),
        ("pip install --targ /tmp/x y", "--targ"),  # pip would take the abbreviation
        ("pip install -qt /tmp y", "-t"),
        ("pip install git+https://127.0.0.1/r.git", "git+https://127.0.0.1/r.git"),
        ("pip install https://127.0.0.1/y.whl", "https://127.0.0.1/y.whl"),
        ("pip install 'y @ https://127.0.0.1/y.whl'", "y @ https://127.0.0.1/y.whl"),
        ("pip install /etc/passwd.whl", "/etc/passwd.whl"),
        ("pip install ../outside.whl", "../outside.whl"),
        ("pip install --no-binary :all: y", "--no-binary"),
        ("pip install -r /etc/requirements.txt", "/etc/requirements.txt"),
        ("pip install y && rm -rf x", "&&"),
        ("pip uninstall y", "pip uninstall"),
        ("pip download y", "pip download"),
        ("pip list --outdated", "--outdated"),
        ("pip list --index-url http://127.0.0.1/simple", "--index-url"),
        ("pip freeze -r /etc/requirements.txt", "-r"),
        ("pip show /etc/passwd", "/etc/passwd"),
        ("conda install y", "conda"),
    ],
)
def test_what_escapes_the_design_is_refused_naming_the_option(
    line: str, option: str, tmp_path: Path
) -> None:
    assert refused(line, tmp_path) == option


@pytest.mark.parametrize(
    ("line", "subcommand", "arguments"),
    [
        ("pip list", "list", []),
        ("pip list --format=json --not-required", "list", ["--format=json", "--not-required"]),
        ("pip freeze --all", "freeze", ["--all"]),
        ("pip show -f pandas", "show", ["-f", "pandas"]),
    ],
)
def test_the_read_only_subcommands_run_with_their_harmless_options(
    line: str, subcommand: str, arguments: list[str], tmp_path: Path
) -> None:
    checked = check_line(line, str(tmp_path), str(tmp_path), POLICY)
    assert (checked.subcommand, checked.arguments) == (subcommand, arguments)


def test_the_policys_own_index_may_be_named(tmp_path: Path) -> None:
    assert check(f"pip install -i {INDEX}/ y", tmp_path) == ["y"]


def test_source_builds_are_allowed_only_where_the_policy_allows_them(tmp_path: Path) -> None:
    sources = Packages(install="index", index_url=INDEX, only_binary=False)
    assert check("pip install --no-binary :all: y", tmp_path, sources) == ["--no-binary=:all:", "y"]
    assert check("pip install --only-binary=:all: y", tmp_path) == ["--only-binary=:all:", "y"]


def test_a_local_wheel_in_the_workspace_is_passed_as_an_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    assert check("pip install ./dist/y-1-py3-none-any.whl", tmp_path) == [
        str(tmp_path / "dist" / "y-1-py3-none-any.whl")
    ]


def test_a_link_out_of_the_workspace_is_outside_it(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to("/etc")
    assert refused("pip install -f out/ y", tmp_path) == "--find-links"


def test_a_requirement_file_is_checked_line_by_line_and_pip_gets_the_checked_copy(
    tmp_path: Path,
) -> None:
    (tmp_path / "requirements.txt").write_text(
        "# pinned\npandas==2.0 \\\n    --hash=sha256:abc\nrequests  # inline comment\n"
    )
    checked = check_line("pip install -r requirements.txt", str(tmp_path), str(tmp_path), POLICY)
    assert checked.arguments == ["--requirement", "requirements-0.txt"]
    assert checked.requirement_files == {
        "requirements-0.txt": "pandas==2.0 --hash=sha256:abc\nrequests\n"
    }


@pytest.mark.parametrize(
    "line",
    [
        "--extra-index-url http://127.0.0.1/simple",
        "-e .",
        "git+https://127.0.0.1/r.git",
        "-r other.txt",
        "--target /tmp",
        "../../escape.whl",
    ],
)
def test_a_requirement_file_cannot_carry_what_the_command_line_may_not(
    line: str, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "requirements.txt").write_text(f"ok\n{line}\n")
    refused("pip install -r sub/requirements.txt", tmp_path)


_OPTION_CHARACTERS = st.text(alphabet="-abcdefghijklmnopqrstuvwxyz=/.:", min_size=1, max_size=20)


@given(words=st.lists(_OPTION_CHARACTERS, min_size=1, max_size=6))
def test_whatever_pip_gets_is_a_known_option_or_a_requirement_inside_the_design(
    words: list[str],
) -> None:
    workspace = "/mnt/data"
    try:
        arguments = check_install(words, workspace, workspace, POLICY).arguments
    except PipRefused:
        return
    escapes = ("--target", "--user", "--prefix", "--root", "--editable", "--extra-index-url")
    for argument in arguments:
        assert not argument.startswith(escapes)
        assert not argument.startswith("-") or argument.startswith("--")  # long forms only
        if argument.startswith("/"):
            assert argument.startswith(workspace + "/") or argument == workspace
        assert "://" not in argument


@pytest.mark.parametrize(
    "requirement", ["./pkg.tar.gz", "pkg.tar.gz", "./srcdir", ".", "dist/pkg.zip", "./a.whl/"]
)
def test_with_only_binary_a_local_source_is_refused_naming_the_key(
    requirement: str, tmp_path: Path
) -> None:
    (tmp_path / "srcdir").mkdir()
    (tmp_path / "a.whl").mkdir()  # a directory, whatever its name
    with pytest.raises(PipRefused) as caught:
        check(f"pip install {requirement}", tmp_path)
    assert caught.value.option == requirement
    assert "packages.only_binary" in str(caught.value)
    sources = Packages(install="index", index_url=INDEX, only_binary=False)
    assert check(f"pip install {requirement}", tmp_path, sources)


def test_with_only_binary_a_requirement_file_cannot_name_a_local_source(tmp_path: Path) -> None:
    (tmp_path / "req.txt").write_text("./pkg.tar.gz\n")
    with pytest.raises(PipRefused) as caught:
        check("pip install -r req.txt", tmp_path)
    assert "packages.only_binary" in str(caught.value)
