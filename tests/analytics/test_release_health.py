"""Release health, usage, error rates by deployment mode and feature adoption by
version, against figures worked out by hand for a fleet built for them: an old
release, a steady new one, and a patch with a planted regression (far more
crashes, failed jobs and errors than the release before it). Stored through
the real ingest path into a real database, on both engines. And the overview
on the same fleet: its answers are the separate calls' answers."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from printernizer.stats.v1 import aggregated_stats_pb2, analytics_service_pb2, common_pb2
from printernizer_stats.aggregation.ingest import Ingest
from printernizer_stats.analytics import release_health
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common.refusals import FieldError
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups

from .. import databases
from ..agent_harness import FakeClock
from ..aggregation.conftest import NOW, Installation, report_of
from .conftest import W45, W46

api = analytics_service_pb2
P = common_pb2
K = 5
database_url = databases.database_url

DOCKER, HA, STANDALONE = (
    P.DEPLOYMENT_MODE_DOCKER,
    P.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON,
    P.DEPLOYMENT_MODE_STANDALONE,
)
CANCELLED, LOST = P.JOB_FAILURE_REASON_CANCELLED, P.JOB_FAILURE_REASON_CONNECTION_LOST
UNDER_1_HOUR, UNDER_4_HOURS = P.JOB_DURATION_BUCKET_UNDER_1_HOUR, P.JOB_DURATION_BUCKET_UNDER_4_HOURS
BAMBU_LAB, KLIPPER, OCTOPRINT = P.PRINTER_TYPE_BAMBU_LAB, P.PRINTER_TYPE_KLIPPER, P.PRINTER_TYPE_OCTOPRINT


@dataclass(frozen=True)
class Profile:
    """One installation's week, the same in W45 and W46."""

    version: tuple[int, int, int]
    mode: int
    completed: int
    failures: dict[int, int]
    duration: int
    errors: int
    crashed: bool
    timelapse: bool | None = None
    active: bool = True  # printing, connecting, uploading
    family: int = P.PRINTER_TYPE_PRUSA  # the printer family its jobs ran on
    failed_on: int | None = None  # where its failed jobs ran, if not there


def fleet() -> list[Profile]:
    """95 installations: per version, which ones crash each week and how they print.
    Their jobs by printer family: the old release's on Prusa, the steady one's on
    Bambu Lab (25) and Klipper (5); the regressed patch's completed jobs on Bambu
    Lab and its failed ones too, but for 3 installations whose failed jobs ran on
    OctoPrint (a group too small to publish)."""
    old = [Profile((2, 7, 3), DOCKER, 9, {CANCELLED: 1}, UNDER_1_HOUR, 1, n < 5, n < 3) for n in range(30)]
    steady = [
        Profile(
            (2, 8, 0),
            HA if n < 15 else DOCKER,
            9,
            {CANCELLED: 1},
            UNDER_4_HOURS,
            1,
            n < 5,
            n < 20,
            family=BAMBU_LAB if n < 25 else KLIPPER,
        )
        for n in range(30)
    ]
    regressed = [
        Profile(
            (2, 8, 1),
            HA,
            6,
            {CANCELLED: 1, LOST: 3},
            UNDER_4_HOURS,
            3,
            n < 15,
            True,
            family=BAMBU_LAB,
            failed_on=OCTOPRINT if n < 3 else None,
        )
        for n in range(30)
    ]
    ancient = [Profile((2, 6, 0), STANDALONE, 0, {}, UNDER_1_HOUR, 0, False, active=False)] * 5
    return old + steady + regressed + ancient


