"""Reading the weekly rollups: the analytics store, the analytics server's reads.

The rollup store keeps the rollup tables; this module only reads them (and,
for one count, the reports), so its reads run on a read replica as well.
Every read answers in plain values: dictionaries by week key
(`Week.key`), counts, and `Group` rows. What they mean (suppression,
rounding, labels) is the analytics' business, not this module's.

Reads that make up one answer share a snapshot (`AnalyticsStore.snapshot`):
each read is a method of `Snapshot`, so a new read (another rollup, another
figure) is one more method there and inherits the consistency of the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from printernizer_stats.common.weeks import Week, weeks_between
from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    Select,
    bindparam,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import schema
from .database import create_server_engine
from .rollup_store import Tally

_totals, _new, _latest = schema.weekly_totals, schema.weekly_new, schema.weekly_latest
_groups, _tallies, _pairs = schema.weekly_groups, schema.weekly_tallies, schema.weekly_pairs
_arrivals, _reports = schema.weekly_arrivals, schema.reports


@dataclass(frozen=True)
class Group:
    """The installations of one week that share a key (a group of a dimension,
    a tally's entry, or a pair of two dimensions' groups)."""

    key: tuple[int, ...]
    installations: int
    amount: int = 0  # printers, errors...: summed along with the group


@dataclass(frozen=True)
class WeeklyCounts:
    """The fleet's figures of each week from one to another (a week with none
    is left out of each): as `Snapshot.active`, `new_installations` and
    `arrivals` read them, and `known_by` the week before the first."""

    active: dict[int, int]
    new: dict[int, int]
    received: dict[int, int]
    known_before: int


@dataclass(frozen=True)
class RollupRead:
    """One rollup's groups to read (`Snapshot.read`): those of `code` (a
    dimension's number or a `Tally`) in the weeks from `first` to `last`;
    `fourth`: only a tally's rows with one of these fourth values."""

    code: int
    first: Week
    last: Week
    fourth: tuple[int, ...] | None = None


def _rollup_select(part: int, read: RollupRead) -> Select[Any, Any]:
    """The statement of one `RollupRead`, its rows tagged with `part`: the same
    columns for both tables (a dimension's rows with a fourth value of 0)."""
    # The weeks named one by one rather than as a range: the key starts with
    # the week, so each week's rows of one rollup lie together, but a range
    # walks every rollup's rows of its weeks (the overview's reads at 200,000
    # installations: 8 ms as ranges, each walking 18,000 rows; 1.6 ms named).
    weeks = [week.key for week in weeks_between(read.first, read.last)]
    fourth: ColumnElement[Any]
    if isinstance(read.code, Tally):
        table, kind, fourth = _tallies, _tallies.c.tally, _tallies.c.value_d
    else:
        table, kind, fourth = _groups, _groups.c.dimension, literal_column("0")
    statement = select(
        literal_column(str(part)), table.c.week, table.c.installations, table.c.amount,
        table.c.value_a, table.c.value_b, table.c.value_c, fourth,
    ).where(table.c.week.in_(weeks), kind == int(read.code))  # fmt: skip
    if read.fourth is not None:
        statement = statement.where(_tallies.c.value_d.in_([int(v) for v in read.fourth]))
    return statement


def _weekly_statement() -> Executable:
    """`Snapshot.weekly`'s statement: each part's rows tagged with its number."""
    first, last = bindparam("first", type_=Integer), bindparam("last", type_=Integer)

    def tagged(part: int, week: ColumnElement[Any], value: ColumnElement[Any]) -> Select[Any, Any]:
        return select(literal_column(str(part)), week, value)

    return union_all(
        tagged(0, _totals.c.week, _totals.c.active).where(_totals.c.week.between(first, last)),
        tagged(1, _new.c.week, _new.c.installations).where(_new.c.week.between(first, last)),
        tagged(2, _arrivals.c.week, _arrivals.c.reports).where(_arrivals.c.week.between(first, last)),
        tagged(3, literal_column("0"), func.coalesce(func.sum(_new.c.installations), 0)).where(
            _new.c.week < first
        ),
    )


_WEEKLY = _weekly_statement()


@functools.lru_cache(maxsize=256)
def _read_statement(reads: tuple[RollupRead, ...]) -> Executable:
    """The statement of `Snapshot.read` (kept: the dashboard asks the same reads
    again and again, and building them costs more than running them)."""
    statements = [_rollup_select(part, read) for part, read in enumerate(reads)]
    return statements[0] if len(statements) == 1 else union_all(*statements)


async def _by_week(connection: AsyncConnection, statement: Select[Any, Any]) -> dict[int, int]:
    return {int(week): int(value) for week, value in await connection.execute(statement)}


