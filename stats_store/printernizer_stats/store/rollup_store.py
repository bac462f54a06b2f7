"""Keeping the weekly rollups current: the rollup store, the only writer of the rollup tables.

Every rollup figure is a sum over reports of what each report brings (an
installation active in a group, its printers, its errors, its jobs), so the
rollups are kept by adding and taking away contributions, never by counting
the fleet again:
- a refresh adds the reports stored since the last one: the report rows above
  the watermark (`rollup_state.last_report`) up to the newest;
- deleting an installation takes its rolled-up reports away, in the
  transaction that deletes them (`subtract_installation`, called by the
  ingest store), and retention drops whole weeks there (`drop_weeks_before`);
- an installation counts in `weekly_new` (by its first week) once the report
  its registration stored is rolled up (or expired), and stops at its deletion;
- `weekly_latest` counts installations by the week of their newest report
  rolled up: a refresh moves those with newer reports, a deletion takes the
  installation out, retention drops the expired weeks (whose installations
  have no report left);
- `weekly_arrivals` counts the report rows a refresh adds, by the week they
  arrived in; deletions do not rewrite that history.
A refresh therefore costs in proportion to the reports since the last one,
and a deletion in proportion to the installation's reports; the result is
the same as a full rebuild's (tests/store/test_rollup_maintenance.py).

The contributions of a set of reports are computed inside the database in a
few passes: the reports counted by a few sets of dimensions at once (partial
cubes: `REPORT_PARTS`), the same per printer type, their error rows and their
features, each into a temporary table; every rollup is then a GROUP BY over
those small tables, added into the rollup rows with an upsert (INSERT ... ON
CONFLICT DO UPDATE). Engines without both (SQL Server) sum from subqueries and
update or insert each row.

A full rebuild (`Rollups.rebuild`, or `request_rebuild` for the next
refresh, as migration 0005 does) recomputes everything from the reports with
the same statements.

Writers of the rollups take turns: a refresh, a deletion and retention each
take `rollup_state` first in their transaction (`lock_rollups`). On
PostgreSQL that is a table lock taken before the transaction's snapshot, so
each sees what the one before it committed; on SQLite the first write takes
the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from printernizer.stats.v1 import analytics_service_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.weeks import Week
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    CompoundSelect,
    Executable,
    FromClause,
    Integer,
    MetaData,
    Select,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from . import schema

log = logging.getLogger(__name__)

_Rows = Select[*tuple[Any, ...]]
_AnyRows = _Rows | CompoundSelect[*tuple[Any, ...]]

Dimension = analytics_service_pb2.Dimension


class Tally(enum.IntEnum):
    """The rollups of `weekly_tallies`, beside the API's dimensions (which are
    `weekly_groups`'). For each: what a row's `installations` and `amount` are.
    Numbered apart from the Dimension numbers (all below 100), so that one
    label table of the analytics can hold both."""

    FEATURES = 100  # per feature: installations with it on; installations reporting it
    ERRORS_BY_TYPE = 101  # per error type: installations reporting it; errors
    ERRORS_BY_COMPONENT = 102  # per component: installations reporting errors there; errors
    ERRORS_BY_TYPE_AND_COMPONENT = 103  # per (type, component): installations; errors
    ERRORS_BY_VERSION = 104  # per app version: installations reporting errors; errors
    FAILED_JOBS_BY_VERSION = 105  # per app version: active installations; jobs failed
    COMPLETED_JOBS_BY_VERSION = 106  # per app version: active installations; jobs completed
    # Keyed (activity) and (app version, activity), as `Activity` numbers:
    # installations with any of it in the week; the sum of it.
    ACTIVITY = 107
    ACTIVITY_BY_VERSION = 108
    # Keyed (reason) and (app version, reason): installations reporting failed
    # jobs for the reason; those jobs.
    JOB_FAILURES = 109
    JOB_FAILURES_BY_VERSION = 110
    # Keyed (duration bucket): installations reporting completed jobs of it; those jobs.
    JOB_DURATIONS = 111
    # Keyed (app version, deployment mode): installations reporting errors; errors.
    ERRORS_BY_DEPLOYMENT_AND_VERSION = 112
    # Keyed (app version, deployment mode): installations that shared their usage
    # counts (the only ones with jobs); jobs failed, completed.
    FAILED_JOBS_BY_DEPLOYMENT_AND_VERSION = 113
    COMPLETED_JOBS_BY_DEPLOYMENT_AND_VERSION = 114
    # Keyed (app version, feature): installations with it on; installations reporting it.
    FEATURES_BY_VERSION = 115
    # Keyed (consent level) and (app version, consent level): active installations
    # whose report was made at the level (a part is shared by those at its level or above).
    SHARED = 116
    SHARED_BY_VERSION = 117
    # Keyed (app version, deployment mode): active installations that shared their errors.
    ERRORS_SHARED_BY_DEPLOYMENT_AND_VERSION = 118
    # Keyed (printer type): installations reporting completed (failed) jobs on
    # the family; those jobs. Only reports that count jobs per family (schema
    # version 3 on) contribute.
    COMPLETED_JOBS_BY_PRINTER_TYPE = 119
    FAILED_JOBS_BY_PRINTER_TYPE = 120


class Activity(enum.IntEnum):
    """What an installation did in a week, as the report's usage counts say:
    the keys of the activity tallies."""

    JOBS_CREATED = 1
    JOBS_COMPLETED = 2
    JOBS_FAILED = 3
    FILES_DOWNLOADED = 4
    FILES_UPLOADED = 5
    UPTIME_HOURS = 6
    APP_STARTS = 7
    UNCLEAN_SHUTDOWNS = 8
    PRINTER_CONNECTIONS = 9
    PRINTER_DISCONNECTIONS = 10

    @property
    def column(self) -> str:
        """The `reports` column that holds it."""
        return self.name.lower()


_reports, _installations = schema.reports, schema.installations
_ZERO = literal(0)

# Fleet sizes as the API's buckets (UNSPECIFIED: the printers were not shared).
FLEET_SIZE = case(
    (
        _reports.c.consent_level < consent_levels.PRINTERS_AND_FEATURES,
        analytics_service_pb2.FLEET_SIZE_BUCKET_UNSPECIFIED,
    ),
    (_reports.c.printer_count == 0, analytics_service_pb2.FLEET_SIZE_BUCKET_NONE),
    (_reports.c.printer_count == 1, analytics_service_pb2.FLEET_SIZE_BUCKET_ONE),
    (_reports.c.printer_count <= 3, analytics_service_pb2.FLEET_SIZE_BUCKET_TWO_TO_THREE),
    (_reports.c.printer_count <= 9, analytics_service_pb2.FLEET_SIZE_BUCKET_FOUR_TO_NINE),
    else_=analytics_service_pb2.FLEET_SIZE_BUCKET_TEN_OR_MORE,
)

# The values the parts are counted by (every report dimension's), by name.
_VALUES_BY_NAME: dict[str, ColumnElement[Any]] = {
    "deployment_mode": _reports.c.deployment_mode,
    "app_major": _reports.c.app_major,
    "app_minor": _reports.c.app_minor,
    "app_patch": _reports.c.app_patch,
    "country": _reports.c.country,
    "platform": _reports.c.platform,
    "python_major": _reports.c.python_major,
    "python_minor": _reports.c.python_minor,
    "architecture": _reports.c.architecture,
    "fleet_size": FLEET_SIZE,
}
_VERSION = ("app_major", "app_minor", "app_patch")

# Each report dimension's value (a, b, c), as the parts' columns (None: 0).
REPORT_DIMENSIONS: dict[int, tuple[str | None, str | None, str | None]] = {
    Dimension.DIMENSION_DEPLOYMENT_MODE: ("deployment_mode", None, None),
    Dimension.DIMENSION_APP_VERSION: _VERSION,
    Dimension.DIMENSION_COUNTRY: ("country", None, None),
    Dimension.DIMENSION_PLATFORM: ("platform", None, None),
    # Python by major.minor: patch levels would only split the groups.
    Dimension.DIMENSION_PYTHON_VERSION: ("python_major", "python_minor", None),
    Dimension.DIMENSION_ARCHITECTURE: ("architecture", None, None),
    Dimension.DIMENSION_FLEET_SIZE: ("fleet_size", None, None),
}

# --- the contributions of a set of reports ----------------------------------------------------

# Engines with temporary tables and INSERT ... ON CONFLICT DO UPDATE. The others
# (SQL Server) sum from subqueries and update or insert row by row.
NATIVE_DIALECTS = frozenset({"postgresql", "sqlite"})


def _native(connection: AsyncConnection) -> bool:
    return connection.dialect.name in NATIVE_DIALECTS


_D, _V = Dimension.DIMENSION_DEPLOYMENT_MODE, Dimension.DIMENSION_APP_VERSION
_C, _P = Dimension.DIMENSION_COUNTRY, Dimension.DIMENSION_PLATFORM
_Y, _A = Dimension.DIMENSION_PYTHON_VERSION, Dimension.DIMENSION_ARCHITECTURE
_F, PRINTER_TYPE = Dimension.DIMENSION_FLEET_SIZE, Dimension.DIMENSION_PRINTER_TYPE
# Partial cubes: the reports counted by a few sets of dimensions at once, in
# one pass over them; every dimension's groups and every pair's are then summed
# from a part that holds them. A cube of all seven would hold nearly a row per
# report; these parts keep the two many-valued dimensions (country, version)
# apart but for their own pair, so each stays small (docs/performance.md).
REPORT_PARTS: tuple[tuple[int, ...], ...] = (
    (_C, _D, _P, _A),
    (_C, _Y, _F),
    (_V, _D, _P, _A, _Y, _F),
    (_C, _V),
)
# The same per printer type, for the printer type's groups and its pairs.
PRINTER_PARTS: tuple[tuple[int, ...], ...] = ((_C,), (_V, _Y, _F), (_D, _P, _A))


def _names(dimensions: Iterable[int]) -> set[str]:
    return {name for d in dimensions for name in REPORT_DIMENSIONS[d] if name is not None}


def _mask(part: Sequence[int]) -> int:
    """A part's number: the value columns it does not group by, as bits (the
    last value the lowest), which is what PostgreSQL's GROUPING() gives."""
    held = _names(part)
    names = list(_VALUES_BY_NAME)
    return sum(1 << (len(names) - 1 - i) for i, name in enumerate(names) if name not in held)


