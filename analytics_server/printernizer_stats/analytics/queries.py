"""The maintainers' questions, answered from the weekly rollups (no gRPC here, and no SQL:
the rollups are read through the analytics store, printernizer_stats.store.analytics_store).

Definitions (also in the contract, analytics_service.proto):
- a week is an ISO week (UTC); "the last complete week" is the newest week
  whose end has passed;
- an installation is *active* in a week when it sent a report for that week
  (the report's period, not the day it arrived), *new* in the week of its
  first report, and *known* from that week on (until it is deleted);
- distributions count the active installations of one week by the values in
  their report for that week; shares are over all of them;
- no group smaller than `min_group_size` installations is published (see
  `privacy`). Fleet-wide totals (known, active, new) are not groups.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from printernizer.stats.v1 import analytics_service_pb2, common_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.countries import country_name
from printernizer_stats.common.refusals import FieldError
from printernizer_stats.common.weeks import Week, last_complete_week, weeks_ending
from printernizer_stats.store.analytics_store import AnalyticsStore, Group, RollupRead, Snapshot, WeeklyCounts
from printernizer_stats.store.rollup_store import Activity, Tally

from . import anomalies
from .anomalies import BASELINE_WEEKS, Alert
from .privacy import DEFAULT_MIN_GROUP_SIZE, Disclosure, Folded, ratio
from .release_health import (
    REGRESSION_ACTIVITIES,
    RELEASE_ACTIVITIES,
    RELEASE_HEALTH_WEEKS,
    WeekFigures,
    by_key,
    compared,
    failure_shares,
    releases,
    week_figures,
)
from .release_health import regressions as release_regressions
from .usage import job_series, usage_week

Dimension = analytics_service_pb2.Dimension
_V = Dimension.DIMENSION_APP_VERSION
FEATURES_PART = consent_levels.PRINTERS_AND_FEATURES
USAGE_PART, ERRORS_PART = consent_levels.USAGE, consent_levels.ERRORS
# The consent level from which each dimension is shared (the others: every report).
_PART_OF = {
    Dimension.DIMENSION_PRINTER_TYPE: consent_levels.PRINTERS_AND_FEATURES,
    Dimension.DIMENSION_FLEET_SIZE: consent_levels.PRINTERS_AND_FEATURES,
}
# The consent levels that share usage (and errors): the anomalies count per
# version only the installations sharing one of those parts.
_USAGE_OR_MORE = tuple(level for level in consent_levels.LEVELS if level >= USAGE_PART)
MAX_WEEKS = 104
DEFAULT_WEEKS = 12


def _week(field: str, given: common_pb2.IsoWeek | None, now: dt.datetime) -> Week:
    latest = last_complete_week(now)
    if given is None or (given.year == 0 and given.week == 0):
        return latest
    try:
        week = Week.from_proto(given)
    except ValueError:
        raise FieldError(field, f"{given.year}-W{given.week} is not an ISO week") from None
    if week > latest:
        raise FieldError(field, f"{week} is not complete yet (the last complete week is {latest})")
    return week


def window(request: analytics_service_pb2.WeekWindow, now: dt.datetime, field: str = "window") -> list[Week]:
    """The weeks a request's window covers, oldest first; bounded."""
    count = request.weeks or DEFAULT_WEEKS
    if count > MAX_WEEKS:
        raise FieldError(f"{field}.weeks", f"at most {MAX_WEEKS} weeks")
    until = _week(f"{field}.until", request.until if request.HasField("until") else None, now)
    try:
        # The weeks before the window are read too (growth, anomaly baselines).
        weeks_ending(until, count + BASELINE_WEEKS + 1)
    except ValueError:
        too_early = f"a window of {count} weeks ending {until} starts too early"
        raise FieldError(f"{field}.until", too_early) from None
    return weeks_ending(until, count)


# --- labels ---------------------------------------------------------------------------------

_FLEET_LABELS: dict[int, str] = {
    analytics_service_pb2.FLEET_SIZE_BUCKET_NONE: "no printers",
    analytics_service_pb2.FLEET_SIZE_BUCKET_ONE: "1 printer",
    analytics_service_pb2.FLEET_SIZE_BUCKET_TWO_TO_THREE: "2-3 printers",
    analytics_service_pb2.FLEET_SIZE_BUCKET_FOUR_TO_NINE: "4-9 printers",
    analytics_service_pb2.FLEET_SIZE_BUCKET_TEN_OR_MORE: "10 or more printers",
}

_ENUMS: dict[int, tuple[str, object, str]] = {
    Dimension.DIMENSION_DEPLOYMENT_MODE: ("deployment_mode", common_pb2.DeploymentMode, "DEPLOYMENT_MODE_"),
    Dimension.DIMENSION_PLATFORM: ("platform", common_pb2.Platform, "PLATFORM_"),
    Dimension.DIMENSION_ARCHITECTURE: ("architecture", common_pb2.CpuArchitecture, "CPU_ARCHITECTURE_"),
    Dimension.DIMENSION_PRINTER_TYPE: ("printer_type", common_pb2.PrinterType, "PRINTER_TYPE_"),
    Tally.FEATURES: ("feature", common_pb2.Feature, "FEATURE_"),
    Tally.ERRORS_BY_TYPE: ("error_type", common_pb2.ErrorType, "ERROR_TYPE_"),
    Tally.ERRORS_BY_COMPONENT: ("component", common_pb2.Component, "COMPONENT_"),
    Tally.JOB_FAILURES: ("job_failure_reason", common_pb2.JobFailureReason, "JOB_FAILURE_REASON_"),
    Tally.JOB_DURATIONS: ("job_duration", common_pb2.JobDurationBucket, "JOB_DURATION_BUCKET_"),
    Tally.COMPLETED_JOBS_BY_PRINTER_TYPE: ("printer_type", common_pb2.PrinterType, "PRINTER_TYPE_"),
    Tally.FAILED_JOBS_BY_PRINTER_TYPE: ("printer_type", common_pb2.PrinterType, "PRINTER_TYPE_"),
}
# Distributions ordered as versions (newest first), not by size.
_VERSIONS = {Dimension.DIMENSION_APP_VERSION, Dimension.DIMENSION_PYTHON_VERSION}
# Rollup codes whose key is an app version.
_APP_VERSIONS = {Dimension.DIMENSION_APP_VERSION, Tally.ERRORS_BY_VERSION}

