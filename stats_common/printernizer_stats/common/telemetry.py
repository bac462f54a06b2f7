"""Traces, metrics and logs for every service (OpenTelemetry), private by construction.

- **Traces.** gRPC calls (server and client side), the gateway's HTTP requests
  and database statements become spans; the W3C trace context travels in gRPC
  metadata, so one trace runs agent -> aggregation server -> database, and
  gateway -> analytics server -> database. With --otlp-endpoint they are sent
  to an OpenTelemetry collector over OTLP/gRPC.
- **Metrics.** Each service's own counters and histograms (see
  docs/operations.md), exported over OTLP and/or served as Prometheus text on
  --metrics-listen.
- **Logs.** One JSON object per line (or plain text with --log-format text),
  with the trace and span IDs of the call that logged.

Privacy: no client address ever leaves a process. Spans lose every address
attribute before export (`PrivateSpanExporter`); HTTP metrics keep only the
method, route and status; any IP address in a log message is masked. The
services never put an installation ID or a report's contents into a span,
a metric or a log (tested).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cli import EnvArgumentParser, host_port_or_empty

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# Span attributes that can hold a client's (or any peer's) address.
PRIVATE_ATTRIBUTES = frozenset(
    {
        "net.peer.ip",
        "net.peer.name",
        "net.peer.port",
        "net.sock.peer.addr",
        "net.sock.peer.name",
        "net.sock.peer.port",
        "net.host.ip",
        "net.host.name",
        "net.host.port",
        "client.address",
        "client.port",
        "server.address",
        "server.port",
        "network.peer.address",
        "network.peer.port",
        "network.local.address",
        "network.local.port",
        "http.client_ip",
        "http.host",
        "http.server_name",
        "http.url",
        "url.full",
        "user_agent.original",
        "http.user_agent",
        "rpc.user_agent",
    }
)
# The only attributes HTTP server metrics keep (no host, no address).
HTTP_METRIC_ATTRIBUTES = {
    "http.method",
    "http.request.method",
    "http.route",
    "http.status_code",
    "http.response.status_code",
}

_IPV4 = r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"
_IPV6 = r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])"
ADDRESS = re.compile(f"{_IPV4}|{_IPV6}")
# A time of day or a duration (10:15, 0:59:59) looks like an IPv6 fragment, but
# no IPv6 address has two or three groups of decimal digits and no "::".
_CLOCK_TIME = re.compile(r"\d{1,2}(?::\d{2}){1,2}")


def _mask(found: re.Match[str]) -> str:
    return found[0] if _CLOCK_TIME.fullmatch(found[0]) else "<address>"


def mask_addresses(text: str) -> str:
    """`text` with every IPv4 or IPv6 address (or anything shaped like part of
    one, but a time of day) replaced by "<address>"."""
    return ADDRESS.sub(_mask, text)


def _trace_ids() -> tuple[str, str] | None:
    """The current trace and span IDs, if a span is being recorded. Spans exist
    only once OpenTelemetry is set up (which imports it): until then, none."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the current trace and span IDs."""

    converter = time.gmtime  # type: ignore[assignment]  # UTC, as the "Z" says

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": mask_addresses(record.getMessage()),
        }
        ids = _trace_ids()
        if ids:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = mask_addresses(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain lines for people; the trace ID when there is one; addresses masked."""

    converter = time.gmtime  # type: ignore[assignment]  # UTC, as the "Z" says

    def format(self, record: logging.LogRecord) -> str:
        ids = _trace_ids()
        record.trace = f" trace={ids[0]}" if ids else ""
        return mask_addresses(super().format(record))


def add_telemetry_options(parser: EnvArgumentParser) -> None:
    parser.add_env_option(
        "--otlp-endpoint",
        help="OpenTelemetry collector to send traces and metrics to over OTLP/gRPC, "
        "e.g. http://collector:4317 (empty: none)",
        default="",
        metavar="URL",
    )
    parser.add_env_option(
        "--metrics-listen",
        help="serve Prometheus metrics (text) on this address at /metrics (empty: off)",
        default="",
        type=host_port_or_empty,
        metavar="HOST:PORT",
    )
    parser.add_env_option(
        "--log-format",
        help="json: one JSON object per line, with trace IDs; text: plain lines",
        default="json",
        choices=["json", "text"],
    )


def configure_logging(service: str, level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(trace)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure(service: str, args: argparse.Namespace) -> None:
    """Logging, and the process's tracer and meter providers, from the options
    of `add_telemetry_options` and --log-level (once, at start). Without an
    exporter or a metrics endpoint, tracing and metrics stay the API's no-op
    defaults and nothing is instrumented, which costs nothing; log lines then
    carry no trace IDs."""
    configure_logging(service, args.log_level, args.log_format)
    if args.otlp_endpoint or args.metrics_listen:
        # OpenTelemetry is imported only by a process that exports (the agent's
        # `telemetry` extra; every server has it).
        from .otel import configure_providers

        configure_providers(service, args)


def tracing_enabled() -> bool:
    """Whether this process records spans (an SDK tracer provider is set: by
    `configure` with an exporter, or by a test). Without it, nothing is
    instrumented at all, which keeps the per-call cost at zero."""
    if "opentelemetry.sdk.trace" not in sys.modules:
        return False  # never set up in this process
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)


def metrics_enabled() -> bool:
    """Whether this process collects metrics (an SDK meter provider is set)."""
    if "opentelemetry.sdk.metrics" not in sys.modules:
        return False  # never set up in this process
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    return isinstance(metrics.get_meter_provider(), MeterProvider)


# What each gauge of `observe_gauge` reads, by name (one instrument per name and process).
_gauge_readers: dict[str, Callable[[], float]] = {}


def observe_gauge(meter: str, name: str, read: Callable[[], float], description: str, unit: str = "") -> None:
    """Export `read()` as the gauge `name` of `meter`, read whenever metrics
    are collected (so it is current however long ago it changed), if this
    process collects metrics. `read` runs on the collecting thread, so it
    must be quick and wait on nothing (no database, no event loop). Called
    again with the same name (a server started again in the same process, as
    tests do), the new `read` replaces the old one."""
    if not metrics_enabled():
        return
    registered = name in _gauge_readers
    _gauge_readers[name] = read
    if registered:
        return
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    def observe(_: CallbackOptions) -> list[Observation]:
        return [Observation(_gauge_readers[name]())]

    metrics.get_meter(meter).create_observable_gauge(name, [observe], unit=unit, description=description)


def trace_database(engine: AsyncEngine) -> None:
    """Spans for the statements `engine` runs (their text, never their parameters)."""
    if not tracing_enabled():
        return
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    tracer = trace.get_tracer("printernizer_stats.database")
    # Its connection-pool metric is labelled with the database URL (a host,
    # perhaps an address): not recorded.
    unrecorded = metrics.NoOpMeter("printernizer_stats.database").create_up_down_counter("unused")
    EngineTracer(tracer, engine.sync_engine, unrecorded)  # type: ignore[no-untyped-call]


def grpc_server_interceptors() -> list[Any]:
    """Server spans for every call, continuing the caller's trace."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def grpc_client_interceptors() -> list[Any]:
    """Client spans, and the trace context sent along in metadata."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
