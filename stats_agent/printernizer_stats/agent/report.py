"""Building the weekly report, and the user's own weekly figures, from stored events.

Counts (jobs, files, errors, starts, uptime) come only from events stored
after consent was given and dated inside the week. The installation's setup
(versions, platform, fleet, feature states) is its latest known state at the
end of the week: the report describes the installation as it is, and the user
sees exactly that in the preview before opting in.

Every report is built field by field from the contract's known values, never
by copying a stored message: nothing a stored payload may carry beyond them
(an older agent's rows) is sent.

A report carries only what the user consented to: fields and enum values
newer than the consented schema version are left out. A newer value of an
open enum is counted as its OTHER value (a job duration as UNSPECIFIED,
which has no OTHER), so totals still add up; a newer feature is left out.
Nor does it carry a part above the consent level (common.consent_levels): a
report of a schema version with levels says its level, one before them holds
every part. A report already built is narrowed to a lower level, never widened.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    common_pb2,
    country_pb2,
    usage_event_pb2,
)
from printernizer_stats.common import consent_levels
from printernizer_stats.common.contract import (
    CURRENT_SCHEMA_VERSION,
    strip_fields_newer_than,
    value_for_schema,
    value_in_schema,
)
from printernizer_stats.common.events import KINDS_BY_NAME, to_millis
from printernizer_stats.common.known_fields import copy_known_fields
from printernizer_stats.common.limits import MAX_PRINTERS_PER_TYPE
from printernizer_stats.common.weeks import WEEK_HOURS, Week

from .storage import AgentStore

HOUR_MS = 3_600_000

APP_STARTED = KINDS_BY_NAME["app_started"].kind
APP_STOPPED = KINDS_BY_NAME["app_stopped"].kind
FEATURE_ENABLED = KINDS_BY_NAME["feature_enabled"].kind
FEATURE_DISABLED = KINDS_BY_NAME["feature_disabled"].kind
FLEET_OBSERVED = KINDS_BY_NAME["printer_fleet_observed"].kind


def _column(kind: str, field: str) -> int:
    """Which of f1..f3 (0-based) holds a field of an event kind."""
    names = [f.name for f in KINDS_BY_NAME[kind].columns]
    return names.index(field)


# (kind, UsageCounts field it adds to)
_SIMPLE_COUNTS = {
    KINDS_BY_NAME["job_created"].kind: "jobs_created",
    KINDS_BY_NAME["job_completed"].kind: "jobs_completed",
    KINDS_BY_NAME["job_failed"].kind: "jobs_failed",
    KINDS_BY_NAME["file_downloaded"].kind: "files_downloaded",
    KINDS_BY_NAME["file_uploaded"].kind: "files_uploaded",
    APP_STARTED: "app_starts",
    KINDS_BY_NAME["printer_connected"].kind: "printer_connections",
    KINDS_BY_NAME["printer_disconnected"].kind: "printer_disconnections",
}
_JOB_COMPLETED = KINDS_BY_NAME["job_completed"].kind
_JOB_FAILED = KINDS_BY_NAME["job_failed"].kind
_ERROR = KINDS_BY_NAME["error_occurred"].kind
_DURATION_COLUMN = _column("job_completed", "duration")
_COMPLETED_PRINTER_COLUMN = _column("job_completed", "printer_type")
_FAILED_PRINTER_COLUMN = _column("job_failed", "printer_type")
_REASON_COLUMN = _column("job_failed", "reason")
_ERROR_TYPE_COLUMN = _column("error_occurred", "error_type")
_COMPONENT_COLUMN = _column("error_occurred", "component")
_DURATION_ENUM = common_pb2.JobDurationBucket.DESCRIPTOR
_REASON_ENUM = common_pb2.JobFailureReason.DESCRIPTOR
_ERROR_TYPE_ENUM = common_pb2.ErrorType.DESCRIPTOR
_COMPONENT_ENUM = common_pb2.Component.DESCRIPTOR
_PRINTER_TYPE_ENUM = common_pb2.PrinterType.DESCRIPTOR
_FEATURE_ENUM = common_pb2.Feature.DESCRIPTOR


def fold_counts(
    rows: Iterable[tuple[int, int, int, int, int]],
    schema_version: int = CURRENT_SCHEMA_VERSION,
) -> tuple[aggregated_stats_pb2.UsageCounts, list[aggregated_stats_pb2.ErrorCount]]:
    """Turn (kind, f1, f2, f3, count) groups into usage counts and error counts,
    with every list sorted so equal inputs give equal bytes. Values newer than
    `schema_version` are counted as their enum's fallback (value_for_schema)."""
    usage = aggregated_stats_pb2.UsageCounts()
    durations: Counter[int] = Counter()
    failures: Counter[int] = Counter()
    # Per printer family: [completed, failed].
    by_printer: dict[int, list[int]] = {}
    errors: Counter[tuple[int, int]] = Counter()
    for kind, f1, f2, f3, count in rows:
        columns = (f1, f2, f3)
        name = _SIMPLE_COUNTS.get(kind)
        if name is not None:
            setattr(usage, name, getattr(usage, name) + count)
        if kind == _JOB_COMPLETED:
            durations[value_for_schema(_DURATION_ENUM, columns[_DURATION_COLUMN], schema_version)] += count
            family = value_for_schema(_PRINTER_TYPE_ENUM, columns[_COMPLETED_PRINTER_COLUMN], schema_version)
            by_printer.setdefault(family, [0, 0])[0] += count
        elif kind == _JOB_FAILED:
            failures[value_for_schema(_REASON_ENUM, columns[_REASON_COLUMN], schema_version)] += count
            family = value_for_schema(_PRINTER_TYPE_ENUM, columns[_FAILED_PRINTER_COLUMN], schema_version)
            by_printer.setdefault(family, [0, 0])[1] += count
        elif kind == _ERROR:
            error_type = value_for_schema(_ERROR_TYPE_ENUM, columns[_ERROR_TYPE_COLUMN], schema_version)
            component = value_for_schema(_COMPONENT_ENUM, columns[_COMPONENT_COLUMN], schema_version)
            errors[(error_type, component)] += count
    for bucket, count in sorted(durations.items()):
        usage.completed_job_durations.add(duration=bucket, count=count)
    for reason, count in sorted(failures.items()):
        usage.job_failures.add(reason=reason, count=count)
    for family, (completed, failed) in sorted(by_printer.items()):
        usage.jobs_by_printer_type.add(
            printer_type=common_pb2.PrinterType.ValueType(family), completed=completed, failed=failed
        )
    error_counts = [
        aggregated_stats_pb2.ErrorCount(
            error_type=common_pb2.ErrorType.ValueType(t), component=common_pb2.Component.ValueType(c), count=n
        )
        for (t, c), n in sorted(errors.items())
    ]
    return usage, error_counts


