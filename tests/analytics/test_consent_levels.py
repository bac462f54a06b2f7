"""Each part of the report is counted over the installations that shared it: a
report without errors is not an installation without errors. A fleet of 40
installations, 10 at each consent level, stored through the real ingest path
into a real database (both engines), against figures worked out by hand."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from printernizer.stats.v1 import aggregated_stats_pb2, analytics_service_pb2, common_pb2
from printernizer_stats.aggregation.ingest import Ingest
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common import consent_levels
from printernizer_stats.common.weeks import Week
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups

from .. import databases
from ..agent_harness import FakeClock
from ..aggregation.conftest import NOW, Installation, report_of
from .conftest import W46

api = analytics_service_pb2
P = common_pb2
K = 5
database_url = databases.database_url


def report(installation: Installation, level: int, week: Week) -> aggregated_stats_pb2.AggregatedStats:
    """Every part filled (one Prusa, timelapse on, 10 jobs, 100 hours, two
    errors), then what `level` does not share left out."""
    r = report_of(installation, week)
    del r.features[:], r.errors[:], r.printer_fleet.printers[:]
    r.schema_version = consent_levels.SINCE_SCHEMA_VERSION  # type: ignore[assignment]
    r.consent_level = level  # type: ignore[assignment]
    r.printer_fleet.printers.add(printer_type=P.PRINTER_TYPE_PRUSA, count=1)
    r.features.add(feature=P.FEATURE_TIMELAPSE, enabled=True)
    usage = r.usage
    del usage.job_failures[:], usage.completed_job_durations[:]
    usage.jobs_created = usage.jobs_completed = 10
    usage.jobs_failed = 0
    usage.completed_job_durations.add(duration=P.JOB_DURATION_BUCKET_UNDER_1_HOUR, count=10)
    usage.jobs_by_printer_type.add(printer_type=P.PRINTER_TYPE_PRUSA, completed=10)
    usage.app_starts, usage.unclean_shutdowns, usage.uptime_hours = 1, 0, 100
    r.errors.add(error_type=P.ERROR_TYPE_TIMEOUT, component=P.COMPONENT_API, count=2)
    consent_levels.keep_only(r, level)
    return r


@pytest.fixture
async def analytics(database_url: str) -> AsyncIterator[Analytics]:
    databases.upgrade(database_url)
    store = IngestStore.open(database_url)
    try:
        ingest = Ingest(store, FakeClock(NOW))
        for level in consent_levels.LEVELS:
            for _ in range(10):
                installation = Installation(uuid.uuid4().bytes)
                answer = await ingest.submit(installation.submission(report(installation, level, W46)))
                assert len(answer.receipts) == 1
        assert await Rollups(store.engine, FakeClock(NOW)).refresh() == [W46]
        yield Analytics(AnalyticsStore(store.engine), K, FakeClock(NOW))
    finally:
        await store.close()


def window() -> api.WeekWindow:
    return api.WeekWindow(weeks=1, until=W46.to_proto())


async def test_printers_and_features_are_over_those_that_shared_them(analytics: Analytics) -> None:
    features = await analytics.feature_adoption(api.GetFeatureAdoptionRequest(week=W46.to_proto()))
    assert (features.total_installations, features.sharing_installations) == (40, 30)
    (timelapse,) = features.features
    assert (timelapse.enabled_installations, timelapse.enabled_share) == (30, 1.0)  # not 30 of 40

    printers = await analytics.distribution(
        api.GetDistributionRequest(dimensions=[api.DIMENSION_PRINTER_TYPE], week=W46.to_proto())
    )
    assert (printers.total_installations, printers.sharing_installations) == (40, 30)
    assert [(e.values[0].label, e.installations, e.share) for e in printers.entries] == [("Prusa", 30, 1.0)]

    # Ten installations did not say how many printers they have: they are not "no printers".
    sizes = await analytics.distribution(
        api.GetDistributionRequest(dimensions=[api.DIMENSION_FLEET_SIZE], week=W46.to_proto())
    )
    assert [(e.values[0].label, e.installations, e.share) for e in sizes.entries] == [("1 printer", 30, 1.0)]
    by_country = await analytics.distribution(
        api.GetDistributionRequest(
            dimensions=[api.DIMENSION_COUNTRY, api.DIMENSION_FLEET_SIZE], week=W46.to_proto()
        )
    )
    assert [(e.installations, e.share) for e in by_country.entries] == [(30, 1.0)]
    # Everyone shares the basics.
    modes = await analytics.distribution(
        api.GetDistributionRequest(dimensions=[api.DIMENSION_DEPLOYMENT_MODE], week=W46.to_proto())
    )
    assert (modes.total_installations, modes.sharing_installations) == (40, 40)
    assert [(e.installations, e.share) for e in modes.entries] == [(40, 1.0)]

    trend = await analytics.feature_trend(api.GetFeatureTrendRequest(window=window()))
    assert [(p.installations, p.share) for p in trend.series[0].points] == [(30, 1.0)]
    by_version = await analytics.feature_adoption_by_version(
        api.GetFeatureAdoptionByVersionRequest(week=W46.to_proto())
    )
    (version,) = by_version.versions
    assert (version.installations, version.sharing_installations) == (40, 30)
    assert [(f.enabled_installations, f.enabled_share) for f in version.features] == [(30, 1.0)]


async def test_usage_is_over_those_that_shared_it(analytics: Analytics) -> None:
    answer = await analytics.usage(api.GetUsageRequest(window=window()))
    (week,) = answer.weeks
    assert (week.active, week.sharing_usage) == (40, 20)
    # The jobs by printer family are those of the 20 that shared usage (their printers too).
    (prusa,) = answer.completed_jobs_by_printer_type
    assert [v.label for v in prusa.values] == ["Prusa"]
    assert [(p.installations, p.count, p.share) for p in prusa.points] == [(20, 200, 1.0)]
    assert list(answer.failed_jobs_by_printer_type) == []
    assert (week.jobs_completed, week.jobs_per_installation) == (200, 10.0)  # not 5 per installation
    assert (week.uptime_hours, week.uptime_hours_per_installation) == (2000, 100.0)
    assert (week.installations_with_unclean_shutdown, week.crash_free_rate) == (0, 1.0)


async def test_errors_are_over_those_that_shared_them(analytics: Analytics) -> None:
    rates = await analytics.error_rates(api.GetErrorRatesRequest(window=window()))
    (version,) = rates.series
    assert (version.points[0].installations, version.points[0].count, version.points[0].rate) == (40, 20, 2.0)
    by_mode = await analytics.error_rates(api.GetErrorRatesRequest(window=window(), by_deployment_mode=True))
    assert [(s.points[0].count, s.points[0].rate) for s in by_mode.series] == [(20, 2.0)]
    # The error trend's share: the 10 that shared their errors all report the timeout (not 10 of 40).
    trend = await analytics.error_trend(api.GetErrorTrendRequest(window=window()))
    assert [(p.installations, p.count, p.share) for s in trend.series for p in s.points] == [(10, 20, 1.0)]

    health = await analytics.release_health(api.GetReleaseHealthRequest(window=window()))
    (release,) = health.releases
    assert release.installation_weeks == 40
    assert (release.installation_weeks_sharing_usage, release.installation_weeks_sharing_errors) == (20, 10)
    assert (release.errors, release.errors_per_installation) == (20, 2.0)
    assert (release.uptime_hours_per_installation, release.crash_free_rate) == (100.0, 1.0)
    assert (release.jobs_completed, release.job_success_rate) == (200, 1.0)
