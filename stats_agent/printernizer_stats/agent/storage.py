"""The agent's SQLite database: the one module that speaks SQL.

WAL mode with `synchronous=NORMAL`: a batch of events is acknowledged only
after its transaction is committed, so an agent killed at any moment loses
nothing it acknowledged. A power cut may lose the last commits (never corrupt
the file): SQLite syncs the WAL at checkpoints rather than on every commit,
which halves the cost of a batch. Events are written in batches, one
transaction per call, never a commit per event.

The schema is versioned with `PRAGMA user_version`; every migration has an
upgrade and a downgrade, applied in one transaction each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiosqlite
from printernizer.stats.v1 import agent_service_pb2
from printernizer_stats.common.events import KINDS_BY_NAME, EventRow, RowValues, unpack
from printernizer_stats.common.refusals import Refusal, ResourceExhausted, Unavailable

RefusedEvent = agent_service_pb2.RefusedEvent

MMAP_BYTES = 256 * 1024 * 1024
CACHE_KIB = 32 * 1024
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# 1970-01-05 was a Monday: ISO weeks are the 7-day blocks counted from it.
WEEK_EPOCH_MS = 4 * DAY_MS
STATE_KINDS = frozenset(
    KINDS_BY_NAME[name].kind
    for name in (
        "app_started",
        "app_stopped",
        "feature_enabled",
        "feature_disabled",
        "printer_fleet_observed",
    )
)


def week_index(millis: int) -> int:
    """The number of the ISO week containing `millis`, counted from 1970-01-05."""
    return (millis - WEEK_EPOCH_MS) // WEEK_MS


def _count_shapes(where: str, sign: str = "") -> str:
    """SQL adding (or, with sign "-", removing) the events matching `where`
    to the per-week counts of their shapes."""
    return (
        "INSERT INTO week_shapes (week, shape, count) "  # noqa: S608 - fixed fragments only
        f"SELECT (occurred_at - {WEEK_EPOCH_MS}) / {WEEK_MS}, shape, {sign}COUNT(*) FROM events "
        f"WHERE {where} GROUP BY 1, 2 "
        "ON CONFLICT (week, shape) DO UPDATE SET count = count + excluded.count"
    )


def _state_kind(kind: int) -> int:
    if kind not in STATE_KINDS:
        raise ValueError(f"event kind {kind} is not a state kind")
    return int(kind)


@dataclass(frozen=True)
class BatchIdentity:
    """Who sent a batch, and its number: a batch sent again keeps both."""

    client_id: bytes
    sequence: int


@dataclass(frozen=True)
class StoredBatch:
    """What storing a batch did: events stored, events refused, and whether
    the batch had been stored before (then this is that first answer)."""

    stored: int
    refused: tuple[RefusedEvent, ...]
    duplicate: bool


def _refusals_bytes(refused: Sequence[RefusedEvent]) -> bytes:
    return agent_service_pb2.RecordEventsResponse(refused=refused).SerializeToString()


def _refusals(data: bytes) -> tuple[RefusedEvent, ...]:
    return tuple(agent_service_pb2.RecordEventsResponse.FromString(data).refused)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    upgrade: tuple[str, ...]
    downgrade: tuple[str, ...]


# Events are stored in arrival order (their sequence number is the rowid), each
# as its time, its packed shape (kind and enum values, see events.pack) and,
# for the richer kinds, its payload, with no secondary index on the hot path:
# an index costs more per event than the insert itself. `event_weeks` keeps,
# per ISO week, the range of sequence numbers its events were stored under
# (updated once per batch), so a week is one rowid range scan, and
# `week_shapes` counts each week's events per shape, so a whole week stored
# after consent needs no scan at all (a week holds a few dozen shapes). The rare
# state-carrying kinds (app start/stop, feature on/off, fleet) are also listed
# in `state_events`, indexed by kind and time; the kind numbers are fixed by
# the contract (EventKind) and checked by a test.
STATE_KIND_NUMBERS = (1, 2, 11, 12, 13)
_STATE_KINDS_SQL = ", ".join(str(kind) for kind in STATE_KIND_NUMBERS)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, weeks, week shapes, state events, settings and counters",
        (
            """CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                occurred_at INTEGER NOT NULL,
                shape INTEGER NOT NULL,
                payload BLOB,
                recorded_at INTEGER NOT NULL
            )""",
            """CREATE TABLE event_weeks (
                week INTEGER PRIMARY KEY,
                first_seq INTEGER NOT NULL,
                last_seq INTEGER NOT NULL
            )""",
            """CREATE TABLE state_events (
                seq INTEGER PRIMARY KEY REFERENCES events (seq) ON DELETE CASCADE,
                kind INTEGER NOT NULL,
                occurred_at INTEGER NOT NULL,
                f1 INTEGER NOT NULL
            )""",
            "CREATE INDEX state_events_by_kind ON state_events (kind, occurred_at)",
            """CREATE TABLE week_shapes (
                week INTEGER NOT NULL,
                shape INTEGER NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (week, shape)
            ) WITHOUT ROWID""",
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        ),
        (
            "DROP TABLE counters",
            "DROP TABLE settings",
            "DROP TABLE week_shapes",
            "DROP INDEX state_events_by_kind",
            "DROP TABLE state_events",
            "DROP TABLE event_weeks",
            "DROP TABLE events",
        ),
    ),
    Migration(
        2,
        "sent-report ledger, deletion requests and kept weekly summaries",
        (
            """CREATE TABLE sent_reports (
                report_id BLOB PRIMARY KEY,
                week INTEGER NOT NULL,
                report BLOB NOT NULL,
                receipt BLOB NOT NULL,
                sent_at INTEGER NOT NULL
            )""",
            "CREATE INDEX sent_reports_by_time ON sent_reports (sent_at)",
            """CREATE TABLE deletion_requests (
                id INTEGER PRIMARY KEY,
                installation_id BLOB NOT NULL,
                request BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                receipt BLOB,
                confirmed_at INTEGER
            )""",
            # The weekly figures of weeks whose raw events were pruned.
            "CREATE TABLE week_summaries (week INTEGER PRIMARY KEY, activity BLOB NOT NULL)",
        ),
        (
            "DROP TABLE week_summaries",
            "DROP TABLE deletion_requests",
            "DROP INDEX sent_reports_by_time",
            "DROP TABLE sent_reports",
        ),
    ),
    Migration(
        3,
        "the outbox of finished weeks' signed reports",
        (
            """CREATE TABLE outbox (
                week INTEGER PRIMARY KEY,
                report_id BLOB NOT NULL,
                report BLOB NOT NULL,
                signature BLOB NOT NULL,
                queued_at INTEGER NOT NULL
            )""",
        ),
        ("DROP TABLE outbox",),
    ),
    Migration(
        4,
        "per queued report, the server errors it met; the weeks whose reports were given up",
        (
            "ALTER TABLE outbox ADD COLUMN server_errors INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE outbox ADD COLUMN first_server_error_at INTEGER",
            # A week whose report was dropped or evicted is not queued again:
            # rebuilt every hour, it would be refused (or evicted) every hour.
            """CREATE TABLE given_up_weeks (
                week INTEGER PRIMARY KEY,
                reason TEXT NOT NULL,
                given_up_at INTEGER NOT NULL
            )""",
        ),
        (
            "DROP TABLE given_up_weeks",
            "ALTER TABLE outbox DROP COLUMN first_server_error_at",
            "ALTER TABLE outbox DROP COLUMN server_errors",
        ),
    ),
    Migration(
        5,
        "the last batch each recording client had stored, and its answer",
        (
            # One row per client (an SDK instance, made at each host start):
            # a batch sent again after a lost answer is recognised by its
            # number and answered as the first time, in the transaction that
            # would otherwise store it twice.
            """CREATE TABLE client_batches (
                client_id BLOB PRIMARY KEY,
                sequence INTEGER NOT NULL,
                stored INTEGER NOT NULL,
                refused BLOB NOT NULL,
                committed_at INTEGER NOT NULL
            )""",
        ),
        ("DROP TABLE client_batches",),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def disk_full(exc: BaseException) -> bool:
    """Whether a storage failure is SQLite's "database or disk is full"."""
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