class Snapshot:
    """Reads that all see the rollups as they were at one moment."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def active(self, first: Week, last: Week) -> dict[int, int]:
        """Each week's active installations, from `first` to `last` (a week with none is left out)."""
        return await _by_week(
            self.connection,
            select(_totals.c.week, _totals.c.active).where(_totals.c.week.between(first.key, last.key)),
        )

    async def new_installations(self, first: Week, last: Week) -> dict[int, int]:
        """Each week's new installations (those whose first report is for it), from `first` to
        `last` (a week with none is left out)."""
        return await _by_week(
            self.connection,
            select(_new.c.week, _new.c.installations).where(_new.c.week.between(first.key, last.key)),
        )

    async def known_by(self, week: Week) -> int:
        """Installations known by the end of `week`: first reported for it or an earlier week."""
        known = await self.connection.scalar(
            select(func.coalesce(func.sum(_new.c.installations), 0)).where(_new.c.week <= week.key)
        )
        return int(known or 0)

    async def active_in_any_week(self, first: Week, last: Week, *, no_later_reports: bool) -> int:
        """Installations active in at least one week from `first` to `last`.

        `no_later_reports`: the caller knows that no report can be for a week
        after `last` (it is the last complete week). Then the installations by
        the week of their newest report tell, from a few rollup rows; otherwise
        the reports of the weeks are counted, by distinct installation."""
        if no_later_reports:
            statement = select(func.sum(_latest.c.installations)).where(_latest.c.week >= first.key)
        else:
            statement = select(func.count(func.distinct(_reports.c.installation_id))).where(
                _reports.c.week.between(first.key, last.key)
            )
        return int(await self.connection.scalar(statement) or 0)

    async def weekly(self, first: Week, last: Week) -> WeeklyCounts:
        """The fleet's weekly figures from `first` to `last` in one statement."""
        rows = await self.connection.execute(_WEEKLY, {"first": first.key, "last": last.key})
        found: list[dict[int, int]] = [{}, {}, {}, {}]
        for part, week, value in rows:
            found[part][int(week)] = int(value)
        active, new, received, known_before = found
        return WeeklyCounts(active, new, received, known_before[0])

    async def groups(
        self, first: Week, last: Week, rollup: int, fourth: Collection[int] | None = None
    ) -> dict[int, list[Group]]:
        """Each week's groups of one rollup, from `first` to `last` (a week with
        no groups is left out): a dimension's number (weekly_groups; a key is
        its three values, unused ones 0), or a `Tally` (weekly_tallies; a key is
        its four values: a tally by app version and something else has the
        version first, and every other tally leaves the fourth value 0).
        `fourth`: only a tally's rows with one of these fourth values."""
        (per_week,) = await self.read(
            RollupRead(rollup, first, last, None if fourth is None else tuple(fourth))
        )
        return per_week

    async def read(self, *reads: RollupRead) -> list[dict[int, list[Group]]]:
        """Several rollups' groups in one statement (one round trip instead of
        one each): for each of `reads`, its groups by week as `groups` gives them."""
        rows = (await self.connection.execute(_read_statement(reads))).all()
        found: list[dict[int, list[Group]]] = [{} for _ in reads]
        # A dimension's key is its three values, a tally's all four.
        ends = [8 if isinstance(read.code, Tally) else 7 for read in reads]
        for row in rows:
            part = row[0]
            found[part].setdefault(row[1], []).append(Group(row[4 : ends[part]], row[2], row[3]))
        return found

    async def pairs(
        self, first_week: Week, last_week: Week, first: int, second: int
    ) -> dict[int, list[Group]]:
        """Each week's installations by two dimensions at once (weekly_pairs),
        from `first_week` to `last_week` in one statement (a week with none is
        left out): each key is the three values of `first`, then the three of `second`."""
        low, high = sorted((first, second))
        weeks = [week.key for week in weeks_between(first_week, last_week)]  # named: see _rollup_select
        rows = await self.connection.execute(
            select(
                _pairs.c.week,
                _pairs.c.first_a, _pairs.c.first_b, _pairs.c.first_c,
                _pairs.c.second_a, _pairs.c.second_b, _pairs.c.second_c,
                _pairs.c.installations, _pairs.c.amount,
            ).where(_pairs.c.week.in_(weeks), _pairs.c.first == low, _pairs.c.second == high)
        )  # fmt: skip
        found: dict[int, list[Group]] = {}
        swapped = first > second  # stored in dimension order; asked the other way round
        for row in rows:
            key = (row[4], row[5], row[6], row[1], row[2], row[3]) if swapped else tuple(row[1:7])
            found.setdefault(row[0], []).append(Group(key, row[7], row[8]))
        return found

    async def arrivals(self, first: Week, last: Week) -> dict[int, int]:
        """The reports received in each week from `first` to `last` (by the week
        they arrived in, not the one they are for; a week with none is left out)."""
        reports = select(_arrivals.c.week, _arrivals.c.reports)
        return await _by_week(self.connection, reports.where(_arrivals.c.week.between(first.key, last.key)))


class AnalyticsStore:
    """The reads of the database at `engine` the analytics answer from."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> AnalyticsStore:
        return cls(create_server_engine(url))

    async def close(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        """Reads whose statements all see one snapshot of the rollups, so a
        refresh committing between two of them cannot tear an answer (a
        week's total counted, its groups not yet). PostgreSQL: REPEATABLE READ;
        SQLite: one read transaction (writers wait for it; it is short).

        Asked for inside another of this store's snapshots (in the same task:
        an answer made of other answers, as the export is), it is that one:
        the whole answer reads one moment."""
        outer = _open_snapshot.get()
        if outer is not None and outer[0] is self:
            yield outer[1]
            return
        async with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execution_options(isolation_level="REPEATABLE READ")
            elif connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN")
            snapshot = Snapshot(connection)
            token = _open_snapshot.set((self, snapshot))
            try:
                yield snapshot
            finally:
                _open_snapshot.reset(token)


# The snapshot the current task reads in, and its store (see AnalyticsStore.snapshot).
_open_snapshot: contextvars.ContextVar[tuple[AnalyticsStore, Snapshot] | None] = contextvars.ContextVar(
    "open_snapshot", default=None
)
