"""The differencing auditor on usage, release health, error rates and consent
levels (tests/disclosure_auditor.py, `Expected`): the real analytics' answers
about a fleet whose every installation's usage and consent level is known pass
it, and the same answers doctored are caught: a failure reason's jobs off the
truth, a rate over all installations rather than those that shared its part,
a consent-level subgroup below k published. And the real analytics are held to
that last rule too (they do not keep it yet: see
`test_the_analytics_publish_no_consent_level_subgroup_below_k`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from printernizer.stats.v1 import analytics_service_pb2, common_pb2
from printernizer_stats.aggregation.ingest import Ingest
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common.consent_levels import BASICS, ERRORS
from printernizer_stats.common.weeks import Week
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import upgrade
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups

from ..agent_harness import FakeClock
from ..disclosure_auditor import Member, Published, Setup, Truth, Usage, audit, collect, in_process_asker

api = analytics_service_pb2
P = common_pb2
K = 5
NOW = dt.datetime(2026, 11, 18, 12, tzinfo=dt.UTC)  # in 2026-W47
W45, W46 = Week(2026, 45), Week(2026, 46)
SUBGROUP = "publishes a consent-level subgroup below k"


def members(count: int, setup: Setup, weeks: tuple[Week, ...] = (W45, W46)) -> list[Member]:
    return [Member(dict.fromkeys(weeks, setup)) for _ in range(count)]


def fleet_without_small_subgroups() -> list[Member]:
    """20 installations, 15 sharing each part; every group and every consent-level
    subgroup 0 or at least k, so that the analytics may publish everything there is."""
    busy = Usage(
        completed=((P.JOB_DURATION_BUCKET_UNDER_1_HOUR, 4),),
        failed=((P.JOB_FAILURE_REASON_CANCELLED, 1),),
        uptime_hours=100,
        app_starts=2,
        printer_connections=3,
        printer_disconnections=1,
    )
    crashing = Usage(
        completed=busy.completed, failed=busy.failed, uptime_hours=60, app_starts=3, unclean_shutdowns=1
    )
    timeouts = ((P.ERROR_TYPE_TIMEOUT, P.COMPONENT_API, 2),)
    sharing_all = Setup(usage=busy, errors=timeouts, consent_level=ERRORS)
    fleet = members(5, sharing_all) + members(5, Setup(usage=crashing, errors=timeouts, consent_level=ERRORS))
    # 2.8.0: half of it shares only the basics (errors on it are per those that shared them).
    newer = Usage(
        completed=((P.JOB_DURATION_BUCKET_UNDER_4_HOURS, 3),),
        failed=((P.JOB_FAILURE_REASON_PRINTER_ERROR, 2),),
        uptime_hours=50,
    )
    fleet += members(5, Setup(version=(2, 8, 0), usage=newer, errors=timeouts, consent_level=ERRORS))
    fleet += members(5, Setup(version=(2, 8, 0), usage=newer, errors=timeouts, consent_level=BASICS))
    return fleet


def fleet_with_small_subgroups() -> list[Member]:
    """2.7.0 with 10 installations in 2026-W46 of which 3 share everything and 7 only the basics,
    beside 10 on 2.8.0 that share everything: the 3 are a consent-level subgroup below k. In
    2026-W45 the 3 and 6 of the 7 are the whole fleet: there they are a subgroup of the fleet."""
    usage = Usage(completed=((P.JOB_DURATION_BUCKET_UNDER_1_HOUR, 2),), failed=(), uptime_hours=50)
    everything = Setup(
        usage=usage, errors=((P.ERROR_TYPE_TIMEOUT, P.COMPONENT_API, 4),), consent_level=ERRORS
    )
    basics = Setup(consent_level=BASICS)
    fleet = members(3, everything) + members(6, basics) + members(1, basics, (W46,))
    return fleet + members(10, Setup(version=(2, 8, 0), usage=usage, consent_level=ERRORS), (W46,))


def published_by_the_analytics(fleet: list[Member], directory: Path) -> Published:
    """Every answer of the real analytics (in this process, over SQLite) about `fleet`."""

    async def store_and_ask() -> Published:
        url = f"sqlite:///{directory / 'fleet.db'}"
        upgrade(url)
        store = IngestStore.open(url)
        try:
            ingest = Ingest(store, FakeClock(NOW))
            for member in fleet:
                await ingest.submit(member.submission())
            await Rollups(store.engine, FakeClock(NOW)).refresh()
            analytics = Analytics(AnalyticsStore(store.engine), K, FakeClock(NOW))
            return await collect(in_process_asker(analytics), K, [W45, W46], windows=(1, 2), pairs=False)
        finally:
            await store.close()

    return asyncio.run(store_and_ask())


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Member], Published]:
    fleet = fleet_without_small_subgroups()
    return fleet, published_by_the_analytics(fleet, tmp_path_factory.mktemp("honest"))


@pytest.fixture(scope="module")
def with_small_subgroups(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Member], Published]:
    fleet = fleet_with_small_subgroups()
    return fleet, published_by_the_analytics(fleet, tmp_path_factory.mktemp("small"))


def findings(fleet: list[Member], published: Published) -> list[str]:
    return sorted(str(f) for f in audit(published, Truth(fleet)))


def test_the_analytics_answers_are_the_truths(honest: tuple[list[Member], Published]) -> None:
    fleet, published = honest
    assert findings(fleet, published) == []
    # The auditor is not blind: the figures it checked are there, and over those that shared them.
    (week,) = published.usage[(W46, 1)].weeks
    assert (week.active, week.sharing_usage, week.jobs_completed, week.jobs_failed) == (20, 15, 55, 20)
    assert (week.uptime_hours, week.uptime_hours_per_installation) == (1050, 70.0)
    assert (week.installations_with_unclean_shutdown, week.crash_free_rate) == (5, 10 / 15)
    reasons = {
        s.values[0].label: [p.count for p in s.points] for s in published.usage[(W46, 2)].failure_reasons
    }
    assert reasons == {"Cancelled": [10, 10], "Printer Error": [10, 10]}
    newest, oldest = published.release_health[(W46, 2)].releases
    assert (newest.version.label, newest.installation_weeks, newest.installation_weeks_sharing_errors) == (
        "2.8.0",
        20,
        10,
    )
    assert (newest.errors, newest.errors_per_installation) == (20, 2.0)  # not 1.0, over all 20
    assert [(r.value.label, r.jobs) for r in oldest.failure_reasons] == [("Cancelled", 20)]


def test_a_failure_reason_off_the_truth_is_found(honest: tuple[list[Member], Published]) -> None:
    fleet, published = honest
    usage = api.GetUsageResponse()
    usage.CopyFrom(published.usage[(W46, 2)])
    cancelled = next(s for s in usage.failure_reasons if s.values[0].label == "Cancelled")
    cancelled.points[1].count += K  # still a multiple of k: only the truth tells
    # A reason no installation reported, as a group of k.
    runout = usage.failure_reasons.add()
    runout.values.add(job_failure_reason=P.JOB_FAILURE_REASON_FILAMENT_RUNOUT, label="Filament Runout")
    runout.points.add(week=W45.to_proto(), suppressed=True)
    runout.points.add(week=W46.to_proto(), installations=K, count=K, share=0.25)
    health = api.GetReleaseHealthResponse()
    health.CopyFrom(published.release_health[(W46, 2)])
    health.releases[1].failure_reasons[0].jobs -= K
    doctored = Published(K, usage={(W46, 2): usage}, release_health={(W46, 2): health})
    assert findings(fleet, doctored) == [
        "release health 2026-W46/2: releases[2.7.0].failure_reasons[Cancelled].jobs is not the truth's 20: "
        "published = 15",
        "usage 2026-W46/2: failure_reasons[Cancelled].points[2026-W46].count is not the truth's 10: "
        "published = 15",
        "usage 2026-W46/2: failure_reasons[Filament Runout] is published, though the truth does not "
        "publish it = 1",
    ]


def test_a_rate_over_the_wrong_denominator_is_found(honest: tuple[list[Member], Published]) -> None:
    """Each rate over all installations, where only those that shared its part count."""
    fleet, published = honest
    usage = api.GetUsageResponse()
    usage.CopyFrom(published.usage[(W46, 1)])
    week = usage.weeks[0]
    week.uptime_hours_per_installation = week.uptime_hours / week.active
    health = api.GetReleaseHealthResponse()
    health.CopyFrom(published.release_health[(W46, 2)])
    release = health.releases[0]
    release.errors_per_installation = release.errors / release.installation_weeks
    rates = api.GetErrorRatesResponse()
    rates.CopyFrom(published.error_rates[(W46, 1)])
    point = rates.series[0].points[0]
    point.rate = point.count / point.installations
    by_version = api.GetFeatureAdoptionByVersionResponse()
    by_version.CopyFrom(published.features_by_version[W46])
    adoption = by_version.versions[0]
    adoption.features[0].enabled_share = adoption.features[0].enabled_installations / adoption.installations
    doctored = Published(
        K,
        usage={(W46, 1): usage},
        release_health={(W46, 2): health},
        error_rates={(W46, 1): rates},
        features_by_version={W46: by_version},
    )

    def over(where: str, path: str, denominator: str, truth: str, published: str) -> str:
        return (
            f"{where}: {path} is over {denominator}, not over those that shared its part "
            f"(the truth {truth}): published = {published}"
        )

    assert findings(fleet, doctored) == sorted(
        [
            over(
                "release health 2026-W46/2",
                "releases[2.8.0].errors_per_installation",
                "all installation-weeks",
                "2.0",
                "1",
            ),
            over(
                "usage 2026-W46/1",
                "weeks[2026-W46].uptime_hours_per_installation",
                "all active installations",
                "70.0",
                "52.5",
            ),
            over(
                "error rates 2026-W46/1",
                "series[2.8.0].points[2026-W46].rate",
                "all the group's installations",
                "2.0",
                "1",
            ),
            over(
                "features by version 2026-W46",
                "versions[2.8.0].features[Library].enabled_share",
                "all the version's installations",
                "1.0",
                "0.5",
            ),
        ]
    )


def test_a_small_consent_level_subgroup_published_is_found() -> None:
    """An answer made by hand about 2.7.0's 10 installations, 3 of which share their features:
    the honest one passes; one that counts the 3 (rounded to 5) is found."""
    fleet = fleet_with_small_subgroups()
    version = api.GroupValue(app_version=P.Version(major=2, minor=7), label="2.7.0")
    honest = api.GetFeatureAdoptionByVersionResponse(week=W46.to_proto(), min_group_size=K)
    honest.versions.add(version=version, installations=10)
    newer = honest.versions.add(installations=10, sharing_installations=10)
    newer.version.CopyFrom(api.GroupValue(app_version=P.Version(major=2, minor=8), label="2.8.0"))
    newer.features.add(
        feature=api.GroupValue(feature=P.FEATURE_LIBRARY, label="Library"),
        enabled_installations=10,
        reporting_installations=10,
        enabled_share=1.0,
    )
    assert findings(fleet, Published(K, features_by_version={W46: honest})) == []
    leaked = api.GetFeatureAdoptionByVersionResponse()
    leaked.CopyFrom(honest)
    leaked.versions[0].sharing_installations = 5
    assert findings(fleet, Published(K, features_by_version={W46: leaked})) == [
        f"features by version 2026-W46: versions[2.7.0] {SUBGROUP} (features shared by 3 of the 10 of "
        "2.7.0 in 2026-W46): sharing_installations 5 (the truth 0); figures = 1"
    ]


def test_the_consent_level_fleets_figures_are_the_truths(
    with_small_subgroups: tuple[list[Member], Published],
) -> None:
    """Every figure is the truth's, with the small consent-level subgroups left out."""
    fleet, published = with_small_subgroups
    assert [str(f) for f in audit(published, Truth(fleet))] == []


def test_the_analytics_publish_no_consent_level_subgroup_below_k(
    with_small_subgroups: tuple[list[Member], Published],
) -> None:
    fleet, published = with_small_subgroups
    assert [f for f in findings(fleet, published) if SUBGROUP in f] == []
