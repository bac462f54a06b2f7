"""Keeping the weekly rollups at scale, on PostgreSQL: a fleet of 1,000,000
installations over 12 weeks by default, generated in bulk inside the database.

Measured: the set-up; a refresh after 10,000 new reports; an installation's
deletion (which takes its reports out of the rollups) and the refresh after
it; a full rebuild of one week, and of every week; every dashboard query
(p50, through the `Analytics` object the analytics server uses); and, on a
second fleet of 100,000 installations x 52 weeks, the full rebuild of that
history.

Run: python -m benchmarks.rollups_scale [--installations N] [--weeks W] [--history-installations N]
Targets: refresh after 10,000 reports <= 1 s; after a deletion <= 1 s; rebuild of one week <= 10 s;
of 100k x 52 weeks <= 30 s; every dashboard query <= 50 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from printernizer.stats.v1 import country_pb2
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common.weeks import Week, weeks_ending
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import create_server_engine, upgrade
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups
from sqlalchemy.engine import make_url

from .analytics_queries import QUERIES
from .harness import database, print_table

NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
LAST = Week.containing(NOW).previous()
NEW_REPORTS = 10_000


def _random(salt: str) -> str:
    """A pseudo-random number in [0, 2^31) per installation number `i` and salt
    (PostgreSQL's own integer hash): attributes independent of each other, so
    that the rollups have as many groups as a real fleet's, or more."""
    return f"(hashint8(i * 1000 + {salt}) & 2147483647)"


def _pick(shares: list[tuple[int, int]], salt: int) -> str:
    """One of `shares`' values: (value, cumulative per mille)."""
    cases = " ".join(f"WHEN {_random(str(salt))} % 1000 < {limit} THEN {value}" for value, limit in shares)
    return f"CASE {cases} END"


def _skewed(count: int, salt: int, power: int) -> str:
    """0 .. count - 1, the low numbers much more often."""
    return f"LEAST({count - 1}, ({count} * power({_random(str(salt))} / 2147483648.0::float8, {power}))::int)"


# Shares of each value, skewed as real fleets are.
_DEPLOYMENT = [(3, 450), (2, 750), (4, 900), (5, 980), (1, 1000)]
_PLATFORM = [(2, 850), (3, 930), (4, 990), (5, 1000)]
_ARCHITECTURE = [(2, 640), (3, 930), (4, 1000)]
_LEVELS = [(1, 80), (2, 200), (3, 400), (4, 1000)]  # consent levels: most share everything
_STATE_COLUMNS = (
    "app_major, app_minor, app_patch, app_prerelease, python_major, python_minor, python_patch, "
    "platform, architecture, deployment_mode, country, printer_count"
)
REPORT_COLUMNS = (
    "id, report_id, installation_id, week, schema_version, receipt_id, stored_at, "
    f"{_STATE_COLUMNS}, jobs_created, jobs_completed, jobs_failed, files_downloaded, files_uploaded, "
    "uptime_hours, app_starts, unclean_shutdowns, printer_connections, printer_disconnections, consent_level"
)


def _installation_id(number: str) -> str:
    return f"('\\x0000000000000000'::bytea || int8send({number}))"


def _reporting(index: int) -> str:
    """The installations (rows of `fleet`) that report in the week of `index`:
    those that have joined, and ~90 % of weeks."""
    return f"fleet WHERE {index} >= joined AND (i * 7 + {index}) % 10 <> 0"


def _create_fleet(connection: psycopg.Connection[Any], installations: int, week_count: int) -> None:
    """Each installation's attributes, drawn once (a temporary table, `fleet`)."""
    countries = ", ".join(str(v) for _, v in sorted(country_pb2.Country.items(), key=lambda c: c[1])[1:41])
    connection.execute(
        f"""
        CREATE TEMPORARY TABLE fleet AS
        SELECT i, {_installation_id("i")} AS installation_id,
               (i * {week_count} / {installations} / 2)::int AS joined,
               {_random("7")} % 26 AS upgrades, {_random("8")} % 3 AS app_patch,
               10 + {_random("4")} % 4 AS python_minor, {_pick(_PLATFORM, 2)} AS platform,
               {_pick(_ARCHITECTURE, 3)} AS architecture, {_pick(_DEPLOYMENT, 1)} AS deployment_mode,
               (ARRAY[{countries}])[1 + {_skewed(40, 5, 2)}] AS country,
               1 + {_skewed(12, 6, 3)} AS printer_count,
               2 + {_random("9")} % 8 AS printer_type, {_random("10")} % 2 = 0 AS two_types,
               2 + ({_random("9")} + 1 + {_random("11")} % 7) % 8 AS second_type,
               {_random("12")} AS features
        FROM generate_series(1, {installations}) AS i
        """  # noqa: S608 - fixed fragments and integers
    )


_MINOR = "LEAST(12, 4 + ({index} + upgrades) / 6)"


def _write_week(
    connection: psycopg.Connection[Any], index: int, week: Week, first_id: int, reporting: str, arrived: str
) -> int:
    """The reports (and their lists) of the week of `index` from the `reporting`
    rows of `fleet`, as report rows `first_id` + i; returns how many."""
    jobs, failed = _random(f"{100 + index}"), _random(f"{200 + index}")
    drawn = f"(SELECT *, {jobs} % 30 AS jobs, {failed} % 4 AS failed FROM {reporting}) AS reporting"  # noqa: S608
    written = connection.execute(
        f"""
        INSERT INTO reports ({REPORT_COLUMNS})
        SELECT {first_id} + i, int8send({week.key}) || int8send(i), installation_id, {week.key}, 1,
               int8send(-{week.key}) || int8send(i), {arrived},
               2, {_MINOR.format(index=index)}, app_patch, false, 3, python_minor, 0, platform,
               architecture, deployment_mode, country, printer_count,
               jobs + failed, jobs, failed, 3, 1, 100 + {_random("13")} % 68, 2,
               ({_random(f"{600 + index}")} % 20 = 0)::int, 3, 1, {_pick(_LEVELS, 14)}
        FROM {drawn}
        """  # noqa: S608 - fixed fragments and integers
    ).rowcount
    # Failed jobs under one reason, completed ones under one duration (as drawn above).
    connection.execute(
        f"""
        INSERT INTO report_job_failures (report, reason, count)
        SELECT {first_id} + i, 1 + {_random("15")} % 7, failed FROM {drawn} WHERE failed > 0
        """  # noqa: S608 - fixed fragments and integers
    )
    connection.execute(
        f"""
        INSERT INTO report_job_durations (report, duration, count)
        SELECT {first_id} + i, 1 + {_random(f"{700 + index}")} % 7, jobs FROM {drawn} WHERE jobs > 0
        """  # noqa: S608 - fixed fragments and integers
    )
    # Every job on the installation's first printer family (schema-3 reports count jobs per family).
    connection.execute(
        f"""
        INSERT INTO report_printer_jobs (report, printer_type, completed, failed)
        SELECT {first_id} + i, printer_type, jobs, failed FROM {drawn} WHERE jobs + failed > 0
        """  # noqa: S608 - fixed fragments and integers
    )
    connection.execute(
        f"""
        INSERT INTO report_printers (report, printer_type, count)
        SELECT {first_id} + i, printer_type,
               CASE WHEN printer_count > 1 AND two_types THEN printer_count / 2 ELSE printer_count END
        FROM {reporting}
        UNION ALL
        SELECT {first_id} + i, second_type, printer_count - printer_count / 2
        FROM {reporting} AND printer_count > 1 AND two_types
        """  # noqa: S608 - fixed fragments and integers
    )
    connection.execute(
        f"""
        INSERT INTO report_features (report, feature, enabled)
        SELECT {first_id} + i, 1 + (features + k * 5) % 14, (features >> (k + 4)) % 3 <> 0
        FROM {reporting.replace(" WHERE", ", generate_series(0, 2) AS k WHERE")}
        """  # noqa: S608 - fixed fragments and integers
    )
    connection.execute(
        f"""
        INSERT INTO report_errors (report, error_type, component, count)
        SELECT {first_id} + i, 2 + {_random(f"{300 + index}")} % 24, 2 + {_random("21")} % 22,
               1 + {_random(f"{400 + index}")} % 9
        FROM {reporting} AND {_random(f"{500 + index}")} % 4 = 0
        """  # noqa: S608 - fixed fragments and integers
    )
    return written


def fill_fleet(url: str, installations: int, week_count: int) -> int:
    """Write `installations` installations and their reports of `week_count`
    weeks ending with LAST, with SQL inside PostgreSQL; returns the reports.
    Half the fleet is there from the start, the rest joins over the weeks;
    each installation reports ~90 % of weeks, with 1-2 printer types, 3
    features, and an error in a quarter of its reports."""
    upgrade(url)
    weeks = weeks_ending(LAST, week_count)
    with psycopg.connect(_plain(url)) as connection:
        # Loading rows that are consistent by construction: no foreign-key
        # trigger per row (session_replication_role), and the secondary
        # indexes made once at the end instead of row by row.
        connection.execute("SET session_replication_role = replica")
        connection.execute("SET maintenance_work_mem = '512MB'")
        indexes = _drop_indexes(connection)
        _create_fleet(connection, installations, week_count)
        last = week_count - 1
        connection.execute(
            f"""
            INSERT INTO installations (installation_id, public_key, registered_at, first_week, last_week,
                                       last_accepted_at, {_STATE_COLUMNS})
            SELECT installation_id, int8send(i) || int8send(i) || int8send(i) || int8send(i),
                   {_timestamp(NOW)}, (ARRAY[{", ".join(str(w.key) for w in weeks)}])[1 + joined],
                   CASE WHEN (i * 7 + {last}) % 10 = 0 THEN {weeks[-2].key} ELSE {weeks[-1].key} END,
                   {_timestamp(NOW)}, 2, {_MINOR.format(index=last)}, app_patch, false, 3, python_minor, 0,
                   platform, architecture, deployment_mode, country, printer_count
            FROM fleet
            """  # noqa: S608 - fixed fragments and integers
        )
        reports = 0
        for index, week in enumerate(weeks):
            arrived = f"{_timestamp(week.end)} + make_interval(mins => {_random(f'{30 + index}')} % 4320)"
            reports += _write_week(connection, index, week, index * installations, _reporting(index), arrived)
            connection.commit()
        for definition in indexes:
            connection.execute(definition)
        connection.execute(_FOLLOW_IDS)
        connection.commit()
    with psycopg.connect(_plain(url), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    return reports


_FOLLOW_IDS = "SELECT setval(pg_get_serial_sequence('reports', 'id'), (SELECT max(id) FROM reports))"


def add_late_reports(url: str, installations: int, week_count: int, start: int, count: int) -> None:
    """Reports for the last week from `count` installations that had not sent
    theirs (numbers from `start` on), arriving now; committed."""
    index = week_count - 1
    with psycopg.connect(_plain(url)) as connection:
        _create_fleet(connection, installations, week_count)
        first_id = int(connection.execute("SELECT max(id) FROM reports").fetchone()[0])  # type: ignore[index]
        connection.execute(
            f"""
            CREATE TEMPORARY TABLE late AS SELECT * FROM fleet
            WHERE {index} >= joined AND (i * 7 + {index}) % 10 = 0 ORDER BY i OFFSET {start} LIMIT {count}
            """  # noqa: S608 - fixed fragments and integers
        )
        written = _write_week(connection, index, LAST, first_id, "late WHERE true", _timestamp(NOW))
        assert written == count, f"only {written} installations left without a report"
        connection.execute(
            f"UPDATE installations SET last_week = {LAST.key} "  # noqa: S608 - an integer
            "WHERE installation_id IN (SELECT installation_id FROM late)"
        )
        connection.execute(_FOLLOW_IDS)


def _timestamp(moment: dt.datetime) -> str:
    return f"TIMESTAMPTZ '{moment.isoformat()}'"


def _drop_indexes(connection: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Drop the indexes and unique constraints of the tables the fleet fills
    (not their primary keys); returns the statements that make them again."""
    tables = "'installations', 'reports', 'report_printers', 'report_features', 'report_errors'"
    constraints = connection.execute(
        f"""SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid::regclass::text IN ({tables}) AND contype = 'u'"""  # noqa: S608
    ).fetchall()
    indexes = connection.execute(
        f"""SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ({tables})
            AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE contype IN ('p', 'u'))"""  # noqa: S608
    ).fetchall()
    for table, name, _ in constraints:
        connection.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        connection.execute(f'DROP INDEX "{name}"')
    return [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d in constraints] + [d for _, d in indexes]


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- the measurements ----------------------------------------------------------------------------------


@dataclass
class Figures:
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, seconds: Sequence[float], target: float | None, unit: str = "s") -> None:
        """A row: the median of `seconds` (and the spread when several)."""
        shown = [s * 1000 if unit == "ms" else s for s in seconds]
        median = statistics.median(shown)
        spread = f" ({min(shown):.2f}-{max(shown):.2f})" if len(shown) > 1 else ""
        verdict = "" if target is None else ("✔" if median <= target else "✘")
        limit = "" if target is None else f"<= {target:g} {unit}"
        self.rows.append([what, f"{median:.2f} {unit}{spread}", limit, verdict])


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await action()
    return time.perf_counter() - began


async def measure_fleet(url: str, installations: int, week_count: int, runs: int, figures: Figures) -> None:
    engine = create_server_engine(url)
    try:
        rollups = Rollups(engine, lambda: NOW)
        size = f"{installations:,} x {week_count} weeks"
        figures.add(f"first refresh, every week from nothing ({size})", [await _timed(rollups.refresh)], None)
        one_week = [await _timed(lambda: rollups.rebuild([LAST])) for _ in range(3)]
        figures.add(f"full rebuild of one week ({installations:,} installations)", one_week, 10)
        figures.add(f"full rebuild of every week ({size})", [await _timed(rollups.rebuild)], None)
        refreshes = []
        # A tenth of the fleet has not sent the last week's report: three rounds of late ones.
        late = min(NEW_REPORTS, installations // 40)
        for round_ in range(3):
            add_late_reports(url, installations, week_count, round_ * late, late)
            refreshes.append(await _timed(rollups.refresh))
        figures.add(f"refresh after {late:,} new reports", refreshes, 1)
        store = IngestStore(engine)
        deletions, after = [], []
        for number in (11, 333_333, installations // 2 + 17, installations - 3, 42):
            installation_id = b"\0" * 8 + number.to_bytes(8, "big")
            deletions.append(
                await _timed(lambda i=installation_id: store.delete_installation(i, NOW, signed_by=None))
            )
            after.append(await _timed(rollups.refresh))
        figures.add("deletion of an installation, its reports taken out of the rollups", deletions, 1)
        figures.add("refresh after a deletion", after, 1)
        analytics = Analytics(AnalyticsStore(engine), 5, lambda: NOW)
        for name, query in QUERIES:
            await query(analytics)  # warm: connections, compiled statements
            timings = [await _timed(lambda q=query: q(analytics)) for _ in range(runs)]  # type: ignore[misc]
            figures.add(f"dashboard: {name}", timings, 50, unit="ms")
    finally:
        await engine.dispose()


async def measure_history(url: str, installations: int, week_count: int, figures: Figures) -> None:
    engine = create_server_engine(url)
    try:
        rollups = Rollups(engine, lambda: NOW)
        await rollups.refresh()
        timings = [await _timed(rollups.rebuild) for _ in range(2)]
        figures.add(f"full rebuild of every week ({installations:,} x {week_count} weeks)", timings, 30)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--installations", type=int, default=1_000_000)
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--history-installations", type=int, default=100_000, help="0: skip the history")
    parser.add_argument("--history-weeks", type=int, default=52)
    parser.add_argument("--runs", type=int, default=20, help="runs of each dashboard query")
    args = parser.parse_args()
    figures = Figures()
    fleets = [(args.installations, args.weeks)]
    if args.history_installations:
        fleets.append((args.history_installations, args.history_weeks))
    for index, (installations, week_count) in enumerate(fleets):
        with (
            tempfile.TemporaryDirectory(prefix="bench-rollups-") as tmp,
            database("postgresql", Path(tmp)) as url,
        ):
            began = time.perf_counter()
            reports = fill_fleet(url, installations, week_count)
            filled = time.perf_counter() - began
            note = f"{installations:,} installations x {week_count} weeks: {reports:,} reports"
            note += f", generated in {filled:.0f} s"
            figures.notes.append(note)
            print(f"set up: {note}", file=sys.stderr)
            if index == 0:
                asyncio.run(measure_fleet(url, installations, week_count, args.runs, figures))
            else:
                asyncio.run(measure_history(url, installations, week_count, figures))
    print_table(
        "Rollups at scale, PostgreSQL", ["what", "measured (median, range)", "target", ""], figures.rows
    )
    print()
    for note in figures.notes:
        print(note)


if __name__ == "__main__":
    main()
