"""The trainer policy (rollout._trainer.policy): which trainers an init may name, and which
addresses a connection may reach (docs/PROTOCOL.md §8: no SSRF)."""

from __future__ import annotations

import ipaddress

import pytest

from rollout import ServerConfig
from rollout._trainer.policy import HostEntry, TrainerPolicy, parse_allow_entry

DEFAULT = TrainerPolicy()


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("trainer.internal", False),
        ("169.254.169.254", True),
        ("169.254.1.1", True),
        ("::ffff:169.254.169.254", True),
        ("fd00:ec2::254", True),
        ("fe80::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("224.0.0.1", True),
        ("100.100.100.200", True),
    ],
)
def test_the_default_policy_refuses_only_link_local_and_metadata(host: str, refused: bool) -> None:
    assert (DEFAULT.refusal(host, 80) is not None) is refused


def test_an_allow_list_allows_only_its_entries() -> None:
    policy = TrainerPolicy.from_entries(["trainer-1:8000", "10.0.0.0/8", "[::1]:9000"])
    assert policy.refusal("trainer-1", 8000) is None
    assert policy.refusal("TRAINER-1.", 8000) is None
    assert policy.refusal("trainer-1", 8001) is not None
    assert policy.refusal("10.9.9.9", 1234) is None
    assert policy.refusal("11.0.0.1", 80) is not None
    assert policy.refusal("::1", 9000) is None
    assert policy.refusal("::1", 9001) is not None
    # A host name not listed passes the init when there are networks: checked on connect.
    assert policy.refusal("elsewhere", 80) is None
    address = ipaddress.ip_address
    assert policy.address_refusal("elsewhere", 80, address("10.0.0.7")) is None
    assert "not in the trainer allow-list" in str(
        policy.address_refusal("elsewhere", 80, address("192.168.0.7"))
    )
    # A named host may resolve anywhere but to the always-refused addresses.
    assert policy.address_refusal("trainer-1", 8000, address("192.168.0.7")) is None
    assert policy.address_refusal("trainer-1", 8000, address("169.254.169.254")) is not None


def test_only_names_means_other_names_are_refused_at_init() -> None:
    policy = TrainerPolicy.from_entries(["trainer-1"])
    assert policy.refusal("trainer-2", 80) is not None
    assert policy.refusal("trainer-1", 443) is None


def test_an_explicit_entry_wins_over_the_always_refused_addresses() -> None:
    policy = TrainerPolicy.from_entries(["169.254.10.0/24"])
    assert policy.refusal("169.254.10.5", 80) is None
    assert policy.refusal("169.254.169.254", 80) is not None


@pytest.mark.parametrize("entry", ["", "a b", "host:0", "host:99999", "host:x", "[::1]x", "u@h"])
def test_a_bad_entry_is_a_clear_error(entry: str) -> None:
    with pytest.raises(ValueError, match=r"allow-list entry|empty"):
        parse_allow_entry(entry)
    with pytest.raises(ValueError, match=r"allow-list entry|empty"):
        ServerConfig(allow_trainers=(entry,))


def test_entries_parse() -> None:
    assert parse_allow_entry("Trainer.Example:8443") == HostEntry("trainer.example", 8443)
    assert parse_allow_entry("10.0.0.1") == ipaddress.ip_network("10.0.0.1/32")
    assert parse_allow_entry("[::1]:80") == HostEntry("::1", 80)