ErrorGrouping = analytics_service_pb2.ErrorGrouping
_ERROR_GROUPINGS = {
    ErrorGrouping.ERROR_GROUPING_ERROR_TYPE: Tally.ERRORS_BY_TYPE,
    ErrorGrouping.ERROR_GROUPING_COMPONENT: Tally.ERRORS_BY_COMPONENT,
    ErrorGrouping.ERROR_GROUPING_ERROR_TYPE_AND_COMPONENT: Tally.ERRORS_BY_TYPE_AND_COMPONENT,
    ErrorGrouping.ERROR_GROUPING_APP_VERSION: Tally.ERRORS_BY_VERSION,
}


def _enum_label(enum: object, prefix: str, number: int) -> str:
    """ "Bambu Lab" for PRINTER_TYPE_BAMBU_LAB. A value the contract does not
    define, or UNSPECIFIED, is "unspecified": "Unknown" is a value of its own
    (PRINTER_TYPE_UNKNOWN, a family the app could not determine)."""
    descriptor = enum.DESCRIPTOR  # type: ignore[attr-defined]
    value = descriptor.values_by_number.get(number)
    if value is None or number == 0:
        return "unspecified"
    return str(value.name).removeprefix(prefix).replace("_", " ").title()


def group_value(dimension: int, key: Sequence[int]) -> analytics_service_pb2.GroupValue:
    """The API's value and display label for a group's key."""
    value = analytics_service_pb2.GroupValue()
    if dimension in _ENUMS:
        field, enum, prefix = _ENUMS[dimension]
        setattr(value, field, key[0])
        value.label = _enum_label(enum, prefix, key[0])
    elif dimension in _APP_VERSIONS:
        value.app_version.major, value.app_version.minor, value.app_version.patch = key[0], key[1], key[2]
        value.label = f"{key[0]}.{key[1]}.{key[2]}"
    elif dimension == Dimension.DIMENSION_PYTHON_VERSION:
        value.python_version.major, value.python_version.minor = key[0], key[1]
        value.label = f"{key[0]}.{key[1]}"
    elif dimension == Dimension.DIMENSION_COUNTRY:
        value.country = key[0]  # type: ignore[assignment]
        value.label = country_name(key[0])
    elif dimension == Dimension.DIMENSION_FLEET_SIZE:
        value.fleet_size = key[0]  # type: ignore[assignment]
        value.label = _FLEET_LABELS.get(key[0], "unknown")
    return value


# --- the queries ----------------------------------------------------------------------------


