"""Keeping the weekly rollups current: the rollup store, the only writer of the rollup tables.
that writes.

A week's rollup rows are rebuilt from its reports inside the database
(INSERT ... SELECT ... GROUP BY) whenever that week changed: new report rows
(found by id above the last refresh's watermark) or deleted ones (an
installation's deletion request or retention; found by comparing each week's
report count with its rollup). Installations by first week are small and
rebuilt whole. A refresh costs a few statements per changed week, and a
dashboard query then reads a few rows per week, however long the history.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable
from typing import Any

from printernizer.stats.v1 import analytics_service_pb2
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import schema
from sqlalchemy import case, delete, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

Dimension = analytics_service_pb2.Dimension
# Rollup rows that are not a Dimension of the API. For each: what a row's
# `installations` and `amount` are.
FEATURES = 100  # per feature: installations with it on; installations reporting it
ERRORS_BY_TYPE = 101  # per error type: installations reporting it; errors
ERRORS_BY_COMPONENT = 102  # per component: installations reporting errors there; errors
ERRORS_BY_TYPE_AND_COMPONENT = 103  # per (type, component): installations; errors
ERRORS_BY_VERSION = 104  # per app version: installations reporting errors; errors
FAILED_JOBS_BY_VERSION = 105  # per app version: active installations; jobs failed
COMPLETED_JOBS_BY_VERSION = 106  # per app version: active installations; jobs completed

_reports, _groups = schema.reports, schema.weekly_groups
_ZERO = literal(0)

# Fleet sizes as the API's buckets.
FLEET_SIZE = case(
    (_reports.c.printer_count == 0, analytics_service_pb2.FLEET_SIZE_BUCKET_NONE),
    (_reports.c.printer_count == 1, analytics_service_pb2.FLEET_SIZE_BUCKET_ONE),
    (_reports.c.printer_count <= 3, analytics_service_pb2.FLEET_SIZE_BUCKET_TWO_TO_THREE),
    (_reports.c.printer_count <= 9, analytics_service_pb2.FLEET_SIZE_BUCKET_FOUR_TO_NINE),
    else_=analytics_service_pb2.FLEET_SIZE_BUCKET_TEN_OR_MORE,
)

# Each dimension's value columns (a, b, c) over `reports`.
REPORT_DIMENSIONS: dict[int, tuple[Any, Any, Any]] = {
    Dimension.DIMENSION_DEPLOYMENT_MODE: (_reports.c.deployment_mode, _ZERO, _ZERO),
    Dimension.DIMENSION_APP_VERSION: (_reports.c.app_major, _reports.c.app_minor, _reports.c.app_patch),
    Dimension.DIMENSION_COUNTRY: (_reports.c.country, _ZERO, _ZERO),
    Dimension.DIMENSION_PLATFORM: (_reports.c.platform, _ZERO, _ZERO),
    # Python by major.minor: patch levels would only split the groups.
    Dimension.DIMENSION_PYTHON_VERSION: (_reports.c.python_major, _reports.c.python_minor, _ZERO),
    Dimension.DIMENSION_ARCHITECTURE: (_reports.c.architecture, _ZERO, _ZERO),
    Dimension.DIMENSION_FLEET_SIZE: (FLEET_SIZE, _ZERO, _ZERO),
}

_COLUMNS = ["week", "dimension", "value_a", "value_b", "value_c", "installations", "amount"]


def _week_group_inserts(week: int) -> list[Any]:
    """The statements that rebuild one week's group rows."""
    statements = []
    for dimension, (a, b, c) in REPORT_DIMENSIONS.items():
        rows = (
            select(literal(week), literal(dimension), a, b, c, func.count(), _ZERO)
            .where(_reports.c.week == week)
            .group_by(a, b, c)
        )
        statements.append(insert(_groups).from_select(_COLUMNS, rows))
    printers = schema.report_printers
    by_type = (
        select(
            literal(week),
            literal(Dimension.DIMENSION_PRINTER_TYPE),
            printers.c.printer_type,
            _ZERO,
            _ZERO,
            func.count(),
            func.sum(printers.c.count),
        )
        .select_from(printers.join(_reports, printers.c.report == _reports.c.id))
        .where(_reports.c.week == week)
        .group_by(printers.c.printer_type)
    )
    statements.append(insert(_groups).from_select(_COLUMNS, by_type))
    features = schema.report_features
    enabled = func.sum(case((features.c.enabled, 1), else_=0))
    by_feature = (
        select(literal(week), literal(FEATURES), features.c.feature, _ZERO, _ZERO, enabled, func.count())
        .select_from(features.join(_reports, features.c.report == _reports.c.id))
        .where(_reports.c.week == week)
        .group_by(features.c.feature)
    )
    statements.append(insert(_groups).from_select(_COLUMNS, by_feature))
    errors = schema.report_errors
    error_groups: dict[int, tuple[Any, Any, Any]] = {
        ERRORS_BY_TYPE: (errors.c.error_type, _ZERO, _ZERO),
        ERRORS_BY_COMPONENT: (errors.c.component, _ZERO, _ZERO),
        ERRORS_BY_TYPE_AND_COMPONENT: (errors.c.error_type, errors.c.component, _ZERO),
        ERRORS_BY_VERSION: (_reports.c.app_major, _reports.c.app_minor, _reports.c.app_patch),
    }
    for code, (a, b, c) in error_groups.items():
        rows = (
            select(
                literal(week),
                literal(code),
                a,
                b,
                c,
                func.count(func.distinct(errors.c.report)),
                func.sum(errors.c.count),
            )
            .select_from(errors.join(_reports, errors.c.report == _reports.c.id))
            .where(_reports.c.week == week)
            .group_by(a, b, c)
        )
        statements.append(insert(_groups).from_select(_COLUMNS, rows))
    version = (_reports.c.app_major, _reports.c.app_minor, _reports.c.app_patch)
    for code, jobs in (
        (FAILED_JOBS_BY_VERSION, _reports.c.jobs_failed),
        (COMPLETED_JOBS_BY_VERSION, _reports.c.jobs_completed),
    ):
        rows = (
            select(literal(week), literal(code), *version, func.count(), func.sum(jobs))
            .where(_reports.c.week == week)
            .group_by(*version)
        )
        statements.append(insert(_groups).from_select(_COLUMNS, rows))
    return statements


