"""A server that is down for weeks, then back: every week arrives exactly once.

The agent and the real aggregation server (TLS, SQLite and PostgreSQL) share
a simulated clock that the test moves hour by hour, the way the agent's
courier wakes. The agent is restarted once during the outage.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import SHARING, Override
from printernizer_stats.agent.delivery import Courier, Uplink
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.aggregation.server import AggregationServerConfig, serve
from printernizer_stats.common.tls import TlsFiles, ensure_self_made
from printernizer_stats.common.weeks import Week
from printernizer_stats.demo.services import free_port
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import select

from .. import databases
from ..agent_harness import FakeClock, job_created

database_url = databases.database_url

WEEKS = [Week(2026, n) for n in range(30, 37)]
SERVER_BACK_AT = WEEKS[4].start + dt.timedelta(hours=12)
AGENT_RESTART_AT = WEEKS[2].start + dt.timedelta(hours=30)
# gRPC's own reconnect backoff runs on the real clock (up to two minutes); the
# simulated weeks pass in seconds, so the channel is told to retry quickly.
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100))


@asynccontextmanager
async def courier_for(db_path: Path, clock: FakeClock, target: str, ca: Path) -> AsyncIterator[Courier]:
    """An agent as its process runs it: store, domain, uplink and courier."""
    store = await AgentStore.open(db_path)
    agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
    uplink = Uplink(target, str(ca), options=FAST_RECONNECT)
    try:
        yield Courier(agent, uplink)
    finally:
        await uplink.close()
        await store.close()


async def live_until(
    courier: Courier, clock: FakeClock, until: dt.datetime, jobs: dict[Week, int], server_up: bool = False
) -> None:
    """Move the clock to `until` as the courier would wake (hourly, or when a
    retry is due), recording `jobs[week]` job starts early in each week."""
    while clock.now < until:
        week = Week.containing(clock.now)
        if week in jobs and clock.now >= week.start + dt.timedelta(hours=2):
            count = jobs.pop(week)
            await courier.agent.record([job_created(clock.now) for _ in range(count)], 0)
        await courier.tick()
        step = dt.timedelta(hours=1)
        if courier.next_attempt is not None:
            step = min(step, max(courier.next_attempt - clock.now, dt.timedelta(seconds=1)))
            if server_up:
                await asyncio.sleep(0.01)  # real time for the channel to reconnect
        clock.now = min(until, clock.now + step)


@pytest.mark.slow
async def test_a_server_down_for_weeks_receives_every_week_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    clock = FakeClock(WEEKS[0].start + dt.timedelta(hours=1))
    tls: TlsFiles = ensure_self_made(tmp_path / "tls")
    assert tls.ca_certificate is not None
    target = f"localhost:{free_port()}"
    db_path = tmp_path / "agent.db"
    jobs = {week: index + 1 for index, week in enumerate(WEEKS)}
    expected = dict(jobs)

    # Down: nothing listens on the server's port.
    async with courier_for(db_path, clock, target, tls.ca_certificate) as courier:
        await courier.agent.set_consent(SHARING, 1)
        await live_until(courier, clock, AGENT_RESTART_AT, jobs)
        assert courier.next_attempt is not None  # retrying, not given up
    async with courier_for(db_path, clock, target, tls.ca_certificate) as courier:
        await live_until(courier, clock, SERVER_BACK_AT, jobs)
        assert [row.week for row in await courier.agent.store.outbox()] == [w.key for w in WEEKS[:4]]
        assert await courier.agent.ledger(0) == []

        # Back: the real server, on the same simulated clock.
        config = AggregationServerConfig(target.replace("localhost", "127.0.0.1"), database_url, tls, 730)
        stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve(config, stop, ready.set_result, clock=clock))
        await asyncio.wait_for(ready, 30)
        try:
            await live_until(courier, clock, WEEKS[-1].end + dt.timedelta(days=2), jobs, True)
        finally:
            stop.set()
            await asyncio.wait_for(server, 30)
        assert await courier.agent.store.outbox() == []
        ledger = await courier.agent.ledger(0)

    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(schema.reports.c.week, schema.reports.c.jobs_created, schema.reports.c.stored_at)
            ).all()
    finally:
        engine.dispose()
    assert sorted((week, created) for week, created, _ in rows) == [
        (week.key, expected[week]) for week in WEEKS
    ]
    assert len(ledger) == len(WEEKS)
    # The four weeks missed during the outage went together, in one submission.
    stored_at = {week: at for week, _, at in rows}
    assert len({stored_at[week.key] for week in WEEKS[:4]}) == 1
    assert len({stored_at[week.key] for week in WEEKS[4:]}) == 3