@dataclass
class Analytics:
    """Every answer goes through `disclosure` (printernizer_stats.analytics.privacy): small
    groups suppressed, every count rounded to a multiple of min_group_size. The figures
    come from `store`; the reads of one answer share one of its snapshots."""

    store: AnalyticsStore
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    @property
    def disclosure(self) -> Disclosure:
        return Disclosure(self.min_group_size)

    async def installation_trend(
        self, request: analytics_service_pb2.GetInstallationTrendRequest
    ) -> analytics_service_pb2.GetInstallationTrendResponse:
        weeks = window(request.window, self.clock())
        return analytics_service_pb2.GetInstallationTrendResponse(weeks=await self._installation_weeks(weeks))

    async def _installation_weeks(self, weeks: list[Week]) -> list[analytics_service_pb2.InstallationWeek]:
        before = weeks[0].previous()
        async with self.store.snapshot() as snapshot:
            active = await snapshot.active(before, weeks[-1])
            first_weeks = await snapshot.new_installations(weeks[0], weeks[-1])
            known = await snapshot.known_by(before)
        return self._trend(weeks, active, first_weeks, known)

    def _trend(
        self, weeks: list[Week], active: dict[int, int], first_weeks: dict[int, int], known: int
    ) -> list[analytics_service_pb2.InstallationWeek]:
        """The trend from each week's active and new installations (`active`
        from the week before the first on) and those `known` by that week."""
        before = weeks[0].previous()
        result = []
        count = self.disclosure.count
        previous_active = count(active.get(before.key, 0))
        for week in weeks:
            active_now = count(active.get(week.key, 0))
            new_now = first_weeks.get(week.key, 0)
            known += new_now
            result.append(
                analytics_service_pb2.InstallationWeek(
                    week=week.to_proto(),
                    known=count(known),
                    active=active_now,
                    new_installations=count(new_now),
                    growth=ratio(active_now - previous_active, previous_active),
                )
            )
            previous_active = active_now
        return result

    async def overview(
        self, request: analytics_service_pb2.GetOverviewRequest
    ) -> analytics_service_pb2.GetOverviewResponse:
        """Everything the dashboard's first screen shows, in one call: the same
        answers as the separate calls, from one snapshot, with each rollup read
        once (the anomalies' span holds the trend's weeks, the last week's
        versions and the installations sharing each part)."""
        weeks = window(request.window, self.clock())
        last = weeks[-1]
        span = _anomaly_span(weeks)
        shown = (
            Dimension.DIMENSION_DEPLOYMENT_MODE,
            Dimension.DIMENSION_COUNTRY,
            Dimension.DIMENSION_PRINTER_TYPE,
        )
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            rollups = await _AnomalyRollups.read(
                snapshot,
                span,
                *(RollupRead(d, last, last) for d in shown),
                RollupRead(Tally.FEATURES, last, last),
            )
            active_4_weeks = await self._active_within(snapshot, last, 4)
        deployment_modes, countries, printer_types, features = rollups.more
        weekly = rollups.weekly
        # Known by the week before the window: those before the span, and the span's new ones up to it.
        known = weekly.known_before + sum(n for w, n in weekly.new.items() if w < weeks[0].key)
        trend = self._trend(weeks, weekly.active, weekly.new, known)
        latest = trend[-1]
        active = analytics_service_pb2.ActiveInstallations(
            week=last.to_proto(),
            total_known=latest.known,
            active_last_week=latest.active,
            active_last_4_weeks=self.disclosure.count(active_4_weeks),
            week_over_week_growth=latest.growth,
        )
        total = weekly.active.get(last.key, 0)

        def distribution_of(
            dimension: Dimension.ValueType, per_week: dict[int, list[Group]]
        ) -> analytics_service_pb2.GetDistributionResponse:
            sharing = _sharing_in(rollups.shared, last, [dimension], total)
            return self._distribution([dimension], last, per_week.get(last.key, []), total, sharing)

        return analytics_service_pb2.GetOverviewResponse(
            active=active,
            installation_trend=trend,
            deployment_modes=distribution_of(Dimension.DIMENSION_DEPLOYMENT_MODE, deployment_modes),
            app_versions=distribution_of(_V, rollups.versions),
            countries=distribution_of(Dimension.DIMENSION_COUNTRY, countries),
            printer_types=distribution_of(Dimension.DIMENSION_PRINTER_TYPE, printer_types),
            feature_adoption=self._feature_adoption(
                last,
                features.get(last.key, []),
                total,
                _at_least(rollups.shared, FEATURES_PART).get(last.key, 0),
            ),
            anomalies=self._anomaly_list(weeks, rollups),
            min_group_size=self.min_group_size,
        )

    async def export(
        self, request: analytics_service_pb2.ExportAggregatesRequest
    ) -> analytics_service_pb2.ExportAggregatesResponse:
        """Every aggregated figure of the window (the same answers as the
        separate calls, so with the same small groups folded away)."""
        last = window(request.window, self.clock())[-1]  # a bad window is refused before any work
        async with self.store.snapshot():  # every answer below reads this one snapshot
            return await self._export(request, last)

    async def _export(
        self, request: analytics_service_pb2.ExportAggregatesRequest, last: Week
    ) -> analytics_service_pb2.ExportAggregatesResponse:
        overview = await self.overview(analytics_service_pb2.GetOverviewRequest(window=request.window))
        # The overview already holds four of the distributions: not asked twice.
        known = {
            d.dimensions[0]: d
            for d in (
                overview.deployment_modes,
                overview.app_versions,
                overview.countries,
                overview.printer_types,
            )
        }
        distributions = [
            known.get(dimension)
            or await self.distribution(
                analytics_service_pb2.GetDistributionRequest(dimensions=[dimension], week=last.to_proto())
            )
            for dimension in Dimension.values()
            if dimension != Dimension.DIMENSION_UNSPECIFIED
        ]
        return analytics_service_pb2.ExportAggregatesResponse(
            overview=overview,
            distributions=distributions,
            version_migration=await self.version_migration(
                analytics_service_pb2.GetVersionMigrationRequest(window=request.window)
            ),
            feature_trend=await self.feature_trend(
                analytics_service_pb2.GetFeatureTrendRequest(window=request.window)
            ),
            error_trend=await self.error_trend(
                analytics_service_pb2.GetErrorTrendRequest(window=request.window)
            ),
            error_rates=await self.error_rates(
                analytics_service_pb2.GetErrorRatesRequest(window=request.window)
            ),
            release_health=await self.release_health(
                analytics_service_pb2.GetReleaseHealthRequest(
                    window=analytics_service_pb2.WeekWindow(weeks=RELEASE_HEALTH_WEEKS, until=last.to_proto())
                )
            ),
            usage=await self.usage(analytics_service_pb2.GetUsageRequest(window=request.window)),
            error_rates_by_deployment_mode=await self.error_rates(
                analytics_service_pb2.GetErrorRatesRequest(window=request.window, by_deployment_mode=True)
            ),
            feature_adoption_by_version=await self.feature_adoption_by_version(
                analytics_service_pb2.GetFeatureAdoptionByVersionRequest(week=last.to_proto())
            ),
        )

    async def _active_within(self, snapshot: Snapshot, last: Week, count: int) -> int:
        """Installations active in at least one of `count` weeks ending with `last`."""
        first = weeks_ending(last, count)[0]
        # No report can be for a week after the last complete one.
        no_later_reports = last == last_complete_week(self.clock())
        return await snapshot.active_in_any_week(first, last, no_later_reports=no_later_reports)

    async def distribution(
        self, request: analytics_service_pb2.GetDistributionRequest
    ) -> analytics_service_pb2.GetDistributionResponse:
        dimensions = list(request.dimensions)
        if not 1 <= len(dimensions) <= 2:
            raise FieldError("dimensions", "give one dimension, or two for a combination")
        for index, dimension in enumerate(dimensions):
            if dimension not in Dimension.values() or dimension == Dimension.DIMENSION_UNSPECIFIED:
                raise FieldError(f"dimensions[{index}]", "is not a known dimension")
        if len(set(dimensions)) != len(dimensions):
            raise FieldError("dimensions[1]", "repeats the first dimension")
        week = _week("week", request.week if request.HasField("week") else None, self.clock())
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            if len(dimensions) == 1:
                groups, total = await _groups(snapshot, week, dimensions[0])
            else:
                groups, total = await _combinations(snapshot, week, dimensions[0], dimensions[1])
            shared: dict[int, list[Group]] = {}
            if _part_of(dimensions) > consent_levels.BASICS:  # every report shares the basics
                (shared,) = await _tallies(snapshot, [week], Tally.SHARED)
        sharing = _sharing_in(shared, week, dimensions, total)
        return self._distribution(dimensions, week, groups, total, sharing)

    def _distribution(
        self,
        dimensions: Sequence[Dimension.ValueType],
        week: Week,
        groups: list[Group],
        total: int,
        sharing: int,
    ) -> analytics_service_pb2.GetDistributionResponse:
        """A distribution from the week's groups, its active installations
        (`total`) and those of them that share the dimensions' part (`sharing`)."""
        # An installation that did not share a dimension's part is in none of its groups.
        groups = [g for g in groups if not _unshared(g.key, dimensions)]
        if Dimension.DIMENSION_PRINTER_TYPE in dimensions:
            folded = self.disclosure.drop_small(groups)  # an installation can have several types
        else:
            folded = self.disclosure.fold(groups)
        if len(dimensions) == 1 and dimensions[0] in _VERSIONS:
            folded = Folded(
                sorted(folded.groups, key=lambda g: _version_order(g.key)), folded.other, folded.hidden
            )
        published_sharing = self.disclosure.count(self._enough_shared(sharing, total))
        response = analytics_service_pb2.GetDistributionResponse(
            dimensions=dimensions,
            week=week.to_proto(),
            total_installations=self.disclosure.count(total),
            min_group_size=self.min_group_size,
            sharing_installations=published_sharing,
        )
        _add_entries(response, folded, dimensions, published_sharing)
        return response

    async def feature_adoption(
        self, request: analytics_service_pb2.GetFeatureAdoptionRequest
    ) -> analytics_service_pb2.GetFeatureAdoptionResponse:
        week = _week("week", request.week if request.HasField("week") else None, self.clock())
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            groups, total = await _groups(snapshot, week, Tally.FEATURES)
            sharing = await _sharing(snapshot, [week], FEATURES_PART)
        return self._feature_adoption(week, groups, total, sharing.get(week.key, 0))

    def _feature_adoption(
        self, week: Week, groups: list[Group], total: int, sharing_features: int
    ) -> analytics_service_pb2.GetFeatureAdoptionResponse:
        """Feature adoption from the week's feature groups, its active
        installations and those sharing their features."""
        published = self.disclosure.features(groups)
        sharing = self.disclosure.count(self._enough_shared(sharing_features, total))
        response = analytics_service_pb2.GetFeatureAdoptionResponse(
            week=week.to_proto(),
            total_installations=self.disclosure.count(total),
            min_group_size=self.min_group_size,
            sharing_installations=sharing,
        )
        for group in published.groups:
            response.features.add(
                feature=group_value(Tally.FEATURES, group.key),
                enabled_installations=group.installations,
                reporting_installations=group.amount,
                enabled_share=ratio(group.installations, sharing),
            )
        return response

    async def version_migration(
        self, request: analytics_service_pb2.GetVersionMigrationRequest
    ) -> analytics_service_pb2.GetVersionMigrationResponse:
        weeks = window(request.window, self.clock())
        async with self.store.snapshot() as snapshot:
            per_week, active = await _groups_over(snapshot, weeks, Dimension.DIMENSION_APP_VERSION)
        return analytics_service_pb2.GetVersionMigrationResponse(
            weeks=[w.to_proto() for w in weeks],
            series=self._series(
                weeks, per_week, active, Dimension.DIMENSION_APP_VERSION, self.disclosure.fold, _version_order
            ),
            min_group_size=self.min_group_size,
        )

    async def feature_trend(
        self, request: analytics_service_pb2.GetFeatureTrendRequest
    ) -> analytics_service_pb2.GetFeatureTrendResponse:
        weeks = window(request.window, self.clock())
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            per_week, active = await _groups_over(snapshot, weeks, Tally.FEATURES)
            shared = await _sharing(snapshot, weeks, FEATURES_PART)
        sharing = {w: self._enough_shared(n, active.get(w, 0)) for w, n in shared.items()}
        return analytics_service_pb2.GetFeatureTrendResponse(
            weeks=[w.to_proto() for w in weeks],
            series=self._series(
                weeks, per_week, sharing, Tally.FEATURES, self.disclosure.features, lambda key: key
            ),
            min_group_size=self.min_group_size,
        )

    async def error_trend(
        self, request: analytics_service_pb2.GetErrorTrendRequest
    ) -> analytics_service_pb2.GetErrorTrendResponse:
        weeks = window(request.window, self.clock())
        grouping = request.group_by or ErrorGrouping.ERROR_GROUPING_ERROR_TYPE
        if grouping not in _ERROR_GROUPINGS:
            raise FieldError("group_by", "is not a known grouping")
        code = _ERROR_GROUPINGS[grouping]
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            per_week, active = await _groups_over(snapshot, weeks, code)
            shared = await _sharing(snapshot, weeks, ERRORS_PART)
        # Shares are of the installations that shared their errors (a report without
        # errors is not an installation without errors).
        sharing = {w: self._enough_shared(n, active.get(w, 0)) for w, n in shared.items()}
        if code == Tally.ERRORS_BY_VERSION:  # each installation reports one version
            fold, order = self.disclosure.fold, _version_order
        else:  # an installation can report several error types and components
            fold, order = self.disclosure.drop_small, (lambda key: key)
        return analytics_service_pb2.GetErrorTrendResponse(
            weeks=[w.to_proto() for w in weeks],
            group_by=grouping,
            series=self._series(weeks, per_week, sharing, code, fold, order),
            min_group_size=self.min_group_size,
        )

    async def error_rates(
        self, request: analytics_service_pb2.GetErrorRatesRequest
    ) -> analytics_service_pb2.GetErrorRatesResponse:
        """Per app version, or per deployment mode and app version (folded by
        their active installations): errors per active installation, and the
        failed share of finished jobs, from the rounded figures."""
        weeks = window(request.window, self.clock())
        first, last = weeks[0], weeks[-1]
        # Per week and tally key: the errors, failed and completed jobs, the
        # installations sharing their errors and their usage, and the group's
        # installations. Keyed as the tallies are (the groups' keys are fewer to convert).
        figures: dict[tuple[int, tuple[int, ...]], list[int]] = {}

        def row(w: int, key: tuple[int, ...]) -> list[int]:
            found = figures.get((w, key))
            if found is None:
                found = figures[w, key] = [0, 0, 0, 0, 0, 0]
            return found

        def add(per_week: dict[int, list[Group]], column: int) -> None:
            amounts = column < 3
            for w, week_groups in per_week.items():
                for g in week_groups:
                    row(w, g.key)[column] += g.amount if amounts else g.installations

        tally_key: Callable[[tuple[int, ...]], tuple[int, ...]]
        if request.by_deployment_mode:
            tallies = (
                Tally.ERRORS_BY_DEPLOYMENT_AND_VERSION,
                Tally.FAILED_JOBS_BY_DEPLOYMENT_AND_VERSION,
                Tally.COMPLETED_JOBS_BY_DEPLOYMENT_AND_VERSION,
                Tally.ERRORS_SHARED_BY_DEPLOYMENT_AND_VERSION,
            )
            async with self.store.snapshot() as snapshot:
                groups = await snapshot.pairs(first, last, Dimension.DIMENSION_DEPLOYMENT_MODE, _V)
                errors, failed, completed, errors_shared = await snapshot.read(
                    *(RollupRead(code, first, last) for code in tallies)
                )
            # The failed-jobs tally's installations are those that shared their usage.
            for column, per_week in enumerate((errors, failed, completed, errors_shared, failed)):
                add(per_week, column)

            def tally_key(key: tuple[int, ...]) -> tuple[int, ...]:
                return (key[3], key[4], key[5], key[0])  # a pair (mode, version) as (version, mode)

            def values(key: tuple[int, ...]) -> list[analytics_service_pb2.GroupValue]:
                return [group_value(Dimension.DIMENSION_DEPLOYMENT_MODE, key[:3]), group_value(_V, key[3:])]

            def order(key: tuple[int, ...]) -> tuple[int, ...]:
                return (key[0], *_version_order(key[3:]))
        else:
            async with self.store.snapshot() as snapshot:
                groups, errors, failed, completed, shared = await snapshot.read(
                    RollupRead(_V, first, last),
                    RollupRead(Tally.ERRORS_BY_VERSION, first, last),
                    RollupRead(Tally.FAILED_JOBS_BY_VERSION, first, last),
                    RollupRead(Tally.COMPLETED_JOBS_BY_VERSION, first, last),
                    RollupRead(Tally.SHARED_BY_VERSION, first, last),
                )
            for column, per_week in enumerate((errors, failed, completed)):
                add(per_week, column)
            for column, level in ((3, ERRORS_PART), (4, USAGE_PART)):
                for (w, version), sharing in _by_version_at_least(shared, level).items():
                    row(w, (*version, 0))[column] += sharing  # keyed as the version tallies: 0 last

            def tally_key(key: tuple[int, ...]) -> tuple[int, ...]:
                return (*key, 0)

            order = _version_order

            def values(key: tuple[int, ...]) -> list[analytics_service_pb2.GroupValue]:
                return group_values(_V, key)

        for w, week_groups in groups.items():
            for g in week_groups:
                row(w, tally_key(g.key))[5] = g.installations
        folded = {w.key: self.disclosure.fold(groups.get(w.key, [])) for w in weeks}
        published = sorted({g.key for f in folded.values() for g in f.groups}, key=order)
        count, none = self.disclosure.count, [0, 0, 0, 0, 0, 0]

        def point(
            week: Week, keys: Iterable[tuple[int, ...]], installations: int
        ) -> analytics_service_pb2.SeriesPoint:
            rows = [figures.get((week.key, tally_key(key)), none) for key in keys]
            errors, failed, completed, sharing_errors, sharing_usage, whole = (
                sum(column) for column in zip(*rows, strict=True)
            )
            if not self._enough_shared(sharing_errors, whole):  # none shared their errors, or too few
                errors = sharing_errors = 0
            if not self._enough_shared(sharing_usage, whole):  # likewise their jobs
                failed = completed = 0
            errors, failed, completed, sharing_errors = map(
                count, (errors, failed, completed, sharing_errors)
            )
            return analytics_service_pb2.SeriesPoint(
                week=week.to_proto(),
                installations=installations,
                count=errors,
                rate=ratio(errors, sharing_errors),
                share=ratio(failed, failed + completed),
            )

        shown = {w: {g.key: g for g in f.groups} for w, f in folded.items()}
        series = []
        for key in published:
            line = analytics_service_pb2.Series(values=values(key))
            for week in weeks:
                group = shown[week.key].get(key)
                line.points.append(point(week, [key], group.installations) if group else _suppressed(week))
            series.append(line)
        if any(f.other is not None for f in folded.values()):
            other = analytics_service_pb2.Series(other=True)
            for week in weeks:
                f = folded[week.key]
                other.points.append(
                    point(week, f.hidden, f.other.installations) if f.other else _suppressed(week)
                )
            series.append(other)
        return analytics_service_pb2.GetErrorRatesResponse(
            weeks=[w.to_proto() for w in weeks],
            series=series,
            min_group_size=self.min_group_size,
            by_deployment_mode=request.by_deployment_mode,
        )

    async def release_health(
        self, request: analytics_service_pb2.GetReleaseHealthRequest
    ) -> analytics_service_pb2.GetReleaseHealthResponse:
        """Each app version over the window (by default its last
        RELEASE_HEALTH_WEEKS weeks), against the release before it."""
        given = analytics_service_pb2.WeekWindow()
        given.CopyFrom(request.window)
        given.weeks = given.weeks or RELEASE_HEALTH_WEEKS
        weeks = window(given, self.clock())
        async with self.store.snapshot() as snapshot:
            figures = await _release_weeks(snapshot, weeks)
        found = compared(releases(figures, self.disclosure))
        response = analytics_service_pb2.GetReleaseHealthResponse(
            weeks=[w.to_proto() for w in weeks], min_group_size=self.min_group_size
        )
        for release, previous, regressions in found:
            health = response.releases.add(
                version=group_value(_V, release.version),
                installations=release.installations,
                installation_weeks=release.installation_weeks,
                installation_weeks_with_unclean_shutdown=release.unclean_weeks,
                crash_free_rate=release.crash_free_rate,
                crash_free_suppressed=release.crash_free_suppressed,
                jobs_completed=release.jobs_completed,
                jobs_failed=release.jobs_failed,
                job_success_rate=release.job_success_rate,
                errors=release.errors,
                errors_per_installation=release.errors_per_installation,
                uptime_hours=release.uptime_hours,
                uptime_hours_per_installation=release.uptime_hours_per_installation,
                installation_weeks_sharing_usage=release.usage_weeks,
                installation_weeks_sharing_errors=release.error_weeks,
            )
            if release.crash_free_suppressed:
                health.installation_weeks_with_unclean_shutdown = 0
            for reason, installations, jobs, share in failure_shares(release):
                health.failure_reasons.add(
                    value=group_value(Tally.JOB_FAILURES, (reason,)),
                    installations=installations,
                    jobs=jobs,
                    share=share,
                )
            if previous is not None:
                health.previous.CopyFrom(group_value(_V, previous.version))
            for regression in regressions:
                health.regressions.add(
                    metric=regression.metric,
                    severity=regression.severity,
                    observed=regression.observed,
                    previous=regression.previous,
                    threshold=regression.threshold,
                    description=regression.description,
                )
        return response

    async def usage(
        self, request: analytics_service_pb2.GetUsageRequest
    ) -> analytics_service_pb2.GetUsageResponse:
        weeks = window(request.window, self.clock())
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            activity, active = await _groups_over(snapshot, weeks, Tally.ACTIVITY)
            durations, failures, completed_on, failed_on, shared = await _tallies(
                snapshot,
                weeks,
                Tally.JOB_DURATIONS,
                Tally.JOB_FAILURES,
                Tally.COMPLETED_JOBS_BY_PRINTER_TYPE,
                Tally.FAILED_JOBS_BY_PRINTER_TYPE,
                Tally.SHARED,
            )
        sharing = _at_least(shared, USAGE_PART)

        def total_of(kind: Activity) -> dict[int, int]:
            return {w: sum(g.amount for g in groups if g.key[0] == kind) for w, groups in activity.items()}

        def by_printer_type(
            code: Tally, per_week: dict[int, list[Group]]
        ) -> list[analytics_service_pb2.Series]:
            # A share of the jobs whose family was reported: reports before
            # schema version 3 count jobs but not their families.
            counted = {w: sum(g.amount for g in groups) for w, groups in per_week.items()}
            return job_series(weeks, per_week, counted, self.disclosure, lambda key: group_values(code, key))

        return analytics_service_pb2.GetUsageResponse(
            weeks=[
                usage_week(
                    w, active.get(w.key, 0), sharing.get(w.key, 0), activity.get(w.key, []), self.disclosure
                )
                for w in weeks
            ],
            job_durations=job_series(
                weeks,
                durations,
                total_of(Activity.JOBS_COMPLETED),
                self.disclosure,
                lambda key: group_values(Tally.JOB_DURATIONS, key),
            ),
            failure_reasons=job_series(
                weeks,
                failures,
                total_of(Activity.JOBS_FAILED),
                self.disclosure,
                lambda key: group_values(Tally.JOB_FAILURES, key),
            ),
            completed_jobs_by_printer_type=by_printer_type(
                Tally.COMPLETED_JOBS_BY_PRINTER_TYPE, completed_on
            ),
            failed_jobs_by_printer_type=by_printer_type(Tally.FAILED_JOBS_BY_PRINTER_TYPE, failed_on),
            min_group_size=self.min_group_size,
        )

    async def feature_adoption_by_version(
        self, request: analytics_service_pb2.GetFeatureAdoptionByVersionRequest
    ) -> analytics_service_pb2.GetFeatureAdoptionByVersionResponse:
        week = _week("week", request.week if request.HasField("week") else None, self.clock())
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            by_version, by_feature, shared = await _tallies(
                snapshot, [week], _V, Tally.FEATURES_BY_VERSION, Tally.SHARED_BY_VERSION
            )
        versions, features = by_version.get(week.key, []), by_feature.get(week.key, [])
        sharing = _by_version_at_least(shared, FEATURES_PART)
        exact = by_key(versions)
        response = analytics_service_pb2.GetFeatureAdoptionByVersionResponse(
            week=week.to_proto(), min_group_size=self.min_group_size
        )
        folded = self.disclosure.fold(versions)
        for version in sorted(folded.groups, key=lambda g: _version_order(g.key)):
            on_it = exact[version.key].installations
            shared_features = self.disclosure.count(
                self._enough_shared(sharing.get((week.key, version.key), 0), on_it)
            )
            adoption = response.versions.add(
                version=group_value(_V, version.key),
                installations=version.installations,
                sharing_installations=shared_features,
            )
            own = [Group(g.key[3:], g.installations, g.amount) for g in features if g.key[:3] == version.key]
            for group in self.disclosure.features(own).groups:
                adoption.features.add(
                    feature=group_value(Tally.FEATURES, group.key),
                    enabled_installations=group.installations,
                    reporting_installations=group.amount,
                    enabled_share=ratio(group.installations, shared_features),
                )
        return response

    async def anomalies(
        self, request: analytics_service_pb2.ListAnomaliesRequest
    ) -> analytics_service_pb2.ListAnomaliesResponse:
        weeks = window(request.window, self.clock())
        async with self.store.snapshot() as snapshot:  # every read of the answer, one snapshot
            rollups = await _AnomalyRollups.read(snapshot, _anomaly_span(weeks))
        return analytics_service_pb2.ListAnomaliesResponse(anomalies=self._anomaly_list(weeks, rollups))

    def _anomaly_list(
        self, weeks: list[Week], rollups: _AnomalyRollups
    ) -> list[analytics_service_pb2.Anomaly]:
        """Every rule of `anomalies` on every week of the window (all complete)."""
        span = rollups.span
        k = self.min_group_size
        versions, version_errors = rollups.versions, rollups.errors
        # Release regressions compare neither failure reasons nor uptime: neither was read.
        no_failures: dict[int, list[Group]] = {}
        release_figures = week_figures(
            versions,
            rollups.activity,
            version_errors,
            no_failures,
            rollups.shared_by_version,
            [w.key for w in span],
        )
        # The rules see only what is published: rounded figures, groups of at least k.
        count = self.disclosure.count
        active = {w: count(n) for w, n in rollups.weekly.active.items()}
        received = {w: count(n) for w, n in rollups.weekly.received.items()}
        # Every error row has one version: the fleet's errors are the versions' together.
        errors = {w: count(sum(g.amount for g in groups)) for w, groups in version_errors.items()}
        # Errors per installation: over those that shared their errors.
        sharing = {
            w: count(self._enough_shared(n, active.get(w, 0)))
            for w, n in _at_least(rollups.shared, ERRORS_PART).items()
        }
        rate = {w.key: ratio(errors.get(w.key, 0), sharing.get(w.key, 0)) for w in span}
        version_sharing = _by_version_at_least(rollups.shared_by_version, ERRORS_PART)
        by_version: dict[tuple[int, ...], dict[int, tuple[int, int]]] = {}
        for week_key, groups in versions.items():
            errors_of = {_version(g.key): g.amount for g in version_errors.get(week_key, [])}
            exact = {g.key: g.installations for g in groups}
            for g in self.disclosure.fold(groups).groups:
                shared = version_sharing.get((week_key, g.key), 0)
                sharing_errors = count(self._enough_shared(shared, exact[g.key]))
                version_errors_now = count(errors_of.get(g.key, 0)) if sharing_errors else 0
                by_version.setdefault(g.key, {})[week_key] = (sharing_errors, version_errors_now)
        alerts: list[Alert] = []
        for index, week in enumerate(span[BASELINE_WEEKS:], start=BASELINE_WEEKS):
            before = [w.key for w in span[index - BASELINE_WEEKS : index]]
            key = week.key
            alerts += anomalies.active_alerts(key, active.get(key, 0), [active.get(w, 0) for w in before], k)
            fleet_history = [rate[w] for w in before]
            alerts += anomalies.error_alerts(key, errors.get(key, 0), sharing.get(key, 0), fleet_history)
            alerts += anomalies.volume_alerts(
                key, received.get(key, 0), [received.get(w, 0) for w in before], k
            )
            for version, figures in by_version.items():
                installations, version_errors_now = figures.get(key, (0, 0))
                if installations == 0:
                    continue  # not published this week, so not an alert's scope either
                history = [ratio(e, n) for n, e in (figures.get(w, (0, 0)) for w in before)]
                if anomalies.baseline(history) is None:
                    history = fleet_history  # a new version is compared with the fleet
                alerts += anomalies.error_alerts(
                    key,
                    version_errors_now,
                    installations,
                    history,
                    kind=anomalies.Kind.ANOMALY_KIND_VERSION_ERROR_SPIKE,
                    scope=version,
                )
        first = len(span) - len(weeks) - RELEASE_HEALTH_WEEKS + 1  # the weeks up to the window's first
        alerts += self._release_alerts(weeks, release_figures[first:])
        alerts.sort(key=lambda a: (-a.week, -a.severity, a.kind, a.scope))
        result = []
        for alert in alerts:
            anomaly = analytics_service_pb2.Anomaly(
                kind=alert.kind,  # type: ignore[arg-type]
                severity=alert.severity,  # type: ignore[arg-type]
                week=Week.from_key(alert.week).to_proto(),
                observed=alert.observed,
                baseline=alert.baseline,
                threshold=alert.threshold,
                description=alert.description,
            )
            if alert.scope:
                anomaly.scope.append(group_value(Dimension.DIMENSION_APP_VERSION, alert.scope))
            result.append(anomaly)
        return result

    def _release_alerts(self, weeks: list[Week], figures: list[WeekFigures]) -> list[Alert]:
        """Release regressions: for each week of the window, release health over
        the RELEASE_HEALTH_WEEKS weeks up to it (`figures`: from the first of
        those of the window's first week), for the versions published in that
        week."""
        alerts = []
        for index, week in enumerate(weeks):
            health = releases(figures[index : index + RELEASE_HEALTH_WEEKS], self.disclosure)
            for release, previous in itertools.pairwise(health):  # each against the release before it
                if release.installations == 0:
                    continue  # not in use this week: raised while it was
                for regression in release_regressions(release, previous):
                    alerts.append(
                        Alert(
                            anomalies.Kind.ANOMALY_KIND_RELEASE_REGRESSION,
                            regression.severity,
                            week.key,
                            regression.observed,
                            regression.previous,
                            regression.threshold,
                            f"{regression.description}; {_label(release.version)} against the previous "
                            f"release {_label(previous.version)}, over the {RELEASE_HEALTH_WEEKS} weeks "
                            "up to this one",
                            release.version,
                        )
                    )
        return alerts

    def _enough_shared(self, sharing: int, whole: int) -> int:
        """`sharing` installations of a group of `whole` that shared a part, or 0
        where they are too few to publish (they then count as not having shared it)."""
        return sharing if self.disclosure.enough_shared(sharing, whole) else 0

    def _series(
        self,
        weeks: list[Week],
        per_week: dict[int, list[Group]],
        active: dict[int, int],
        dimension: int,
        fold: Callable[[list[Group]], Folded],
        order: Callable[[tuple[int, ...]], tuple[int, ...]],
    ) -> list[analytics_service_pb2.Series]:
        """One series per group that is published in at least one week of the
        window (`fold` decides, per week); in a week where it is not, its point
        is marked suppressed. Where `fold` keeps an "other" group, an `other`
        series follows. Shares are over `active`, the week's installations (or
        those of them that shared the part), rounded."""
        folded = {week.key: fold(per_week.get(week.key, [])) for week in weeks}
        published = {g.key for f in folded.values() for g in f.groups}
        active = {w: self.disclosure.count(n) for w, n in active.items()}
        shown = {w: {g.key: g for g in f.groups} for w, f in folded.items()}
        series = []
        for key in sorted(published, key=order):
            line = analytics_service_pb2.Series(values=group_values(dimension, key))
            for week in weeks:
                group = shown[week.key].get(key)
                line.points.append(_point(week, group, active.get(week.key, 0)))
            series.append(line)
        if any(f.other is not None for f in folded.values()):
            other = analytics_service_pb2.Series(other=True)
            for week in weeks:
                other.points.append(_point(week, folded[week.key].other, active.get(week.key, 0)))
            series.append(other)
        return series


