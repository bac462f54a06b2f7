"""The agent's outbox: finished weeks queued once as signed, frozen bytes."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from printernizer.stats.v1 import aggregated_stats_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import LOCAL_ONLY, SHARING, Override
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.identity import signature_is_valid
from printernizer_stats.common.weeks import Week

from ..agent_harness import FakeClock, job_created

W = Week(2026, 40)
OPTED_IN = W.start + dt.timedelta(days=2, hours=9)  # Wednesday of week 40


async def open_agent(path: Path, clock: FakeClock, **config: int) -> StatsAgent:
    store = await AgentStore.open(path)
    return StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override(), **config), clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(OPTED_IN)


@pytest.fixture
async def agent(tmp_path: Path, clock: FakeClock) -> AsyncIterator[StatsAgent]:
    opened = await open_agent(tmp_path / "agent.db", clock)
    await opened.set_consent(SHARING, 1)
    yield opened
    await opened.store.close()


async def record_jobs(agent: StatsAgent, clock: FakeClock, count: int) -> None:
    clock.now += dt.timedelta(hours=1)
    await agent.record([job_created(clock.now) for _ in range(count)], 0)


async def test_a_finished_week_is_queued_once_as_signed_frozen_bytes(
    agent: StatsAgent, clock: FakeClock
) -> None:
    await record_jobs(agent, clock, 3)
    assert await agent.queue_finished_weeks() == 0  # week 40 is not over yet
    clock.now = W.end + dt.timedelta(hours=2)
    assert await agent.queue_finished_weeks() == 1
    assert await agent.queue_finished_weeks() == 0  # once
    (queued,) = await agent.store.outbox()
    report = aggregated_stats_pb2.AggregatedStats.FromString(queued.report)
    assert (Week.from_proto(report.period), report.usage.jobs_created) == (W, 3)
    identity = await agent.identity()
    assert identity is not None
    assert signature_is_valid(identity.public_key, queued.signature, queued.report)
    # The preview is exactly what will be sent, even after more events arrive.
    await record_jobs(agent, clock, 5)
    week, preview = await agent.preview(None)
    assert (week, preview) == (W, queued.report)
    assert (await agent.status()).queued_reports == 1


async def test_missed_weeks_are_caught_up(agent: StatsAgent, clock: FakeClock) -> None:
    clock.now = W.end + dt.timedelta(weeks=3, hours=1)  # the agent was off for three weeks
    assert await agent.queue_finished_weeks() == 4
    assert [row.week for row in await agent.store.outbox()] == [202640, 202641, 202642, 202643]


async def test_the_outbox_caps_evict_the_oldest_and_count(tmp_path: Path, clock: FakeClock) -> None:
    agent = await open_agent(tmp_path / "capped.db", clock, outbox_reports=2)
    try:
        await agent.set_consent(SHARING, 1)
        clock.now = W.end + dt.timedelta(weeks=2, hours=1)
        assert await agent.queue_finished_weeks() == 3
        assert [row.week for row in await agent.store.outbox()] == [202641, 202642]
        status = await agent.status()
        assert (status.queued_reports, status.evicted_reports) == (2, 1)
        # An evicted week is given up: not rebuilt (and evicted again) every hour.
        for _ in range(3):
            clock.now += dt.timedelta(hours=1)
            assert await agent.queue_finished_weeks() == 0
        assert (await agent.status()).evicted_reports == 1
        assert await agent.next_report_week() == W.next()
    finally:
        await agent.store.close()


async def test_opting_out_empties_the_outbox(agent: StatsAgent, clock: FakeClock) -> None:
    clock.now = W.end + dt.timedelta(hours=1)
    await agent.queue_finished_weeks()
    await agent.set_consent(LOCAL_ONLY, 0)
    assert await agent.store.outbox() == []
    assert await agent.queue_finished_weeks() == 0  # not sharing: nothing is queued


async def test_the_outbox_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "restart.db"
    agent = await open_agent(path, clock)
    await agent.set_consent(SHARING, 1)
    clock.now = W.end + dt.timedelta(hours=1)
    await agent.queue_finished_weeks()
    before = await agent.store.outbox()
    await agent.store.close()
    again = await open_agent(path, clock)
    try:
        assert await again.store.outbox() == before
        assert await again.queue_finished_weeks() == 0
    finally:
        await again.store.close()


async def test_delete_all_empties_the_outbox(agent: StatsAgent, clock: FakeClock) -> None:
    clock.now = W.end + dt.timedelta(hours=1)
    await agent.queue_finished_weeks()
    _, reports = await agent.delete_all()
    assert reports == 1
    assert await agent.store.outbox() == []


async def test_delete_all_counts_queued_reports_once_when_not_sharing(
    tmp_path: Path, clock: FakeClock
) -> None:
    agent = await open_agent(tmp_path / "local.db", clock)
    try:
        await agent.set_consent(SHARING, 1)
        clock.now = W.end + dt.timedelta(weeks=1, hours=1)
        assert await agent.queue_finished_weeks() == 2
        # Switched to local-only through the store directly, keeping the outbox:
        # delete-all must count those two reports once.
        await agent.store.put_settings({"consent.chosen": str(LOCAL_ONLY).encode()})
        agent._consent = None
        _, reports = await agent.delete_all()
        assert reports == 2
    finally:
        await agent.store.close()