def report(
    installation: Installation, profile: Profile, week: object
) -> aggregated_stats_pb2.AggregatedStats:
    r = report_of(installation, week)
    # The current schema (every part shared), which counts jobs per printer family.
    r.schema_version = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
    r.consent_level = aggregated_stats_pb2.CONSENT_LEVEL_ERRORS
    info = r.installation
    info.app_version.major, info.app_version.minor, info.app_version.patch = profile.version
    info.deployment_mode = profile.mode  # type: ignore[assignment]
    del r.features[:], r.errors[:], r.usage.job_failures[:], r.usage.completed_job_durations[:]
    usage = r.usage
    failed = sum(profile.failures.values())
    usage.jobs_created, usage.jobs_completed, usage.jobs_failed = (
        profile.completed + failed,
        profile.completed,
        failed,
    )
    for reason, count in profile.failures.items():
        usage.job_failures.add(reason=reason, count=count)
    if profile.completed:
        usage.completed_job_durations.add(duration=profile.duration, count=profile.completed)
    failed_on = profile.family if profile.failed_on is None else profile.failed_on
    jobs = {profile.family: [profile.completed, 0]}
    jobs.setdefault(failed_on, [0, 0])[1] += failed
    for family, (completed, failures) in sorted(jobs.items()):
        if completed or failures:
            usage.jobs_by_printer_type.add(printer_type=family, completed=completed, failed=failures)  # type: ignore[arg-type]
    usage.app_starts = 2
    usage.unclean_shutdowns = 1 if profile.crashed else 0
    usage.uptime_hours = 100 if profile.active else 10
    usage.files_uploaded, usage.files_downloaded = (2, 1) if profile.active else (0, 0)
    usage.printer_connections, usage.printer_disconnections = (4, 1) if profile.active else (0, 0)
    if profile.errors:
        r.errors.add(error_type=P.ERROR_TYPE_TIMEOUT, component=P.COMPONENT_API, count=profile.errors)
    if profile.timelapse is not None:
        r.features.add(feature=P.FEATURE_TIMELAPSE, enabled=profile.timelapse)
    return r


async def fill_fleet(database_url: str) -> None:
    databases.upgrade(database_url)
    store = IngestStore.open(database_url)
    try:
        ingest = Ingest(store, FakeClock(NOW))
        for profile in fleet():
            installation = Installation(uuid.uuid4().bytes)
            reports = [report(installation, profile, week) for week in (W45, W46)]
            answer = await ingest.submit(installation.submission(*reports))
            assert len(answer.receipts) == 2
        assert await Rollups(store.engine, FakeClock(NOW)).refresh() == [W45, W46]
    finally:
        await store.close()


@pytest.fixture
async def analytics(database_url: str) -> AsyncIterator[Analytics]:
    async with databases.filled_analytics_store(database_url, fill_fleet) as store:
        yield Analytics(store, K, FakeClock(NOW))


def window(weeks: int = 2) -> api.WeekWindow:
    return api.WeekWindow(weeks=weeks, until=W46.to_proto())


def label(value: api.GroupValue) -> str:
    return value.label


async def test_release_health_by_hand(analytics: Analytics) -> None:
    answer = await analytics.release_health(api.GetReleaseHealthRequest(window=window()))
    assert [label(r.version) for r in answer.releases] == ["2.8.1", "2.8.0", "2.7.3", "2.6.0"]
    regressed, steady, old, ancient = answer.releases
    # 2.8.1: 30 installations in each of 2 weeks, 15 of them crashing each week.
    assert (regressed.installations, regressed.installation_weeks) == (30, 60)
    assert regressed.installation_weeks_with_unclean_shutdown == 30
    assert regressed.crash_free_rate == pytest.approx(0.5)
    assert (regressed.jobs_completed, regressed.jobs_failed) == (360, 240)
    assert regressed.job_success_rate == pytest.approx(0.6)
    assert [
        (label(f.value), f.installations, f.jobs, round(f.share, 4)) for f in regressed.failure_reasons
    ] == [
        ("Connection Lost", 60, 180, 0.75),
        ("Cancelled", 60, 60, 0.25),
    ]
    assert regressed.errors == 180
    assert regressed.errors_per_installation == pytest.approx(3.0)
    assert regressed.uptime_hours == 6000
    assert regressed.uptime_hours_per_installation == pytest.approx(100)
    assert label(regressed.previous) == "2.8.0"
    # The steady release: 5 of 30 crash each week, 9 of 10 jobs complete, one error each.
    assert steady.crash_free_rate == pytest.approx(50 / 60)
    assert steady.job_success_rate == pytest.approx(0.9)
    assert steady.errors_per_installation == pytest.approx(1.0)
    assert label(steady.previous) == "2.7.3"
    assert not steady.regressions
    assert old.crash_free_rate == pytest.approx(50 / 60)
    assert not old.regressions
    # 5 installations: listed, but too few installation-weeks to compare with anything.
    assert (ancient.installation_weeks, ancient.crash_free_rate) == (10, 1.0)
    assert not ancient.HasField("previous")

    flagged = {r.metric: r for r in regressed.regressions}
    assert set(flagged) == {
        api.RELEASE_METRIC_CRASH_FREE_RATE,
        api.RELEASE_METRIC_JOB_SUCCESS_RATE,
        api.RELEASE_METRIC_ERRORS_PER_INSTALLATION,
    }
    crash = flagged[api.RELEASE_METRIC_CRASH_FREE_RATE]
    assert crash.observed == pytest.approx(0.5)
    assert crash.previous == pytest.approx(50 / 60)
    assert crash.threshold == pytest.approx(50 / 60 - 0.05)
    assert crash.severity == api.SEVERITY_CRITICAL  # a fall of 33 points, over 10
    assert "5 points" in crash.description
    assert "z >= 3" in crash.description
    errors = flagged[api.RELEASE_METRIC_ERRORS_PER_INSTALLATION]
    assert (errors.observed, errors.previous, errors.threshold) == (3.0, 1.0, 1.5)
    assert errors.severity == api.SEVERITY_CRITICAL  # three times the previous release's


