"""Consent levels (common.consent_levels): a report holds exactly the parts of
the level the user chose and says its level, through the real agent on its
socket to the real aggregation server; the preview shows what a level would
send; a level the contract does not define, or one below everything with a
disclosure that has no levels, is refused; a lowered level narrows the reports
still queued (never widens them when raised); the identity stays across level
changes; an agent database from before levels shares everything. A Hypothesis
property holds the agent's reports and previews to their level over any mix of
events and choices."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    analytics_service_pb2,
    common_pb2,
    ingest_service_pb2,
    usage_event_pb2,
)
from printernizer_stats.agent import consent as consent_mod
from printernizer_stats.agent.agent import AgentConfig, StatsAgent, report_json
from printernizer_stats.agent.consent import LOCAL_ONLY, SHARING, Override
from printernizer_stats.agent.delivery import Uplink, deliver
from printernizer_stats.agent.storage import AgentStore, OutboxRow
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common import consent_levels
from printernizer_stats.common.identity import report_id, signature_is_valid
from printernizer_stats.common.weeks import Week
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import create_server_engine

from ..agent_harness import (
    RPC_TIMEOUT,
    FakeClock,
    RunningAgent,
    agent,
    agent_dir,
    app_started,
    error_occurred,
    feature,
    fleet,
    job_completed,
    job_created,
    job_failed,
    make_config,
    running_agent,
    usage_events,
)
from ..aggregation.conftest import RunningServer, database_url, server  # noqa: F401 - fixtures
from ..analytics.conftest import refresh_rollups
from ..conftest import TEMP_ROOT
from .conftest import bad_request, rpc_error

__all__ = ["agent", "agent_dir"]  # fixtures used here

Report = aggregated_stats_pb2.AggregatedStats
BASICS = aggregated_stats_pb2.CONSENT_LEVEL_BASICS
PRINTERS_AND_FEATURES = aggregated_stats_pb2.CONSENT_LEVEL_PRINTERS_AND_FEATURES
USAGE = aggregated_stats_pb2.CONSENT_LEVEL_USAGE
ERRORS = aggregated_stats_pb2.CONSENT_LEVEL_ERRORS
V1 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
V2 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_2
V3 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
DISABLED = agent_service_pb2.CONSENT_STATE_DISABLED
# The parts of a report each level shares, written out by hand (the contract's comments say the same).
PARTS_AT = {
    BASICS: set(),
    PRINTERS_AND_FEATURES: {"printer_fleet", "features"},
    USAGE: {"printer_fleet", "features", "usage"},
    ERRORS: {"printer_fleet", "features", "usage", "errors"},
}
PARTS = PARTS_AT[ERRORS]
JSON_NAMES = {"printer_fleet": "printerFleet", "features": "features", "usage": "usage", "errors": "errors"}
W = Week(2026, 40)


def parts(report: Report) -> set[str]:
    """The parts of the report it holds (a repeated part with no entry is not held)."""
    return {descriptor.name for descriptor, _ in report.ListFields()} & PARTS


def every_part(at: dt.datetime) -> list[usage_event_pb2.UsageEvent]:
    """A week in which every part of a report has something to say."""
    return [
        app_started(at),
        fleet(at, [(common_pb2.PRINTER_TYPE_BAMBU_LAB, 2)]),
        feature(at, common_pb2.FEATURE_LIBRARY, True),
        job_created(at),
        job_completed(at),
        job_failed(at),
        error_occurred(at, common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API),
    ]


def assert_at_level(report_bytes: bytes, level: int) -> Report:
    """The report holds exactly the parts of `level` and says it; its JSON shows no other part."""
    report = Report.FromString(report_bytes)
    assert (parts(report), report.consent_level) == (PARTS_AT[level], level)
    assert report.schema_version >= V3
    shown = json.loads(report_json(report_bytes))
    assert {name for name, key in JSON_NAMES.items() if key in shown} == PARTS_AT[level]
    assert shown["consentLevel"] == aggregated_stats_pb2.ConsentLevel.Name(level)
    parsed = json_format.Parse(report_json(report_bytes), Report())
    assert parsed.SerializeToString(deterministic=True) == report_bytes  # the JSON is the bytes
    return report


async def set_consent(
    running: RunningAgent, state: int, schema_version: int = 0, level: int = 0
) -> agent_service_pb2.Consent:
    request = agent_service_pb2.SetConsentRequest(
        state=state,  # type: ignore[arg-type]
        schema_version=schema_version,  # type: ignore[arg-type]
        level=level,  # type: ignore[arg-type]
    )
    return (await running.stub.SetConsent(request, timeout=RPC_TIMEOUT)).consent


async def preview(
    running: RunningAgent, level: int = 0, week: Week | None = None
) -> agent_service_pb2.PreviewReportResponse:
    request = agent_service_pb2.PreviewReportRequest(level=level)  # type: ignore[arg-type]
    if week is not None:
        request.week.CopyFrom(week.to_proto())
    return await running.stub.PreviewReport(request, timeout=RPC_TIMEOUT)


async def identity_of(running: RunningAgent) -> tuple[bytes, bytes]:
    settings = (await running.export())[0].settings
    return settings.installation_id, settings.public_key


# --- each level, through the real agent to the real server --------------------------------------


async def test_each_level_sends_exactly_its_parts_to_the_server(
    server: RunningServer,  # noqa: F811
    agent_dir: Path,
) -> None:
    ca = agent_dir / "ca.crt"
    ca.write_bytes(server.ca)
    for level in consent_levels.LEVELS:
        base = agent_dir / f"level{level}"
        config = dataclasses.replace(
            make_config(base), server_address=f"localhost:{server.port}", ca_file=str(ca)
        )
        clock = FakeClock(W.start + dt.timedelta(days=1))
        clock.time_service = (
            True  # a past week, on a clock kept right: the server's time does not overrule it
        )
        async with running_agent(config, clock) as running:
            consent = await set_consent(running, SHARING, V3, level)
            assert (consent.level, consent.consented_schema_version) == (level, V3)
            clock.now += dt.timedelta(hours=1)
            assert (await running.record(*every_part(clock.now))).stored_count == 7
            clock.now = W.end + dt.timedelta(hours=3)

            shown = await preview(running, week=W)
            assert_at_level(shown.report, level)
            assert json.loads(shown.report_json) == json.loads(report_json(shown.report))
            sent = await running.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
            assert [r.status for r in sent.receipts] == [ingest_service_pb2.RECEIPT_STATUS_ACCEPTED], level
            ledger = await running.stub.ListSentReports(
                agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT
            )
            (report,) = ledger.reports
            assert report.report == shown.report  # what was sent is what the preview showed
            assert_at_level(report.report, level)
            assert (await running.consent()).level == level

    # On to the analytics: each part counted over the agents that shared it (k = 1: no rounding).
    await refresh_rollups(server.database_url)
    engine = create_server_engine(server.database_url)
    try:
        analytics = Analytics(AnalyticsStore(engine), 1, FakeClock(W.end + dt.timedelta(hours=3)))
        week = analytics_service_pb2.WeekWindow(weeks=1, until=W.to_proto())
        features = await analytics.feature_adoption(analytics_service_pb2.GetFeatureAdoptionRequest())
        assert (features.total_installations, features.sharing_installations) == (4, 3)
        assert [(f.enabled_installations, f.enabled_share) for f in features.features] == [(3, 1.0)]
        (usage,) = (await analytics.usage(analytics_service_pb2.GetUsageRequest(window=week))).weeks
        assert (usage.active, usage.sharing_usage, usage.jobs_completed, usage.jobs_per_installation) == (
            4, 2, 2, 2.0,
        )  # fmt: skip
        (rates,) = (
            await analytics.error_rates(analytics_service_pb2.GetErrorRatesRequest(window=week))
        ).series
        assert (rates.points[0].installations, rates.points[0].count, rates.points[0].rate) == (4, 1, 1.0)
    finally:
        await engine.dispose()


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "schema_version", "level"),
    [
        (SHARING, V3, 5),  # not a ConsentLevel
        (SHARING, V3, 99),
        (SHARING, V3, -1),
        (LOCAL_ONLY, 0, BASICS),  # a level goes with SHARING only
        (DISABLED, 0, ERRORS),
        (SHARING, V1, BASICS),  # below everything, with a disclosure that has no levels
        (SHARING, V2, USAGE),
        (SHARING, V2, PRINTERS_AND_FEATURES),
    ],
)
async def test_a_level_the_agent_cannot_honour_is_refused_naming_level(
    agent: RunningAgent, state: int, schema_version: int, level: int
) -> None:
    await set_consent(agent, SHARING, V3, USAGE)
    before = await agent.consent()
    request = agent_service_pb2.SetConsentRequest(
        state=state,  # type: ignore[arg-type]
        schema_version=schema_version,  # type: ignore[arg-type]
        level=level,  # type: ignore[arg-type]
    )
    assert await bad_request(agent.stub.SetConsent(request, timeout=RPC_TIMEOUT)) == ["level"]
    assert await agent.consent() == before  # nothing changed


async def test_an_old_disclosure_explains_why_it_cannot_share_less(agent: RunningAgent) -> None:
    request = agent_service_pb2.SetConsentRequest(state=SHARING, schema_version=V2, level=BASICS)
    refused = await rpc_error(agent.stub.SetConsent(request, timeout=RPC_TIMEOUT))
    assert refused.details() == (
        "level: the disclosure of schema version 2 has no levels: sharing less than everything needs"
        " version 3 or later"
    )
    # Everything is still allowed with it: that is what such a report holds.
    consent = await set_consent(agent, SHARING, V2, ERRORS)
    assert (consent.level, consent.consented_schema_version) == (ERRORS, V2)


async def test_a_preview_at_an_undefined_level_is_refused(agent: RunningAgent) -> None:
    request = agent_service_pb2.PreviewReportRequest(level=9)  # type: ignore[arg-type]
    assert await bad_request(agent.stub.PreviewReport(request, timeout=RPC_TIMEOUT)) == ["level"]


# --- the consent, the identity and the preview over the socket ---------------------------------


async def test_a_new_level_keeps_the_identity_and_opting_out_replaces_it(agent: RunningAgent) -> None:
    unset = await set_consent(agent, SHARING, V3)  # no level: everything, as before levels
    assert unset.level == ERRORS
    first = await identity_of(agent)
    lowered = await set_consent(agent, SHARING, V3, BASICS)
    assert (lowered.level, lowered.consented_schema_version) == (BASICS, V3)
    assert lowered.changed_at.ToDatetime() >= unset.changed_at.ToDatetime()
    assert await identity_of(agent) == first
    raised = await set_consent(agent, SHARING, V3, USAGE)
    assert raised.level == USAGE
    assert await identity_of(agent) == first
    assert (await agent.status()).consent.level == USAGE

    left = await agent.opt_out()
    assert (left.level, left.consented_schema_version) == (0, 0)
    assert await identity_of(agent) == (b"", b"")
    again = await set_consent(agent, SHARING, V3, BASICS)
    assert again.level == BASICS
    assert (await identity_of(agent))[0] not in (b"", first[0])


async def test_the_preview_shows_what_a_level_would_send(agent: RunningAgent) -> None:
    # Not sharing: what opting in now would send (no counts yet), at everything or at the level asked for.
    for level, shown in [(ERRORS, await preview(agent))] + [
        (level, await preview(agent, level)) for level in consent_levels.LEVELS
    ]:
        report = Report.FromString(shown.report)
        assert report.consent_level == level
        assert parts(report) <= PARTS_AT[level]
        assert ("usage" in parts(report)) == (level >= USAGE)

    await set_consent(agent, SHARING, V3, PRINTERS_AND_FEATURES)
    await agent.record(*every_part(dt.datetime.now(dt.UTC)))
    assert_at_level((await preview(agent)).report, PRINTERS_AND_FEATURES)  # the level in effect
    for level in consent_levels.LEVELS:
        shown = await preview(agent, level)
        assert_at_level(shown.report, level)
        assert json.loads(shown.report_json) == json.loads(report_json(shown.report))
    assert (await agent.consent()).level == PRINTERS_AND_FEATURES  # a preview changes nothing


# --- the agent's domain: queued reports, old databases ------------------------------------------


@pytest.fixture
async def domain(tmp_path: Path) -> AsyncIterator[tuple[StatsAgent, FakeClock]]:
    clock = FakeClock(W.start + dt.timedelta(days=1))
    clock.time_service = True
    store = await AgentStore.open(tmp_path / "agent.db")
    try:
        yield StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock), clock
    finally:
        await store.close()


async def a_week_of_everything(agent: StatsAgent, clock: FakeClock) -> Week:
    """Record a week in which every part has something, and let it end."""
    week = Week.containing(clock.now)
    clock.now += dt.timedelta(hours=1)
    assert (await agent.record(every_part(clock.now), 0)).stored == 7
    clock.now = week.end + dt.timedelta(hours=2)
    return week


async def test_lowering_the_level_narrows_queued_reports_and_raising_widens_none(
    domain: tuple[StatsAgent, FakeClock],
    server: RunningServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    agent, clock = domain
    await agent.set_consent(SHARING, V2)  # an opt-in from before levels: everything, at schema 2
    first = await a_week_of_everything(agent, clock)
    second = await a_week_of_everything(agent, clock)
    assert await agent.queue_finished_weeks() == 2
    identity = await agent.identity()
    assert identity is not None
    wide = {row.week: row.report for row in await agent.store.outbox()}
    assert {row.week: parts(Report.FromString(row.report)) for row in await agent.store.outbox()} == {
        first.key: PARTS,
        second.key: PARTS,
    }

    await agent.set_consent(SHARING, V3, USAGE)
    kept = await agent.identity()
    assert kept is not None
    assert (kept.installation_id, kept.public_key) == (identity.installation_id, identity.public_key)
    queued = await agent.store.outbox()
    for row in queued:
        report = assert_at_level(row.report, USAGE)
        # The same week and report, less the errors: its ID kept, signed again.
        assert report.report_id == report_id(identity.installation_id, Week.from_key(row.week))
        assert row.report_id == report.report_id
        assert signature_is_valid(identity.public_key, row.signature, row.report)
        was = Report.FromString(wide[row.week])
        was.ClearField("errors")
        assert (report.usage, report.installation) == (was.usage, was.installation)
    week, shown = await agent.preview(None)
    assert (week, shown) == (first, queued[0].report)  # the preview is what will be sent

    await agent.set_consent(SHARING, V3, ERRORS)  # raised: weeks built before stay as they were
    assert [row.report for row in await agent.store.outbox()] == [row.report for row in queued]
    assert (await agent.preview(first, ERRORS))[1] == queued[0].report
    third = await a_week_of_everything(agent, clock)
    assert await agent.queue_finished_weeks() == 1
    assert_at_level((await agent.store.outbox())[-1].report, ERRORS)

    # A report built at a higher level but queued after the level was lowered (a build that was under
    # way) is narrowed before it is sent.
    await agent.set_consent(SHARING, V3, PRINTERS_AND_FEATURES)
    late = Week(2026, 30)
    late_report = Report.FromString(wide[first.key])
    late_report.period.CopyFrom(late.to_proto())
    late_report.report_id = report_id(identity.installation_id, late)
    late_bytes = late_report.SerializeToString(deterministic=True)
    await agent.store.queue_report(
        OutboxRow(late.key, late_report.report_id, late_bytes, identity.sign(late_bytes), 0), 60, 600_000
    )

    ca = tmp_path / "ca.crt"
    ca.write_bytes(server.ca)
    uplink = Uplink(f"localhost:{server.port}", str(ca))
    try:
        delivery = await deliver(agent, uplink)
    finally:
        await uplink.close()
    assert delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED
    assert len(delivery.receipts) == 4
    sent = {Week.from_proto(row.week): row.report for row in await agent.ledger(0)}
    assert set(sent) == {late, first, second, third}
    for report in sent.values():
        assert_at_level(report, PRINTERS_AND_FEATURES)


async def test_a_database_from_before_levels_shares_everything(
    domain: tuple[StatsAgent, FakeClock],
) -> None:
    agent, clock = domain
    await agent.set_consent(SHARING, V2)
    await agent.store.put_settings({consent_mod.LEVEL: None})  # as an agent before levels left it
    reopened = StatsAgent(agent.store, agent.config, clock=clock)
    consent = await reopened.consent()
    assert (consent.level, consent.to_proto().level) == (ERRORS, ERRORS)
    week = await a_week_of_everything(reopened, clock)
    report = Report.FromString(await reopened.report_bytes(week))
    # Schema 2 has no level to say: every part, and no consent_level field.
    assert (report.schema_version, parts(report), report.HasField("period")) == (V2, PARTS, True)
    assert report.consent_level == 0
    assert "consentLevel" not in json.loads(report_json(report.SerializeToString(deterministic=True)))
    await reopened.set_consent(SHARING, V3)  # the newer disclosure: now the report says its level
    assert_at_level(await reopened.report_bytes(week), ERRORS)


async def test_not_sharing_records_no_level(domain: tuple[StatsAgent, FakeClock]) -> None:
    agent, _ = domain
    assert (await agent.consent()).level == 0
    await agent.set_consent(SHARING, V3, BASICS)
    await agent.set_consent(LOCAL_ONLY, 0)
    assert (await agent.consent()).to_proto().level == 0
    assert (await agent.store.settings())[consent_mod.LEVEL] == b"0"


# --- no part above the level, whatever happens (Hypothesis) ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    hours_later: int
    choice: int | None  # a level to share at (0: everything, unset), LOCAL_ONLY as -1, or no change
    events: list[usage_event_pb2.UsageEvent]


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    steps = []
    now = W.start + dt.timedelta(days=1)
    for _ in range(draw(st.integers(1, 6))):
        hours = draw(st.integers(0, 24 * 9))
        now += dt.timedelta(hours=hours)
        choice = draw(st.sampled_from([None, None, -1, 0, *consent_levels.LEVELS]))
        events = draw(st.lists(usage_events(now - dt.timedelta(days=10), now), max_size=8))
        steps.append(Step(hours, choice, events))
    return steps


def within(report_bytes: bytes, level: int) -> None:
    """No part above `level` (a report may say a lower level: one built before the level was raised)."""
    report = Report.FromString(report_bytes)
    said = consent_levels.level_of(report)
    assert said <= level
    assert parts(report) <= PARTS_AT[said]
    shown = json.loads(report_json(report_bytes))
    assert {name for name, key in JSON_NAMES.items() if key in shown} <= PARTS_AT[said]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), asked=st.sampled_from(consent_levels.LEVELS))
async def test_no_report_or_preview_holds_a_part_above_its_level(history: list[Step], asked: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="pzs-levels-", dir=TEMP_ROOT))
    clock = FakeClock(W.start + dt.timedelta(days=1))
    store = await AgentStore.open(base / "agent.db")
    try:
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
        for step in history:
            clock.now += dt.timedelta(hours=step.hours_later)
            if step.choice == -1:
                await agent.set_consent(LOCAL_ONLY, 0)
            elif step.choice is not None:
                await agent.set_consent(SHARING, V3, step.choice)
            assert (await agent.record(step.events, 0)).stored == len(step.events)
            await agent.queue_finished_weeks()
            in_effect = await agent.level_in_effect()
            for row in await agent.queued_reports():  # what a delivery would send now
                within(row.report, in_effect)
            week, report = await agent.preview(None)
            within(report, in_effect)
            _, at_asked = await agent.preview(week, asked)
            within(at_asked, asked)
            current = Report.FromString(await agent.report_bytes(Week.containing(clock.now)))
            assert (current.consent_level, parts(current) <= PARTS_AT[in_effect]) == (in_effect, True)
    finally:
        await store.close()
        shutil.rmtree(base, ignore_errors=True)
