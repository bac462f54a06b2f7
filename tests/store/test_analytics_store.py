"""The analytics store's reads on real SQLite and PostgreSQL: a few reports
stored through the ingest store and rolled up, each read checked against
figures worked out by hand from those reports; and the snapshot the reads of
one answer share."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator

import pytest
from printernizer.stats.v1 import analytics_service_pb2, common_pb2
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.weeks import Week
from printernizer_stats.store.analytics_store import AnalyticsStore, Group, RollupRead, WeeklyCounts
from printernizer_stats.store.database import upgrade
from printernizer_stats.store.ingest_store import CheckedReport, IngestStore, Report
from printernizer_stats.store.rollup_store import Activity, Rollups, Tally

from .. import databases
from ..agent_harness import FakeClock
from ..aggregation.conftest import NOW, valid_report

database_url = databases.database_url

Dimension = analytics_service_pb2.Dimension
W42, W43, W44, W45, W46, W47 = (Week(2026, n) for n in range(42, 48))  # NOW is in W47
DOCKER, HOME_ASSISTANT = common_pb2.DEPLOYMENT_MODE_DOCKER, common_pb2.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON
PRUSA, CANCELLED = common_pb2.PRINTER_TYPE_PRUSA, common_pb2.JOB_FAILURE_REASON_CANCELLED
KEY = bytes(range(32))
A, B, C, D = (uuid.uuid4().bytes for _ in range(4))
# Who runs what (any other installation: 2.7.0 in Docker). Every report: two Prusa printers, two jobs
# failed as cancelled, and four errors, except C's (none).
MODES = {A: DOCKER, B: HOME_ASSISTANT, C: HOME_ASSISTANT, D: DOCKER}
VERSIONS = {A: (2, 7, 0), B: (2, 8, 0), C: (2, 8, 0), D: (2, 6, 1)}
# When the reports arrive, and the weeks they are for:
# A and D report W44 during W45, A and B report W45 during W46, A, B and C report W46 during W47.
ARRIVALS = [
    (NOW - dt.timedelta(days=14), [(A, W44), (D, W44)]),
    (NOW - dt.timedelta(days=7), [(A, W45), (B, W45)]),
    (NOW, [(A, W46), (B, W46), (C, W46)]),
]


def report(installation_id: bytes, week: Week) -> Report:
    made = valid_report(week)
    made.installation.installation_id = installation_id
    made.report_id = report_id(installation_id, week)
    made.installation.deployment_mode = MODES.get(installation_id, DOCKER)  # type: ignore[assignment]
    version = made.installation.app_version
    version.major, version.minor, version.patch = VERSIONS.get(installation_id, (2, 7, 0))
    if installation_id == C:
        del made.errors[:]
    return made


async def fill(database_url: str) -> None:
    upgrade(database_url)
    ingest = IngestStore.open(database_url)
    try:
        for arrived, reports in ARRIVALS:
            for installation_id, week in reports:
                await ingest.store(
                    installation_id, KEY, [CheckedReport(report(installation_id, week))], arrived
                )
        assert await Rollups(ingest.engine, FakeClock(NOW)).refresh() == [W44, W45, W46]
    finally:
        await ingest.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AnalyticsStore]:
    async with databases.filled_analytics_store(database_url, fill) as store:
        yield store


async def test_active_and_new_installations_by_week(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        assert await snapshot.active(W43, W46) == {W44.key: 2, W45.key: 2, W46.key: 3}
        assert await snapshot.active(W46, W47) == {W46.key: 3}
        assert await snapshot.active(W42, W43) == {}
        # First reports: A and D in W44, B in W45, C in W46.
        assert await snapshot.new_installations(W43, W47) == {W44.key: 2, W45.key: 1, W46.key: 1}
        assert await snapshot.new_installations(W45, W45) == {W45.key: 1}
        assert [await snapshot.known_by(week) for week in (W43, W44, W45, W46, W47)] == [0, 2, 3, 4, 4]


async def test_installations_active_in_any_of_some_weeks(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        # Counted over the reports: W44-W45 is A, D and B; W45-W46 is A, B and C.
        assert await snapshot.active_in_any_week(W44, W45, no_later_reports=False) == 3
        assert await snapshot.active_in_any_week(W45, W46, no_later_reports=False) == 3
        assert await snapshot.active_in_any_week(W44, W46, no_later_reports=False) == 4
        assert await snapshot.active_in_any_week(W46, W46, no_later_reports=False) == 3
        # By the installations' newest weeks (A, B, C: W46; D: W44): the same answers
        # when nothing is newer than the last week asked about, W46.
        assert await snapshot.active_in_any_week(W45, W46, no_later_reports=True) == 3
        assert await snapshot.active_in_any_week(W44, W46, no_later_reports=True) == 4
        assert await snapshot.active_in_any_week(W46, W46, no_later_reports=True) == 3


def by_week(groups: dict[int, list[Group]]) -> dict[int, set[Group]]:
    return {week: set(found) for week, found in groups.items()}


async def test_groups_of_a_dimension_by_week(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        versions = await snapshot.groups(W43, W47, Dimension.DIMENSION_APP_VERSION)
        printers = await snapshot.groups(W46, W46, Dimension.DIMENSION_PRINTER_TYPE)
        modes = await snapshot.groups(W45, W45, Dimension.DIMENSION_DEPLOYMENT_MODE)
    assert by_week(versions) == {
        W44.key: {Group((2, 7, 0), 1), Group((2, 6, 1), 1)},
        W45.key: {Group((2, 7, 0), 1), Group((2, 8, 0), 1)},
        W46.key: {Group((2, 7, 0), 1), Group((2, 8, 0), 2)},
    }
    assert printers == {W46.key: [Group((PRUSA, 0, 0), 3, 6)]}  # two printers each
    assert by_week(modes) == {W45.key: {Group((DOCKER, 0, 0), 1), Group((HOME_ASSISTANT, 0, 0), 1)}}


async def test_tallies_by_week_keep_all_four_values(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        errors = await snapshot.groups(W46, W46, Tally.ERRORS_BY_VERSION)
        failures = await snapshot.groups(W45, W46, Tally.JOB_FAILURES_BY_VERSION)
        none = await snapshot.groups(W42, W43, Tally.ERRORS_BY_VERSION)
    # C reported no errors; A and B four each.
    assert by_week(errors) == {W46.key: {Group((2, 7, 0, 0), 1, 4), Group((2, 8, 0, 0), 1, 4)}}
    # Two cancelled jobs in every report, keyed by version and reason.
    assert by_week(failures) == {
        W45.key: {Group((2, 7, 0, CANCELLED), 1, 2), Group((2, 8, 0, CANCELLED), 1, 2)},
        W46.key: {Group((2, 7, 0, CANCELLED), 1, 2), Group((2, 8, 0, CANCELLED), 2, 4)},
    }
    assert none == {}


async def test_a_tally_can_be_read_for_some_fourth_values_only(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        every = await snapshot.groups(W45, W46, Tally.JOB_FAILURES_BY_VERSION)
        cancelled = await snapshot.groups(W45, W46, Tally.JOB_FAILURES_BY_VERSION, fourth=[CANCELLED])
        other = await snapshot.groups(W45, W46, Tally.JOB_FAILURES_BY_VERSION, fourth=[CANCELLED + 1])
    assert cancelled == every
    assert other == {}


async def test_pairs_come_by_week_in_the_order_asked(store: AnalyticsStore) -> None:
    mode, version = Dimension.DIMENSION_DEPLOYMENT_MODE, Dimension.DIMENSION_APP_VERSION
    async with store.snapshot() as snapshot:
        by_mode = await snapshot.pairs(W46, W46, mode, version)
        by_version = await snapshot.pairs(W46, W46, version, mode)
        over_weeks = await snapshot.pairs(W43, W47, mode, version)
        elsewhen = await snapshot.pairs(W43, W43, mode, version)
    assert set(by_mode) == {W46.key}
    assert set(by_mode[W46.key]) == {
        Group((DOCKER, 0, 0, 2, 7, 0), 1),
        Group((HOME_ASSISTANT, 0, 0, 2, 8, 0), 2),
    }
    assert set(by_version[W46.key]) == {
        Group((2, 7, 0, DOCKER, 0, 0), 1),
        Group((2, 8, 0, HOME_ASSISTANT, 0, 0), 2),
    }
    assert over_weeks[W46.key] == by_mode[W46.key]
    assert W43.key not in over_weeks  # no week invented
    assert len(over_weeks) > 1  # each week its own
    assert elsewhen == {}


async def test_arrivals_count_reports_by_the_week_they_came(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        assert await snapshot.arrivals(W43, W47) == {W45.key: 2, W46.key: 2, W47.key: 3}
        assert await snapshot.arrivals(W46, W46) == {W46.key: 2}
        assert await snapshot.arrivals(W42, W44) == {}


def write_totals(path: str) -> None:
    """A writer of the rollups in another connection, giving up after 0.2 s."""
    writer = sqlite3.connect(path, timeout=0.2)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE weekly_totals SET active = active + 1")
        writer.commit()
    finally:
        writer.close()


async def test_the_reads_of_a_snapshot_see_one_moment(store: AnalyticsStore, database_url: str) -> None:
    ingest = IngestStore(store.engine)
    async with store.snapshot() as snapshot:
        before = await snapshot.active(W46, W46)
        assert before == {W46.key: 3}
        if store.engine.dialect.name == "postgresql":
            late = uuid.uuid4().bytes
            await ingest.store(late, KEY, [CheckedReport(report(late, W46))], NOW)
            assert await Rollups(store.engine, FakeClock(NOW)).refresh() == [W46]  # committed meanwhile
        else:
            # SQLite: the read transaction holds the file, so no writer commits in the middle of it.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await asyncio.to_thread(write_totals, database_url.removeprefix("sqlite:///"))
        assert await snapshot.active(W46, W46) == before  # still the moment it started at
    if store.engine.dialect.name == "postgresql":
        async with store.snapshot() as snapshot:
            assert await snapshot.active(W46, W46) == {W46.key: 4}  # a new snapshot sees the refresh


async def test_a_snapshot_asked_for_inside_another_is_that_one(
    store: AnalyticsStore, database_url: str
) -> None:
    """An answer made of other answers (the export) reads one moment; another
    store, or the same store once the snapshot is over, gets a snapshot of its own."""
    other = AnalyticsStore.open(database_url)
    try:
        async with store.snapshot() as outer:
            async with store.snapshot() as inner:
                assert inner is outer
            async with other.snapshot() as elsewhere:
                assert elsewhere is not outer
            assert await outer.active(W46, W46) == {W46.key: 3}  # still open after the inner one ended
        async with store.snapshot() as later:
            assert later is not outer
    finally:
        await other.close()


# --- several rollups in one statement --------------------------------------------------------------------
# `Snapshot.read` (the overview's one round trip) gives each rollup's groups as reading it alone does.


async def test_several_rollups_in_one_read_are_each_as_read_alone(store: AnalyticsStore) -> None:
    reads = [
        RollupRead(Dimension.DIMENSION_APP_VERSION, W43, W47),
        RollupRead(Tally.ERRORS_BY_VERSION, W46, W46),
        RollupRead(Dimension.DIMENSION_DEPLOYMENT_MODE, W45, W45),
        RollupRead(Tally.JOB_FAILURES_BY_VERSION, W44, W46, (CANCELLED,)),
        RollupRead(Tally.ACTIVITY_BY_VERSION, W45, W46, (int(Activity.JOBS_FAILED),)),
        RollupRead(Tally.FEATURES, W42, W43),  # no reports for those weeks: nothing
        RollupRead(Dimension.DIMENSION_PRINTER_TYPE, W46, W46),
    ]
    async with store.snapshot() as snapshot:
        together = await snapshot.read(*reads)
        alone = [await snapshot.groups(r.first, r.last, r.code, r.fourth) for r in reads]
    assert [by_week(found) for found in together] == [by_week(found) for found in alone]
    # And as worked out by hand (tests/store/test_analytics_store.py): a
    # dimension's key is its three values, a tally's all four.
    versions, errors, modes, failures, failed_jobs, features, printers = together
    assert by_week(versions)[W45.key] == {Group((2, 7, 0), 1), Group((2, 8, 0), 1)}
    assert by_week(errors) == {W46.key: {Group((2, 7, 0, 0), 1, 4), Group((2, 8, 0, 0), 1, 4)}}
    assert len(modes[W45.key]) == 2
    assert by_week(failures)[W46.key] == {
        Group((2, 7, 0, CANCELLED), 1, 2),
        Group((2, 8, 0, CANCELLED), 2, 4),
    }
    assert {g.key[3] for gs in failed_jobs.values() for g in gs} == {int(Activity.JOBS_FAILED)}
    assert features == {}
    assert printers == {W46.key: [Group((PRUSA, 0, 0), 3, 6)]}  # two printers each


async def test_the_same_read_for_other_weeks_reads_those_weeks(store: AnalyticsStore) -> None:
    # The statements are kept and reused: one for other weeks must not answer for the first ones.
    async with store.snapshot() as snapshot:
        first = await snapshot.read(RollupRead(Dimension.DIMENSION_APP_VERSION, W44, W44))
        second = await snapshot.read(RollupRead(Dimension.DIMENSION_APP_VERSION, W46, W46))
    assert by_week(first[0]) == {W44.key: {Group((2, 7, 0), 1), Group((2, 6, 1), 1)}}
    assert by_week(second[0]) == {W46.key: {Group((2, 7, 0), 1), Group((2, 8, 0), 2)}}


async def test_the_weekly_figures_in_one_read_are_each_as_read_alone(store: AnalyticsStore) -> None:
    async with store.snapshot() as snapshot:
        for first, last in [(W43, W47), (W45, W46), (W46, W46), (W42, W43)]:
            weekly = await snapshot.weekly(first, last)
            assert weekly.active == await snapshot.active(first, last)
            assert weekly.new == await snapshot.new_installations(first, last)
            assert weekly.received == await snapshot.arrivals(first, last)
            assert weekly.known_before == await snapshot.known_by(first.previous())
        # By hand (tests/store/test_analytics_store.py): A and D first reported for W44, B for W45 and
        # C for W46; two reports arrived in W45 and two in W46.
        assert await snapshot.weekly(W45, W46) == WeeklyCounts(
            active={W45.key: 2, W46.key: 3},
            new={W45.key: 1, W46.key: 1},
            received={W45.key: 2, W46.key: 2},
            known_before=2,
        )
