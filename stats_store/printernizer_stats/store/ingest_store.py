"""Storing accepted reports: the ingest store, the aggregation server's writes.

Everything that must hold across several server processes sharing one
database is decided by the database itself, inside one transaction:
- a report is stored once: `reports` has unique (installation, week) and unique
  report IDs, and a process that loses a race re-reads the winner's receipt;
- the first accepted report registers the installation's key (primary key);
- at most one accepted submission per installation per hour: a conditional
  UPDATE of `last_accepted_at` claims the slot, so two processes cannot both;
- a deleted installation leaves a tombstone that refuses later reports and
  keeps the key, so that only the key's holder learns that it was deleted;
- whatever the installation's state, a request signed by another key meets
  the same refusal (`WrongKey`), decided before anything else is looked at.

The caller (the ingest domain) has already verified signatures and validated
the reports; this module trusts its input and keeps the database consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from printernizer.stats.v1 import aggregated_stats_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.weeks import Week
from sqlalchemy import bindparam, cast, delete, func, insert, literal, null, select, union_all, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import schema
from .database import create_server_engine
from .refusals import Forbidden, TooManySubmissions, WrongKey
from .rollup_store import drop_weeks_before, lock_rollups, subtract_installation

SUBMISSION_INTERVAL = dt.timedelta(hours=1)
# A transaction that lost a race is tried again this many times.
RACE_RETRIES = 3

Report = aggregated_stats_pb2.AggregatedStats

# The submission path's statements, built once: SQLAlchemy then reuses their
# compiled form, and each call only binds values (a third of the CPU per report).
_installations, _reports = schema.installations, schema.reports
# A submission's facts in one round trip: the installation (its key, its last
# accepted submission and newest week), its tombstone (and the key it kept),
# and stored receipts.
_INSTALLATION_ROW, _TOMBSTONE_ROW, _RECEIPT_ROW = 1, 2, 3
# PostgreSQL matches a UNION's column types pairwise: its NULLs carry a type.
_NO_BYTES, _NO_WEEK = cast(null(), _reports.c.receipt_id.type), cast(null(), _installations.c.last_week.type)
_FACTS = union_all(
    select(
        literal(_INSTALLATION_ROW).label("kind"),
        _installations.c.public_key.label("identifier"),
        _NO_BYTES.label("receipt_id"),
        _installations.c.last_accepted_at.label("moment"),
        _installations.c.last_week.label("week"),
    ).where(_installations.c.installation_id == bindparam("target")),
    select(
        literal(_TOMBSTONE_ROW),
        schema.tombstones.c.public_key,
        _NO_BYTES,
        schema.tombstones.c.deleted_at,
        _NO_WEEK,
    ).where(schema.tombstones.c.installation_id == bindparam("target")),
    select(
        literal(_RECEIPT_ROW), _reports.c.report_id, _reports.c.receipt_id, _reports.c.stored_at, _NO_WEEK
    ).where(
        _reports.c.installation_id == bindparam("target"),
        _reports.c.report_id.in_(bindparam("report_ids", expanding=True)),
    ),
)
_INSERT_INSTALLATION = insert(_installations)
_CLAIM = update(_installations).where(
    _installations.c.installation_id == bindparam("target"),
    _installations.c.last_accepted_at <= bindparam("cutoff"),
)
_INSERT_REPORT = insert(_reports)
_CHILD_TABLES = (
    schema.report_printers,
    schema.report_features,
    schema.report_errors,
    schema.report_job_failures,
    schema.report_job_durations,
    schema.report_printer_jobs,
)
# Each list's columns besides the report it belongs to.
_CHILD_FIELDS = {table.name: tuple(c.name for c in table.c if c.name != "report") for table in _CHILD_TABLES}
_INSERT_CHILD = {table.name: insert(table) for table in _CHILD_TABLES}


def _report_with_lists() -> Any:
    """PostgreSQL only: insert a report and all its lists in one statement.
    Each list arrives as one array per column and is unnested in step; an
    empty list inserts nothing. The statement's shape never changes, so it is
    compiled (and prepared by asyncpg) once."""
    report = (
        insert(_reports)
        .values({c.name: bindparam(c.name, type_=c.type) for c in _reports.c if c.name != "id"})
        .returning(_reports.c.id)
        .cte("inserted_report")
    )
    statement = select(report.c.id)
    for table in _CHILD_TABLES:
        fields = _CHILD_FIELDS[table.name]
        rows = select(
            report.c.id,
            *(
                func.unnest(bindparam(f"{table.name}_{field}", type_=postgresql.ARRAY(table.c[field].type)))
                for field in fields
            ),
        )
        statement = statement.add_cte(
            insert(table).from_select(["report", *fields], rows).cte(f"{table.name}_rows")
        )
    return statement


_INSERT_REPORT_WITH_LISTS = _report_with_lists()


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
    REPORTS_WITH_UNKNOWN_FIELDS = "REPORTS_WITH_UNKNOWN_FIELDS"


@dataclass(frozen=True)
class CheckedReport:
    """A validated report, ready to store, and what it carried that this server
    does not know (already discarded or normalised): counted when the report
    is stored, not again when it is replayed."""

    report: Report
    unknown_values: int = 0
    unknown_fields: bool = False


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
class _Registered:
    public_key: bytes
    last_accepted_at: dt.datetime
    last_week: int


@dataclass(frozen=True)
class _Owner:
    """Whose an installation ID is: the installation's registered key, or the
    key its tombstone kept (None: deleted by an operator before it ever
    reported, or before tombstones kept keys; then nobody holds its key)."""

    key: bytes | None
    deleted: bool

    def refuses(self, signed_by: bytes) -> bool:
        return self.key is None or self.key != signed_by


def _owner(registered_key: bytes | None, deleted: bool, tombstone_key: bytes | None) -> _Owner | None:
    """The owner of a taken ID (None: never seen). A tombstone decides over an
    installation row (which only a race between a first report and a deletion
    could leave beside it)."""
    if deleted:
        return _Owner(tombstone_key, deleted=True)
    if registered_key is not None:
        return _Owner(registered_key, deleted=False)
    return None


def _optional_bytes(value: bytes | None) -> bytes | None:
    return bytes(value) if value is not None else None


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
        # SQLite has one writer at a time, and a transaction that read before
        # writing fails at once (not after a wait) when another wrote meanwhile:
        # this process's writes take turns. (Several processes: PostgreSQL.)
        self._write_turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (committed on success, rolled back on error)."""
        async with contextlib.AsyncExitStack() as stack:
            if self._write_turn is not None:
                await stack.enter_async_context(self._write_turn)
            yield await stack.enter_async_context(self.engine.begin())

    @classmethod
    def open(cls, url: str) -> IngestStore:
        return cls(create_server_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    # --- submissions -------------------------------------------------------------

    async def store(
        self,
        installation_id: bytes,
        public_key: bytes,
        reports: Sequence[CheckedReport],
        now: dt.datetime,
    ) -> list[Receipt]:
        """Store the reports of one installation; a receipt per report, in order.
        What they carried that this server does not know is counted for the
        reports stored now."""
        for attempt in range(RACE_RETRIES):
            try:
                async with self._writing() as connection:
                    receipts = await self._store(connection, installation_id, public_key, reports, now)
                    await _count(connection, Counter.REPORTS_DUPLICATE, sum(r.duplicate for r in receipts))
                    stored = [c for c, r in zip(reports, receipts, strict=True) if not r.duplicate]
                    await _count(
                        connection, Counter.UNKNOWN_ENUM_VALUES, sum(c.unknown_values for c in stored)
                    )
                    await _count(
                        connection, Counter.REPORTS_WITH_UNKNOWN_FIELDS, sum(c.unknown_fields for c in stored)
                    )
                    return receipts
            except TooManySubmissions:
                async with self._writing() as connection:
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
        checked: Sequence[CheckedReport],
        now: dt.datetime,
    ) -> list[Receipt]:
        reports = [c.report for c in checked]
        registered, owner, known = await self._facts(connection, installation_id, reports)
        # The key first: nothing below (deletion, the hourly rule, receipts) is
        # answered to anyone but its holder.
        if owner is not None and owner.refuses(public_key):
            raise WrongKey
        if owner is not None and owner.deleted:
            raise Forbidden("this installation asked to be deleted")
        fresh = [r for r in reports if r.report_id not in known]
        if fresh:
            if registered is None:
                await self._register(connection, installation_id, public_key, fresh, now)
            else:
                await self._claim_submission(connection, installation_id, registered, fresh, now)
            for report in fresh:
                known[report.report_id] = await self._insert_report(connection, installation_id, report, now)
        fresh_ids = {r.report_id for r in fresh}
        return [Receipt(r.report_id, r.report_id not in fresh_ids, *known[r.report_id]) for r in reports]

    async def _facts(
        self, connection: AsyncConnection, installation_id: bytes, reports: Sequence[Report]
    ) -> tuple[_Registered | None, _Owner | None, dict[bytes, tuple[bytes, dt.datetime]]]:
        """In one round trip: the installation's row (or None), who owns the ID
        (None: never seen), and the receipts of those reports already stored."""
        rows = await connection.execute(
            _FACTS, {"target": installation_id, "report_ids": [r.report_id for r in reports]}
        )
        registered, tombstone_key, deleted, known = None, None, False, {}
        for row in rows:
            if row.kind == _INSTALLATION_ROW:
                registered = _Registered(bytes(row.identifier), _utc(row.moment), row.week)
            elif row.kind == _TOMBSTONE_ROW:
                deleted = True
                tombstone_key = _optional_bytes(row.identifier)
            else:
                known[bytes(row.identifier)] = (bytes(row.receipt_id), _utc(row.moment))
        registered_key = registered.public_key if registered is not None else None
        return registered, _owner(registered_key, deleted, tombstone_key), known

    async def _register(
        self,
        connection: AsyncConnection,
        installation_id: bytes,
        public_key: bytes,
        fresh: Sequence[Report],
        now: dt.datetime,
    ) -> None:
        """The first accepted report registers the installation and its key."""
        weeks = [Week.from_proto(r.period).key for r in fresh]
        newest = max(fresh, key=lambda r: Week.from_proto(r.period))
        await connection.execute(
            _INSERT_INSTALLATION,
            {
                "installation_id": installation_id,
                "public_key": public_key,
                "registered_at": now,
                "first_week": min(weeks),
                "last_week": max(weeks),
                "last_accepted_at": now,
                **_installation_state(newest),
            },
        )

    async def _claim_submission(
        self,
        connection: AsyncConnection,
        installation_id: bytes,
        registered: _Registered,
        fresh: Sequence[Report],
        now: dt.datetime,
    ) -> None:
        """Take the installation's one submission of the hour, with a conditional
        UPDATE so that two processes cannot both take it; newer reports also
        bring the installation's latest state."""
        newest = max(fresh, key=lambda r: Week.from_proto(r.period))
        newest_week = Week.from_proto(newest.period).key
        values: dict[str, Any] = {"target": installation_id, "cutoff": now - SUBMISSION_INTERVAL}
        values["last_accepted_at"] = now
        if newest_week >= registered.last_week:
            values |= {"last_week": newest_week, **_installation_state(newest)}
        claimed = await connection.execute(_CLAIM, values)
        if claimed.rowcount != 1:
            raise TooManySubmissions(registered.last_accepted_at + SUBMISSION_INTERVAL - now)

    async def _insert_report(
        self, connection: AsyncConnection, installation_id: bytes, report: Report, now: dt.datetime
    ) -> tuple[bytes, dt.datetime]:
        usage = report.usage
        receipt_id = uuid.uuid4().bytes
        values = {
            "report_id": report.report_id,
            "installation_id": installation_id,
            "week": Week.from_proto(report.period).key,
            "schema_version": report.schema_version,
            "receipt_id": receipt_id,
            "stored_at": now,
            **_installation_state(report),
            "jobs_created": usage.jobs_created,
            "jobs_completed": usage.jobs_completed,
            "jobs_failed": usage.jobs_failed,
            "files_downloaded": usage.files_downloaded,
            "files_uploaded": usage.files_uploaded,
            "uptime_hours": usage.uptime_hours,
            "app_starts": usage.app_starts,
            "unclean_shutdowns": usage.unclean_shutdowns,
            "printer_connections": usage.printer_connections,
            "printer_disconnections": usage.printer_disconnections,
            "consent_level": consent_levels.level_of(report),
        }
        children: dict[str, list[tuple[Any, ...]]] = {
            schema.report_printers.name: [(p.printer_type, p.count) for p in report.printer_fleet.printers],
            schema.report_features.name: [(f.feature, f.enabled) for f in report.features],
            schema.report_errors.name: [(e.error_type, e.component, e.count) for e in report.errors],
            schema.report_job_failures.name: [(f.reason, f.count) for f in usage.job_failures],
            schema.report_job_durations.name: [(d.duration, d.count) for d in usage.completed_job_durations],
            schema.report_printer_jobs.name: [
                (j.printer_type, j.completed, j.failed) for j in usage.jobs_by_printer_type
            ],
        }
        if connection.dialect.name == "postgresql":
            # One round trip: the report and its lists (each list as arrays).
            arrays = {
                f"{table}_{field}": [row[i] for row in rows]
                for table, rows in children.items()
                for i, field in enumerate(_CHILD_FIELDS[table])
            }
            await connection.execute(_INSERT_REPORT_WITH_LISTS, {**values, **arrays})
            return receipt_id, now
        result = await connection.execute(_INSERT_REPORT, values)
        key = result.inserted_primary_key
        assert key is not None
        for table, rows in children.items():
            if rows:
                fields = _CHILD_FIELDS[table]
                await connection.execute(
                    _INSERT_CHILD[table],
                    [{"report": key[0], **dict(zip(fields, row, strict=True))} for row in rows],
                )
        return receipt_id, now

    # --- deletion -------------------------------------------------------------------

    async def delete_installation(
        self, installation_id: bytes, now: dt.datetime, *, signed_by: bytes | None
    ) -> DeletionReceipt:
        """Delete everything stored for an installation and leave a tombstone
        that keeps its key; asking again returns the first receipt.
        `signed_by` is the key a deletion request was signed with (refused,
        whatever the state, unless it is the installation's; for an ID never
        seen, the tombstone keeps it); None for the operator's decision."""
        for attempt in range(RACE_RETRIES):
            try:
                async with self._writing() as connection:
                    # The rollups first: their reports leave them in this transaction.
                    rollups = await lock_rollups(connection)
                    owner, earlier = await self._deletion_facts(connection, installation_id)
                    if signed_by is not None and owner is not None and owner.refuses(signed_by):
                        raise WrongKey
                    if earlier is not None:
                        return earlier
                    await subtract_installation(connection, rollups, installation_id)
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
                            public_key=owner.key if owner is not None else signed_by,
                        )
                    )
                    counter = (
                        Counter.INSTALLATIONS_DELETED
                        if signed_by is not None
                        else Counter.INSTALLATIONS_DELETED_BY_OPERATOR
                    )
                    await _count(connection, counter, 1)
                    return receipt
            except IntegrityError:
                if attempt == RACE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _deletion_facts(
        self, connection: AsyncConnection, installation_id: bytes
    ) -> tuple[_Owner | None, DeletionReceipt | None]:
        """Who owns the ID (None: never seen), and its deletion receipt if it was deleted."""
        key = await connection.scalar(
            select(schema.installations.c.public_key).where(
                schema.installations.c.installation_id == installation_id
            )
        )
        tombstone = (
            await connection.execute(
                select(schema.tombstones).where(schema.tombstones.c.installation_id == installation_id)
            )
        ).first()
        owner = _owner(
            bytes(key) if key is not None else None,
            tombstone is not None,
            _optional_bytes(tombstone.public_key) if tombstone is not None else None,
        )
        if tombstone is None:
            return owner, None
        receipt = DeletionReceipt(
            installation_id,
            tombstone.reports_deleted,
            bytes(tombstone.receipt_id),
            _utc(tombstone.deleted_at),
        )
        return owner, receipt

    # --- retention -------------------------------------------------------------------

    async def purge_weeks_before(self, week: Week) -> int:
        """Delete reports of weeks before `week` (their lists and rollups go with them)."""
        async with self._writing() as connection:
            await drop_weeks_before(connection, await lock_rollups(connection), week)
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
