"""A report the server will never take does not hold back the others, and is
not retried forever.

The real aggregation server (in process, TLS, SQLite) shares a simulated clock
with the agent, which the test moves as the agent's courier wakes. One queued
report is forged (re-signed by the installation, so it passes every check)
with a value that a trigger in the server's database refuses: storing it
fails inside the server's transaction, and the server answers INTERNAL for
that report every time, as it would for a bug that this one report triggers.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from printernizer.stats.v1 import agent_service_pb2, aggregated_stats_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import SHARING, Override
from printernizer_stats.agent.delivery import (
    DROP_AFTER_FAILING_FOR,
    DROP_AFTER_SERVER_ERRORS,
    Courier,
    Uplink,
    deliver,
)
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema

from ..agent_harness import FakeClock, job_created
from ..aggregation.conftest import RunningServer, running_server
from .conftest import stored_on_server

W1, W2, W3 = Week(2026, 30), Week(2026, 31), Week(2026, 32)
POISON_JOBS = 777_777


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(W1.start + dt.timedelta(days=1))


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[RunningServer]:
    """The real server on the agent's clock, without its per-address call limit."""
    url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    async with running_server(url, tmp_path, clock=clock, peer_calls_per_second=0) as running:
        yield running


def poison_the_server(server: RunningServer) -> None:
    """From now on the server's database refuses any report with POISON_JOBS jobs."""
    path = server.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute(
            f"CREATE TRIGGER poison BEFORE INSERT ON {schema.reports.name} "
            f"WHEN NEW.{schema.reports.c.jobs_created.name} = {POISON_JOBS} "
            "BEGIN SELECT RAISE(ABORT, 'a report this server cannot store'); END"
        )
    db.close()


@pytest.fixture
async def agent(tmp_path: Path, clock: FakeClock) -> AsyncIterator[StatsAgent]:
    """An agent that opted in during W1 and has W1-W3 queued, due now."""
    store = await AgentStore.open(tmp_path / "agent.db")
    opened = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
    await opened.set_consent(SHARING, 1)
    for week in (W1, W2, W3):
        clock.now = week.start + dt.timedelta(days=2)
        await opened.record([job_created(clock.now)], 0)
    clock.now = W3.end + dt.timedelta(days=1)
    assert await opened.queue_finished_weeks() == 3
    yield opened
    await store.close()


async def forge(agent: StatsAgent, week: Week, change: str) -> None:
    """Replace a queued report with a changed one, signed by the installation
    (or, for change "signature", keep the report and break its signature)."""
    identity = await agent.identity()
    assert identity is not None
    (row,) = [r for r in await agent.store.outbox() if r.week == week.key]
    report = aggregated_stats_pb2.AggregatedStats.FromString(row.report)
    if change == "jobs":
        report.usage.jobs_created = POISON_JOBS
    forged = report.SerializeToString(deterministic=True)
    signature = bytes(64) if change == "signature" else identity.sign(forged)
    with sqlite3.connect(agent.store.path) as db:
        db.execute(
            "UPDATE outbox SET report = ?, signature = ? WHERE week = ?", (forged, signature, week.key)
        )
    db.close()


def uplink_to(server: RunningServer, tmp_path: Path) -> Uplink:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca)
    return Uplink(f"localhost:{server.port}", str(ca))


async def live_until(courier: Courier, clock: FakeClock, until: dt.datetime) -> None:
    """Move the clock to `until` as the courier wakes: hourly, or when a retry is due."""
    while clock.now < until:
        await courier.tick()
        step = dt.timedelta(hours=1)
        if courier.next_attempt is not None:
            step = min(step, max(courier.next_attempt - clock.now, dt.timedelta(seconds=1)))
        clock.now = min(until, clock.now + step)


