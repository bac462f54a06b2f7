"""OpenTelemetry's providers and private exporters: imported only by a process
that exports traces or metrics (`telemetry.configure` with --otlp-endpoint or
--metrics-listen), so a process that does not pays nothing for them."""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator

from .telemetry import HTTP_METRIC_ATTRIBUTES, PRIVATE_ATTRIBUTES


def configure_providers(service: str, args: argparse.Namespace) -> None:
    """The tracer and meter providers for the exporters `args` asks for."""
    resource = Resource.create({"service.name": service, "service.namespace": "printernizer-stats"})
    readers: list[MetricReader] = []
    if args.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider = TracerProvider(resource=resource, id_generator=OwnRandomIdGenerator())
        exporter = PrivateSpanExporter(OTLPSpanExporter(endpoint=args.otlp_endpoint))
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=args.otlp_endpoint)))
    if args.metrics_listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        host, _, port = args.metrics_listen.rpartition(":")
        try:
            start_http_server(int(port), addr=host.strip("[]"))
        except OSError as exc:  # one line and exit code 1, as for any unusable setting
            where = args.metrics_listen
            raise SystemExit(f"{service}: cannot serve metrics on {where}: {exc.strerror}") from None
    if readers:
        metrics.set_meter_provider(
            MeterProvider(resource=resource, metric_readers=readers, views=private_views())
        )


class OwnRandomIdGenerator(IdGenerator):
    """Trace and span IDs from a generator of their own, seeded from the
    system's entropy. OpenTelemetry's default draws from the global `random`,
    which any code in the process may seed (two processes seeded alike would
    then repeat each other's IDs) or whose draws it would move."""

    def __init__(self) -> None:
        self._random = random.Random()  # noqa: S311 - unique IDs, not secrets

    def generate_span_id(self) -> int:
        span_id = 0
        while span_id == trace.INVALID_SPAN_ID:
            span_id = self._random.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        trace_id = 0
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = self._random.getrandbits(128)
        return trace_id

    def is_trace_id_random(self) -> bool:
        return True


def private_views() -> list[View]:
    """HTTP server metrics keep the method, route and status only."""
    return [View(instrument_name="http.server.*", attribute_keys=HTTP_METRIC_ATTRIBUTES)]


class PrivateSpanExporter(SpanExporter):
    """Passes spans on without their address attributes."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([without_private_attributes(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def without_private_attributes(span: ReadableSpan) -> ReadableSpan:
    attributes = dict(span.attributes or {})
    kept = {key: value for key, value in attributes.items() if key not in PRIVATE_ATTRIBUTES}
    if len(kept) == len(attributes):
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=kept,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
