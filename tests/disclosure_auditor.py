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
   series against distributions, shares times totals. Any derived count
   between 1 and k-1 is a finding.

The gateway's public community figures (its JSON documents, `Published.community`)
get the same checks: every count a multiple of k, every group against the truth
(found by its label), and the same week's figure equal to the analytics' own.

`collect` asks every question of the analytics (in-process or over gRPC);
`audit` returns the findings, empty when nothing leaks.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
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
from printernizer_stats.analytics.queries import group_value
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.weeks import Week, parse_week, weeks_ending
from printernizer_stats.gateway.community import CHARTS as COMMUNITY_CHARTS
from printernizer_stats.gateway.community import COMBINED
from printernizer_stats.store.rollup_store import Tally

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
    jobs: tuple[int, int] = (3, 1)  # (completed, failed)


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
    """A valid weekly report saying `setup`."""
    completed, failed = setup.jobs
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
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
    for printer_type, count in sorted(setup.printers):
        report.printer_fleet.printers.add(printer_type=printer_type, count=count)  # type: ignore[arg-type]
    usage = report.usage
    usage.jobs_created, usage.jobs_completed, usage.jobs_failed = completed + failed, completed, failed
    if completed:
        usage.completed_job_durations.add(duration=P.JOB_DURATION_BUCKET_UNDER_1_HOUR, count=completed)
    if failed:
        usage.job_failures.add(reason=P.JOB_FAILURE_REASON_CANCELLED, count=failed)
    for feature, enabled in sorted(setup.features):
        report.features.add(feature=feature, enabled=enabled)  # type: ignore[arg-type]
    for error_type, component, count in sorted(setup.errors):
        report.errors.add(error_type=error_type, component=component, count=count)  # type: ignore[arg-type]
    return report


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
    """The group keys (as the analytics key them) that one installation's week falls into."""
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
            return {(_fleet_size(sum(n for _, n in setup.printers)), 0, 0)}
        case Dimension.DIMENSION_PRINTER_TYPE:
            return {(t, 0, 0) for t, _ in setup.printers}
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
    """What the fleet really is, week by week."""

    members: Sequence[Member]

    def active(self, week: Week) -> list[Setup]:
        return [m.weeks[week] for m in self.members if week in m.weeks]

    def count(self, week: Week, dimensions: Sequence[int], keys: Sequence[tuple[int, ...]]) -> int:
        return sum(
            all(key in values_of(setup, d) for d, key in zip(dimensions, keys, strict=True))
            for setup in self.active(week)
        )

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


class Auditor:
    def __init__(self, published: Published, truth: Truth) -> None:
        self.published = published
        self.truth = truth
        self.k = published.k
        self.findings: list[Finding] = []

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
            truth_total = len(self.truth.active(week))
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
            elif (hidden := len(self.truth.active(week)) - named) < self.k:
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
                    "share x total minus installations",
                    entry.share * answer.total_installations - entry.installations,
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

    def run(self) -> list[Finding]:
        self.counts_are_multiples_of_k()
        self.groups_are_large_enough()
        self.differencing_attacks()
        return self.findings


def audit(published: Published, truth: Truth) -> list[Finding]:
    """Every way the published figures reveal a group smaller than k (empty: none)."""
    return Auditor(published, truth).run()
