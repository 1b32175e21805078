"""What ``rollout serve`` checks of its host at start (rollout._cli.host): open files and
local ports enough for every running rollout's connection to its trainer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rollout._cli import host
from rollout._cli.host import capacity_warnings, ephemeral_ports, warn_capacity

DEFAULT_RANGE = (32768, 60999)  # Linux's default: 28,232 ports, 14,116 of connect()'s parity


def test_a_host_with_room_for_every_call_gets_no_warning() -> None:
    assert capacity_warnings(64, open_files=1024, ports=DEFAULT_RANGE) == []
    assert capacity_warnings(14_116, open_files=20_000, ports=DEFAULT_RANGE) == []
    assert capacity_warnings(20_000, open_files=None, ports=(1024, 65535)) == []
    assert capacity_warnings(10**6, open_files=None, ports=None) == []


def test_an_open_files_limit_below_max_concurrent_is_named_with_both_figures() -> None:
    (warning,) = capacity_warnings(5_000, open_files=1_024, ports=None)
    assert "open-files limit (1,024)" in warning
    assert "--max-concurrent (5,000)" in warning


def test_calls_past_half_the_port_range_are_warned_of_with_the_sysctl() -> None:
    (warning,) = capacity_warnings(14_117, open_files=None, ports=DEFAULT_RANGE)
    assert "14,117 rollouts" in warning
    assert "32768-60999" in warning
    assert "14,116 ports" in warning
    assert "28,232 before connections fail" in warning
    assert "net.ipv4.ip_local_port_range" in warning


def test_the_port_range_is_shared_by_every_worker_the_open_files_limit_is_not() -> None:
    assert capacity_warnings(8_000, open_files=10_000, ports=DEFAULT_RANGE) == []
    (warning,) = capacity_warnings(8_000, processes=2, open_files=10_000, ports=DEFAULT_RANGE)
    assert "16,000 rollouts" in warning


def test_the_port_range_is_read_from_the_kernel_or_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ip_local_port_range"
    monkeypatch.setattr(host, "PORT_RANGE_FILE", path)
    assert ephemeral_ports() is None  # no such file: not Linux
    path.write_text("32768\t60999\n")
    assert ephemeral_ports() == DEFAULT_RANGE
    path.write_text("garbage\n")
    assert ephemeral_ports() is None


def test_warn_capacity_logs_each_warning_and_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("32768 60999\n")
    monkeypatch.setattr(host, "PORT_RANGE_FILE", path)
    monkeypatch.setattr(host, "raise_open_files_limit", lambda: 100)
    with caplog.at_level(logging.WARNING, logger="rollout"):
        warn_capacity(10_000, processes=2)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "open-files limit (100)" in messages[0]
    assert "20,000 rollouts" in messages[1]