async def test_a_regression_is_raised_as_an_anomaly_where_it_is_significant(analytics: Analytics) -> None:
    answer = await analytics.anomalies(api.ListAnomaliesRequest(window=window()))
    raised = {
        (a.week.week, a.scope[0].label, a.description.split(" (")[0].split(" fell")[0].split(" reached")[0])
        for a in answer.anomalies
        if a.kind == api.ANOMALY_KIND_RELEASE_REGRESSION
    }
    # W46 (W45 and W46 summed): all three. W45 alone: 15 of 30 against 25 of 30
    # crash-free is z = -2.74, not significant; jobs and errors are.
    assert raised == {
        (46, "2.8.1", "crash-free rate"),
        (46, "2.8.1", "job success rate"),
        (46, "2.8.1", "errors per installation-week"),
        (45, "2.8.1", "job success rate"),
        (45, "2.8.1", "errors per installation-week"),
    }
    for anomaly in answer.anomalies:
        if anomaly.kind == api.ANOMALY_KIND_RELEASE_REGRESSION:
            assert anomaly.threshold
            assert anomaly.baseline
            assert "previous release 2.8.0" in anomaly.description


async def test_usage_by_hand(analytics: Analytics) -> None:
    answer = await analytics.usage(api.GetUsageRequest(window=window()))
    assert [w.week.week for w in answer.weeks] == [45, 46]
    week = answer.weeks[1]
    assert week.active == 95
    assert (week.jobs_created, week.jobs_completed, week.jobs_failed) == (900, 720, 180)
    assert week.job_success_rate == pytest.approx(0.8)
    assert week.jobs_per_installation == pytest.approx(900 / 95)
    assert (week.files_uploaded, week.files_downloaded) == (180, 90)
    assert (week.printer_connections, week.printer_disconnections) == (360, 90)
    assert week.disconnections_per_connection == pytest.approx(0.25)
    assert (week.uptime_hours, week.app_starts) == (9050, 190)
    assert week.uptime_hours_per_installation == pytest.approx(9050 / 95)
    assert week.installations_with_unclean_shutdown == 25
    assert not week.crash_free_suppressed
    assert week.crash_free_rate == pytest.approx(70 / 95)
    durations = {s.values[0].label: s.points[1] for s in answer.job_durations}
    assert {d: (p.installations, p.count, round(p.share, 4)) for d, p in durations.items()} == {
        "Under 1 Hour": (30, 270, 0.375),
        "Under 4 Hours": (60, 450, 0.625),
    }
    reasons = {s.values[0].label: s.points[1] for s in answer.failure_reasons}
    assert {r: (p.installations, p.count, p.share) for r, p in reasons.items()} == {
        "Cancelled": (90, 90, 0.5),
        "Connection Lost": (30, 90, 0.5),
    }
    # Jobs by printer family. Completed: Prusa 30 x 9; Bambu Lab 25 x 9 + 30 x 6; Klipper 5 x 9;
    # of the 720 completed jobs counted per family.
    completed = {s.values[0].label: s.points[1] for s in answer.completed_jobs_by_printer_type}
    assert {f: (p.installations, p.count, p.share) for f, p in completed.items()} == {
        "Prusa": (30, 270, 0.375),
        "Bambu Lab": (55, 405, 0.5625),
        "Klipper": (5, 45, 0.0625),
    }
    # Failed: Prusa 30 x 1; Bambu Lab 25 x 1 + 27 x 4 = 133 jobs on 52 installations, published rounded
    # to 135 on 50; Klipper 5 x 1; OctoPrint's 3 installations (12 jobs) left out, but in the 180
    # failed jobs the shares are of.
    failed = {s.values[0].label: s.points[1] for s in answer.failed_jobs_by_printer_type}
    assert {f: (p.installations, p.count, p.share) for f, p in failed.items()} == {
        "Prusa": (30, 30, pytest.approx(30 / 180)),
        "Bambu Lab": (50, 135, 0.75),
        "Klipper": (5, 5, pytest.approx(5 / 180)),
    }