# --- reads within one answer's snapshot ---------------------------------------------------------


async def _tallies(snapshot: Snapshot, weeks: list[Week], *rollups: int) -> list[dict[int, list[Group]]]:
    """Each week's groups of several rollups (dimensions or tallies), in one statement."""
    return await snapshot.read(*(RollupRead(rollup, weeks[0], weeks[-1]) for rollup in rollups))


async def _groups_over(
    snapshot: Snapshot, weeks: list[Week], dimension: int
) -> tuple[dict[int, list[Group]], dict[int, int]]:
    """Each week's groups of one dimension (or tally), and each week's active installations."""
    (per_week,) = await _tallies(snapshot, weeks, dimension)
    return per_week, await snapshot.active(weeks[0], weeks[-1])


async def _groups(snapshot: Snapshot, week: Week, dimension: int) -> tuple[list[Group], int]:
    """One week's groups of one dimension, and its active installations."""
    per_week, active = await _groups_over(snapshot, [week], dimension)
    return per_week.get(week.key, []), active.get(week.key, 0)


async def _combinations(snapshot: Snapshot, week: Week, first: int, second: int) -> tuple[list[Group], int]:
    """Installations by two dimensions at once (from the pair rollups), and the week's active ones."""
    groups = await snapshot.pairs(week, week, first, second)
    active = await snapshot.active(week, week)
    return groups.get(week.key, []), active.get(week.key, 0)


