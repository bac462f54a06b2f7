"""Time as the services read it, and a simulated clock for testing the real processes.

A clock is called for the wall-clock time (UTC), which an operator, NTP or a
dead RTC battery may set to anything, and its `elapsed()` gives seconds of a
clock nobody sets (Linux's CLOCK_BOOTTIME: it never jumps, and it keeps
counting while the machine is suspended). The agent compares the two to notice
a wall clock that jumps (docs/agent.md, "Time").

A simulated clock lets tests run the real processes over many weeks without
waiting or restarting, and set their wall clock wrong. It reads a small JSON
file, again whenever the file changes:

    {"advance": 604800, "wall_error": -3600}

`advance` (seconds) is time that has passed on top of the real time: the wall
clock and the elapsed time both move. `wall_error` (seconds) sets the wall
clock wrong, and nothing else: it is what a clock that jumps looks like. A
missing file means both 0. It is accepted only where STATS_TESTING=1 is set
(`require_testing`): an operator who sets it by mistake is told so at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# Set to 1 in a process's environment to allow what only tests may use.
TESTING_ENVIRONMENT = "STATS_TESTING"


class Clock(Protocol):
    def __call__(self) -> dt.datetime:
        """The wall-clock time, UTC."""

    def elapsed(self) -> float:
        """Seconds on a clock that never jumps (its zero means nothing)."""

    def synchronized(self) -> bool:
        """Whether the wall clock is kept right by a time service (NTP) now."""


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


# adjtimex(2) answers TIME_ERROR while no time service keeps the clock right.
_TIME_ERROR = 5
_TIMEX_BYTES = 512  # more than struct timex takes on any Linux


def _kernel_says_synchronized() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        state = int(libc.adjtimex(ctypes.create_string_buffer(_TIMEX_BYTES)))  # modes 0: only reads
    except (OSError, AttributeError):
        return False  # not Linux, or no adjtimex: unknown, so not trusted
    return 0 <= state < _TIME_ERROR


class SystemClock:
    """The machine's clocks."""

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def elapsed(self) -> float:
        return _boottime()

    def synchronized(self) -> bool:
        return _kernel_says_synchronized()


class TestingNotAllowed(Exception):
    """A test-only facility was asked for where tests are not allowed."""


def testing_allowed() -> bool:
    return os.environ.get(TESTING_ENVIRONMENT, "") == "1"


def require_testing(what: str) -> None:
    """Refuse `what` (one line for the operator) unless STATS_TESTING=1."""
    if not testing_allowed():
        raise TestingNotAllowed(f"{what} is for tests only: set {TESTING_ENVIRONMENT}=1 to allow it")


class SimulatedClock:
    """The machine's clocks, moved by what the file at `path` says (see the module)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        require_testing("a simulated clock")
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self.advance = 0.0
        self.wall_error = 0.0
        self._read()

    def _read(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self.advance, self.wall_error = None, 0.0, 0.0
            return
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return
        try:
            values = json.loads(self.path.read_text() or "{}")
            advance, wall_error = float(values.get("advance", 0)), float(values.get("wall_error", 0))
        except (OSError, ValueError, AttributeError):
            return  # being written: the next reading gets it whole
        if not all(math.isfinite(v) and abs(v) < 1e10 for v in (advance, wall_error)):
            return
        self._seen, self.advance, self.wall_error = seen, advance, wall_error

    def __call__(self) -> dt.datetime:
        self._read()
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.advance + self.wall_error)

    def elapsed(self) -> float:
        self._read()
        return _boottime() + self.advance

    def synchronized(self) -> bool:
        return False  # a simulated wall clock is whatever the test says

    @staticmethod
    def write(path: str | os.PathLike[str], advance: float = 0.0, wall_error: float = 0.0) -> None:
        """Set a simulated clock's file (for tests); replaced whole, so a reader never sees half of it."""
        target = Path(path)
        staging = target.with_name(target.name + ".new")
        staging.write_text(json.dumps({"advance": advance, "wall_error": wall_error}))
        os.replace(staging, target)


def clock_from(path: str) -> Clock:
    """The simulated clock of the file at `path`, or the machine's when `path` is empty."""
    return SimulatedClock(path) if path else SystemClock()


class _WallOnly:
    """A bare wall-clock function taken as a clock that time simply follows
    (for callers that only ever set the time, such as benchmarks)."""

    def __init__(self, wall: Callable[[], dt.datetime]) -> None:
        self._wall = wall

    def __call__(self) -> dt.datetime:
        return self._wall()

    def elapsed(self) -> float:
        return self._wall().timestamp()

    def synchronized(self) -> bool:
        return True


def as_clock(clock: Clock | Callable[[], dt.datetime]) -> Clock:
    """`clock`, or a bare function of the wall-clock time made into a Clock."""
    if hasattr(clock, "elapsed") and hasattr(clock, "synchronized"):
        return clock
    return _WallOnly(clock)
