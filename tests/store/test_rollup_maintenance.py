"""The rollups kept incrementally equal the rollups rebuilt from scratch, row
for row, after any history: reports stored (through the real ingest store),
installations deleted, weeks expired by retention, and refreshes, in random
order, on SQLite and PostgreSQL; and the rollup store's other guarantees (a
report committed after a later one is not lost; engines without an upsert)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import aggregated_stats_pb2, common_pb2, country_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.weeks import Week
from printernizer_stats.store import rollup_store, schema
from printernizer_stats.store.database import create_server_engine, create_sync_engine, upgrade
from printernizer_stats.store.ingest_store import CheckedReport, IngestStore
from printernizer_stats.store.refusals import Forbidden, WrongKey
from printernizer_stats.store.rollup_store import Activity, Rollups, Tally
from sqlalchemy import delete, func, insert, literal_column, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import databases

database_url = databases.database_url

START = dt.datetime(2026, 10, 5, 9, tzinfo=dt.UTC)
WEEKS = [Week(2026, 38), Week(2026, 39), Week(2026, 40), Week(2026, 41)]
INSTALLATIONS = [bytes([n + 1]) * 16 for n in range(5)]
DURATIONS = [common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR, common_pb2.JOB_DURATION_BUCKET_UNDER_4_HOURS]
DURATIONS.append(common_pb2.JOB_DURATION_BUCKET_UNKNOWN)
REASONS = [common_pb2.JOB_FAILURE_REASON_CANCELLED, common_pb2.JOB_FAILURE_REASON_PRINTER_ERROR]
REASONS.append(common_pb2.JOB_FAILURE_REASON_FILAMENT_RUNOUT)
KEY = bytes(range(32))
# What the rollups are compared on; weekly_arrivals is history (a rebuild keeps it), checked on its own.
ROLLUP_TABLES = (
    schema.weekly_totals,
    schema.weekly_groups,
    schema.weekly_tallies,
    schema.weekly_pairs,
    schema.weekly_new,
    schema.weekly_latest,
)


# --- a history -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Store:
    installation: int
    week: int
    report: aggregated_stats_pb2.AggregatedStats


@dataclasses.dataclass(frozen=True)
class Delete:
    installation: int


@dataclasses.dataclass(frozen=True)
class Expire:
    before: int  # weeks before WEEKS[before] expire


@dataclasses.dataclass(frozen=True)
class Refresh:
    pass


# Few values of each, so that reports share groups and pairs.
printers = st.dictionaries(
    st.sampled_from([common_pb2.PRINTER_TYPE_PRUSA, common_pb2.PRINTER_TYPE_BAMBU_LAB]),
    st.integers(1, 11),
    max_size=2,
)
features = st.dictionaries(
    st.sampled_from([common_pb2.FEATURE_LIBRARY, common_pb2.FEATURE_TIMELAPSE]), st.booleans(), max_size=2
)
errors = st.dictionaries(
    st.tuples(
        st.sampled_from([common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.ERROR_TYPE_DATABASE]),
        st.sampled_from([common_pb2.COMPONENT_API, common_pb2.COMPONENT_DATABASE]),
    ),
    st.integers(0, 3),
    max_size=3,
)


@st.composite
def stores(draw: st.DrawFn) -> Store:
    installation = draw(st.integers(0, len(INSTALLATIONS) - 1))
    week = draw(st.integers(0, len(WEEKS) - 1))
    installation_id = INSTALLATIONS[installation]
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        report_id=report_id(installation_id, WEEKS[week]),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=installation_id,
            app_version=common_pb2.Version(
                major=2, minor=draw(st.sampled_from([7, 8])), patch=draw(st.integers(0, 1))
            ),
            python_version=common_pb2.Version(major=3, minor=draw(st.sampled_from([11, 12]))),
            platform=draw(st.sampled_from([common_pb2.PLATFORM_LINUX, common_pb2.PLATFORM_WINDOWS])),
            architecture=draw(
                st.sampled_from([common_pb2.CPU_ARCHITECTURE_X86_64, common_pb2.CPU_ARCHITECTURE_ARM64])
            ),
            deployment_mode=draw(
                st.sampled_from([common_pb2.DEPLOYMENT_MODE_DOCKER, common_pb2.DEPLOYMENT_MODE_STANDALONE])
            ),
            country=draw(st.sampled_from([country_pb2.COUNTRY_DE, country_pb2.COUNTRY_US])),
        ),
        period=WEEKS[week].to_proto(),
    )
    for printer_type, count in draw(printers).items():
        report.printer_fleet.printers.add(printer_type=printer_type, count=count)
    for feature, enabled in draw(features).items():
        report.features.add(feature=feature, enabled=enabled)
    for (error_type, component), count in draw(errors).items():
        report.errors.add(error_type=error_type, component=component, count=count)
    usage = report.usage
    usage.jobs_completed, usage.jobs_failed = draw(st.integers(0, 9)), draw(st.integers(0, 3))
    usage.jobs_created = usage.jobs_completed + usage.jobs_failed
    for entries, total, values in (
        (usage.completed_job_durations, usage.jobs_completed, DURATIONS),
        (usage.job_failures, usage.jobs_failed, REASONS),
    ):
        first, second = draw(st.lists(st.sampled_from(values), min_size=2, max_size=2, unique=True))
        split = draw(st.integers(0, total))
        for value, count in ((first, split), (second, total - split)):
            if count:
                entry = entries.add(count=count)
                setattr(entry, "duration" if values is DURATIONS else "reason", value)
    # Jobs split over two families: a family may have completed jobs only, failed only, or both.
    families: dict[int, list[int]] = {}
    for outcome, total in enumerate((usage.jobs_completed, usage.jobs_failed)):
        on_prusa = draw(st.integers(0, total))
        for family, jobs in (
            (common_pb2.PRINTER_TYPE_PRUSA, on_prusa),
            (common_pb2.PRINTER_TYPE_OTHER, total - on_prusa),
        ):
            if jobs:
                families.setdefault(family, [0, 0])[outcome] = jobs
    for family, (completed, failed) in sorted(families.items()):
        usage.jobs_by_printer_type.add(printer_type=family, completed=completed, failed=failed)  # type: ignore[arg-type]
    usage.app_starts = draw(st.integers(0, 3))
    usage.unclean_shutdowns = draw(st.integers(0, usage.app_starts))
    usage.uptime_hours = draw(st.integers(0, 168))
    usage.files_uploaded, usage.printer_disconnections = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    # Most reports share everything; the others leave out what their level does not share.
    level = draw(st.sampled_from([*consent_levels.LEVELS, consent_levels.EVERYTHING]))
    report.schema_version, report.consent_level = consent_levels.SINCE_SCHEMA_VERSION, level  # type: ignore[assignment]
    consent_levels.keep_only(report, level)
    return Store(installation, week, report)


steps = st.lists(
    st.one_of(
        stores(),
        stores(),
        stores(),
        st.builds(Delete, st.integers(0, len(INSTALLATIONS) - 1)),
        st.builds(Expire, st.integers(1, len(WEEKS) - 1)),
        st.just(Refresh()),
    ),
    min_size=1,
    max_size=20,
)


# --- what the rollups hold --------------------------------------------------------------------------


async def rollup_rows(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as connection:
        return {
            table.name: sorted(tuple(row) for row in await connection.execute(select(table)))
            for table in (*ROLLUP_TABLES, schema.weekly_arrivals)
        }


@dataclasses.dataclass
class Model:
    """What the history leaves, worked out here: each stored report (the first
    for its installation and week wins), when it arrived, and whether a refresh
    has seen it; the installations' first weeks."""

    reports: dict[tuple[int, int], tuple[aggregated_stats_pb2.AggregatedStats, dt.datetime]] = (
        dataclasses.field(default_factory=dict)
    )
    first_week: dict[int, int] = dataclasses.field(default_factory=dict)
    deleted: set[int] = dataclasses.field(default_factory=set)
    arrivals: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    seen: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    def forget(self, gone: Callable[[tuple[int, int]], bool]) -> None:
        """Reports deleted: a report sent again later for that week is new."""
        self.reports = {key: value for key, value in self.reports.items() if not gone(key)}
        self.seen = {key for key in self.seen if not gone(key)}

    def totals(self) -> list[tuple[int, int, int, int]]:
        by_week: dict[int, list[int]] = {}
        for (_, week), (report, _) in self.reports.items():
            figures = by_week.setdefault(WEEKS[week].key, [0, 0, 0])
            figures[0] += 1
            figures[1] += report.usage.jobs_completed
            figures[2] += report.usage.jobs_failed
        return sorted((week, *figures) for week, figures in by_week.items())  # type: ignore[misc]

    def activity(self) -> list[tuple[int, ...]]:
        """The activity tally's rows: per week and activity, installations with
        any of it, and its sum."""
        rows: dict[tuple[int, int], list[int]] = {}
        for (_, week), (report, _) in self.reports.items():
            for kind in Activity:
                amount = getattr(report.usage, kind.column)
                figures = rows.setdefault((WEEKS[week].key, kind), [0, 0])
                figures[0] += amount > 0
                figures[1] += amount
        return sorted(
            (week, Tally.ACTIVITY, kind, 0, 0, 0, *figures)
            for (week, kind), figures in rows.items()
            if figures != [0, 0]
        )

    def printer_jobs(self) -> list[tuple[int, ...]]:
        """The jobs-by-printer-type tallies' rows: per week, outcome and family,
        installations with such jobs, and the jobs."""
        rows: dict[tuple[int, int, int], list[int]] = {}
        for (_, week), (report, _) in self.reports.items():
            for entry in report.usage.jobs_by_printer_type:
                for code, jobs in (
                    (Tally.COMPLETED_JOBS_BY_PRINTER_TYPE, entry.completed),
                    (Tally.FAILED_JOBS_BY_PRINTER_TYPE, entry.failed),
                ):
                    if jobs:
                        figures = rows.setdefault((WEEKS[week].key, code, entry.printer_type), [0, 0])
                        figures[0] += 1
                        figures[1] += jobs
        return sorted(
            (week, code, family, 0, 0, 0, *figures) for (week, code, family), figures in rows.items()
        )

    def latest(self) -> list[tuple[int, int]]:
        newest: dict[int, int] = {}
        for installation, week in self.reports:
            newest[installation] = max(newest.get(installation, week), week)
        return sorted(collections.Counter(WEEKS[w].key for w in newest.values()).items())

    def new(self) -> list[tuple[int, int]]:
        counted = collections.Counter(
            WEEKS[w].key for n, w in self.first_week.items() if n not in self.deleted
        )
        return sorted(counted.items())


