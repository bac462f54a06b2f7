"""Readiness: each server's gRPC health follows its database. A real
PostgreSQL database is made to refuse connections (and its sessions are
ended, as in a restart); health turns NOT_SERVING, a submission meanwhile
is told to retry (UNAVAILABLE with a delay) and stores nothing, and both
recover when the database answers again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc, ingest_service_pb2
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import retry_delay

from .. import databases
from ..aggregation.conftest import ADMIN_TOKEN, TIMEOUT, Installation, report_of, rpc_error, running_server
from ..analytics.conftest import last_week, running_analytics
from .conftest import NOT_SERVING, SERVING, database_away, wait_for_health

ADMIN = bearer_metadata(ADMIN_TOKEN)


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
