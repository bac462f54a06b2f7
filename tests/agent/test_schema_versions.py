"""Schema versions bind consent, value by value: a user who consented to
schema 1 keeps sending schema-1 reports, without the values schema 2 added,
until they agree to the new disclosure; then the same installation's reports
carry them. Checked on the agent's domain and against the server's checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from printernizer.stats.v1 import agent_service_pb2, aggregated_stats_pb2, common_pb2
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import Override
from printernizer_stats.agent.report import weekly_activity
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.aggregation.validation import check_report, normalise_unknown_values
from printernizer_stats.common import contract
from printernizer_stats.common.weeks import Week

from ..agent_harness import FakeClock, error_occurred, feature, fleet, job_completed, job_created, job_failed

SHARING = agent_service_pb2.CONSENT_STATE_SHARING
V1 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
V2 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_2
V3 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
WEEK = Week(2026, 10)
Report = aggregated_stats_pb2.AggregatedStats
UNKNOWN_DURATION = common_pb2.JOB_DURATION_BUCKET_UNKNOWN


@pytest.fixture
async def domain(tmp_path: Path) -> AsyncIterator[tuple[StatsAgent, FakeClock]]:
    clock = FakeClock(WEEK.start + dt.timedelta(days=1))
    store = await AgentStore.open(tmp_path / "agent.db")
    try:
        yield StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock), clock
    finally:
        await store.close()


async def record_printernizers_week(agent: StatsAgent, at: dt.datetime) -> None:
    """What Printernizer v2.42.0 records: unknown printer types, durations and
    failure reasons, its five settings, errors of its own classes."""
    events = [
        job_created(at, printer=common_pb2.PRINTER_TYPE_UNKNOWN),
        job_created(at, printer=common_pb2.PRINTER_TYPE_BAMBU_LAB),
        job_completed(at, common_pb2.PRINTER_TYPE_UNKNOWN, common_pb2.JOB_DURATION_BUCKET_UNKNOWN),
        job_completed(at, common_pb2.PRINTER_TYPE_BAMBU_LAB, common_pb2.JOB_DURATION_BUCKET_UNDER_4_HOURS),
        job_failed(at, common_pb2.JOB_FAILURE_REASON_UNKNOWN, duration=UNKNOWN_DURATION),
        job_failed(at, common_pb2.JOB_FAILURE_REASON_OTHER),
        error_occurred(at, common_pb2.ERROR_TYPE_NOT_FOUND, common_pb2.COMPONENT_SLICER),
        error_occurred(at, common_pb2.ERROR_TYPE_OTHER, common_pb2.COMPONENT_OTHER),
        error_occurred(at, common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API),
        feature(at, common_pb2.FEATURE_LIBRARY, True),
        feature(at, common_pb2.FEATURE_AUTO_JOB_CREATION, True),
        feature(at, common_pb2.FEATURE_GERMAN_COMPLIANCE, False),
        fleet(at, [(common_pb2.PRINTER_TYPE_UNKNOWN, 2), (common_pb2.PRINTER_TYPE_OTHER, 1)]),
    ]
    result = await agent.record(events, 0)
    assert (result.stored, list(result.refused)) == (len(events), [])


def lists(report: Report) -> dict[str, list[tuple[int, ...]]]:
    usage = report.usage
    return {
        "printers": [(p.printer_type, p.count) for p in report.printer_fleet.printers],
        "features": [(f.feature, int(f.enabled)) for f in report.features],
        "durations": [(d.duration, d.count) for d in usage.completed_job_durations],
        "failures": [(f.reason, f.count) for f in usage.job_failures],
        "errors": [(e.error_type, e.component, e.count) for e in report.errors],
        "jobs_by_printer": [(j.printer_type, j.completed, j.failed) for j in usage.jobs_by_printer_type],
    }


def accepted_as_sent(report: Report) -> None:
    """The server accepts the report and finds nothing to normalise in it:
    every value is one the report's schema version may carry."""
    installation = report.installation.installation_id
    assert check_report(report, installation, WEEK.end + dt.timedelta(days=1), Week(2025, 1)) == []
    assert normalise_unknown_values(report) == 0