async def run(engine: AsyncEngine, history: list[Any]) -> Model:
    """Play `history` on the database; returns what it should leave."""
    store, rollups = IngestStore(engine), Rollups(engine, lambda: START)
    model = Model()
    now = START
    for step in history:
        now += dt.timedelta(hours=31)  # past the hourly rule, and across arrival weeks
        match step:
            case Store(installation, week, report):
                try:
                    (receipt,) = await store.store(
                        INSTALLATIONS[installation], KEY, [CheckedReport(report)], now
                    )
                except (Forbidden, WrongKey):
                    assert installation in model.deleted
                    continue
                if not receipt.duplicate:
                    model.reports[(installation, week)] = (report, now)
                    model.first_week.setdefault(installation, week)
            case Delete(installation):
                await store.delete_installation(INSTALLATIONS[installation], now, signed_by=None)
                model.deleted.add(installation)
                model.forget(lambda key: key[0] == installation)
            case Expire(before):
                await store.purge_weeks_before(WEEKS[before])
                model.forget(lambda key: key[1] < before)
            case Refresh():
                await rollups.refresh()
                for key, (_, arrived) in model.reports.items():
                    if key not in model.seen:
                        model.seen.add(key)
                        model.arrivals[Week.containing(arrived).key] += 1
    return model


