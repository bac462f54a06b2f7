"""The agent's housekeeping, in every state its store can be in.

Every hour the agent queues the report of each finished week (the outbox keeps
at most N reports and B bytes; the oldest are evicted, counted and given up),
then prunes the raw events dated before the retention cutoff, keeping the state
in force at the cutoff and each pruned week's figures for the user's own view.

Hypothesis writes stores' histories: events of random kinds (or of one kind
only, or none) at random times over nearly two years, some at a week's first
or last millisecond (a cutoff is a week's start), some arriving late; consent
given and withdrawn at random moments; housekeeping passes at random moments,
each with its own retention (a restart with another `--retention-days`) and
small outbox caps. Each pass runs the agent's real `queue_finished_weeks` and
`prune` and compares what they did with a model computed here from what was
stored before the pass; a second pass must change nothing. Named stores (one
kind of event only, empty, all old, at the cutoff, a store an earlier agent
left behind...) run through the same checks, and one runs on the real socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import agent_service_pb2, common_pb2, usage_event_pb2
from printernizer_stats.agent.agent import (
    MAX_EXPORT_PAGE,
    MAX_LEDGER,
    MAX_LOCAL_WEEKS,
    AgentConfig,
    StatsAgent,
)
from printernizer_stats.agent.consent import LOCAL_ONLY, SHARING, Override
from printernizer_stats.agent.report import (
    APP_STARTED,
    APP_STOPPED,
    FEATURE_DISABLED,
    FEATURE_ENABLED,
    FLEET_OBSERVED,
)
from printernizer_stats.agent.storage import (
    DAY_MS,
    STATE_KINDS,
    WEEK_EPOCH_MS,
    WEEK_MS,
    AgentStore,
    SentReportRow,
    StoredRow,
)
from printernizer_stats.common.events import KINDS_BY_NAME, from_millis, to_millis
from printernizer_stats.common.identity import signature_is_valid
from printernizer_stats.common.weeks import Week, weeks_between

from ..agent_harness import (
    FakeClock,
    app_started,
    event,
    fleet,
    job_created,
    make_config,
    running_agent,
)
from ..agent_harness import agent_dir as agent_dir  # the fixture
from ..conftest import TEMP_ROOT

UTC = dt.UTC
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
# The histories start on a Monday and span 96 weeks: every week of them stays
# inside the user's own view (the last 104 weeks), before and after pruning.
START = Week(2024, 2).start
SPAN_WEEKS = 96
SPAN_MS = SPAN_WEEKS * WEEK_MS
END = START + dt.timedelta(milliseconds=SPAN_MS)

# Event kinds by what they describe; a store may hold any mix of them, one only, or none.
FAMILIES: dict[str, tuple[str, ...]] = {
    "jobs": ("job_created", "job_completed", "job_failed"),
    "files": ("file_downloaded", "file_uploaded"),
    "printers": ("printer_connected", "printer_disconnected"),
    "errors": ("error_occurred",),
    "app runs": ("app_started", "app_stopped"),
    "fleet": ("printer_fleet_observed",),
    "features": ("feature_enabled", "feature_disabled"),
}
STATE_FAMILIES = ("app runs", "fleet", "features")
PRINTER_TYPES = [v.number for v in common_pb2.PrinterType.DESCRIPTOR.values if v.number][:4]


# --- a store's history ------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A batch arrives: the agent's clock reads `at`."""

    at: dt.datetime
    events: tuple[usage_event_pb2.UsageEvent, ...]


@dataclass(frozen=True)
class ConsentChange:
    at: dt.datetime
    state: int


@dataclass(frozen=True)
class Housekeeping:
    """An hourly pass (queue, then prune), by an agent started with this retention;
    afterwards the server accepts the `delivered` oldest queued reports."""

    at: dt.datetime
    retention_days: int
    delivered: int = 0


Step = Recorded | ConsentChange | Housekeeping


@dataclass(frozen=True)
class History:
    steps: tuple[Step, ...]
    outbox_reports: int = 60
    outbox_bytes: int = 600_000


