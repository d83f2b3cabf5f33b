"""The index a session's pip installs from when the policy names none: the host's."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sandbox.errors import PolicyError
from sandbox.package_index import for_sessions, host_index_url
from sandbox.policy import Packages, Policy, parse_policy


def environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A host whose home and XDG directories are empty temporary ones."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        **variables,
    }


def config(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_the_file_pip_config_file_names_gives_the_index(tmp_path: Path) -> None:
    named = config(tmp_path / "pip.conf", "[global]\nindex-url = http://mirror.invalid/simple\n")
    assert host_index_url(environment(tmp_path, PIP_CONFIG_FILE=named)) == (
        "http://mirror.invalid/simple"
    )


def test_install_section_wins_over_global_and_the_variable_over_every_file(
    tmp_path: Path,
) -> None:
    named = config(
        tmp_path / "pip.conf",
        "[global]\nindex-url = http://global.invalid/simple\n"
        "[install]\nindex_url = http://install.invalid/simple\n",
    )
    env = environment(tmp_path, PIP_CONFIG_FILE=named)
    assert host_index_url(env) == "http://install.invalid/simple"
    env["PIP_INDEX_URL"] = "http://variable.invalid/simple"
    assert host_index_url(env) == "http://variable.invalid/simple"


def test_the_users_file_counts_and_the_explicit_file_overrides_it(tmp_path: Path) -> None:
    env = environment(tmp_path)
    config(
        Path(env["XDG_CONFIG_HOME"]) / "pip" / "pip.conf",
        "[global]\nindex-url = http://user.invalid/s\n",
    )
    assert host_index_url(env) == "http://user.invalid/s"
    named = config(tmp_path / "other.conf", "[global]\nindex-url = http://named.invalid/s\n")
    assert host_index_url({**env, "PIP_CONFIG_FILE": named}) == "http://named.invalid/s"


def test_devnull_skips_every_file_and_pip_s_own_default_is_used(tmp_path: Path) -> None:
    env = environment(tmp_path, PIP_CONFIG_FILE=os.devnull)
    config(
        Path(env["XDG_CONFIG_HOME"]) / "pip" / "pip.conf",
        "[global]\nindex-url = http://user.invalid/s\n",
    )
    default = host_index_url(env)
    assert default != "http://user.invalid/s"
    assert default.startswith("https://")  # whatever pip ships, read from pip itself


def test_an_unreadable_file_is_skipped(tmp_path: Path) -> None:
    broken = config(tmp_path / "broken.conf", "index-url with no section\n")
    assert host_index_url(environment(tmp_path, PIP_CONFIG_FILE=broken)).startswith("https://")


def test_workers_get_the_host_index_only_where_the_policy_names_none(tmp_path: Path) -> None:
    named = config(tmp_path / "pip.conf", "[global]\nindex-url = http://host.invalid/simple\n")
    env = environment(tmp_path, PIP_CONFIG_FILE=named)
    on = Policy(packages=Packages(install="index"))
    assert for_sessions(on, env).packages.index_url == "http://host.invalid/simple"
    own = Policy(packages=Packages(install="index", index_url="file:///mnt/data/index"))
    assert for_sessions(own, env) is own
    off = Policy()
    assert for_sessions(off, env) is off


def test_a_host_index_the_network_does_not_reach_is_logged_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    named = config(tmp_path / "pip.conf", "[global]\nindex-url = https://host.invalid/simple\n")
    env = environment(tmp_path, PIP_CONFIG_FILE=named)
    resolved = for_sessions(Policy(packages=Packages(install="index")), env)
    assert resolved.packages.index_url == "https://host.invalid/simple"
    assert "packages.index_url" in caplog.text
    assert 'network.mode is "off"' in caplog.text


SECRET_INDEX = "https://user:s3cret@index.example/simple?token=s3cret"


def test_credentials_in_the_host_index_never_reach_sessions_nor_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    named = config(tmp_path / "pip.conf", f"[global]\nindex-url = {SECRET_INDEX}\n")
    env = environment(tmp_path, PIP_CONFIG_FILE=named)
    with caplog.at_level(logging.DEBUG):
        resolved = for_sessions(Policy(packages=Packages(install="index")), env)
    assert resolved.packages.index_url == "https://index.example/simple"
    assert "s3cret" not in resolved.model_dump_json()
    assert "s3cret" not in caplog.text
    assert all("s3cret" not in str(record.args) for record in caplog.records)
    assert "index.example" in caplog.text  # the warning names the host
    assert "credentials" in caplog.text


def test_an_unreachable_host_index_is_logged_without_its_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = environment(tmp_path, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=SECRET_INDEX)
    with caplog.at_level(logging.DEBUG):
        for_sessions(Policy(packages=Packages(install="index")), env)
    assert 'network.mode is "off"' in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cret@mirror.invalid/simple",
        "https://s3cret@mirror.invalid/simple",
        "https://mirror.invalid/simple?token=s3cret",
        "file://user:s3cret@/mnt/data/index",
    ],
)
def test_a_policy_index_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    text = NETWORKED + f'[packages]\ninstall = "index"\nindex_url = "{url}"\n'
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "p.toml")
    assert "packages.index_url" in str(error.value)
    assert "credentials" in str(error.value)
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    "url", ["ftp://user:s3cret@mirror.invalid/", "https://user:s3cret@mirror.invalid:99999/s"]
)
def test_other_index_url_problems_do_not_echo_credentials(url: str) -> None:
    text = NETWORKED + f'[packages]\ninstall = "index"\nindex_url = "{url}"\n'
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "p.toml")
    assert "packages.index_url" in str(error.value)
    assert "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[packages]\ninstall = "pip"\n', "packages.install"),
        (
            '[packages]\ninstall = "index"\nindex_url = "ftp://mirror.invalid/"\n',
            "packages.index_url",
        ),
        ('[packages]\nindex_url = "http://has space.invalid/"\n', "packages.index_url"),
        ('[packages]\nonly_binary = "yes"\n', "packages.only_binary"),
        ('[packages]\nextra_index_url = "http://x.invalid/"\n', "packages.extra_index_url"),
    ],
)
def test_a_wrong_packages_key_is_refused_naming_it(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "p.toml")
    assert key in str(error.value)


def test_a_file_index_needs_no_network() -> None:
    policy = parse_policy('[packages]\ninstall = "index"\nindex_url = "file:///mnt/data/index"\n')
    assert policy.packages.index_url == "file:///mnt/data/index"


NETWORKED = (
    "[isolation]\nrequired = ['namespaces']\npreferred = []\n"
    "[network]\nmode = 'allowlist'\nallow = ['mirror.invalid', '10.0.0.5:8080']\n"
)


@pytest.mark.parametrize(
    "url",
    ["https://mirror.invalid/simple", "http://mirror.invalid/simple", "http://10.0.0.5:8080/s"],
)
def test_an_http_index_the_network_allows_is_accepted(url: str) -> None:
    policy = parse_policy(NETWORKED + f'[packages]\ninstall = "index"\nindex_url = "{url}"\n')
    assert policy.packages.index_url == url


@pytest.mark.parametrize(
    ("network", "url", "reason"),
    [
        ("", "https://mirror.invalid/simple", 'network.mode is "off"'),
        (NETWORKED, "https://other.invalid/simple", "other.invalid:443 is not in network.allow"),
        (NETWORKED, "http://10.0.0.5/simple", "10.0.0.5:80 is not in network.allow"),
    ],
)
def test_an_http_index_out_of_the_networks_reach_is_refused_naming_the_key(
    network: str, url: str, reason: str
) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(network + f'[packages]\ninstall = "index"\nindex_url = "{url}"\n')
    assert "packages.index_url" in str(error.value)
    assert reason in str(error.value)