_PAIR_COLUMNS = [
    "week", "first", "second", "first_a", "first_b", "first_c", "second_a", "second_b", "second_c",
    "installations", "amount",
]  # fmt: skip


def _week_pair_inserts(week: int) -> list[Any]:
    """The statements that rebuild one week's rows for every pair of dimensions."""
    printers = schema.report_printers
    columns = dict(REPORT_DIMENSIONS)
    columns[Dimension.DIMENSION_PRINTER_TYPE] = (printers.c.printer_type, _ZERO, _ZERO)
    statements = []
    for first, second in itertools.combinations(sorted(columns), 2):
        values = [*columns[first], *columns[second]]
        with_printers = Dimension.DIMENSION_PRINTER_TYPE in (first, second)
        source = _reports.join(printers, printers.c.report == _reports.c.id) if with_printers else _reports
        rows = (
            select(
                literal(week),
                literal(first),
                literal(second),
                *values,
                func.count(),
                func.sum(printers.c.count) if with_printers else _ZERO,
            )
            .select_from(source)
            .where(_reports.c.week == week)
            .group_by(*values)
        )
        statements.append(insert(schema.weekly_pairs).from_select(_PAIR_COLUMNS, rows))
    return statements


async def _rebuild_week(connection: AsyncConnection, week: int) -> None:
    await connection.execute(delete(_groups).where(_groups.c.week == week))
    await connection.execute(delete(schema.weekly_pairs).where(schema.weekly_pairs.c.week == week))
    await connection.execute(delete(schema.weekly_totals).where(schema.weekly_totals.c.week == week))
    totals = select(
        literal(week), func.count(), func.sum(_reports.c.jobs_completed), func.sum(_reports.c.jobs_failed)
    ).where(_reports.c.week == week)
    count = (await connection.execute(totals)).one()
    if not count[1]:
        return  # no reports left for this week: no rollup either
    await connection.execute(
        insert(schema.weekly_totals).from_select(["week", "active", "jobs_completed", "jobs_failed"], totals)
    )
    for statement in [*_week_group_inserts(week), *_week_pair_inserts(week)]:
        await connection.execute(statement)


async def _rebuild_new_installations(connection: AsyncConnection) -> None:
    installations = schema.installations
    await connection.execute(delete(schema.weekly_new))
    await connection.execute(
        insert(schema.weekly_new).from_select(
            ["week", "installations"],
            select(installations.c.first_week, func.count()).group_by(installations.c.first_week),
        )
    )