async def test_error_rates_by_deployment_mode_and_version_by_hand(analytics: Analytics) -> None:
    request = api.GetErrorRatesRequest(window=window(), by_deployment_mode=True)
    answer = await analytics.error_rates(request)
    assert answer.by_deployment_mode
    rows = {
        tuple(v.label for v in s.values): (
            s.points[1].installations,
            s.points[1].count,
            s.points[1].rate,
            s.points[1].share,
        )
        for s in answer.series
    }
    assert rows == {
        ("Docker", "2.7.3"): (30, 30, 1.0, pytest.approx(0.1)),
        ("Docker", "2.8.0"): (15, 15, 1.0, pytest.approx(0.1)),
        ("Home Assistant Addon", "2.8.0"): (15, 15, 1.0, pytest.approx(0.1)),
        ("Home Assistant Addon", "2.8.1"): (30, 90, 3.0, pytest.approx(0.4)),
        ("Standalone", "2.6.0"): (5, 0, 0.0, 0.0),
    }


async def test_feature_adoption_by_version_by_hand(analytics: Analytics) -> None:
    answer = await analytics.feature_adoption_by_version(
        api.GetFeatureAdoptionByVersionRequest(week=W46.to_proto())
    )
    found = {
        v.version.label: [
            (f.feature.label, f.enabled_installations, f.reporting_installations, f.enabled_share)
            for f in v.features
        ]
        for v in answer.versions
    }
    assert found == {
        "2.8.1": [("Timelapse", 30, 30, 1.0)],
        "2.8.0": [("Timelapse", 20, 30, pytest.approx(2 / 3))],
        "2.7.3": [],  # 3 on, 27 off: those on are too few to publish
        "2.6.0": [],
    }
    assert [v.installations for v in answer.versions] == [30, 30, 30, 5]


async def test_the_new_views_refuse_bad_windows(analytics: Analytics) -> None:
    for call in (
        lambda w: analytics.release_health(api.GetReleaseHealthRequest(window=w)),
        lambda w: analytics.usage(api.GetUsageRequest(window=w)),
    ):
        with pytest.raises(FieldError) as refused:
            await call(api.WeekWindow(weeks=105))
        assert refused.value.field == "window.weeks"
    with pytest.raises(FieldError) as refused:
        await analytics.feature_adoption_by_version(
            api.GetFeatureAdoptionByVersionRequest(week=common_pb2.IsoWeek(year=2026, week=60))
        )
    assert refused.value.field == "week"


# --- the rules alone --------------------------------------------------------------------------------


def release(
    version: tuple[int, int, int], weeks: int, unclean: int, completed: int, failed: int, errors: int
) -> release_health.Release:
    return release_health.Release(
        version,
        installation_weeks=weeks,
        usage_weeks=weeks,
        error_weeks=weeks,
        unclean_weeks=unclean,
        jobs_completed=completed,
        jobs_failed=failed,
        errors=errors,
    )


def test_a_steady_release_with_noise_is_not_flagged() -> None:
    # 8 points worse crash-free on 25 installation-weeks each: past the
    # threshold, but z = -0.8: noise.
    before, after = release((2, 8, 0), 25, 3, 90, 10, 25), release((2, 8, 1), 25, 5, 88, 12, 30)
    assert release_health.regressions(after, before) == []


def test_too_little_is_never_compared() -> None:
    before = release((2, 8, 0), 19, 0, 99, 0, 10)
    after = release((2, 8, 1), 19, 19, 0, 99, 1000)
    assert release_health.regressions(after, before) == []


def test_a_small_but_certain_difference_is_not_flagged() -> None:
    # 2 points worse over 100,000 installation-weeks: significant, but under the 5-point threshold.
    before, after = release((2, 8, 0), 100_000, 5_000, 0, 0, 0), release((2, 8, 1), 100_000, 7_000, 0, 0, 0)
    assert release_health.regressions(after, before) == []


def test_a_suppressed_crash_count_is_not_compared() -> None:
    before, after = release((2, 8, 0), 100, 0, 0, 0, 0), release((2, 8, 1), 100, 60, 0, 0, 0)
    assert [r.metric for r in release_health.regressions(after, before)] == [
        api.RELEASE_METRIC_CRASH_FREE_RATE
    ]
    after.crash_free_suppressed = True
    assert release_health.regressions(after, before) == []


