"""Serving the ingest API over TLS, and keeping the analytics' weekly rollups current: the
database's writer refreshes them, so the analytics server only reads (and can read a replica)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from printernizer.stats.v1 import (
    ingest_admin_service_pb2,
    ingest_admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from printernizer_stats.common.admin import RequireAdminToken
from printernizer_stats.common.interceptors import RejectUndecodableRequests
from printernizer_stats.common.serving import READINESS_SECONDS, serve_tls
from printernizer_stats.common.telemetry import grpc_server_interceptors, trace_database
from printernizer_stats.common.tls import TlsFiles
from printernizer_stats.store.database import database_answers, database_unreachable, upgrade
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups

from .ingest import MAX_REPORTS_PER_SUBMISSION, Ingest
from .metrics import RollupLag
from .servicer import CallLimiter, IngestAdminServicer, IngestServicer
from .validation import MAX_REPORT_BYTES

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
ADMIN_SERVICE_NAME = ingest_admin_service_pb2.DESCRIPTOR.services_by_name["IngestAdminService"].full_name
# The largest request: a full submission of signed reports, plus room for the envelope.
MAX_REQUEST_BYTES = MAX_REPORTS_PER_SUBMISSION * (MAX_REPORT_BYTES + 128) + 4096
RETENTION_INTERVAL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class AggregationServerConfig:
    listen: str
    database_url: str
    tls: TlsFiles
    retention_days: int
    # The admin API is served only with a token.
    admin_token: str | None = None
    # In-memory call limits (0 turns one off); bursts are four seconds' worth.
    peer_calls_per_second: float = 5.0
    global_calls_per_second: float = 2000.0
    migrate: bool = True
    readiness_seconds: float = READINESS_SECONDS  # how often health checks the database
    # How often the rollups are brought up to date (and at start); on PostgreSQL one replica at a time.
    rollup_refresh_seconds: float = 60.0

    def limiter(self) -> CallLimiter:
        return CallLimiter(
            self.peer_calls_per_second,
            4 * self.peer_calls_per_second,
            self.global_calls_per_second,
            4 * self.global_calls_per_second,
        )


async def serve(
    config: AggregationServerConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT); `on_ready` gets the bound port.
    `clock` is the time the ingest rules use (tests simulate weeks with it)."""
    if config.migrate:
        await asyncio.to_thread(upgrade, config.database_url)
    store = IngestStore.open(config.database_url)
    try:
        trace_database(store.engine)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            *grpc_server_interceptors(),
            RejectUndecodableRequests(),
        ]
        if config.admin_token is not None:
            interceptors.insert(1, RequireAdminToken(config.admin_token, [ADMIN_SERVICE_NAME]))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
        )
        ingest = Ingest(store, clock, config.retention_days)
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(ingest, config.limiter()), server
        )
        services = [SERVICE_NAME]
        if config.admin_token is not None:
            ingest_admin_service_pb2_grpc.add_IngestAdminServiceServicer_to_server(
                IngestAdminServicer(ingest), server
            )
            services.append(ADMIN_SERVICE_NAME)

        async def purge() -> None:
            purged = await ingest.purge_expired()
            if purged.reports_deleted:
                log.info(
                    "retention: deleted %d weekly reports before %d-W%02d",
                    purged.reports_deleted,
                    purged.cutoff.year,
                    purged.cutoff.week,
                )

        rollups = Rollups(store.engine, clock)
        lag = RollupLag(clock)

        async def refresh_rollups() -> None:
            try:
                await rollups.refresh()
                # Read back, not assumed: a turn skipped (another replica is refreshing, or
                # report writes took too long) did not catch up; whichever refresh did, recorded when.
                lag.caught_up_at = await rollups.refreshed_at() or lag.caught_up_at
            except Exception as exc:
                if not database_unreachable(exc):
                    raise
                # Readiness says so already; one line, not a traceback every turn.
                log.warning("rollups: the database does not answer; will try again at the next turn")

        await serve_tls(
            server,
            listen=config.listen,
            key_and_certificate=config.tls.server_credentials_pem(),
            services=services,
            what="aggregation server",
            stop=stop,
            on_ready=on_ready,
            jobs=[
                (RETENTION_INTERVAL_SECONDS, purge, "retention"),
                (config.rollup_refresh_seconds, refresh_rollups, "refreshing the rollups"),
            ],
            ready=lambda: database_answers(store.engine),
            readiness_seconds=config.readiness_seconds,
        )
    finally:
        await store.close()
