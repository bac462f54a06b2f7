"""A differencing auditor for what the analytics publish (docs/privacy.md).

Given a fleet whose every installation is known (the ground truth) and every
answer the analytics gave about it, the auditor checks, mechanically:

1. Every count published is a multiple of k (walking every integer field of
   every answer), so no sum or difference of published counts can fall
   between 1 and k-1.
2. Against the truth: every published group has at least k installations;
   every "other" at least k distinct installations, and none is published
   where an installation can have several values; every published feature has
   0 or at least k installations with it on, and with it off.
3. The attacks, as an adversary would run them on the published figures
   alone: a total minus its groups, a dimension's value minus its pairs with
   another dimension, "reporting" minus "enabled", a group in consecutive
   weeks, the same figure in different answers and windows, known against new,
   series against distributions, shares times totals, active against those
   sharing a part. Any derived count between 1 and k-1 is a finding.
4. Every figure of the distributions, feature adoption (also by version and
   as trends), usage (jobs, durations, failure reasons, uptime, crashes),
   release health and error rates equals the one computed from the fleet by
   the rules of docs/analytics.md (`Expected`): each count the truth rounded,
   each share and rate over the installations that shared its part of the
   report (consent levels), each group published where it has at least k
   installations and nowhere else. A consent-level subgroup (the installations
   of a group that shared a part) is a group too: fewer than k of them, unless
   they are the whole group, are published nowhere, neither as a count nor
   through the figures summed over them (`audit(..., subgroups=False)` checks
   the figures against those rounding alone gives instead, where such a
   subgroup counts as it is). A rate over the wrong denominator is named as
   such.

The fleet's installations report usage and choose a consent level
(`Setup.consent_level`; a report of schema version 3 carries only the parts its
level shares); `random_usage` and `with_random_usage` draw them from a seed.

The gateway's public community figures (its JSON documents, `Published.community`)
get the same checks: every count a multiple of k, every group against the truth
(found by its label), and the same week's figure equal to the analytics' own.

`collect` asks every question of the analytics (in-process or over gRPC);
`audit` returns the findings, empty when nothing leaks.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from printernizer.stats.v1 import (
    aggregated_stats_pb2,
    analytics_service_pb2,
    common_pb2,
    country_pb2,
    ingest_service_pb2,
)
from printernizer_stats.agent.consent import Identity
from printernizer_stats.analytics.queries import Analytics, group_value
from printernizer_stats.analytics.release_health import RELEASE_HEALTH_WEEKS
from printernizer_stats.common import consent_levels
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.weeks import Week, parse_week, weeks_ending
from printernizer_stats.gateway.community import CHARTS as COMMUNITY_CHARTS
from printernizer_stats.gateway.community import COMBINED
from printernizer_stats.store.rollup_store import Activity, Tally

api = analytics_service_pb2
Dimension = api.Dimension
P = common_pb2
C = country_pb2
SINGLE_VALUED = (
    Dimension.DIMENSION_DEPLOYMENT_MODE,
    Dimension.DIMENSION_APP_VERSION,
    Dimension.DIMENSION_COUNTRY,
    Dimension.DIMENSION_PLATFORM,
    Dimension.DIMENSION_PYTHON_VERSION,
    Dimension.DIMENSION_ARCHITECTURE,
    Dimension.DIMENSION_FLEET_SIZE,
)
DIMENSIONS = (*SINGLE_VALUED, Dimension.DIMENSION_PRINTER_TYPE)
# The dimensions shared from CONSENT_LEVEL_PRINTERS_AND_FEATURES (the others: in every report).
PRINTER_DIMENSIONS = (Dimension.DIMENSION_PRINTER_TYPE, Dimension.DIMENSION_FLEET_SIZE)
ERROR_GROUPINGS = (
    api.ERROR_GROUPING_ERROR_TYPE,
    api.ERROR_GROUPING_COMPONENT,
    api.ERROR_GROUPING_ERROR_TYPE_AND_COMPONENT,
    api.ERROR_GROUPING_APP_VERSION,
)
# Anomalies whose observed value and baseline are counts of installations or reports.
COUNTING_ANOMALIES = (
    api.ANOMALY_KIND_ACTIVE_DROP,
    api.ANOMALY_KIND_ACTIVE_SPIKE,
    api.ANOMALY_KIND_SUBMISSION_VOLUME,
)


# --- the fleet --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What one installation's report says of its usage in one week (UsageCounts)."""

    completed: tuple[tuple[int, int], ...] = ((P.JOB_DURATION_BUCKET_UNDER_1_HOUR, 3),)  # (bucket, jobs)
    failed: tuple[tuple[int, int], ...] = ((P.JOB_FAILURE_REASON_CANCELLED, 1),)  # (reason, jobs)
    unfinished: int = 0  # jobs created in the week that did not end in it
    files_downloaded: int = 0
    files_uploaded: int = 0
    uptime_hours: int = 0
    app_starts: int = 0
    unclean_shutdowns: int = 0
    printer_connections: int = 0
    printer_disconnections: int = 0

    @property
    def jobs_completed(self) -> int:
        return sum(jobs for _, jobs in self.completed)

    @property
    def jobs_failed(self) -> int:
        return sum(jobs for _, jobs in self.failed)

    @property
    def jobs_created(self) -> int:
        return self.jobs_completed + self.jobs_failed + self.unfinished

    def activity(self, kind: Activity) -> int:
        """The report's count of `kind` (its usage column of the same name)."""
        return int(getattr(self, kind.column))


NO_USAGE = Usage(completed=(), failed=())


@dataclass(frozen=True)
class Setup:
    """What one installation reports for one week."""

    deployment_mode: int = P.DEPLOYMENT_MODE_DOCKER
    version: tuple[int, int, int] = (2, 7, 0)
    country: int = C.COUNTRY_DE
    platform: int = P.PLATFORM_LINUX
    python: tuple[int, int, int] = (3, 12, 1)
    architecture: int = P.CPU_ARCHITECTURE_X86_64
    printers: tuple[tuple[int, int], ...] = ((P.PRINTER_TYPE_PRUSA, 1),)
    features: tuple[tuple[int, bool], ...] = ((P.FEATURE_LIBRARY, True),)
    errors: tuple[tuple[int, int, int], ...] = ()  # (error type, component, count)
    usage: Usage = Usage()
    # The level its report is made at; 0: a report of schema version 1, from
    # before levels, which holds every part.
    consent_level: int = 0

    def shares(self, part: str) -> bool:
        """Whether its report holds `part` (a field of AggregatedStats)."""
        return consent_levels.shares(self.consent_level or consent_levels.EVERYTHING, part)

    def reported(self) -> Setup:
        """What its report holds: every part its level does not share left out."""
        return dataclasses.replace(
            self,
            printers=self.printers if self.shares("printer_fleet") else (),
            features=self.features if self.shares("features") else (),
            errors=self.errors if self.shares("errors") else (),
            usage=self.usage if self.shares("usage") else NO_USAGE,
        )


@dataclass
class Member:
    """One installation: its identity and what it reports, week by week."""

    weeks: dict[Week, Setup]
    identity: Identity = field(default_factory=Identity.create)

    def reports(self) -> list[aggregated_stats_pb2.AggregatedStats]:
        return [
            report_for(self.identity.installation_id, week, setup)
            for week, setup in sorted(self.weeks.items())
        ]

    def submission(self) -> ingest_service_pb2.SubmitReportsRequest:
        """Every week it reports, signed with its own key, in one submission (as its agent sends them)."""
        request = ingest_service_pb2.SubmitReportsRequest(
            installation_id=self.identity.installation_id, public_key=self.identity.public_key
        )
        for report in self.reports():
            data = report.SerializeToString(deterministic=True)
            request.reports.add(report=data, signature=self.identity.sign(data))
        return request


def report_for(installation_id: bytes, week: Week, setup: Setup) -> aggregated_stats_pb2.AggregatedStats:
    """A valid weekly report saying `setup`: at its consent level (schema version 3,
    holding only the parts the level shares), or from before levels (version 1)."""
    level = setup.consent_level
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=consent_levels.SINCE_SCHEMA_VERSION if level else 1,
        consent_level=level,
        report_id=report_id(installation_id, week),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=installation_id,
            app_version=P.Version(major=setup.version[0], minor=setup.version[1], patch=setup.version[2]),
            python_version=P.Version(major=setup.python[0], minor=setup.python[1], patch=setup.python[2]),
            platform=setup.platform,  # type: ignore[arg-type]
            architecture=setup.architecture,  # type: ignore[arg-type]
            deployment_mode=setup.deployment_mode,  # type: ignore[arg-type]
            country=setup.country,  # type: ignore[arg-type]
        ),
        period=week.to_proto(),
    )
    shared = setup.reported()
    for printer_type, count in sorted(shared.printers):
        report.printer_fleet.printers.add(printer_type=printer_type, count=count)  # type: ignore[arg-type]
    if setup.shares("usage"):
        usage = report.usage
        for kind in Activity:
            setattr(usage, kind.column, shared.usage.activity(kind))
        for duration, count in sorted(shared.usage.completed):
            usage.completed_job_durations.add(duration=duration, count=count)  # type: ignore[arg-type]
        for reason, count in sorted(shared.usage.failed):
            usage.job_failures.add(reason=reason, count=count)  # type: ignore[arg-type]
        if level and shared.usage.jobs_completed + shared.usage.jobs_failed:
            # From schema version 3 a report says which printer family ran its jobs: here all of
            # them ran on its first family (a family not known when it has no printer).
            family = min((t for t, _ in shared.printers), default=P.PRINTER_TYPE_UNKNOWN)
            usage.jobs_by_printer_type.add(
                printer_type=family,  # type: ignore[arg-type]
                completed=shared.usage.jobs_completed,
                failed=shared.usage.jobs_failed,
            )
    for feature, enabled in sorted(shared.features):
        report.features.add(feature=feature, enabled=enabled)  # type: ignore[arg-type]
    for error_type, component, count in sorted(shared.errors):
        report.errors.add(error_type=error_type, component=component, count=count)  # type: ignore[arg-type]
    return report