async def uptime(store: AgentStore, start: int, end: int, after_seq: int = 0) -> tuple[int, int]:
    """(whole hours the app ran in [start, end), starts without a clean stop before them),
    from the start and stop events stored after `after_seq`.

    A run lasts from a start to its stop. A start that follows a start with no
    stop in between means the app crashed: that run is taken to end at the last
    event recorded before the new start. A run still open at `end` counts up to
    `end`. For a report, only events stored after consent count: a run that
    began before the user opted in is not counted.
    """
    if end <= start:
        return 0, 0
    last_start = await store.latest_of_kind(APP_STARTED, start, after_seq)
    last_stop = await store.latest_of_kind(APP_STOPPED, start, after_seq)
    running_since: int | None = None
    if last_start is not None and (
        last_stop is None
        or (last_start.row.occurred_at, last_start.seq) > (last_stop.row.occurred_at, last_stop.seq)
    ):
        running_since = start
    total = 0
    unclean = 0
    for moment, kind in await store.times_of_kinds((APP_STARTED, APP_STOPPED), start, end, after_seq):
        if kind == APP_STARTED:
            if running_since is not None:
                unclean += 1
                crashed = await store.last_event_time_before(moment, after_seq)
                total += max(running_since, min(crashed or running_since, moment)) - running_since
            running_since = moment
        elif running_since is not None:
            total += moment - running_since
            running_since = None
    if running_since is not None:
        total += end - running_since
    return min(WEEK_HOURS, round(total / HOUR_MS)), unclean


async def installation_info(
    store: AgentStore, before: int, country: int, installation_id: bytes
) -> aggregated_stats_pb2.InstallationInfo:
    info = aggregated_stats_pb2.InstallationInfo(
        installation_id=installation_id, country=country_pb2.Country.ValueType(country)
    )
    started = await store.latest_of_kind(APP_STARTED, before)
    if started is not None and started.row.payload is not None:
        app = usage_event_pb2.AppStarted.FromString(started.row.payload)
        # Field by field: a payload an older agent stored may hold unknown fields.
        copy_known_fields(app.app_version, info.app_version)
        copy_known_fields(app.python_version, info.python_version)
        info.platform = app.platform
        info.architecture = app.architecture
        info.deployment_mode = app.deployment_mode
    return info


