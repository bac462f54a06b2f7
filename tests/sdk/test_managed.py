"""Managed mode (printernizer_stats.sdk.managed): the host runs the agent as a
supervised child process. Real processes throughout: the agent is
`python -m printernizer_stats.agent`, the hosts of the exit tests are Python
subprocesses."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.sdk import PrinterType, StatsClient
from printernizer_stats.sdk import managed as managed_module
from printernizer_stats.sdk.managed import ManagedAgent

from ..agent_harness import agent_dir  # noqa: F401

QUIET = ["--log-format", "text", "--log-level", "WARNING"]


def status(socket_path: Path) -> agent_service_pb2.GetStatusResponse:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        reply: agent_service_pb2.GetStatusResponse = agent_service_pb2_grpc.AgentServiceStub(
            channel
        ).GetStatus(agent_service_pb2.GetStatusRequest(), timeout=10)
        return reply


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(condition: object, timeout: float) -> float:
    """Seconds until `condition()` held (fails after `timeout`)."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def managed(agent_dir: Path) -> Iterator[ManagedAgent]:  # noqa: F811
    agent = ManagedAgent(agent_dir / "data", timezone="Europe/Vienna", options=QUIET)
    try:
        yield agent
    finally:
        agent.stop()


def test_the_host_starts_its_agent_and_records_through_it(managed: ManagedAgent, agent_dir: Path) -> None:  # noqa: F811
    started = time.monotonic()
    assert managed.start()
    assert time.monotonic() - started < 0.1  # start() returns at once
    assert managed.wait_until_serving(30)
    # The agent's files are where the host keeps its data; the socket's directory is private.
    assert managed.db_path == agent_dir / "data" / "printernizer-stats" / "agent.db"
    assert managed.socket_path.parent.stat().st_mode & 0o777 == 0o750
    assert managed.agent_dir.stat().st_mode & 0o777 == 0o700
    assert managed.command()[7:9] == ["--timezone", "Europe/Vienna"]
    client = StatsClient(managed.socket_path)
    try:
        for _ in range(3):
            client.job_created(PrinterType.BAMBU_LAB)
        assert client.flush(10)
    finally:
        client.close()
    wait_for(lambda: status(managed.socket_path).stored_events == 3, 10)
    assert managed.db_path.exists()
    assert not managed.start()  # once is enough


def test_a_killed_agent_is_back_within_a_second_and_events_flow_again(managed: ManagedAgent) -> None:
    managed.start()
    assert managed.wait_until_serving(30)
    client = StatsClient(managed.socket_path)
    try:
        client.job_created(PrinterType.PRUSA)
        assert client.flush(10)
        first = managed.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        restarted = wait_for(lambda: managed.pid not in (None, first), 2)
        assert restarted < 1.0, restarted
        assert managed.wait_until_serving(10)
        assert managed.restarts == 1
        client.job_created(PrinterType.PRUSA)
        assert client.flush(10)
    finally:
        client.close()
    assert status(managed.socket_path).stored_events == 2  # the same database: nothing lost


@pytest.mark.processes
def test_an_agent_that_keeps_crashing_is_given_up_after_the_bound(
    agent_dir: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An option the agent refuses: it exits at once, every time.
    agent = ManagedAgent(
        agent_dir / "data",
        options=["--retention-days", "0"],
        max_restarts=3,
        restart_window=60,
        first_backoff=0.05,
    )
    with caplog.at_level(logging.INFO, logger=managed_module.__name__):
        try:
            assert agent.start()
            wait_for(lambda: not agent.supervising, 30)
        finally:
            agent.stop()
    assert agent.gave_up
    assert agent.restarts == 3
    assert agent.pid is None
    giving_up = [r for r in caplog.records if "giving up" in r.getMessage()]
    assert len(giving_up) == 1  # said once
    assert giving_up[0].levelno == logging.ERROR


def test_do_not_track_starts_nothing(
    agent_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    agent = ManagedAgent(agent_dir / "data")
    with caplog.at_level(logging.INFO, logger=managed_module.__name__):
        assert not agent.start()
        assert not agent.start()
    assert not agent.supervising
    assert agent.pid is None
    assert not (agent_dir / "data").exists()
    assert "DO_NOT_TRACK" in agent.not_started_reason
    assert sum("DO_NOT_TRACK" in r.getMessage() for r in caplog.records) >= 1


@pytest.mark.processes
def test_no_agent_installed_starts_nothing(
    agent_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    agent = ManagedAgent(agent_dir / "data")
    assert not agent.start()
    assert "not installed" in agent.not_started_reason
    # Another interpreter without the agent (the agent's own environment missing).
    monkeypatch.undo()
    other = ManagedAgent(agent_dir / "data", python="/usr/bin/python3")
    if not Path(other.python).exists():
        pytest.skip("no /usr/bin/python3 to stand for an interpreter without the agent")
    probe = subprocess.run([other.python, "-c", "import printernizer_stats.agent"], check=False)
    if probe.returncode == 0:
        pytest.skip("/usr/bin/python3 has the agent installed")
    assert other.start()
    wait_for(lambda: not other.supervising, 30)
    assert "not installed" in other.not_started_reason
    assert other.pid is None


def test_a_second_host_process_uses_the_agent_already_serving(managed: ManagedAgent) -> None:
    managed.start()
    assert managed.wait_until_serving(30)
    second = ManagedAgent(managed.data_dir, socket_path=managed.socket_path, options=QUIET)
    try:
        assert second.start()
        time.sleep(1.5)
        assert second.pid is None
        assert second.restarts == 0
        assert second.supervising  # and it takes over if the first one's agent goes away
    finally:
        second.stop()


HOST = textwrap.dedent(
    """
    import signal, sys, time
    from printernizer_stats.sdk.managed import ManagedAgent
    how = sys.argv[2]
    if how == "own-handler":
        def handler(signum, frame):
            print("host handler", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, handler)
    agent = ManagedAgent(sys.argv[1], options={quiet!r})
    agent.start()
    assert agent.wait_until_serving(30)
    print(agent.pid, flush=True)
    if how == "exit":
        sys.exit(0)
    time.sleep(60)
    """
)


@pytest.mark.processes
@pytest.mark.parametrize("how", ["exit", "sigterm", "own-handler", "sigkill"])
def test_the_agent_ends_with_its_host(how: str, agent_dir: Path) -> None:  # noqa: F811
    script = agent_dir / "host.py"
    script.write_text(HOST.format(quiet=QUIET))
    host = subprocess.Popen(
        [sys.executable, str(script), str(agent_dir / "data"), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        pid = int(host.stdout.readline())
        assert alive(pid)
        if how == "sigterm" or how == "own-handler":
            host.send_signal(signal.SIGTERM)
        elif how == "sigkill":
            host.kill()
        host.wait(30)
        if how == "own-handler":
            assert host.stdout.read().strip() == "host handler"  # the host's handler still ran
            assert host.returncode == 0
        wait_for(lambda: not alive(pid), 15)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
