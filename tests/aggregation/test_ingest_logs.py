"""No identifier and no report bytes in any log line of the real server process
(`python -m printernizer_stats.aggregation --log-format json --log-level DEBUG`), on
SQLite and on a PostgreSQL server of the test's own.

The process sees accepted, duplicate, refused (invalid, unsigned, another
key, rate-limited, malformed ID), deleted (by the owner and by the operator)
submissions, reports and deletion orders with unknown fields, and database
errors in the middle of a request: a constraint the database enforces on a
report's list (drivers and SQLAlchemy put the refused row or the statement's
parameters into their errors), and, on PostgreSQL, the database stopped and
started again. Then every line is searched for every installation ID, report
ID, receipt ID and public key used, in hex, UUID text, base64 (standard and
URL-safe, padded or not), Python's bytes notation and raw; and for the
reports' bytes and the text carried in unknown fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from printernizer.stats.v1 import ingest_admin_service_pb2, ingest_service_pb2, ingest_service_pb2_grpc
from printernizer.stats.v1 import ingest_admin_service_pb2_grpc as admin_grpc
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.weeks import Week

from ..postgres_instance import postgres_instance
from .conftest import Installation, encodings, report_of, start_server, unknown_field

pytestmark = pytest.mark.processes

TIMEOUT = 10
LAST_WEEK = Week.containing(dt.datetime.now(dt.UTC)).previous()
WEEKS = [LAST_WEEK.previous().previous(), LAST_WEEK.previous(), LAST_WEEK]
# A count of created jobs the database is made to refuse (a constraint added for the test).
REFUSED_COUNT = 4242
SECRET = b"alice@example.org /home/alice/benchy.gcode"


@contextlib.contextmanager
def database(kind: str, base: Path) -> Iterator[tuple[str, object]]:
    """(URL, the PostgreSQL instance or None) for a database of the test's own."""
    if kind == "sqlite":
        yield f"sqlite:///{base / 'aggregation.db'}", None
    else:
        with postgres_instance() as instance:
            yield instance.url, instance


