"""Observability: one trace from the agent through the aggregation server to
the database, and from the gateway through the analytics server to the
database; the metrics operators scrape; structured logs with trace IDs; and
none of it holding an address, an installation ID or a report's contents."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import os
import random
import re
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from printernizer.stats.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    aggregated_stats_pb2,
    ingest_service_pb2_grpc,
)
from printernizer_stats.common.otel import OwnRandomIdGenerator
from printernizer_stats.common.telemetry import ADDRESS, grpc_client_interceptors, mask_addresses
from printernizer_stats.demo.services import free_port

from .. import databases
from ..agent_harness import (
    RPC_TIMEOUT,
    agent_process,
    job_created,
    make_config,
    running_agent,
    short_private_dir,
)
from ..aggregation.conftest import TIMEOUT, Installation, report_of, rpc_error, running_server, start_server
from ..aggregation.conftest import server as server
from ..analytics.conftest import last_week
from ..conftest import SPANS
from ..databases import database_url as database_url
from ..gateway.conftest import ADMIN
from ..gateway.conftest import gateway as gateway
from ..system.conftest import database_away
from ..system_harness import MovableClock
from .conftest import identifier_forms, scrape

SUBMIT = "/printernizer.stats.v1.IngestService/SubmitReports"
OVERVIEW = "/printernizer.stats.v1.AnalyticsService/GetOverview"


def span_texts(spans: Iterable[ReadableSpan]) -> str:
    parts = []
    for span in spans:
        parts.append(span.name)
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            parts += [event.name, *(f"{k}={v}" for k, v in (event.attributes or {}).items())]
    return "\n".join(parts)


def only(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def descendants(spans: list[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    ids, found = {root.context.span_id}, []
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        if span.parent is not None and span.parent.span_id in ids:
            ids.add(span.context.span_id)
            found.append(span)
    return found


async def test_one_trace_runs_from_the_agent_to_the_aggregation_servers_database(tmp_path: Path) -> None:
    clock = MovableClock()
    async with running_server(f"sqlite:///{tmp_path / 'aggregation.db'}", tmp_path, clock=clock) as ingest:
        config = dataclasses.replace(
            make_config(short_private_dir()),
            server_address=f"localhost:{ingest.port}",
            ca_file=str(tmp_path / "tls" / "ca.crt"),
        )
        async with running_agent(config, clock) as agent:
            await agent.opt_in()
            await agent.record(job_created(clock()))
            clock.offset += dt.timedelta(days=8)  # the week ends: its report is due
            SPANS.clear()
            sent = await agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
            assert len(sent.receipts) == 1
            ledger = await agent.stub.ListSentReports(agent_service_pb2.ListSentReportsRequest())
    spans = list(SPANS.get_finished_spans())
    client = only(spans, SUBMIT, SpanKind.CLIENT)
    server = only(spans, SUBMIT, SpanKind.SERVER)
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id  # the context crossed TLS in metadata
    assert server.context.trace_id == client.context.trace_id
    statements = [s for s in descendants(spans, server) if (s.attributes or {}).get("db.system")]
    assert any(s.name.startswith("INSERT") for s in statements), [s.name for s in statements]
    assert {s.context.trace_id for s in statements} == {client.context.trace_id}

    report = aggregated_stats_pb2.AggregatedStats.FromString(ledger.reports[0].report)
    text = span_texts(spans)
    for form in identifier_forms(report.installation.installation_id) + identifier_forms(report.report_id):
        assert form not in text  # no installation or report ID
    assert base64.b64encode(ledger.reports[0].report).decode() not in text  # no report body
    assert not ADDRESS.search(text), ADDRESS.findall(text)  # no address, though the server span had one


async def test_one_trace_runs_from_the_gateway_to_the_analytics_servers_database(
    gateway: httpx.AsyncClient,
) -> None:
    SPANS.clear()
    answer = await gateway.get("/api/v1/stats/overview", headers=ADMIN)
    assert answer.status_code == 200
    spans = list(SPANS.get_finished_spans())
    request = only(spans, "GET /api/v1/stats/overview", SpanKind.SERVER)
    below = descendants(spans, request)
    client = only(below, OVERVIEW, SpanKind.CLIENT)
    server = only(below, OVERVIEW, SpanKind.SERVER)
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert any((s.attributes or {}).get("db.system") for s in descendants(spans, server))
    text = span_texts(spans)
    assert "authorization" not in text.lower()  # the admin token stays out
    assert ADMIN["Authorization"].split()[1] not in text
    assert not ADDRESS.search(text), ADDRESS.findall(text)


@pytest.mark.processes
async def test_the_aggregation_servers_metrics_count_outcomes_and_limits(tmp_path: Path) -> None:
    metrics_port, port = free_port(), free_port()
    server = start_server(
        tmp_path,
        f"sqlite:///{tmp_path / 'aggregation.db'}",
        "server",
        port=port,
        extra=("--metrics-listen", f"127.0.0.1:{metrics_port}", "--peer-calls-per-second", "1"),
    )
    process, log_path = server.process, server.log_path
    try:
        ca = tmp_path / "tls" / "ca.crt"
        await server.wait_until_serving()
        # Not TLS at all: gRPC's core library would log the failed handshake on its own.
        with socket.create_connection(("127.0.0.1", port)) as garbage:
            garbage.sendall(b"GET / HTTP/1.1\r\n\r\n" * 3)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            agent = Installation(uuid.uuid4().bytes)
            submission = agent.submission(report_of(agent, last_week()))
            await stub.SubmitReports(submission, timeout=TIMEOUT)  # accepted
            await stub.SubmitReports(submission, timeout=TIMEOUT)  # a replay: duplicate
            unsigned = agent.submission(report_of(agent, last_week()))
            unsigned.reports[0].signature = bytes(64)
            await rpc_error(stub.SubmitReports(unsigned, timeout=TIMEOUT))  # unauthenticated
            codes = [
                (await rpc_error(stub.SubmitReports(unsigned, timeout=TIMEOUT))).code() for _ in range(4)
            ]
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes  # the burst (4) is spent
        samples = scrape(metrics_port)
        assert samples[("stats_ingest_reports_total", (("outcome", "accepted"),))] == 1
        assert samples[("stats_ingest_reports_total", (("outcome", "duplicate"),))] == 1
        refused = samples[
            ("stats_ingest_refused_total", (("method", "submission"), ("reason", "unauthenticated")))
        ]
        assert refused >= 2
        assert samples[("stats_ingest_rate_limited_total", (("scope", "peer"),))] >= 1
        assert samples[("stats_ingest_duration_seconds_count", (("method", "submission"),))] >= 3
    finally:
        process.terminate()
        process.wait(30)
    log_text = log_path.read_text()
    entries = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert entries, log_text  # structured: one JSON object per line
    # Besides the two start-up lines for the operator (where the CA and the
    # token are), nothing unstructured: gRPC's core logs only errors.
    others = [
        line
        for line in log_text.splitlines()
        if not line.startswith(("{", "printernizer_stats.aggregation: "))
    ]
    assert others == []
    assert {"time", "level", "service", "logger", "message"} <= set(entries[0])
    assert {e["service"] for e in entries} == {"printernizer_stats.aggregation"}
    for form in identifier_forms(agent.installation_id):
        assert form not in log_text
    assert not ADDRESS.search(log_text), ADDRESS.findall(log_text)


def test_addresses_are_masked_in_any_text() -> None:
    line = "peer ipv4:192.168.1.23:50443 and ipv6:[2001:db8::1]:443 and [::1]:8470; version 2.8.1"
    masked = mask_addresses(line)
    assert "192.168" not in masked
    assert "2001:db8" not in masked
    assert "::1" not in masked
    assert "version 2.8.1" in masked  # versions are not addresses
    assert re.search(r"<address>", masked)
    # Times of day are not addresses; anything else with colons may be part of one.
    assert mask_addresses("retry in 0:59:59, at 10:15") == "retry in 0:59:59, at 10:15"
    assert mask_addresses("fe80::1 and 2001:db8:0:0:1:0:0:1 and 1:2:3:4") == (
        "<address> and <address> and <address>"
    )


def test_trace_ids_do_not_follow_the_global_random() -> None:
    """Code in the same process may seed `random` (a host app, a test library):
    the services' IDs neither repeat after it nor move its draws."""
    ids = []
    for _ in range(2):
        random.seed(1234)
        generator = OwnRandomIdGenerator()
        ids.append((generator.generate_trace_id(), generator.generate_span_id()))
        assert random.random() == random.Random(1234).random()  # its draws left where they were
    assert ids[0] != ids[1]
    assert all(trace_id != 0 and span_id != 0 for trace_id, span_id in ids)