def in_order(steps: Sequence[Step]) -> tuple[Step, ...]:
    """By time; at one moment a batch first, then a consent change, then housekeeping."""
    order = {Recorded: 0, ConsentChange: 1, Housekeeping: 2}
    return tuple(sorted(steps, key=lambda step: (step.at, order[type(step)])))


def batches(events: Sequence[tuple[dt.datetime, usage_event_pb2.UsageEvent]]) -> list[Recorded]:
    """Events that arrive at the given moments, sent in one batch per hour (at its end)."""
    by_hour: dict[dt.datetime, list[usage_event_pb2.UsageEvent]] = {}
    for arrival, message in sorted(events, key=lambda item: item[0]):
        hour = from_millis(-(-to_millis(arrival) // HOUR_MS) * HOUR_MS)  # rounded up
        by_hour.setdefault(hour, []).append(message)
    return [Recorded(hour, tuple(messages)) for hour, messages in by_hour.items()]


def one_event(kind: str, at: dt.datetime, variant: int = 0) -> usage_event_pb2.UsageEvent:
    """An event of `kind` at `at`; `variant` picks its enum values (a few only, so
    that features are switched on and off again, fleets and versions change)."""
    if kind == "app_started":
        return app_started(at, version=(2, 3, variant % 3))
    if kind == "printer_fleet_observed":
        return fleet(at, [(PRINTER_TYPES[variant % len(PRINTER_TYPES)], 1 + variant % 3)])
    spec = KINDS_BY_NAME[kind]
    fields = {
        name: sorted(allowed)[variant % min(3, len(allowed))]
        for name, allowed in zip(spec.column_names, spec.allowed, strict=True)
    }
    return event(kind, at, **fields)


def events_at(kinds: Sequence[str], occurred: int) -> st.SearchStrategy[usage_event_pb2.UsageEvent]:
    return st.builds(one_event, st.sampled_from(kinds), st.just(at(occurred)), st.integers(0, 5))


def anywhere() -> st.SearchStrategy[int]:
    """Milliseconds into a history, spread over all of it (a week picked
    evenly, then a moment in it: integers alone would crowd its start)."""
    return st.builds(
        lambda week, millis: min(week * WEEK_MS + millis, SPAN_MS - HOUR_MS),
        st.sampled_from(range(SPAN_WEEKS)),
        st.integers(0, WEEK_MS - 1),
    )


def moments() -> st.SearchStrategy[int]:
    """Anywhere, or a week's first or last millisecond (a cutoff is a week's start)."""
    week_edges = st.builds(
        lambda week, edge: week * WEEK_MS + edge,
        st.sampled_from(range(1, SPAN_WEEKS)),
        st.sampled_from([-1, 0]),
    )
    return st.one_of(anywhere(), week_edges)


def retentions(now: int, *near: Sequence[int]) -> st.SearchStrategy[int]:
    """Retention days for a pass at `now`: any, or such that the cutoff falls
    within two weeks after one of the moments of a `near` list."""
    choices = [st.integers(1, 500)]
    for moments_near in near:
        before = [moment for moment in moments_near if moment < now]
        if before:
            days = st.integers(0, 13)
            cutoffs = st.builds(lambda m, d: max(1, (now - m) // DAY_MS - d), st.sampled_from(before), days)
            choices.append(cutoffs)
    return st.one_of(choices)


def at(millis: int) -> dt.datetime:
    return START + dt.timedelta(milliseconds=millis)


@st.composite
def histories(draw: st.DrawFn) -> History:
    choices = st.tuples(anywhere(), st.sampled_from([SHARING, LOCAL_ONLY]))
    consent_changes = draw(st.lists(choices, max_size=4))
    changed_at = [moment for moment, _ in consent_changes]
    families = draw(st.sets(st.sampled_from(sorted(FAMILIES))))
    kinds = [kind for family in sorted(families) for kind in FAMILIES[family]]
    events = []  # (occurred, arrival, event)
    for _ in range(draw(st.integers(1, 40)) if kinds else 0):
        occurred = draw(moments())
        # At once, or late (a host's backlog).
        arrival = draw(st.one_of(st.just(occurred), st.integers(occurred, occurred + 40 * DAY_MS)))
        events.append((occurred, arrival, draw(events_at(kinds, occurred))))
    # Events of the days before a consent change, some arriving at once, some
    # held back until just after it: stored in another order than they
    # happened, on either side of where reports start counting. That order
    # matters to the state kinds, and most to app starts and stops (a
    # report's runs come only from those stored after opting in).
    runs = [kind for kind in kinds if kind in FAMILIES["app runs"]]
    state_kinds = runs or [kind for kind in kinds if KINDS_BY_NAME[kind].kind in STATE_KINDS] or kinds
    for moment in changed_at:
        for _ in range(draw(st.integers(0, 6)) if kinds else 0):
            occurred = moment - draw(st.integers(1, 3 * 24 * 60)) * MINUTE_MS
            arrival = draw(st.sampled_from([occurred, moment + 1]))
            if occurred >= 0:
                events.append((occurred, arrival, draw(events_at(state_kinds, occurred))))
    # Housekeeping at random moments, and at the end; each cutoff anywhere, or
    # just after a consent change or an event.
    occurrences = [occurred for occurred, _, _ in events]
    passes = [
        Housekeeping(at(moment), draw(retentions(moment, changed_at, occurrences)), draw(st.integers(0, 2)))
        for moment in [*draw(st.lists(anywhere(), max_size=1)), SPAN_MS]
    ]
    consent = [ConsentChange(at(moment), state) for moment, state in consent_changes]
    last = SPAN_MS - HOUR_MS
    recorded = batches([(at(min(arrival, last)), message) for _, arrival, message in events])
    return History(
        in_order([*recorded, *consent, *passes]),
        outbox_reports=draw(st.integers(1, 8)),
        outbox_bytes=draw(st.integers(60, 1500)),
    )


# --- running a history, and the model each pass is checked against -----------------------


@dataclass
class Pass:
    """What one housekeeping pass did."""

    queued: int
    evicted: int
    deleted: int


async def run_history(history: History, path: Path) -> list[Pass]:
    clock = FakeClock(START)
    store = await AgentStore.open(path)
    try:
        agent = agent_for(store, clock, history, 400)
        passes = []
        for step in history.steps:
            clock.now = step.at
            if isinstance(step, Recorded):
                assert (await agent.record(list(step.events), 0)).stored == len(step.events)
            elif isinstance(step, ConsentChange):
                await agent.set_consent(step.state, 1 if step.state == SHARING else 0)
            else:
                agent = agent_for(store, clock, history, step.retention_days)  # restarted with it
                queued, evicted = await check_queueing(agent)
                await deliver(agent, step.delivered)
                passes.append(Pass(queued, evicted, await check_pruning(agent)))
        return passes
    finally:
        await store.close()


def agent_for(store: AgentStore, clock: FakeClock, history: History, retention_days: int) -> StatsAgent:
    config = AgentConfig(
        "Europe/Berlin",
        retention_days,
        Override(),
        outbox_reports=history.outbox_reports,
        outbox_bytes=history.outbox_bytes,
    )
    return StatsAgent(store, config, clock=clock)


async def stored_events(store: AgentStore) -> list[StoredRow]:
    return [stored async for page in store.export_events(MAX_EXPORT_PAGE) for stored in page]


async def check_queueing(agent: StatsAgent) -> tuple[int, int]:
    """Queue the finished weeks and compare with the model: each finished week
    since opting in, neither queued, sent nor given up, is queued as the report
    it builds now; then, from the newest week back, reports stay while both
    caps hold, and every older one is evicted, counted and given up. Returns
    (queued, evicted)."""
    store, config = agent.store, agent.config
    consent = await agent.consent()
    queued_before = {row.week: row.report for row in await store.outbox()}
    given_up = await store.given_up_weeks()
    sent = {row.week for row in await store.sent_reports(MAX_LEDGER)}
    evicted_before = (await agent.status()).evicted_reports
    due: list[int] = []
    if consent.sharing and consent.since_time is not None:
        finished = weeks_between(
            Week.containing(consent.since_time), Week.containing(agent.clock()).previous()
        )
        due = [week.key for week in finished if week.key not in given_up | sent | set(queued_before)]

    assert await agent.queue_finished_weeks() == len(due)

    # The model (a week's report is built from the same store at the same
    # moment, so building it here gives the bytes the agent built).
    kept: list[tuple[int, bytes]] = []
    for week in sorted([*queued_before, *due], reverse=True):
        report = (
            queued_before[week] if week in queued_before else await agent.report_bytes(Week.from_key(week))
        )
        if (
            len(kept) == config.outbox_reports
            or sum(len(r) for _, r in kept) + len(report) > config.outbox_bytes
        ):
            break
        kept.insert(0, (week, report))
    evicted = {*queued_before, *due} - {week for week, _ in kept}
    outbox = await store.outbox()
    assert [(row.week, row.report) for row in outbox] == kept
    assert len(outbox) <= config.outbox_reports
    assert sum(len(row.report) for row in outbox) <= config.outbox_bytes
    identity = await agent.identity()
    for row in outbox:
        assert identity is not None
        assert signature_is_valid(identity.public_key, row.signature, row.report)
    status = await agent.status()
    assert (status.queued_reports, status.evicted_reports) == (len(outbox), evicted_before + len(evicted))
    assert await store.given_up_weeks() == given_up | evicted
    if evicted:
        note("the outbox evicts reports")

    assert await agent.queue_finished_weeks() == 0  # a second pass queues nothing
    assert await store.outbox() == outbox
    return len(due), len(evicted)


async def deliver(agent: StatsAgent, count: int) -> None:
    """The server accepts the oldest `count` queued reports (as a delivery would record them)."""
    accepted = (await agent.store.outbox())[:count]
    sent_at = to_millis(agent.clock())
    await agent.store.mark_sent(
        [SentReportRow(r.report_id, r.week, r.report, b"", sent_at) for r in accepted]
    )


def state_in_force(events: Sequence[StoredRow], cutoff: int, since_sequence: int | None) -> set[int]:
    """The sequence numbers of the events that say what held at `cutoff`: the
    latest app start, app stop and fleet dated before it, and each feature's
    latest setting. A report counts runs only from the starts and stops stored
    after opting in (`since_sequence`): the latest of those stay too."""
    latest: dict[tuple[int, int], StoredRow] = {}

    def consider(key: tuple[int, int], stored: StoredRow) -> None:
        held = latest.get(key)
        if held is None or (stored.row.occurred_at, stored.seq) > (held.row.occurred_at, held.seq):
            latest[key] = stored

    for stored in events:
        kind = stored.row.kind
        if stored.row.occurred_at >= cutoff:
            continue
        if kind in (APP_STARTED, APP_STOPPED, FLEET_OBSERVED):
            consider((kind, 0), stored)
        if kind in (APP_STARTED, APP_STOPPED) and since_sequence is not None and stored.seq > since_sequence:
            consider((kind, 1), stored)
        if kind in (FEATURE_ENABLED, FEATURE_DISABLED):
            consider((FEATURE_ENABLED, stored.row.f1), stored)
    return {stored.seq for stored in latest.values()}


async def check_pruning(agent: StatsAgent) -> int:
    """Prune and compare with the model: exactly the events dated before the
    cutoff are gone, except the state in force at the cutoff; every pruned week
    keeps the figures the user saw before; the user's view of every week, and
    the report of every week from the cutoff on, are unchanged; with nothing to
    delete, nothing in the store changes; a second pass changes nothing.
    Returns how many events were deleted."""
    store, now = agent.store, agent.clock()
    cutoff = Week.containing(now - dt.timedelta(days=agent.config.retention_days))
    cutoff_ms = to_millis(cutoff.start)
    consent = await agent.consent()
    before = await stored_events(store)
    keep = state_in_force(before, cutoff_ms, consent.since_sequence if consent.chosen == SHARING else None)
    expected = [stored for stored in before if stored.row.occurred_at >= cutoff_ms or stored.seq in keep]
    if keep != state_in_force(before, cutoff_ms, None):
        note("the state kept includes a start or stop stored after opting in")
    tables = store_tables(store.path)
    # What the user and the server see (computed only when there is something
    # to delete: otherwise the store must stay as it is, table by table).
    report_weeks = weeks_between(max(cutoff, Week.containing(START)), Week.containing(now))
    if expected != before:
        note("pruning deletes events")
        view_before = await agent.local_activity(MAX_LOCAL_WEEKS)
        reports_before = [await agent.report_bytes(week) for week in report_weeks]

    deleted = await agent.prune()

    after = await stored_events(store)
    assert after == expected
    assert deleted == len(before) - len(expected)
    if expected == before:
        assert store_tables(store.path) == tables
    else:
        assert await agent.local_activity(MAX_LOCAL_WEEKS) == view_before
        assert [await agent.report_bytes(week) for week in report_weeks] == reports_before
        summaries_before = tables["week_summaries"]
        summaries = await store.week_summaries()
        assert set(summaries_before) <= set(summaries.items())  # a kept summary is never rewritten
        seen = {Week.from_proto(activity.week): activity for activity in view_before}
        left = {stored.seq for stored in expected}
        for stored in before:
            if stored.seq not in left:
                week = Week.containing(from_millis(stored.row.occurred_at))
                kept = agent_service_pb2.WeeklyActivity.FromString(summaries[week.key])
                assert kept == seen[week], week
        assert store_tables(store.path)["outbox"] == tables["outbox"]
    check_bookkeeping(store.path)

    pruned = store_tables(store.path)
    assert await agent.prune() == 0  # pruned twice in a row: the second changes nothing
    assert store_tables(store.path) == pruned
    return deleted


def note(description: str) -> None:
    """Count a state reached, in Hypothesis's statistics (--hypothesis-show-statistics)."""
    if hypothesis.currently_in_test_context():
        hypothesis.event(description)


def store_tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the tables housekeeping may touch, read from outside the agent."""
    names = ("events", "event_weeks", "week_shapes", "state_events", "week_summaries", "outbox")
    connection = sqlite3.connect(path)
    try:
        return {name: sorted(connection.execute(f"SELECT * FROM {name}").fetchall()) for name in names}
    finally:
        connection.close()


def check_bookkeeping(path: Path) -> None:
    """The store's own indexes agree with its events: the per-week counts per
    shape, the state events, and the week ranges (every event but the state
    kept from before a cutoff lies in its week's range)."""
    connection = sqlite3.connect(path)
    try:
        shapes = connection.execute("SELECT week, shape, count FROM week_shapes").fetchall()
        counted = connection.execute(
            "SELECT (occurred_at - ?) / ?, shape, COUNT(*) FROM events GROUP BY 1, 2",
            (WEEK_EPOCH_MS, WEEK_MS),
        ).fetchall()
        assert sorted(shapes) == sorted(counted)
        kinds = ", ".join(str(kind) for kind in sorted(STATE_KINDS))
        state = connection.execute("SELECT seq FROM state_events ORDER BY seq").fetchall()
        assert (
            state
            == connection.execute(
                f"SELECT seq FROM events WHERE shape >> 48 IN ({kinds}) ORDER BY seq"
            ).fetchall()
        )
        uncovered = connection.execute(
            "SELECT e.seq FROM events e LEFT JOIN event_weeks w ON w.week = (e.occurred_at - ?) / ? "
            "AND e.seq BETWEEN w.first_seq AND w.last_seq "
            f"WHERE w.week IS NULL AND e.shape >> 48 NOT IN ({kinds})",
            (WEEK_EPOCH_MS, WEEK_MS),
        ).fetchall()
        assert uncovered == []
    finally:
        connection.close()


async def run(history: History) -> list[Pass]:
    base = Path(tempfile.mkdtemp(prefix="pzs-housekeeping-", dir=TEMP_ROOT))
    try:
        return await run_history(history, base / "agent.db")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the search --------------------------------------------------------------------------


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(history=histories())
async def test_housekeeping_matches_the_model_in_every_state(history: History) -> None:
    await run(history)


# --- named states ------------------------------------------------------------------------

# Retention of 30 days at END: the cutoff is the start of the week 30 days before.
RETENTION = 30
CUTOFF = Week.containing(END - dt.timedelta(days=RETENTION)).start


def every_few_days(kinds: Sequence[str], first: dt.datetime, last: dt.datetime) -> list[Recorded]:
    """Events of these kinds every 5 days and 7 hours, plus one at each week's
    first and last millisecond, each arriving as it happens."""
    moments = []
    moment = first
    while moment < last:
        moments.append(moment)
        moment += dt.timedelta(days=5, hours=7)
    for week in weeks_between(Week.containing(first).next(), Week.containing(last)):
        moments += [week.start, week.start - dt.timedelta(milliseconds=1)]
    events = [(m, one_event(kinds[i % len(kinds)], m, i)) for i, m in enumerate(sorted(moments))]
    return batches(events)


def passes(*moments: dt.datetime, retention: int = RETENTION) -> list[Housekeeping]:
    return [Housekeeping(moment, retention) for moment in moments]


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_a_store_of_one_kind_of_event_is_pruned(family: str) -> None:
    history = History(
        in_order(
            [
                *every_few_days(FAMILIES[family], START, END - dt.timedelta(days=1)),
                *passes(END - dt.timedelta(weeks=20), END, END + dt.timedelta(hours=1)),
            ]
        )
    )
    results = await run(history)
    # Each kind alone has old events to delete: plain kinds all of them, state
    # kinds all but the latest before the cutoff.
    assert results[0].deleted > 0
    assert results[1].deleted > 0
    assert results[2].deleted == 0


async def test_a_store_of_job_events_only_keeps_nothing_past_its_age(tmp_path: Path) -> None:
    """The state found from outside: with only job events, no state is in force
    at the cutoff, and every old event must go."""
    history = History(in_order([*every_few_days(FAMILIES["jobs"], START, END), *passes(END)]))
    store_path = tmp_path / "agent.db"
    (result,) = await run_history(history, store_path)
    assert result.deleted > 0
    store = await AgentStore.open(store_path)
    try:
        assert all(stored.row.occurred_at >= to_millis(CUTOFF) for stored in await stored_events(store))
    finally:
        await store.close()


async def test_an_empty_store() -> None:
    results = await run(History(in_order(passes(START, START + dt.timedelta(weeks=60), END, retention=1))))
    assert results == [Pass(0, 0, 0)] * 3


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_a_store_whose_every_event_is_older_than_retention(family: str) -> None:
    old = every_few_days(FAMILIES[family], START, CUTOFF - dt.timedelta(weeks=3))
    results = await run(History(in_order([*old, *passes(END, END + dt.timedelta(days=8))])))
    assert results[0].deleted > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_events_exactly_at_the_cutoff_stay(family: str) -> None:
    kinds = FAMILIES[family]
    edge = [
        (moment, one_event(kind, moment, i))
        for i, kind in enumerate(kinds)
        for moment in (CUTOFF - dt.timedelta(milliseconds=1), CUTOFF, CUTOFF + dt.timedelta(milliseconds=1))
    ]
    results = await run(History(in_order([*batches(edge), *passes(END)])))
    # Before the cutoff: one event per kind, gone unless it is the state in force.
    assert results[0].deleted == (len(kinds) if family not in STATE_FAMILIES else 0)


async def test_a_store_with_summaries_kept_is_pruned_week_after_week() -> None:
    """Each week the cutoff moves on by a week: earlier summaries stay as they
    were, the new week's are added, and the state kept before is replaced
    once a newer one is older than the cutoff."""
    kinds = [kind for family in FAMILIES.values() for kind in family]
    weekly = [END - dt.timedelta(weeks=n, hours=3) for n in range(6, -1, -1)]
    history = History(in_order([*every_few_days(kinds, START, END), *passes(*weekly)]))
    results = await run(history)
    assert all(result.deleted > 0 for result in results[1:])


async def test_retention_shortened_then_lengthened() -> None:
    """A restart with a longer retention moves the cutoff back over weeks
    already pruned (their summaries and kept state stay as they are)."""
    kinds = [kind for family in FAMILIES.values() for kind in family]
    history = History(
        in_order(
            [
                *every_few_days(kinds, START, END),
                Housekeeping(END - dt.timedelta(weeks=2), 7),
                Housekeeping(END - dt.timedelta(weeks=1), 300),
                Housekeeping(END, 14),
            ]
        )
    )
    results = await run(history)
    assert (results[0].deleted > 0, results[1].deleted, results[2].deleted > 0) == (True, 0, True)


async def test_the_state_stored_after_opting_in_stays_for_the_reports() -> None:
    """A report counts runs only from starts and stops stored after opting in.
    Here the latest start before the cutoff was stored before opting in, while
    an earlier start arrived just after it: both must stay, or the report of
    the week after the cutoff would lose the run that the second one began."""
    opted_in = CUTOFF - dt.timedelta(weeks=5)
    late_start = opted_in - dt.timedelta(hours=2)  # happened before opting in, arrived after
    history = History(
        in_order(
            [
                Recorded(
                    opted_in - dt.timedelta(minutes=30), (app_started(opted_in - dt.timedelta(hours=1)),)
                ),
                ConsentChange(opted_in, SHARING),
                Recorded(opted_in + dt.timedelta(minutes=1), (app_started(late_start),)),
                Recorded(CUTOFF + dt.timedelta(days=3), (job_created(CUTOFF + dt.timedelta(days=3)),)),
                *passes(END),
            ]
        )
    )
    (result,) = await run(history)
    assert result.deleted == 0  # both starts are the state in force: one for each view


# --- the outbox at, below and above its caps ---------------------------------------------------

OPTED_IN = START + dt.timedelta(days=2, hours=9)
QUEUED_AT = START + dt.timedelta(weeks=5, hours=1)  # five finished weeks since opting in


def five_weeks_of_jobs(**caps: int) -> History:
    jobs = [
        (START + dt.timedelta(weeks=n, days=3), job_created(START + dt.timedelta(weeks=n, days=3)))
        for n in range(5)
    ]
    return History(
        in_order([ConsentChange(OPTED_IN, SHARING), *batches(jobs), Housekeeping(QUEUED_AT, 400)]), **caps
    )


async def queued_sizes() -> list[int]:
    """The sizes of the five weeks' reports, oldest first (an installation's
    identifiers have fixed sizes, so any installation's are these)."""
    base = Path(tempfile.mkdtemp(prefix="pzs-housekeeping-", dir=TEMP_ROOT))
    try:
        history = five_weeks_of_jobs()
        clock = FakeClock(START)
        store = await AgentStore.open(base / "agent.db")
        try:
            agent = agent_for(store, clock, history, 400)
            for step in history.steps:
                clock.now = step.at
                if isinstance(step, Recorded):
                    await agent.record(list(step.events), 0)
                elif isinstance(step, ConsentChange):
                    await agent.set_consent(step.state, 1)
            await agent.queue_finished_weeks()
            return [len(row.report) for row in await store.outbox()]
        finally:
            await store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("reports", "extra_bytes", "evicted"),
    [
        (5, 0, 0),  # at both caps
        (6, 1, 0),  # below both
        (4, 1, 1),  # above the count cap
        (5, -1, 1),  # above the byte cap, by one byte
        (1, 0, 4),  # far above the count cap
        (5, -10_000, 5),  # no report fits at all
    ],
)
async def test_the_outbox_at_below_and_above_its_caps(reports: int, extra_bytes: int, evicted: int) -> None:
    sizes = await queued_sizes()
    assert len(sizes) == 5
    history = five_weeks_of_jobs(outbox_reports=reports, outbox_bytes=max(0, sum(sizes) + extra_bytes))
    (result,) = await run(history)
    assert (result.queued, result.evicted) == (5, evicted)


async def test_the_ledger_beyond_what_it_lists_still_counts_as_sent(tmp_path: Path) -> None:
    """After more than MAX_LEDGER reports were sent (ten years of weeks), the
    oldest sent weeks are still sent: not queued and sent again every hour."""
    now = START + dt.timedelta(weeks=MAX_LEDGER + 5, hours=1)
    clock = FakeClock(START)
    store = await AgentStore.open(tmp_path / "agent.db")
    try:
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
        await agent.set_consent(SHARING, 1)
        clock.now = now
        finished = weeks_between(Week.containing(START), Week.containing(now).previous())
        await store.mark_sent(
            [
                SentReportRow(n.to_bytes(16, "big"), week.key, b"report", b"", to_millis(week.end) + 1)
                for n, week in enumerate(finished)
            ]
        )
        assert len(finished) > MAX_LEDGER
        assert await agent.queue_finished_weeks() == 0
        assert await agent.next_report_week() == Week.containing(now)
    finally:
        await store.close()


# --- a store an earlier agent left behind --------------------------------------------------


async def test_old_events_an_earlier_agent_failed_to_prune_are_pruned(tmp_path: Path) -> None:
    """An agent before this fix, pruning a store without any state event, kept
    every raw event but wrote the weeks' summaries and forgot their sequence
    ranges. The next pruning finds those events and deletes them."""
    path = tmp_path / "agent.db"
    clock = FakeClock(END)
    store = await AgentStore.open(path)
    try:
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", RETENTION, Override()), clock=clock)
        for batch in every_few_days(FAMILIES["jobs"], START, END):
            await agent.record(list(batch.events), 0)
        view = await agent.local_activity(MAX_LOCAL_WEEKS)
        before = await stored_events(store)
    finally:
        await store.close()
    # What that agent left: every event, the summaries, no ranges for the old weeks.
    cutoff_week = (to_millis(CUTOFF) - WEEK_EPOCH_MS) // WEEK_MS
    connection = sqlite3.connect(path)
    with connection:
        connection.executemany(
            "INSERT INTO week_summaries (week, activity) VALUES (?, ?)",
            [
                (Week.from_proto(a.week).key, a.SerializeToString(deterministic=True))
                for a in view
                if Week.from_proto(a.week).start < CUTOFF
            ],
        )
        connection.execute("DELETE FROM event_weeks WHERE week < ?", (cutoff_week,))
    connection.close()

    store = await AgentStore.open(path)
    try:
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", RETENTION, Override()), clock=clock)
        old = [stored for stored in before if stored.row.occurred_at < to_millis(CUTOFF)]
        assert await agent.prune() == len(old) > 0
        assert await stored_events(store) == before[len(old) :]
        assert await agent.local_activity(MAX_LOCAL_WEEKS) == view
        check_bookkeeping(path)
        assert await agent.prune() == 0
    finally:
        await store.close()


# --- the real agent on its socket -------------------------------------------------------------


async def test_the_running_agent_prunes_job_events_at_start(agent_dir: Path) -> None:
    """Housekeeping runs when the agent starts (and every hour): the agent is
    stopped and started again, and the old job events recorded over the socket are gone."""
    config = make_config(agent_dir, retention_days=RETENTION)
    clock = FakeClock(END)
    jobs = [job_created(END - dt.timedelta(days=days)) for days in range(0, 400, 9)]
    async with running_agent(config, clock) as running:
        await running.record(*jobs)
        view = (await running.local_stats(MAX_LOCAL_WEEKS)).recent_weeks
    async with running_agent(config, clock) as running:
        kept = [job for job in jobs if job.occurred_at.ToDatetime(tzinfo=UTC) >= CUTOFF]
        for _ in range(200):  # the pass at start runs beside serving
            if (await running.status()).stored_events == len(kept):
                break
            await asyncio.sleep(0.05)
        exported = [item.event for page in await running.export() for item in page.events]
        assert exported == kept
        assert (await running.local_stats(MAX_LOCAL_WEEKS)).recent_weeks == view
