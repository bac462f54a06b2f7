"""How the app is used, per week (plain functions, no database): the fleet's
jobs, files, printer connections, uptime and crashes, and its jobs by
duration and by failure reason. Every count goes through the disclosure;
rates come from the rounded counts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from printernizer.stats.v1 import analytics_service_pb2
from printernizer_stats.common.weeks import Week
from printernizer_stats.store.rollup_store import Activity

from .privacy import Disclosure, Group, ratio
from .release_health import subgroup_publishable

GroupValues = Callable[[tuple[int, ...]], list[analytics_service_pb2.GroupValue]]


def usage_week(
    week: Week, active: int, sharing: int, activity: Sequence[Group], disclosure: Disclosure
) -> analytics_service_pb2.UsageWeek:
    """One week's figures. `active`: the week's active installations; `sharing`:
    those that shared their usage counts, which the figures per installation
    and the crash-free rate are over; `activity`: the ACTIVITY tally's groups
    (key: the Activity)."""
    count = disclosure.count
    if not disclosure.enough_shared(sharing, active):
        sharing, activity = 0, []  # as if none had shared their usage
    by_kind = {g.key[0]: g for g in activity}

    def total(kind: Activity) -> int:
        group = by_kind.get(int(kind))
        return count(group.amount) if group else 0

    published_active, published_sharing = count(active), count(sharing)
    completed, failed = total(Activity.JOBS_COMPLETED), total(Activity.JOBS_FAILED)
    connections = total(Activity.PRINTER_CONNECTIONS)
    disconnections = total(Activity.PRINTER_DISCONNECTIONS)
    uptime = total(Activity.UPTIME_HOURS)
    unclean = by_kind.get(int(Activity.UNCLEAN_SHUTDOWNS))
    crashed = unclean.installations if unclean else 0
    figures = analytics_service_pb2.UsageWeek(
        week=week.to_proto(),
        active=published_active,
        jobs_created=total(Activity.JOBS_CREATED),
        jobs_completed=completed,
        jobs_failed=failed,
        job_success_rate=ratio(completed, completed + failed),
        jobs_per_installation=ratio(completed + failed, published_sharing),
        files_uploaded=total(Activity.FILES_UPLOADED),
        files_downloaded=total(Activity.FILES_DOWNLOADED),
        printer_connections=connections,
        printer_disconnections=disconnections,
        disconnections_per_connection=ratio(disconnections, connections),
        uptime_hours=uptime,
        uptime_hours_per_installation=ratio(uptime, published_sharing),
        app_starts=total(Activity.APP_STARTS),
        sharing_usage=published_sharing,
    )
    if subgroup_publishable(crashed, sharing, disclosure.k):
        figures.installations_with_unclean_shutdown = count(crashed)
        figures.crash_free_rate = ratio(published_sharing - count(crashed), published_sharing)
    else:
        figures.crash_free_suppressed = True
    return figures


def job_series(
    weeks: Sequence[Week],
    per_week: Mapping[int, Sequence[Group]],
    totals: Mapping[int, int],
    disclosure: Disclosure,
    values: GroupValues,
) -> list[analytics_service_pb2.Series]:
    """One series per value (a duration bucket, a failure reason) published in
    some week of the window: installations reporting such jobs (groups under k
    left out: an installation reports several values) and the jobs; `share`
    is of the week's jobs (`totals`, exact: rounded here)."""
    published = {w.key: disclosure.drop_small(per_week.get(w.key, [])) for w in weeks}
    keys = sorted({g.key for folded in published.values() for g in folded.groups})
    series = []
    for key in keys:
        line = analytics_service_pb2.Series(values=values(key))
        for week in weeks:
            group = next((g for g in published[week.key].groups if g.key == key), None)
            if group is None:
                line.points.append(analytics_service_pb2.SeriesPoint(week=week.to_proto(), suppressed=True))
                continue
            line.points.append(
                analytics_service_pb2.SeriesPoint(
                    week=week.to_proto(),
                    installations=group.installations,
                    count=group.amount,
                    share=ratio(group.amount, disclosure.count(totals.get(week.key, 0))),
                )
            )
        series.append(line)
    return series
