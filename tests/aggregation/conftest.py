"""The aggregation folder's harness, and the aggregation server's test harness for the other folders:
a valid report and an installation that signs it (the agent's side), the real server in this process
over TLS (`running_server`, the `server` fixture) or as a process (`start_server`), and helpers to
read what it stored. Other folders import what they use from here (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from printernizer.stats.v1 import (
    aggregated_stats_pb2,
    common_pb2,
    country_pb2,
    ingest_admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from printernizer_stats.aggregation.server import AggregationServerConfig, serve
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import Week
from printernizer_stats.demo.services import free_port
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import func, select

from .. import databases
from ..conftest import ROOT

database_url = databases.database_url

# --- reports and the installations that sign them ---------------------------------------------------------

NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
INSTALLATION = uuid.UUID("6f1c2a9e-8b3d-4e5f-9a0b-1c2d3e4f5a6b").bytes
LAST_WEEK = Week.containing(NOW).previous()
FIRST_KEPT = Week(2024, 48)  # two years before NOW, as the default retention keeps


def valid_report(week: Week = LAST_WEEK) -> aggregated_stats_pb2.AggregatedStats:
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        report_id=report_id(INSTALLATION, week),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=INSTALLATION,
            app_version=common_pb2.Version(major=2, minor=7),
            python_version=common_pb2.Version(major=3, minor=11, patch=7),
            platform=common_pb2.PLATFORM_LINUX,
            deployment_mode=common_pb2.DEPLOYMENT_MODE_DOCKER,
            country=country_pb2.COUNTRY_DE,
        ),
        period=week.to_proto(),
    )
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, count=2)
    report.usage.jobs_created, report.usage.jobs_completed, report.usage.jobs_failed = 5, 3, 2
    report.usage.completed_job_durations.add(duration=common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR, count=3)
    report.usage.job_failures.add(reason=common_pb2.JOB_FAILURE_REASON_CANCELLED, count=2)
    report.usage.app_starts, report.usage.unclean_shutdowns, report.usage.uptime_hours = 2, 1, 100
    report.features.add(feature=common_pb2.FEATURE_LIBRARY, enabled=True)
    report.errors.add(error_type=common_pb2.ERROR_TYPE_TIMEOUT, component=common_pb2.COMPONENT_API, count=4)
    return report


def current_report(week: Week = LAST_WEEK) -> aggregated_stats_pb2.AggregatedStats:
    """The valid report at the current schema version (3): every part shared,
    its jobs counted per printer family too."""
    report = valid_report(week)
    report.schema_version = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
    report.consent_level = aggregated_stats_pb2.CONSENT_LEVEL_ERRORS
    report.usage.jobs_by_printer_type.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, completed=2, failed=2)
    report.usage.jobs_by_printer_type.add(printer_type=common_pb2.PRINTER_TYPE_BAMBU_LAB, completed=1)
    return report


class Installation:
    """The signing side of one installation, as its agent would sign."""

    def __init__(self, installation_id: bytes = INSTALLATION) -> None:
        self.installation_id = installation_id
        self.key = Ed25519PrivateKey.generate()
        self.public_key = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def submission(
        self, *reports: aggregated_stats_pb2.AggregatedStats | bytes
    ) -> ingest_service_pb2.SubmitReportsRequest:
        """Reports signed as the agent signs them; bytes are signed as they are."""
        request = ingest_service_pb2.SubmitReportsRequest(
            installation_id=self.installation_id, public_key=self.public_key
        )
        for report in reports:
            data = report if isinstance(report, bytes) else report.SerializeToString()
            request.reports.add(report=data, signature=self.key.sign(data))
        return request

    def deletion(self, requested_at: dt.datetime = NOW) -> ingest_service_pb2.DeleteInstallationRequest:
        order = ingest_service_pb2.DeletionOrder(installation_id=self.installation_id)
        order.requested_at.FromDatetime(requested_at)
        return self.signed_deletion(order.SerializeToString())

    def signed_deletion(self, order: bytes) -> ingest_service_pb2.DeleteInstallationRequest:
        """A deletion request carrying `order` as it is, signed."""
        return ingest_service_pb2.DeleteInstallationRequest(
            order=order, signature=self.key.sign(order), public_key=self.public_key
        )


def unknown_field(number: int, payload: bytes) -> bytes:
    """The encoding of a length-delimited field `number` that the contract does
    not have: appended to a message's bytes, a parser keeps it as unknown."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def report_of(
    installation: Installation, week: Week, current: bool = False
) -> aggregated_stats_pb2.AggregatedStats:
    """The valid report (`current`: at the current schema version) as `installation` sends it."""
    report = current_report(week) if current else valid_report(week)
    report.installation.installation_id = installation.installation_id
    report.report_id = report_id(installation.installation_id, week)
    return report


# --- the server in this process, over TLS ----------------------------------------------------------------

