"""The real processes on a simulated clock (docs/operations.md): refused unless
STATS_TESTING=1, and with it an agent and an aggregation server deliver many
simulated weeks, with the server down for some of them, without a restart of
the agent and without waiting a week."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.common.clock import TESTING_ENVIRONMENT, SimulatedClock, SystemClock, clock_from
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import Week, weeks_between
from printernizer_stats.sdk import PrinterType, StatsClient
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import select

from ..agent_harness import RPC_TIMEOUT, agent_process, short_private_dir
from ..aggregation.conftest import ServerProcess, start_server

DAY = 86_400.0
WEEK = 7 * DAY


@pytest.mark.processes
@pytest.mark.parametrize(
    ("command", "environment"),
    [
        ([sys.executable, "-m", "printernizer_stats.agent", "--simulated-clock", "clock.json"], {}),
        ([sys.executable, "-m", "printernizer_stats.aggregation", "--simulated-clock", "clock.json"], {}),
        ([sys.executable, "-m", "printernizer_stats.agent"], {"STATS_AGENT_KILL_AFTER_COMMITS": "3"}),
    ],
    ids=["agent clock", "server clock", "agent failpoint"],
)
def test_test_only_facilities_are_refused_unless_testing(
    tmp_path: Path, command: list[str], environment: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != TESTING_ENVIRONMENT} | environment
    env["HOME"] = str(tmp_path)  # files the services make on their own go here
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "STATS_TESTING=1" in line]
    assert "for tests only" in line


def test_a_simulated_clock_moves_as_its_file_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TESTING_ENVIRONMENT, "1")
    path = tmp_path / "clock.json"
    clock = SimulatedClock(path)  # no file yet: the machine's time
    real = SystemClock()
    assert abs((clock() - real()).total_seconds()) < 1
    SimulatedClock.write(path, advance=WEEK, wall_error=-3600)
    assert abs((clock() - real()).total_seconds() - (WEEK - 3600)) < 1
    assert abs(clock.elapsed() - real.elapsed() - WEEK) < 1  # the wall error moves only the wall clock
    path.write_text("{not json")  # half-written: the last reading stays
    assert abs((clock() - real()).total_seconds() - (WEEK - 3600)) < 1
    path.unlink()
    assert abs((clock() - real()).total_seconds()) < 1
    assert isinstance(clock_from(""), SystemClock)


async def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.2)


def stored_weeks(database_url: str) -> dict[int, int]:
    """Jobs created per week, as the server stored them."""
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(schema.reports.c.week, schema.reports.c.jobs_created)).all()
    finally:
        engine.dispose()
    weeks: dict[int, int] = {}
    for week, jobs in rows:
        assert week not in weeks, f"{week} stored twice"
        weeks[week] = jobs
    return weeks


@dataclass
class Machines:
    """An aggregation server and an agent with its host (the SDK in this
    process), each machine on a simulated clock: the server's is right, the
    agent's (which its host shares) may be set wrong."""

    base: Path
    agent_clock: Path
    server_clock: Path
    database_url: str
    server: ServerProcess
    stub: agent_service_pb2_grpc.AgentServiceStub
    host: StatsClient
    agent_log: Path
    advance: float = 0.0
    wall_error: float = 0.0
    recorded: dict[int, int] = field(default_factory=dict)  # jobs created per true week

    def _write(self) -> None:
        SimulatedClock.write(self.agent_clock, advance=self.advance, wall_error=self.wall_error)
        SimulatedClock.write(self.server_clock, advance=self.advance)

    def time_passes(self, seconds: float) -> None:
        self.advance += seconds
        self._write()

    def set_agent_clock_wrong(self, seconds: float) -> None:
        self.wall_error = seconds
        self._write()

    def true_week(self) -> Week:
        return Week.containing(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.advance))

    async def jobs_created(self, count: int) -> None:
        """The host records `count` jobs now, and hands them to the agent."""
        for _ in range(count):
            self.host.job_created(PrinterType.PRUSA)
        assert await asyncio.to_thread(self.host.flush, 10), self.host.stats()
        week = self.true_week().key
        self.recorded[week] = self.recorded.get(week, 0) + count

    async def stop_server(self) -> None:
        self.server.process.kill()
        self.server.process.wait(10)

    async def start_server(self) -> None:
        self.server = start_server(
            self.base, self.database_url, "server", self.server.port, *_server_setup(self.server_clock)
        )
        await self.server.wait_until_serving()

    async def delivered(self) -> list[int]:
        """Once everything recorded was delivered: the weeks of the agent's ledger."""
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.advance)
        # Past the end of the week in progress, and its delivery time (within a day).
        self.time_passes((self.true_week().end - now).total_seconds() + 2 * DAY)

        async def everything_sent() -> bool:
            # Time goes on meanwhile, as it would: a delivery that failed on
            # the way (a busy machine) is retried an hour later.
            self.time_passes(600)
            return set(await self.ledger()) >= set(self.recorded)

        try:
            await wait_for(everything_sent, "delivering every week", timeout=45)
        except AssertionError:
            print("recorded", self.recorded, "ledger", await self.ledger())
            print((self.base / "server.log").read_text()[-3000:])
            print("agent:", self.agent_log.read_text()[-6000:])
            raise
        return await self.ledger()

    async def ledger(self) -> list[int]:
        answer = await self.stub.ListSentReports(
            agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT
        )
        return [Week.from_proto(r.week).key for r in answer.reports]