class StorageError(RuntimeError):
    """The database cannot be opened or used (permissions, disk, corruption)."""


# When the disk is full, a retry soon is pointless.
DISK_FULL_RETRY = dt.timedelta(minutes=5)


def storage_refusal(exc: Exception) -> Refusal | None:
    """What a storage failure means to a caller of the agent's API (None: not one)."""
    if disk_full(exc):
        return ResourceExhausted("the agent's disk is full", DISK_FULL_RETRY)
    if isinstance(exc, StorageError | sqlite3.Error | OSError):
        return Unavailable("the agent's storage is unavailable")
    return None


def _lock(path: Path) -> IO[bytes]:
    """Hold an exclusive lock beside the database for as long as the file is
    open: two agents on one database would each trust a cached consent."""
    lock = path.with_name(path.name + ".lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StorageError(f"another agent is using the database {path}") from None
    return lock


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(db: aiosqlite.Connection, target: int = LATEST_VERSION) -> int:
    """Upgrade or downgrade the schema to `target`; returns the version before."""
    if not 0 <= target <= LATEST_VERSION:
        raise StorageError(f"unknown schema version {target} (this agent knows 0 to {LATEST_VERSION})")
    current = await schema_version(db)
    if current > LATEST_VERSION:
        raise StorageError(
            f"the database has schema version {current}, newer than this agent ({LATEST_VERSION}); "
            "upgrade the agent"
        )
    steps: Iterable[tuple[int, Sequence[str]]]
    if target >= current:
        steps = [(m.version, m.upgrade) for m in MIGRATIONS if current < m.version <= target]
    else:
        steps = [(m.version - 1, m.downgrade) for m in reversed(MIGRATIONS) if target < m.version <= current]
    for version, statements in steps:
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {int(version)}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
    return current


@dataclass(frozen=True)
class StoredRow:
    seq: int
    recorded_at: int
    row: EventRow


@dataclass(frozen=True)
class SentReportRow:
    report_id: bytes
    week: int
    report: bytes
    receipt: bytes
    sent_at: int


@dataclass(frozen=True)
class OutboxRow:
    week: int  # YYYYWW
    report_id: bytes
    report: bytes  # the exact bytes that will be sent
    signature: bytes
    queued_at: int
    # Attempts that met a server error (INTERNAL, UNKNOWN), and when the first did.
    server_errors: int = 0
    first_server_error_at: int | None = None


@dataclass(frozen=True)
class DeletionRequestRow:
    id: int
    installation_id: bytes
    request: bytes
    created_at: int
    receipt: bytes | None
    confirmed_at: int | None


class AgentStore:
    """All reads and writes of the agent's database."""

    def __init__(self, db: aiosqlite.Connection, path: Path, lock: IO[bytes] | None = None) -> None:
        self._db = db
        self.path = path
        self._lock_file = lock
        # One connection, one transaction at a time.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate_to: int | None = LATEST_VERSION) -> AgentStore:
        """Open (creating if needed) and migrate to the latest schema."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = _lock(path)
        except OSError as exc:
            raise StorageError(f"cannot open the database {path}: {exc}") from exc
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            lock.close()
            raise StorageError(f"cannot open the database {path}: {exc}") from exc
        try:
            os.chmod(path, 0o600)
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            # A week of a busy installation is a few MB of rows: read them through
            # memory-mapped I/O and a cache that holds them, not page by page.
            await db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            await db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if migrate_to is not None:
                await migrate(db, migrate_to)
        except (OSError, sqlite3.Error) as exc:
            await db.close()
            lock.close()
            raise StorageError(f"cannot use the database {path}: {exc}") from exc
        except BaseException:
            await db.close()
            lock.close()
            raise
        return cls(db, path, lock)

    async def close(self) -> None:
        await self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return tuple(row) if row is not None else None

    async def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        async with self._db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        return [tuple(row) for row in rows]

    # --- events --------------------------------------------------------------

    async def append_events(
        self,
        rows: Sequence[RowValues],
        recorded_at: int,
        dropped_by_client: int,
        with_unknown_fields: int = 0,
        refused: Sequence[RefusedEvent] = (),
        batch: BatchIdentity | None = None,
    ) -> StoredBatch:
        """Store a batch in one transaction, with its week ranges, its state
        events, its per-week counts, the client's drop count, how many of its
        events carried unknown fields or were refused, and its identity. A
        batch whose identity was stored before stores nothing: the first
        answer comes back, marked as a duplicate."""
        async with self._transaction() as db:
            if batch is not None:
                earlier = await self._stored_batch(db, batch)
                if earlier is not None:
                    return earlier
                await db.execute(
                    "INSERT INTO client_batches (client_id, sequence, stored, refused, committed_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
                    "sequence = excluded.sequence, stored = excluded.stored, "
                    "refused = excluded.refused, committed_at = excluded.committed_at",
                    (batch.client_id, batch.sequence, len(rows), _refusals_bytes(refused), recorded_at),
                )
            if refused:
                await self._add_counter(db, "rejected_events", len(refused))
            if not rows:
                # Every event refused: the call fails, and the client reports
                # its drop count again with its next batch. (No events at all:
                # a call that only reports drops.)
                if dropped_by_client and not refused:
                    await self._add_counter(db, "dropped_events", dropped_by_client)
                return StoredBatch(0, tuple(refused), duplicate=False)
            before = await self._scalar(db, "SELECT COALESCE(MAX(seq), 0) FROM events")
            # The rows go in as they are (one shared recorded_at, an integer).
            await db.executemany(
                "INSERT INTO events (occurred_at, shape, payload, recorded_at) "  # noqa: S608
                f"VALUES (?, ?, ?, {int(recorded_at)})",
                rows,
            )
            await db.execute(
                "INSERT INTO event_weeks (week, first_seq, last_seq) "
                "SELECT (occurred_at - ?) / ?, MIN(seq), MAX(seq) FROM events WHERE seq > ? GROUP BY 1 "
                "ON CONFLICT (week) DO UPDATE SET "
                "first_seq = MIN(first_seq, excluded.first_seq), last_seq = MAX(last_seq, excluded.last_seq)",
                (WEEK_EPOCH_MS, WEEK_MS, before),
            )
            await db.execute(
                "INSERT INTO state_events (seq, kind, occurred_at, f1) "  # noqa: S608 - fixed integers
                f"SELECT seq, shape >> 48, occurred_at, (shape >> 32) & 65535 FROM events "
                f"WHERE seq > ? AND shape >> 48 IN ({_STATE_KINDS_SQL})",
                (before,),
            )
            await db.execute(_count_shapes("seq > ?"), (before,))
            if dropped_by_client:
                await self._add_counter(db, "dropped_events", dropped_by_client)
            if with_unknown_fields:
                await self._add_counter(db, "events_with_unknown_fields", with_unknown_fields)
        return StoredBatch(len(rows), tuple(refused), duplicate=False)

    @staticmethod
    async def _stored_batch(db: aiosqlite.Connection, batch: BatchIdentity) -> StoredBatch | None:
        """The answer a batch got when it was stored (None: it was not). A batch
        older than the client's last one was stored too (a client sends in
        order); only the last one's answer is kept."""
        cursor = await db.execute(
            "SELECT sequence, stored, refused FROM client_batches WHERE client_id = ?", (batch.client_id,)
        )
        row = await cursor.fetchone()
        if row is None or batch.sequence > row[0]:
            return None
        if batch.sequence < row[0]:
            return StoredBatch(0, (), duplicate=True)
        return StoredBatch(int(row[1]), _refusals(bytes(row[2])), duplicate=True)

    async def forget_batches_before(self, before: int) -> int:
        """Forget the batch identities of clients not heard from since `before`
        (a client is an SDK instance: a host that restarted has a new one)."""
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM client_batches WHERE committed_at < ?", (before,))
            return int(cursor.rowcount)

    @staticmethod
    async def _scalar(db: aiosqlite.Connection, sql: str, params: Sequence[object] = ()) -> int | None:
        async with db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def last_sequence(self) -> int:
        return await self._scalar(self._db, "SELECT COALESCE(MAX(seq), 0) FROM events") or 0

    async def _seq_range(self, start: int, end: int) -> tuple[int, int] | None:
        """The sequence numbers under which events dated in [start, end) were stored."""
        row = await self._one(
            "SELECT MIN(first_seq), MAX(last_seq) FROM event_weeks WHERE week BETWEEN ? AND ?",
            (week_index(start), week_index(end - 1)),
        )
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    async def week_counts(self, start: int, end: int, after_seq: int) -> list[tuple[int, int, int, int, int]]:
        """(kind, f1, f2, f3, count) of events in [start, end) stored after `after_seq`."""
        seqs = await self._seq_range(start, end)
        if seqs is None:
            return []
        week = week_index(start)
        if start == WEEK_EPOCH_MS + week * WEEK_MS and end == start + WEEK_MS and seqs[0] > after_seq:
            # A whole week, every event of it stored after `after_seq`: its counts are kept.
            kept = await self._all(
                "SELECT shape, count FROM week_shapes WHERE week = ? AND count > 0", (week,)
            )
            return [(*unpack(int(shape)), int(count)) for shape, count in kept]
        rows = await self._all(
            "SELECT shape, COUNT(*) FROM events "
            "WHERE seq BETWEEN ? AND ? AND seq > ? AND occurred_at >= ? AND occurred_at < ? "
            "GROUP BY shape",
            (*seqs, after_seq, start, end),
        )
        return [(*unpack(int(shape)), int(count)) for shape, count in rows]

    async def latest_of_kind(self, kind: int, before: int, after_seq: int = 0) -> StoredRow | None:
        """The newest event of a state kind that happened before `before`
        (among those stored after `after_seq`)."""
        row = await self._one(
            f"SELECT {_EVENT_COLUMNS} FROM state_events s JOIN events e ON e.seq = s.seq "  # noqa: S608
            "WHERE s.kind = ? AND s.occurred_at < ? AND s.seq > ? "
            "ORDER BY s.occurred_at DESC, s.seq DESC LIMIT 1",
            (_state_kind(kind), before, after_seq),
        )
        return _stored(row) if row else None

    async def _latest_per_value(self, kinds: Sequence[int], before: int) -> dict[int, tuple[int, int, int]]:
        """f1 -> (occurred_at, seq, kind) of the newest event of these state
        kinds before `before`, per f1 value."""
        latest: dict[int, tuple[int, int, int]] = {}
        for kind in kinds:
            rows = await self._all(
                "SELECT f1, occurred_at, seq FROM state_events WHERE kind = ? AND occurred_at < ?",
                (_state_kind(kind), before),
            )
            for f1, occurred_at, seq in rows:
                if f1 not in latest or (occurred_at, seq) > latest[f1][:2]:
                    latest[int(f1)] = (int(occurred_at), int(seq), kind)
        return latest

    async def latest_per_value(self, kinds: Sequence[int], before: int) -> list[tuple[int, int]]:
        """For events of these state kinds before `before`: the newest (kind, f1) per f1 value."""
        latest = await self._latest_per_value(kinds, before)
        return [(kind, f1) for f1, (_, _, kind) in latest.items()]

    async def latest_sequences_per_value(self, kinds: Sequence[int], before: int) -> list[int]:
        """The sequence numbers of those newest events (see latest_per_value)."""
        return [seq for _, seq, _ in (await self._latest_per_value(kinds, before)).values()]

    async def times_of_kinds(
        self, kinds: Sequence[int], start: int, end: int, after_seq: int = 0
    ) -> list[tuple[int, int]]:
        """(occurred_at, kind) of events of these state kinds in [start, end)
        stored after `after_seq`, oldest first."""
        found: list[tuple[int, int, int]] = []
        for kind in kinds:
            rows = await self._all(
                "SELECT occurred_at, seq FROM state_events WHERE kind = ? "
                "AND occurred_at >= ? AND occurred_at < ? AND seq > ?",
                (_state_kind(kind), start, end, after_seq),
            )
            found += [(int(t), int(q), kind) for t, q in rows]
        return [(moment, kind) for moment, _, kind in sorted(found)]

    async def last_event_time_before(self, moment: int, after_seq: int = 0) -> int | None:
        """When the last event before `moment` happened (among those stored
        after `after_seq`), looking back at most a week: enough to place a crash
        between two starts."""
        seqs = await self._seq_range(moment - WEEK_MS, moment)
        if seqs is None:
            return None
        row = await self._one(
            "SELECT MAX(occurred_at) FROM events WHERE seq BETWEEN ? AND ? AND seq > ? "
            "AND occurred_at < ? AND occurred_at >= ?",
            (*seqs, after_seq, moment, moment - WEEK_MS),
        )
        return int(row[0]) if row and row[0] is not None else None

    async def event_totals(self) -> list[tuple[int, int]]:
        """(kind, stored events) for every kind stored, from the per-week counts."""
        rows = await self._all(
            "SELECT shape >> 48, SUM(count) FROM week_shapes GROUP BY 1 HAVING SUM(count) > 0 ORDER BY 1"
        )
        return [(int(kind), int(count)) for kind, count in rows]

    async def event_count(self) -> int:
        return sum(count for _, count in await self.event_totals())

    async def first_seen(self) -> int | None:
        row = await self._one("SELECT recorded_at FROM events ORDER BY seq LIMIT 1")
        return int(row[0]) if row else None

    async def first_week_with_events(self) -> int | None:
        """The start of the oldest week that holds stored events, from the
        per-week counts (which, unlike the week ranges, count every stored event)."""
        week = await self._scalar(self._db, "SELECT MIN(week) FROM week_shapes WHERE count > 0")
        return None if week is None else WEEK_EPOCH_MS + week * WEEK_MS

    async def count_events_before(self, moment: int) -> int:
        """How many stored events are dated before `moment` (a week's start), from the per-week counts."""
        return await self._scalar(self._db, _EVENTS_BEFORE_WEEK, (week_index(moment),)) or 0

    async def export_events(self, page_size: int) -> AsyncIterator[list[StoredRow]]:
        """Every stored event, oldest first, in pages (keyset pagination)."""
        after = 0
        while True:
            rows = await self._all(
                f"SELECT {_EVENT_COLUMNS} FROM events e WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                (after, page_size),
            )
            if not rows:
                return
            page = [_stored(row) for row in rows]
            after = page[-1].seq
            yield page

    async def prune_events_before(
        self, cutoff: int, summaries: dict[int, bytes], keep: Collection[int]
    ) -> int:
        """Delete raw events dated before `cutoff` (a week's start), except the
        sequence numbers in `keep` (the state in force at the cutoff), and keep
        the given weekly summaries (week key -> serialized WeeklyActivity), all
        in one transaction."""
        # With nothing to keep, exclude nothing: `seq NOT IN (NULL)` is never true.
        not_kept = f" AND seq NOT IN ({', '.join(str(int(seq)) for seq in keep)})" if keep else ""
        old = f"occurred_at < ?{not_kept}"
        # Where old events are: the old weeks' ranges, and old state events (a
        # state event kept at an earlier pruning may be superseded by now).
        places: list[tuple[str, tuple[int, ...]]] = [
            (f"seq IN (SELECT seq FROM state_events WHERE {old})", (cutoff,))  # noqa: S608 - integers
        ]
        seqs = await self._seq_range(0, cutoff)
        if seqs is not None:
            places.append((f"seq BETWEEN ? AND ? AND {old}", (*seqs, cutoff)))
        deleted = 0
        async with self._transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO week_summaries (week, activity) VALUES (?, ?)",
                list(summaries.items()),
            )
            for where, values in places:
                deleted += await self._delete_events(db, where, values)
            # Old events no range holds: an earlier agent, with no state to
            # keep, forgot the old weeks' ranges without deleting their events.
            # The per-week counts still hold them, so they show as more old
            # events than old state events; one scan deletes them.
            left = await self._scalar(db, _EVENTS_BEFORE_WEEK, (week_index(cutoff),))
            state = await self._scalar(
                db, "SELECT COUNT(*) FROM state_events WHERE occurred_at < ?", (cutoff,)
            )
            if left != state:
                deleted += await self._delete_events(db, old, (cutoff,))
            await db.execute("DELETE FROM week_shapes WHERE count <= 0")
            await db.execute("DELETE FROM event_weeks WHERE week < ?", (week_index(cutoff),))
        return deleted

    @staticmethod
    async def _delete_events(db: aiosqlite.Connection, where: str, values: Sequence[object]) -> int:
        """Delete the events matching `where`, taking them off the per-week counts first."""
        await db.execute(_count_shapes(where, sign="-"), values)
        cursor = await db.execute(f"DELETE FROM events WHERE {where}", values)  # noqa: S608
        return int(cursor.rowcount)

    async def week_summaries(self) -> dict[int, bytes]:
        rows = await self._all("SELECT week, activity FROM week_summaries")
        return {int(w): bytes(a) for w, a in rows}

    # --- settings and counters --------------------------------------------------

    async def settings(self) -> dict[str, bytes]:
        rows = await self._all("SELECT key, value FROM settings")
        return {str(k): bytes(v) for k, v in rows}

    async def put_settings(self, values: dict[str, bytes | None]) -> None:
        """Set (or, for None, delete) several settings in one transaction."""
        async with self._transaction() as db:
            await self._put_settings(db, values)

    @staticmethod
    async def _put_settings(db: aiosqlite.Connection, values: dict[str, bytes | None]) -> None:
        for key, value in values.items():
            if value is None:
                await db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                await db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    async def counters(self) -> dict[str, int]:
        rows = await self._all("SELECT name, value FROM counters")
        return {str(n): int(v) for n, v in rows}

    async def add_counter(self, name: str, amount: int) -> None:
        async with self._transaction() as db:
            await self._add_counter(db, name, amount)

    @staticmethod
    async def _add_counter(db: aiosqlite.Connection, name: str, amount: int) -> None:
        await db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    # --- ledger and deletion requests --------------------------------------------

    async def sent_reports(self, limit: int) -> list[SentReportRow]:
        rows = await self._all(
            "SELECT report_id, week, report, receipt, sent_at FROM sent_reports "
            "ORDER BY sent_at DESC, week DESC LIMIT ?",
            (limit,),
        )
        return [SentReportRow(bytes(r[0]), int(r[1]), bytes(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    async def sent_weeks(self) -> set[int]:
        """Every week whose report is in the ledger (all of them, not only the latest listed)."""
        return {int(row[0]) for row in await self._all("SELECT DISTINCT week FROM sent_reports")}

    async def last_sent_at(self) -> int | None:
        row = await self._one("SELECT MAX(sent_at) FROM sent_reports")
        return int(row[0]) if row and row[0] is not None else None

    async def deletion_requests(self) -> list[DeletionRequestRow]:
        rows = await self._all(
            "SELECT id, installation_id, request, created_at, receipt, confirmed_at "
            "FROM deletion_requests ORDER BY created_at DESC, id DESC"
        )
        return [
            DeletionRequestRow(
                int(r[0]),
                bytes(r[1]),
                bytes(r[2]),
                int(r[3]),
                bytes(r[4]) if r[4] is not None else None,
                int(r[5]) if r[5] is not None else None,
            )
            for r in rows
        ]

    # --- outbox --------------------------------------------------------------------

    async def queue_report(self, row: OutboxRow, max_reports: int, max_bytes: int) -> int:
        """Queue a finished week's report (once: a week already queued is kept),
        then evict the oldest reports beyond the caps, giving their weeks up;
        returns how many were evicted (also added to the `evicted_reports`
        counter)."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO outbox (week, report_id, report, signature, queued_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (row.week, row.report_id, row.report, row.signature, row.queued_at),
            )
            evicted = 0
            while True:
                count, size = await self._one_in(
                    db, "SELECT COUNT(*), COALESCE(SUM(LENGTH(report)), 0) FROM outbox"
                )
                if count <= max_reports and size <= max_bytes:
                    break
                oldest = await self._scalar(db, "SELECT MIN(week) FROM outbox")
                assert oldest is not None  # the outbox is over its caps, so not empty
                await self._give_up(db, [oldest], "EVICTED", row.queued_at)
                evicted += 1
            if evicted:
                await self._add_counter(db, "evicted_reports", evicted)
            return evicted

    async def replace_queued_report(self, row: OutboxRow) -> None:
        """Replace a queued week's report (bytes, signature, time), keeping its count of server errors."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE outbox SET report_id = ?, report = ?, signature = ?, queued_at = ? WHERE week = ?",
                (row.report_id, row.report, row.signature, row.queued_at, row.week),
            )

    @staticmethod
    async def _give_up(db: aiosqlite.Connection, weeks: Sequence[int], reason: str, at: int) -> None:
        """Remove these weeks' reports from the outbox, and remember the weeks
        so that they are never queued again."""
        await db.executemany("DELETE FROM outbox WHERE week = ?", [(week,) for week in weeks])
        await db.executemany(
            "INSERT OR REPLACE INTO given_up_weeks (week, reason, given_up_at) VALUES (?, ?, ?)",
            [(week, reason, at) for week in weeks],
        )

    async def given_up_weeks(self) -> set[int]:
        """The weeks whose reports were dropped or evicted: never queued again."""
        return {int(row[0]) for row in await self._all("SELECT week FROM given_up_weeks")}

    @staticmethod
    async def _one_in(db: aiosqlite.Connection, sql: str) -> tuple[int, int]:
        async with db.execute(sql) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def outbox(self) -> list[OutboxRow]:
        """Queued reports, oldest week first."""
        return await self._outbox_rows("")

    async def _outbox_rows(self, where: str, params: Sequence[object] = ()) -> list[OutboxRow]:
        rows = await self._all(
            "SELECT week, report_id, report, signature, queued_at, server_errors, first_server_error_at "  # noqa: S608
            f"FROM outbox {where} ORDER BY week",
            params,
        )
        return [
            OutboxRow(int(w), bytes(i), bytes(r), bytes(s), int(q), int(e), None if f is None else int(f))
            for w, i, r, s, q, e, f in rows
        ]

    async def count_server_error(self, weeks: Sequence[int], at: int) -> list[OutboxRow]:
        """Count a server error against each of these queued reports (the
        first one's time is kept); returns them as they are now."""
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE outbox SET server_errors = server_errors + 1, "
                "first_server_error_at = COALESCE(first_server_error_at, ?) WHERE week = ?",
                [(at, week) for week in weeks],
            )
        marks = ",".join("?" * len(weeks)) or "NULL"
        return await self._outbox_rows(f"WHERE week IN ({marks})", tuple(weeks))

    async def unqueue(self, weeks: Sequence[int]) -> None:
        """Take reports out of the outbox without giving their weeks up: they
        were frozen before their week was over (a clock that was ahead), and
        are built again once it is."""
        async with self._transaction() as db:
            await db.executemany("DELETE FROM outbox WHERE week = ?", [(week,) for week in weeks])

    async def drop_outbox(self, weeks: Sequence[int], reason: str, at: int) -> None:
        """Give up reports the server will never take (counted as dropped);
        `reason` is the gRPC code's name."""
        async with self._transaction() as db:
            await self._give_up(db, weeks, reason, at)
            await self._add_counter(db, "dropped_reports", len(weeks))

    async def mark_sent(self, rows: Sequence[SentReportRow]) -> None:
        """Move accepted reports from the outbox to the ledger, atomically."""
        async with self._transaction() as db:
            await db.executemany(
                _INSERT_SENT, [(r.report_id, r.week, r.report, r.receipt, r.sent_at) for r in rows]
            )
            await db.executemany("DELETE FROM outbox WHERE week = ?", [(r.week,) for r in rows])

    async def record_delivery(self, attempt: int, outcome: int, failure_code: str) -> None:
        """The outcome of the last delivery attempt, for the status."""
        await self.put_settings(
            {
                "delivery.last_attempt": str(attempt).encode(),
                "delivery.last_outcome": str(outcome).encode(),
                "delivery.last_failure_code": failure_code.encode(),
            }
        )

    async def confirm_deletion(self, request_id: int, receipt: bytes, confirmed_at: int) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE deletion_requests SET receipt = ?, confirmed_at = ? WHERE id = ?",
                (receipt, confirmed_at, request_id),
            )

    async def opt_out(self, settings: dict[str, bytes | None], deletion: DeletionRequestRow | None) -> None:
        """Record an opt-out atomically: new settings (identity removed), an
        empty outbox, and the signed deletion request that asks the server to
        forget this installation."""
        async with self._transaction() as db:
            await self._put_settings(db, settings)
            await db.execute("DELETE FROM outbox")
            await db.execute("DELETE FROM given_up_weeks")  # they were the old installation's
            if deletion is not None:
                await db.execute(
                    "INSERT INTO deletion_requests (installation_id, request, created_at) VALUES (?, ?, ?)",
                    (deletion.installation_id, deletion.request, deletion.created_at),
                )

    async def delete_all(self, keep_settings: Sequence[str]) -> tuple[int, int]:
        """Delete every event, report, summary, counter and setting (except
        `keep_settings`) in one transaction; returns (events, reports) deleted.
        Unconfirmed deletion requests stay: they are how the server's copy goes."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM state_events")
            events = (await db.execute("DELETE FROM events")).rowcount
            await db.execute("DELETE FROM event_weeks")
            await db.execute("DELETE FROM week_shapes")
            reports = (await db.execute("DELETE FROM sent_reports")).rowcount
            await db.execute("DELETE FROM outbox")
            await db.execute("DELETE FROM given_up_weeks")
            await db.execute("DELETE FROM week_summaries")
            await db.execute("DELETE FROM counters")
            await db.execute("DELETE FROM deletion_requests WHERE confirmed_at IS NOT NULL")
            marks = ",".join("?" * len(keep_settings)) or "NULL"
            await db.execute(
                f"DELETE FROM settings WHERE key NOT IN ({marks})",  # noqa: S608
                tuple(keep_settings),
            )
            return events, reports


_EVENT_COLUMNS = "e.seq, e.recorded_at, e.occurred_at, e.shape, e.payload"
_EVENTS_BEFORE_WEEK = "SELECT COALESCE(SUM(count), 0) FROM week_shapes WHERE week < ?"
_INSERT_SENT = (
    "INSERT OR REPLACE INTO sent_reports (report_id, week, report, receipt, sent_at) VALUES (?, ?, ?, ?, ?)"
)


def _stored(row: tuple[Any, ...]) -> StoredRow:
    seq, recorded_at, occurred_at, shape, payload = row
    return StoredRow(
        seq=int(seq),
        recorded_at=int(recorded_at),
        row=EventRow.unpacked(int(occurred_at), int(shape), bytes(payload) if payload is not None else None),
    )
