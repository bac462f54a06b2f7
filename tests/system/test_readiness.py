"""Readiness: each server's gRPC health follows its database. A real
PostgreSQL database is made to refuse connections (and its sessions are
ended, as in a restart); health turns NOT_SERVING, a submission meanwhile
is told to retry (UNAVAILABLE with a delay) and stores nothing, and both
recover when the database answers again."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc, ingest_service_pb2
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import retry_delay
from sqlalchemy.engine import make_url

from .. import databases
from ..aggregation.test_admin import report_of
from ..aggregation.test_ingest import Installation
from ..aggregation.test_server import ADMIN_TOKEN, TIMEOUT, rpc_error, running_server
from ..analytics.test_server import last_week, running_analytics

ADMIN = bearer_metadata(ADMIN_TOKEN)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.contextmanager
def database_away(url: str) -> Iterator[None]:
    """The database refuses new connections and its sessions end (as when it
    restarts), until the block ends."""
    name = make_url(url).database
    admin = (
        make_url(databases.POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            yield
        finally:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def wait_for_health(channel: grpc.aio.Channel, wanted: int, timeout: float = 20) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = asyncio.get_running_loop().time() + timeout
    status = None
    while asyncio.get_running_loop().time() < deadline:
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)).status
        if status == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {status}, expected {wanted}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with databases.fresh_postgres_database() as url:
        yield url


async def test_the_aggregation_server_is_ready_only_while_its_database_answers(
    postgres_url: str, tmp_path: Path
) -> None:
    async with running_server(postgres_url, tmp_path, readiness_seconds=0.2) as server:
        await wait_for_health(server.channel, SERVING)
        agent = Installation(uuid.uuid4().bytes)
        submission = agent.submission(report_of(agent, last_week()))
        with database_away(postgres_url):
            await wait_for_health(server.channel, NOT_SERVING)
            refused = await rpc_error(server.stub.SubmitReports(submission, timeout=TIMEOUT))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            delay = retry_delay(refused)
            assert delay is not None
            assert delay.total_seconds() > 0
        await wait_for_health(server.channel, SERVING)
        # The retry is stored once, as new: nothing of the refused attempt was kept.
        accepted = await server.stub.SubmitReports(submission, timeout=TIMEOUT)
        assert [r.status for r in accepted.receipts] == [ingest_service_pb2.RECEIPT_STATUS_ACCEPTED]


async def test_the_analytics_server_is_ready_only_while_its_database_answers(
    postgres_url: str, tmp_path: Path
) -> None:
    async with running_analytics(postgres_url, tmp_path / "tls", readiness_seconds=0.2) as (port, ca):
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            await wait_for_health(channel, SERVING)
            stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
            overview = analytics_service_pb2.GetOverviewRequest()
            with database_away(postgres_url):
                await wait_for_health(channel, NOT_SERVING)
                # A query meanwhile is told to retry, not that the server broke.
                refused = await rpc_error(stub.GetOverview(overview, metadata=ADMIN, timeout=TIMEOUT))
                assert refused.code() == grpc.StatusCode.UNAVAILABLE
                assert retry_delay(refused) is not None
            await wait_for_health(channel, SERVING)
            await stub.GetOverview(overview, metadata=ADMIN, timeout=TIMEOUT)
