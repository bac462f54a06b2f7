"""The analytics server over real TLS, beside the real aggregation server on
the same database (SQLite and PostgreSQL): admin credentials, answers that
follow new reports through the aggregation server's rollup job, precise errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import field_violations
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import async_url
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from .. import databases
from ..aggregation.conftest import (
    ADMIN_TOKEN,
    TIMEOUT,
    Installation,
    RunningServer,
    report_of,
    rpc_error,
    running_server,
    server,
)
from .conftest import last_week, refresh_rollups, running_analytics

database_url = databases.database_url
__all__ = ["server"]  # a fixture used here
ADMIN = bearer_metadata(ADMIN_TOKEN)
Dimension = analytics_service_pb2.Dimension


@dataclass
class RunningAnalytics:
    stub: analytics_service_pb2_grpc.AnalyticsServiceStub


@asynccontextmanager
async def analytics_client(
    database_url: str, tls_dir: Path, **config: Any
) -> AsyncIterator[RunningAnalytics]:
    """running_analytics, and a client of it."""
    async with running_analytics(database_url, tls_dir, **config) as (port, ca):
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            yield RunningAnalytics(analytics_service_pb2_grpc.AnalyticsServiceStub(channel))


@pytest.fixture
async def analytics(server: RunningServer, tmp_path: Path) -> AsyncIterator[RunningAnalytics]:
    # The aggregation server's TLS directory, as by default.
    async with analytics_client(server.database_url, tmp_path / "tls", min_group_size=2) as running:
        yield running


async def test_answers_follow_new_reports(database_url: str, tmp_path: Path) -> None:
    # The aggregation server keeps the rollups; here its rollup job runs every 0.2 s.
    refreshing = running_server(database_url, tmp_path, rollup_refresh_seconds=0.2)
    async with (
        refreshing as server,
        analytics_client(database_url, tmp_path / "tls", min_group_size=2) as analytics,
    ):
        await answers_follow_new_reports(server, analytics)


async def answers_follow_new_reports(server: RunningServer, analytics: RunningAnalytics) -> None:
    request = analytics_service_pb2.GetDistributionRequest(dimensions=[Dimension.DIMENSION_COUNTRY])
    empty = await analytics.stub.GetDistribution(request, metadata=ADMIN, timeout=TIMEOUT)
    assert (empty.total_installations, list(empty.entries)) == (0, [])
    for _ in range(3):
        agent = Installation(uuid.uuid4().bytes)
        await server.stub.SubmitReports(agent.submission(report_of(agent, last_week())), timeout=TIMEOUT)
    # 3 installations, published rounded to a multiple of k = 2: 4.
    for _ in range(100):  # the rollup job runs every 0.2 s
        answer = await analytics.stub.GetDistribution(request, metadata=ADMIN, timeout=TIMEOUT)
        if answer.total_installations == 4:
            break
        await asyncio.sleep(0.1)
    assert [(e.values[0].label, e.installations, e.share) for e in answer.entries] == [("Germany", 4, 1.0)]
    trend = await analytics.stub.GetInstallationTrend(
        analytics_service_pb2.GetInstallationTrendRequest(window=analytics_service_pb2.WeekWindow(weeks=2)),
        metadata=ADMIN,
        timeout=TIMEOUT,
    )
    assert [(w.known, w.active, w.new_installations) for w in trend.weeks] == [(0, 0, 0), (4, 4, 4)]


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-the-admin-token-" + "z" * 32),),
        # What an installation holds (its ID and public key) is not an admin credential.
        (("authorization", "Bearer " + Installation().public_key.hex()),),
    ],
    ids=["none", "wrong", "installation-key"],
)
async def test_every_call_needs_the_admin_token(
    analytics: RunningAnalytics, metadata: tuple[tuple[str, str], ...]
) -> None:
    for call in (
        analytics.stub.GetInstallationTrend(
            analytics_service_pb2.GetInstallationTrendRequest(), metadata=metadata
        ),
        analytics.stub.GetDistribution(
            analytics_service_pb2.GetDistributionRequest(dimensions=[Dimension.DIMENSION_COUNTRY]),
            metadata=metadata,
        ),
        analytics.stub.ListAnomalies(analytics_service_pb2.ListAnomaliesRequest(), metadata=metadata),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_requests_name_the_field(analytics: RunningAnalytics) -> None:
    too_long = analytics_service_pb2.GetInstallationTrendRequest(
        window=analytics_service_pb2.WeekWindow(weeks=10_000)
    )
    error = await rpc_error(analytics.stub.GetInstallationTrend(too_long, metadata=ADMIN, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(error)] == ["window.weeks"]
    future = analytics_service_pb2.GetOverviewRequest(
        window=analytics_service_pb2.WeekWindow(until=Week(2999, 1).to_proto())
    )
    error = await rpc_error(analytics.stub.GetOverview(future, metadata=ADMIN, timeout=TIMEOUT))
    assert [field for field, _ in field_violations(error)] == ["window.until"]


async def test_a_failing_smtp_server_does_not_stop_the_service(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from printernizer_stats.analytics.email_reports import MailConfig
    from printernizer_stats.demo.services import free_port

    from ..agent_harness import FakeClock

    unreachable = MailConfig(
        "127.0.0.1", free_port(), "none", "stats@printernizer.invalid", ("m@printernizer.invalid",)
    )
    monday_morning = FakeClock(dt.datetime(2026, 11, 23, 7, tzinfo=dt.UTC))  # a weekly summary is due
    async with running_analytics(
        server.database_url, tmp_path / "tls", monday_morning, min_group_size=2, mail=unreachable
    ) as (port, ca):
        for _ in range(100):  # the reports are looked at once at start: the send fails
            if "e-mail report" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "was not sent" in caplog.text
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
            answer = await stub.GetOverview(
                analytics_service_pb2.GetOverviewRequest(), metadata=ADMIN, timeout=TIMEOUT
            )
        assert answer.min_group_size == 2  # still answering after the failed send


def write_totals(path: str) -> None:
    writer = sqlite3.connect(path, timeout=0.2)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE weekly_totals SET active = active")
        writer.commit()
    finally:
        writer.close()


async def test_a_query_reads_one_snapshot_while_a_refresh_commits(server: RunningServer) -> None:
    """A refresh that commits between two statements of one query must not
    tear its answer (seen once: a week's total of 3 with no country groups)."""
    engine = create_async_engine(async_url(server.database_url))
    try:
        store = AnalyticsStore(engine)
        await refresh_rollups(server.database_url)
        totals = select(func.count()).select_from(schema.weekly_totals)
        async with store.snapshot() as snapshot:
            connection = snapshot.connection
            before = await connection.scalar(totals)
            if engine.dialect.name == "postgresql":
                agent = Installation(uuid.uuid4().bytes)
                await server.stub.SubmitReports(
                    agent.submission(report_of(agent, last_week())), timeout=TIMEOUT
                )
                # A refresh commits meanwhile (this one, or the server's rollup job).
                await refresh_rollups(server.database_url)
            else:
                # SQLite: the read transaction holds the file, so a writer cannot
                # commit in the middle of it (it waits, here 0.2 s, then gives up).
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    await asyncio.to_thread(write_totals, server.database_url.removeprefix("sqlite:///"))
            assert await connection.scalar(totals) == before  # still the snapshot it started with
        async with store.snapshot() as snapshot:
            connection = snapshot.connection
            if engine.dialect.name == "postgresql":
                assert await connection.scalar(totals) == (before or 0) + 1  # a new query sees the refresh
    finally:
        await engine.dispose()
