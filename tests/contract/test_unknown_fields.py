"""Only the contract's typed fields cross any boundary of the whole system
(privacy rule 8, docs/privacy.md).

The real system runs in this process: an agent on its Unix socket, opted in,
delivering over TLS to the aggregation server (SQLite), then the analytics
server and the gateway in front of both. Hypothesis generates messages of every
type reachable from RecordEventsRequest and SubmitReportsRequest with unknown
fields at random depths (random numbers, wire types, UTF-8 text carrying a
marker): events recorded through the agent, and submissions signed and sent
straight to the ingest server with unknown fields in the report's bytes and in
the request around them. No marker may appear anywhere: the agent's database
files (WAL too), its preview, export, ledger and status, the server's database
file, every answer of the analytics server and of the gateway, and every log
line any of them wrote (which must not carry any installation, report or
receipt ID either).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import agent_service_pb2, analytics_service_pb2_grpc, ingest_service_pb2
from printernizer_stats.agent.consent import Identity
from printernizer_stats.common.weeks import Week
from printernizer_stats.gateway.stats_api import AnalyticsClient
from printernizer_stats.gateway.usage_api import local_agent

from ..agent_harness import (
    RPC_TIMEOUT,
    RunningAgent,
    make_config,
    record_request_bytes,
    running_agent,
    short_private_dir,
    usage_events,
)
from ..aggregation.conftest import ADMIN_TOKEN, RunningServer, encodings, running_server
from ..analytics.conftest import refresh_rollups, running_analytics
from ..disclosure_auditor import Setup, collect, report_for
from ..gateway.conftest import running_gateway
from ..system_harness import MovableClock
from ..unknown_fields import Spliced, found, with_unknown_fields

TIMEOUT = 30
SUBMIT = "/printernizer.stats.v1.IngestService/SubmitReports"


class Captured(logging.Handler):
    """Every log record of every logger, as the text a log line would carry."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[bytes] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record).encode(errors="backslashreplace"))


@dataclass
class System:
    ingest: RunningServer
    agent: RunningAgent
    clock: MovableClock
    base: Path
    logs: Captured
    markers: list[bytes] = field(default_factory=list)
    sent_directly: int = 0
    # Installation, report and receipt IDs seen: no log line may carry one.
    identifiers: list[bytes] = field(default_factory=list)

    def server_database(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.base.glob("aggregation.db*"))


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    logs = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    clock = MovableClock()
    try:
        database_url = f"sqlite:///{tmp_path / 'aggregation.db'}"
        ingest_server = running_server(
            database_url, tmp_path / "ingest", clock=clock, peer_calls_per_second=0
        )
        async with ingest_server as ingest:
            config = dataclasses.replace(
                make_config(short_private_dir()),  # a socket path must be short
                server_address=f"localhost:{ingest.port}",
                ca_file=str(tmp_path / "ingest" / "tls" / "ca.crt"),
            )
            async with running_agent(config, clock) as agent:
                await agent.opt_in()
                yield System(ingest, agent, clock, tmp_path, logs)
    finally:
        root.removeHandler(logs)
        root.setLevel(level)