async def printer_fleet(
    store: AgentStore, before: int, schema_version: int = CURRENT_SCHEMA_VERSION
) -> aggregated_stats_pb2.PrinterFleet:
    """The latest fleet; a family newer than `schema_version` is counted as OTHER."""
    fleet = aggregated_stats_pb2.PrinterFleet()
    observed = await store.latest_of_kind(FLEET_OBSERVED, before)
    if observed is not None and observed.row.payload is not None:
        printers = usage_event_pb2.PrinterFleetObserved.FromString(observed.row.payload).printers
        counts: Counter[int] = Counter()
        for printer in printers:
            printer_type = value_for_schema(_PRINTER_TYPE_ENUM, printer.printer_type, schema_version)
            counts[printer_type] += printer.count
        for printer_type, count in sorted(counts.items()):
            fleet.printers.add(
                printer_type=common_pb2.PrinterType.ValueType(printer_type),
                count=min(count, MAX_PRINTERS_PER_TYPE),
            )
    return fleet


async def feature_states(
    store: AgentStore, before: int, schema_version: int = CURRENT_SCHEMA_VERSION
) -> list[aggregated_stats_pb2.FeatureState]:
    """The latest state of each feature; a feature newer than `schema_version`
    is left out (Feature has no OTHER: the list is closed)."""
    latest = await store.latest_per_value((FEATURE_ENABLED, FEATURE_DISABLED), before)
    return [
        aggregated_stats_pb2.FeatureState(
            feature=common_pb2.Feature.ValueType(feature), enabled=kind == FEATURE_ENABLED
        )
        for kind, feature in sorted(latest, key=lambda item: item[1])
        if value_in_schema(_FEATURE_ENUM, feature, schema_version)
    ]


@dataclass(frozen=True)
class ReportScope:
    """Whose report, and which events it may count."""

    installation_id: bytes
    report_id: bytes
    consented_schema_version: int
    consent_since: dt.datetime  # counts start no earlier than this
    since_sequence: int  # and only events stored after this sequence number
    country: int
    level: int = consent_levels.EVERYTHING  # the parts shared (a ConsentLevel)


async def _counts(
    store: AgentStore, start: int, end: int, after_seq: int, schema_version: int = CURRENT_SCHEMA_VERSION
) -> tuple[aggregated_stats_pb2.UsageCounts, list[aggregated_stats_pb2.ErrorCount]]:
    """Usage and error counts of the events in [start, end) stored after `after_seq`."""
    rows = await store.week_counts(start, end, after_seq) if end > start else []
    usage, errors = fold_counts(rows, schema_version)
    usage.uptime_hours, usage.unclean_shutdowns = await uptime(store, start, end, after_seq)
    return usage, errors


async def build_report(
    store: AgentStore, week: Week, scope: ReportScope, now: dt.datetime
) -> aggregated_stats_pb2.AggregatedStats:
    """The weekly report for `week`, as it would be sent now."""
    state_time = to_millis(min(week.end, now))
    version = scope.consented_schema_version
    usage, errors = await _counts(
        store, to_millis(max(week.start, scope.consent_since)), state_time, scope.since_sequence, version
    )
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.ReportSchemaVersion.ValueType(scope.consented_schema_version),
        report_id=scope.report_id,
        installation=await installation_info(store, state_time, scope.country, scope.installation_id),
        period=week.to_proto(),
        printer_fleet=await printer_fleet(store, state_time, version),
        usage=usage,
        features=await feature_states(store, state_time, version),
        errors=errors,
        consent_level=aggregated_stats_pb2.ConsentLevel.ValueType(scope.level),
    )
    consent_levels.keep_only(report, scope.level)
    strip_fields_newer_than(report, scope.consented_schema_version)  # the level too, before levels
    return report


def narrowed(report: bytes, level: int) -> bytes:
    """A report as it may be sent at `level`: unchanged when it holds no part
    above it, else without those parts and saying `level` (in a schema version
    with levels: a user sharing less than everything agreed to one)."""
    message = aggregated_stats_pb2.AggregatedStats.FromString(report)
    if consent_levels.level_of(message) <= level:
        return report
    consent_levels.keep_only(message, level)
    message.schema_version = aggregated_stats_pb2.ReportSchemaVersion.ValueType(
        max(message.schema_version, consent_levels.SINCE_SCHEMA_VERSION)
    )
    message.consent_level = aggregated_stats_pb2.ConsentLevel.ValueType(level)
    return message.SerializeToString(deterministic=True)


async def weekly_activity(
    store: AgentStore, week: Week, now: dt.datetime
) -> agent_service_pb2.WeeklyActivity:
    """The user's own figures for a week: every stored event, consent or not."""
    usage, errors = await _counts(store, to_millis(week.start), to_millis(min(week.end, now)), 0)
    return agent_service_pb2.WeeklyActivity(week=week.to_proto(), usage=usage, errors=errors)
