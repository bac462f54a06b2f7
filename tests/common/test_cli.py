"""Every service answers --help and takes each option from a flag or from the
environment (the flag wins), with clear errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from printernizer_stats.agent.__main__ import build_parser as agent_parser
from printernizer_stats.aggregation.__main__ import build_parser as aggregation_parser
from printernizer_stats.analytics.__main__ import build_parser as analytics_parser
from printernizer_stats.gateway.__main__ import build_parser as gateway_parser

SERVICES = [
    "printernizer_stats.agent",
    "printernizer_stats.aggregation",
    "printernizer_stats.analytics",
    "printernizer_stats.gateway",
]


@pytest.mark.processes
@pytest.mark.parametrize("service", SERVICES)
def test_help_works_from_a_fresh_interpreter(service: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", service, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: {service}" in result.stdout
    assert "[env: " in result.stdout


def test_agent_options_come_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATS_AGENT_SOCKET", "/run/x/agent.sock")
    monkeypatch.setenv("STATS_AGENT_RETENTION_DAYS", "30")
    monkeypatch.setenv("STATS_AGENT_DISABLE", "yes")
    args = agent_parser().parse_args([])
    assert args.socket == "/run/x/agent.sock"
    assert args.retention_days == 30
    assert args.disable is True


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGGREGATION_SERVER_LISTEN", "0.0.0.0:1")
    args = aggregation_parser().parse_args(["--listen", "127.0.0.1:9999"])
    assert args.listen == "127.0.0.1:9999"


def test_defaults_live_under_the_users_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/data/home")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    for name in list(os.environ):
        if name.startswith("STATS_AGENT_"):
            monkeypatch.delenv(name)
    args = agent_parser().parse_args([])
    assert args.db == "/data/home/printernizer-stats/agent.db"
    assert args.socket == "/data/home/printernizer-stats/run/agent.sock"


@pytest.mark.parametrize(
    ("parser", "argv", "message"),
    [
        (analytics_parser, ["--listen", "nohost"], "expected HOST:PORT"),
        (gateway_parser, ["--analytics", "host:99999"], "expected HOST:PORT"),
        (analytics_parser, ["--min-group-size", "0"], "expected a positive integer"),
        (agent_parser, ["--retention-days", "-3"], "expected a positive integer"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(
    parser, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_value_is_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANALYTICS_SERVER_MIN_GROUP_SIZE", "lots")
    with pytest.raises(SystemExit) as exited:
        analytics_parser()
    assert exited.value.code == 2
    assert "ANALYTICS_SERVER_MIN_GROUP_SIZE='lots' is invalid" in capsys.readouterr().err
