"""Storing reports on real SQLite and PostgreSQL: registration, idempotency, the
hourly rule across processes, key checks, deletion with tombstones, retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from printernizer_stats.store.ingest_store import SUBMISSION_INTERVAL, CheckedReport, IngestStore, Report
from printernizer_stats.store.refusals import Forbidden, TooManySubmissions, WrongKey
from sqlalchemy import func, select

from .. import databases
from ..aggregation.conftest import INSTALLATION, NOW, valid_report

database_url = databases.database_url
KEY = bytes(range(32))
W44, W45, W46 = Week(2026, 44), Week(2026, 45), Week(2026, 46)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[IngestStore]:
    databases.upgrade(database_url)
    opened = IngestStore.open(database_url)
    yield opened
    await opened.close()


def checked(reports: list[Report]) -> list[CheckedReport]:
    """Reports as the ingest domain hands them over: validated, nothing unknown."""
    return [CheckedReport(report) for report in reports]


async def registered_key(store: IngestStore, installation_id: bytes) -> bytes | None:
    async with store.engine.connect() as connection:
        key = await connection.scalar(
            select(schema.installations.c.public_key).where(
                schema.installations.c.installation_id == installation_id
            )
        )
    return bytes(key) if key is not None else None


async def count(store: IngestStore, table: object) -> int:
    async with store.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)))  # type: ignore[arg-type]


async def test_first_report_registers_the_installation_and_stores_everything(store: IngestStore) -> None:
    report = valid_report(W46)
    (receipt,) = await store.store(INSTALLATION, KEY, checked([report]), NOW)
    assert receipt.report_id == report.report_id
    assert not receipt.duplicate
    assert len(receipt.receipt_id) == 16
    assert await registered_key(store, INSTALLATION) == KEY
    assert await count(store, schema.reports) == 1
    assert await count(store, schema.report_errors) == 1
    assert await count(store, schema.report_printers) == 1
    assert await count(store, schema.report_job_durations) == 1
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(schema.reports))).one()
    assert (row.week, row.jobs_failed, row.uptime_hours, row.country) == (202646, 2, 100, 276)


async def test_every_list_is_stored_row_for_row(store: IngestStore) -> None:
    """Each engine has its own way of writing a report's lists (PostgreSQL in
    one statement); both store exactly the rows of each list, and none for an
    empty one."""
    from printernizer.stats.v1 import common_pb2

    full, empty = valid_report(W45), valid_report(W46)
    full.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_BAMBU_LAB, count=3)
    full.features.add(feature=common_pb2.FEATURE_TIMELAPSE, enabled=False)
    full.errors.add(
        error_type=common_pb2.ERROR_TYPE_TIMEOUT, component=common_pb2.COMPONENT_PRINTER_SERVICE, count=7
    )
    for field in ("features", "errors"):
        empty.ClearField(field)
    empty.printer_fleet.ClearField("printers")
    await store.store(INSTALLATION, KEY, checked([full, empty]), NOW)
    async with store.engine.connect() as connection:
        weeks = dict((await connection.execute(select(schema.reports.c.id, schema.reports.c.week))).all())

        async def rows(table: object, *columns: str) -> set[tuple[object, ...]]:
            result = await connection.execute(select(table.c.report, *(table.c[c] for c in columns)))  # type: ignore[attr-defined]
            return {(weeks[r[0]], *r[1:]) for r in result}

        assert await rows(schema.report_printers, "printer_type", "count") == {
            (W45.key, common_pb2.PRINTER_TYPE_PRUSA, 2),
            (W45.key, common_pb2.PRINTER_TYPE_BAMBU_LAB, 3),
        }
        assert await rows(schema.report_features, "feature", "enabled") == {
            (W45.key, common_pb2.FEATURE_LIBRARY, True),
            (W45.key, common_pb2.FEATURE_TIMELAPSE, False),
        }
        assert await rows(schema.report_errors, "error_type", "component", "count") == {
            (W45.key, common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API, 4),
            (W45.key, common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_PRINTER_SERVICE, 7),
        }
        assert await rows(schema.report_job_failures, "reason", "count") == {
            (week.key, common_pb2.JOB_FAILURE_REASON_CANCELLED, 2) for week in (W45, W46)
        }
        assert await rows(schema.report_job_durations, "duration", "count") == {
            (week.key, common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR, 3) for week in (W45, W46)
        }


async def test_a_replayed_report_returns_its_original_receipt_and_stores_nothing(store: IngestStore) -> None:
    report = valid_report(W46)
    (first,) = await store.store(INSTALLATION, KEY, checked([report]), NOW)
    later = NOW + dt.timedelta(minutes=5)  # within the hour: a replay is not a new submission
    (again,) = await store.store(INSTALLATION, KEY, checked([report]), later)
    assert again.duplicate
    assert (again.receipt_id, again.stored_at) == (first.receipt_id, first.stored_at)
    assert await count(store, schema.reports) == 1


async def test_one_accepted_submission_per_hour(store: IngestStore) -> None:
    await store.store(INSTALLATION, KEY, checked([valid_report(W45)]), NOW)
    with pytest.raises(TooManySubmissions) as limited:
        await store.store(INSTALLATION, KEY, checked([valid_report(W46)]), NOW + dt.timedelta(minutes=20))
    assert limited.value.retry_after == dt.timedelta(minutes=40)
    assert await count(store, schema.reports) == 1
    (receipt,) = await store.store(INSTALLATION, KEY, checked([valid_report(W46)]), NOW + SUBMISSION_INTERVAL)
    assert not receipt.duplicate
    assert await count(store, schema.reports) == 2


async def test_several_pending_weeks_go_in_one_submission(store: IngestStore) -> None:
    receipts = await store.store(INSTALLATION, KEY, checked([valid_report(w) for w in (W44, W45, W46)]), NOW)
    assert [r.duplicate for r in receipts] == [False, False, False]
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(schema.installations))).one()
    assert (row.first_week, row.last_week) == (202644, 202646)


async def test_a_leaked_installation_id_without_the_key_stores_nothing(store: IngestStore) -> None:
    await store.store(INSTALLATION, KEY, checked([valid_report(W45)]), NOW)
    later = NOW + 2 * SUBMISSION_INTERVAL
    with pytest.raises(WrongKey):
        await store.store(INSTALLATION, bytes(32), checked([valid_report(W46)]), later)
    with pytest.raises(WrongKey):  # not even a replay answers without the key
        await store.store(INSTALLATION, bytes(32), checked([valid_report(W45)]), later)
    assert await count(store, schema.reports) == 1


async def test_deletion_removes_everything_and_refuses_later_reports(store: IngestStore) -> None:
    await store.store(INSTALLATION, KEY, checked([valid_report(w) for w in (W44, W45)]), NOW)
    other = uuid.uuid4().bytes
    deleted = await store.delete_installation(INSTALLATION, NOW, signed_by=KEY)
    assert deleted.reports_deleted == 2
    for table in (schema.reports, schema.installations, schema.report_errors, schema.report_printers):
        assert await count(store, table) == 0
    again = await store.delete_installation(INSTALLATION, NOW + dt.timedelta(days=1), signed_by=KEY)
    assert again == deleted  # asking twice returns the first receipt
    with pytest.raises(Forbidden):
        await store.store(INSTALLATION, KEY, checked([valid_report(W46)]), NOW + 2 * SUBMISSION_INTERVAL)
    unknown = await store.delete_installation(
        other, NOW, signed_by=KEY
    )  # never submitted: a receipt all the same
    assert unknown.reports_deleted == 0


async def test_two_processes_storing_the_same_report_at_once_store_it_once(database_url: str) -> None:
    databases.upgrade(database_url)
    first, second = IngestStore.open(database_url), IngestStore.open(database_url)
    try:
        report = valid_report(W46)
        results = await asyncio.gather(
            first.store(INSTALLATION, KEY, checked([report]), NOW),
            second.store(INSTALLATION, KEY, checked([report]), NOW),
            return_exceptions=True,
        )
        receipts = [r[0] for r in results if isinstance(r, list)]
        assert len(receipts) == 2, results
        assert sorted(r.duplicate for r in receipts) == [False, True]
        assert receipts[0].receipt_id == receipts[1].receipt_id
        assert await count(first, schema.reports) == 1
    finally:
        await first.close()
        await second.close()


async def test_retention_deletes_old_weeks_only(store: IngestStore) -> None:
    await store.store(INSTALLATION, KEY, checked([valid_report(w) for w in (W44, W45, W46)]), NOW)
    assert await store.purge_weeks_before(W46) == 2
    assert await count(store, schema.reports) == 1
    assert await count(store, schema.report_errors) == 1