async def _sharing(snapshot: Snapshot, weeks: list[Week], level: int) -> dict[int, int]:
    """Each week's active installations whose reports share the part of `level`."""
    (shared,) = await _tallies(snapshot, weeks, Tally.SHARED)
    return _at_least(shared, level)


async def _release_weeks(snapshot: Snapshot, weeks: list[Week]) -> list[WeekFigures]:
    """The rollups release health reads, week by week."""
    first, last = weeks[0], weeks[-1]
    versions, errors, failures, shared, activity = await snapshot.read(
        RollupRead(_V, first, last),
        RollupRead(Tally.ERRORS_BY_VERSION, first, last),
        RollupRead(Tally.JOB_FAILURES_BY_VERSION, first, last),
        RollupRead(Tally.SHARED_BY_VERSION, first, last),
        RollupRead(Tally.ACTIVITY_BY_VERSION, first, last, RELEASE_ACTIVITIES),
    )
    return week_figures(versions, activity, errors, failures, shared, [w.key for w in weeks])


def _anomaly_span(weeks: list[Week]) -> list[Week]:
    """The weeks the anomaly rules read: the window's and the baseline weeks before it."""
    return weeks_ending(weeks[-1], len(weeks) + BASELINE_WEEKS)


@dataclass(frozen=True)
class _AnomalyRollups:
    """What the anomaly rules read over their `span`, in one snapshot (the
    overview shares it: the trend's weekly figures, the last week's versions
    and the installations sharing each part are among it)."""

    span: list[Week]
    versions: dict[int, list[Group]]
    errors: dict[int, list[Group]]  # by version
    shared: dict[int, list[Group]]
    shared_by_version: dict[int, list[Group]]  # those sharing usage or more
    activity: dict[int, list[Group]]  # by version: what release regressions compare
    weekly: WeeklyCounts
    more: list[dict[int, list[Group]]]  # the `more` reads asked for, in order

    @classmethod
    async def read(cls, snapshot: Snapshot, span: list[Week], *more: RollupRead) -> _AnomalyRollups:
        """The rollups over `span` (with `more` in the same statement)."""
        first, last = span[0], span[-1]
        versions, errors, shared, shared_by_version, activity, *found = await snapshot.read(
            RollupRead(_V, first, last),
            RollupRead(Tally.ERRORS_BY_VERSION, first, last),
            RollupRead(Tally.SHARED, first, last),
            RollupRead(Tally.SHARED_BY_VERSION, first, last, _USAGE_OR_MORE),
            RollupRead(Tally.ACTIVITY_BY_VERSION, first, last, REGRESSION_ACTIVITIES),
            *more,
        )
        weekly = await snapshot.weekly(first, last)
        return cls(span, versions, errors, shared, shared_by_version, activity, weekly, found)