# Few values each, so that small groups of every kind are everywhere (all of schema version 1).
DURATIONS = (
    P.JOB_DURATION_BUCKET_UNDER_15_MINUTES,
    P.JOB_DURATION_BUCKET_UNDER_1_HOUR,
    P.JOB_DURATION_BUCKET_UNDER_4_HOURS,
)
FAILURE_REASONS = (
    P.JOB_FAILURE_REASON_CANCELLED,
    P.JOB_FAILURE_REASON_PRINTER_ERROR,
    P.JOB_FAILURE_REASON_CONNECTION_LOST,
    P.JOB_FAILURE_REASON_FILAMENT_RUNOUT,
)
# A report from before levels, or one at each level.
LEVELS = (0, *consent_levels.LEVELS)


def random_usage(rng: random.Random) -> Usage:
    """A week's usage drawn from `rng`: some jobs in a few duration buckets,
    a few failures for a few reasons, uptime, starts and now and then a crash."""
    completed = tuple(sorted((d, rng.randint(1, 6)) for d in rng.sample(DURATIONS, rng.randint(0, 2))))
    failed = tuple(sorted((r, rng.randint(1, 3)) for r in rng.sample(FAILURE_REASONS, rng.randint(0, 2))))
    app_starts = rng.randint(0, 4)
    connections = rng.randint(0, 12)
    return Usage(
        completed=completed,
        failed=failed,
        unfinished=rng.randint(0, 2),
        files_downloaded=rng.randint(0, 9),
        files_uploaded=rng.randint(0, 5),
        uptime_hours=rng.choice([0, 24, 60, 120, 168, rng.randint(0, 168)]),
        app_starts=app_starts,
        unclean_shutdowns=rng.randint(1, app_starts) if app_starts and rng.random() < 0.3 else 0,
        printer_connections=connections,
        printer_disconnections=rng.randint(0, connections),
    )


def with_random_usage(members: Iterable[Member], seed: int, levels: bool = True) -> list[Member]:
    """The same installations (and identities), each week with usage drawn from
    `seed`, and (with `levels`) each installation at a level drawn from it."""
    rng = random.Random(seed)  # a reproducible fleet
    drawn = []
    for member in members:
        level = rng.choice(LEVELS)
        weeks = {
            week: dataclasses.replace(
                setup,
                usage=random_usage(rng),
                consent_level=level if levels else setup.consent_level,
            )
            for week, setup in sorted(member.weeks.items())
        }
        drawn.append(Member(weeks, member.identity))
    return drawn


def _fleet_size(printers: int) -> int:
    for limit, bucket in (
        (0, api.FLEET_SIZE_BUCKET_NONE),
        (1, api.FLEET_SIZE_BUCKET_ONE),
        (3, api.FLEET_SIZE_BUCKET_TWO_TO_THREE),
        (9, api.FLEET_SIZE_BUCKET_FOUR_TO_NINE),
    ):
        if printers <= limit:
            return bucket
    return api.FLEET_SIZE_BUCKET_TEN_OR_MORE


def values_of(setup: Setup, dimension: int) -> set[tuple[int, ...]]:
    """The group keys (as the analytics key them) that one installation's week falls into
    (none of a dimension whose part of the report it did not share)."""
    match dimension:
        case Dimension.DIMENSION_DEPLOYMENT_MODE:
            return {(setup.deployment_mode, 0, 0)}
        case Dimension.DIMENSION_APP_VERSION:
            return {setup.version}
        case Dimension.DIMENSION_COUNTRY:
            return {(setup.country, 0, 0)}
        case Dimension.DIMENSION_PLATFORM:
            return {(setup.platform, 0, 0)}
        case Dimension.DIMENSION_PYTHON_VERSION:
            return {(setup.python[0], setup.python[1], 0)}
        case Dimension.DIMENSION_ARCHITECTURE:
            return {(setup.architecture, 0, 0)}
        case Dimension.DIMENSION_FLEET_SIZE:
            if not setup.shares("printer_fleet"):
                return set()
            return {(_fleet_size(sum(n for _, n in setup.printers)), 0, 0)}
        case Dimension.DIMENSION_PRINTER_TYPE:
            return {(t, 0, 0) for t, _ in setup.printers} if setup.shares("printer_fleet") else set()
    raise AssertionError(f"unknown dimension {dimension}")


def key_of(value: api.GroupValue) -> tuple[int, ...]:
    """A published GroupValue back to the analytics' group key."""
    which = value.WhichOneof("value")
    inner = getattr(value, which)
    if which in ("app_version",):
        return (inner.major, inner.minor, inner.patch)
    if which == "python_version":
        return (inner.major, inner.minor, 0)
    return (inner, 0, 0)