def _server_setup(clock: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    return ("--simulated-clock", str(clock), "--peer-calls-per-second", "0"), {
        **os.environ,
        TESTING_ENVIRONMENT: "1",
    }


@contextlib.asynccontextmanager
async def machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Machines]:
    monkeypatch.setenv(TESTING_ENVIRONMENT, "1")
    agent_clock, server_clock = tmp_path / "agent-clock.json", tmp_path / "server-clock.json"
    monkeypatch.setenv("STATS_AGENT_SIMULATED_CLOCK", str(agent_clock))  # the host (this process)
    database_url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    ensure_self_made(tmp_path / "tls")
    server = start_server(tmp_path, database_url, "server", None, *_server_setup(server_clock))
    try:
        await server.wait_until_serving()
        options = ("--simulated-clock", str(agent_clock), "--server", f"localhost:{server.port}")
        options += ("--ca-file", str(tmp_path / "tls" / "ca.crt"))
        async with (
            agent_process(short_private_dir(), *options, STATS_TESTING="1") as agent,
            grpc.aio.insecure_channel(agent.target) as channel,
        ):
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            sharing = agent_service_pb2.SetConsentRequest(
                state=agent_service_pb2.CONSENT_STATE_SHARING, schema_version=1
            )
            await stub.SetConsent(sharing, timeout=RPC_TIMEOUT)
            host = StatsClient(agent.socket_path)
            running = Machines(
                tmp_path, agent_clock, server_clock, database_url, server, stub, host, agent.log_path
            )
            try:
                yield running
            finally:
                host.close()
    finally:
        server = running.server if "running" in locals() else server
        server.process.kill()
        server.process.wait(10)


def every_week_once_with_its_counts(running: Machines, sent: list[int]) -> None:
    """Every week since opting in was delivered once (a week without jobs too),
    with the jobs created in it; none that has not ended."""
    assert len(sent) == len(set(sent)), sent
    first, last = Week.from_key(min(sent)), Week.from_key(max(sent))
    assert sorted(sent) == [w.key for w in weeks_between(first, last)]
    assert set(running.recorded) <= set(sent)
    assert last < running.true_week()
    assert stored_weeks(running.database_url) == {week: running.recorded.get(week, 0) for week in sent}


@pytest.mark.processes
async def test_the_real_processes_deliver_simulated_weeks_through_a_server_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with machines(tmp_path, monkeypatch) as running:
        for number in range(6):
            await running.jobs_created(3 + number)
            if number == 2:  # the server goes away for two weeks
                await running.stop_server()
            if number == 4:
                await running.start_server()
            running.time_passes(WEEK)
        sent = await running.delivered()
    every_week_once_with_its_counts(running, sent)


YEAR = 365 * DAY
ERRORS = {"week ahead": WEEK, "year ahead": YEAR, "years ahead": 5 * YEAR}
ERRORS |= {"week back": -WEEK, "year back": -YEAR, "years back": -5 * YEAR}


@pytest.mark.processes
@pytest.mark.parametrize("server", ["up", "down"])
@pytest.mark.parametrize("error", ERRORS.values(), ids=ERRORS.keys())
async def test_a_wrong_clock_then_corrected_delivers_every_true_week_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: float, server: str
) -> None:
    """The agent's machine's clock jumps while the host records, stays wrong
    across a week's end, and is corrected: every week that really happened is
    delivered once with its true counts, and none that did not."""
    async with machines(tmp_path, monkeypatch) as running:
        await running.jobs_created(3)
        running.time_passes(DAY)
        running.set_agent_clock_wrong(error)
        if server == "down":
            await running.stop_server()
        for count in (4, 5, 6):  # recorded over nine days of a wrong clock
            await running.jobs_created(count)
            running.time_passes(3 * DAY)
        await asyncio.sleep(2)  # the agent's hourly work, every second on a simulated clock
        running.set_agent_clock_wrong(0)
        if server == "down":
            await running.start_server()
        await running.jobs_created(7)
        running.time_passes(WEEK)
        await running.jobs_created(8)
        sent = await running.delivered()
        status = await running.stub.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT)
    every_week_once_with_its_counts(running, sent)
    assert status.dropped_reports == 0
