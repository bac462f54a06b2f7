"""What the agent takes to be the time (docs/agent.md, "Time").

The machine's wall clock can be wrong and jump: a Raspberry Pi without a
battery-backed clock boots with an old time, an operator sets the date by
hand, a container's host drifts. The agent reads two clocks: the wall clock,
and a clock nobody sets (elapsed time, which never jumps). It trusts:

- the wall clock while the two agree, or while a time service (NTP) keeps
  the wall clock right, whatever it does (its steps are corrections);
- elapsed time, counted from the last moment they agreed, once the wall clock
  jumps (by more than a minute) without a time service: the agent keeps its
  own time until the wall clock agrees with it again (it was corrected);
- at start, the wall clock, unless it is behind the newest time the agent has
  already lived through (kept in its database): time does not run backwards;
- the aggregation server's time, told with each answer, when the agent's own
  differs from it by more than five minutes and no time service keeps the
  wall clock right.

Events from the host carry the host's wall-clock time, which is the agent's
wall clock (they share the machine): while the agent keeps its own time, the
difference is added to them, so an event lands in the week it really
happened in.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from printernizer_stats.common.clock import Clock

log = logging.getLogger(__name__)

# The wall clock and elapsed time may differ by this much before it counts as a jump.
JUMP = dt.timedelta(minutes=1)
# The aggregation server's time is taken when the agent's differs from it by more than this.
SERVER_DIFFERENCE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Reading:
    """One look at the clocks: the trusted time, and the wall clock's."""

    trusted: dt.datetime
    wall: dt.datetime

    @property
    def shift(self) -> dt.timedelta:
        """What to add to a wall-clock time (a host's event's) to make it trusted."""
        return self.trusted - self.wall


class TrustedTime:
    def __init__(self, clock: Clock, high_water: dt.datetime | None = None) -> None:
        self.clock = clock
        wall, elapsed = clock(), clock.elapsed()
        start = wall
        if high_water is not None and wall < high_water - JUMP and not clock.synchronized():
            start = high_water
            log.warning(
                "the system clock is behind a time this agent has already seen (by %s); "
                "it keeps its own time until the clock is right",
                _rounded(high_water - wall),
            )
        self._anchor_time, self._anchor_elapsed = start, elapsed
        self._keeping_own_time = start != wall

    def read(self) -> Reading:
        wall, elapsed = self.clock(), self.clock.elapsed()
        steady = self._anchor_time + dt.timedelta(seconds=elapsed - self._anchor_elapsed)
        if abs(wall - steady) <= JUMP or self.clock.synchronized():
            if self._keeping_own_time:
                log.warning("the system clock is right again; the agent follows it")
                self._keeping_own_time = False
            self._anchor_time, self._anchor_elapsed = wall, elapsed
            return Reading(wall, wall)
        if not self._keeping_own_time:
            log.warning(
                "the system clock jumped by %s; the agent keeps its own time until the clock is right",
                _rounded(wall - steady),
            )
            self._keeping_own_time = True
        return Reading(steady, wall)

    def now(self) -> dt.datetime:
        """The time the agent trusts, now."""
        return self.read().trusted

    def learn(self, server_time: dt.datetime) -> None:
        """The aggregation server's time, from an answer it just gave."""
        if self.clock.synchronized():
            return  # a time service keeps the wall clock right: it wins
        reading = self.read()
        if abs(server_time - reading.trusted) <= SERVER_DIFFERENCE:
            return
        log.warning(
            "this agent's time differs from the aggregation server's by %s; it takes the server's",
            _rounded(server_time - reading.trusted),
        )
        self._anchor_time, self._anchor_elapsed = server_time, self.clock.elapsed()
        self._keeping_own_time = abs(reading.wall - server_time) > JUMP


def _rounded(difference: dt.timedelta) -> str:
    """A difference for a log line, to the second, with its sign."""
    seconds = round(difference.total_seconds())
    return ("-" if seconds < 0 else "+") + str(dt.timedelta(seconds=abs(seconds)))
