"""The first implementation's ingest failures (shared/DESIGN.md, "Lessons"),
each with a test here that would catch it again, on real TLS and real
databases. Double storing is covered where it can happen: a lost answer
(tests/agent/test_delivery.py), two server processes (tests/aggregation/test_processes.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import ingest_service_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import SHARING, Override
from printernizer_stats.agent.delivery import Uplink, deliver
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.errors import retry_delay
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import select

from .. import databases
from ..agent_harness import FakeClock, job_created
from ..aggregation.conftest import TIMEOUT, Installation, RunningServer, report_of, rpc_error, server

database_url = databases.database_url
__all__ = ["server"]  # a fixture used here

# ISO week 2025-W01 starts on Monday 2024-12-30: its report straddles two calendar years.
NEW_YEAR_WEEK = Week(2025, 1)
W45, W46 = Week(2026, 45), Week(2026, 46)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[StatsAgent]:
    clock = FakeClock(NEW_YEAR_WEEK.start)
    clock.time_service = True  # a past week, kept as it is: the real server's time does not overrule it
    store = await AgentStore.open(tmp_path / "agent.db")
    opened = StatsAgent(store, AgentConfig("Europe/Berlin", 800, Override()), clock=clock)
    await opened.set_consent(SHARING, 1)
    yield opened
    await store.close()


async def test_dates_survive_the_wire_across_a_new_year(
    agent: StatsAgent, server: RunningServer, tmp_path: Path
) -> None:
    """The reference client never submitted: its dates did not serialise, and
    its tests mocked the HTTP client away. Here the agent's own uplink sends a
    report whose week starts in one year and ends in the next, and the dates
    that come back (receipt, ledger, stored week) are the right ones."""
    clock: FakeClock = agent.clock  # type: ignore[assignment]
    moments = [
        dt.datetime(2024, 12, 30, 0, 30, tzinfo=dt.UTC),  # the week's first hour
        dt.datetime(2024, 12, 31, 23, 30, tzinfo=dt.UTC),  # New Year's Eve
        dt.datetime(2025, 1, 5, 23, 30, tzinfo=dt.UTC),  # Monday already in Berlin, still W01 in UTC
    ]
    for moment in moments:
        clock.now = moment
        await agent.record([job_created(moment)], 0)
    clock.now = dt.datetime(2025, 1, 6, 0, 30, tzinfo=dt.UTC)  # the next week
    await agent.record([job_created(clock.now)], 0)
    clock.now = NEW_YEAR_WEEK.end + dt.timedelta(days=1)
    assert await agent.queue_finished_weeks() == 1

    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca)
    uplink = Uplink(f"localhost:{server.port}", str(ca))
    try:
        before = dt.datetime.now(dt.UTC)
        delivery = await deliver(agent, uplink)
    finally:
        await uplink.close()
    (receipt,) = delivery.receipts
    assert receipt.status == ingest_service_pb2.RECEIPT_STATUS_ACCEPTED
    stored_at = receipt.stored_at.ToDatetime(tzinfo=dt.UTC)
    assert before - dt.timedelta(seconds=1) <= stored_at <= dt.datetime.now(dt.UTC)
    (sent,) = await agent.ledger(0)
    assert Week.from_proto(sent.week) == NEW_YEAR_WEEK
    assert sent.sent_at.ToDatetime(tzinfo=dt.UTC) == clock.now

    engine = create_sync_engine(server.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(schema.reports.c.week, schema.reports.c.jobs_created)).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [(NEW_YEAR_WEEK.key, 3)]


async def test_a_fresh_installation_id_per_call_does_not_escape_the_limits(server: RunningServer) -> None:
    """The reference limited by a client-chosen ID: a new ID per request went
    through. Here the per-peer limit is keyed on the connection's address, so a
    flood of made-up installations from one place is refused with a delay."""

    async def submit_as_new_installation() -> grpc.aio.AioRpcError | None:
        agent = Installation(uuid.uuid4().bytes)
        try:
            await server.stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc
        return None

    # All at once, as a flood comes: one after the other, a slow (loaded) machine would let the
    # limit refill between calls (5 a second, bursts of 20) and the count of refusals would vary.
    outcomes = await asyncio.gather(*(submit_as_new_installation() for _ in range(40)))
    refused = [e for e in outcomes if e is not None]
    assert len(refused) >= 10
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(retry_delay(e) is not None for e in refused)


async def test_a_new_report_id_or_key_does_not_reset_the_hourly_rule(server: RunningServer) -> None:
    """Changing what the client controls (the week, hence the report ID; the
    signing key) does not buy a second submission within the hour."""
    agent = Installation(uuid.uuid4().bytes)
    await server.stub.SubmitReports(agent.submission(report_of(agent, W45)), timeout=TIMEOUT)
    another_week = await rpc_error(
        server.stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
    )
    assert another_week.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    impostor = Installation(agent.installation_id)  # same ID, a key of its own
    another_key = await rpc_error(
        server.stub.SubmitReports(impostor.submission(report_of(impostor, W46)), timeout=TIMEOUT)
    )
    assert another_key.code() == grpc.StatusCode.UNAUTHENTICATED
