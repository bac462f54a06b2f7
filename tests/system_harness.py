"""The whole system in this process, for the page tests: the aggregation server
(TLS, SQLite) fed by a simulated fleet through the real ingest path, the
analytics server over TLS, a real agent on its Unix socket with a few weeks
of its own activity, and the gateway on a real port in front of both."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from printernizer.stats.v1 import common_pb2
from printernizer_stats.agent.delivery import Uplink
from printernizer_stats.common.weeks import Week, last_complete_week
from printernizer_stats.demo.fleet import FleetPlan, report_fleet
from printernizer_stats.gateway.stats_api import AnalyticsClient
from printernizer_stats.gateway.usage_api import local_agent

from .agent_harness import (
    RunningAgent,
    app_started,
    error_occurred,
    feature,
    fleet,
    job_completed,
    job_created,
    make_config,
    running_agent,
    short_private_dir,
)
from .aggregation.conftest import ADMIN_TOKEN, running_server
from .analytics.conftest import refresh_rollups, running_analytics
from .gateway.conftest import running_gateway


class MovableClock:
    """The real time, plus an offset a test can move forward (to end a week)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@dataclass
class RunningSystem:
    url: str  # the gateway
    token: str  # the admin token
    plan: FleetPlan
    agent: RunningAgent
    clock: MovableClock  # the agent's and the ingest server's time
    min_group_size: int  # the analytics server's k


async def record_own_activity(agent: RunningAgent, weeks: int, now: dt.datetime) -> None:
    """A few weeks of one installation's use, as Printernizer would record it."""
    week = Week.containing(now)
    for back in range(weeks):
        start = week.start + dt.timedelta(hours=10)
        events = [app_started(start, (2, 8, 2)), fleet(start, [(common_pb2.PRINTER_TYPE_PRUSA, 2)])]
        events.append(feature(start, common_pb2.FEATURE_LIBRARY, True))
        for job in range(3 + (back * 5) % 7):
            at = start + dt.timedelta(hours=job * 3 + 1)
            events += [job_created(at), job_completed(at + dt.timedelta(minutes=50))]
        if back % 2:
            events.append(
                error_occurred(
                    start + dt.timedelta(hours=2),
                    common_pb2.ERROR_TYPE_CONNECTION_TIMEOUT,
                    common_pb2.COMPONENT_PRINTER_SERVICE,
                )
            )
        if all(e.occurred_at.ToDatetime(dt.UTC) < now for e in events):
            await agent.record(*events)
        week = week.previous()


@contextlib.asynccontextmanager
async def running_system(
    base: Path, installations: int = 60, weeks: int = 12, min_group_size: int = 5
) -> AsyncIterator[RunningSystem]:
    clock = MovableClock()
    now = clock()
    plan = FleetPlan(installations, weeks, last_complete_week(now))
    database_url = f"sqlite:///{base / 'aggregation.db'}"
    # Every simulated installation sends from this one address: no per-peer limit.
    ingest_server = running_server(database_url, base / "ingest", clock=clock, peer_calls_per_second=0)
    async with ingest_server as ingest:
        ca_file = base / "ingest" / "tls" / "ca.crt"
        uplink = Uplink(f"localhost:{ingest.port}", str(ca_file))
        try:
            sent = await report_fleet(plan, uplink)
        finally:
            await uplink.close()
        assert not sent.failed, sent.failed
        await refresh_rollups(database_url)
        async with running_analytics(database_url, base / "analytics-tls", min_group_size=min_group_size) as (
            port,
            ca,
        ):
            agent_config = dataclasses.replace(
                make_config(short_private_dir()),  # a socket path must be short
                server_address=f"localhost:{ingest.port}",
                ca_file=str(ca_file),
            )
            async with running_agent(agent_config, clock) as agent:
                await record_own_activity(agent, 6, now)
                analytics = AnalyticsClient(f"localhost:{port}", ca, ADMIN_TOKEN)
                http, task, url = await running_gateway(analytics, local_agent(str(agent.socket_path)))
                try:
                    yield RunningSystem(url, ADMIN_TOKEN, plan, agent, clock, min_group_size)
                finally:
                    http.should_exit = True
                    await asyncio.wait_for(task, 30)