def refuse_a_count(kind: str, url: str) -> None:
    """Make the database itself refuse a report of REFUSED_COUNT created jobs."""
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            connection.execute(
                "CREATE TRIGGER refuse_count BEFORE INSERT ON reports "
                f"WHEN NEW.jobs_created = {REFUSED_COUNT} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
            connection.commit()
    else:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                f"ALTER TABLE reports ADD CONSTRAINT refuse_count CHECK (jobs_created <> {REFUSED_COUNT})"
            )


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_no_identifier_or_report_reaches_the_log(kind: str, tmp_path: Path) -> None:
    secrets: list[bytes] = []  # every identifier, key and report the server saw
    with database(kind, tmp_path) as (url, instance):
        server = start_server(
            tmp_path,
            url,
            "server",
            extra=("--log-format", "json", "--log-level", "DEBUG", "--peer-calls-per-second", "0"),
        )
        try:
            await server.wait_until_serving()
            ca = (tmp_path / "tls" / "ca.crt").read_bytes()
            admin_metadata = bearer_metadata((tmp_path / "admin-token").read_text().strip())
            async with grpc.aio.secure_channel(
                f"localhost:{server.port}", grpc.ssl_channel_credentials(root_certificates=ca)
            ) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                admin = admin_grpc.IngestAdminServiceStub(channel)

                async def submit(agent: Installation, *reports: object) -> grpc.StatusCode:
                    request = agent.submission(*reports)  # type: ignore[arg-type]
                    secrets.extend(signed.report for signed in request.reports)
                    try:
                        answer = await stub.SubmitReports(request, timeout=TIMEOUT)
                    except grpc.aio.AioRpcError as error:
                        return error.code()
                    secrets.extend(r.receipt_id for r in answer.receipts)
                    return grpc.StatusCode.OK

                async def delete(agent: Installation) -> grpc.StatusCode:
                    try:
                        answer = await stub.DeleteInstallation(
                            agent.deletion(dt.datetime.now(dt.UTC)), timeout=TIMEOUT
                        )
                    except grpc.aio.AioRpcError as error:
                        return error.code()
                    secrets.append(answer.receipt_id)
                    return grpc.StatusCode.OK

                owner, leaving, dropped, failing = (Installation(uuid.uuid4().bytes) for _ in range(4))
                thief = Installation(owner.installation_id)
                agents = [owner, leaving, dropped, failing, thief]
                # Accepted, then duplicate; refused: within the hour, invalid, unsigned, another key.
                assert (
                    await submit(owner, report_of(owner, WEEKS[0]), report_of(owner, WEEKS[1]))
                    == grpc.StatusCode.OK
                )
                assert await submit(owner, report_of(owner, WEEKS[0])) == grpc.StatusCode.OK
                assert await submit(owner, report_of(owner, WEEKS[2])) == grpc.StatusCode.RESOURCE_EXHAUSTED
                implausible = report_of(owner, WEEKS[2])
                implausible.usage.uptime_hours = 999
                assert await submit(owner, implausible) == grpc.StatusCode.INVALID_ARGUMENT
                unsigned = owner.submission(report_of(owner, WEEKS[2]))
                unsigned.reports[0].signature = bytes(64)
                assert (
                    await code_of(stub.SubmitReports(unsigned, timeout=TIMEOUT))
                    == grpc.StatusCode.UNAUTHENTICATED
                )
                assert await submit(thief, report_of(thief, WEEKS[2])) == grpc.StatusCode.UNAUTHENTICATED
                assert await delete(thief) == grpc.StatusCode.UNAUTHENTICATED
                not_v4 = Installation(uuid.uuid1().bytes)
                agents.append(not_v4)
                assert await submit(not_v4, report_of(not_v4, WEEKS[2])) == grpc.StatusCode.INVALID_ARGUMENT
                # Unknown fields, in a report and in a deletion order.
                extended = report_of(leaving, WEEKS[2]).SerializeToString() + unknown_field(77, SECRET)
                assert await submit(leaving, extended) == grpc.StatusCode.OK
                # Deleted by the owner (twice: the same receipt), then refused.
                assert await delete(leaving) == grpc.StatusCode.OK
                assert await delete(leaving) == grpc.StatusCode.OK
                assert (
                    await submit(leaving, report_of(leaving, WEEKS[1])) == grpc.StatusCode.PERMISSION_DENIED
                )
                order = ingest_service_pb2.DeletionOrder(installation_id=leaving.installation_id)
                order.requested_at.FromDatetime(dt.datetime.now(dt.UTC))
                signed = leaving.signed_deletion(order.SerializeToString() + unknown_field(78, SECRET))
                assert await code_of(stub.DeleteInstallation(signed, timeout=TIMEOUT)) == grpc.StatusCode.OK
                # Deleted by the operator.
                assert await submit(dropped, report_of(dropped, WEEKS[2])) == grpc.StatusCode.OK
                operator = ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(
                    installation_id=dropped.installation_id
                )
                receipt = await admin.DeleteInstallationAsOperator(
                    operator, metadata=admin_metadata, timeout=TIMEOUT
                )
                secrets.append(receipt.receipt.receipt_id)

                # The database refuses a row in the middle of the request's transaction.
                refuse_a_count(kind, url)
                refused = report_of(failing, WEEKS[2])
                refused.usage.jobs_created = REFUSED_COUNT
                assert await submit(failing, refused) == grpc.StatusCode.INTERNAL
                if instance is not None:
                    # The database goes away under the server's open connections, and comes back.
                    instance.ctl("stop", "-m", "immediate")  # type: ignore[attr-defined]
                    assert await submit(failing, report_of(failing, WEEKS[1])) == grpc.StatusCode.UNAVAILABLE
                    instance.ctl("start")  # type: ignore[attr-defined]
                    for _ in range(20):
                        if await submit(failing, report_of(failing, WEEKS[1])) == grpc.StatusCode.OK:
                            break
                        await asyncio.sleep(0.5)
                    else:
                        pytest.fail("the server did not recover when the database came back")
        finally:
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 30)

    for agent in agents:
        secrets += [agent.installation_id, agent.public_key]
        secrets += [report_of(agent, week).report_id for week in WEEKS]
    raw = server.log_path.read_bytes()
    lines = raw.decode(errors="replace").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    # The paths that log ran: the database's refusal and (PostgreSQL) its absence.
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("submission failed") for m in messages), messages
    if kind == "postgresql":
        assert any("the database is not answering" in m for m in messages), messages
    # The database libraries log statements with their parameters at DEBUG: not here.
    assert not [e for e in entries if e["logger"].startswith(("aiosqlite", "sqlalchemy.engine"))]
    # The lines as written, and each JSON entry's values as a reader gets them.
    texts = lines + [str(value) for entry in entries for value in entry.values()]
    for secret in secrets:
        assert secret not in raw
        for form in encodings(secret):
            found = [text for text in texts if form in text]
            assert not found, (form, found[:1])
    assert SECRET not in raw
    assert b"benchy" not in raw


def test_an_unexpected_failure_is_located_through_the_projects_own_frames_without_its_message() -> None:
    """The log line of a bug names each exception's type along the chain and the project's frames it
    passed through (store and aggregation code), innermost last; never a message, which may quote a row."""
    from printernizer_stats.aggregation.servicer import describe_failure
    from printernizer_stats.store.database import sync_url

    secret = uuid.uuid4().hex
    try:
        try:
            sync_url(f"no url {secret}")  # SQLAlchemy refuses it, called from the store's own code
        except Exception as inner:
            raise KeyError(secret) from inner
    except KeyError as failure:
        described = describe_failure(failure)
    assert secret not in described
    assert described.split("; caused by ")[0].startswith(
        ("KeyError at test_ingest_logs.py:", "builtins.KeyError at test_ingest_logs.py:")
    )
    assert "; caused by " in described
    cause = described.split("; caused by ", 1)[1]
    # The store's frame is named, not only the innermost one (which is SQLAlchemy's).
    assert "database.py:" in cause, cause
    assert "sync_url" in cause, cause