class FakeCollector(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """An OpenTelemetry collector's OTLP/gRPC receiver. A stand-in: a real
    collector is a separate program that is not installed here; this one
    speaks the same protocol (the opentelemetry-proto services) and keeps
    what it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.metric_names: set[str] = set()

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                self.metric_names.update(metric.name for metric in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.mark.postgres
@pytest.mark.processes
async def test_otlp_export_and_logs_share_trace_ids_and_hold_no_address(tmp_path: Path) -> None:
    collector = FakeCollector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, receiver)
    collector_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    port = free_port()
    with databases.fresh_postgres_database() as database_url:
        server = start_server(
            tmp_path,
            database_url,
            "server",
            port=port,
            extra=("--otlp-endpoint", f"http://127.0.0.1:{collector_port}"),
            env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"},
        )
        process, log_path = server.process, server.log_path
        try:
            ca = tmp_path / "tls" / "ca.crt"
            await server.wait_until_serving()
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
            agent = Installation(uuid.uuid4().bytes)
            async with grpc.aio.secure_channel(
                f"localhost:{port}", credentials, interceptors=grpc_client_interceptors()
            ) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                SPANS.clear()
                with database_away(database_url):  # the server logs a warning inside the call
                    refused = await rpc_error(
                        stub.SubmitReports(agent.submission(report_of(agent, last_week())), timeout=TIMEOUT)
                    )
                assert refused.code() == grpc.StatusCode.UNAVAILABLE
            trace_id = only(list(SPANS.get_finished_spans()), SUBMIT, SpanKind.CLIENT).context.trace_id
            for _ in range(100):
                if any(s.name == SUBMIT for s in collector.spans) and collector.metric_names:
                    break
                await asyncio.sleep(0.1)
        finally:
            process.terminate()
            # The collector answers the final export from this loop: do not block it.
            await asyncio.to_thread(process.wait, 30)
            await receiver.stop(None)
    exported = [s for s in collector.spans if s.name == SUBMIT]
    assert [s.trace_id for s in exported] == [trace_id.to_bytes(16, "big")]  # the caller's trace went on
    assert "stats.ingest.refused" in collector.metric_names
    for span in collector.spans:  # the server span had the caller's address before export
        for attribute in span.attributes:
            assert not ADDRESS.search(str(attribute.value.string_value)), attribute
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    warning = [e for e in entries if "database is not answering" in e["message"]]
    assert warning, entries
    assert warning[0]["trace_id"] == format(trace_id, "032x")  # the log line names its trace
    for form in identifier_forms(agent.installation_id):
        assert form not in log_path.read_text()


@pytest.mark.processes
async def test_the_agents_metrics_show_its_outbox_and_dropped_events() -> None:
    metrics_port = free_port()
    base = short_private_dir()
    async with agent_process(base, "--metrics-listen", f"127.0.0.1:{metrics_port}") as agent:
        async with grpc.aio.insecure_channel(agent.target) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            request = agent_service_pb2.RecordEventsRequest(events=[job_created(), job_created()])
            request.dropped_by_client = 3  # what an SDK whose buffer overflowed reports
            await stub.RecordEvents(request, timeout=RPC_TIMEOUT)
        samples = await asyncio.to_thread(scrape, metrics_port)
        await agent.stop()
    assert samples[("stats_agent_events_stored", ())] == 2
    assert samples[("stats_agent_events_dropped_total", ())] == 3
    assert samples[("stats_agent_outbox_reports", ())] == 0
    assert samples[("stats_agent_reports_evicted_total", ())] == 0
