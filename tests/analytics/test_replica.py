"""The analytics server on a PostgreSQL hot standby: two private PostgreSQL servers in streaming
replication (tests/postgres_replica.py). The real aggregation server writes to the primary and its
rollup job refreshes there; a real analytics server on the standby answers with those figures once
they are replayed, follows deletions, and never writes (the e-mail reports are claimed on the primary
with --mail-claims-database-url; without it, e-mail on a standby is refused at start)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from printernizer_stats.analytics.email_reports import MONTHLY, WEEKLY
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.demo.services import free_port
from printernizer_stats.store.database import upgrade

from ..aggregation.conftest import ADMIN_TOKEN, TIMEOUT, Installation, report_of, running_server
from ..conftest import ROOT
from ..postgres_replica import Replication, scalar, streaming_replication
from ..system.conftest import SERVING, wait_for_health
from .conftest import Inbox, last_week, mail, running_analytics

pytestmark = [pytest.mark.postgres, pytest.mark.processes]
ADMIN = bearer_metadata(ADMIN_TOKEN)
COUNTRY = analytics_service_pb2.GetDistributionRequest(
    dimensions=[analytics_service_pb2.Dimension.DIMENSION_COUNTRY]
)


@pytest.fixture
def replication() -> Iterator[Replication]:
    with streaming_replication() as pair:
        yield pair


def errors_logged(replication: Replication) -> list[str]:
    """The standby's ERROR lines: a write there fails, and PostgreSQL logs it with its statement
    ("cannot execute INSERT in a read-only transaction")."""
    return re.findall(r"ERROR: .*", replication.standby.log)


async def replayed(replication: Replication) -> None:
    """Until the standby has replayed what the primary has written so far (in a thread: the servers
    under test run in this event loop)."""
    await asyncio.to_thread(replication.wait_for_replay)


async def countries(stub: analytics_service_pb2_grpc.AnalyticsServiceStub, total: int) -> list[object]:
    """The country distribution, once its total is `total` (the standby has replayed the refresh)."""
    for _ in range(200):
        answer = await stub.GetDistribution(COUNTRY, metadata=ADMIN, timeout=TIMEOUT)
        if answer.total_installations == total:
            return [(e.values[0].label, e.installations) for e in answer.entries]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the standby's answer stayed at {answer.total_installations}, expected {total}")


async def test_the_standby_answers_with_the_primarys_figures_and_follows_deletions(
    replication: Replication, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    primary, standby = replication.primary, replication.standby
    async with running_server(primary.url, tmp_path, rollup_refresh_seconds=0.2) as server:
        await replayed(replication)  # the schema the aggregation server made
        caplog.set_level(logging.INFO, logger="printernizer_stats.analytics")
        async with running_analytics(standby.url, tmp_path / "tls", min_group_size=2) as (port, ca):
            assert "migrations skipped" in caplog.text  # a hot standby: the primary gets them
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                await wait_for_health(channel, SERVING)  # readiness: the standby answers
                stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
                assert await countries(stub, 0) == []
                installations = [Installation(uuid.uuid4().bytes) for _ in range(3)]
                for installation in installations:
                    submission = installation.submission(report_of(installation, last_week()))
                    await server.stub.SubmitReports(submission, timeout=TIMEOUT)
                # Written to the primary, rolled up there, replayed here: 3 published as 4 (k = 2).
                assert await countries(stub, 4) == [("Germany", 4)]
                trend = await stub.GetInstallationTrend(
                    analytics_service_pb2.GetInstallationTrendRequest(
                        window=analytics_service_pb2.WeekWindow(weeks=2)
                    ),
                    metadata=ADMIN,
                    timeout=TIMEOUT,
                )
                assert [(w.known, w.active, w.new_installations) for w in trend.weeks] == [
                    (0, 0, 0),
                    (4, 4, 4),
                ]
                deleted = await server.stub.DeleteInstallation(
                    installations[0].deletion(dt.datetime.now(dt.UTC)), timeout=TIMEOUT
                )
                assert deleted.reports_deleted == 1
                assert await countries(stub, 2) == [("Germany", 2)]  # 2 left on the primary
    # The analytics server never tried to write to the standby; a write would show in its log.
    assert scalar(standby.url, "SELECT pg_is_in_recovery()") is True
    assert errors_logged(replication) == []
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        scalar(standby.url, "CREATE TABLE written_here (x int)")
    assert any("read-only transaction" in line for line in errors_logged(replication))


async def test_e_mail_reports_from_the_standby_are_claimed_on_the_primary(
    replication: Replication, tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, smtp_port = smtp
    primary, standby = replication.primary, replication.standby
    monday_morning = dt.datetime(2026, 11, 23, 7, tzinfo=dt.UTC)  # the weekly and the monthly are due
    async with running_server(primary.url, tmp_path):
        await replayed(replication)  # the schema the aggregation server made
        async with running_analytics(
            standby.url,
            tmp_path / "tls",
            lambda: monday_morning,
            mail=mail(smtp_port),
            mail_claims_database_url=primary.url,
        ):
            for _ in range(200):  # the reports are looked at once at start
                if len(inbox.messages) == 2:
                    break
                await asyncio.sleep(0.05)
    assert sorted(message["Subject"] for message in inbox.messages) == [
        "Printernizer usage, October 2026",
        "Printernizer usage, week 2026-W47",
    ]
    claimed = "SELECT string_agg(kind || ':' || period, ',' ORDER BY kind) FROM email_reports"
    assert scalar(primary.url, claimed) == f"{WEEKLY}:202647,{MONTHLY}:202610"
    await replayed(replication)  # the claims reach the standby only through replication
    assert scalar(standby.url, claimed) == scalar(primary.url, claimed)
    assert errors_logged(replication) == []


def analytics_command(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "printernizer_stats.analytics",
            *("--listen", f"127.0.0.1:{free_port()}", "--tls-dir", str(tmp_path / "tls")),
            *("--admin-token-file", str(tmp_path / "admin-token")),
            *options,
        ],
        cwd=ROOT,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_e_mail_on_a_standby_needs_the_primary_for_its_claims(
    replication: Replication, tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, smtp_port = smtp
    primary, standby = replication.primary, replication.standby
    upgrade(primary.url)  # as the aggregation server does
    replication.wait_for_replay()
    e_mail = ["--smtp-host", "127.0.0.1", "--smtp-port", str(smtp_port), "--smtp-security", "none"]
    e_mail += ["--mail-from", "stats@printernizer.invalid", "--mail-to", "a@printernizer.invalid"]

    refused = analytics_command(tmp_path, "--database-url", standby.url, *e_mail)
    assert refused.returncode == 1, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("printernizer_stats.analytics: e-mail reports are claimed in a writable database")
    assert "give the primary's URL with --mail-claims-database-url" in last
    assert "Traceback" not in refused.stderr

    claims_on_standby = ["--mail-claims-database-url", standby.url]
    refused = analytics_command(tmp_path, "--database-url", standby.url, *e_mail, *claims_on_standby)
    assert refused.returncode == 1, refused.stderr
    assert "--mail-claims-database-url is read-only" in refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr

    # The test e-mail claims nothing: it is sent from the standby as it is.
    sent = analytics_command(tmp_path, "--database-url", standby.url, "--send-test-email", *e_mail)
    assert sent.returncode == 0, sent.stderr
    assert len(inbox.messages) == 1
    assert errors_logged(replication) == []