def group_values(code: int, key: Sequence[int]) -> list[analytics_service_pb2.GroupValue]:
    """A group's values: one, or two for an (error type, component) pair."""
    if code == Tally.ERRORS_BY_TYPE_AND_COMPONENT:
        return [group_value(Tally.ERRORS_BY_TYPE, key[:1]), group_value(Tally.ERRORS_BY_COMPONENT, key[1:2])]
    return [group_value(code, key)]


def _version(key: tuple[int, ...]) -> tuple[int, ...]:
    """The app version of a tally's key by version (its first three values), as the
    version groups' keys have it."""
    return key[:3]


def _part_of(dimensions: Sequence[Dimension.ValueType]) -> int:
    """The consent level from which a report shares every one of `dimensions`."""
    return max(_PART_OF.get(d, consent_levels.BASICS) for d in dimensions)


def _sharing_in(
    shared: dict[int, list[Group]], week: Week, dimensions: Sequence[Dimension.ValueType], total: int
) -> int:
    """The week's active installations that share `dimensions`' part (from the
    SHARED tally `shared`): all of them (`total`) for a part every report shares."""
    part = _part_of(dimensions)
    return _at_least(shared, part).get(week.key, 0) if part > consent_levels.BASICS else total


def _at_least(shared: dict[int, list[Group]], level: int) -> dict[int, int]:
    """Per week, the installations of the SHARED tally at `level` or above."""
    return {w: sum(g.installations for g in groups if g.key[0] >= level) for w, groups in shared.items()}


