"""Running a TLS gRPC server until it is told to stop: what the aggregation and
analytics servers share (health, reflection, signals, periodic jobs, a
graceful stop that never cancels a job inside a transaction)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .telemetry import observe_gauge

log = logging.getLogger(__name__)

# How long a periodic job may take to finish once the server stops.
JOB_STOP_TIMEOUT_SECONDS = 60
GRACE_SECONDS = 5
# How often readiness (the database answering) is checked.
READINESS_SECONDS = 5.0

Job = Callable[[], Awaitable[object]]


async def every(seconds: float, job: Job, what: str, stop: asyncio.Event) -> None:
    """Run `job` now and every `seconds` until `stop` is set; a failure is
    logged and tried again at the next turn."""
    while not stop.is_set():
        try:
            await job()
        except Exception:
            log.exception("%s failed; will try again later", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def serve_tls(
    server: grpc.aio.Server,
    *,
    listen: str,
    key_and_certificate: tuple[bytes, bytes],
    services: Sequence[str],
    what: str,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    jobs: Sequence[tuple[float, Job, str]] = (),
    ready: Callable[[], Awaitable[bool]] | None = None,
    readiness_seconds: float = READINESS_SECONDS,
) -> None:
    """Add health checking and reflection for `services`, serve over TLS on
    `listen`, run the periodic `jobs` (interval, job, name), and stop on
    SIGTERM/SIGINT or `stop`: NOT_SERVING first, calls in flight get a grace
    period, jobs end at their next turn.

    With `ready` (is the database answering?), health follows it: checked
    every `readiness_seconds`, NOT_SERVING while it is False, so a load
    balancer sends nothing to a server that cannot store; the metric
    stats.database.up says the same to monitoring."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = grpc.ssl_server_credentials([key_and_certificate])
    port = server.add_secure_port(listen, credentials)
    await server.start()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving over TLS on port %d", what, port)
    if on_ready is not None:
        on_ready(port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    all_jobs = list(jobs)
    if ready is not None:
        all_jobs.append(
            (readiness_seconds, _follow_readiness(ready, health_servicer, services, what), "readiness")
        )
    running = [asyncio.create_task(every(seconds, job, name, stop)) for seconds, job, name in all_jobs]
    try:
        await stop.wait()
    finally:
        stop.set()  # also when this task is cancelled
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=GRACE_SECONDS)
        if running:
            # Cancelling a job inside a transaction would leave the database
            # driver's connection half-closed: let it reach its next turn.
            _, late = await asyncio.wait(running, timeout=JOB_STOP_TIMEOUT_SECONDS)
            for task in late:
                log.warning("a periodic job did not finish in time; stopped")
                task.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


def _follow_readiness(
    ready: Callable[[], Awaitable[bool]],
    health_servicer: health.aio.HealthServicer,
    services: Sequence[str],
    what: str,
) -> Job:
    serving = [True]
    observe_gauge(
        "printernizer_stats.common.serving",
        "stats.database.up",
        lambda: float(serving[0]),
        "1 while the database answers the readiness check (and health says SERVING), else 0",
    )

    async def check() -> None:
        now_ready = await ready()
        if now_ready == serving[0]:
            return
        serving[0] = now_ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if now_ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if now_ready:
            log.warning("%s: the database answers again; serving", what)
        else:
            log.warning("%s: the database does not answer; NOT_SERVING until it does", what)
        for name in ("", *services):
            await health_servicer.set(name, status)

    return check
