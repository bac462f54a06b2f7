"""Serving the ingest API over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from printernizer.stats.v1 import (
    ingest_admin_service_pb2,
    ingest_admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)

from stats_common.admin import RequireAdminToken
from stats_common.interceptors import RejectUndecodableRequests

from .database import upgrade
from .ingest import MAX_REPORTS_PER_SUBMISSION, Ingest
from .servicer import CallLimiter, IngestAdminServicer, IngestServicer
from .storage import IngestStore
from .tls import TlsFiles
from .validation import MAX_REPORT_BYTES

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
ADMIN_SERVICE_NAME = ingest_admin_service_pb2.DESCRIPTOR.services_by_name["IngestAdminService"].full_name
# The largest request: a full submission of signed reports, plus room for the envelope.
MAX_REQUEST_BYTES = MAX_REPORTS_PER_SUBMISSION * (MAX_REPORT_BYTES + 128) + 4096
RETENTION_INTERVAL_SECONDS = 24 * 3600
RETENTION_STOP_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class ServerConfig:
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

    def limiter(self) -> CallLimiter:
        return CallLimiter(
            self.peer_calls_per_second,
            4 * self.peer_calls_per_second,
            self.global_calls_per_second,
            4 * self.global_calls_per_second,
        )


async def serve(
    config: ServerConfig,
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
        interceptors: list[grpc.aio.ServerInterceptor] = [RejectUndecodableRequests()]
        if config.admin_token is not None:
            interceptors.insert(0, RequireAdminToken(config.admin_token, [ADMIN_SERVICE_NAME]))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
        )
        ingest = Ingest(store, clock)
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(ingest, config.limiter()), server
        )
        services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if config.admin_token is not None:
            ingest_admin_service_pb2_grpc.add_IngestAdminServiceServicer_to_server(
                IngestAdminServicer(ingest, config.retention_days), server
            )
            services.append(ADMIN_SERVICE_NAME)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(services, server)
        credentials = grpc.ssl_server_credentials([config.tls.server_credentials_pem()])
        port = server.add_secure_port(config.listen, credentials)
        await server.start()
    except BaseException:
        await store.close()
        raise
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("aggregation server serving over TLS on port %d", port)
    if on_ready is not None:
        on_ready(port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    retention = asyncio.create_task(_purge_periodically(ingest, config.retention_days, stop))
    try:
        await stop.wait()
    finally:
        stop.set()  # also when this task is cancelled
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=5)
        # Retention ends at its next check of `stop`: cancelling it inside a
        # transaction would leave the driver's connection half-closed.
        try:
            await asyncio.wait_for(retention, RETENTION_STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("retention did not finish in time; stopped")
        await store.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


async def _purge_periodically(ingest: Ingest, retention_days: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            purged = await ingest.purge_expired(retention_days)
            if purged.reports_deleted:
                log.info(
                    "retention: deleted %d weekly reports before %d-W%02d",
                    purged.reports_deleted,
                    purged.cutoff.year,
                    purged.cutoff.week,
                )
        except Exception:
            log.exception("retention failed; will try again later")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_INTERVAL_SECONDS)