TIMEOUT = 10
ADMIN_TOKEN = "test-admin-token-" + "x" * 32


class OffsetClock:
    """The server's clock for a test: the real time, moved by `offset`."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@dataclass
class RunningServer:
    stub: ingest_service_pb2_grpc.IngestServiceStub
    admin: ingest_admin_service_pb2_grpc.IngestAdminServiceStub
    channel: grpc.aio.Channel
    port: int
    ca: bytes
    database_url: str


@asynccontextmanager
async def running_server(
    database_url: str,
    tmp_path: Path,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    **config: Any,
) -> AsyncIterator[RunningServer]:
    """The real server in this process, over TLS with a self-made CA; `config`
    overrides AggregationServerConfig fields, `clock` the server's time. A new SQLite database
    starts as a copy at the latest schema, so the server's migration step finds nothing to do (the
    servers started as processes, and every PostgreSQL run, still migrate empty databases)."""
    databases.copy_migrated_template(database_url)
    tls = ensure_self_made(tmp_path / "tls")
    settings = AggregationServerConfig(
        "127.0.0.1:0", database_url, tls, retention_days=730, admin_token=ADMIN_TOKEN
    )
    settings = dataclasses.replace(settings, **config)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, on_ready=ready.set_result, clock=clock))
    port = await asyncio.wait_for(ready, 30)
    assert tls.ca_certificate is not None
    ca = tls.ca_certificate.read_bytes()
    channel = grpc.aio.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=ca))
    try:
        yield RunningServer(
            ingest_service_pb2_grpc.IngestServiceStub(channel),
            ingest_admin_service_pb2_grpc.IngestAdminServiceStub(channel),
            channel,
            port,
            ca,
            database_url,
        )
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(database_url, tmp_path) as running:
        yield running


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def snapshot(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every stored row of every table but the operational counters and the rollups, sorted. The
    rollups follow the stored reports on the server's own schedule (its rollup job)."""
    from printernizer_stats.store import schema
    from printernizer_stats.store.database import create_sync_engine

    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                name: sorted((tuple(row) for row in connection.execute(table.select())), key=repr)
                for name, table in schema.metadata.tables.items()
                if name not in ("ingest_counters", "rollup_state") and not name.startswith("weekly_")
            }
    finally:
        engine.dispose()


# --- the server as a process -----------------------------------------------------------------------------

START_TIMEOUT = 60.0


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while "serving over TLS on port" not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            await asyncio.sleep(0.05)


def start_server(
    base: Path,
    database_url: str,
    name: str,
    port: int | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`python -m printernizer_stats.aggregation` with its files under `base`, logging to base/NAME.log."""
    port = port or free_port()
    log_path = base / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "printernizer_stats.aggregation",
                "--listen",
                f"127.0.0.1:{port}",
                "--database-url",
                database_url,
                "--tls-dir",
                str(base / "tls"),
                "--admin-token-file",
                str(base / "admin-token"),
                *extra,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    return ServerProcess(process, port, log_path)


def count_reports(database_url: str) -> int:
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(schema.reports)).scalar_one())
    finally:
        engine.dispose()


# --- unknown fields, and looking for identifiers in logs -------------------------------------------------

# One step into a message: a field, and the entry of a repeated one.
Step = tuple[str, int | None]


def message_paths(descriptor: Descriptor, prefix: tuple[Step, ...] = ()) -> Iterator[tuple[Step, ...]]:
    """Every message reachable from `descriptor`, as the steps that reach it."""
    yield prefix
    for field in descriptor.fields:
        if field.message_type is not None:
            step = (field.name, 0 if field.is_repeated else None)
            yield from message_paths(field.message_type, (*prefix, step))


PATHS = list(message_paths(aggregated_stats_pb2.AggregatedStats.DESCRIPTOR))


def spliced_at_path(message: Message, path: tuple[Step, ...], extra: bytes) -> bytes:
    """`message` serialized with `extra` appended inside the message at `path`
    (that entry of a repeated field moves to the end of its list)."""
    if not path:
        return message.SerializeToString() + extra
    (name, index), rest = path[0], path[1:]
    field: FieldDescriptor = message.DESCRIPTOR.fields_by_name[name]
    outer = type(message)()
    outer.CopyFrom(message)
    if index is None:
        inner = getattr(message, name)
        outer.ClearField(name)
    else:
        inner = getattr(message, name)[index]
        del getattr(outer, name)[index]
    data = spliced_at_path(inner, rest, extra)
    return outer.SerializeToString() + varint(field.number << 3 | 2) + varint(len(data)) + data


def encodings(value: bytes) -> list[str]:
    """Every way a log line could spell `value`."""
    forms = [value.hex(), value.hex().upper(), repr(value)[2:-1]]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(value).decode()
        forms += [text, text.rstrip("=")]
    if len(value) == 16:
        forms += [str(uuid.UUID(bytes=value)), str(uuid.UUID(bytes=value)).upper()]
    return forms
