"""The maintainers' questions, answered from the weekly rollups (no gRPC here).

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

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

from printernizer.stats.v1 import analytics_service_pb2, common_pb2
from printernizer_stats.common.countries import country_name
from printernizer_stats.common.refusals import FieldError
from printernizer_stats.common.weeks import Week, last_complete_week
from printernizer_stats.store import schema
from printernizer_stats.store.rollup_store import Tally
from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import anomalies
from .anomalies import BASELINE_WEEKS
from .privacy import DEFAULT_MIN_GROUP_SIZE, Disclosure, Folded, Group, ratio

Dimension = analytics_service_pb2.Dimension
_ZERO = literal(0)
MAX_WEEKS = 104
DEFAULT_WEEKS = 12


def weeks_ending(until: Week, count: int) -> list[Week]:
    """`count` weeks ending with `until`, oldest first."""
    weeks = [until]
    while len(weeks) < count:
        weeks.append(weeks[-1].previous())
    return weeks[::-1]


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
    groups suppressed, every count rounded to a multiple of min_group_size."""

    engine: AsyncEngine
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    @property
    def disclosure(self) -> Disclosure:
        return Disclosure(self.min_group_size)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements all see one snapshot of the rollups, so
        a refresh committing between two of them cannot tear an answer (a
        week's total counted, its groups not yet). PostgreSQL: REPEATABLE READ;
        SQLite: one read transaction (writers wait for it; it is short)."""
        async with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execution_options(isolation_level="REPEATABLE READ")
            elif connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN")
            yield connection

    async def installation_trend(
        self, request: analytics_service_pb2.GetInstallationTrendRequest
    ) -> analytics_service_pb2.GetInstallationTrendResponse:
        weeks = window(request.window, self.clock())
        return analytics_service_pb2.GetInstallationTrendResponse(weeks=await self._installation_weeks(weeks))

    async def _installation_weeks(self, weeks: list[Week]) -> list[analytics_service_pb2.InstallationWeek]:
        before = weeks[0].previous()
        totals, new = schema.weekly_totals, schema.weekly_new
        async with self.reading() as connection:
            active = dict(
                (
                    await connection.execute(
                        select(totals.c.week, totals.c.active).where(
                            totals.c.week.between(before.key, weeks[-1].key)
                        )
                    )
                ).all()
            )
            first_weeks = dict(
                (
                    await connection.execute(
                        select(new.c.week, new.c.installations).where(
                            new.c.week.between(weeks[0].key, weeks[-1].key)
                        )
                    )
                ).all()
            )
            known = int(
                await connection.scalar(
                    select(func.coalesce(func.sum(new.c.installations), 0)).where(new.c.week <= before.key)
                )
                or 0
            )
        result = []
        count = self.disclosure.count
        previous_active = count(int(active.get(before.key, 0)))
        for week in weeks:
            active_now = count(int(active.get(week.key, 0)))
            new_now = int(first_weeks.get(week.key, 0))
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
        """Everything the dashboard's first screen shows, in one call."""
        weeks = window(request.window, self.clock())
        last = weeks[-1]
        trend = await self._installation_weeks(weeks)
        latest = trend[-1]
        active = analytics_service_pb2.ActiveInstallations(
            week=last.to_proto(),
            total_known=latest.known,
            active_last_week=latest.active,
            active_last_4_weeks=self.disclosure.count(await self._active_within(last, 4)),
            week_over_week_growth=latest.growth,
        )

        async def distribution_of(
            dimension: analytics_service_pb2.Dimension.ValueType,
        ) -> analytics_service_pb2.GetDistributionResponse:
            request = analytics_service_pb2.GetDistributionRequest(
                dimensions=[dimension], week=last.to_proto()
            )
            return await self.distribution(request)

        return analytics_service_pb2.GetOverviewResponse(
            active=active,
            installation_trend=trend,
            deployment_modes=await distribution_of(Dimension.DIMENSION_DEPLOYMENT_MODE),
            app_versions=await distribution_of(Dimension.DIMENSION_APP_VERSION),
            countries=await distribution_of(Dimension.DIMENSION_COUNTRY),
            printer_types=await distribution_of(Dimension.DIMENSION_PRINTER_TYPE),
            feature_adoption=await self.feature_adoption(
                analytics_service_pb2.GetFeatureAdoptionRequest(week=last.to_proto())
            ),
            anomalies=await self._anomalies(weeks),
            min_group_size=self.min_group_size,
        )

    async def export(
        self, request: analytics_service_pb2.ExportAggregatesRequest
    ) -> analytics_service_pb2.ExportAggregatesResponse:
        """Every aggregated figure of the window (the same answers as the
        separate calls, so with the same small groups folded away)."""
        last = window(request.window, self.clock())[-1]  # a bad window is refused before any work
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
        )

    async def _active_within(self, last: Week, count: int) -> int:
        """Installations active in at least one of `count` weeks ending with `last`."""
        first = weeks_ending(last, count)[0]
        latest, reports = schema.weekly_latest, schema.reports
        async with self.reading() as connection:
            if last == last_complete_week(self.clock()):
                # No report can be newer than the last complete week: the
                # installations by their newest week tell (a few rollup rows).
                statement = select(func.sum(latest.c.installations)).where(latest.c.week >= first.key)
            else:
                statement = select(func.count(func.distinct(reports.c.installation_id))).where(
                    reports.c.week.between(first.key, last.key)
                )
            return int(await connection.scalar(statement) or 0)

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
        if len(dimensions) == 1:
            groups, total = await self._groups(week, dimensions[0])
        else:
            groups, total = await self._combinations(week, dimensions[0], dimensions[1])
        if Dimension.DIMENSION_PRINTER_TYPE in dimensions:
            folded = self.disclosure.drop_small(groups)  # an installation can have several types
        else:
            folded = self.disclosure.fold(groups)
        if len(dimensions) == 1 and dimensions[0] in _VERSIONS:
            folded = Folded(
                sorted(folded.groups, key=lambda g: _version_order(g.key)), folded.other, folded.hidden
            )
        published_total = self.disclosure.count(total)
        response = analytics_service_pb2.GetDistributionResponse(
            dimensions=dimensions,
            week=week.to_proto(),
            total_installations=published_total,
            min_group_size=self.min_group_size,
        )
        _add_entries(response, folded, dimensions, published_total)
        return response

    async def _combinations(self, week: Week, first: int, second: int) -> tuple[list[Group], int]:
        """Installations by two dimensions at once (from the pair rollups)."""
        pairs = schema.weekly_pairs
        low, high = sorted((first, second))
        async with self.reading() as connection:
            rows = (
                await connection.execute(
                    select(
                        pairs.c.first_a, pairs.c.first_b, pairs.c.first_c,
                        pairs.c.second_a, pairs.c.second_b, pairs.c.second_c,
                        pairs.c.installations, pairs.c.amount,
                    ).where(pairs.c.week == week.key, pairs.c.first == low, pairs.c.second == high)
                )
            ).all()  # fmt: skip
            total = await connection.scalar(
                select(schema.weekly_totals.c.active).where(schema.weekly_totals.c.week == week.key)
            )
        groups = []
        for row in rows:
            key = tuple(int(v) for v in row[:6])
            if first > second:  # stored in dimension order; asked the other way round
                key = key[3:] + key[:3]
            groups.append(Group(key, int(row[6]), int(row[7])))
        return groups, int(total or 0)

    async def feature_adoption(
        self, request: analytics_service_pb2.GetFeatureAdoptionRequest
    ) -> analytics_service_pb2.GetFeatureAdoptionResponse:
        week = _week("week", request.week if request.HasField("week") else None, self.clock())
        groups, total = await self._groups(week, Tally.FEATURES)
        published = self.disclosure.features(groups)
        total = self.disclosure.count(total)
        response = analytics_service_pb2.GetFeatureAdoptionResponse(
            week=week.to_proto(), total_installations=total, min_group_size=self.min_group_size
        )
        for group in published.groups:
            response.features.add(
                feature=group_value(Tally.FEATURES, group.key),
                enabled_installations=group.installations,
                reporting_installations=group.amount,
                enabled_share=ratio(group.installations, total),
            )
        return response

    async def version_migration(
        self, request: analytics_service_pb2.GetVersionMigrationRequest
    ) -> analytics_service_pb2.GetVersionMigrationResponse:
        weeks = window(request.window, self.clock())
        per_week, active = await self._groups_over(weeks, Dimension.DIMENSION_APP_VERSION)
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
        per_week, active = await self._groups_over(weeks, Tally.FEATURES)
        return analytics_service_pb2.GetFeatureTrendResponse(
            weeks=[w.to_proto() for w in weeks],
            series=self._series(
                weeks, per_week, active, Tally.FEATURES, self.disclosure.features, lambda key: key
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
        per_week, active = await self._groups_over(weeks, code)
        if code == Tally.ERRORS_BY_VERSION:  # each installation reports one version
            fold, order = self.disclosure.fold, _version_order
        else:  # an installation can report several error types and components
            fold, order = self.disclosure.drop_small, (lambda key: key)
        return analytics_service_pb2.GetErrorTrendResponse(
            weeks=[w.to_proto() for w in weeks],
            group_by=grouping,
            series=self._series(weeks, per_week, active, code, fold, order),
            min_group_size=self.min_group_size,
        )

    async def error_rates(
        self, request: analytics_service_pb2.GetErrorRatesRequest
    ) -> analytics_service_pb2.GetErrorRatesResponse:
        """Per app version (folded by its active installations): errors per
        active installation, and the failed share of finished jobs, from the
        rounded figures."""
        weeks = window(request.window, self.clock())
        versions, _ = await self._groups_over(weeks, Dimension.DIMENSION_APP_VERSION)
        sums = {}
        for code in (Tally.ERRORS_BY_VERSION, Tally.FAILED_JOBS_BY_VERSION, Tally.COMPLETED_JOBS_BY_VERSION):
            per_week, _ = await self._groups_over(weeks, code)
            sums[code] = {(w, g.key): g.amount for w, groups in per_week.items() for g in groups}
        folded = {w.key: self.disclosure.fold(versions.get(w.key, [])) for w in weeks}
        published = sorted({g.key for f in folded.values() for g in f.groups}, key=_version_order)
        count = self.disclosure.count

        def point(
            week: Week, keys: Iterable[tuple[int, ...]], installations: int
        ) -> analytics_service_pb2.SeriesPoint:
            errors, failed, completed = (
                count(sum(sums[code].get((week.key, key), 0) for key in keys))
                for code in (
                    Tally.ERRORS_BY_VERSION,
                    Tally.FAILED_JOBS_BY_VERSION,
                    Tally.COMPLETED_JOBS_BY_VERSION,
                )
            )
            return analytics_service_pb2.SeriesPoint(
                week=week.to_proto(),
                installations=installations,
                count=errors,
                rate=ratio(errors, installations),
                share=ratio(failed, failed + completed),
            )

        series = []
        for key in published:
            line = analytics_service_pb2.Series(values=group_values(Dimension.DIMENSION_APP_VERSION, key))
            for week in weeks:
                group = next((g for g in folded[week.key].groups if g.key == key), None)
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
            weeks=[w.to_proto() for w in weeks], series=series, min_group_size=self.min_group_size
        )

    async def anomalies(
        self, request: analytics_service_pb2.ListAnomaliesRequest
    ) -> analytics_service_pb2.ListAnomaliesResponse:
        weeks = window(request.window, self.clock())
        return analytics_service_pb2.ListAnomaliesResponse(anomalies=await self._anomalies(weeks))

    async def _anomalies(self, weeks: list[Week]) -> list[analytics_service_pb2.Anomaly]:
        """Every rule of `anomalies` on every week of the window (all complete)."""
        span = weeks_ending(weeks[-1], len(weeks) + BASELINE_WEEKS)
        k = self.min_group_size
        versions, active = await self._groups_over(span, Dimension.DIMENSION_APP_VERSION)
        version_errors, _ = await self._groups_over(span, Tally.ERRORS_BY_VERSION)
        pairs, _ = await self._groups_over(span, Tally.ERRORS_BY_TYPE_AND_COMPONENT)
        arrivals_table = schema.weekly_arrivals
        async with self.reading() as connection:
            received = dict(
                (
                    await connection.execute(
                        select(arrivals_table.c.week, arrivals_table.c.reports).where(
                            arrivals_table.c.week.between(span[0].key, span[-1].key)
                        )
                    )
                ).all()
            )
        # The rules see only what is published: rounded figures, groups of at least k.
        count = self.disclosure.count
        active = {w: count(n) for w, n in active.items()}
        received = {w: count(int(n)) for w, n in received.items()}
        errors = {w: count(sum(g.amount for g in groups)) for w, groups in pairs.items()}
        rate = {w.key: ratio(errors.get(w.key, 0), active.get(w.key, 0)) for w in span}
        by_version: dict[tuple[int, ...], dict[int, tuple[int, int]]] = {}
        for week_key, groups in versions.items():
            errors_of = {g.key: g.amount for g in version_errors.get(week_key, [])}
            for g in self.disclosure.fold(groups).groups:
                by_version.setdefault(g.key, {})[week_key] = (g.installations, count(errors_of.get(g.key, 0)))
        alerts: list[anomalies.Alert] = []
        for index, week in enumerate(span[BASELINE_WEEKS:], start=BASELINE_WEEKS):
            before = [w.key for w in span[index - BASELINE_WEEKS : index]]
            key = week.key
            alerts += anomalies.active_alerts(key, active.get(key, 0), [active.get(w, 0) for w in before], k)
            fleet_history = [rate[w] for w in before]
            alerts += anomalies.error_alerts(key, errors.get(key, 0), active.get(key, 0), fleet_history)
            alerts += anomalies.volume_alerts(
                key, int(received.get(key, 0)), [int(received.get(w, 0)) for w in before], k
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

    async def _groups_over(
        self, weeks: list[Week], dimension: int
    ) -> tuple[dict[int, list[Group]], dict[int, int]]:
        """Each week's groups of one dimension (or tally), and each week's active installations."""
        totals = schema.weekly_totals
        if isinstance(dimension, Tally):
            groups, kind = schema.weekly_tallies, schema.weekly_tallies.c.tally
        else:
            groups, kind = schema.weekly_groups, schema.weekly_groups.c.dimension
        span = (weeks[0].key, weeks[-1].key)
        per_week: dict[int, list[Group]] = {}
        async with self.reading() as connection:
            rows = await connection.execute(
                select(
                    groups.c.week,
                    groups.c.value_a,
                    groups.c.value_b,
                    groups.c.value_c,
                    groups.c.installations,
                    groups.c.amount,
                ).where(groups.c.week.between(*span), kind == dimension)
            )
            for week, a, b, c, n, amount in rows:
                per_week.setdefault(int(week), []).append(
                    Group((int(a), int(b), int(c)), int(n), int(amount))
                )
            active = dict(
                (
                    await connection.execute(
                        select(totals.c.week, totals.c.active).where(totals.c.week.between(*span))
                    )
                ).all()
            )
        return per_week, {int(w): int(n) for w, n in active.items()}

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
        series follows. Shares are over the week's rounded active installations."""
        folded = {week.key: fold(per_week.get(week.key, [])) for week in weeks}
        published = {g.key for f in folded.values() for g in f.groups}
        active = {w: self.disclosure.count(n) for w, n in active.items()}
        series = []
        for key in sorted(published, key=order):
            line = analytics_service_pb2.Series(values=group_values(dimension, key))
            for week in weeks:
                group = next((g for g in folded[week.key].groups if g.key == key), None)
                line.points.append(_point(week, group, active.get(week.key, 0)))
            series.append(line)
        if any(f.other is not None for f in folded.values()):
            other = analytics_service_pb2.Series(other=True)
            for week in weeks:
                other.points.append(_point(week, folded[week.key].other, active.get(week.key, 0)))
            series.append(other)
        return series

    async def _groups(self, week: Week, dimension: int) -> tuple[list[Group], int]:
        """One week's groups of one dimension, and its active installations."""
        per_week, active = await self._groups_over([week], dimension)
        return per_week.get(week.key, []), active.get(week.key, 0)


def group_values(code: int, key: Sequence[int]) -> list[analytics_service_pb2.GroupValue]:
    """A group's values: one, or two for an (error type, component) pair."""
    if code == Tally.ERRORS_BY_TYPE_AND_COMPONENT:
        return [group_value(Tally.ERRORS_BY_TYPE, key[:1]), group_value(Tally.ERRORS_BY_COMPONENT, key[1:2])]
    return [group_value(code, key)]


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