def _by_version_at_least(
    shared: dict[int, list[Group]], level: int
) -> dict[tuple[int, tuple[int, ...]], int]:
    """Per (week, app version), the installations of SHARED_BY_VERSION at `level` or above."""
    sharing: dict[tuple[int, tuple[int, ...]], int] = {}
    for week, groups in shared.items():
        for g in groups:
            if g.key[3] >= level:
                at = (week, g.key[:3])
                sharing[at] = sharing.get(at, 0) + g.installations
    return sharing


def _unshared(key: tuple[int, ...], dimensions: Sequence[int]) -> bool:
    """Whether a group's key holds a fleet size that was not shared (UNSPECIFIED)."""
    return any(
        d == Dimension.DIMENSION_FLEET_SIZE
        and key[3 * i] == analytics_service_pb2.FLEET_SIZE_BUCKET_UNSPECIFIED
        for i, d in enumerate(dimensions)
    )


def _label(version: tuple[int, ...]) -> str:
    return group_value(_V, version).label


def _version_order(key: tuple[int, ...]) -> tuple[int, ...]:
    """Newest version first (as numbers: 2.10 is newer than 2.9)."""
    return tuple(-part for part in key)


def _suppressed(week: Week) -> analytics_service_pb2.SeriesPoint:
    """A week in which a group is not published: no figures, and marked so."""
    return analytics_service_pb2.SeriesPoint(week=week.to_proto(), suppressed=True)


def _point(week: Week, group: Group | None, active: int) -> analytics_service_pb2.SeriesPoint:
    """A published (already rounded) group's point; shares over the rounded active installations."""
    if group is None:
        return _suppressed(week)
    return analytics_service_pb2.SeriesPoint(
        week=week.to_proto(),
        installations=group.installations,
        share=ratio(group.installations, active),
        count=group.amount,
    )


def _add_entries(
    response: analytics_service_pb2.GetDistributionResponse,
    folded: Folded,
    dimensions: Sequence[int],
    total: int,
) -> None:
    """The published (rounded) groups as entries; shares over the rounded `total`."""
    counts_printers = Dimension.DIMENSION_PRINTER_TYPE in dimensions
    for group in folded.groups:
        entry = response.entries.add(
            installations=group.installations,
            share=ratio(group.installations, total),
            printers=group.amount if counts_printers else 0,
        )
        for index, dimension in enumerate(dimensions):
            entry.values.append(group_value(dimension, group.key[3 * index : 3 * index + 3]))
    if folded.other is not None:
        response.entries.add(
            other=True,
            installations=folded.other.installations,
            share=ratio(folded.other.installations, total),
            printers=folded.other.amount if counts_printers else 0,
        )
