"""The agent's SQLite storage: migrations both ways, retention, durability settings, permissions."""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
from printernizer.stats.v1 import agent_service_pb2, common_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import Override
from printernizer_stats.agent.storage import (
    LATEST_VERSION,
    STATE_KIND_NUMBERS,
    STATE_KINDS,
    AgentStore,
    OutboxRow,
    SentReportRow,
    StorageError,
    migrate,
)
from printernizer_stats.common.events import KINDS_BY_NAME, MAX_ENUM_VALUE, EventRow, pack, to_millis, unpack
from printernizer_stats.common.weeks import Week

from ..agent_harness import FakeClock, app_started, app_stopped, error_occurred, job_completed, job_created

UTC = dt.UTC
C = common_pb2
KIND_JOB_CREATED = agent_service_pb2.EVENT_KIND_JOB_CREATED


def tables(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    finally:
        connection.close()
    return {row[0] for row in rows}


def read(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return [tuple(r) for r in connection.execute(sql).fetchall()]
    finally:
        connection.close()


LOGICAL_ROWS = [
    EventRow(occurred_at=1_767_600_000_000, kind=3, f1=2, f2=0, f3=0, payload=None),
    EventRow(occurred_at=1_767_600_001_000, kind=4, f1=2, f2=3, f3=0, payload=None),
    EventRow(occurred_at=1_767_600_002_000, kind=13, f1=0, f2=0, f3=0, payload=b"\x0a\x04\x08\x03\x10\x02"),
]
ROWS = [row.packed() for row in LOGICAL_ROWS]
# What each version must have (indexes may change; these tables may not).
VERSION_1_TABLES = {"events", "settings", "counters"}
VERSION_2_TABLES = {"sent_reports", "deletion_requests", "week_summaries"}


@pytest.fixture
async def populated(tmp_path: Path) -> Path:
    path = tmp_path / "agent.db"
    store = await AgentStore.open(path)
    try:
        await store.append_events(ROWS, recorded_at=1_767_600_003_000, dropped_by_client=4)
        await store.put_settings({"consent.chosen": b"1", "x.other": b"\x00\xff"})
        await store.mark_sent(
            [SentReportRow(report_id=bytes(16), week=202601, report=b"r", receipt=b"", sent_at=1)]
        )
    finally:
        await store.close()
    return path


@pytest.fixture
async def connection(populated: Path) -> AsyncIterator[aiosqlite.Connection]:
    db = await aiosqlite.connect(populated, isolation_level=None)
    try:
        yield db
    finally:
        await db.close()


async def version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def select(db: aiosqlite.Connection, sql: str) -> list[tuple[object, ...]]:
    async with db.execute(sql) as cursor:
        return [tuple(r) for r in await cursor.fetchall()]


EVENTS_SQL = "SELECT seq, recorded_at, occurred_at, shape, payload FROM events ORDER BY seq"


async def test_migrate_down_and_up_keeps_events_and_settings(
    populated: Path, connection: aiosqlite.Connection
) -> None:
    assert LATEST_VERSION >= 2
    latest = tables(populated)
    assert latest >= VERSION_1_TABLES | VERSION_2_TABLES
    events = await select(connection, EVENTS_SQL)
    assert len(events) == 3
    assert events[2][4] == LOGICAL_ROWS[2].payload
    assert [unpack(e[3]) for e in events] == [(r.kind, r.f1, r.f2, r.f3) for r in LOGICAL_ROWS]
    settings = await select(connection, "SELECT key, value FROM settings ORDER BY key")
    assert settings == [("consent.chosen", b"1"), ("x.other", b"\x00\xff")]
    counters = await select(connection, "SELECT name, value FROM counters ORDER BY name")
    assert ("dropped_events", 4) in counters

    assert await migrate(connection, 1) == LATEST_VERSION
    assert await version(connection) == 1
    at_1 = tables(populated)
    assert at_1 >= VERSION_1_TABLES
    assert at_1.isdisjoint(VERSION_2_TABLES)
    assert "sent_reports_by_time" not in at_1
    assert await select(connection, EVENTS_SQL) == events
    assert await select(connection, "SELECT key, value FROM settings ORDER BY key") == settings
    assert await select(connection, "SELECT name, value FROM counters ORDER BY name") == counters

    assert await migrate(connection) == 1
    assert await version(connection) == LATEST_VERSION
    assert tables(populated) == latest
    assert await select(connection, EVENTS_SQL) == events
    assert await select(connection, "SELECT COUNT(*) FROM sent_reports") == [(0,)]  # dropped with its table

    assert await migrate(connection, LATEST_VERSION) == LATEST_VERSION  # already there: nothing to do
    assert await migrate(connection, 0) == LATEST_VERSION
    assert await version(connection) == 0
    assert tables(populated) == set()

    assert await migrate(connection) == 0  # and from nothing to the latest again
    assert tables(populated) == latest
    assert await select(connection, "SELECT COUNT(*) FROM events") == [(0,)]


async def test_store_opens_a_downgraded_database(populated: Path, connection: aiosqlite.Connection) -> None:
    await migrate(connection, 1)
    await connection.close()
    store = await AgentStore.open(populated)
    try:
        assert await store.event_count() == 3
        assert await store.sent_reports(10) == []
        assert (await store.settings())["consent.chosen"] == b"1"
    finally:
        await store.close()
    assert read(populated, "PRAGMA user_version") == [(LATEST_VERSION,)]


async def test_version_4_counts_server_errors_per_queued_report_and_keeps_them_both_ways(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    await (await AgentStore.open(path, migrate_to=3)).close()
    row = OutboxRow(202640, bytes(16), b"report", b"signature", 1)
    queued_3 = (row.week, row.report_id, row.report, row.signature, row.queued_at)
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", queued_3)
    connection.commit()
    connection.close()

    store = await AgentStore.open(path)  # up to version 4: the queued report has met no errors yet
    try:
        assert await store.outbox() == [row]
        (counted,) = await store.count_server_error([row.week], at=5)
        (again,) = await store.count_server_error([row.week], at=9)
        assert (counted.server_errors, again.server_errors, again.first_server_error_at) == (1, 2, 5)
    finally:
        await store.close()

    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        assert await migrate(db, 3) == LATEST_VERSION
    finally:
        await db.close()
    assert read(path, "SELECT * FROM outbox") == [queued_3]
    assert "given_up_weeks" not in tables(path)

    store = await AgentStore.open(path)
    try:
        assert await store.outbox() == [row]  # a downgrade forgets the errors, never the report
        await store.drop_outbox([row.week], "INTERNAL", at=10)
        assert (await store.outbox(), await store.given_up_weeks()) == ([], {row.week})
    finally:
        await store.close()


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE future (x)")
    connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(StorageError, match="schema version 99, newer than this agent"):
        await AgentStore.open(path)
    assert tables(path) == {"future"}  # untouched
    assert read(path, "PRAGMA user_version") == [(99,)]


@pytest.mark.parametrize("target", [-1, LATEST_VERSION + 1, 99])
async def test_migrating_to_an_unknown_version_is_refused(
    connection: aiosqlite.Connection, target: int
) -> None:
    with pytest.raises(StorageError, match="unknown schema version"):
        await migrate(connection, target)
    assert await version(connection) == LATEST_VERSION


async def test_a_failing_migration_step_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE sent_reports (x)")  # in the way of version 2
    connection.commit()
    connection.close()
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            await migrate(db)
        assert await version(db) == 1  # version 1 committed, version 2 rolled back whole
    finally:
        await db.close()
    left = tables(path)
    assert left >= VERSION_1_TABLES | {"sent_reports"}
    assert left.isdisjoint({"deletion_requests", "week_summaries", "sent_reports_by_time"})


async def test_unusable_database_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="cannot open the database"):
        await AgentStore.open(tmp_path / "a-file" / "agent.db")
    (tmp_path / "not-a-db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="cannot use the database"):
        await AgentStore.open(tmp_path / "not-a-db")


# --- durability and permissions ---------------------------------------------------------------


async def test_wal_normal_sync_and_private_files(tmp_path: Path) -> None:
    path = tmp_path / "new" / "private" / "agent.db"
    store = await AgentStore.open(path)
    try:
        await store.append_events(ROWS, recorded_at=1, dropped_by_client=0)
        async with store._db.execute("PRAGMA journal_mode") as cursor:  # the agent's own connection
            assert await cursor.fetchone() == ("wal",)
        async with store._db.execute("PRAGMA synchronous") as cursor:
            assert await cursor.fetchone() == (1,)  # NORMAL: durable across a killed agent in WAL mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert side.exists(), suffix
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, suffix
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        await store.close()
    assert read(path, "PRAGMA journal_mode") == [("wal",)]  # persistent in the file


async def test_existing_database_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    store = await AgentStore.open(path)
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_failing_batch_stores_nothing(tmp_path: Path) -> None:
    store = await AgentStore.open(tmp_path / "agent.db")
    try:
        await store.append_events(ROWS[:1], recorded_at=1, dropped_by_client=0)
        broken = (None, pack(3, 0, 0, 0), None)
        with pytest.raises(sqlite3.IntegrityError):
            await store.append_events([*ROWS, broken], recorded_at=2, dropped_by_client=5)
        assert await store.event_count() == 1
        assert "dropped_events" not in await store.counters()  # the drop count went with the batch
        await store.append_events(ROWS[1:], recorded_at=3, dropped_by_client=0)  # still usable
        assert await store.event_count() == 3
    finally:
        await store.close()


# --- retention ------------------------------------------------------------------------------------

# "Now" is Wednesday 18 November 2026 12:00 UTC (2026-W47); with 14 days of
# retention the cutoff is the start of the week containing 4 November: Monday
# 2 November (2026-W45). Raw events of W43 and W44 go, their figures stay.
NOW = dt.datetime(2026, 11, 18, 12, tzinfo=UTC)
W43, W44, W45, W46, W47 = (Week(2026, n) for n in range(43, 48))


def day(week: Week, days: int, hours: int = 12) -> dt.datetime:
    return week.start + dt.timedelta(days=days, hours=hours)


@pytest.fixture
async def retained(tmp_path: Path) -> AsyncIterator[tuple[StatsAgent, FakeClock]]:
    store = await AgentStore.open(tmp_path / "agent.db")
    clock = FakeClock(NOW)
    agent = StatsAgent(store, AgentConfig("Europe/Berlin", 14, Override()), clock=clock)
    try:
        yield agent, clock
    finally:
        await store.close()


async def test_prune_removes_old_weeks_and_keeps_their_figures(
    retained: tuple[StatsAgent, FakeClock],
) -> None:
    agent, clock = retained
    events = [
        *(job_created(day(W43, d)) for d in range(3)),
        error_occurred(day(W43, 4), C.ERROR_TYPE_DISK_FULL, C.COMPONENT_DATABASE),
        *(job_created(day(W44, d)) for d in range(2)),
        job_completed(day(W44, 6, 23)),
        app_started(day(W44, 2, 8)),
        app_stopped(day(W44, 2, 13)),
        *(job_created(day(W45, d)) for d in range(4)),
        job_created(W45.start),  # exactly at the cutoff: kept
        job_created(day(W46, 1)),
        job_created(day(W47, 1)),
    ]
    assert (await agent.record(events, 0)).stored == len(events)
    before = await agent.local_activity(5)
    assert [Week.from_proto(a.week) for a in before] == [W43, W44, W45, W46, W47]
    assert [a.usage.jobs_created for a in before] == [3, 2, 5, 1, 1]

    # W43: 4 events; W44: 5, less its start and stop, kept as the state in force at the cutoff.
    assert await agent.prune() == 7
    assert await agent.store.event_count() == len(events) - 7
    assert await agent.store.count_events_before(to_millis(W45.start)) == 2  # the start and the stop
    after = await agent.local_activity(5)
    assert after == before
    assert after[0].usage.jobs_created == 3
    assert [(e.error_type, e.component, e.count) for e in after[0].errors] == [
        (C.ERROR_TYPE_DISK_FULL, C.COMPONENT_DATABASE, 1)
    ]
    assert (after[1].usage.jobs_completed, after[1].usage.uptime_hours, after[1].usage.app_starts) == (
        1,
        5,
        1,
    )
    totals = {t.kind: t.count for t in (await agent.local_stats(5)).totals}
    assert totals == {
        agent_service_pb2.EVENT_KIND_JOB_CREATED: 7,
        agent_service_pb2.EVENT_KIND_APP_STARTED: 1,
        agent_service_pb2.EVENT_KIND_APP_STOPPED: 1,
    }

    assert await agent.prune() == 0  # nothing left to prune
    clock.now = NOW + dt.timedelta(weeks=1)  # a week later W45 goes too
    assert await agent.prune() == 5
    assert [a.usage.jobs_created for a in await agent.local_activity(6)] == [3, 2, 5, 1, 1, 0]


async def test_prune_with_nothing_old_deletes_nothing(retained: tuple[StatsAgent, FakeClock]) -> None:
    agent, _ = retained
    assert await agent.prune() == 0
    await agent.record([job_created(day(W45, 0)), job_created(day(W47, 0))], 0)
    assert await agent.prune() == 0
    assert await agent.store.event_count() == 2
    assert await agent.store.week_summaries() == {}


async def test_prune_keeps_the_uptime_of_a_run_across_the_cutoff(
    retained: tuple[StatsAgent, FakeClock],
) -> None:
    agent, _ = retained
    # Started Sunday 20:00 of W44, stopped Monday 06:00 of W45 (just after the cutoff).
    await agent.record([app_started(day(W44, 6, 20)), app_stopped(day(W45, 0, 6))], 0)
    before = await agent.local_activity(5)
    assert [a.usage.uptime_hours for a in before] == [0, 4, 6, 0, 0]
    # The start is the state in force at the cutoff: it stays, so nothing is
    # pruned, and W44's figures still come from it.
    assert await agent.prune() == 0
    assert await agent.store.week_summaries() == {}
    after = await agent.local_activity(5)
    assert [a.usage.uptime_hours for a in after] == [0, 4, 6, 0, 0]


def test_state_kind_numbers_are_the_contracts() -> None:
    """The migration names the state kinds by number; the contract must agree."""
    assert set(STATE_KIND_NUMBERS) == STATE_KINDS


def test_every_event_enum_value_fits_its_packed_field() -> None:
    for spec in KINDS_BY_NAME.values():
        assert 0 < spec.kind < 2**15, spec.field.name
        for column, allowed in zip(spec.columns, spec.allowed, strict=True):
            assert max(allowed) <= MAX_ENUM_VALUE, column.full_name
    row = EventRow(1, 13, MAX_ENUM_VALUE, 7, MAX_ENUM_VALUE, None)
    assert EventRow.unpacked(*row.packed()) == row


async def test_kept_week_counts_agree_with_a_scan_of_the_events(tmp_path: Path) -> None:
    """A whole week is answered from week_shapes; any other window by a scan."""
    store = await AgentStore.open(tmp_path / "agent.db")
    try:
        week = Week.containing(dt.datetime.fromtimestamp(LOGICAL_ROWS[0].occurred_at / 1000, tz=UTC))
        start, end = to_millis(week.start), to_millis(week.end)
        more = [EventRow(start + i * 3_600_000, 4, 2, i % 3 + 1, 0, None).packed() for i in range(50)]
        await store.append_events([*ROWS, *more], recorded_at=1, dropped_by_client=0)
        whole = sorted(await store.week_counts(start, end, 0))  # from the kept counts
        scanned = sorted(await store.week_counts(start, end - 1, 0))  # a scan: not a whole week
        assert whole == scanned
        assert sum(count for *_, count in whole) == len(ROWS) + len(more)
        # Events stored before `after_seq` force a scan that leaves them out.
        assert sum(count for *_, count in await store.week_counts(start, end, 3)) == len(more)
    finally:
        await store.close()
