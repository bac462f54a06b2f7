"""Release health: each app version's figures over a few weeks, against the
release before it, with regressions flagged (plain functions, no database).

The figures are sums over the weeks in which a version was published (at
least k installations on it that week), of each week's rounded figures:
installation-weeks, installation-weeks with an unclean shutdown, jobs
completed and failed, failed jobs by reason, errors, uptime. Rates come from
those sums, so they use only what is published. Each rate is over the
installation-weeks that shared its part of the report (consent levels): the
crash-free rate and uptime over those that shared their usage counts, errors
per installation over those that shared their errors.

A regression is a release clearly worse than the one before it (the newest
older version listed) on one metric: the difference passes a stated
threshold AND is significant (a two-sided z-test at `Z_SIGNIFICANT`, over the
installation-weeks or the jobs behind both figures), with enough of them on
both sides. The threshold alone would flag a small release's noise; the test
alone would flag a tiny but certain difference across a large fleet.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from printernizer.stats.v1 import analytics_service_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.store.rollup_store import Activity

from .privacy import Disclosure, Group, ratio

Metric = analytics_service_pb2.ReleaseMetric
Severity = analytics_service_pb2.Severity

# The weeks release health is summed over unless a window says otherwise.
RELEASE_HEALTH_WEEKS = 4
# Crash-free rate and job success rate: a fall of 5 points warns, 10 is critical.
RATE_DROP_WARNING, RATE_DROP_CRITICAL = 0.05, 0.10
# Errors per installation-week: 1.5 times the previous release's warns, 3 times is critical.
ERROR_RATIO_WARNING, ERROR_RATIO_CRITICAL = 1.5, 3.0
# |z| at least this (a false alarm about once in 740 comparisons of equal releases).
Z_SIGNIFICANT = 3.0
# Too little to compare below these, on either side.
MIN_INSTALLATION_WEEKS = 20
MIN_FINISHED_JOBS = 100
MIN_ERRORS = 10

VersionKey = tuple[int, int, int]
# The activities release health reads.
RELEASE_ACTIVITIES = (
    Activity.JOBS_COMPLETED,
    Activity.JOBS_FAILED,
    Activity.UPTIME_HOURS,
    Activity.UNCLEAN_SHUTDOWNS,
)
# The activities `regressions` compares (uptime is shown, not compared); it
# reads no failure reasons either, so the anomalies read neither.
REGRESSION_ACTIVITIES = (Activity.JOBS_COMPLETED, Activity.JOBS_FAILED, Activity.UNCLEAN_SHUTDOWNS)
_NONE = Group((), 0, 0)  # no rollup row: nothing of it


@dataclass(frozen=True)
class WeekFigures:
    """One week's rollups for release health (exact counts; rounded here).

    `versions`: installations active per app version; `activity`: per
    (version..., Activity) installations with any of it and its sum;
    `errors`: per (version..., 0), installations reporting errors and errors;
    `failures`: per (version..., reason), installations and failed jobs;
    `shared`: per (version..., consent level), installations at the level."""

    versions: Sequence[Group]
    activity: Sequence[Group]
    errors: Sequence[Group]
    failures: Sequence[Group]
    shared: Sequence[Group]
    _releases: dict[int, dict[VersionKey, Release]] = field(default_factory=dict, compare=False, repr=False)

    def releases(self, disclosure: Disclosure) -> dict[VersionKey, Release]:
        """The week's figures per version (made once per k: a week is in several windows)."""
        if disclosure.k not in self._releases:
            self._releases[disclosure.k] = week_releases(self, disclosure)
        return self._releases[disclosure.k]

    def sharing(self, version: VersionKey, level: int) -> int:
        """Installations on `version` whose reports share the part of `level`."""
        return sum(n for at, n in self._levels.get(version, []) if at >= level)

    # Indexes of the rows by version, made once per week (a week is in several windows).
    @functools.cached_property
    def _levels(self) -> dict[tuple[int, ...], list[tuple[int, int]]]:
        levels: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for g in self.shared:
            levels.setdefault(g.key[:3], []).append((g.key[3], g.installations))
        return levels

    @functools.cached_property
    def activity_of(self) -> dict[tuple[int, ...], Group]:
        return by_key(self.activity)

    @functools.cached_property
    def errors_of(self) -> dict[tuple[int, ...], Group]:
        return by_key(self.errors)

    @functools.cached_property
    def reasons_of(self) -> dict[tuple[int, ...], list[Group]]:
        """Per version, its failed jobs by reason (keyed by the reason)."""
        reasons: dict[tuple[int, ...], list[Group]] = {}
        for g in self.failures:
            reasons.setdefault(g.key[:3], []).append(Group(g.key[3:4], g.installations, g.amount))
        return reasons


