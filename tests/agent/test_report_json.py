"""The preview's JSON and its bytes describe the same message.

The user reads the JSON; the server receives the bytes. Over stores that
Hypothesis fills (events of every kind, over days and weeks, opting in and out
on the way), the JSON parsed back must serialize to exactly the preview's
bytes, for the week in progress, earlier weeks and queued (frozen) reports.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import aggregated_stats_pb2, usage_event_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent, report_json
from printernizer_stats.agent.consent import LOCAL_ONLY, SHARING, Override
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.weeks import Week

from ..agent_harness import FakeClock, usage_events
from ..conftest import TEMP_ROOT

START = Week(2026, 20).start + dt.timedelta(days=3, hours=9)


@dataclass(frozen=True)
class Step:
    """Time passes, the user may change their mind, the host records a batch."""

    hours_later: int
    consent: int | None  # a new choice, if any
    events: list[usage_event_pb2.UsageEvent]


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    steps = []
    now = START
    for _ in range(draw(st.integers(1, 6))):
        hours = draw(st.integers(0, 24 * 9))
        now += dt.timedelta(hours=hours)
        consent = draw(st.sampled_from([None, None, SHARING, LOCAL_ONLY]))
        events = draw(st.lists(usage_events(now - dt.timedelta(days=10), now), max_size=8))
        steps.append(Step(hours, consent, events))
    return steps


def same_message(report: bytes) -> None:
    """The preview's JSON, parsed back, is the preview's bytes."""
    from_json = json_format.Parse(report_json(report), aggregated_stats_pb2.AggregatedStats())
    assert from_json.SerializeToString(deterministic=True) == report
    assert (
        aggregated_stats_pb2.AggregatedStats.FromString(report).SerializeToString(deterministic=True)
        == report
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
async def test_the_preview_json_is_the_preview_bytes(history: list[Step]) -> None:
    base = Path(tempfile.mkdtemp(prefix="pzs-json-", dir=TEMP_ROOT))
    clock = FakeClock(START)
    store = await AgentStore.open(base / "agent.db")
    try:
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
        for step in history:
            clock.now += dt.timedelta(hours=step.hours_later)
            if step.consent is not None:
                await agent.set_consent(step.consent, 1 if step.consent == SHARING else 0)
            assert (await agent.record(step.events, 0)).stored == len(step.events)
        await agent.queue_finished_weeks()

        week, report = await agent.preview(None)  # the next report: queued, or the week in progress
        same_message(report)
        for earlier in (week, Week.containing(clock.now), Week.containing(START).previous()):
            _, report = await agent.preview(earlier)
            same_message(report)
        for queued in await store.outbox():
            same_message(queued.report)
    finally:
        await store.close()
        shutil.rmtree(base, ignore_errors=True)
