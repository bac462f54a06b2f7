"""Serving the analytics API over TLS, with the rollups refreshed periodically."""

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
from printernizer_stats.common.telemetry import grpc_server_interceptors, trace_database
from printernizer_stats.common.tls import TlsFiles
from printernizer_stats.store.database import create_server_engine, database_answers, upgrade
from printernizer_stats.store.rollup_store import Rollups

from .privacy import DEFAULT_MIN_GROUP_SIZE
from .queries import Analytics, last_complete_week
from .reports import MailConfig, Reporter, send, weekly_report
from .servicer import AnalyticsServicer

log = logging.getLogger(__name__)

# How often the e-mail reports look whether one is due.
REPORT_CHECK_SECONDS = 300.0
SERVICE_NAME = analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    database_url: str
    tls: TlsFiles
    admin_token: str
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    refresh_seconds: float = 60.0
    # E-mail reports are sent only when configured.
    mail: MailConfig | None = None
    migrate: bool = True
    readiness_seconds: float = READINESS_SECONDS  # how often health checks the database


async def serve(
    config: ServerConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT); `on_ready` gets the bound port."""
    if config.migrate:
        # The aggregation server's migrations: the same database, one schema.
        await asyncio.to_thread(upgrade, config.database_url)
    engine = create_server_engine(config.database_url)
    trace_database(engine)
    try:
        rollups = Rollups(engine, clock)
        await rollups.refresh()  # answer from current rollups from the first call on
        server = grpc.aio.server(
            interceptors=[
                *grpc_server_interceptors(),
                RequireAdminToken(config.admin_token, [SERVICE_NAME]),
                RejectUndecodableRequests(),
            ]
        )
        analytics = Analytics(engine, config.min_group_size, clock)
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(analytics), server
        )
        jobs: list[tuple[float, Job, str]] = [
            (config.refresh_seconds, rollups.refresh, "refreshing the rollups")
        ]
        if config.mail is not None:
            jobs.append(
                (REPORT_CHECK_SECONDS, Reporter(analytics, engine, config.mail).tick, "e-mail reports")
            )
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


async def send_test_email(config: ServerConfig) -> None:
    """Send the weekly summary of the last complete week now (for operators
    checking their mail settings); raises when it cannot be sent."""
    if config.mail is None:
        raise ValueError("no e-mail is configured")
    if config.migrate:
        await asyncio.to_thread(upgrade, config.database_url)
    engine = create_server_engine(config.database_url)
    try:
        await Rollups(engine).refresh()
        analytics = Analytics(engine, config.min_group_size)
        report = await weekly_report(analytics, last_complete_week(analytics.clock()))
        await send(report, config.mail)
        log.info("sent a test e-mail report to %s", ", ".join(config.mail.recipients))
    finally:
        await engine.dispose()