@dataclass
class Release:
    """A version's sums over the weeks it was published."""

    version: VersionKey
    installations: int = 0  # in the last week
    installation_weeks: int = 0
    usage_weeks: int = 0  # those that shared their usage counts
    error_weeks: int = 0  # those that shared their errors
    unclean_weeks: int = 0
    crash_free_suppressed: bool = False
    jobs_completed: int = 0
    jobs_failed: int = 0
    errors: int = 0
    uptime_hours: int = 0
    failures: dict[int, list[int]] = field(default_factory=dict)  # reason: [installations, jobs]

    @property
    def crash_free_rate(self) -> float:
        if self.crash_free_suppressed:
            return 0.0
        return ratio(self.usage_weeks - self.unclean_weeks, self.usage_weeks)

    @property
    def job_success_rate(self) -> float:
        return ratio(self.jobs_completed, self.jobs_completed + self.jobs_failed)

    @property
    def errors_per_installation(self) -> float:
        return ratio(self.errors, self.error_weeks)

    @property
    def uptime_hours_per_installation(self) -> float:
        return ratio(self.uptime_hours, self.usage_weeks)

    def add(self, week: Release) -> None:
        """Add one week's figures of the same version (not its installations)."""
        self.installation_weeks += week.installation_weeks
        self.usage_weeks += week.usage_weeks
        self.error_weeks += week.error_weeks
        self.unclean_weeks += week.unclean_weeks
        self.crash_free_suppressed |= week.crash_free_suppressed
        self.jobs_completed += week.jobs_completed
        self.jobs_failed += week.jobs_failed
        self.errors += week.errors
        self.uptime_hours += week.uptime_hours
        for reason, (installations, jobs) in week.failures.items():
            figures = self.failures.setdefault(reason, [0, 0])
            figures[0] += installations
            figures[1] += jobs


def by_key(groups: Sequence[Group]) -> dict[tuple[int, ...], Group]:
    return {g.key: g for g in groups}


def subgroup_publishable(within: int, total: int, k: int) -> bool:
    """Installations with something (`within` of `total`): published when those
    with it and those without each number 0 or at least k (as a feature's on
    and off)."""
    return all(n == 0 or n >= k for n in (within, total - within))


def releases(weeks: Sequence[WeekFigures], disclosure: Disclosure) -> list[Release]:
    """Each version published in at least one of `weeks` (oldest first), newest first."""
    found: dict[VersionKey, Release] = {}
    for index, week in enumerate(weeks):
        for version, part in week.releases(disclosure).items():
            release = found.setdefault(version, Release(version))
            release.add(part)
            if index == len(weeks) - 1:
                release.installations = part.installations
    return sorted(found.values(), key=lambda r: tuple(-p for p in r.version))


def week_releases(week: WeekFigures, disclosure: Disclosure) -> dict[VersionKey, Release]:
    """Each version's figures in one week, published (rounded) as release health sums them."""
    found: dict[VersionKey, Release] = {}
    count, k = disclosure.count, disclosure.k
    activity, errors = week.activity_of, week.errors_of
    exact = by_key(week.versions)
    for group in disclosure.fold(week.versions).groups:
        version: VersionKey = (group.key[0], group.key[1], group.key[2])
        release = found[version] = Release(version, group.installations, group.installations)
        on_it = exact[group.key].installations
        sharing_errors = week.sharing(version, consent_levels.ERRORS)
        if disclosure.enough_shared(sharing_errors, on_it):  # else as if none had shared them
            release.error_weeks = count(sharing_errors)
            release.errors = count(errors.get((*version, 0), _NONE).amount)
        sharing_usage = week.sharing(version, consent_levels.USAGE)
        if not disclosure.enough_shared(sharing_usage, on_it):
            continue  # as if none had shared their usage: its figures stay 0

        def of(kind: Activity, version: VersionKey = version) -> Group:
            return activity.get((*version, int(kind)), _NONE)

        release.usage_weeks = count(sharing_usage)
        unclean = of(Activity.UNCLEAN_SHUTDOWNS).installations
        if subgroup_publishable(unclean, sharing_usage, k):
            release.unclean_weeks = count(unclean)
        else:
            release.crash_free_suppressed = True
        release.jobs_completed = count(of(Activity.JOBS_COMPLETED).amount)
        release.jobs_failed = count(of(Activity.JOBS_FAILED).amount)
        release.uptime_hours = count(of(Activity.UPTIME_HOURS).amount)
        reasons = week.reasons_of.get(version)  # none where the failures were not read
        for reason in disclosure.drop_small(reasons).groups if reasons else ():
            release.failures[reason.key[0]] = [reason.installations, reason.amount]
    return found


@dataclass(frozen=True)
class Regression:
    metric: int
    severity: int
    observed: float
    previous: float
    threshold: float
    description: str


def _z_proportions(successes: tuple[int, int], trials: tuple[int, int]) -> float:
    """The pooled two-proportion z statistic of (a - b) (0 when undefined)."""
    (s1, s2), (n1, n2) = successes, trials
    pooled = (s1 + s2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return (s1 / n1 - s2 / n2) / spread if spread else 0.0


def _z_rates(events: tuple[int, int], exposure: tuple[int, int]) -> float:
    """The z statistic of (a - b) for two rates of events per installation-week.
    Errors vary far more between installations than a Poisson count would (a
    few installations have many): the variance per installation-week is taken
    as m(1 + m) for a mean m (a negative binomial of shape 1), so that a
    handful of error-prone installations does not pass for a worse release."""
    (e1, e2), (n1, n2) = events, exposure
    pooled = (e1 + e2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 + pooled) * (1 / n1 + 1 / n2))
    return (e1 / n1 - e2 / n2) / spread if spread else 0.0