@dataclass
class Truth:
    """What the fleet really is, week by week: what each installation's report holds."""

    members: Sequence[Member]
    _active: dict[Week, list[Setup]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def active(self, week: Week) -> list[Setup]:
        """The week's reports, each as it holds its parts (those above its level left out)."""
        if week not in self._active:
            self._active[week] = [m.weeks[week].reported() for m in self.members if week in m.weeks]
        return self._active[week]

    def count(self, week: Week, dimensions: Sequence[int], keys: Sequence[tuple[int, ...]]) -> int:
        return sum(
            all(key in values_of(setup, d) for d, key in zip(dimensions, keys, strict=True))
            for setup in self.active(week)
        )

    def in_dimensions(self, week: Week, dimensions: Sequence[int]) -> int:
        """The week's installations that are in some group of each of `dimensions` (that shared them)."""
        return sum(all(values_of(s, d) for d in dimensions) for s in self.active(week))

    def feature(self, week: Week, feature: int) -> tuple[int, int]:
        """(installations with it on, installations reporting it)."""
        states = [dict(s.features).get(feature) for s in self.active(week)]
        return sum(s is True for s in states), sum(s is not None for s in states)

    def error_group(self, week: Week, grouping: int, key: tuple[int, ...]) -> int:
        """Installations reporting errors of one group."""

        def matches(setup: Setup) -> bool:
            if grouping == api.ERROR_GROUPING_APP_VERSION:
                return bool(setup.errors) and setup.version == key
            for error_type, component, _ in setup.errors:
                if grouping == api.ERROR_GROUPING_ERROR_TYPE and (error_type,) == key[:1]:
                    return True
                if grouping == api.ERROR_GROUPING_COMPONENT and (component,) == key[:1]:
                    return True
                if (
                    grouping == api.ERROR_GROUPING_ERROR_TYPE_AND_COMPONENT
                    and (error_type, component) == key[:2]
                ):
                    return True
            return False

        return sum(matches(s) for s in self.active(week))

    def weeks(self) -> list[Week]:
        return sorted({w for m in self.members for w in m.weeks})


# --- asking every question ----------------------------------------------------------------------

# (method name as in AnalyticsService, request) -> response
Ask = Callable[[str, Message], Awaitable[Message]]


def in_process_asker(analytics: Analytics) -> Ask:
    """Asking the analytics in this process, as the server would."""
    methods: dict[str, Callable[..., object]] = {
        "GetDistribution": analytics.distribution,
        "GetFeatureAdoption": analytics.feature_adoption,
        "GetInstallationTrend": analytics.installation_trend,
        "GetOverview": analytics.overview,
        "GetVersionMigration": analytics.version_migration,
        "GetFeatureTrend": analytics.feature_trend,
        "GetErrorTrend": analytics.error_trend,
        "GetErrorRates": analytics.error_rates,
        "ListAnomalies": analytics.anomalies,
        "ExportAggregates": analytics.export,
        "GetReleaseHealth": analytics.release_health,
        "GetUsage": analytics.usage,
        "GetFeatureAdoptionByVersion": analytics.feature_adoption_by_version,
    }

    async def ask(method: str, request: Message) -> Message:
        return await methods[method](request)  # type: ignore[no-any-return,misc]

    return ask


@dataclass
class Published:
    """Every answer, by what was asked."""

    k: int
    distributions: dict[tuple[Week, tuple[int, ...]], api.GetDistributionResponse] = field(
        default_factory=dict
    )
    features: dict[Week, api.GetFeatureAdoptionResponse] = field(default_factory=dict)
    trends: dict[tuple[Week, int], api.GetInstallationTrendResponse] = field(default_factory=dict)
    overviews: dict[tuple[Week, int], api.GetOverviewResponse] = field(default_factory=dict)
    migrations: dict[tuple[Week, int], api.GetVersionMigrationResponse] = field(default_factory=dict)
    feature_trends: dict[tuple[Week, int], api.GetFeatureTrendResponse] = field(default_factory=dict)
    error_trends: dict[tuple[Week, int, int], api.GetErrorTrendResponse] = field(default_factory=dict)
    error_rates: dict[tuple[Week, int], api.GetErrorRatesResponse] = field(default_factory=dict)
    anomalies: dict[tuple[Week, int], api.ListAnomaliesResponse] = field(default_factory=dict)
    exports: dict[tuple[Week, int], api.ExportAggregatesResponse] = field(default_factory=dict)
    release_health: dict[tuple[Week, int], api.GetReleaseHealthResponse] = field(default_factory=dict)
    usage: dict[tuple[Week, int], api.GetUsageResponse] = field(default_factory=dict)
    deployment_error_rates: dict[tuple[Week, int], api.GetErrorRatesResponse] = field(default_factory=dict)
    features_by_version: dict[Week, api.GetFeatureAdoptionByVersionResponse] = field(default_factory=dict)
    # The gateway's community figures, by path: the document of every chart, and each chart's own.
    community: dict[str, Any] = field(default_factory=dict)

    def community_charts(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every community chart document, wherever it was published."""
        for path, document in self.community.items():
            for chart in document.get("charts", [document]):
                yield f"community {path} {chart.get('chart')}", chart

    def messages(self) -> Iterator[tuple[str, Message]]:
        for name in (
            "distributions", "features", "trends", "overviews", "migrations", "feature_trends",
            "error_trends", "error_rates", "anomalies", "exports", "release_health", "usage",
            "deployment_error_rates", "features_by_version",
        ):  # fmt: skip
            for asked, message in getattr(self, name).items():
                yield f"{name}{asked}", message


async def collect(
    ask: Ask, k: int, weeks: Sequence[Week], windows: Sequence[int] = (1, 2, 4), pairs: bool = True
) -> Published:
    """Every question, for every week of `weeks` and windows of each length ending on each."""
    published = Published(k)
    asked_dimensions: list[tuple[int, ...]] = [(d,) for d in DIMENSIONS]
    if pairs:
        asked_dimensions += list(itertools.permutations(DIMENSIONS, 2))
    for week in weeks:
        for dimensions in asked_dimensions:
            request = api.GetDistributionRequest(dimensions=dimensions, week=week.to_proto())
            published.distributions[(week, dimensions)] = await ask("GetDistribution", request)  # type: ignore[assignment]
        published.features[week] = await ask(  # type: ignore[assignment]
            "GetFeatureAdoption", api.GetFeatureAdoptionRequest(week=week.to_proto())
        )
        published.features_by_version[week] = await ask(  # type: ignore[assignment]
            "GetFeatureAdoptionByVersion", api.GetFeatureAdoptionByVersionRequest(week=week.to_proto())
        )
        for length in windows:
            window = api.WeekWindow(weeks=length, until=week.to_proto())
            at = (week, length)
            published.trends[at] = await ask(
                "GetInstallationTrend", api.GetInstallationTrendRequest(window=window)
            )  # type: ignore[assignment]
            published.overviews[at] = await ask("GetOverview", api.GetOverviewRequest(window=window))  # type: ignore[assignment]
            published.migrations[at] = await ask(
                "GetVersionMigration", api.GetVersionMigrationRequest(window=window)
            )  # type: ignore[assignment]
            published.feature_trends[at] = await ask(
                "GetFeatureTrend", api.GetFeatureTrendRequest(window=window)
            )  # type: ignore[assignment]
            for grouping in ERROR_GROUPINGS:
                published.error_trends[(week, length, grouping)] = await ask(  # type: ignore[assignment]
                    "GetErrorTrend", api.GetErrorTrendRequest(window=window, group_by=grouping)
                )
            published.error_rates[at] = await ask("GetErrorRates", api.GetErrorRatesRequest(window=window))  # type: ignore[assignment]
            published.anomalies[at] = await ask("ListAnomalies", api.ListAnomaliesRequest(window=window))  # type: ignore[assignment]
            published.release_health[at] = await ask(  # type: ignore[assignment]
                "GetReleaseHealth", api.GetReleaseHealthRequest(window=window)
            )
            published.usage[at] = await ask("GetUsage", api.GetUsageRequest(window=window))  # type: ignore[assignment]
            published.deployment_error_rates[at] = await ask(  # type: ignore[assignment]
                "GetErrorRates", api.GetErrorRatesRequest(window=window, by_deployment_mode=True)
            )
        published.exports[(week, windows[-1])] = await ask(  # type: ignore[assignment]
            "ExportAggregates",
            api.ExportAggregatesRequest(window=api.WeekWindow(weeks=windows[-1], until=week.to_proto())),
        )
    return published


# --- the audit --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    where: str
    what: str
    value: float

    def __str__(self) -> str:
        return f"{self.where}: {self.what} = {self.value:g}"


_NOT_COUNTS = {"min_group_size"}
# Messages whose integers identify something rather than count it.
_LABELS = (
    "printernizer.stats.v1.IsoWeek",
    "printernizer.stats.v1.Version",
    "printernizer.stats.v1.GroupValue",
)
_INTEGERS = {
    FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
}  # fmt: skip


def counts_in(message: Message, path: str = "") -> Iterator[tuple[str, int]]:
    """Every count in an answer: each integer field outside weeks, versions and labels."""
    if message.DESCRIPTOR.full_name in _LABELS:
        return
    for descriptor, value in message.ListFields():
        where = f"{path}.{descriptor.name}" if path else descriptor.name
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if descriptor.is_repeated else [value]
            for index, item in enumerate(items):
                yield from counts_in(item, f"{where}[{index}]" if descriptor.is_repeated else where)
        elif descriptor.type in _INTEGERS and descriptor.name not in _NOT_COUNTS:
            for item in value if descriptor.is_repeated else [value]:
                yield where, int(item)


# The counts of an answer as the gateway's JSON names them (camelCase).
JSON_COUNTS = {
    "installations", "totalInstallations", "printers", "known", "active", "newInstallations", "totalKnown",
    "activeLastWeek", "activeLast4Weeks", "enabledInstallations", "reportingInstallations", "count",
    "installationWeeks", "installationWeeksWithUncleanShutdown", "jobsCreated", "jobsCompleted", "jobsFailed",
    "jobs", "errors", "uptimeHours", "filesUploaded", "filesDownloaded", "printerConnections",
    "printerDisconnections", "appStarts", "installationsWithUncleanShutdown",
}  # fmt: skip


def json_counts(value: object, path: str = "") -> Iterator[tuple[str, int]]:
    """Every count in a JSON answer of the gateway (64-bit integers come as strings)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in JSON_COUNTS and not isinstance(item, dict | list):
                yield f"{path}.{key}", int(item)
            else:
                yield from json_counts(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_counts(item, f"{path}[{index}]")


def anomaly_counts(message: Message, path: str = "") -> Iterator[tuple[str, float]]:
    """Observed values and baselines of the anomalies that count installations or reports."""
    if isinstance(message, api.Anomaly):
        if message.kind in COUNTING_ANOMALIES:
            yield f"{path}.observed", message.observed
            yield f"{path}.baseline", message.baseline
        return
    for descriptor, value in message.ListFields():
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if descriptor.is_repeated else [value]
            for index, item in enumerate(items):
                yield from anomaly_counts(item, f"{path}.{descriptor.name}[{index}]")


# --- what the truth publishes -----------------------------------------------------------------

Key = tuple[int, ...]
_V = Dimension.DIMENSION_APP_VERSION


def rounded(count: int, k: int) -> int:
    """`count` to the nearest multiple of k, halves up (docs/privacy.md)."""
    return k * ((2 * count + k) // (2 * k))


def ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def fold(sizes: Mapping[Key, int], k: int) -> tuple[list[Key], list[Key], int | None]:
    """Groups where each installation has one value, as docs/privacy.md publishes
    them: (the published keys, the hidden ones, the size of `other` or None).
    Groups below k are hidden; while they number 1 to k-1 installations together,
    the smallest published group joins them (of equal ones, the larger key, as
    the analytics take them); `other` is published when it reaches k."""
    published = sorted((key for key, n in sizes.items() if n >= k), key=lambda key: (-sizes[key], key))
    hidden = [key for key, n in sizes.items() if n < k]
    while 0 < sum(sizes[key] for key in hidden) < k and published:
        hidden.append(published.pop())
    other = sum(sizes[key] for key in hidden)
    return published, hidden, other if other >= k else None


def both_sides_publishable(within: int, total: int, k: int) -> bool:
    """Those with something and those without (of `total`) each number 0 or at least k."""
    return all(n == 0 or n >= k for n in (within, total - within))


def _newest_first(key: Key) -> Key:
    return tuple(-part for part in key)


def _label(version: Key) -> str:
    return f"{version[0]}.{version[1]}.{version[2]}"


@dataclass
class _Release:
    """A version's sums over the weeks it was published in (docs/analytics.md, release health)."""

    installations: int = 0
    installation_weeks: int = 0
    usage_weeks: int = 0
    error_weeks: int = 0
    unclean_weeks: int = 0
    crash_free_suppressed: bool = False
    jobs_completed: int = 0
    jobs_failed: int = 0
    errors: int = 0
    uptime_hours: int = 0
    failures: dict[int, list[int]] = field(default_factory=dict)  # reason: [installations, jobs]


class Expected:
    """The answers the analytics should give about the truth, computed from it
    alone by the rules of docs/analytics.md and docs/privacy.md.

    `strict`: a consent-level subgroup below k (installations of a group that
    shared a part, 1 to k-1 of them and not the whole group) counts as if it had
    not shared the part, so nothing of it is published. Without `strict`, the
    figures rounding alone would publish: the auditor tells by them a small
    subgroup published from a figure that is simply wrong. `small` lists the
    subgroups left out (in the answers built since it was last cleared), each
    with the words an answer's path names it by (its group's label, its week)."""

    def __init__(self, truth: Truth, k: int, strict: bool) -> None:
        self.truth, self.k, self.strict = truth, k, strict
        self.small: list[tuple[tuple[str, ...], str]] = []

    def count(self, n: int) -> int:
        return rounded(n, self.k)

    def sharing(self, group: Sequence[Setup], part: str, *of: str) -> list[Setup]:
        """The installations of `group` whose reports hold `part`; `of`: the group's
        label and week, as the answers' paths name them."""
        shared = [s for s in group if s.shares(part)]
        if self.strict and 0 < len(shared) < self.k and len(shared) < len(group):
            words = " in ".join(of)
            self.small.append((of, f"{part} shared by {len(shared)} of the {len(group)} of {words}"))
            return []
        return shared

    def by(self, week: Week, key: Callable[[Setup], Key]) -> dict[Key, list[Setup]]:
        groups: dict[Key, list[Setup]] = {}
        for setup in self.truth.active(week):
            groups.setdefault(key(setup), []).append(setup)
        return groups

    def versions(self, week: Week) -> tuple[dict[Key, list[Setup]], list[Key]]:
        """The week's installations by app version, and the versions published (newest first)."""
        groups = self.by(week, lambda s: s.version)
        published, _, _ = fold({v: len(g) for v, g in groups.items()}, self.k)
        return groups, sorted(published, key=_newest_first)

    # distributions and features
    def distribution(self, week: Week, dimensions: Sequence[int]) -> api.GetDistributionResponse:
        active = self.truth.active(week)
        shared_part = any(d in PRINTER_DIMENSIONS for d in dimensions)
        members = self.sharing(active, "printer_fleet", "the fleet", str(week)) if shared_part else active
        sharing = self.count(len(members))
        printer_type = Dimension.DIMENSION_PRINTER_TYPE
        groups: dict[Key, list[int]] = {}  # key: [installations, printers]
        for setup in members:
            for keys in itertools.product(*(sorted(values_of(setup, d)) for d in dimensions)):
                group = groups.setdefault(tuple(itertools.chain(*keys)), [0, 0])
                group[0] += 1
                if printer_type in dimensions:
                    group[1] += dict(setup.printers)[keys[list(dimensions).index(printer_type)][0]]
        answer = api.GetDistributionResponse(
            dimensions=dimensions,  # type: ignore[arg-type]
            week=week.to_proto(),
            total_installations=self.count(len(active)),
            min_group_size=self.k,
            sharing_installations=sharing,
        )
        if printer_type in dimensions:  # an installation can have several types: no "other"
            published, other = [key for key, (n, _) in groups.items() if n >= self.k], None
        else:
            published, _, other = fold({key: n for key, (n, _) in groups.items()}, self.k)
        for key in published:
            installations, printers = (self.count(n) for n in groups[key])
            entry = answer.entries.add(
                installations=installations, share=ratio(installations, sharing), printers=printers
            )
            for index, dimension in enumerate(dimensions):
                entry.values.append(group_value(dimension, key[3 * index : 3 * index + 3]))
        if other is not None:
            answer.entries.add(
                other=True, installations=self.count(other), share=ratio(self.count(other), sharing)
            )
        return answer

    def _features(self, members: Sequence[Setup], sharing: int) -> list[api.FeatureAdoption]:
        """The features published among `members`: those with it on and with it off each 0 or at least k,
        and together at least k; shares over `sharing`."""
        states: dict[int, list[int]] = {}  # feature: [on, reporting it]
        for setup in members:
            for feature, enabled in setup.features:
                state = states.setdefault(feature, [0, 0])
                state[0] += enabled
                state[1] += 1
        return [
            api.FeatureAdoption(
                feature=group_value(Tally.FEATURES, (feature, 0, 0)),
                enabled_installations=self.count(on),
                reporting_installations=self.count(reporting),
                enabled_share=ratio(self.count(on), sharing),
            )
            for feature, (on, reporting) in sorted(states.items())
            if reporting >= self.k and both_sides_publishable(on, reporting, self.k)
        ]

    def feature_adoption(self, week: Week) -> api.GetFeatureAdoptionResponse:
        active = self.truth.active(week)
        shared = self.sharing(active, "features", "the fleet", str(week))
        sharing = self.count(len(shared))
        answer = api.GetFeatureAdoptionResponse(
            week=week.to_proto(),
            total_installations=self.count(len(active)),
            min_group_size=self.k,
            sharing_installations=sharing,
        )
        answer.features.extend(self._features(shared, sharing))
        return answer

    def feature_trend(self, weeks: Sequence[Week]) -> api.GetFeatureTrendResponse:
        per_week = {
            week: {f.feature.feature: f for f in self.feature_adoption(week).features} for week in weeks
        }
        answer = api.GetFeatureTrendResponse(weeks=[w.to_proto() for w in weeks], min_group_size=self.k)
        for feature in sorted({f for published in per_week.values() for f in published}):
            series = answer.series.add(values=[group_value(Tally.FEATURES, (feature, 0, 0))])
            for week in weeks:
                adoption = per_week[week].get(feature)
                if adoption is None:
                    series.points.add(week=week.to_proto(), suppressed=True)
                    continue
                series.points.add(
                    week=week.to_proto(),
                    installations=adoption.enabled_installations,
                    share=adoption.enabled_share,
                    count=adoption.reporting_installations,
                )
        return answer

    def features_by_version(self, week: Week) -> api.GetFeatureAdoptionByVersionResponse:
        groups, published = self.versions(week)
        answer = api.GetFeatureAdoptionByVersionResponse(week=week.to_proto(), min_group_size=self.k)
        for version in published:
            group = groups[version]
            shared = self.sharing(group, "features", _label(version), str(week))
            sharing = self.count(len(shared))
            adoption = answer.versions.add(
                version=group_value(_V, version),
                installations=self.count(len(group)),
                sharing_installations=sharing,
            )
            adoption.features.extend(self._features(shared, sharing))
        return answer

    # usage
    def usage(self, weeks: Sequence[Week]) -> api.GetUsageResponse:
        answer = api.GetUsageResponse(min_group_size=self.k)
        shared = {}
        for week in weeks:
            active = self.truth.active(week)
            shared[week] = self.sharing(active, "usage", "the fleet", str(week))
            answer.weeks.append(self._usage_week(week, len(active), shared[week]))
        answer.job_durations.extend(
            self._job_series(
                weeks, shared, lambda u: u.completed, Tally.JOB_DURATIONS, Activity.JOBS_COMPLETED
            )
        )
        answer.failure_reasons.extend(
            self._job_series(weeks, shared, lambda u: u.failed, Tally.JOB_FAILURES, Activity.JOBS_FAILED)
        )
        return answer

    def _usage_week(self, week: Week, active: int, shared: Sequence[Setup]) -> api.UsageWeek:
        count = self.count

        def total(kind: Activity) -> int:
            return count(sum(s.usage.activity(kind) for s in shared))

        sharing = count(len(shared))
        completed, failed = total(Activity.JOBS_COMPLETED), total(Activity.JOBS_FAILED)
        connections, disconnections = (
            total(Activity.PRINTER_CONNECTIONS),
            total(Activity.PRINTER_DISCONNECTIONS),
        )
        uptime = total(Activity.UPTIME_HOURS)
        figures = api.UsageWeek(
            week=week.to_proto(),
            active=count(active),
            jobs_created=total(Activity.JOBS_CREATED),
            jobs_completed=completed,
            jobs_failed=failed,
            job_success_rate=ratio(completed, completed + failed),
            jobs_per_installation=ratio(completed + failed, sharing),
            files_uploaded=total(Activity.FILES_UPLOADED),
            files_downloaded=total(Activity.FILES_DOWNLOADED),
            printer_connections=connections,
            printer_disconnections=disconnections,
            disconnections_per_connection=ratio(disconnections, connections),
            uptime_hours=uptime,
            uptime_hours_per_installation=ratio(uptime, sharing),
            app_starts=total(Activity.APP_STARTS),
            sharing_usage=sharing,
        )
        crashed = sum(s.usage.unclean_shutdowns > 0 for s in shared)
        if both_sides_publishable(crashed, len(shared), self.k):
            figures.installations_with_unclean_shutdown = count(crashed)
            figures.crash_free_rate = ratio(sharing - count(crashed), sharing)
        else:
            figures.crash_free_suppressed = True
        return figures

    def _job_series(
        self,
        weeks: Sequence[Week],
        shared: Mapping[Week, Sequence[Setup]],
        entries: Callable[[Usage], tuple[tuple[int, int], ...]],
        code: int,
        total: Activity,
    ) -> list[api.Series]:
        """Jobs by one value (a duration bucket, a failure reason): a series per value
        reported by at least k installations in some week; `share` of the week's jobs."""
        published: dict[Week, dict[int, tuple[int, int]]] = {}
        for week in weeks:
            groups: dict[int, list[int]] = {}  # value: [installations, jobs]
            for setup in shared[week]:
                for value, jobs in entries(setup.usage):
                    group = groups.setdefault(value, [0, 0])
                    group[0] += 1
                    group[1] += jobs
            published[week] = {v: (n, jobs) for v, (n, jobs) in groups.items() if n >= self.k}
        series = []
        for value in sorted({v for of_week in published.values() for v in of_week}):
            line = api.Series(values=[group_value(code, (value, 0, 0))])
            for week in weeks:
                if value not in published[week]:
                    line.points.add(week=week.to_proto(), suppressed=True)
                    continue
                installations, jobs = published[week][value]
                every = self.count(sum(s.usage.activity(total) for s in shared[week]))
                line.points.add(
                    week=week.to_proto(),
                    installations=self.count(installations),
                    count=self.count(jobs),
                    share=ratio(self.count(jobs), every),
                )
            series.append(line)
        return series

    # release health and error rates
    def release_health(self, weeks: Sequence[Week]) -> api.GetReleaseHealthResponse:
        count, k = self.count, self.k
        found: dict[Key, _Release] = {}
        for index, week in enumerate(weeks):
            groups, published = self.versions(week)
            for version in published:
                group, of = groups[version], (_label(version), str(week))
                release = found.setdefault(version, _Release())
                if index == len(weeks) - 1:
                    release.installations = count(len(group))
                release.installation_weeks += count(len(group))
                usage, errors = self.sharing(group, "usage", *of), self.sharing(group, "errors", *of)
                release.usage_weeks += count(len(usage))
                release.error_weeks += count(len(errors))
                unclean = sum(s.usage.unclean_shutdowns > 0 for s in usage)
                if both_sides_publishable(unclean, len(usage), k):
                    release.unclean_weeks += count(unclean)
                else:
                    release.crash_free_suppressed = True
                release.jobs_completed += count(sum(s.usage.jobs_completed for s in usage))
                release.jobs_failed += count(sum(s.usage.jobs_failed for s in usage))
                release.uptime_hours += count(sum(s.usage.uptime_hours for s in usage))
                release.errors += count(sum(n for s in errors for _, _, n in s.errors))
                reasons: dict[int, list[int]] = {}
                for setup in usage:
                    for reason, jobs in setup.usage.failed:
                        group_of_reason = reasons.setdefault(reason, [0, 0])
                        group_of_reason[0] += 1
                        group_of_reason[1] += jobs
                for reason, (installations, jobs) in reasons.items():
                    if installations >= k:
                        sums = release.failures.setdefault(reason, [0, 0])
                        sums[0] += count(installations)
                        sums[1] += count(jobs)
        answer = api.GetReleaseHealthResponse(weeks=[w.to_proto() for w in weeks], min_group_size=k)
        listed = sorted(found, key=_newest_first)
        for index, version in enumerate(listed):
            r = found[version]
            health = answer.releases.add(
                version=group_value(_V, version),
                installations=r.installations,
                installation_weeks=r.installation_weeks,
                installation_weeks_with_unclean_shutdown=0 if r.crash_free_suppressed else r.unclean_weeks,
                crash_free_rate=0.0
                if r.crash_free_suppressed
                else ratio(r.usage_weeks - r.unclean_weeks, r.usage_weeks),
                crash_free_suppressed=r.crash_free_suppressed,
                jobs_completed=r.jobs_completed,
                jobs_failed=r.jobs_failed,
                job_success_rate=ratio(r.jobs_completed, r.jobs_completed + r.jobs_failed),
                errors=r.errors,
                errors_per_installation=ratio(r.errors, r.error_weeks),
                uptime_hours=r.uptime_hours,
                uptime_hours_per_installation=ratio(r.uptime_hours, r.usage_weeks),
                installation_weeks_sharing_usage=r.usage_weeks,
                installation_weeks_sharing_errors=r.error_weeks,
            )
            for reason, (installations, jobs) in sorted(r.failures.items(), key=lambda f: (-f[1][1], f[0])):
                health.failure_reasons.add(
                    value=group_value(Tally.JOB_FAILURES, (reason, 0, 0)),
                    installations=installations,
                    jobs=jobs,
                    share=ratio(jobs, r.jobs_failed),
                )
            if index + 1 < len(listed):
                health.previous.CopyFrom(group_value(_V, listed[index + 1]))
        return answer

    def error_rates(self, weeks: Sequence[Week], by_deployment_mode: bool) -> api.GetErrorRatesResponse:
        """Per app version (or deployment mode and app version), folded by their installations."""

        def group_of(setup: Setup) -> Key:
            return (setup.deployment_mode, 0, 0, *setup.version) if by_deployment_mode else setup.version

        def values(key: Key) -> list[api.GroupValue]:
            if by_deployment_mode:
                return [group_value(Dimension.DIMENSION_DEPLOYMENT_MODE, key[:3]), group_value(_V, key[3:])]
            return [group_value(_V, key)]

        def point(week: Week, group: Sequence[Setup], installations: int, label: str) -> api.SeriesPoint:
            of = (label, str(week))
            errors, usage = self.sharing(group, "errors", *of), self.sharing(group, "usage", *of)
            count = self.count(sum(n for s in errors for _, _, n in s.errors))
            failed = self.count(sum(s.usage.jobs_failed for s in usage))
            completed = self.count(sum(s.usage.jobs_completed for s in usage))
            return api.SeriesPoint(
                week=week.to_proto(),
                installations=installations,
                count=count,
                rate=ratio(count, self.count(len(errors))),
                share=ratio(failed, failed + completed),
            )

        per_week = {}
        for week in weeks:
            groups = self.by(week, group_of)
            per_week[week] = (groups, *fold({g: len(members) for g, members in groups.items()}, self.k))
        answer = api.GetErrorRatesResponse(
            weeks=[w.to_proto() for w in weeks], min_group_size=self.k, by_deployment_mode=by_deployment_mode
        )
        for key in sorted({g for _, published, _, _ in per_week.values() for g in published}):
            series = answer.series.add(values=values(key))
            label = " ".join(v.label for v in values(key))
            for week in weeks:
                groups, shown, _, _ = per_week[week]
                if key in shown:
                    group = groups[key]
                    series.points.append(point(week, group, self.count(len(group)), label))
                else:
                    series.points.add(week=week.to_proto(), suppressed=True)
        if any(other is not None for _, _, _, other in per_week.values()):
            series = answer.series.add(other=True)
            for week in weeks:
                groups, _, hidden, other = per_week[week]
                if other is None:
                    series.points.add(week=week.to_proto(), suppressed=True)
                    continue
                members = [s for g in hidden for s in groups[g]]
                series.points.append(point(week, members, self.count(other), "other"))
        return answer


# The fields of each answer `Expected` computes, by message (the others are checked as counts only).
_MODELLED: dict[str, tuple[str, ...]] = {
    "GetDistributionResponse": ("week", "total_installations", "entries", "sharing_installations"),
    "DistributionEntry": ("values", "other", "installations", "share", "printers"),
    "GetFeatureAdoptionResponse": ("week", "total_installations", "features", "sharing_installations"),
    "FeatureAdoption": (
        "feature", "other", "enabled_installations", "reporting_installations", "enabled_share",
    ),
    "GetFeatureTrendResponse": ("weeks", "series"),
    "GetFeatureAdoptionByVersionResponse": ("week", "versions"),
    "VersionFeatureAdoption": ("version", "installations", "features", "sharing_installations"),
    "GetUsageResponse": ("weeks", "job_durations", "failure_reasons"),
    "UsageWeek": (
        "week", "active", "jobs_created", "jobs_completed", "jobs_failed", "job_success_rate",
        "jobs_per_installation", "files_uploaded", "files_downloaded", "printer_connections",
        "printer_disconnections", "disconnections_per_connection", "uptime_hours",
        "uptime_hours_per_installation", "app_starts", "installations_with_unclean_shutdown",
        "crash_free_rate", "crash_free_suppressed", "sharing_usage",
    ),
    "Series": ("values", "other", "points"),
    "SeriesPoint": ("week", "installations", "share", "count", "rate", "suppressed"),
    "GetReleaseHealthResponse": ("weeks", "releases"),
    "ReleaseHealth": (
        "version", "installations", "installation_weeks", "installation_weeks_with_unclean_shutdown",
        "crash_free_rate", "crash_free_suppressed", "jobs_completed", "jobs_failed", "job_success_rate",
        "failure_reasons", "errors", "errors_per_installation", "uptime_hours",
        "uptime_hours_per_installation", "previous", "installation_weeks_sharing_usage",
        "installation_weeks_sharing_errors",
    ),
    "JobCount": ("value", "installations", "jobs", "share"),
    "GetErrorRatesResponse": ("weeks", "series", "by_deployment_mode"),
}  # fmt: skip
_IDENTITIES = ("week", "version", "feature", "value", "values", "other")


def _identity(message: Message) -> str:
    """How an entry of a list is told from the others: its week, or its values' labels."""
    fields = message.DESCRIPTOR.fields_by_name
    parts = []
    for name in _IDENTITIES:
        if name not in fields:
            continue
        value = getattr(message, name)
        if name == "week":
            parts.append(str(Week.from_proto(value)))
        elif name == "values":
            parts += [v.label for v in value]
        elif name == "other":
            parts += ["other"] if value else []
        else:
            parts.append(value.label)
    return " ".join(parts)


def _shown(value: object) -> object:
    if isinstance(value, common_pb2.IsoWeek):
        return str(Week.from_proto(value))
    if isinstance(value, api.GroupValue):
        return value.label or "none"
    if isinstance(value, Message):
        return str(value).replace("\n", " ").strip()
    if not isinstance(value, str | bytes) and isinstance(value, Iterable):
        return [_shown(v) for v in value]
    return value


@dataclass(frozen=True)
class Difference:
    """A figure of a published answer that is not the truth's."""

    path: str
    name: str  # the field's name ("" for an entry of a list published or missing)
    holder: Message  # the published message with the field
    parent: Message | None  # the message holding `holder`
    published: object
    expected: object


def differences(
    published: Message, expected: Message, path: str = "", parent: Message | None = None
) -> Iterator[Difference]:
    """Where `published` differs from `expected` in the fields `Expected` computes; lists are
    matched entry by entry (by week, or by their values' labels), not by order."""
    for name in _MODELLED[expected.DESCRIPTOR.name]:
        descriptor = expected.DESCRIPTOR.fields_by_name[name]
        where = f"{path}.{name}" if path else name
        mine, theirs = getattr(published, name), getattr(expected, name)
        nested = descriptor.message_type is not None and descriptor.message_type.full_name not in _LABELS
        if nested and descriptor.is_repeated:
            mine_by, theirs_by = {_identity(m): m for m in mine}, {_identity(m): m for m in theirs}
            for key in sorted(theirs_by.keys() - mine_by.keys()):
                yield Difference(f"{where}[{key}]", "", published, parent, "nothing", "the entry")
            for key in sorted(mine_by.keys() - theirs_by.keys()):
                yield Difference(f"{where}[{key}]", "", published, parent, "the entry", "nothing")
            for key in sorted(mine_by.keys() & theirs_by.keys()):
                yield from differences(mine_by[key], theirs_by[key], f"{where}[{key}]", published)
        elif nested:
            yield from differences(mine, theirs, where, published)
        elif descriptor.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if not math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=1e-12):
                yield Difference(where, name, published, parent, mine, theirs)
        elif _shown(mine) != _shown(theirs):
            yield Difference(where, name, published, parent, _shown(mine), _shown(theirs))


def wrong_denominators(difference: Difference) -> dict[str, float]:
    """A published rate's value over the denominators it must not have (all installations rather
    than those that shared its part), from the published answer's own figures."""
    m, name, parent = difference.holder, difference.name, difference.parent
    everyone = "all active installations"
    if isinstance(m, api.UsageWeek):
        parts = {
            "jobs_per_installation": m.jobs_completed + m.jobs_failed,
            "uptime_hours_per_installation": m.uptime_hours,
            "crash_free_rate": m.active - m.installations_with_unclean_shutdown,
        }
        return {everyone: ratio(parts[name], m.active)} if name in parts else {}
    if isinstance(m, api.ReleaseHealth):
        parts = {
            "crash_free_rate": m.installation_weeks - m.installation_weeks_with_unclean_shutdown,
            "errors_per_installation": m.errors,
            "uptime_hours_per_installation": m.uptime_hours,
        }
        return {"all installation-weeks": ratio(parts[name], m.installation_weeks)} if name in parts else {}
    if isinstance(m, api.SeriesPoint) and name == "rate":
        return {"all the group's installations": ratio(m.count, m.installations)}
    if isinstance(m, api.FeatureAdoption) and name == "enabled_share":
        if isinstance(parent, api.GetFeatureAdoptionResponse):
            return {everyone: ratio(m.enabled_installations, parent.total_installations)}
        if isinstance(parent, api.VersionFeatureAdoption):
            return {"all the version's installations": ratio(m.enabled_installations, parent.installations)}
    if (
        isinstance(m, api.DistributionEntry)
        and name == "share"
        and isinstance(parent, api.GetDistributionResponse)
    ):
        return {everyone: ratio(m.installations, parent.total_installations)}
    return {}


def _same_figure(shown: object, true: object) -> bool:
    if isinstance(shown, int | float) and isinstance(true, int | float):
        return math.isclose(shown, true, rel_tol=1e-9, abs_tol=1e-12)
    return shown == true


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 1.0


class Auditor:
    def __init__(self, published: Published, truth: Truth, subgroups: bool = True) -> None:
        """`subgroups`: a consent-level subgroup below k published is a finding (without it,
        the figures are checked against those rounding alone would give)."""
        self.published = published
        self.truth = truth
        self.subgroups = subgroups
        self.k = published.k
        self.findings: list[Finding] = []
        self.strict, self.lenient = (
            Expected(truth, self.k, strict=True),
            Expected(truth, self.k, strict=False),
        )

    def derived(self, where: str, what: str, value: float) -> None:
        """A figure an adversary computed: a finding when it is a count between 1 and k-1."""
        if 1 - 1e-9 <= value <= self.k - 1 + 1e-9:
            self.findings.append(Finding(where, what, value))

    def fail(self, where: str, what: str, value: float) -> None:
        self.findings.append(Finding(where, what, value))

    # 1. every published count is a multiple of k
    def counts_are_multiples_of_k(self) -> None:
        for where, message in self.published.messages():
            for path, value in counts_in(message):
                if value % self.k:
                    self.fail(where, f"{path} is not a multiple of k", value)
            for path, value in anomaly_counts(message):
                if value % self.k:
                    self.fail(where, f"{path} is not a multiple of k", value)
        for where, chart in self.published.community_charts():
            for path, value in json_counts(chart):
                if value % self.k:
                    self.fail(where, f"{path} is not a multiple of k", value)
            for index, row in enumerate(chart.get("rows", [])):
                for column, value in row.items():
                    # A number this audit would not see as a count: a chart's new column must be named
                    # as a count (JSON_COUNTS) or be a share (a float).
                    if isinstance(value, int) and column not in JSON_COUNTS:
                        self.fail(
                            where, f"rows[{index}].{column} is an integer the audit does not know", value
                        )

    # 2. against the truth
    def groups_are_large_enough(self) -> None:
        for (week, length), health in self.published.release_health.items():
            window = api.WeekWindow(weeks=length, until=week.to_proto())
            labels = [r.version.label for r in health.releases]
            self._release_versions(f"release health {week}/{length}", window, labels)
        for (week, dimensions), answer in self.published.distributions.items():
            where = f"distribution {week} {list(dimensions)}"
            truth_total = self.truth.in_dimensions(week, dimensions)
            published_truth = 0
            multi = Dimension.DIMENSION_PRINTER_TYPE in dimensions
            for entry in answer.entries:
                if entry.other:
                    if multi:
                        self.fail(where, "an 'other' entry where an installation can have several values", 1)
                    continue
                keys = [key_of(v) for v in entry.values]
                true = self.truth.count(week, dimensions, keys)
                published_truth += true
                if true < self.k:
                    self.fail(where, f"group {keys} has only", true)
            if any(e.other for e in answer.entries) and not multi:
                other = truth_total - published_truth
                if other < self.k:
                    self.fail(where, "the 'other' entry has only", other)
        for week, adoption in self.published.features.items():
            for feature in adoption.features:
                if feature.other:
                    self.fail(f"features {week}", "an 'other' feature entry", 1)
                    continue
                self._feature_is_publishable(f"features {week}", week, feature.feature.feature)
        for (until, length), trend in self.published.feature_trends.items():
            for series in trend.series:
                self._series_points(
                    f"feature trend {until}/{length}", series, trend.weeks, self._feature_check
                )
        for where, chart in self.published.community_charts():
            self._community_chart_against_truth(where, chart)

        def on_version(week: Week, key: tuple[int, ...]) -> int:
            return self.truth.count(week, [Dimension.DIMENSION_APP_VERSION], [key])

        def on_versions(week: Week, keys: list[tuple[int, ...]]) -> int:
            return sum(on_version(week, key) for key in keys)

        by_version = {f"version migration {at}": answer for at, answer in self.published.migrations.items()}
        by_version |= {f"error rates {at}": answer for at, answer in self.published.error_rates.items()}
        for where, answer in by_version.items():
            self._series_truth(where, answer.series, answer.weeks, on_version, on_versions)
        for (until, length, grouping), errors in self.published.error_trends.items():
            self._series_truth(
                f"error trend {until}/{length}/{grouping}",
                errors.series,
                errors.weeks,
                lambda week, key, g=grouping: self.truth.error_group(week, g, key),  # type: ignore[misc]
                (lambda week, keys, g=grouping: sum(self.truth.error_group(week, g, k) for k in keys))  # type: ignore[misc]
                if grouping == api.ERROR_GROUPING_APP_VERSION
                else None,
            )

    @staticmethod
    def _community_question(chart: dict[str, Any]) -> tuple[Week, Message] | None:
        """The question a community chart's figures answer (the gateway's own), and its last week."""
        definition = next((c for c in COMMUNITY_CHARTS if c.name == chart.get("chart")), None)
        if definition is None:
            return None
        last = parse_week(chart["weeks"][-1])
        return last, definition.question(api.WeekWindow(weeks=definition.weeks, until=last.to_proto()))

    def _community_chart_against_truth(self, where: str, chart: dict[str, Any]) -> None:
        """A community chart's groups, found in the truth by their labels: each at least k, the
        combined row (only where an installation has one value) at least k distinct installations."""
        asked = self._community_question(chart)
        if asked is None:
            self.fail(where, "a community chart the audit does not know", 1)
            return
        last, question = asked
        rows: list[dict[str, Any]] = chart["rows"]
        if isinstance(question, api.GetDistributionRequest):
            column = chart["columns"][0]
            self._community_groups(where, last, question.dimensions[0], [(r[column], r) for r in rows])
        elif isinstance(question, api.GetVersionMigrationRequest):
            for week in sorted({r["week"] for r in rows}):
                of_week = [(r["appVersion"], r) for r in rows if r["week"] == week]
                self._community_groups(
                    f"{where} {week}", parse_week(week), api.DIMENSION_APP_VERSION, of_week
                )
        elif isinstance(question, api.GetFeatureAdoptionRequest):
            features = {self._label(Tally.FEATURES, (f, 0, 0)): f for f in P.Feature.values()}
            for row in rows:
                if row["feature"] not in features:
                    self.fail(where, f"feature {row['feature']!r} is no feature (or an 'other')", 1)
                    continue
                self._feature_is_publishable(where, last, features[row["feature"]])
        elif isinstance(question, api.GetReleaseHealthRequest):
            self._release_versions(where, question.window, [r["appVersion"] for r in rows])
        elif not isinstance(question, api.GetInstallationTrendRequest):  # totals: their counts are checked
            self.fail(where, f"a community chart asking {type(question).__name__}: no check for it here", 1)

    def _release_versions(self, where: str, window: api.WeekWindow, labels: Iterable[str]) -> None:
        """Each version release health lists had at least k installations in some week it covers."""
        weeks = weeks_ending(Week.from_proto(window.until), window.weeks)
        for label in labels:
            sizes = [
                self.truth.count(w, [Dimension.DIMENSION_APP_VERSION], [key])
                for w in weeks
                if (key := self._labelled_keys(w, Dimension.DIMENSION_APP_VERSION).get(label)) is not None
            ]
            if max(sizes, default=0) < self.k:
                self.fail(where, f"release {label!r} listed with at most", max(sizes, default=0))

    @staticmethod
    def _label(dimension: int, key: tuple[int, ...]) -> str:
        return str(group_value(dimension, key).label)

    def _labelled_keys(self, week: Week, dimension: int) -> dict[str, tuple[int, ...]]:
        """The truth's groups of one dimension in a week, by the label the analytics give them."""
        keys = {v for s in self.truth.active(week) for v in values_of(s, dimension)}
        return {self._label(dimension, key): key for key in keys}

    def _community_groups(
        self, where: str, week: Week, dimension: int, rows: list[tuple[str, dict[str, Any]]]
    ) -> None:
        by_label = self._labelled_keys(week, dimension)
        named = 0
        for label, _ in rows:
            if label == COMBINED:
                continue
            key = by_label.get(label)
            true = 0 if key is None else self.truth.count(week, [dimension], [key])
            named += true
            if true < self.k:
                self.fail(where, f"group {label!r} in {week} has only", true)
        if any(label == COMBINED for label, _ in rows):
            if dimension not in SINGLE_VALUED:
                self.fail(where, "a combined row where an installation can have several values", 1)
            elif (hidden := self.truth.in_dimensions(week, [dimension]) - named) < self.k:
                self.fail(where, f"the combined row in {week} has only", hidden)

    def _feature_is_publishable(self, where: str, week: Week, feature: int) -> None:
        enabled, reporting = self.truth.feature(week, feature)
        off = reporting - enabled
        if reporting < self.k or not all(n == 0 or n >= self.k for n in (enabled, off)):
            self.fail(
                where, f"feature {feature} published with on/off/reporting {enabled}/{off}/{reporting}", 1
            )

    def _feature_check(self, where: str, week: Week, series: api.Series) -> None:
        self._feature_is_publishable(where, week, series.values[0].feature)

    def _series_points(
        self,
        where: str,
        series: api.Series,
        weeks: Sequence[Message],
        check: Callable[[str, Week, api.Series], None],
    ) -> None:
        for point in series.points:
            if not point.suppressed:
                check(where, Week.from_proto(point.week), series)

    def _series_truth(
        self,
        where: str,
        all_series: Iterable[api.Series],
        weeks: Sequence[common_pb2.IsoWeek],
        group: Callable[[Week, tuple[int, ...]], int],
        everyone: Callable[[Week, list[tuple[int, ...]]], int] | None,
    ) -> None:
        """Each published point of a named series is a group of at least k; an
        `other` series exists only where `everyone` can count distinct installations,
        and is at least k."""
        named = [s for s in all_series if not s.other]
        for series in all_series:
            for point in series.points:
                if point.suppressed:
                    if point.installations or point.count or point.share or point.rate:
                        self.fail(where, "a suppressed point carries figures", 1)
                    continue
                week = Week.from_proto(point.week)
                if series.other:
                    if everyone is None:
                        self.fail(where, "an 'other' series where an installation can have several values", 1)
                        continue
                    shown = [
                        key_of(s.values[0])
                        for s in named
                        if any(p.week == point.week and not p.suppressed for p in s.points)
                    ]
                    hidden = self._hidden_total(week, everyone, shown)
                    if hidden < self.k:
                        self.fail(where, f"the 'other' series in {week} has only", hidden)
                    continue
                keys = [key_of(v) for v in series.values]
                key = keys[0] if len(keys) == 1 else (keys[0][0], keys[1][0])
                true = group(week, key)
                if true < self.k:
                    self.fail(where, f"series {keys} in {week} has only", true)

    def _hidden_total(
        self, week: Week, everyone: Callable[[Week, list[tuple[int, ...]]], int], shown: list[tuple[int, ...]]
    ) -> int:
        """Installations of the app versions not shown in `week` (one-valued series are by version)."""
        all_keys = {v for s in self.truth.active(week) for v in values_of(s, Dimension.DIMENSION_APP_VERSION)}
        hidden = [k for k in all_keys if k not in shown]
        return everyone(week, hidden)

    # 3. the attacks, on published figures only
    def differencing_attacks(self) -> None:
        p = self.published
        for (week, dimensions), answer in p.distributions.items():
            where = f"distribution {week} {list(dimensions)}"
            self.derived(
                where,
                "total minus its groups",
                answer.total_installations - sum(e.installations for e in answer.entries),
            )
            for entry in answer.entries:
                self.derived(
                    where,
                    "share x those sharing the part minus installations",
                    entry.share * answer.sharing_installations - entry.installations,
                )
            if len(dimensions) == 2:
                single = p.distributions.get((week, dimensions[:1]))
                if single is None:
                    continue
                self.derived(
                    where,
                    "total against the single dimension's",
                    single.total_installations - answer.total_installations,
                )
                for entry in single.entries:
                    if entry.other:
                        continue
                    key = key_of(entry.values[0])
                    paired = sum(
                        e.installations for e in answer.entries if not e.other and key_of(e.values[0]) == key
                    )
                    self.derived(where, f"{key} minus its pairs", entry.installations - paired)
        weeks = sorted({w for w, _ in p.distributions})
        for earlier, later in itertools.pairwise(weeks):
            for dimensions in {d for _, d in p.distributions}:
                a, b = p.distributions.get((earlier, dimensions)), p.distributions.get((later, dimensions))
                if a is None or b is None:
                    continue
                before = {
                    tuple(key_of(v) for v in e.values): e.installations for e in a.entries if not e.other
                }
                for entry in b.entries:
                    if entry.other:
                        continue
                    key = tuple(key_of(v) for v in entry.values)
                    if key in before:
                        self.derived(
                            f"{list(dimensions)} {earlier}->{later}",
                            f"{key} week over week",
                            entry.installations - before[key],
                        )
                self.derived(
                    f"{list(dimensions)} {earlier}->{later}",
                    "total week over week",
                    b.total_installations - a.total_installations,
                )
        for week, adoption in p.features.items():
            for feature in adoption.features:
                where = f"features {week} {feature.feature.label}"
                self.derived(
                    where,
                    "reporting minus enabled",
                    feature.reporting_installations - feature.enabled_installations,
                )
                self.derived(
                    where,
                    "active minus reporting",
                    adoption.total_installations - feature.reporting_installations,
                )
        self._trend_attacks()
        self._series_against_distributions()
        self._same_figure_everywhere()
        self._sharing_attacks()

    def _sharing_attacks(self) -> None:
        """Those that did not share a part: all installations of a group minus those that shared it."""
        p = self.published
        for (week, dimensions), distribution in p.distributions.items():
            self.derived(
                f"distribution {week} {list(dimensions)}",
                "active minus those sharing the part",
                distribution.total_installations - distribution.sharing_installations,
            )
        for week, adoption in p.features.items():
            self.derived(
                f"features {week}",
                "active minus those sharing features",
                adoption.total_installations - adoption.sharing_installations,
            )
        for week, by_version in p.features_by_version.items():
            for version in by_version.versions:
                self.derived(
                    f"features by version {week} {version.version.label}",
                    "installations minus those sharing features",
                    version.installations - version.sharing_installations,
                )
        for (until, length), usage in p.usage.items():
            for usage_week in usage.weeks:
                self.derived(
                    f"usage {until}/{length} {Week.from_proto(usage_week.week)}",
                    "active minus those sharing usage",
                    usage_week.active - usage_week.sharing_usage,
                )
        for (until, length), health in p.release_health.items():
            for release in health.releases:
                where = f"release health {until}/{length} {release.version.label}"
                weeks = release.installation_weeks
                self.derived(
                    where, "weeks minus those sharing usage", weeks - release.installation_weeks_sharing_usage
                )
                self.derived(
                    where,
                    "weeks minus those sharing errors",
                    weeks - release.installation_weeks_sharing_errors,
                )

    def _trend_attacks(self) -> None:
        for (until, length), trend in self.published.trends.items():
            where = f"installation trend {until}/{length}"
            for a, b in itertools.pairwise(trend.weeks):
                self.derived(
                    where,
                    f"known {Week.from_proto(b.week)} minus known before minus new",
                    b.known - a.known - b.new_installations,
                )
                self.derived(where, "known week over week", b.known - a.known)
                self.derived(where, "active week over week", b.active - a.active)
                self.derived(where, "growth x active before", b.growth * a.active)
            for w in trend.weeks:
                self.derived(where, "known minus active", w.known - w.active)
        for (until, length), overview in self.published.overviews.items():
            active = overview.active
            where = f"overview {until}/{length}"
            self.derived(
                where,
                "active in 4 weeks minus last week",
                active.active_last_4_weeks - active.active_last_week,
            )
            self.derived(
                where, "known minus active in 4 weeks", active.total_known - active.active_last_4_weeks
            )

    def _series_against_distributions(self) -> None:
        for (until, length), migration in self.published.migrations.items():
            for series in migration.series:
                if series.other:
                    continue
                key = key_of(series.values[0])
                for point in series.points:
                    week = Week.from_proto(point.week)
                    single = self.published.distributions.get((week, (Dimension.DIMENSION_APP_VERSION,)))
                    if single is None:
                        continue
                    shown = next(
                        (
                            e.installations
                            for e in single.entries
                            if not e.other and key_of(e.values[0]) == key
                        ),
                        0,
                    )
                    self.derived(
                        f"version migration {until}/{length}",
                        f"{key} in {week} against the distribution",
                        point.installations - shown,
                    )
        for (until, length, grouping), errors in self.published.error_trends.items():
            if grouping != api.ERROR_GROUPING_ERROR_TYPE_AND_COMPONENT:
                continue
            by_type = self.published.error_trends.get((until, length, api.ERROR_GROUPING_ERROR_TYPE))
            if by_type is None:
                continue
            for series in by_type.series:
                for index, point in enumerate(series.points):
                    pairs = sum(
                        s.points[index].installations
                        for s in errors.series
                        if not s.other and s.values[0].error_type == series.values[0].error_type
                    )
                    self.derived(
                        f"error trend {until}/{length}",
                        f"{series.values[0].label} minus its components",
                        point.installations - pairs,
                    )

    def _same_figure_everywhere(self) -> None:
        """The same week's figure in two answers (windows, the overview, the export) is the same number."""
        seen: dict[tuple[object, ...], tuple[str, float]] = {}

        def same(key: tuple[object, ...], where: str, value: float) -> None:
            if key in seen and seen[key][1] != value:
                self.derived(
                    f"{where} against {seen[key][0]}", f"{key} differs by", abs(value - seen[key][1])
                )
                self.fail(f"{where} against {seen[key][0]}", f"{key} differs between answers", value)
            seen.setdefault(key, (where, value))

        for (until, length), trend in self.published.trends.items():
            for w in trend.weeks:
                week = Week.from_proto(w.week)
                for name in ("known", "active", "new_installations"):
                    same((name, week), f"trend {until}/{length}", getattr(w, name))
        for (until, length), overview in self.published.overviews.items():
            for w in overview.installation_trend:
                week = Week.from_proto(w.week)
                for name in ("known", "active", "new_installations"):
                    same((name, week), f"overview {until}/{length}", getattr(w, name))
            for answer in (
                overview.deployment_modes,
                overview.app_versions,
                overview.countries,
                overview.printer_types,
            ):
                self._same_distribution(same, f"overview {until}/{length}", answer)
        for (until, length), export in self.published.exports.items():
            for answer in export.distributions:
                self._same_distribution(same, f"export {until}/{length}", answer)
        for (week, _), answer in self.published.distributions.items():
            if len(answer.dimensions) == 1:
                self._same_distribution(same, f"distribution {week}", answer)
        for where, chart in self.published.community_charts():
            self._same_community_figures(same, where, chart)

    def _same_community_figures(
        self, same: Callable[[tuple[object, ...], str, float], None], where: str, chart: dict[str, Any]
    ) -> None:
        """A community chart's figures are the analytics' own for the same week and group."""
        asked = self._community_question(chart)
        if asked is None:
            return  # found by the check against the truth
        last, question = asked
        if isinstance(question, api.GetInstallationTrendRequest):
            for row in chart["rows"]:
                week = parse_week(row["week"])
                same(("known", week), where, row["known"])
                same(("active", week), where, row["active"])
                same(("new_installations", week), where, row["newInstallations"])
        elif isinstance(question, api.GetDistributionRequest):
            dimensions = tuple(question.dimensions)
            by_label = self._labelled_keys(last, dimensions[0])
            column = chart["columns"][0]
            for row in chart["rows"]:
                label = row[column]
                key: object = "other" if label == COMBINED else (by_label.get(label),)
                same(("group", last, dimensions, key), where, row["installations"])

    @staticmethod
    def _same_distribution(
        same: Callable[[tuple[object, ...], str, float], None],
        where: str,
        answer: api.GetDistributionResponse,
    ) -> None:
        week = Week.from_proto(answer.week)
        dimensions = tuple(answer.dimensions)
        same(("total", week, dimensions), where, answer.total_installations)
        for entry in answer.entries:
            key = "other" if entry.other else tuple(key_of(v) for v in entry.values)
            same(("group", week, dimensions, key), where, entry.installations)
            same(("printers", week, dimensions, key), where, entry.printers)

    # 4. every figure against the truth's
    def figures_against_truth(self) -> None:
        p = self.published
        for (week, dimensions), distribution in p.distributions.items():
            self._against_truth(
                f"distribution {week} {list(dimensions)}", distribution, "distribution", week, dimensions
            )
        for week, features in p.features.items():
            self._against_truth(f"features {week}", features, "feature_adoption", week)
        for week, by_version in p.features_by_version.items():
            self._against_truth(f"features by version {week}", by_version, "features_by_version", week)
        windowed: list[tuple[str, dict[tuple[Week, int], Any], str, tuple[Any, ...]]] = [
            ("feature trend", p.feature_trends, "feature_trend", ()),
            ("usage", p.usage, "usage", ()),
            ("release health", p.release_health, "release_health", ()),
            ("error rates", p.error_rates, "error_rates", (False,)),
            ("error rates by deployment mode", p.deployment_error_rates, "error_rates", (True,)),
        ]
        for name, answers, question, more in windowed:
            for (until, length), answer in answers.items():
                weeks = weeks_ending(until, length)
                self._against_truth(f"{name} {until}/{length}", answer, question, weeks, *more)
        for (until, length), overview in p.overviews.items():
            self._whole_answers(f"overview {until}/{length}", until, overview)
        for (until, length), export in p.exports.items():
            where, weeks = f"export {until}/{length}", weeks_ending(until, length)
            self._whole_answers(where, until, export.overview)
            for distribution in export.distributions:
                dimensions = tuple(distribution.dimensions)
                self._against_truth(
                    f"{where} {list(dimensions)}", distribution, "distribution", until, dimensions
                )
            self._against_truth(where, export.feature_trend, "feature_trend", weeks)
            self._against_truth(where, export.usage, "usage", weeks)
            self._against_truth(where, export.error_rates, "error_rates", weeks, False)
            self._against_truth(where, export.error_rates_by_deployment_mode, "error_rates", weeks, True)
            self._against_truth(where, export.feature_adoption_by_version, "features_by_version", until)
            release_weeks = weeks_ending(until, RELEASE_HEALTH_WEEKS)
            self._against_truth(where, export.release_health, "release_health", release_weeks)
        for where, chart in self.published.community_charts():
            self._community_against_truth(where, chart)

    def _whole_answers(self, where: str, until: Week, overview: api.GetOverviewResponse) -> None:
        """An overview's distributions and feature adoption, all of its last week."""
        for distribution in (
            overview.deployment_modes,
            overview.app_versions,
            overview.countries,
            overview.printer_types,
        ):
            dimensions = tuple(distribution.dimensions)
            self._against_truth(
                f"{where} {list(dimensions)}", distribution, "distribution", until, dimensions
            )
        self._against_truth(where, overview.feature_adoption, "feature_adoption", until)

    def _against_truth(self, where: str, published: Message, question: str, *asked: Any) -> None:
        """`published` against what the truth publishes (`Expected`'s `question`, asked `asked`)."""
        truth = self.strict if self.subgroups else self.lenient
        truth.small.clear()
        found = list(differences(published, getattr(truth, question)(*asked)))
        if not found:
            return
        off = {d.path for d in found}
        if self.subgroups:
            # A figure that rounding alone would give counts a subgroup below k; one that
            # differs from that too is wrong.
            off = {d.path for d in differences(published, getattr(self.lenient, question)(*asked))}
        subgroups: dict[str, list[Difference]] = {}
        for difference in found:
            if difference.path in off:
                self.findings.append(self._truth_finding(where, difference))
            else:
                subgroups.setdefault(difference.path.rpartition(".")[0], []).append(difference)
        for entry, figures in subgroups.items():
            listed = ", ".join(f"{d.name or d.path} {d.published} (the truth {d.expected})" for d in figures)
            self.fail(
                where,
                f"{entry or 'the answer'} publishes a consent-level subgroup below k "
                f"({self._subgroups_of(entry)}): {listed}; figures",
                len(figures),
            )

    def _subgroups_of(self, entry: str) -> str:
        """The small subgroups the strict truth left out that an answer's entry is about."""
        small = self.strict.small
        named = [text for words, text in small if all(w in entry for w in words)]
        named = named or [text for words, text in small if any(w in entry for w in words)]
        return "; ".join(dict.fromkeys(named or [text for _, text in small]))

    @staticmethod
    def _truth_finding(where: str, d: Difference) -> Finding:
        """A published figure that is not the truth's, in words: an entry published or
        missing, a rate over the wrong denominator, or a figure off."""
        value = float(d.published) if isinstance(d.published, int | float) else 1.0
        if not d.name:
            if d.expected == "nothing":
                what = f"{d.path} is published, though the truth does not publish it"
            else:
                what = f"{d.path} is missing, though the truth publishes it"
        else:
            what = f"{d.path} is not the truth's {d.expected}: published"
            if isinstance(d.published, float) and isinstance(d.expected, float):
                for over, wrong in wrong_denominators(d).items():
                    if math.isclose(wrong, d.published) and not math.isclose(wrong, d.expected):
                        what = (
                            f"{d.path} is over {over}, not over those that shared its part "
                            f"(the truth {d.expected}): published"
                        )
        return Finding(where, what, value)

    def _community_against_truth(self, where: str, chart: dict[str, Any]) -> None:
        """A community chart's rows, where the truth computes its question's figures: the
        rows the gateway makes of the truth's answer (by their first column)."""
        asked = self._community_question(chart)
        definition = next((c for c in COMMUNITY_CHARTS if c.name == chart.get("chart")), None)
        if asked is None or definition is None:
            return  # found by the check of its groups
        last, question = asked
        asked_of: tuple[Any, ...]
        if isinstance(question, api.GetDistributionRequest):
            method, asked_of = "distribution", (Week.from_proto(question.week), tuple(question.dimensions))
        elif isinstance(question, api.GetFeatureAdoptionRequest):
            method, asked_of = "feature_adoption", (Week.from_proto(question.week),)
        elif isinstance(question, api.GetReleaseHealthRequest):
            method, asked_of = "release_health", (weeks_ending(last, question.window.weeks),)
        else:
            return  # trends: their groups and counts are checked

        def rows_of(model: Expected) -> dict[str, dict[str, Any]]:
            answer = getattr(model, method)(*asked_of)
            return {str(row[definition.columns[0]]): row for row in definition.rows(answer)}

        truth = self.strict if self.subgroups else self.lenient
        truth.small.clear()
        expected, lenient = rows_of(truth), rows_of(self.lenient)
        published = {str(row[definition.columns[0]]): row for row in chart["rows"]}
        for label in sorted(expected.keys() ^ published.keys()):
            if label in expected:
                self.fail(where, f"row {label!r} is missing, though the truth publishes it", 1)
            else:
                self.fail(where, f"row {label!r} is published, though the truth does not publish it", 1)
        for label in sorted(expected.keys() & published.keys()):
            for column in definition.columns[1:]:
                shown, true = published[label].get(column), expected[label].get(column)
                if _same_figure(shown, true):
                    continue
                if label in lenient and _same_figure(shown, lenient[label].get(column)):
                    what = f"publishes a consent-level subgroup below k ({self._subgroups_of(label)})"
                else:
                    what = "is not the truth's"
                self.fail(
                    where, f"row {label!r} {column} {what}: the truth {true}, published", _number(shown)
                )

    def run(self) -> list[Finding]:
        self.counts_are_multiples_of_k()
        self.groups_are_large_enough()
        self.differencing_attacks()
        self.figures_against_truth()
        return self.findings


def audit(published: Published, truth: Truth, subgroups: bool = True) -> list[Finding]:
    """Every way the published figures reveal a group smaller than k or differ from the
    truth (empty: none). `subgroups`: as Auditor's."""
    return Auditor(published, truth, subgroups).run()