async def empty(engine: AsyncEngine) -> None:
    """Every table emptied, as a new database (the migrations' rows aside)."""
    async with engine.begin() as connection:
        for table in reversed(schema.metadata.sorted_tables):
            if table is not schema.ingest_counters:
                await connection.execute(delete(table))


async def check(url: str, history: list[Any]) -> None:
    """Play `history` on an emptied database; then the rollups kept incrementally
    must equal those rebuilt, and both what the history left."""
    engine = create_server_engine(url)
    try:
        await empty(engine)
        model = await run(engine, history)
        await Rollups(engine, lambda: START).refresh()  # the reports since the last refresh
        for key, (_, arrived) in model.reports.items():
            if key not in model.seen:
                model.arrivals[Week.containing(arrived).key] += 1
        incremental = await rollup_rows(engine)
        await Rollups(engine, lambda: START).rebuild()
        assert await rollup_rows(engine) == incremental
        assert incremental["weekly_totals"] == model.totals()
        assert incremental["weekly_new"] == model.new()
        assert incremental["weekly_latest"] == model.latest()
        activity = [row for row in incremental["weekly_tallies"] if row[1] == Tally.ACTIVITY]
        assert activity == model.activity()
        by_printer = {Tally.COMPLETED_JOBS_BY_PRINTER_TYPE, Tally.FAILED_JOBS_BY_PRINTER_TYPE}
        printer_jobs = [row for row in incremental["weekly_tallies"] if row[1] in by_printer]
        assert printer_jobs == model.printer_jobs()
        assert incremental["weekly_arrivals"] == sorted(model.arrivals.items())
    finally:
        await engine.dispose()


