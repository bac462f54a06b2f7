"""What the agent takes to be the time (printernizer_stats.agent.trusted_time): the wall
clock while it agrees with elapsed time or a time service keeps it right; its
own count of elapsed time when the wall clock jumps; never behind a time it
has already seen; the aggregation server's time when its own is off."""

from __future__ import annotations

import datetime as dt

import pytest
from printernizer_stats.agent.trusted_time import JUMP, SERVER_DIFFERENCE, TrustedTime

from ..agent_harness import FakeClock

START = dt.datetime(2026, 3, 4, 12, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


@pytest.mark.parametrize(
    "error", [dt.timedelta(days=7), YEAR, 5 * YEAR, -dt.timedelta(days=7), -YEAR, -5 * YEAR]
)
def test_a_jump_then_a_correction_keeps_the_time(error: dt.timedelta) -> None:
    clock = FakeClock(START)
    time = TrustedTime(clock)
    assert time.now() == START
    clock.wall_error = error  # the wall clock jumps
    reading = time.read()
    assert (reading.trusted, reading.shift) == (START, -error)
    clock.now += dt.timedelta(days=3)  # time passes
    assert time.now() == START + dt.timedelta(days=3)
    assert time.read().shift == -error
    clock.wall_error = dt.timedelta()  # corrected
    reading = time.read()
    assert (reading.trusted, reading.shift) == (clock.now, dt.timedelta())
    clock.now += dt.timedelta(hours=1)
    assert time.now() == clock.now


def test_small_differences_are_not_jumps() -> None:
    clock = FakeClock(START)
    time = TrustedTime(clock)
    clock.wall_error = JUMP - dt.timedelta(seconds=1)  # a clock that is slewed, or drifts
    assert time.read().shift == dt.timedelta()
    assert time.now() == clock()


def test_a_time_service_is_always_right() -> None:
    clock = FakeClock(START)
    time = TrustedTime(clock)
    clock.time_service = True
    clock.wall_error = dt.timedelta(days=2)  # NTP stepped the clock (say, at boot)
    assert time.now() == clock()
    time.learn(START)  # and the server's time does not overrule it
    assert time.now() == clock()


def test_time_does_not_run_backwards_across_a_restart() -> None:
    clock = FakeClock(START)
    clock.wall_error = -YEAR  # the machine started with an old time
    time = TrustedTime(clock, high_water=START - dt.timedelta(hours=2))
    assert time.now() == START - dt.timedelta(hours=2)  # the newest time it had seen
    assert time.read().shift == YEAR - dt.timedelta(hours=2)
    # A wall clock ahead of everything seen is taken (the agent may have been off for long).
    later = FakeClock(START + YEAR)
    assert TrustedTime(later, high_water=START).now() == START + YEAR


def test_the_servers_time_is_taken_when_the_agents_is_off() -> None:
    clock = FakeClock(START)
    clock.wall_error = YEAR  # wrong before the agent even started
    time = TrustedTime(clock)
    assert time.now() == START + YEAR
    time.learn(START + YEAR + SERVER_DIFFERENCE - dt.timedelta(seconds=1))  # close enough: ignored
    assert time.now() == START + YEAR
    time.learn(START)
    assert time.now() == START
    assert time.read().shift == -YEAR
    clock.now += dt.timedelta(days=1)
    assert time.now() == START + dt.timedelta(days=1)
    clock.wall_error = dt.timedelta()  # the clock is set right: the two agree
    assert time.read().shift == dt.timedelta()
