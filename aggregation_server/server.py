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
from printernizer.stats.v1 import ingest_service_pb2, ingest_service_pb2_grpc

from stats_common.interceptors import RejectUndecodableRequests
from stats_common.weeks import Week

from .database import upgrade
from .ingest import MAX_REPORTS_PER_SUBMISSION, Ingest
from .servicer import IngestServicer, PeerLimiter
from .storage import IngestStore
from .tls import TlsFiles
from .validation import MAX_REPORT_BYTES

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# The largest request: a full submission of signed reports, plus room for the envelope.
MAX_REQUEST_BYTES = MAX_REPORTS_PER_SUBMISSION * (MAX_REPORT_BYTES + 128) + 4096
RETENTION_INTERVAL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    database_url: str
    tls: TlsFiles
    retention_days: int
    migrate: bool = True


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
        server = grpc.aio.server(
            interceptors=[RejectUndecodableRequests()],
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
        )
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(Ingest(store, clock), PeerLimiter()), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
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
    retention = asyncio.create_task(_purge_periodically(store, config.retention_days))
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        retention.cancel()
        await server.stop(grace=5)
        await store.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


async def _purge_periodically(store: IngestStore, retention_days: int) -> None:
    while True:
        try:
            cutoff = Week.containing(dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days))
            deleted = await store.purge_weeks_before(cutoff)
            if deleted:
                log.info("retention: deleted %d weekly reports before %s", deleted, cutoff)
        except Exception:
            log.exception("retention failed; will try again later")
        await asyncio.sleep(RETENTION_INTERVAL_SECONDS)
