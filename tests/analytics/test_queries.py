"""The analytics queries on a known fleet stored through the real ingest path
(signed submissions, validation, storage) on SQLite and PostgreSQL, with the
expected figures worked out by hand; the rollups kept current incrementally;
small groups folded; every count rounded to a multiple of k (here 3: 1 -> 0,
2..4 -> 3, 5..7 -> 6, 8..10 -> 9, 11..13 -> 12)."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.message import Message
from printernizer.stats.v1 import analytics_service_pb2
from printernizer.stats.v1 import analytics_service_pb2 as api
from printernizer_stats.analytics.privacy import Disclosure, Group, fold_small_groups, rounded
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common.refusals import FieldError
from printernizer_stats.common.weeks import Week
from sqlalchemy import event

from .. import databases
from ..agent_harness import FakeClock
from ..aggregation.conftest import NOW, Installation, report_of
from .conftest import DOCKER, W44, W45, W46, K, Stored

database_url = databases.database_url
Dimension = analytics_service_pb2.Dimension


def trend_figures(response: analytics_service_pb2.GetInstallationTrendResponse) -> list[tuple[object, ...]]:
    return [
        (Week.from_proto(w.week), w.known, w.active, w.new_installations, round(w.growth, 4))
        for w in response.weeks
    ]


async def test_installation_trend(stored: Stored) -> None:
    request = analytics_service_pb2.GetInstallationTrendRequest(
        window=analytics_service_pb2.WeekWindow(weeks=4)
    )
    # Exact: W44 known 1, active 1, new 1; W45 10, 9, 9; W46 12, 11, 2.
    assert trend_figures(await stored.analytics.installation_trend(request)) == [
        (Week(2026, 43), 0, 0, 0, 0.0),
        (W44, 0, 0, 0, 0.0),  # a single installation rounds to 0
        (W45, 9, 9, 9, 0.0),  # no growth figure from a week with none (published) active
        (W46, 12, 12, 3, round((12 - 9) / 9, 4)),  # growth from the rounded figures
    ]


async def test_a_distribution_folds_small_groups_and_keeps_shares_over_everyone(stored: Stored) -> None:
    request = analytics_service_pb2.GetDistributionRequest(dimensions=[Dimension.DIMENSION_DEPLOYMENT_MODE])
    response = await stored.analytics.distribution(request)
    assert (Week.from_proto(response.week), response.total_installations, response.min_group_size) == (
        W46,
        12,  # 11 active
        K,
    )
    # Docker 6, Raspberry Pi 3, Home Assistant 2 (< k): "other" would be 2, so
    # the smallest published group joins it: other 5, published as 6.
    entries = [
        (e.values[0].deployment_mode if e.values else None, e.other, e.installations)
        for e in response.entries
    ]
    assert entries == [(DOCKER, False, 6), (None, True, 6)]
    assert [round(e.share, 4) for e in response.entries] == [0.5, 0.5]
    assert response.entries[0].values[0].label == "Docker"
    assert all(e.installations >= K for e in response.entries)


async def test_versions_are_ordered_as_versions_newest_first(stored: Stored) -> None:
    # Three installations on 2.10.0: as a string it would sort before 2.7.0.
    for _ in range(3):
        agent = Installation(uuid.uuid4().bytes)
        report = report_of(agent, W45)
        report.installation.app_version.minor = 10
        await stored.ingest.submit(agent.submission(report))
    await stored.rollups.refresh()
    request = analytics_service_pb2.GetDistributionRequest(
        dimensions=[Dimension.DIMENSION_APP_VERSION], week=W45.to_proto()
    )
    response = await stored.analytics.distribution(request)
    assert [(e.values[0].label, e.installations) for e in response.entries] == [
        ("2.10.0", 3),
        ("2.8.0", 3),
        ("2.7.0", 6),
    ]
    assert response.total_installations == 12


async def test_combinations_fold_groups_that_are_small_only_in_combination(stored: Stored) -> None:
    # 2.8.0 alone has 5 installations in W46, but only 2 of them on Home Assistant.
    response = await stored.analytics.distribution(
        analytics_service_pb2.GetDistributionRequest(
            dimensions=[Dimension.DIMENSION_DEPLOYMENT_MODE, Dimension.DIMENSION_APP_VERSION]
        )
    )
    assert [([v.label for v in e.values], e.other, e.installations) for e in response.entries] == [
        (["Docker", "2.7.0"], False, 6),
        ([], True, 6),  # Home Assistant/2.8.0 (2) and, to reach k, Raspberry Pi/2.8.0 (3): 5
    ]
    earlier = await stored.analytics.distribution(
        analytics_service_pb2.GetDistributionRequest(
            dimensions=[Dimension.DIMENSION_DEPLOYMENT_MODE, Dimension.DIMENSION_APP_VERSION],
            week=W45.to_proto(),
        )
    )
    assert [([v.label for v in e.values], e.installations) for e in earlier.entries] == [
        (["Docker", "2.7.0"], 6),
        (["Raspberry Pi", "2.8.0"], 3),
    ]
    reversed_order = await stored.analytics.distribution(
        analytics_service_pb2.GetDistributionRequest(
            dimensions=[Dimension.DIMENSION_APP_VERSION, Dimension.DIMENSION_DEPLOYMENT_MODE],
            week=W45.to_proto(),
        )
    )
    assert [[v.label for v in e.values] for e in reversed_order.entries] == [
        ["2.7.0", "Docker"],
        ["2.8.0", "Raspberry Pi"],
    ]
    printers = await stored.analytics.distribution(
        analytics_service_pb2.GetDistributionRequest(
            dimensions=[Dimension.DIMENSION_COUNTRY, Dimension.DIMENSION_PRINTER_TYPE]
        )
    )
    # An installation can have several printer types: small pairs are left
    # out, never folded into an "other" that could count one twice.
    entries = [([v.label for v in e.values], e.other, e.installations, e.printers) for e in printers.entries]
    assert entries == [(["Germany", "Prusa"], False, 12, 21)]  # 11 installations, 22 printers
    with pytest.raises(FieldError) as caught:
        await stored.analytics.distribution(
            analytics_service_pb2.GetDistributionRequest(
                dimensions=[Dimension.DIMENSION_COUNTRY, Dimension.DIMENSION_COUNTRY]
            )
        )
    assert caught.value.field == "dimensions[1]"


async def test_the_overview_in_one_call(stored: Stored) -> None:
    overview = await stored.analytics.overview(analytics_service_pb2.GetOverviewRequest())
    active = overview.active
    assert (Week.from_proto(active.week), active.total_known, active.active_last_week) == (W46, 12, 12)
    assert active.active_last_4_weeks == 12  # the Standalone one last reported for W44
    assert round(active.week_over_week_growth, 4) == round(3 / 9, 4)
    assert len(overview.installation_trend) == 12
    assert [
        (e.values[0].label if e.values else "other", e.installations) for e in overview.app_versions.entries
    ] == [
        ("2.8.0", 6),  # 5
        ("2.7.0", 6),
    ]
    assert [(e.values[0].label, e.installations) for e in overview.countries.entries] == [("Germany", 12)]
    assert [(e.values[0].label, e.printers) for e in overview.printer_types.entries] == [("Prusa", 21)]
    assert [f.feature.label for f in overview.feature_adoption.features] == ["Library", "Timelapse"]
    assert list(overview.anomalies) == []  # four weeks of history are needed first
    assert overview.min_group_size == K
    earlier = await stored.analytics.overview(
        analytics_service_pb2.GetOverviewRequest(
            window=analytics_service_pb2.WeekWindow(until=W45.to_proto())
        )
    )
    assert (earlier.active.active_last_week, earlier.active.active_last_4_weeks) == (9, 9)  # 9 and 10


async def test_the_export_holds_the_same_answers(stored: Stored) -> None:
    window = analytics_service_pb2.WeekWindow(weeks=3)
    export = await stored.analytics.export(analytics_service_pb2.ExportAggregatesRequest(window=window))
    assert [d.dimensions[0] for d in export.distributions] == list(Dimension.values())[1:]
    assert export.version_migration == await stored.analytics.version_migration(
        analytics_service_pb2.GetVersionMigrationRequest(window=window)
    )
    assert export.overview == await stored.analytics.overview(
        analytics_service_pb2.GetOverviewRequest(window=window)
    )
    entries = [e for d in export.distributions for e in d.entries]
    assert entries
    assert all(e.installations >= K and e.installations % K == 0 for e in entries)


async def test_feature_adoption(stored: Stored) -> None:
    response = await stored.analytics.feature_adoption(analytics_service_pb2.GetFeatureAdoptionRequest())
    assert response.total_installations == 12
    assert [
        (f.feature.label, f.enabled_installations, f.reporting_installations, round(f.enabled_share, 4))
        for f in response.features
    ] == [("Library", 12, 12, 1.0), ("Timelapse", 6, 9, 0.5)]  # exact: 11 of 11; 6 of 9


async def test_version_migration_orders_versions_as_numbers_and_hides_small_ones(stored: Stored) -> None:
    request = analytics_service_pb2.GetVersionMigrationRequest(
        window=analytics_service_pb2.WeekWindow(weeks=3)
    )
    response = await stored.analytics.version_migration(request)
    assert [Week.from_proto(w) for w in response.weeks] == [W44, W45, W46]
    # 2.6.1 (one installation, in W44 only) is never published, not even as "other".
    assert [
        (s.values[0].label, [p.installations for p in s.points], [round(p.share, 4) for p in s.points])
        for s in response.series
    ] == [
        ("2.8.0", [0, 3, 6], [0.0, round(3 / 9, 4), 0.5]),
        ("2.7.0", [0, 6, 6], [0.0, round(6 / 9, 4), 0.5]),
    ]
    # W44 has none of them: marked, so that a chart shows a gap, not a fall to zero.
    assert [[p.suppressed for p in s.points] for s in response.series] == [[True, False, False]] * 2


async def test_a_group_small_in_one_week_only_is_folded_in_that_week(stored: Stored) -> None:
    strict = Analytics(stored.analytics.store, 4, FakeClock(NOW))
    request = analytics_service_pb2.GetVersionMigrationRequest(
        window=analytics_service_pb2.WeekWindow(weeks=3)
    )
    response = await strict.version_migration(request)
    # W45: 2.8.0 has 3 (< 4); "other" would be 3, so 2.7.0 (6) joins it: W45 shows only "other" (9).
    # Rounded to multiples of 4: 5 -> 4, 6 -> 8, 9 -> 8.
    assert [
        ("other" if s.other else s.values[0].label, [p.installations for p in s.points])
        for s in response.series
    ] == [("2.8.0", [0, 0, 4]), ("2.7.0", [0, 0, 8]), ("other", [0, 8, 0])]
    assert all(p.installations % 4 == 0 for s in response.series for p in s.points)
    assert all((p.installations == 0) == p.suppressed for s in response.series for p in s.points)


async def test_feature_trend(stored: Stored) -> None:
    request = analytics_service_pb2.GetFeatureTrendRequest(window=analytics_service_pb2.WeekWindow(weeks=2))
    response = await stored.analytics.feature_trend(request)
    assert [(s.values[0].label, [round(p.share, 4) for p in s.points]) for s in response.series] == [
        ("Library", [1.0, 1.0]),
        ("Timelapse", [round(6 / 9, 4), 0.5]),  # 6 of 9 active, then 6 of 11 (published as 12)
    ]


async def test_error_trend_by_type_and_by_version(stored: Stored) -> None:
    # Every report carries 4 timeouts in the API (see valid_report).
    window = analytics_service_pb2.WeekWindow(weeks=2)
    by_type = await stored.analytics.error_trend(analytics_service_pb2.GetErrorTrendRequest(window=window))
    assert by_type.group_by == analytics_service_pb2.ERROR_GROUPING_ERROR_TYPE
    assert [
        (s.values[0].label, [p.installations for p in s.points], [p.count for p in s.points])
        for s in by_type.series
    ] == [("Timeout", [9, 12], [36, 45])]  # 11 installations and 44 errors in W46
    pairs = await stored.analytics.error_trend(
        analytics_service_pb2.GetErrorTrendRequest(
            window=window, group_by=analytics_service_pb2.ERROR_GROUPING_ERROR_TYPE_AND_COMPONENT
        )
    )
    assert [[v.label for v in s.values] for s in pairs.series] == [["Timeout", "Api"]]
    by_version = await stored.analytics.error_trend(
        analytics_service_pb2.GetErrorTrendRequest(
            window=window, group_by=analytics_service_pb2.ERROR_GROUPING_APP_VERSION
        )
    )
    assert [(s.values[0].label, [p.count for p in s.points]) for s in by_version.series] == [
        ("2.8.0", [12, 21]),  # 20 errors in W46
        ("2.7.0", [24, 24]),
    ]


async def test_error_rates_per_version(stored: Stored) -> None:
    # Per report: 4 errors, 3 jobs completed and 2 failed (see valid_report).
    request = analytics_service_pb2.GetErrorRatesRequest(window=analytics_service_pb2.WeekWindow(weeks=2))
    response = await stored.analytics.error_rates(request)
    assert [
        (s.values[0].label, [(p.installations, p.count, p.rate, round(p.share, 4)) for p in s.points])
        for s in response.series
    ] == [
        # W46: 5 installations (6), 20 errors (21), 10 failed (9) and 15 completed (15).
        ("2.8.0", [(3, 12, 4.0, 0.4), (6, 21, 3.5, 0.375)]),
        ("2.7.0", [(6, 24, 4.0, 0.4), (6, 24, 4.0, 0.4)]),
    ]


async def test_a_deletion_leaves_the_rollups_and_a_new_report_refreshes_its_week(stored: Stored) -> None:
    assert await stored.rollups.refresh() == []  # nothing changed
    await stored.ingest.delete(stored.installations[0].deletion())
    request = analytics_service_pb2.GetInstallationTrendRequest(
        window=analytics_service_pb2.WeekWindow(weeks=3)
    )
    # Before any refresh: the deletion took its reports out of the rollups.
    # Exact: W44 1, 1, 1; W45 9, 8, 8; W46 11, 10, 2. One installation less
    # moves W45's active (9 -> 8) without moving its published figure.
    assert trend_figures(await stored.analytics.installation_trend(request)) == [
        (W44, 0, 0, 0, 0.0),
        (W45, 9, 9, 9, 0.0),
        (W46, 12, 9, 3, 0.0),
    ]
    assert await stored.rollups.refresh() == []  # nothing left to do
    agent = Installation(uuid.uuid4().bytes)
    await stored.ingest.submit(agent.submission(report_of(agent, W45)))
    assert await stored.rollups.refresh() == [W45]


# Every RPC of the analytics service, as the Analytics method that answers it and a request to it.
ANSWERS: dict[str, tuple[str, Message]] = {
    "GetOverview": ("overview", api.GetOverviewRequest()),
    "GetInstallationTrend": ("installation_trend", api.GetInstallationTrendRequest()),
    "GetDistribution": ("distribution", api.GetDistributionRequest(dimensions=[Dimension.DIMENSION_COUNTRY])),
    "GetFeatureAdoption": ("feature_adoption", api.GetFeatureAdoptionRequest()),
    "GetVersionMigration": ("version_migration", api.GetVersionMigrationRequest()),
    "GetFeatureTrend": ("feature_trend", api.GetFeatureTrendRequest()),
    "GetErrorTrend": ("error_trend", api.GetErrorTrendRequest()),
    "GetErrorRates": ("error_rates", api.GetErrorRatesRequest()),
    "ListAnomalies": ("anomalies", api.ListAnomaliesRequest()),
    "ExportAggregates": ("export", api.ExportAggregatesRequest()),
    "GetReleaseHealth": ("release_health", api.GetReleaseHealthRequest()),
    "GetUsage": ("usage", api.GetUsageRequest()),
    "GetFeatureAdoptionByVersion": ("feature_adoption_by_version", api.GetFeatureAdoptionByVersionRequest()),
}
# More requests whose answers read other rollups.
MORE_REQUESTS: list[tuple[str, Message]] = [
    ("distribution", api.GetDistributionRequest(dimensions=[Dimension.DIMENSION_PRINTER_TYPE])),
    (
        "distribution",
        api.GetDistributionRequest(dimensions=[Dimension.DIMENSION_COUNTRY, Dimension.DIMENSION_APP_VERSION]),
    ),
    ("error_rates", api.GetErrorRatesRequest(by_deployment_mode=True)),
    ("error_trend", api.GetErrorTrendRequest(group_by=api.ERROR_GROUPING_APP_VERSION)),
]


def test_every_rpc_is_among_the_answers_checked() -> None:
    service = api.DESCRIPTOR.services_by_name["AnalyticsService"]
    assert set(ANSWERS) == {method.name for method in service.methods}


@pytest.mark.parametrize(("method", "request_"), [*ANSWERS.values(), *MORE_REQUESTS])
async def test_every_answer_reads_one_snapshot(stored: Stored, method: str, request_: Message) -> None:
    """A refresh may commit between two reads: an answer made of two snapshots
    could count a week's groups from one and who shared them from the other.
    The export, made of the other answers, reads one too."""
    engine = stored.analytics.store.engine
    checkouts: list[object] = []

    def counted(*_: object) -> None:
        checkouts.append(None)

    event.listen(engine.sync_engine.pool, "checkout", counted)
    try:
        await getattr(stored.analytics, method)(request_)
    finally:
        event.remove(engine.sync_engine.pool, "checkout", counted)
    assert len(checkouts) == 1, f"{method} read {len(checkouts)} snapshots"


async def test_bounds_and_bad_requests_name_the_field(stored: Stored) -> None:
    too_long = analytics_service_pb2.GetInstallationTrendRequest(
        window=analytics_service_pb2.WeekWindow(weeks=10_000)
    )
    with pytest.raises(FieldError) as caught:
        await stored.analytics.installation_trend(too_long)
    assert caught.value.field == "window.weeks"
    future = analytics_service_pb2.GetDistributionRequest(
        dimensions=[Dimension.DIMENSION_COUNTRY], week=Week(2026, 47).to_proto()
    )
    with pytest.raises(FieldError) as caught:
        await stored.analytics.distribution(future)
    assert caught.value.field == "week"
    with pytest.raises(FieldError) as caught:
        await stored.analytics.distribution(analytics_service_pb2.GetDistributionRequest())
    assert caught.value.field == "dimensions"


@pytest.mark.parametrize(
    ("sizes", "published", "other"),
    [
        ([10, 7, 1, 1], [10], 9),  # "other" (2) is below k: the smallest published group (7) joins it
        ([10, 4, 3], [10, 4, 3], None),  # nothing small
        ([2, 2], [], 4),  # the small groups together reach k
        ([2], [], None),  # everyone together is below k: nothing is published
        ([6, 5, 1], [6], 6),  # other 1 < k takes the smallest published group (5)
    ],
)
def test_folding(sizes: list[int], published: list[int], other: int | None) -> None:
    folded = fold_small_groups([Group((i,), n) for i, n in enumerate(sizes)], k=3)
    assert [g.installations for g in folded.groups] == published
    assert (folded.other.installations if folded.other else None) == other
    assert all(g.installations >= 3 for g in folded.groups)


@pytest.mark.parametrize(
    ("count", "k", "published"),
    [(0, 5, 0), (1, 5, 0), (2, 5, 0), (3, 5, 5), (4, 5, 5), (7, 5, 5), (8, 5, 10), (12, 5, 10), (13, 5, 15),
     (5, 10, 10), (4, 10, 0), (14, 10, 10), (15, 10, 20), (7, 1, 7)],
)  # fmt: skip
def test_rounding_to_multiples_of_k(count: int, k: int, published: int) -> None:
    assert rounded(count, k) == published


@pytest.mark.parametrize(
    ("enabled", "reporting", "published"),
    [
        (11, 11, True),  # everyone on
        (0, 9, True),  # everyone off
        (6, 9, True),  # 6 on, 3 off
        (7, 9, False),  # switched off by 2 (< k)
        (2, 9, False),  # switched on by 2 (< k)
        (2, 2, False),  # reported by fewer than k
    ],
)
def test_a_feature_is_published_when_on_and_off_are_each_none_or_at_least_k(
    enabled: int, reporting: int, published: bool
) -> None:
    folded = Disclosure(3).features([Group((1,), enabled, reporting)])
    assert bool(folded.groups) == published
    assert folded.other is None