# --- the overview: one snapshot, the separate calls' answers ---------------------------------------------
# The overview reads every figure in one snapshot, each rollup once, and the anomalies read only what
# release regressions compare: its answers are still the separate calls' answers (this fleet has a
# planted regression, so release regressions are among the anomalies).

Dimension = api.Dimension


async def test_the_overview_holds_the_separate_calls_answers(analytics: Analytics) -> None:
    overview = await analytics.overview(api.GetOverviewRequest(window=window()))
    week = W46.to_proto()
    trend = await analytics.installation_trend(api.GetInstallationTrendRequest(window=window()))
    assert list(overview.installation_trend) == list(trend.weeks)
    for shown, dimension in [
        (overview.deployment_modes, Dimension.DIMENSION_DEPLOYMENT_MODE),
        (overview.app_versions, Dimension.DIMENSION_APP_VERSION),
        (overview.countries, Dimension.DIMENSION_COUNTRY),
        (overview.printer_types, Dimension.DIMENSION_PRINTER_TYPE),
    ]:
        assert shown == await analytics.distribution(
            api.GetDistributionRequest(dimensions=[dimension], week=week)
        )
        assert shown.entries  # something to compare
    assert overview.feature_adoption == await analytics.feature_adoption(
        api.GetFeatureAdoptionRequest(week=week)
    )
    assert overview.feature_adoption.features
    anomalies = await analytics.anomalies(api.ListAnomaliesRequest(window=window()))
    assert list(overview.anomalies) == list(anomalies.anomalies)
    assert overview.active.active_last_week == trend.weeks[-1].active
    assert overview.active.active_last_4_weeks == 95  # every installation reported in W45 and W46


async def test_release_regressions_among_the_anomalies_are_release_healths(analytics: Analytics) -> None:
    """The anomalies read no failure reasons and no uptime: release health,
    which reads everything, finds the same regressions for each week."""
    anomalies = await analytics.anomalies(api.ListAnomaliesRequest(window=window()))
    raised = [
        (a.week.week, a.scope[0].label, a.severity, a.observed, a.baseline, a.threshold)
        for a in anomalies.anomalies
        if a.kind == api.ANOMALY_KIND_RELEASE_REGRESSION
    ]
    expected = []
    for week in (W45, W46):
        health = await analytics.release_health(
            api.GetReleaseHealthRequest(
                window=api.WeekWindow(weeks=release_health.RELEASE_HEALTH_WEEKS, until=week.to_proto())
            )
        )
        found = [
            (week.week, r.version.label, g.severity, g.observed, g.previous, g.threshold)
            for r in health.releases
            if r.installations
            for g in r.regressions
        ]
        expected += found
    assert sorted(raised) == sorted(expected)
    assert len(raised) == 5  # tests/analytics/test_release_health.py


@st.composite
def releases(draw: st.DrawFn) -> release_health.Release:
    """A release's sums as week_releases makes them: of its installation-weeks,
    some shared usage (some of those with an unclean shutdown) and some errors."""
    weeks = draw(st.integers(0, 800))
    usage_weeks, error_weeks = draw(st.integers(0, weeks)), draw(st.integers(0, weeks))
    return release_health.Release(
        (2, 8, 1),
        installations=draw(st.integers(0, weeks)),
        installation_weeks=weeks,
        usage_weeks=usage_weeks,
        error_weeks=error_weeks,
        unclean_weeks=draw(st.integers(0, usage_weeks)),
        crash_free_suppressed=draw(st.booleans()),
        jobs_completed=draw(st.integers(0, 5000)),
        jobs_failed=draw(st.integers(0, 5000)),
        errors=draw(st.integers(0, 5000)),
        uptime_hours=draw(st.integers(0, 100_000)),
        failures=draw(
            st.dictionaries(st.integers(1, 7), st.lists(st.integers(0, 500), min_size=2, max_size=2))
        ),
    )


@given(releases(), releases())
def test_regressions_compare_neither_failure_reasons_nor_uptime(
    release: release_health.Release, previous: release_health.Release
) -> None:
    """What lets the anomalies skip reading them (release_health.REGRESSION_ACTIVITIES)."""
    found = release_health.regressions(release, previous)
    without = [dataclasses.replace(r, failures={}, uptime_hours=0) for r in (release, previous)]
    assert release_health.regressions(*without) == found