def _part_of(parts: Sequence[Sequence[int]], dimensions: Sequence[int]) -> int:
    """The first part that holds all of `dimensions`."""
    return next(i for i, part in enumerate(parts) if set(dimensions) <= set(part))


# Scratch tables of one transaction (never in the schema): what the rollups
# are summed from.
_scratch = MetaData()


def _temporary(name: str, *columns: Column[Any]) -> Table:
    return Table(name, _scratch, *columns, prefixes=["TEMPORARY"])


def _integers(*names: str) -> list[Column[Any]]:
    return [Column(name, Integer) for name in names]


def _big_integers(*names: str) -> list[Column[Any]]:
    return [Column(name, BigInteger) for name in names]


# The report parts: how many reports. Only that: GROUPING SETS computes every
# aggregate once per report and part (four times a report), so the reports' sums
# (jobs, their first and last row) are taken once, in the activity parts.
_REPORT_PARTS = _temporary(
    "rollup_report_parts", *_integers("week", "part", *_VALUES_BY_NAME), Column("reports", BigInteger)
)
# The printer parts: reports with printers of a type, and those printers.
_PRINTER_PARTS = _temporary(
    "rollup_printer_parts",
    *_integers("week", "part", "printer_type", *_VALUES_BY_NAME),
    *_big_integers("reports", "printers"),
)
# The reports' error rows, with what the error rollups group them by.
_ERROR_ROWS = _temporary(
    "rollup_error_rows",
    Column("report", BigInteger),
    *_integers("week", "error_type", "component", *_VERSION, "deployment_mode", "count"),
)
# The reports' features by app version: reporting them, and with them on.
_FEATURE_ROWS = _temporary(
    "rollup_feature_rows", *_integers("week", *_VERSION, "feature"), *_big_integers("enabled", "reports")
)
# The reports by app version, deployment mode and consent level: how many,
# each activity's sum, how many had any of it, and their first and last row.
_ACTIVITY_PARTS = _temporary(
    "rollup_activity_parts",
    *_integers("week", *_VERSION, "deployment_mode", "consent_level"),
    *_big_integers("reports", *(a.column for a in Activity), *(f"{a.column}_reports" for a in Activity)),
    *_big_integers("first_report", "last_report"),
)
# The reports' failed jobs by reason (outcome 1) and completed jobs by
# duration (outcome 2), by app version.
_JOB_ROWS = _temporary(
    "rollup_job_rows", *_integers("week", *_VERSION, "outcome", "value"), *_big_integers("reports", "jobs")
)
# What a job row counts: failed jobs by reason, completed jobs by duration,
# and completed and failed jobs by printer family.
_FAILED, _COMPLETED, _COMPLETED_ON_PRINTER, _FAILED_ON_PRINTER = 1, 2, 3, 4
_SCRATCH = (_REPORT_PARTS, _PRINTER_PARTS, _ERROR_ROWS, _FEATURE_ROWS, _ACTIVITY_PARTS, _JOB_ROWS)


