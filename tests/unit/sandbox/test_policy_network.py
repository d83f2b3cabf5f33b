"""The [network] section: its grammar, its checks, and the way from [isolation] network."""

from __future__ import annotations

import pytest

from sandbox import PolicyError
from sandbox.policy import parse_policy, policy_warnings
from sandbox.policy.review import service_address_refusals

EGRESS_LAYERS = "[isolation]\nrequired = ['namespaces']\npreferred = []\n"


def errors_of(text: str) -> str:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, "p.toml")
    return str(raised.value)


@pytest.mark.parametrize("old", ["false", "true"])
def test_isolation_network_is_refused_with_the_way_to_migrate(old: str) -> None:
    message = errors_of(f"[isolation]\nnetwork = {old}\n")
    assert message.startswith("p.toml: isolation.network: this key was replaced by the [network]")
    assert 'mode = "off"' in message
    assert 'mode = "allowlist"' in message
    assert "network.allow" in message


def test_the_default_is_no_network() -> None:
    network = parse_policy("").network
    assert (network.mode, network.allow, network.allow_private) == ("off", [], [])
    assert not network.enabled


def test_an_allowlist_with_every_kind_of_entry_loads() -> None:
    policy = parse_policy(
        EGRESS_LAYERS + "[network]\nmode = 'allowlist'\n"
        "allow = ['data.example.org', 'files.example.org:8443', '*.mirror.example', "
        "'10.1.2.3', '[2001:db8::1]:8080', '2001:db8::2']\n"
        "allow_private = ['10.1.2.0/24', 'fd00::/8']\n"
    )
    assert policy.network.enabled
    assert len(policy.network.allow) == 6


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("http://data.example.org", "is not"),
        ("data.example.org/path", "is not a host name"),
        ("data..example.org", "is not a host name"),
        ("data.example.org:0", "port '0'"),
        ("data.example.org:https", "port 'https'"),
        ("a*.example.org", "a wildcard is allowed only as a whole first label"),
        ("*.*.example.org", "a wildcard is allowed only as a whole first label"),
        ("under_score.example", "is not a host name"),
        ("", "is not a host name"),
    ],
)
def test_an_allow_entry_that_is_no_host_is_refused_naming_the_key(entry: str, reason: str) -> None:
    message = errors_of(EGRESS_LAYERS + f"[network]\nmode = 'allowlist'\nallow = [{entry!r}]\n")
    assert "p.toml: network.allow:" in message
    assert reason in message


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "10.0.0.0/33", "localhost", "127.0.0.1/"])
def test_an_allow_private_entry_that_is_no_cidr_is_refused(cidr: str) -> None:
    message = errors_of(EGRESS_LAYERS + f"[network]\nallow_private = [{cidr!r}]\n")
    assert "p.toml: network.allow_private:" in message
    assert "is not a CIDR" in message


def test_allow_everything_needs_a_stated_reason() -> None:
    message = errors_of(EGRESS_LAYERS + "[network]\nmode = 'allowlist'\nallow = ['*']\n")
    assert "p.toml: network.allow: '*' allows every public host" in message
    assert "allow_all_reason" in message
    reasoned = parse_policy(
        EGRESS_LAYERS + "[network]\nmode = 'allowlist'\nallow = ['*']\n"
        "allow_all_reason = 'a research cluster with its own egress firewall'\n"
    )
    warnings = {w.key: w.message for w in policy_warnings(reasoned)}
    assert "a research cluster" in warnings["network.allow"]


def test_an_allowlist_needs_the_network_namespace_required() -> None:
    message = errors_of("[network]\nmode = 'allowlist'\nallow = ['data.example.org']\n")
    assert "p.toml: network.mode: namespaces is not in isolation.required" in message


def test_a_budget_must_be_positive() -> None:
    message = errors_of("[network]\nmax_connections = 0\n")
    assert "p.toml: network.max_connections: must be greater than 0, not 0" in message


def test_allow_private_over_metadata_or_loopback_is_warned_about() -> None:
    policy = parse_policy(
        EGRESS_LAYERS + "[network]\nmode = 'allowlist'\nallow = ['h.example']\n"
        "allow_private = ['169.254.0.0/16', '127.0.0.0/8']\n"
    )
    messages = [w.message for w in policy_warnings(policy) if w.key == "network.allow_private"]
    assert any("cloud metadata" in message for message in messages)
    assert any("covers loopback" in message for message in messages)


@pytest.mark.parametrize(
    ("cidrs", "listen", "refused"),
    [
        (["127.0.0.1/32"], "127.0.0.1", True),
        (["127.0.0.0/8"], "127.0.0.1", True),
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "0.0.0.0", False),
        (["127.0.0.0/8"], "0.0.0.0", True),  # every address: loopback included
        (["::1/128"], "::", True),
        (["127.0.0.1/32"], "10.1.2.3", False),
        (["10.9.0.0/16"], "127.0.0.1", False),
    ],
)
def test_check_refuses_allow_private_over_the_services_own_address(
    cidrs: list[str], listen: str, refused: bool
) -> None:
    policy = parse_policy(
        EGRESS_LAYERS + f"[network]\nmode = 'allowlist'\nallow = ['h.example']\n"
        f"allow_private = {cidrs!r}\n"
    )
    assert bool(service_address_refusals(policy, listen)) == refused


def test_with_the_network_off_allow_private_refuses_nothing() -> None:
    policy = parse_policy("[network]\nallow_private = ['127.0.0.1/32']\n")
    assert service_address_refusals(policy, "127.0.0.1") == []
