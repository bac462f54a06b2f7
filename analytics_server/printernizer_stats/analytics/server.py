"""Serving the analytics API over TLS.

The server only reads its database: the aggregation server keeps the rollups
current. So it can serve from a PostgreSQL hot standby; the one write it makes,
claiming each e-mail report so that it is sent once, then goes to the primary
(`mail_claims_database_url`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from printernizer_stats.common.admin import RequireAdminToken
from printernizer_stats.common.interceptors import RejectUndecodableRequests
from printernizer_stats.common.serving import READINESS_SECONDS, Job, serve_tls
from printernizer_stats.common.startup import StartupError
from printernizer_stats.common.telemetry import grpc_server_interceptors, trace_database
from printernizer_stats.common.tls import TlsFiles
from printernizer_stats.common.weeks import last_complete_week
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import create_server_engine, database_answers, read_only, upgrade
from printernizer_stats.store.mail_claims_store import MailClaimsStore

from .email_reports import MailConfig, Reporter, send, weekly_report
from .privacy import DEFAULT_MIN_GROUP_SIZE
from .queries import Analytics
from .servicer import AnalyticsServicer

log = logging.getLogger(__name__)

# How often the e-mail reports look whether one is due.
REPORT_CHECK_SECONDS = 300.0
SERVICE_NAME = analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name


@dataclass(frozen=True)
class AnalyticsServerConfig:
    listen: str
    database_url: str
    tls: TlsFiles
    admin_token: str
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    # E-mail reports are sent only when configured.
    mail: MailConfig | None = None
    # Where each e-mail report is claimed, a writable database (a read replica's primary); None: the
    # database itself.
    mail_claims_database_url: str | None = None
    # Applied unless the database is read-only (a hot standby: its primary is migrated instead).
    migrate: bool = True
    readiness_seconds: float = READINESS_SECONDS  # how often health checks the database


async def serve(
    config: AnalyticsServerConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT); `on_ready` gets the bound port. Raises
    StartupError when e-mail reports are configured with no writable database to claim them in."""
    database_read_only = await prepare_database(config)
    if config.mail is not None:
        await check_mail_claims(config, database_read_only)
    engine = create_server_engine(config.database_url)
    trace_database(engine)
    claims_engine = engine
    if config.mail is not None and config.mail_claims_database_url is not None:
        claims_engine = create_server_engine(config.mail_claims_database_url)
        trace_database(claims_engine)
    try:
        server = grpc.aio.server(
            interceptors=[
                *grpc_server_interceptors(),
                RequireAdminToken(config.admin_token, [SERVICE_NAME]),
                RejectUndecodableRequests(),
            ]
        )
        analytics = Analytics(AnalyticsStore(engine), config.min_group_size, clock)
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(analytics), server
        )
        jobs: list[tuple[float, Job, str]] = []
        if config.mail is not None:
            reporter = Reporter(analytics, MailClaimsStore(claims_engine), config.mail)
            jobs.append((REPORT_CHECK_SECONDS, reporter.tick, "e-mail reports"))
        await serve_tls(
            server,
            listen=config.listen,
            key_and_certificate=config.tls.server_credentials_pem(),
            services=[SERVICE_NAME],
            what="analytics server",
            stop=stop,
            on_ready=on_ready,
            jobs=jobs,
            ready=lambda: database_answers(engine),
            readiness_seconds=config.readiness_seconds,
        )
    finally:
        await engine.dispose()
        if claims_engine is not engine:
            await claims_engine.dispose()


async def prepare_database(config: AnalyticsServerConfig) -> bool:
    """Apply the migrations (unless told not to), except on a read-only database; returns whether
    the database is read-only."""
    if await asyncio.to_thread(read_only, config.database_url):
        log.info(
            "the database is read-only (such as a hot standby): migrations skipped; its primary gets them"
        )
        return True
    if config.migrate:
        # The aggregation server's migrations: the same database, one schema.
        await asyncio.to_thread(upgrade, config.database_url)
    return False


async def check_mail_claims(config: AnalyticsServerConfig, database_read_only: bool) -> None:
    """Refuse to start without a writable database to claim each e-mail report in (so that it is
    sent once)."""
    if config.mail_claims_database_url is None:
        if database_read_only:
            raise StartupError(
                "e-mail reports are claimed in a writable database so that each is sent once, and the one at "
                "--database-url is read-only (such as a hot standby): give the primary's URL with "
                "--mail-claims-database-url"
            )
        return
    if await asyncio.to_thread(read_only, config.mail_claims_database_url):
        raise StartupError(
            "the database of --mail-claims-database-url is read-only: e-mail reports are claimed there, "
            "so it must be the primary's"
        )


async def send_test_email(config: AnalyticsServerConfig) -> None:
    """Send the weekly summary of the last complete week now (for operators
    checking their mail settings); raises when it cannot be sent."""
    if config.mail is None:
        raise ValueError("no e-mail is configured")
    await prepare_database(config)  # nothing is claimed: a read-only database will do
    engine = create_server_engine(config.database_url)
    try:
        analytics = Analytics(AnalyticsStore(engine), config.min_group_size)
        report = await weekly_report(analytics, last_complete_week(analytics.clock()))
        await send(report, config.mail)
        log.info("sent a test e-mail report to %s", ", ".join(config.mail.recipients))
    finally:
        await engine.dispose()
