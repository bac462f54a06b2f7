"""The ingest server end to end: real TLS with a self-made CA, real databases
(SQLite and PostgreSQL), status codes and their details."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from printernizer_stats.common.errors import field_violations, retry_delay
from printernizer_stats.common.weeks import Week

from .. import databases
from .conftest import TIMEOUT, Installation, RunningServer, rpc_error, snapshot, valid_report

database_url = databases.database_url
W45, W46 = Week(2026, 45), Week(2026, 46)


async def test_submit_replay_and_delete_over_tls(server: RunningServer) -> None:
    agent = Installation()
    request = agent.submission(valid_report(W45), valid_report(W46))
    first = await server.stub.SubmitReports(request, timeout=TIMEOUT)
    assert [r.status for r in first.receipts] == [ingest_service_pb2.RECEIPT_STATUS_ACCEPTED] * 2
    replay = await server.stub.SubmitReports(request, timeout=TIMEOUT)
    assert [r.status for r in replay.receipts] == [ingest_service_pb2.RECEIPT_STATUS_DUPLICATE] * 2
    assert [r.receipt_id for r in replay.receipts] == [r.receipt_id for r in first.receipts]
    deleted = await server.stub.DeleteInstallation(agent.deletion(), timeout=TIMEOUT)
    assert deleted.reports_deleted == 2
    refused = await rpc_error(server.stub.SubmitReports(request, timeout=TIMEOUT))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_refusals_carry_the_right_codes_and_details(server: RunningServer) -> None:
    agent = Installation()
    unsigned = agent.submission(valid_report(W46))
    unsigned.reports[0].signature = bytes(64)
    assert (await rpc_error(server.stub.SubmitReports(unsigned, timeout=TIMEOUT))).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    broken = valid_report(W46)
    broken.usage.uptime_hours = 999
    invalid = await rpc_error(server.stub.SubmitReports(agent.submission(broken), timeout=TIMEOUT))
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(invalid)] == ["reports[0].report.usage.uptime_hours"]
    await server.stub.SubmitReports(agent.submission(valid_report(W45)), timeout=TIMEOUT)
    limited = await rpc_error(server.stub.SubmitReports(agent.submission(valid_report(W46)), timeout=TIMEOUT))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay(limited)
    assert delay is not None
    assert dt.timedelta(minutes=59) < delay <= dt.timedelta(hours=1)


async def test_garbage_and_oversized_requests(server: RunningServer) -> None:
    raw = server.channel.unary_unary(
        "/printernizer.stats.v1.IngestService/SubmitReports",
        request_serializer=lambda data: data,
        response_deserializer=ingest_service_pb2.SubmitReportsResponse.FromString,
    )
    garbage = await rpc_error(raw(b"\xff\xff\xff", timeout=TIMEOUT))
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    huge = await rpc_error(raw(b"\x0a" + b"\xff" * 2_000_000, timeout=TIMEOUT))
    assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    health = await server.stub.SubmitReports(Installation().submission(valid_report(W46)), timeout=TIMEOUT)
    assert len(health.receipts) == 1  # still serving


async def test_plaintext_is_refused(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
        stub = ingest_service_pb2_grpc.IngestServiceStub(plain)
        error = await rpc_error(stub.SubmitReports(Installation().submission(valid_report(W46)), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_no_ip_address_is_stored_or_logged(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = Installation()
    await server.stub.SubmitReports(agent.submission(valid_report(W46)), timeout=TIMEOUT)
    unsigned = agent.submission(valid_report(W45))
    unsigned.reports[0].signature = bytes(64)
    await rpc_error(server.stub.SubmitReports(unsigned, timeout=TIMEOUT))
    assert "127.0.0.1" not in caplog.text
    if server.database_url.startswith("sqlite"):
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("aggregation.db*"))
        assert raw, "the database file was not found"
        assert b"127.0.0.1" not in raw
    else:
        import psycopg

        with psycopg.connect(server.database_url.replace("+psycopg", "")) as connection:
            dump = str(connection.execute("SELECT * FROM installations").fetchall())
            dump += str(connection.execute("SELECT * FROM reports").fetchall())
        assert "127.0.0.1" not in dump


@pytest.mark.processes
@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://nobody@127.0.0.1:1/none", "connection"),  # nothing listens on port 1
        ("nonsense://", "nonsense"),
    ],
)
def test_an_unusable_database_url_is_one_clear_line(tmp_path: Path, url: str, fragment: str) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "printernizer_stats.aggregation",
            "--listen",
            "127.0.0.1:50997",
            "--database-url",
            url,
        ],
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("printernizer_stats.aggregation: cannot")
    ]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0]
    assert "Traceback" not in result.stderr


async def test_bad_input_changes_nothing_already_stored(server: RunningServer) -> None:
    import uuid

    from .conftest import report_of

    owner = Installation(uuid.uuid4().bytes)
    W44 = Week(2026, 44)
    stored = owner.submission(report_of(owner, W44), report_of(owner, W45))
    await server.stub.SubmitReports(stored, timeout=TIMEOUT)
    before = snapshot(server.database_url)
    assert len(before["reports"]) == 2

    impostor = Installation(owner.installation_id)  # knows the ID, not the key
    unsigned = owner.submission(report_of(owner, W46))
    unsigned.reports[0].signature = bytes(64)
    implausible, future, unknown_version, foreign_id = (report_of(owner, W46) for _ in range(4))
    implausible.usage.uptime_hours = 999
    future.period.CopyFrom(Week.containing(dt.datetime.now(dt.UTC)).to_proto())
    unknown_version.schema_version = 99  # type: ignore[assignment]
    foreign_id.report_id = bytes(16)
    oversized = owner.submission(report_of(owner, W46))
    oversized.reports[0].report += b"\x00" * 20_000
    rewritten = report_of(owner, W44)  # same week and report ID, different figures, properly signed
    rewritten.usage.jobs_created = 1
    bad_requests = [
        unsigned,
        impostor.submission(report_of(impostor, W46)),
        owner.submission(implausible),
        owner.submission(future),
        owner.submission(unknown_version),
        owner.submission(foreign_id),
        oversized,
        owner.submission(report_of(owner, W46), report_of(owner, W46)),
        ingest_service_pb2.SubmitReportsRequest(),
    ]
    for request in bad_requests:
        error = await rpc_error(server.stub.SubmitReports(request, timeout=TIMEOUT))
        assert error.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED}, request
    raw = server.channel.unary_unary(
        "/printernizer.stats.v1.IngestService/SubmitReports",
        request_serializer=lambda data: data,
        response_deserializer=ingest_service_pb2.SubmitReportsResponse.FromString,
    )
    assert (
        await rpc_error(raw(b"\x12\xff\x01garbage", timeout=TIMEOUT))
    ).code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong_key_deletion = await rpc_error(server.stub.DeleteInstallation(impostor.deletion(), timeout=TIMEOUT))
    assert wrong_key_deletion.code() == grpc.StatusCode.UNAUTHENTICATED
    garbage_deletion = owner.signed_deletion(b"\xff\xff")
    assert (await rpc_error(server.stub.DeleteInstallation(garbage_deletion, timeout=TIMEOUT))).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # A rewritten copy of a stored week is answered with the original receipt; the figures stay.
    replay = await server.stub.SubmitReports(owner.submission(rewritten), timeout=TIMEOUT)
    assert replay.receipts[0].status == ingest_service_pb2.RECEIPT_STATUS_DUPLICATE

    assert snapshot(server.database_url) == before