async def test_schema_1_consent_sends_schema_1_values_until_the_user_agrees_to_schema_2(
    domain: tuple[StatsAgent, FakeClock],
) -> None:
    agent, clock = domain
    assert contract.CURRENT_SCHEMA_VERSION >= V2
    await agent.set_consent(SHARING, V1)
    identity = await agent.identity()
    clock.now += dt.timedelta(hours=1)
    await record_printernizers_week(agent, clock.now)
    clock.now = WEEK.end + dt.timedelta(hours=1)

    old = Report.FromString(await agent.report_bytes(WEEK))
    assert old.schema_version == V1
    assert lists(old) == {
        # UNKNOWN is a schema-2 family: counted as OTHER, merged with the OTHER printer.
        "printers": [(common_pb2.PRINTER_TYPE_OTHER, 3)],
        # The two schema-2 features are left out (Feature has no OTHER).
        "features": [(common_pb2.FEATURE_LIBRARY, 1)],
        # JobDurationBucket has no OTHER: an unknown duration is UNSPECIFIED.
        "durations": [
            (common_pb2.JOB_DURATION_BUCKET_UNSPECIFIED, 1),
            (common_pb2.JOB_DURATION_BUCKET_UNDER_4_HOURS, 1),
        ],
        "failures": [(common_pb2.JOB_FAILURE_REASON_OTHER, 2)],
        "errors": [
            (common_pb2.ERROR_TYPE_OTHER, common_pb2.COMPONENT_OTHER, 2),
            (common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API, 1),
        ],
        # A schema-3 field: not sent before the user agrees to schema 3.
        "jobs_by_printer": [],
    }
    assert (old.usage.jobs_created, old.usage.jobs_completed, old.usage.jobs_failed) == (2, 2, 2)
    accepted_as_sent(old)

    # The user agrees to the new disclosure: same installation, same counting start.
    consent = await agent.set_consent(SHARING, V2)
    assert consent.schema_version == V2
    after = await agent.identity()
    assert identity is not None
    assert after is not None
    assert (after.installation_id, after.public_key) == (identity.installation_id, identity.public_key)
    new = Report.FromString(await agent.report_bytes(WEEK))
    assert new.schema_version == V2
    assert new.installation.installation_id == old.installation.installation_id
    assert lists(new) == {
        "printers": [(common_pb2.PRINTER_TYPE_OTHER, 1), (common_pb2.PRINTER_TYPE_UNKNOWN, 2)],
        "features": [
            (common_pb2.FEATURE_LIBRARY, 1),
            (common_pb2.FEATURE_AUTO_JOB_CREATION, 1),
            (common_pb2.FEATURE_GERMAN_COMPLIANCE, 0),
        ],
        "durations": [
            (common_pb2.JOB_DURATION_BUCKET_UNDER_4_HOURS, 1),
            (common_pb2.JOB_DURATION_BUCKET_UNKNOWN, 1),
        ],
        "failures": [(common_pb2.JOB_FAILURE_REASON_OTHER, 1), (common_pb2.JOB_FAILURE_REASON_UNKNOWN, 1)],
        "errors": [
            (common_pb2.ERROR_TYPE_OTHER, common_pb2.COMPONENT_OTHER, 1),
            (common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API, 1),
            (common_pb2.ERROR_TYPE_NOT_FOUND, common_pb2.COMPONENT_SLICER, 1),
        ],
        "jobs_by_printer": [],
    }
    accepted_as_sent(new)

    # Schema 3 adds the jobs per printer family (the failed jobs ran on the harness's Prusa).
    await agent.set_consent(SHARING, V3)
    newest = Report.FromString(await agent.report_bytes(WEEK))
    assert newest.schema_version == V3
    assert lists(newest)["jobs_by_printer"] == [
        (common_pb2.PRINTER_TYPE_BAMBU_LAB, 1, 0),
        (common_pb2.PRINTER_TYPE_PRUSA, 0, 2),
        (common_pb2.PRINTER_TYPE_UNKNOWN, 1, 0),
    ]
    assert {k: v for k, v in lists(newest).items() if k != "jobs_by_printer"} == {
        k: v for k, v in lists(new).items() if k != "jobs_by_printer"
    }
    accepted_as_sent(newest)


async def test_the_preview_before_opting_in_shows_the_newest_schema(
    domain: tuple[StatsAgent, FakeClock],
) -> None:
    """Before the user chooses, the preview is what opting in now would send:
    the current schema, with every value it has."""
    agent, clock = domain
    await record_printernizers_week(agent, clock.now)
    clock.now += dt.timedelta(minutes=1)
    report = Report.FromString(await agent.report_bytes(WEEK))
    assert report.schema_version == contract.CURRENT_SCHEMA_VERSION
    assert (common_pb2.FEATURE_AUTO_JOB_CREATION, 1) in lists(report)["features"]


async def test_the_users_own_weekly_figures_keep_every_value(domain: tuple[StatsAgent, FakeClock]) -> None:
    """Schema versions limit what is sent, not what the user sees of their own data."""
    agent, clock = domain
    await agent.set_consent(SHARING, V1)
    clock.now += dt.timedelta(hours=1)
    await record_printernizers_week(agent, clock.now)
    clock.now += dt.timedelta(minutes=1)
    activity = await weekly_activity(agent.store, WEEK, clock.now)
    durations = {d.duration: d.count for d in activity.usage.completed_job_durations}
    assert durations[common_pb2.JOB_DURATION_BUCKET_UNKNOWN] == 1
    assert (common_pb2.ERROR_TYPE_NOT_FOUND, common_pb2.COMPONENT_SLICER) in {
        (e.error_type, e.component) for e in activity.errors
    }
