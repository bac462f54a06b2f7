"""The bounded in-memory buffer between the host's calls and the sender.

`put()` is the host's whole cost per event: a length check and two appends
(well under a microsecond), never a lock, never I/O. Each event waits as
(the time it was recorded, its encoded kind part) until the sender takes a
batch. Beyond the bound new events are dropped and counted; the count goes to
the agent with the next batch. While the agent says recording is disabled the
bound is 0 (`pause()`), so nothing is kept.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from printernizer_stats.common.clock import SimulatedClock, testing_allowed

SIMULATED_CLOCK_ENVIRONMENT = "STATS_AGENT_SIMULATED_CLOCK"

# The time an event is recorded: a module global, so the hot path calls a plain function.
_now = time.time


def use_simulated_clock() -> None:
    """In tests of the real processes (STATS_TESTING=1), the host stamps its
    events with the agent's simulated clock (printernizer_stats.common.clock), as a host and
    its agent share one clock on a machine; otherwise (again) with the machine's."""
    global _now
    path = os.environ.get(SIMULATED_CLOCK_ENVIRONMENT, "")
    if path and testing_allowed():
        clock = SimulatedClock(path)
        _now = lambda: clock().timestamp()  # noqa: E731 - the hot path calls a plain function
    else:
        _now = time.time  # a client made after a simulated one must not keep its clock


def now() -> float:
    """The time events are stamped with now (seconds since the epoch)."""
    return _now()


def _nothing() -> None:
    pass


class EventBuffer:
    """Recorded events not yet taken by the sender, at most `max_buffered`.

    Two deques, not one of (time, part) tuples: recording then creates no
    container object per event, so the garbage collector has nothing to do.
    `batch_ready` is called (by the recording thread) when `batch_size`
    events wait: the sender sets it to wake itself.
    """

    def __init__(self, max_buffered: int, batch_size: int) -> None:
        self.max_buffered = max_buffered
        self.batch_size = batch_size
        self.batch_ready: Callable[[], object] = _nothing
        self._times: deque[float] = deque()
        self._parts: deque[Any] = deque()
        self._limit = max_buffered  # 0 while paused
        # Events dropped (buffer full, or paused) and not yet taken to report to the agent.
        self.dropped_unreported = 0

    def put(self, part: Any) -> None:
        """Buffer one event: its encoded kind part, or a typed event to encode later."""
        # The hot path: a length check and two appends.
        parts = self._parts
        if len(parts) < self._limit:
            self._times.append(_now())
            parts.append(part)
            if len(parts) == self.batch_size:
                self.batch_ready()
        else:
            self.dropped_unreported += 1

    def __len__(self) -> int:
        return len(self._parts)

    def ready(self, most: int) -> int:
        """How many events `take()` may take now, at most `most`."""
        # A recorder may have appended a time but not yet its part: whole events only.
        return min(most, len(self._times), len(self._parts))

    def take(self, count: int) -> tuple[list[float], list[Any]]:
        """The oldest `count` events (at most `ready()`), as (times, parts), out of the buffer."""
        times, parts = self._times, self._parts
        return [times.popleft() for _ in range(count)], [parts.popleft() for _ in range(count)]

    def take_dropped(self) -> int:
        """The drop count not yet reported, to go with the next batch."""
        dropped = self.dropped_unreported
        # Not set to 0: a recorder may be counting one more right now.
        self.dropped_unreported -= dropped
        return dropped

    def return_dropped(self, count: int) -> None:
        """A drop count whose batch never arrived: it goes with the next one."""
        self.dropped_unreported += count

    def pause(self) -> int:
        """Keep nothing from now on (recording is disabled); returns how many
        buffered events were discarded."""
        self._limit = 0
        discarded = len(self._parts)
        self._parts.clear()
        self._times.clear()
        return discarded

    def resume(self) -> None:
        self._limit = self.max_buffered
