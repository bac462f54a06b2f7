"""Fields this server does not know (a newer agent, or a careless client) are
discarded before anything is checked and never stored (DESIGN.md, privacy
rule 8), over real TLS on SQLite and PostgreSQL.

The places to try are found mechanically: every message reachable from
AggregatedStats, walked from the compiled contract, gets an unknown field of
each wire type holding text that must never be found again, not in any table
and not in the server's log. What is stored equals what the same report stores
without it, and each such report is counted once (REPORTS_WITH_UNKNOWN_FIELDS).
A deletion order with unknown fields is answered as one without them."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message
from printernizer.stats.v1 import aggregated_stats_pb2, ingest_admin_service_pb2, ingest_service_pb2
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import select

from .. import databases
from .conftest import (
    ADMIN_TOKEN,
    PATHS,
    TIMEOUT,
    Installation,
    RunningServer,
    report_of,
    running_server,
    snapshot,
    spliced_at_path,
    varint,
)

database_url = databases.database_url
ADMIN = bearer_metadata(ADMIN_TOKEN)
WEEK = Week.containing(dt.datetime.now(dt.UTC)).previous()
# Text that would be a leak if it were ever kept.
SECRET = b"/home/alice/prints/benchy.gcode alice@example.org 192.0.2.7 "


def marked_unknown_fields(marker: bytes) -> bytes:
    """Fields 9001-9004, one of each wire type; the length-delimited one holds `marker`."""
    return (
        varint(9001 << 3 | 0)
        + varint(2**40 + 7)
        + varint(9002 << 3 | 1)
        + b"\x01" * 8
        + varint(9003 << 3 | 2)
        + varint(len(marker))
        + marker
        + varint(9004 << 3 | 5)
        + b"\x02" * 4
    )


def carries_unknown_fields(message: Message) -> bool:
    cleaned = type(message)()
    cleaned.CopyFrom(message)
    cleaned.DiscardUnknownFields()
    return cleaned.SerializeToString() != message.SerializeToString()


def stored_content(database_url: str, installation_id: bytes) -> list[tuple[object, ...]]:
    """What is stored for an installation's reports, without the identifiers
    and times that differ between two installations."""
    varying = {"id", "report_id", "installation_id", "receipt_id", "stored_at"}
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            reports = connection.execute(
                select(schema.reports).where(schema.reports.c.installation_id == installation_id)
            ).all()
            content: list[tuple[object, ...]] = []
            for report in reports:
                content.append(tuple(v for k, v in report._mapping.items() if k not in varying))
                for table in (
                    schema.report_printers,
                    schema.report_features,
                    schema.report_errors,
                    schema.report_job_failures,
                    schema.report_job_durations,
                    schema.report_printer_jobs,
                ):
                    rows = connection.execute(select(table).where(table.c.report == report.id)).all()
                    content += sorted((table.name, *row[1:]) for row in rows)
            return content
    finally:
        engine.dispose()


def cells(database_url: str) -> Iterator[object]:
    for rows in snapshot(database_url).values():
        for row in rows:
            yield from row


async def counted(server: RunningServer) -> int:
    status = await server.admin.GetIngestStatus(
        ingest_admin_service_pb2.GetIngestStatusRequest(), metadata=ADMIN, timeout=TIMEOUT
    )
    values = {c.counter: c.value for c in status.counters}
    return values[ingest_admin_service_pb2.INGEST_COUNTER_REPORTS_WITH_UNKNOWN_FIELDS]


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(database_url, tmp_path, peer_calls_per_second=0) as running:
        yield running


def test_every_message_of_the_report_is_tried() -> None:
    # The report, its installation, two versions, the period, the fleet and its
    # printers, usage with failures, durations and jobs per family, features and errors.
    assert len(PATHS) == 13
    assert (("usage", None), ("job_failures", 0)) in PATHS
    assert (("usage", None), ("jobs_by_printer_type", 0)) in PATHS


async def test_unknown_fields_at_every_depth_are_discarded_counted_and_never_kept(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    markers = []
    for path in PATHS:
        marker = SECRET + uuid.uuid4().hex.encode()
        markers.append(marker)
        agent, twin = Installation(uuid.uuid4().bytes), Installation(uuid.uuid4().bytes)
        data = spliced_at_path(report_of(agent, WEEK, current=True), path, marked_unknown_fields(marker))
        assert carries_unknown_fields(aggregated_stats_pb2.AggregatedStats.FromString(data)), path
        receipt = await server.stub.SubmitReports(agent.submission(data), timeout=TIMEOUT)
        assert receipt.receipts[0].status == ingest_service_pb2.RECEIPT_STATUS_ACCEPTED, path
        await server.stub.SubmitReports(
            agent.submission(data), timeout=TIMEOUT
        )  # a replay: not counted again
        await server.stub.SubmitReports(twin.submission(report_of(twin, WEEK, current=True)), timeout=TIMEOUT)
        stored = stored_content(server.database_url, agent.installation_id)
        assert stored, path
        assert stored == stored_content(server.database_url, twin.installation_id), path
    assert await counted(server) == len(PATHS)

    # A deletion order a newer agent extended is answered, and leaves nothing of it.
    leaving = Installation(uuid.uuid4().bytes)
    await server.stub.SubmitReports(leaving.submission(report_of(leaving, WEEK)), timeout=TIMEOUT)
    order = ingest_service_pb2.DeletionOrder(installation_id=leaving.installation_id)
    order.requested_at.FromDatetime(dt.datetime.now(dt.UTC))
    marker = SECRET + b"deletion order"
    markers.append(marker)
    extra = marked_unknown_fields(marker)
    extended = spliced_at_path(order, (("requested_at", None),), extra) + extra
    assert carries_unknown_fields(ingest_service_pb2.DeletionOrder.FromString(extended))
    receipt = await server.stub.DeleteInstallation(leaving.signed_deletion(extended), timeout=TIMEOUT)
    assert (receipt.installation_id, receipt.reports_deleted) == (leaving.installation_id, 1)

    for cell in cells(server.database_url):
        for marker in markers:
            assert not (isinstance(cell, bytes | memoryview) and marker in bytes(cell)), cell
            assert not (isinstance(cell, str) and marker.decode() in cell), cell
    if server.database_url.startswith("sqlite"):
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("aggregation.db*"))
        assert raw
        assert all(marker not in raw for marker in markers)
    assert SECRET.decode().strip() not in caplog.text
