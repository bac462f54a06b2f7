"""ISO weeks (UTC), the only period the system knows.

A report covers exactly one ISO week: Monday 00:00 UTC up to (not including)
the next Monday 00:00 UTC. Weeks are contiguous and never overlap, so no day
is counted twice.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from printernizer.stats.v1 import common_pb2

UTC = dt.UTC

# The ISO-week years a Week may have. Far from the calendar's ends (years 1
# and 9999), so no week arithmetic can overflow a datetime, and wide enough for
# any clock, even a Raspberry Pi's that starts in 1970. What each service
# accepts from outside is narrower (see its validation).
MIN_YEAR = 1900
MAX_YEAR = 9000
# The hours of a week: the most a week's uptime can be.
WEEK_HOURS = 7 * 24


@dataclass(frozen=True, order=True)
class Week:
    """One ISO week; ordered by time."""

    year: int
    week: int

    def __post_init__(self) -> None:
        # Raises ValueError for a week that does not exist (e.g. week 53 of a
        # 52-week year) or lies outside MIN_YEAR..MAX_YEAR, so an invalid Week
        # can never be constructed.
        if not MIN_YEAR <= self.year <= MAX_YEAR:
            raise ValueError(f"{self.year} is outside the years {MIN_YEAR}-{MAX_YEAR}")
        dt.date.fromisocalendar(self.year, self.week, 1)

    @classmethod
    def containing(cls, moment: dt.datetime) -> Week:
        year, week, _ = moment.astimezone(UTC).isocalendar()
        return cls(year, week)

    @classmethod
    def from_proto(cls, message: common_pb2.IsoWeek) -> Week:
        return cls(message.year, message.week)

    @classmethod
    def from_key(cls, key: int) -> Week:
        return cls(key // 100, key % 100)

    def to_proto(self) -> common_pb2.IsoWeek:
        return common_pb2.IsoWeek(year=self.year, week=self.week)

    @property
    def key(self) -> int:
        """A sortable integer (YYYYWW) for storage."""
        return self.year * 100 + self.week

    @property
    def start(self) -> dt.datetime:
        monday = dt.date.fromisocalendar(self.year, self.week, 1)
        return dt.datetime(monday.year, monday.month, monday.day, tzinfo=UTC)

    @property
    def end(self) -> dt.datetime:
        """The first instant after the week (exclusive end)."""
        return self.start + dt.timedelta(days=7)

    def next(self) -> Week:
        return Week.containing(self.end)

    def previous(self) -> Week:
        return Week.containing(self.start - dt.timedelta(days=1))

    def is_complete(self, now: dt.datetime) -> bool:
        return now >= self.end

    def __str__(self) -> str:
        return f"{self.year}-W{self.week:02d}"


def weeks_between(first: Week, last: Week) -> list[Week]:
    """Every week from first to last inclusive, oldest first."""
    weeks = []
    current = first
    while current <= last:
        weeks.append(current)
        current = current.next()
    return weeks


def weeks_ending(until: Week, count: int) -> list[Week]:
    """`count` weeks ending with `until`, oldest first."""
    weeks = [until]
    while len(weeks) < count:
        weeks.append(weeks[-1].previous())
    return weeks[::-1]


def last_complete_week(now: dt.datetime) -> Week:
    """The newest week whose end has passed: what the analytics publish by
    default, and the newest week an agent reports."""
    return Week.containing(now).previous()


def parse_week(text: str) -> Week:
    """The ISO week `text` names (`2026-W46`); ValueError if it names none. ASCII digits only
    (`\\d` would take other scripts' digits, which int() reads)."""
    match = re.fullmatch(r"([0-9]{4})-W([0-9]{2})", text)
    if match is None:
        raise ValueError(f"{text!r} is not a week like 2026-W46")
    try:
        return Week(int(match[1]), int(match[2]))
    except ValueError:
        raise ValueError(f"{text} is not an ISO week of the years {MIN_YEAR}-{MAX_YEAR}") from None
