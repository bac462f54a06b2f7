"""Anomaly rules: unit cases for each threshold, then fleets stored through the
real ingest path (SQLite and PostgreSQL) with a planted drop and an error
surge, and a steady fleet that raises nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from printernizer.stats.v1 import aggregated_stats_pb2, analytics_service_pb2
from printernizer_stats.aggregation.ingest import Ingest
from printernizer_stats.analytics import anomalies
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common.weeks import Week, weeks_ending
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups

from .. import databases
from ..agent_harness import FakeClock
from ..aggregation.conftest import NOW, Installation, report_of

database_url = databases.database_url
Kind, Severity = anomalies.Kind, anomalies.Severity
W = 202646
STEADY = [20] * 8


def kinds(alerts: list[anomalies.Alert]) -> list[tuple[int, int]]:
    return [(a.kind, a.severity) for a in alerts]


def test_active_installation_rules() -> None:
    assert anomalies.active_alerts(W, 20, STEADY, 5) == []
    assert anomalies.active_alerts(W, 18, STEADY, 5) == []  # 90 %: ordinary
    assert kinds(anomalies.active_alerts(W, 13, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_ACTIVE_DROP, Severity.SEVERITY_WARNING)
    ]
    assert kinds(anomalies.active_alerts(W, 8, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_ACTIVE_DROP, Severity.SEVERITY_CRITICAL)
    ]
    assert kinds(anomalies.active_alerts(W, 0, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_ACTIVE_DROP, Severity.SEVERITY_CRITICAL)
    ]
    assert kinds(anomalies.active_alerts(W, 35, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_ACTIVE_SPIKE, Severity.SEVERITY_INFO)
    ]
    assert kinds(anomalies.active_alerts(W, 45, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_ACTIVE_SPIKE, Severity.SEVERITY_WARNING)
    ]
    (drop,) = anomalies.active_alerts(W, 8, STEADY, 5)
    assert (drop.observed, drop.baseline, drop.threshold) == (8, 20, 14)
    assert "70%" in drop.description


def test_rules_stay_quiet_without_history_or_size() -> None:
    assert anomalies.active_alerts(W, 0, [0, 0, 0, 20, 20, 20], 5) == []  # three weeks of data: no baseline
    assert anomalies.active_alerts(W, 1, [3] * 8, 5) == []  # a fleet smaller than k
    assert anomalies.error_alerts(W, 9, 1, [0.1] * 8) == []  # fewer than 10 errors
    assert anomalies.error_alerts(W, 500, 20, [0.0] * 8) == []  # a zero baseline
    assert anomalies.volume_alerts(W, 100, [0] * 8, 5) == []


def test_error_and_volume_rules() -> None:
    history = [2.0] * 8
    assert anomalies.error_alerts(W, 80, 20, history) == []  # 4 per installation: twice, not above
    assert kinds(anomalies.error_alerts(W, 100, 20, history)) == [
        (Kind.ANOMALY_KIND_ERROR_SPIKE, Severity.SEVERITY_WARNING)
    ]
    assert kinds(anomalies.error_alerts(W, 200, 20, history)) == [
        (Kind.ANOMALY_KIND_ERROR_SPIKE, Severity.SEVERITY_CRITICAL)
    ]
    assert kinds(anomalies.volume_alerts(W, 5, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_SUBMISSION_VOLUME, Severity.SEVERITY_WARNING)
    ]
    assert kinds(anomalies.volume_alerts(W, 50, STEADY, 5)) == [
        (Kind.ANOMALY_KIND_SUBMISSION_VOLUME, Severity.SEVERITY_INFO)
    ]
    assert anomalies.volume_alerts(W, 30, STEADY, 5) == []


# --- fleets through the real ingest path ------------------------------------------------------

WEEKS = weeks_ending(Week(2026, 46), 12)  # NOW is in W47
LAST = WEEKS[-1]


async def fleet_alerts(
    database_url: str, active_in: Callable[[int, Week], bool], errors_of: Callable[[int, Week], int]
) -> list[analytics_service_pb2.Anomaly]:
    """20 installations (the last 6 on app 2.8.0, the rest on 2.7.0) over 12
    weeks; the anomalies of the last 4 weeks."""
    databases.upgrade(database_url)
    store = IngestStore.open(database_url)
    try:
        ingest = Ingest(store, FakeClock(NOW))
        for number in range(20):
            agent = Installation(uuid.uuid4().bytes)
            reports: list[aggregated_stats_pb2.AggregatedStats] = []
            for week in WEEKS:
                if not active_in(number, week):
                    continue
                report = report_of(agent, week)
                report.installation.app_version.minor = 8 if number >= 14 else 7
                report.errors[0].count = errors_of(number, week)
                reports.append(report)
            await ingest.submit(agent.submission(*reports))
        await Rollups(store.engine, FakeClock(NOW)).refresh()
        analytics = Analytics(AnalyticsStore(store.engine), 5, FakeClock(NOW))
        request = analytics_service_pb2.ListAnomaliesRequest(window=analytics_service_pb2.WeekWindow(weeks=4))
        return list((await analytics.anomalies(request)).anomalies)
    finally:
        await store.close()


async def test_a_steady_fleet_raises_nothing(database_url: str) -> None:
    assert await fleet_alerts(database_url, lambda n, w: True, lambda n, w: 4) == []


async def test_a_planted_drop_raises_exactly_one_alert(database_url: str) -> None:
    alerts = await fleet_alerts(database_url, lambda n, w: w != LAST or n < 8, lambda n, w: 4)
    # The rules see the published figures: 8 active installations are published
    # as 10, half the baseline of 20 (a warning below 70 %, critical below 50 %).
    assert [(a.kind, a.severity, Week.from_proto(a.week), a.observed, a.baseline) for a in alerts] == [
        (Kind.ANOMALY_KIND_ACTIVE_DROP, Severity.SEVERITY_WARNING, LAST, 10.0, 20.0)
    ]


async def test_an_error_surge_in_one_version_is_named(database_url: str) -> None:
    alerts = await fleet_alerts(
        database_url, lambda n, w: True, lambda n, w: 40 if (w == LAST and n >= 14) else 4
    )
    # From the published (rounded to 5) figures. The fleet: 14 x 4 + 6 x 40 = 296 errors (295) over 20
    # installations, 14.75 per installation against 4 (critical above 16: a warning). Version 2.8.0:
    # 240 errors over 6 installations (published as 5) = 48 against 25 / 5 = 5 before (critical).
    assert [
        (a.kind, a.severity, Week.from_proto(a.week), [v.label for v in a.scope], round(a.observed, 2))
        for a in alerts
        if a.kind != Kind.ANOMALY_KIND_RELEASE_REGRESSION
    ] == [
        (Kind.ANOMALY_KIND_VERSION_ERROR_SPIKE, Severity.SEVERITY_CRITICAL, LAST, ["2.8.0"], 48.0),
        (Kind.ANOMALY_KIND_ERROR_SPIKE, Severity.SEVERITY_WARNING, LAST, [], 14.75),
    ]
    # The version is also worse than the release before it (tests/analytics/test_release_health.py).
    regressions = [a for a in alerts if a.kind == Kind.ANOMALY_KIND_RELEASE_REGRESSION]
    assert [(Week.from_proto(a.week), [v.label for v in a.scope]) for a in regressions] == [(LAST, ["2.8.0"])]
    assert all(a.description and str(round(a.threshold, 2)) for a in alerts)