async def _changed_weeks(connection: AsyncConnection) -> tuple[set[int], int, int]:
    """Weeks whose reports changed since the last refresh; the newest report
    row and the number of reports now."""
    newest, total = (await connection.execute(select(func.max(_reports.c.id), func.count()))).one()
    newest, total = int(newest or 0), int(total)
    state = (await connection.execute(select(schema.rollup_state))).first()
    watermark = int(state.last_report) if state is not None else 0
    added = await connection.execute(
        select(_reports.c.week, func.count()).where(_reports.c.id > watermark).group_by(_reports.c.week)
    )
    changed = {}
    for week, count in added:
        changed[int(week)] = int(count)
    expected = (int(state.reports) if state is not None else 0) + sum(changed.values())
    weeks = set(changed)
    if state is None or total != expected:
        # Some reports were deleted: find the weeks whose counts moved.
        counted: dict[int, int] = dict(
            (await connection.execute(select(_reports.c.week, func.count()).group_by(_reports.c.week))).all()
        )
        rolled: dict[int, int] = dict(
            (
                await connection.execute(select(schema.weekly_totals.c.week, schema.weekly_totals.c.active))
            ).all()
        )
        weeks |= {int(w) for w in set(counted) | set(rolled) if counted.get(w, 0) != rolled.get(w, 0)}
    return weeks, newest, total


async def _count_arrivals(connection: AsyncConnection, after: int, upto: int) -> None:
    """Add the report rows (after, upto] to the reports received per week."""
    received: dict[int, int] = {}
    rows = await connection.stream(
        select(_reports.c.stored_at).where(_reports.c.id > after, _reports.c.id <= upto)
    )
    async for (stored_at,) in rows:
        moment = stored_at if stored_at.tzinfo is not None else stored_at.replace(tzinfo=dt.UTC)
        week = Week.containing(moment).key
        received[week] = received.get(week, 0) + 1
    arrivals = schema.weekly_arrivals
    for week, count in received.items():
        updated = await connection.execute(
            update(arrivals).where(arrivals.c.week == week).values(reports=arrivals.c.reports + count)
        )
        if updated.rowcount == 0:
            await connection.execute(insert(arrivals).values(week=week, reports=count))


class Rollups:
    """Refreshes the rollups of the database at `engine`."""

    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    ) -> None:
        self.engine = engine
        self.clock = clock

    async def refresh(self) -> list[Week]:
        """Bring the rollups up to date; returns the weeks rebuilt.

        Each week is rebuilt in a transaction of its own, so the aggregation
        server's writes never wait long behind a refresh (on SQLite a
        transaction locks the whole database). The watermark and the arrival
        counts move together in a last transaction: a refresh that stops
        half-way is simply done again."""
        async with self.engine.connect() as lock:
            postgresql = lock.dialect.name == "postgresql"
            # One refresh at a time across analytics replicas; the others skip.
            try_lock = text("SELECT pg_try_advisory_lock(:key)")
            if postgresql and not await lock.scalar(try_lock, {"key": _LOCK_KEY}):
                return []
            await lock.commit()
            try:
                return await self._refresh()
            finally:
                if postgresql:
                    await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                    await lock.commit()

    async def _refresh(self) -> list[Week]:
        async with self.engine.connect() as connection:
            state = (await connection.execute(select(schema.rollup_state))).first()
            weeks, newest, total = await _changed_weeks(connection)
        # One transaction: a reader sees the figures of one moment, every week's
        # and the installations known, never some weeks rebuilt and others not.
        async with self.engine.begin() as connection:
            for week in sorted(weeks):
                await _rebuild_week(connection, week)
            if weeks:
                await _rebuild_new_installations(connection)
            await _count_arrivals(connection, int(state.last_report) if state is not None else 0, newest)
            await _save_state(connection, newest, total, self.clock())
        if weeks:
            log.info("rollups: rebuilt %d week(s)", len(weeks))
        return [Week.from_key(w) for w in sorted(weeks)]


_LOCK_KEY = 0x526F6C6C  # "Roll"


async def _save_state(connection: AsyncConnection, newest: int, total: int, now: dt.datetime) -> None:
    state = schema.rollup_state
    values = {"last_report": newest, "reports": total, "refreshed_at": now}
    updated = await connection.execute(update(state).where(state.c.id == 1).values(**values))
    if updated.rowcount == 0:
        await connection.execute(insert(state).values(id=1, **values))