def regressions(release: Release, previous: Release) -> list[Regression]:
    """Where `release` is clearly worse than `previous` (see the module's rules)."""
    found = []
    enough = min(release.usage_weeks, previous.usage_weeks) >= MIN_INSTALLATION_WEEKS
    suppressed = release.crash_free_suppressed or previous.crash_free_suppressed
    if enough and not suppressed:
        clean = (release.usage_weeks - release.unclean_weeks, previous.usage_weeks - previous.unclean_weeks)
        trials = (release.usage_weeks, previous.usage_weeks)
        found += _rate_drop(
            Metric.RELEASE_METRIC_CRASH_FREE_RATE,
            "crash-free rate (installation-weeks without an unclean shutdown)",
            release.crash_free_rate,
            previous.crash_free_rate,
            _z_proportions(clean, trials),
            f"at least {MIN_INSTALLATION_WEEKS} installation-weeks on each",
        )
    finished = (
        release.jobs_completed + release.jobs_failed,
        previous.jobs_completed + previous.jobs_failed,
    )
    if min(finished) >= MIN_FINISHED_JOBS:
        found += _rate_drop(
            Metric.RELEASE_METRIC_JOB_SUCCESS_RATE,
            "job success rate (completed share of finished jobs)",
            release.job_success_rate,
            previous.job_success_rate,
            _z_proportions((release.jobs_completed, previous.jobs_completed), finished),
            f"at least {MIN_FINISHED_JOBS} finished jobs on each",
        )
    errors = (release.errors, previous.errors)
    enough = min(release.error_weeks, previous.error_weeks) >= MIN_INSTALLATION_WEEKS
    if enough and release.errors >= MIN_ERRORS and previous.errors > 0:
        observed, before = release.errors_per_installation, previous.errors_per_installation
        z = _z_rates(errors, (release.error_weeks, previous.error_weeks))
        if observed >= before * ERROR_RATIO_WARNING and z >= Z_SIGNIFICANT:
            critical = observed >= before * ERROR_RATIO_CRITICAL
            found.append(
                Regression(
                    Metric.RELEASE_METRIC_ERRORS_PER_INSTALLATION,
                    Severity.SEVERITY_CRITICAL if critical else Severity.SEVERITY_WARNING,
                    observed,
                    before,
                    before * ERROR_RATIO_WARNING,
                    f"errors per installation-week reached {ERROR_RATIO_WARNING:g} times the previous "
                    f"release's (critical from {ERROR_RATIO_CRITICAL:g} times), significant at "
                    f"z >= {Z_SIGNIFICANT:g}, with at least {MIN_INSTALLATION_WEEKS} installation-weeks "
                    f"on each and {MIN_ERRORS} errors on this one",
                )
            )
    return found


def _rate_drop(
    metric: int, what: str, observed: float, previous: float, z: float, minimum: str
) -> list[Regression]:
    drop = previous - observed
    if drop < RATE_DROP_WARNING or -z < Z_SIGNIFICANT:
        return []
    critical = drop >= RATE_DROP_CRITICAL
    return [
        Regression(
            metric,
            Severity.SEVERITY_CRITICAL if critical else Severity.SEVERITY_WARNING,
            observed,
            previous,
            previous - RATE_DROP_WARNING,
            f"{what} fell {RATE_DROP_WARNING * 100:g} points or more below the previous release's "
            f"(critical from {RATE_DROP_CRITICAL * 100:g}), significant at z >= {Z_SIGNIFICANT:g}, "
            f"with {minimum}",
        )
    ]


def compared(found: Sequence[Release]) -> list[tuple[Release, Release | None, list[Regression]]]:
    """Each release (newest first) with the one before it and its regressions."""
    result = []
    for index, release in enumerate(found):
        previous = found[index + 1] if index + 1 < len(found) else None
        result.append((release, previous, regressions(release, previous) if previous else []))
    return result


def failure_shares(release: Release) -> list[tuple[int, int, int, float]]:
    """(reason, installations, jobs, share of the release's failed jobs), most jobs first."""
    rows = [
        (reason, n, jobs, ratio(jobs, release.jobs_failed)) for reason, (n, jobs) in release.failures.items()
    ]
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def week_figures(
    versions: Mapping[int, Sequence[Group]],
    activity: Mapping[int, Sequence[Group]],
    errors: Mapping[int, Sequence[Group]],
    failures: Mapping[int, Sequence[Group]],
    shared: Mapping[int, Sequence[Group]],
    weeks: Sequence[int],
) -> list[WeekFigures]:
    """Per-week rollups (by week key) arranged for `releases`, for `weeks` in order."""
    return [
        WeekFigures(
            versions.get(w, []),
            activity.get(w, []),
            errors.get(w, []),
            failures.get(w, []),
            shared.get(w, []),
        )
        for w in weeks
    ]
