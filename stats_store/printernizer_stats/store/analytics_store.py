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
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from printernizer_stats.common.weeks import Week
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import schema
from .database import create_server_engine
from .rollup_store import Tally

_totals, _new, _latest = schema.weekly_totals, schema.weekly_new, schema.weekly_latest
_groups, _tallies, _pairs = schema.weekly_groups, schema.weekly_tallies, schema.weekly_pairs
_arrivals, _reports = schema.weekly_arrivals, schema.reports
_GROUP_VALUES: tuple[str, ...] = ("value_a", "value_b", "value_c")
_TALLY_VALUES: tuple[str, ...] = (*_GROUP_VALUES, "value_d")


@dataclass(frozen=True)
class Group:
    """The installations of one week that share a key (a group of a dimension,
    a tally's entry, or a pair of two dimensions' groups)."""

    key: tuple[int, ...]
    installations: int
    amount: int = 0  # printers, errors...: summed along with the group


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

    async def groups(
        self, first: Week, last: Week, rollup: int, fourth: Collection[int] | None = None
    ) -> dict[int, list[Group]]:
        """Each week's groups of one rollup, from `first` to `last` (a week with
        no groups is left out): a dimension's number (weekly_groups; a key is
        its three values, unused ones 0), or a `Tally` (weekly_tallies; a key is
        its four values: a tally by app version and something else has the
        version first, and every other tally leaves the fourth value 0).
        `fourth`: only a tally's rows with one of these fourth values."""
        if isinstance(rollup, Tally):
            table, kind, values = _tallies, _tallies.c.tally, _TALLY_VALUES
        else:
            table, kind, values = _groups, _groups.c.dimension, _GROUP_VALUES
        statement = select(
            table.c.week, table.c.installations, table.c.amount, *(table.c[v] for v in values)
        ).where(table.c.week.between(first.key, last.key), kind == rollup)
        if fourth is not None:
            statement = statement.where(_tallies.c.value_d.in_([int(v) for v in fourth]))
        rows = await self.connection.execute(statement)
        per_week: dict[int, list[Group]] = {}
        for week, installations, amount, *key in rows:
            per_week.setdefault(int(week), []).append(
                Group(tuple(int(v) for v in key), int(installations), int(amount))
            )
        return per_week

    async def pairs(self, week: Week, first: int, second: int) -> list[Group]:
        """One week's installations by two dimensions at once (weekly_pairs):
        each key is the three values of `first`, then the three of `second`."""
        low, high = sorted((first, second))
        rows = await self.connection.execute(
            select(
                _pairs.c.first_a, _pairs.c.first_b, _pairs.c.first_c,
                _pairs.c.second_a, _pairs.c.second_b, _pairs.c.second_c,
                _pairs.c.installations, _pairs.c.amount,
            ).where(_pairs.c.week == week.key, _pairs.c.first == low, _pairs.c.second == high)
        )  # fmt: skip
        groups = []
        for row in rows:
            key = tuple(int(v) for v in row[:6])
            if first > second:  # stored in dimension order; asked the other way round
                key = key[3:] + key[:3]
            groups.append(Group(key, int(row[6]), int(row[7])))
        return groups

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
        SQLite: one read transaction (writers wait for it; it is short)."""
        async with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execution_options(isolation_level="REPEATABLE READ")
            elif connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN")
            yield Snapshot(connection)