def weeks(rows: object) -> list[int]:
    return [row.week for row in rows]  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_a_report_the_server_always_fails_on_is_isolated_then_dropped(
    agent: StatsAgent, server: RunningServer, clock: FakeClock, tmp_path: Path
) -> None:
    poison_the_server(server)
    await forge(agent, W2, "jobs")
    courier = Courier(agent, uplink_to(server, tmp_path))
    started = clock.now
    try:
        # Together, the three fail twice; then they go one at a time, and W1
        # and W3 get through (one an hour: the server takes one submission per
        # installation and hour) while W2 keeps failing.
        await live_until(courier, clock, started + dt.timedelta(hours=1, minutes=30))
        assert [Week.from_proto(r.week).key for r in await agent.ledger(0)] == [W3.key, W1.key]
        assert stored_on_server(server) == 2
        (poison,) = await agent.store.outbox()
        assert (poison.week, poison.server_errors) == (W2.key, 3)
        # (Its latest try met the server's hourly rule: W3 was taken within the hour.)
        assert (await agent.status()).last_outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING

        # Retried (after the backoff, hourly) for as long as the bound says, never dropped before.
        almost = started + DROP_AFTER_FAILING_FOR - dt.timedelta(hours=1)
        await live_until(courier, clock, almost)
        queued = await agent.store.outbox()
        assert weeks(queued)[0] == W2.key
        assert queued[0].server_errors >= DROP_AFTER_SERVER_ERRORS
        assert queued[0].server_errors <= 8 + DROP_AFTER_FAILING_FOR / dt.timedelta(
            hours=1
        )  # hourly, not a storm

        await live_until(courier, clock, started + DROP_AFTER_FAILING_FOR + dt.timedelta(hours=2))
    finally:
        await courier.uplink.close()  # type: ignore[union-attr]
    assert W2.key not in weeks(await agent.store.outbox())
    assert W2.key not in [Week.from_proto(r.week).key for r in await agent.ledger(0)]
    assert (await agent.store.counters())["dropped_reports"] == 1
    status = await agent.status()
    assert (status.last_outcome, status.last_failure_code, status.dropped_reports) == (
        agent_service_pb2.DELIVERY_OUTCOME_DROPPED,
        "INTERNAL",
        1,
    )
    # The week that ended meanwhile was not held back either; nothing else is pending.
    assert Week(2026, 33).key in [Week.from_proto(r.week).key for r in await agent.ledger(0)]
    assert courier.next_attempt is None
    assert stored_on_server(server) == 3


async def test_one_refused_report_does_not_cost_the_others(
    agent: StatsAgent, server: RunningServer, clock: FakeClock, tmp_path: Path
) -> None:
    await forge(agent, W2, "signature")
    uplink = uplink_to(server, tmp_path)
    try:
        # The submission of all three is refused; each alone: W1 is taken, W2
        # refused (dropped), W3 waits for the server's next hour.
        delivery = await deliver(agent, uplink)
        assert (delivery.outcome, delivery.failure_code) == (
            agent_service_pb2.DELIVERY_OUTCOME_DROPPED,
            "UNAUTHENTICATED",
        )
        assert len(delivery.receipts) == 1
        assert weeks(await agent.store.outbox()) == [W3.key]
        clock.now += dt.timedelta(hours=1)
        delivery = await deliver(agent, uplink)
        assert delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED
    finally:
        await uplink.close()
    assert sorted(Week.from_proto(r.week).key for r in await agent.ledger(0)) == [W1.key, W3.key]
    assert (await agent.store.counters())["dropped_reports"] == 1
    assert stored_on_server(server) == 2


async def test_a_server_that_is_down_counts_nothing_against_the_reports(agent: StatsAgent) -> None:
    """Transient failures are bounded by the outbox's caps, not per report."""
    uplink = Uplink("localhost:1")  # nothing listens there
    try:
        for _ in range(DROP_AFTER_SERVER_ERRORS + 1):
            agent.clock.now += DROP_AFTER_FAILING_FOR  # type: ignore[attr-defined]
            delivery = await deliver(agent, uplink)
            assert delivery.failure_code == "UNAVAILABLE"
    finally:
        await uplink.close()
    queued = await agent.store.outbox()
    assert weeks(queued)[:3] == [W1.key, W2.key, W3.key]
    assert {row.server_errors for row in queued} == {0}