@pytest.fixture
def migrated(database_url: str) -> str:
    """The database, migrated once for all of a test's examples (each empties it)."""
    upgrade(database_url)
    return database_url


EXAMPLES = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.mark.slow
@settings(EXAMPLES, max_examples=50)
@given(history=steps)
async def test_incremental_rollups_equal_a_full_rebuild(migrated: str, history: list[Any]) -> None:
    await check(migrated, history)


@pytest.mark.slow
@settings(EXAMPLES, max_examples=10)
@given(history=steps)
async def test_the_sql_server_way_keeps_the_same_rollups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, history: list[Any]
) -> None:
    """SQL Server cannot run here: its way (no temporary tables, no upsert:
    subqueries, and an UPDATE or INSERT per row) runs on SQLite instead."""
    monkeypatch.setattr(rollup_store, "NATIVE_DIALECTS", frozenset())
    url = f"sqlite:///{tmp_path / 'stats.db'}"
    if not (tmp_path / "stats.db").exists():
        upgrade(url)
    await check(url, history)


@pytest.mark.postgres
async def test_a_report_committed_after_a_later_one_is_rolled_up() -> None:
    """PostgreSQL hands out report row ids before commit, so a row can commit
    after a higher one. The refresh waits for the writes in flight: a
    watermark past an uncommitted row would leave that row out for good."""
    with databases.fresh_postgres_database() as url:
        upgrade(url)
        engine, writer = create_server_engine(url), create_sync_engine(url)
        try:
            store, rollups = IngestStore(engine), Rollups(engine, lambda: START)
            week = WEEKS[-1]
            with writer.connect() as slow:
                # A submission in flight: its report row has the lower id...
                slow.execute(
                    insert(schema.installations).values(
                        installation_id=INSTALLATIONS[0], public_key=KEY, registered_at=START,
                        first_week=week.key, last_week=week.key, last_accepted_at=START,
                    )
                )  # fmt: skip
                slow.execute(
                    insert(schema.reports).values(
                        report_id=report_id(INSTALLATIONS[0], week), installation_id=INSTALLATIONS[0],
                        week=week.key, schema_version=1, receipt_id=bytes(16), stored_at=START,
                    )
                )  # fmt: skip
                # ...and a later one commits first.
                report = aggregated_stats_pb2.AggregatedStats(
                    schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
                    report_id=report_id(INSTALLATIONS[1], week),
                    period=week.to_proto(),
                )
                await store.store(INSTALLATIONS[1], KEY, [CheckedReport(report)], START)
                refresh = asyncio.create_task(rollups.refresh())
                await asyncio.sleep(0.3)
                assert not refresh.done()  # waiting for the submission in flight
                slow.commit()
                assert await refresh == [week]
            await rollups.refresh()
            async with engine.connect() as connection:
                active = await connection.scalar(select(schema.weekly_totals.c.active))
            assert active == 2
        finally:
            await engine.dispose()
            writer.dispose()


@pytest.mark.postgres
async def test_what_is_counted_beside_sees_the_rebuilds_snapshot() -> None:
    """A full rebuild counts some lists on a second connection: it must see the
    reports the rebuild's transaction sees, not one committed since."""
    with databases.fresh_postgres_database() as url:
        upgrade(url)
        engine = create_server_engine(url)
        try:
            store = IngestStore(engine)
            await store.store(INSTALLATIONS[0], KEY, [CheckedReport(report_of(0, 0).report)], START)
            count = select(func.count()).select_from(schema.reports)
            async with engine.connect() as rebuild:
                await rebuild.execution_options(isolation_level="REPEATABLE READ")
                async with rebuild.begin():
                    assert await rebuild.scalar(count) == 1  # the snapshot is taken
                    await store.store(INSTALLATIONS[1], KEY, [CheckedReport(report_of(1, 0).report)], START)
                    (beside,) = await rollup_store._counted_beside(rebuild, [(count, [])])
                    assert beside == [(1,)]
            async with engine.connect() as later:
                assert await later.scalar(count) == 2
        finally:
            await engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("failing", ["_job_rows", "_feature_rows"])  # counted beside; in the transaction