class _CreateTemporaryAs(Executable, ClauseElement):
    """CREATE TEMPORARY TABLE ... AS SELECT: PostgreSQL plans it in parallel
    where it would not an INSERT ... SELECT (measured twice as fast)."""

    inherit_cache = False

    def __init__(self, table: Table, rows: _AnyRows) -> None:
        self.table, self.rows = table, rows


@compiles(_CreateTemporaryAs)
def _create_temporary_as(element: _CreateTemporaryAs, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CREATE TEMPORARY TABLE {element.table.name} AS {compiler.process(element.rows, **kw)}"


@dataclass(frozen=True)
class _Scope:
    """Which reports: a condition on `reports`, and, when they lie in a range
    of report rows (after, upto], that range, so that their lists are read by
    their primary keys rather than whole."""

    reports: ColumnElement[bool]
    rows: tuple[int, int] | None = None

    def of(self, child: Table) -> ColumnElement[bool]:
        """The rows of a list table (`child`) that belong to these reports."""
        joined = child.c.report == _reports.c.id
        if self.rows is None:
            return joined
        after, upto = self.rows
        return and_(joined, child.c.report > after, child.c.report <= upto)


def _part_rows(scope: _Scope, parts: Sequence[Sequence[int]], index: int | None, printers: bool) -> _Rows:
    """The scope's reports (printers: their printer rows) counted by the parts:
    one part (`index`), or every part at once (None: GROUPING SETS, PostgreSQL)."""
    values = list(_VALUES_BY_NAME.values())
    chosen = range(len(parts)) if index is None else [index]
    grouping_sets = [
        [_reports.c.week, *(_VALUES_BY_NAME[n] for n in _VALUES_BY_NAME if n in _names(parts[i]))]
        for i in chosen
    ]
    if index is None:
        part: ColumnElement[Any] = func.grouping(*values)
        shown = values
    else:
        part = literal(_mask(parts[index]))
        shown = [
            v if n in _names(parts[index]) else cast(null(), Integer) for n, v in _VALUES_BY_NAME.items()
        ]
    if printers:
        table = schema.report_printers
        columns = [_reports.c.week, part, table.c.printer_type, *shown, func.count(), func.sum(table.c.count)]
        condition = and_(scope.of(table), scope.reports)
        grouping_sets = [[*keys, table.c.printer_type] for keys in grouping_sets]
    else:
        columns = [_reports.c.week, part, *shown, func.count()]
        condition = scope.reports
    # Named as the scratch table's columns (where a subquery stands for it).
    names = (_PRINTER_PARTS if printers else _REPORT_PARTS).c.keys()
    rows = select(*(column.label(name) for column, name in zip(columns, names, strict=True))).where(condition)
    if index is None:
        return rows.group_by(func.grouping_sets(*(tuple_(*keys) for keys in grouping_sets)))
    return rows.group_by(*grouping_sets[0])


def _all_parts(
    scope: _Scope, parts: Sequence[Sequence[int]], printers: bool, grouping_sets: bool
) -> _AnyRows:
    """Every part's rows: in one pass (GROUPING SETS), or one part after the other."""
    if grouping_sets:
        return _part_rows(scope, parts, None, printers)
    return union_all(*(_part_rows(scope, parts, i, printers) for i in range(len(parts))))


_VERSION_COLUMNS = [_reports.c[name] for name in _VERSION]


def _feature_rows(scope: _Scope) -> _Rows:
    features = schema.report_features
    return (
        select(
            _reports.c.week,
            *_VERSION_COLUMNS,
            features.c.feature,
            func.sum(case((features.c.enabled, 1), else_=0)).label("enabled"),
            func.count().label("reports"),
        )
        .where(scope.of(features), scope.reports)
        .group_by(_reports.c.week, *_VERSION_COLUMNS, features.c.feature)
    )


def _error_rows(scope: _Scope) -> _Rows:
    errors = schema.report_errors
    return select(
        errors.c.report,
        _reports.c.week,
        errors.c.error_type,
        errors.c.component,
        *_VERSION_COLUMNS,
        _reports.c.deployment_mode,
        errors.c.count,
    ).where(scope.of(errors), scope.reports)


def _activity_parts(scope: _Scope) -> _Rows:
    keys = [_reports.c.week, *_VERSION_COLUMNS, _reports.c.deployment_mode, _reports.c.consent_level]
    columns = [_reports.c[a.column] for a in Activity]
    return (
        select(
            *keys,
            func.count().label("reports"),
            *(func.sum(c).label(c.name) for c in columns),
            *(func.sum(case((c > 0, 1), else_=0)).label(f"{c.name}_reports") for c in columns),
            func.min(_reports.c.id).label("first_report"),
            func.max(_reports.c.id).label("last_report"),
        )
        .where(scope.reports)
        .group_by(*keys)
    )


def _job_rows(scope: _Scope) -> _AnyRows:
    """Failed jobs by reason, completed jobs by duration, and jobs by printer family."""
    selects = []
    printer_jobs = schema.report_printer_jobs
    for outcome, child, value, jobs in (
        (_FAILED, schema.report_job_failures, schema.report_job_failures.c.reason, None),
        (_COMPLETED, schema.report_job_durations, schema.report_job_durations.c.duration, None),
        (_COMPLETED_ON_PRINTER, printer_jobs, printer_jobs.c.printer_type, printer_jobs.c.completed),
        (_FAILED_ON_PRINTER, printer_jobs, printer_jobs.c.printer_type, printer_jobs.c.failed),
    ):
        # A constant the scratch table can take its type from (a parameter has none).
        kind = literal_column(str(outcome), Integer)
        keys = [_reports.c.week, *_VERSION_COLUMNS, kind, value]
        amounts = [func.count(), func.sum(child.c["count"] if jobs is None else jobs)]
        # A family's row counts both outcomes: it reports only those it had
        # (as a rebuild after a deletion would find no row for the other).
        which = true() if jobs is None else jobs > 0
        selects.append(
            select(*(c.label(n) for c, n in zip([*keys, *amounts], _JOB_ROWS.c.keys(), strict=True)))
            .where(scope.of(child), scope.reports, which)
            .group_by(_reports.c.week, *_VERSION_COLUMNS, value)
        )
    return union_all(*selects)


@dataclass(frozen=True)
class _Sources:
    """Where the rollups are summed from: the scratch tables (or, on engines
    without temporary tables, the same as subqueries; per part)."""

    report_parts: Sequence[FromClause]
    printer_parts: Sequence[FromClause]
    error_rows: FromClause
    feature_rows: FromClause
    activity_parts: FromClause
    job_rows: FromClause


async def _sources(connection: AsyncConnection, scope: _Scope, narrow: bool, beside: bool) -> _Sources:
    """The scope's parts, error rows and features. `narrow`: find the range of
    the scope's report rows first (from the activity parts), to read their lists
    by it. `beside` (PostgreSQL, a scope worth it): the printer parts and the job
    rows are counted on a second connection meanwhile (see `_counted_beside`)."""
    if not _native(connection):
        return _Sources(
            [_part_rows(scope, REPORT_PARTS, i, False).subquery() for i in range(len(REPORT_PARTS))],
            [_part_rows(scope, PRINTER_PARTS, i, True).subquery() for i in range(len(PRINTER_PARTS))],
            _error_rows(scope).subquery(),
            _feature_rows(scope).subquery(),
            _activity_parts(scope).subquery(),
            _job_rows(scope).subquery(),
        )
    postgresql = connection.dialect.name == "postgresql"
    beside = beside and postgresql and not narrow
    side: asyncio.Task[list[list[tuple[Any, ...]]]] | None = None
    if beside:
        side = asyncio.create_task(
            _counted_beside(
                connection,
                [
                    (_all_parts(scope, PRINTER_PARTS, True, True), [_PARTS_HASH_MEMORY]),
                    (_job_rows(scope), []),
                ],
            )
        )
    try:
        await _create_parts(connection, _REPORT_PARTS, _all_parts(scope, REPORT_PARTS, False, postgresql))
        await connection.execute(_CreateTemporaryAs(_ACTIVITY_PARTS, _activity_parts(scope)))
        if narrow:
            span = select(func.min(_ACTIVITY_PARTS.c.first_report), func.max(_ACTIVITY_PARTS.c.last_report))
            low, high = (await connection.execute(span)).one()
            if low is not None:
                scope = _Scope(scope.reports, (int(low) - 1, int(high)))
        if postgresql:
            await connection.execute(text(f"SET LOCAL {_MERGE_LISTS}"))
        if side is None:
            await _create_parts(
                connection, _PRINTER_PARTS, _all_parts(scope, PRINTER_PARTS, True, postgresql)
            )
        await connection.execute(_CreateTemporaryAs(_ERROR_ROWS, _error_rows(scope)))
        await connection.execute(_CreateTemporaryAs(_FEATURE_ROWS, _feature_rows(scope)))
        if side is None:
            await connection.execute(_CreateTemporaryAs(_JOB_ROWS, _job_rows(scope)))
        else:
            printer_parts, job_rows = await side
            await _fill_scratch(connection, _PRINTER_PARTS, printer_parts)
            await _fill_scratch(connection, _JOB_ROWS, job_rows)
    except BaseException:
        if side is not None:
            side.cancel()
            with contextlib.suppress(BaseException):
                await side
        raise
    if postgresql:
        await connection.execute(text("SET LOCAL enable_hashjoin = on"))
        # Temporary tables get no statistics by themselves; without them the
        # planner guesses their sizes.
        for table in _SCRATCH:
            await connection.execute(text(f"ANALYZE {table.name}"))
    return _Sources(
        [_REPORT_PARTS] * len(REPORT_PARTS),
        [_PRINTER_PARTS] * len(PRINTER_PARTS),
        _ERROR_ROWS,
        _FEATURE_ROWS,
        _ACTIVITY_PARTS,
        _JOB_ROWS,
    )


# A list's rows and their reports both lie in report order: merging the two
# beats hashing the reports (measured twice as fast on the printers).
_MERGE_LISTS = "enable_hashjoin = off"
# The parts statements' hash memory (see _create_parts).
_PARTS_HASH_MEMORY = "hash_mem_multiplier = 8"
# A rebuild groups millions of rows: in memory, not in files; and its
# statements are many and short, not worth compiling.
_MAINTENANCE_SETTINGS = ("work_mem = '128MB'", "jit = off")


async def _counted_beside(
    connection: AsyncConnection, statements: Sequence[tuple[_AnyRows, Sequence[str]]]
) -> list[list[tuple[Any, ...]]]:
    """The rows of read-only `statements`, each under its settings ("name =
    value"), run on a second connection that sees exactly what `connection`'s transaction sees
    (its snapshot, exported and imported). PostgreSQL runs a GROUPING SETS
    statement on one core: counting the printer parts and the job lists beside
    the report parts and the features keeps both cores busy through a rebuild."""
    snapshot = str(await connection.scalar(text("SELECT pg_export_snapshot()")))
    if not all(c.isalnum() or c == "-" for c in snapshot):  # it is written into a statement
        raise ValueError(f"unexpected snapshot name {snapshot!r}")
    async with connection.engine.connect() as side:
        await side.execution_options(isolation_level="REPEATABLE READ")
        async with side.begin():
            await side.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
            for setting in (*_MAINTENANCE_SETTINGS, _MERGE_LISTS):
                await side.execute(text(f"SET LOCAL {setting}"))
            found = []
            for rows, settings in statements:
                for setting in settings:
                    await side.execute(text(f"SET LOCAL {setting}"))
                found.append([tuple(row) for row in await side.execute(rows)])
                for setting in settings:
                    await side.execute(text(f"SET LOCAL {setting.split(' = ')[0]} = DEFAULT"))
            return found


async def _fill_scratch(connection: AsyncConnection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """A scratch table (PostgreSQL) holding `rows`, in the table's column order:
    one statement, each column passed as an array."""
    await connection.run_sync(table.create)
    columns = list(table.c)
    arrays = [cast(bindparam(f"c{i}"), postgresql.ARRAY(c.type)) for i, c in enumerate(columns)]
    unnested = func.unnest(*arrays).table_valued(*(c.name for c in columns)).render_derived()
    values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    await connection.execute(
        insert(table).from_select([c.name for c in columns], select(*unnested.c)),
        {f"c{i}": list(column) for i, column in enumerate(values)},
    )


async def _create_parts(connection: AsyncConnection, table: Table, rows: _AnyRows) -> None:
    """The scratch table of report or printer parts."""
    postgresql = connection.dialect.name == "postgresql"
    if postgresql:
        # PostgreSQL sizes the parts' hash tables by its estimate of their groups,
        # the product of their columns' values (2.2 million printer groups over
        # 52 weeks, where 140,000 are found). Past the default limit it sorts
        # some sets instead of hashing them all: millions of rows sorted on disk,
        # twice as slow. A hash table still spills to disk past the raised limit.
        await connection.execute(text(f"SET LOCAL {_PARTS_HASH_MEMORY}"))
    await connection.execute(_CreateTemporaryAs(table, rows))
    if postgresql:
        # Not for the other statements: a hash table is allocated for the groups
        # estimated, up to the limit (a pass over the job lists estimated at
        # millions of groups allocated 200 MB for 9,000 under it, and ran slower).
        await connection.execute(text("SET LOCAL hash_mem_multiplier = DEFAULT"))


async def _drop_sources(connection: AsyncConnection) -> None:
    if _native(connection):
        for table in _SCRATCH:
            await connection.run_sync(table.drop)


def _values(source: FromClause, names: Sequence[str | None]) -> list[ColumnElement[Any]]:
    return [source.c[name] if name is not None else _ZERO for name in names]


def _contributions(sources: _Sources, sign: int) -> list[tuple[Table, _Rows]]:
    """Each rollup's rows for the scope's reports (negated when `sign` is -1),
    as (table, rows in the table's column order), one row per key."""

    def signed(amount: ColumnElement[Any]) -> ColumnElement[Any]:
        return amount if sign > 0 else -amount

    statements: list[tuple[Table, _Rows]] = []

    def rollup(
        table: Table,
        source: FromClause,
        part: int | None,
        keys: Sequence[Any],
        amounts: Sequence[Any],
        where: ColumnElement[bool] | None = None,
        having: ColumnElement[bool] | None = None,
    ) -> None:
        """`part`: the part of a parts source to read; `where`: which of the source's
        rows; `having`: which keys (those whose rows would be empty are left out,
        as a rebuild would find no row for them)."""
        grouping = [k for k in keys if not isinstance(k, BindParameter)]
        rows = select(*keys, *(signed(a) for a in amounts)).select_from(source)
        # A WHERE always: SQLite would read an ON after a bare FROM as a join's.
        if part is not None:
            where = source.c.part == part
        rows = rows.where(where if where is not None else true()).group_by(*grouping)
        statements.append((table, rows.having(having) if having is not None else rows))

    def report_part(*dimensions: int) -> tuple[FromClause, int]:
        index = _part_of(REPORT_PARTS, dimensions)
        return sources.report_parts[index], _mask(REPORT_PARTS[index])

    def printer_part(*dimensions: int) -> tuple[FromClause, int]:
        index = _part_of(PRINTER_PARTS, dimensions)
        return sources.printer_parts[index], _mask(PRINTER_PARTS[index])

    activity = sources.activity_parts
    totals = [func.sum(activity.c[name]) for name in ("reports", "jobs_completed", "jobs_failed")]
    rollup(schema.weekly_totals, activity, None, [activity.c.week], totals)
    for dimension, names in REPORT_DIMENSIONS.items():
        source, part = report_part(dimension)
        keys = [source.c.week, literal(dimension), *_values(source, names)]
        rollup(schema.weekly_groups, source, part, keys, [func.sum(source.c.reports), _ZERO])
    source, part = printer_part()
    keys = [source.c.week, literal(PRINTER_TYPE), source.c.printer_type, _ZERO, _ZERO]
    amounts: list[ColumnElement[Any]] = [func.sum(source.c.reports), func.sum(source.c.printers)]
    rollup(schema.weekly_groups, source, part, keys, amounts)
    for by_version, outcome in (
        (Tally.FAILED_JOBS_BY_VERSION, "jobs_failed"),
        (Tally.COMPLETED_JOBS_BY_VERSION, "jobs_completed"),
    ):
        keys = [activity.c.week, literal(int(by_version)), *_values(activity, _VERSION), _ZERO]
        amounts = [func.sum(activity.c.reports), func.sum(activity.c[outcome])]
        rollup(schema.weekly_tallies, activity, None, keys, amounts)

    def tally(
        code: Tally,
        source: FromClause,
        names: Sequence[str | None],
        amounts: Sequence[Any],
        where: ColumnElement[bool] | None = None,
    ) -> None:
        """A tally's rows: keyed by up to four of the source's columns."""
        values = _values(source, [*names, *[None] * (4 - len(names))])
        keys = [source.c.week, literal(int(code)), *values]
        rollup(schema.weekly_tallies, source, None, keys, amounts, where)

    features = sources.feature_rows
    feature_amounts = [func.sum(features.c.enabled), func.sum(features.c.reports)]
    tally(Tally.FEATURES, features, ["feature"], feature_amounts)
    tally(Tally.FEATURES_BY_VERSION, features, [*_VERSION, "feature"], feature_amounts)
    errors = sources.error_rows
    error_groups: dict[Tally, Sequence[str | None]] = {
        Tally.ERRORS_BY_TYPE: ["error_type"],
        Tally.ERRORS_BY_COMPONENT: ["component"],
        Tally.ERRORS_BY_TYPE_AND_COMPONENT: ["error_type", "component"],
        Tally.ERRORS_BY_VERSION: _VERSION,
        Tally.ERRORS_BY_DEPLOYMENT_AND_VERSION: [*_VERSION, "deployment_mode"],
    }
    for code, keyed_by in error_groups.items():
        reporting = func.count(func.distinct(errors.c.report))
        if set(keyed_by) == {"error_type", "component"}:
            # A report has one error row per (type, component), the list's key:
            # counting the rows counts the reports, without sorting them for distinct ones.
            reporting = func.count()
        tally(code, errors, keyed_by, [reporting, func.sum(errors.c["count"])])
    for code, outcome in (
        (Tally.FAILED_JOBS_BY_DEPLOYMENT_AND_VERSION, "jobs_failed"),
        (Tally.COMPLETED_JOBS_BY_DEPLOYMENT_AND_VERSION, "jobs_completed"),
    ):
        amounts = [func.sum(activity.c.reports), func.sum(activity.c[outcome])]
        sharing_usage = activity.c.consent_level >= consent_levels.USAGE
        tally(code, activity, [*_VERSION, "deployment_mode"], amounts, sharing_usage)
    for kind in Activity:
        with_it = func.sum(activity.c[f"{kind.column}_reports"])
        amounts = [with_it, func.sum(activity.c[kind.column])]
        for code, version in ((Tally.ACTIVITY, []), (Tally.ACTIVITY_BY_VERSION, _VERSION)):
            keys = [activity.c.week, literal(int(code)), *_values(activity, version)]
            keys += [literal(int(kind))] + [_ZERO] * (3 - len(version))
            # Only where an installation did any of it: a row of zeros is no row.
            rollup(schema.weekly_tallies, activity, None, keys, amounts, having=with_it != 0)
    shared = [func.sum(activity.c.reports), _ZERO]
    tally(Tally.SHARED, activity, ["consent_level"], shared)
    tally(Tally.SHARED_BY_VERSION, activity, [*_VERSION, "consent_level"], shared)
    sharing_errors = activity.c.consent_level >= consent_levels.ERRORS
    tally(
        Tally.ERRORS_SHARED_BY_DEPLOYMENT_AND_VERSION,
        activity,
        [*_VERSION, "deployment_mode"],
        shared,
        sharing_errors,
    )
    jobs = sources.job_rows
    job_amounts = [func.sum(jobs.c.reports), func.sum(jobs.c.jobs)]
    failed, completed = jobs.c.outcome == _FAILED, jobs.c.outcome == _COMPLETED
    for code, keyed_by, which in (
        (Tally.JOB_FAILURES, ["value"], failed),
        (Tally.JOB_FAILURES_BY_VERSION, [*_VERSION, "value"], failed),
        (Tally.JOB_DURATIONS, ["value"], completed),
        (Tally.COMPLETED_JOBS_BY_PRINTER_TYPE, ["value"], jobs.c.outcome == _COMPLETED_ON_PRINTER),
        (Tally.FAILED_JOBS_BY_PRINTER_TYPE, ["value"], jobs.c.outcome == _FAILED_ON_PRINTER),
    ):
        tally(code, jobs, keyed_by, job_amounts, which)
    # Pairs of dimensions, in Dimension order.
    for first, second in itertools.combinations(sorted([*REPORT_DIMENSIONS, PRINTER_TYPE]), 2):
        if PRINTER_TYPE in (first, second):
            other = second if first == PRINTER_TYPE else first
            source, part = printer_part(other)
            printer_value = (source.c.printer_type, _ZERO, _ZERO)
            values = {PRINTER_TYPE: printer_value, other: tuple(_values(source, REPORT_DIMENSIONS[other]))}
            amounts = [func.sum(source.c.reports), func.sum(source.c.printers)]
        else:
            source, part = report_part(first, second)
            values = {d: tuple(_values(source, REPORT_DIMENSIONS[d])) for d in (first, second)}
            amounts = [func.sum(source.c.reports), _ZERO]
        keys = [source.c.week, literal(first), literal(second), *values[first], *values[second]]
        rollup(schema.weekly_pairs, source, part, keys, amounts)
    return statements


async def _upsert(connection: AsyncConnection, table: Table, rows: _Rows) -> None:
    """Add `rows` (one per key, in the table's column order) into `table`:
    a key it has gets the amounts added, a new key is inserted."""
    keys = [c.name for c in table.primary_key.columns]
    amounts = [c.name for c in table.c if not c.primary_key]
    if _native(connection):
        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        statement = dialect_insert(table).from_select(list(table.c.keys()), rows)
        statement = statement.on_conflict_do_update(
            index_elements=keys, set_={name: table.c[name] + statement.excluded[name] for name in amounts}
        )
        await connection.execute(statement)
        return
    # Other engines (SQL Server): row by row, updating where the key is there.
    for row in (await connection.execute(rows)).all():
        key = dict(zip(keys, row[: len(keys)], strict=True))
        added = dict(zip(amounts, row[len(keys) :], strict=True))
        updated = await connection.execute(
            update(table)
            .where(*(table.c[name] == value for name, value in key.items()))
            .values({name: table.c[name] + value for name, value in added.items()})
        )
        if updated.rowcount == 0:
            await connection.execute(insert(table).values(**key, **added))


# Rollup tables with a row per week and group, and what an empty row looks like.
_WEEKLY_TABLES = (schema.weekly_totals, schema.weekly_groups, schema.weekly_tallies, schema.weekly_pairs)


def _empty(table: Table) -> ColumnElement[bool]:
    """Rows that no report contributes to any more (a full rebuild has none)."""
    if table is schema.weekly_totals:
        return table.c.active == 0
    return and_(table.c.installations == 0, table.c.amount == 0)


async def _apply(
    connection: AsyncConnection, scope: _Scope, sign: int, narrow: bool = False, beside: bool = False
) -> set[int]:
    """Add (sign 1) or take away (-1) the contributions of the scope's reports
    to every weekly rollup; returns the weeks of those reports. `narrow`: the
    reports lie in a range of rows worth finding first (a week's); `beside`:
    they are many, worth a second connection (see `_sources`)."""
    sources = await _sources(connection, scope, narrow, beside)
    first = sources.report_parts[0]
    weeks_of = select(first.c.week).where(first.c.part == _mask(REPORT_PARTS[0])).distinct()
    weeks = {int(w) for w in (await connection.execute(weeks_of)).scalars()}
    if weeks:
        for table, rows in _contributions(sources, sign):
            await _upsert(connection, table, rows)
    # (A failure rolls the transaction back, and their creation with it.)
    await _drop_sources(connection)
    if sign < 0 and weeks:
        for table in _WEEKLY_TABLES:
            await connection.execute(delete(table).where(table.c.week.in_(sorted(weeks)), _empty(table)))
    return weeks


# --- installations by first week -----------------------------------------------------------------


# An installation's registration report: the report its first submission
# stored for its first week (stored when the installation was registered). Once
# a refresh has rolled it up (or retention expired it) the installation counts
# in `weekly_new`. A later report for that week (sent again after retention
# expired the first, under a longer retention) is not it.
_REGISTRATION_REPORT = and_(
    _reports.c.installation_id == _installations.c.installation_id,
    _reports.c.week == _installations.c.first_week,
    _reports.c.stored_at == _installations.c.registered_at,
)


def _registration_pending(watermark: int) -> ColumnElement[bool]:
    """Whether an installation's registration report is not rolled up yet."""
    return exists().where(_REGISTRATION_REPORT, _reports.c.id > watermark)


async def _count_first_weeks(connection: AsyncConnection, reports: ColumnElement[bool]) -> None:
    """Count in `weekly_new` the installations whose registration report is among `reports`."""
    # Looked up report by report: the cost follows the reports, not the installations.
    first_week = (
        select(_installations.c.first_week).where(_REGISTRATION_REPORT).scalar_subquery().label("first_week")
    )
    registrations = select(first_week).where(reports).subquery()
    rows = (
        select(registrations.c.first_week, func.count())
        .where(registrations.c.first_week.is_not(None))
        .group_by(registrations.c.first_week)
    )
    await _upsert(connection, schema.weekly_new, rows)


async def _recount_first_weeks(connection: AsyncConnection, watermark: int) -> None:
    new = schema.weekly_new
    await connection.execute(delete(new))
    rows = (
        select(_installations.c.first_week, func.count())
        .where(~_registration_pending(watermark))
        .group_by(_installations.c.first_week)
    )
    await connection.execute(insert(new).from_select(["week", "installations"], rows))


# --- installations by the week of their newest report ------------------------------------------------


def _newest_before(installation: ColumnElement[Any], watermark: int) -> ColumnElement[Any]:
    """The week of an installation's newest report rolled up (NULL: none)."""
    earlier = _reports.alias("earlier")
    return (
        select(func.max(earlier.c.week))
        .where(earlier.c.installation_id == installation, earlier.c.id <= watermark)
        .scalar_subquery()
    )


async def _move_latest(connection: AsyncConnection, after: int, upto: int) -> None:
    """Installations whose newest report is among the rows (after, upto] move
    to that week in `weekly_latest` (from their newest week before, if any)."""
    fresh = (
        select(_reports.c.installation_id, func.max(_reports.c.week).label("newest"))
        .where(_reports.c.id > after, _reports.c.id <= upto)
        .group_by(_reports.c.installation_id)
        .subquery()
    )
    moves = select(fresh.c.newest, _newest_before(fresh.c.installation_id, after).label("before")).cte()
    moved = and_(moves.c.before.is_not(None), moves.c.newest > moves.c.before)
    changes = union_all(
        select(moves.c.newest.label("week"), literal(1).label("change")).where(
            or_(moves.c.before.is_(None), moved)
        ),
        select(moves.c.before, literal(-1)).where(moved),
    ).subquery()
    rows = select(changes.c.week, func.sum(changes.c.change)).where(true()).group_by(changes.c.week)
    latest = schema.weekly_latest
    await _upsert(connection, latest, rows)
    await connection.execute(delete(latest).where(latest.c.installations == 0))


async def _recount_latest(connection: AsyncConnection, watermark: int) -> None:
    latest = schema.weekly_latest
    await connection.execute(delete(latest))
    newest = (
        select(func.max(_reports.c.week).label("week"))
        .where(_reports.c.id <= watermark)
        .group_by(_reports.c.installation_id)
        .subquery()
    )
    rows = select(newest.c.week, func.count()).group_by(newest.c.week)
    await connection.execute(insert(latest).from_select(["week", "installations"], rows))


# --- reports received per week of arrival ----------------------------------------------------------


async def _count_arrivals(connection: AsyncConnection, after: int, upto: int) -> None:
    """Add the report rows (after, upto] to the reports received per week."""
    in_range = and_(_reports.c.id > after, _reports.c.id <= upto)
    if connection.dialect.name == "postgresql":
        # ISO year and week of the UTC day, as YYYYWW.
        week = func.to_char(func.timezone("UTC", _reports.c.stored_at), "IYYYIW").cast(Integer)
        received = await connection.execute(select(week, func.count()).where(in_range).group_by(week))
        counts = {int(w): int(n) for w, n in received}
    else:
        counts = {}
        rows = await connection.stream(select(_reports.c.stored_at).where(in_range))
        async for (stored_at,) in rows:
            moment = stored_at if stored_at.tzinfo is not None else stored_at.replace(tzinfo=dt.UTC)
            key = Week.containing(moment).key
            counts[key] = counts.get(key, 0) + 1
    for key, count in sorted(counts.items()):
        await _upsert(connection, schema.weekly_arrivals, select(literal(key), literal(count)).where(true()))


# --- taking turns, and the watermark ------------------------------------------------------------------


@dataclass(frozen=True)
class RollupState:
    """Where the rollups stand: the newest report row they hold, and whether a
    full rebuild was asked for."""

    last_report: int
    rebuild_requested: bool


async def lock_rollups(connection: AsyncConnection) -> RollupState:
    """Take the rollups for the rest of this transaction, and read where they
    stand. Must be the transaction's first statement: on PostgreSQL a table
    lock taken before the snapshot (so the transaction sees what the writer
    before it committed), elsewhere a write to the state row (on SQLite, the
    first write takes the database)."""
    state = schema.rollup_state
    if connection.dialect.name == "postgresql":
        await connection.execute(text("LOCK TABLE rollup_state IN EXCLUSIVE MODE"))
    else:
        await connection.execute(update(state).values(last_report=state.c.last_report))
    row = (await connection.execute(select(state.c.last_report, state.c.rebuild_requested))).first()
    if row is None:  # never refreshed: everything is still to be rolled up
        return RollupState(0, rebuild_requested=True)
    return RollupState(int(row.last_report), bool(row.rebuild_requested))


async def subtract_installation(
    connection: AsyncConnection, state: RollupState, installation_id: bytes
) -> None:
    """Take an installation out of the rollups (its reports rolled up so far),
    in the transaction that is deleting it; `state` from `lock_rollups`."""
    first = (
        await connection.execute(
            select(_installations.c.first_week, _registration_pending(state.last_report)).where(
                _installations.c.installation_id == installation_id
            )
        )
    ).first()
    if first is not None and not first[1]:
        new = schema.weekly_new
        await _upsert(connection, new, select(literal(first[0]), literal(-1)).where(true()))
        await connection.execute(delete(new).where(new.c.week == first[0], new.c.installations == 0))
    installation = literal(installation_id, _reports.c.installation_id.type)
    newest = await connection.scalar(select(_newest_before(installation, state.last_report)))
    if newest is not None:
        latest = schema.weekly_latest
        await _upsert(connection, latest, select(literal(newest), literal(-1)).where(true()))
        await connection.execute(delete(latest).where(latest.c.week == newest, latest.c.installations == 0))
    scope = _Scope(and_(_reports.c.installation_id == installation_id, _reports.c.id <= state.last_report))
    await _apply(connection, scope, -1)


async def drop_weeks_before(connection: AsyncConnection, state: RollupState, week: Week) -> None:
    """Retention: drop the rollups of the weeks before `week`, in the
    transaction that is deleting their reports; `state` from `lock_rollups`."""
    # Installations whose registration report expires before a refresh saw it
    # count now: no refresh will.
    await _count_first_weeks(connection, and_(_reports.c.week < week.key, _reports.c.id > state.last_report))
    # Installations whose newest report expires have none left.
    for table in (*_WEEKLY_TABLES, schema.weekly_latest):
        await connection.execute(delete(table).where(table.c.week < week.key))


async def _save_state(connection: AsyncConnection, last_report: int, now: dt.datetime) -> None:
    state = schema.rollup_state
    values = {"last_report": last_report, "refreshed_at": now, "rebuild_requested": False}
    updated = await connection.execute(update(state).where(state.c.id == 1).values(**values))
    if updated.rowcount == 0:
        await connection.execute(insert(state).values(id=1, **values))


# How long a refresh waits on PostgreSQL for the report writes in flight to
# finish (ingest waits behind it meanwhile); when they take longer (a large
# retention pass), the refresh is left to the next round.
SETTLE_TIMEOUT = "1s"


class Rollups:
    """Keeps the rollups of the database at `engine` current."""

    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    ) -> None:
        self.engine = engine
        self.clock = clock

    async def refreshed_at(self) -> dt.datetime | None:
        """When the last refresh completed, by any server sharing the database (None: never)."""
        async with self.engine.connect() as connection:
            refreshed: dt.datetime | None = await connection.scalar(
                select(func.max(schema.rollup_state.c.refreshed_at))
            )
        if refreshed is None:
            return None
        return refreshed if refreshed.tzinfo is not None else refreshed.replace(tzinfo=dt.UTC)  # SQLite: UTC

    async def refresh(self) -> list[Week]:
        """Add the reports stored since the last refresh (after a full rebuild
        when one was asked for); returns the weeks whose rollups changed.

        One transaction: a reader sees the figures of one moment, never some
        weeks added and others not."""
        return await self._maintain(rebuild=None)

    async def rebuild(self, weeks: Iterable[Week] | None = None) -> list[Week]:
        """Recompute the rollups from the reports: every one (then add the
        reports since the last refresh, as a refresh does), or only the
        rollups of `weeks`."""
        return await self._maintain(rebuild=[w.key for w in weeks] if weeks is not None else [])

    async def request_rebuild(self) -> None:
        """Have the next refresh rebuild everything first."""
        async with self.engine.begin() as connection:
            await lock_rollups(connection)
            state = schema.rollup_state
            await connection.execute(update(state).values(rebuild_requested=True))

    async def _maintain(self, rebuild: list[int] | None) -> list[Week]:
        """`rebuild`: None (a refresh), [] (everything), or weeks. A refresh
        skips when another is under way or report writes stay in flight (the
        next one will do); a rebuild waits."""
        async with self.engine.connect() as lock:
            postgresql = lock.dialect.name == "postgresql"
            waits = rebuild is not None
            # One writer of the rollups at a time across replicas.
            take = text(f"SELECT {'pg_advisory_lock' if waits else 'pg_try_advisory_lock'}(:key)")
            if postgresql and await lock.scalar(take, {"key": _LOCK_KEY}) is False:
                return []
            await lock.commit()
            try:
                newest = await self._settled_newest() if postgresql else None
                while postgresql and newest is None and waits:
                    newest = await self._settled_newest()
                if postgresql and newest is None:
                    log.warning("rollups: report writes still in flight after %s; next time", SETTLE_TIMEOUT)
                    return []
                return await self._maintain_locked(rebuild, newest)
            finally:
                if postgresql:
                    await lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                    await lock.commit()

    async def _settled_newest(self) -> int | None:
        """PostgreSQL: the newest report row below which every report row is
        committed (or never will be). Report rows may commit out of id order;
        a SHARE lock on `reports` waits for the writes in flight, and a row
        written after it gets a higher id. None: they took too long."""
        async with self.engine.connect() as connection:
            try:
                async with connection.begin():
                    await connection.execute(text(f"SET LOCAL lock_timeout = '{SETTLE_TIMEOUT}'"))
                    await connection.execute(text("LOCK TABLE reports IN SHARE MODE"))
                    newest = await connection.scalar(select(func.max(_reports.c.id)))
            except DBAPIError as error:
                if getattr(error.orig, "sqlstate", None) == "55P03":  # lock_not_available
                    return None
                raise
        return int(newest or 0)

    async def _maintain_locked(self, rebuild: list[int] | None, newest: int | None) -> list[Week]:
        async with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # Every statement reads one snapshot, taken after the lock.
                await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                state = await lock_rollups(connection)
                if newest is None:  # the lock is the database's: every row is committed
                    newest = int(await connection.scalar(select(func.max(_reports.c.id))) or 0)
                if connection.dialect.name == "postgresql":
                    for setting in _MAINTENANCE_SETTINGS:
                        await connection.execute(text(f"SET LOCAL {setting}"))
                if state.rebuild_requested:  # asked for (or never built): everything
                    rebuild = []
                upto = max(newest, state.last_report)
                if rebuild is None:
                    weeks = await _apply_new(connection, state.last_report, upto)
                elif not rebuild:  # everything, from the reports up to now
                    weeks = await _recompute(connection, [], upto)
                    await _count_arrivals(connection, state.last_report, upto)
                else:  # those weeks, as they stand
                    weeks = await _recompute(connection, rebuild, state.last_report)
                    upto = state.last_report
                await _save_state(connection, upto, self.clock())
        if weeks:
            log.info("rollups: %d week(s) changed", len(weeks))
        return [Week.from_key(w) for w in sorted(weeks)]


async def _apply_new(connection: AsyncConnection, watermark: int, newest: int) -> set[int]:
    """Add the report rows (watermark, newest] to every rollup; returns their weeks."""
    if newest <= watermark:
        return set()
    rows = and_(_reports.c.id > watermark, _reports.c.id <= newest)
    weeks = await _apply(connection, _Scope(rows, (watermark, newest)), 1)
    await _count_first_weeks(connection, rows)
    await _move_latest(connection, watermark, newest)
    await _count_arrivals(connection, watermark, newest)
    return weeks


async def _recompute(connection: AsyncConnection, weeks: list[int], watermark: int) -> set[int]:
    """The rollups of `weeks` (every week: []) from their reports up to the watermark."""
    reports = _reports.c.id <= watermark
    if weeks:
        reports = and_(reports, _reports.c.week.in_(weeks))
    for table in _WEEKLY_TABLES:
        await connection.execute(delete(table).where(table.c.week.in_(weeks) if weeks else true()))
    # Every week: the rows up to the watermark; some weeks: their range, found first.
    changed = await _apply(
        connection,
        _Scope(reports, None if weeks else (0, watermark)),
        1,
        narrow=bool(weeks),
        beside=not weeks,
    )
    if not weeks:
        await _recount_first_weeks(connection, watermark)
        await _recount_latest(connection, watermark)
    return changed | set(weeks)


_LOCK_KEY = 0x526F6C6C  # "Roll"
