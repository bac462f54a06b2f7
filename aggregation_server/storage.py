"""Storing accepted reports: the one module of the aggregation server that speaks SQL.

Everything that must hold across several server processes sharing one
database is decided by the database itself, inside one transaction:
- a report is stored once: `reports` has unique (installation, week) and unique
  report IDs, and a process that loses a race re-reads the winner's receipt;
- the first accepted report registers the installation's key (primary key);
- at most one accepted submission per installation per hour: a conditional
  UPDATE of `last_accepted_at` claims the slot, so two processes cannot both;
- a deleted installation leaves a tombstone that refuses later reports.

The caller (the ingest domain) has already verified signatures and validated
the reports; this module trusts its input and keeps the database consistent.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from printernizer.stats.v1 import aggregated_stats_pb2
from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from stats_common.weeks import Week

from . import schema
from .database import async_url, enable_sqlite_foreign_keys
from .refusals import Forbidden, TooManySubmissions, Unauthenticated

SUBMISSION_INTERVAL = dt.timedelta(hours=1)
# A transaction that lost a race is tried again this many times.
RACE_RETRIES = 3

Report = aggregated_stats_pb2.AggregatedStats


class Counter(StrEnum):
    """What the ingest path counts in `ingest_counters`, shared by every
    process. Each has a row made by a migration, so counting is one UPDATE.
    Only infrequent things are counted: a counter is one row that every
    process updates."""

    REPORTS_DUPLICATE = "REPORTS_DUPLICATE"
    UNKNOWN_ENUM_VALUES = "UNKNOWN_ENUM_VALUES"
    SUBMISSIONS_RATE_LIMITED = "SUBMISSIONS_RATE_LIMITED"
    INSTALLATIONS_DELETED = "INSTALLATIONS_DELETED"
    INSTALLATIONS_DELETED_BY_OPERATOR = "INSTALLATIONS_DELETED_BY_OPERATOR"
    REPORTS_EXPIRED = "REPORTS_EXPIRED"


@dataclass(frozen=True)
class Receipt:
    report_id: bytes
    duplicate: bool  # stored by an earlier submission
    receipt_id: bytes
    stored_at: dt.datetime


@dataclass(frozen=True)
class DeletionReceipt:
    installation_id: bytes
    reports_deleted: int
    receipt_id: bytes
    deleted_at: dt.datetime


@dataclass(frozen=True)
class StoreStatus:
    installations: int
    reports: int
    tombstones: int
    oldest_week: Week | None
    newest_week: Week | None
    counters: dict[Counter, int]


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes: they were stored as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


class IngestStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> IngestStore:
        engine = create_async_engine(async_url(url))
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", enable_sqlite_foreign_keys)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # --- submissions -------------------------------------------------------------

    async def store(
        self,
        installation_id: bytes,
        public_key: bytes,
        reports: Sequence[Report],
        now: dt.datetime,
        unknown_values: int = 0,
    ) -> list[Receipt]:
        """Store the reports of one installation; a receipt per report, in order.
        `unknown_values` (enum values replaced before storing) are counted when
        something new is stored."""
        for attempt in range(RACE_RETRIES):
            try:
                async with self.engine.begin() as connection:
                    receipts = await self._store(connection, installation_id, public_key, reports, now)
                    duplicates = sum(r.duplicate for r in receipts)
                    await _count(connection, Counter.REPORTS_DUPLICATE, duplicates)
                    if duplicates < len(receipts):
                        await _count(connection, Counter.UNKNOWN_ENUM_VALUES, unknown_values)
                    return receipts
            except TooManySubmissions:
                async with self.engine.begin() as connection:
                    await _count(connection, Counter.SUBMISSIONS_RATE_LIMITED, 1)
                raise
            except IntegrityError:
                # Another process stored or registered the same thing first:
                # the next attempt sees its rows.
                if attempt == RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store(
        self,
        connection: AsyncConnection,
        installation_id: bytes,
        public_key: bytes,
        reports: Sequence[Report],
        now: dt.datetime,
    ) -> list[Receipt]:
        if await self._tombstone(connection, installation_id) is not None:
            raise Forbidden("this installation asked to be deleted")
        known = await self._receipts(connection, installation_id, [r.report_id for r in reports])
        fresh = [r for r in reports if r.report_id not in known]
        if fresh:
            await self._claim_submission(connection, installation_id, public_key, fresh, now)
            for report in fresh:
                known[report.report_id] = await self._insert_report(connection, installation_id, report, now)
        elif known:
            await self._check_key(connection, installation_id, public_key)
        fresh_ids = {r.report_id for r in fresh}
        return [Receipt(r.report_id, r.report_id not in fresh_ids, *known[r.report_id]) for r in reports]

    async def _receipts(
        self, connection: AsyncConnection, installation_id: bytes, report_ids: list[bytes]
    ) -> dict[bytes, tuple[bytes, dt.datetime]]:
        rows = await connection.execute(
            select(schema.reports.c.report_id, schema.reports.c.receipt_id, schema.reports.c.stored_at).where(
                schema.reports.c.installation_id == installation_id,
                schema.reports.c.report_id.in_(report_ids),
            )
        )
        return {bytes(r.report_id): (bytes(r.receipt_id), _utc(r.stored_at)) for r in rows}

    async def _check_key(
        self, connection: AsyncConnection, installation_id: bytes, public_key: bytes
    ) -> None:
        registered = await connection.scalar(
            select(schema.installations.c.public_key).where(
                schema.installations.c.installation_id == installation_id
            )
        )
        if registered is not None and bytes(registered) != public_key:
            raise Unauthenticated("not signed with the key this installation registered")

    async def _claim_submission(
        self,
        connection: AsyncConnection,
        installation_id: bytes,
        public_key: bytes,
        fresh: Sequence[Report],
        now: dt.datetime,
    ) -> None:
        """Register the installation, or take its one submission of the hour."""
        installations = schema.installations
        row = (
            await connection.execute(
                select(installations.c.public_key, installations.c.last_accepted_at).where(
                    installations.c.installation_id == installation_id
                )
            )
        ).first()
        newest = max(fresh, key=lambda r: Week.from_proto(r.period))
        weeks = [Week.from_proto(r.period).key for r in fresh]
        state = _installation_state(newest)
        if row is None:
            await connection.execute(
                insert(installations).values(
                    installation_id=installation_id,
                    public_key=public_key,
                    registered_at=now,
                    first_week=min(weeks),
                    last_week=max(weeks),
                    last_accepted_at=now,
                    **state,
                )
            )
            return
        if bytes(row.public_key) != public_key:
            raise Unauthenticated("not signed with the key this installation registered")
        claimed = await connection.execute(
            update(installations)
            .where(
                installations.c.installation_id == installation_id,
                installations.c.last_accepted_at <= now - SUBMISSION_INTERVAL,
            )
            .values(last_accepted_at=now)
        )
        if claimed.rowcount != 1:
            raise TooManySubmissions(_utc(row.last_accepted_at) + SUBMISSION_INTERVAL - now)
        current = await connection.scalar(
            select(installations.c.last_week).where(installations.c.installation_id == installation_id)
        )
        if current is None or max(weeks) >= current:
            await connection.execute(
                update(installations)
                .where(installations.c.installation_id == installation_id)
                .values(last_week=max(weeks), **state)
            )

    async def _insert_report(
        self, connection: AsyncConnection, installation_id: bytes, report: Report, now: dt.datetime
    ) -> tuple[bytes, dt.datetime]:
        usage = report.usage
        receipt_id = uuid.uuid4().bytes
        result = await connection.execute(
            insert(schema.reports).values(
                report_id=report.report_id,
                installation_id=installation_id,
                week=Week.from_proto(report.period).key,
                schema_version=report.schema_version,
                receipt_id=receipt_id,
                stored_at=now,
                **_installation_state(report),
                jobs_created=usage.jobs_created,
                jobs_completed=usage.jobs_completed,
                jobs_failed=usage.jobs_failed,
                files_downloaded=usage.files_downloaded,
                files_uploaded=usage.files_uploaded,
                uptime_hours=usage.uptime_hours,
                app_starts=usage.app_starts,
                unclean_shutdowns=usage.unclean_shutdowns,
                printer_connections=usage.printer_connections,
                printer_disconnections=usage.printer_disconnections,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        report_pk = key[0]
        children: list[tuple[Any, list[dict[str, Any]]]] = [
            (
                schema.report_printers,
                [{"printer_type": p.printer_type, "count": p.count} for p in report.printer_fleet.printers],
            ),
            (schema.report_features, [{"feature": f.feature, "enabled": f.enabled} for f in report.features]),
            (
                schema.report_errors,
                [
                    {"error_type": e.error_type, "component": e.component, "count": e.count}
                    for e in report.errors
                ],
            ),
            (
                schema.report_job_failures,
                [{"reason": f.reason, "count": f.count} for f in usage.job_failures],
            ),
            (
                schema.report_job_durations,
                [{"duration": d.duration, "count": d.count} for d in usage.completed_job_durations],
            ),
        ]
        for table, rows in children:
            if rows:
                await connection.execute(insert(table), [{"report": report_pk, **row} for row in rows])
        return receipt_id, now

    # --- deletion -------------------------------------------------------------------

    async def delete_installation(
        self, installation_id: bytes, now: dt.datetime, by_operator: bool = False
    ) -> DeletionReceipt:
        """Delete everything stored for an installation and leave a tombstone;
        asking again returns the first receipt."""
        for attempt in range(RACE_RETRIES):
            try:
                async with self.engine.begin() as connection:
                    earlier = await self._tombstone(connection, installation_id)
                    if earlier is not None:
                        return earlier
                    deleted = await connection.execute(
                        delete(schema.reports).where(schema.reports.c.installation_id == installation_id)
                    )
                    await connection.execute(
                        delete(schema.installations).where(
                            schema.installations.c.installation_id == installation_id
                        )
                    )
                    receipt = DeletionReceipt(installation_id, deleted.rowcount, uuid.uuid4().bytes, now)
                    await connection.execute(
                        insert(schema.tombstones).values(
                            installation_id=installation_id,
                            deleted_at=now,
                            receipt_id=receipt.receipt_id,
                            reports_deleted=receipt.reports_deleted,
                        )
                    )
                    counter = (
                        Counter.INSTALLATIONS_DELETED_BY_OPERATOR
                        if by_operator
                        else Counter.INSTALLATIONS_DELETED
                    )
                    await _count(connection, counter, 1)
                    return receipt
            except IntegrityError:
                if attempt == RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _tombstone(self, connection: AsyncConnection, installation_id: bytes) -> DeletionReceipt | None:
        row = (
            await connection.execute(
                select(schema.tombstones).where(schema.tombstones.c.installation_id == installation_id)
            )
        ).first()
        if row is None:
            return None
        return DeletionReceipt(
            installation_id, row.reports_deleted, bytes(row.receipt_id), _utc(row.deleted_at)
        )

    async def registered_key(self, installation_id: bytes) -> bytes | None:
        async with self.engine.connect() as connection:
            key = await connection.scalar(
                select(schema.installations.c.public_key).where(
                    schema.installations.c.installation_id == installation_id
                )
            )
        return bytes(key) if key is not None else None

    # --- retention -------------------------------------------------------------------

    async def purge_weeks_before(self, week: Week) -> int:
        """Delete reports of weeks before `week` (their lists go with them)."""
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(schema.reports).where(schema.reports.c.week < week.key))
            await _count(connection, Counter.REPORTS_EXPIRED, result.rowcount)
        return result.rowcount

    # --- the operator's view -----------------------------------------------------------

    async def status(self) -> StoreStatus:
        async with self.engine.connect() as connection:
            installations = await connection.scalar(select(func.count()).select_from(schema.installations))
            tombstones = await connection.scalar(select(func.count()).select_from(schema.tombstones))
            reports, oldest, newest = (
                await connection.execute(
                    select(func.count(), func.min(schema.reports.c.week), func.max(schema.reports.c.week))
                )
            ).one()
            counted: dict[str, int] = dict((await connection.execute(select(schema.ingest_counters))).all())
        return StoreStatus(
            installations=int(installations or 0),
            reports=int(reports),
            tombstones=int(tombstones or 0),
            oldest_week=Week.from_key(oldest) if oldest is not None else None,
            newest_week=Week.from_key(newest) if newest is not None else None,
            counters={counter: int(counted.get(counter.value, 0)) for counter in Counter},
        )


async def _count(connection: AsyncConnection, counter: Counter, amount: int) -> None:
    if amount:
        await connection.execute(
            update(schema.ingest_counters)
            .where(schema.ingest_counters.c.name == counter.value)
            .values(value=schema.ingest_counters.c.value + amount)
        )


def _installation_state(report: Report) -> dict[str, Any]:
    info = report.installation
    return {
        "app_major": info.app_version.major,
        "app_minor": info.app_version.minor,
        "app_patch": info.app_version.patch,
        "app_prerelease": info.app_version.prerelease,
        "python_major": info.python_version.major,
        "python_minor": info.python_version.minor,
        "python_patch": info.python_version.patch,
        "platform": info.platform,
        "architecture": info.architecture,
        "deployment_mode": info.deployment_mode,
        "country": info.country,
        "printer_count": sum(p.count for p in report.printer_fleet.printers),
    }