async def test_a_rebuild_that_fails_on_either_connection_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    with databases.fresh_postgres_database() as url:
        upgrade(url)
        engine = create_server_engine(url)
        try:
            store, rollups = IngestStore(engine), Rollups(engine, lambda: START)
            for installation in range(3):
                stored = report_of(installation, 1)
                await store.store(INSTALLATIONS[installation], KEY, [CheckedReport(stored.report)], START)
            await rollups.refresh()
            before = await rollup_rows(engine)
            assert before["weekly_totals"]  # there is something to lose
            monkeypatch.setattr(rollup_store, failing, lambda scope: select(literal_column("1 / 0")))
            with pytest.raises(DBAPIError, match="division by zero"):
                await rollups.rebuild()
            assert await rollup_rows(engine) == before
            assert engine.sync_engine.pool.checkedout() == 0  # neither connection left behind
        finally:
            await engine.dispose()


def report_of(installation: int, week: int) -> Store:
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        report_id=report_id(INSTALLATIONS[installation], WEEKS[week]),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=INSTALLATIONS[installation], country=country_pb2.COUNTRY_DE
        ),
        period=WEEKS[week].to_proto(),
    )
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, count=2)
    report.features.add(feature=common_pb2.FEATURE_LIBRARY, enabled=True)
    return Store(installation, week, report)


def test_the_rollups_are_rebuilt_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After a fault (here: rollups damaged by hand), `python -m printernizer_stats.store
    rebuild-rollups` recomputes them: some weeks, every week, or at the next refresh."""
    from printernizer_stats.store.__main__ import main

    url = f"sqlite:///{tmp_path / 'stats.db'}"
    upgrade(url)

    async def rows() -> dict[str, list[tuple[Any, ...]]]:
        engine = create_server_engine(url)
        try:
            return await rollup_rows(engine)
        finally:
            await engine.dispose()

    async def damage() -> None:
        engine = create_server_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(delete(schema.weekly_groups))
                await connection.execute(update(schema.weekly_totals).values(active=99))
        finally:
            await engine.dispose()

    async def play(history: list[Any]) -> None:
        engine = create_server_engine(url)
        try:
            await run(engine, history)
        finally:
            await engine.dispose()

    asyncio.run(play([report_of(0, 2), report_of(1, 2), report_of(0, 3), Refresh()]))
    kept = asyncio.run(rows())
    assert kept["weekly_groups"]
    assert kept["weekly_totals"] == [
        (WEEKS[2].key, 2, 0, 0),
        (WEEKS[3].key, 1, 0, 0),
    ]
    asyncio.run(damage())
    assert main(["rebuild-rollups", "--database-url", url, "--week", str(WEEKS[2])]) == 0
    assert capsys.readouterr().out == "rebuilt the rollups of 1 week(s)\n"
    partly = asyncio.run(rows())
    assert partly["weekly_totals"] == [(WEEKS[2].key, 2, 0, 0), (WEEKS[3].key, 99, 0, 0)]
    assert {row[0] for row in partly["weekly_groups"]} == {WEEKS[2].key}
    assert main(["rebuild-rollups", "--database-url", url]) == 0
    assert asyncio.run(rows()) == kept
    asyncio.run(damage())
    assert main(["rebuild-rollups", "--database-url", url, "--later"]) == 0
    assert asyncio.run(rows()) != kept  # only asked for
    asyncio.run(play([Refresh()]))
    assert asyncio.run(rows()) == kept


FULL_WIDTH_2026 = "\uff12\uff10\uff12\uff16"


@pytest.mark.processes
@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--database-url", "no url at all"], "cannot use the database: Could not parse"),
        (["--database-url", "sqlite:////nonexistent/dir/stats.db"], "cannot use the database: "),
        # Full-width digits, which int() would read as 2026.
        (["--database-url", "sqlite:////tmp/x.db", "--week", FULL_WIDTH_2026 + "-W48"], "is not a week like"),
        (["--database-url", "sqlite:////tmp/x.db", "--week", "2025-W53"], "is not an ISO week of the years"),
    ],
)
def test_the_rebuild_command_refuses_bad_input_in_one_line(arguments: list[str], said: str) -> None:
    """An operator's mistake is one line on stderr and a failing exit status, never a traceback."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "printernizer_stats.store", "rebuild-rollups", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert said in done.stderr, done.stderr