def signed_submissions() -> st.SearchStrategy[tuple[Spliced, Spliced]]:
    """A valid report with unknown fields spliced into it, signed as it is by a
    new installation; and the submission carrying it, with unknown fields of
    its own (the envelope, the signed report's wrapper)."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[Spliced, Spliced]:
        identity = Identity.create()
        week = Week.containing(dt.datetime.now(dt.UTC)).previous()
        setup = Setup(errors=((9, 9, draw(st.integers(1, 5))),))  # a database error in the database
        report = draw(with_unknown_fields(st.just(report_for(identity.installation_id, week, setup))))
        request = ingest_service_pb2.SubmitReportsRequest(
            installation_id=identity.installation_id, public_key=identity.public_key
        )
        request.reports.add(report=report.data, signature=identity.sign(report.data))
        depths = lambda n: st.integers(0, min(3, n))  # noqa: E731 - perhaps none around a spliced report
        return report, draw(with_unknown_fields(st.just(request), depths=depths))

    return build()


async def send_raw(system: System, data: bytes) -> ingest_service_pb2.SubmitReportsResponse:
    call = system.ingest.channel.unary_unary(
        SUBMIT,
        request_serializer=lambda body: body,
        response_deserializer=ingest_service_pb2.SubmitReportsResponse.FromString,
    )
    return await call(data, timeout=TIMEOUT)


async def everything_the_agent_shows(agent: RunningAgent) -> dict[str, bytes]:
    preview = await agent.preview()
    shown = {
        "preview": preview.SerializeToString(),
        "preview JSON": preview.report_json.encode(),
        "local stats": (await agent.local_stats()).SerializeToString(),
        "status": (await agent.status()).SerializeToString(),
        "ledger": (
            await agent.stub.ListSentReports(agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT)
        ).SerializeToString(),
    }
    for number, page in enumerate(await agent.export()):
        shown[f"export page {number}"] = page.SerializeToString()
    return shown


def where(markers: list[bytes], places: dict[str, bytes]) -> dict[str, list[bytes]]:
    hits = {name: found(markers, data) for name, data in places.items()}
    return {name: hit for name, hit in hits.items() if hit}


async def cross_the_boundaries(
    system: System, events: list[Spliced], submission: tuple[Spliced, Spliced]
) -> None:
    """One generated example: events through the agent, a submission straight
    to the server; then the agent's files and answers and the server's database."""
    answer = await system.agent.record_bytes(record_request_bytes(*(e.data for e in events)))
    assert answer.stored_count == len(events)
    report, request = submission
    receipts = await send_raw(system, request.data)
    assert [r.status for r in receipts.receipts] == [ingest_service_pb2.RECEIPT_STATUS_ACCEPTED]
    system.sent_directly += 1
    (receipt,) = receipts.receipts
    sent = ingest_service_pb2.SubmitReportsRequest.FromString(request.data)
    system.identifiers += [sent.installation_id, receipt.report_id, receipt.receipt_id]
    markers = [m for e in events for m in e.markers] + list(report.markers) + list(request.markers)
    system.markers += markers
    places = {
        **system.agent.database_files(),
        **await everything_the_agent_shows(system.agent),
        "the server's database": system.server_database(),
    }
    assert not where(markers, places)


@pytest.mark.slow
async def test_unknown_fields_cross_no_boundary(system: System) -> None:
    loop = asyncio.get_running_loop()
    now = system.clock()
    events = st.lists(
        with_unknown_fields(usage_events(now - dt.timedelta(days=2), now)), min_size=1, max_size=6
    )

    # Hypothesis drives the examples from a thread of its own, each run on this
    # test's event loop, where the system's servers live.
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(events=events, submission=signed_submissions())
    def example(events: list[Spliced], submission: tuple[Spliced, Spliced]) -> None:
        asyncio.run_coroutine_threadsafe(cross_the_boundaries(system, events, submission), loop).result()

    await asyncio.to_thread(example)
    assert system.markers
    assert system.sent_directly

    # The agent delivers the week the events belong to; then every answer of
    # the analytics server and the gateway, and every log line, is searched.
    system.clock.offset += dt.timedelta(days=8)
    sent = await system.agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
    assert sent.receipts
    system.identifiers += [r.report_id for r in sent.receipts] + [r.receipt_id for r in sent.receipts]
    system.identifiers.append((await system.agent.local_stats()).installation.installation_id)
    assert (await system.agent.status()).events_with_unknown_fields > 0
    places: dict[str, bytes] = {
        **system.agent.database_files(),
        **await everything_the_agent_shows(system.agent),
        "the server's database": system.server_database(),
    }
    database_url = f"sqlite:///{system.base / 'aggregation.db'}"
    await refresh_rollups(database_url)
    analytics = running_analytics(database_url, system.base / "analytics-tls", system.clock, min_group_size=1)
    async with analytics as (port, ca):
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
            metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

            async def ask(method: str, request: Message) -> Message:
                return await getattr(stub, method)(request, metadata=metadata, timeout=TIMEOUT)  # type: ignore[no-any-return]

            last = Week.containing(system.clock()).previous()
            published = await collect(ask, 1, [last.previous(), last], windows=(2,), pairs=False)
            for name, message in published.messages():
                places[f"analytics {name}"] = message.SerializeToString()
            http, task, url = await running_gateway(
                AnalyticsClient(f"localhost:{port}", ca, ADMIN_TOKEN),
                local_agent(str(system.agent.socket_path)),
            )
            try:
                async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                    for path in GATEWAY_PATHS:
                        admin = path.startswith("/api/v1/stats")
                        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}
                        answer = await client.get(path, headers=headers)
                        assert answer.status_code == 200, (path, answer.text)
                        places[f"gateway {path}"] = answer.content + b"".join(decoded_strings(answer.json()))
            finally:
                http.should_exit = True
                await task
    places["logs"] = b"\n".join(system.logs.lines)
    assert system.logs.lines  # the services did log
    assert not where(system.markers, places)
    spelled = [form.encode() for identifier in system.identifiers for form in encodings(identifier)]
    assert all(len(identifier) == 16 for identifier in system.identifiers)
    assert not found(spelled, places["logs"])


GATEWAY_PATHS = [
    "/api/v1/stats/overview?weeks=4",
    "/api/v1/stats/export?weeks=4",
    "/api/v1/stats/distribution/country",
    "/api/v1/stats/features",
    "/api/v1/stats/errors?weeks=4&group_by=error-type-and-component",
    "/api/v1/usage-stats/local",
    "/api/v1/usage-stats/details",
    "/api/v1/usage-stats/preview",
    "/api/v1/usage-stats/ledger",
    "/api/v1/usage-stats/export",
]


def decoded_strings(value: Any) -> Iterator[bytes]:
    """Every string in a JSON answer, and its base64 decoding when it has one
    (bytes fields, such as a report's, are base64 in JSON)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from decoded_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from decoded_strings(item)
    elif isinstance(value, str):
        yield value.encode()
        with contextlib.suppress(ValueError):
            yield base64.b64decode(value, validate=True)
    elif value is not None and not isinstance(value, bool | int | float):
        yield json.dumps(value).encode()
