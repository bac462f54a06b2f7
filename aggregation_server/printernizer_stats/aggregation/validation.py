"""Checking a submitted weekly report before anything is stored, and making a
checked report storable.

Plain domain code (no gRPC): the ingest domain raises the violations as one
FieldError, answered INVALID_ARGUMENT with google.rpc.BadRequest field
violations. Every rule names the field at fault, relative to the report
("usage.uptime_hours", "errors[3]"), with list indices as the agent sent them.

Enum values this server does not know (a newer agent) are not errors:
`normalise_unknown_values` makes them OTHER (or UNSPECIFIED), merges the list
entries that thereby share a key, and counts them; they are never stored raw.
A value the contract added after the report's schema version (one the user
did not consent to, which an agent does not send) is treated the same way:
a schema-1 report never stores a schema-2 value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from printernizer.stats.v1 import aggregated_stats_pb2, common_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.contract import (
    CURRENT_SCHEMA_VERSION,
    fallback_value,
    since_schema_version,
    value_in_schema,
)
from printernizer_stats.common.errors import PERIOD_NOT_ENDED
from printernizer_stats.common.identity import ID_BYTES, installation_id_problem, report_id
from printernizer_stats.common.limits import AGENT_CLOCK_SKEW, MAX_PRINTERS_PER_TYPE, MAX_VERSION_PART
from printernizer_stats.common.refusals import FieldViolation
from printernizer_stats.common.weeks import WEEK_HOURS, Week

# The largest serialized report accepted, checked before parsing.
MAX_REPORT_BYTES = 10 * 1024
# A plausible maximum for one count of one installation in one week; beyond
# it a report is more likely broken or forged than real (printers and version
# parts have theirs in printernizer_stats.common.limits).
MAX_WEEKLY_COUNT = 1_000_000

Report = aggregated_stats_pb2.AggregatedStats

# Records one violation: (field, description).
_Problem = Callable[[str, str], None]


@dataclass(frozen=True)
class _KeyedList:
    """A list in the report whose entries are keyed by enum values."""

    path: str  # from the report, e.g. "usage.job_failures"
    key: tuple[str, ...]  # the fields that make an entry's key, unique within the list
    amounts: tuple[str, ...]  # the fields that count, summed when entries merge
    # The most one entry may count; None where the entries must add up to a
    # total that is bounded instead (failures to jobs_failed, durations to
    # jobs_completed): clamping those would break the sum.
    most: int | None = None

    def entries(self, report: Report) -> Any:
        holder: Any = report
        for name in self.path.split("."):
            holder = getattr(holder, name)
        return holder


_COUNT = ("count",)
_PRINTERS = _KeyedList("printer_fleet.printers", ("printer_type",), _COUNT, MAX_PRINTERS_PER_TYPE)
_FEATURES = _KeyedList("features", ("feature",), ())
_ERRORS = _KeyedList("errors", ("error_type", "component"), _COUNT, MAX_WEEKLY_COUNT)
_JOB_FAILURES = _KeyedList("usage.job_failures", ("reason",), _COUNT)
_JOB_DURATIONS = _KeyedList("usage.completed_job_durations", ("duration",), _COUNT)
_JOBS_BY_PRINTER = _KeyedList("usage.jobs_by_printer_type", ("printer_type",), ("completed", "failed"))
_KEYED_LISTS = (_PRINTERS, _FEATURES, _ERRORS, _JOB_FAILURES, _JOB_DURATIONS, _JOBS_BY_PRINTER)
_JOBS_BY_PRINTER_SINCE = since_schema_version(
    aggregated_stats_pb2.UsageCounts.DESCRIPTOR.fields_by_name["jobs_by_printer_type"]
)


def check_report(
    report: Report, installation_id: bytes, now: dt.datetime, first_kept: Week
) -> list[FieldViolation]:
    """Every rule the report breaks (an empty list: the report is acceptable).
    `first_kept` is the oldest week the server keeps: an older report would be
    deleted by retention at once, so it is refused instead."""
    problems: list[FieldViolation] = []

    def problem(field: str, description: str) -> None:
        problems.append(FieldViolation(field, description))

    if not 1 <= report.schema_version <= CURRENT_SCHEMA_VERSION:
        problem("schema_version", f"unknown schema version {report.schema_version}")
    own_id = report.installation.installation_id
    wrong_id = installation_id_problem(own_id)
    if wrong_id is not None:
        problem("installation.installation_id", wrong_id)
    elif own_id != installation_id:
        problem("installation.installation_id", "differs from the submission's installation_id")
    if len(report.report_id) != ID_BYTES:
        problem("report_id", f"must be {ID_BYTES} bytes, got {len(report.report_id)}")
    week = _week(report, problem)
    if week is not None:
        if week.end > now + AGENT_CLOCK_SKEW:
            problems.append(FieldViolation("period", f"{week} has not ended yet", PERIOD_NOT_ENDED))
        elif week < first_kept:
            problem("period", f"{week} is older than this server keeps (reports from {first_kept} on)")
        if len(installation_id) == ID_BYTES and report.report_id != report_id(installation_id, week):
            problem("report_id", "is not derived from the installation ID and the week")
    _check_version(report.installation.app_version, "installation.app_version", problem)
    _check_version(report.installation.python_version, "installation.python_version", problem)
    _check_counts(report, problem)
    _check_unique(report, problem)
    if 1 <= report.schema_version <= CURRENT_SCHEMA_VERSION:
        _check_fields_in_schema(report, report.schema_version, problem)
        _check_level(report, problem)
    return problems


def _check_fields_in_schema(message: Message, version: int, problem: _Problem, path: str = "") -> None:
    """No field newer than the report's schema version is set: the user did not
    consent to it, and an agent never sends it (unlike a newer enum value, which
    is normalised, a newer field has no older meaning to fall back to)."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        since = since_schema_version(field)
        if since > version:
            problem(name, f"needs report schema version {since}")
        elif field.message_type is not None:
            items = list(enumerate(value)) if field.is_repeated else [(None, value)]
            for i, item in items:
                _check_fields_in_schema(
                    item, version, problem, f"{name}[{i}]." if i is not None else f"{name}."
                )


def _check_level(report: Report, problem: _Problem) -> None:
    """The level a report says it was made at, and that it holds nothing beyond it."""
    level = report.consent_level
    if report.schema_version < consent_levels.SINCE_SCHEMA_VERSION:
        return  # a report without levels holds every part (a level set is refused above)
    if level not in consent_levels.LEVELS:
        problem("consent_level", f"{level} is not a consent level this server knows")
        return
    for name in consent_levels.fields_beyond(report, level):
        problem(name, f"is not shared at {consent_levels.ConsentLevel.Name(level)}")


def _week(report: Report, problem: _Problem) -> Week | None:
    if not report.HasField("period"):
        problem("period", "must be set")
        return None
    try:
        return Week.from_proto(report.period)
    except ValueError:
        problem("period", f"{report.period.year}-W{report.period.week} is not an ISO week")
        return None


def _check_version(version: Message, path: str, problem: _Problem) -> None:
    for part in ("major", "minor", "patch"):
        if getattr(version, part) > MAX_VERSION_PART:
            problem(f"{path}.{part}", f"must be at most {MAX_VERSION_PART}")


def _check_counts(report: Report, problem: _Problem) -> None:
    usage = report.usage
    for field in usage.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_UINT32 and getattr(usage, field.name) > MAX_WEEKLY_COUNT:
            problem(f"usage.{field.name}", f"must be at most {MAX_WEEKLY_COUNT}")
    if usage.uptime_hours > WEEK_HOURS:
        problem("usage.uptime_hours", f"a week has {WEEK_HOURS} hours")
    if usage.unclean_shutdowns > usage.app_starts:
        problem("usage.unclean_shutdowns", "cannot exceed app_starts")
    if sum(entry.count for entry in usage.job_failures) != usage.jobs_failed:
        problem("usage.job_failures", "must add up to jobs_failed")
    if sum(entry.count for entry in usage.completed_job_durations) != usage.jobs_completed:
        problem("usage.completed_job_durations", "must add up to jobs_completed")
    if _JOBS_BY_PRINTER_SINCE <= report.schema_version <= CURRENT_SCHEMA_VERSION:
        _check_jobs_by_printer(usage, problem)
    for keyed in (_ERRORS, _PRINTERS):
        assert keyed.most is not None
        for i, entry in enumerate(keyed.entries(report)):
            if not 1 <= entry.count <= keyed.most:
                problem(f"{keyed.path}[{i}].count", f"must be between 1 and {keyed.most}")


def _check_jobs_by_printer(usage: aggregated_stats_pb2.UsageCounts, problem: _Problem) -> None:
    """Every job ran on some family: the entries add up to the jobs, and an entry
    counts at least one."""
    entries = usage.jobs_by_printer_type
    if sum(entry.completed for entry in entries) != usage.jobs_completed:
        problem(_JOBS_BY_PRINTER.path, "completed must add up to jobs_completed")
    if sum(entry.failed for entry in entries) != usage.jobs_failed:
        problem(_JOBS_BY_PRINTER.path, "failed must add up to jobs_failed")
    for i, entry in enumerate(entries):
        if entry.completed + entry.failed == 0:
            problem(f"{_JOBS_BY_PRINTER.path}[{i}]", "must count at least one job")


def _check_unique(report: Report, problem: _Problem) -> None:
    """Keys as sent, unknown values included: a known entry listed twice is an
    error, while two values this server does not know are different values
    (merged only when they are normalised)."""
    for keyed in _KEYED_LISTS:
        seen: set[tuple[int, ...]] = set()
        for i, entry in enumerate(keyed.entries(report)):
            key = tuple(getattr(entry, name) for name in keyed.key)
            if key in seen:
                problem(f"{keyed.path}[{i}]", "repeats an entry listed before")
            seen.add(key)


def normalise_unknown_values(report: Report) -> int:
    """Make a checked report storable when it holds enum values this server
    does not know, or values newer than the report's schema version, in place;
    returns how many there were (to be counted).

    A feature this server does not know is dropped: Feature has no OTHER, and
    "some feature" says nothing. Every other unknown value becomes its enum's
    OTHER value (UNSPECIFIED where there is none), and list entries whose keys
    thereby became equal are merged. `check_report` saw the keys unique as
    sent, so only entries with an unknown value can meet here. Merging keeps
    what the check established: counts are summed, so failures and durations
    still add up to jobs_failed and jobs_completed; a sum over the most one
    entry may count (errors, printers) is clamped there, not refused."""
    version = report.schema_version
    unknown = _drop_unknown_features(report, version)
    unknown += _replace_unknown_values(report, version)
    for keyed in _KEYED_LISTS:
        if keyed.amounts:
            _merge_equal_keys(keyed, report)
    return unknown


def _drop_unknown_features(report: Report, version: int) -> int:
    enum = common_pb2.Feature.DESCRIPTOR
    kept = [
        (entry.feature, entry.enabled)
        for entry in report.features
        if value_in_schema(enum, entry.feature, version)
    ]
    dropped = len(report.features) - len(kept)
    if dropped:
        del report.features[:]
        for feature, enabled in kept:
            report.features.add(feature=feature, enabled=enabled)
    return dropped


def _replace_unknown_values(message: Message, version: int) -> int:
    replaced = 0
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            if enum.full_name == aggregated_stats_pb2.ReportSchemaVersion.DESCRIPTOR.full_name:
                continue  # checked: a version this server knows
            fallback = fallback_value(enum)
            values = list(value) if field.is_repeated else [value]
            fixed = [v if value_in_schema(enum, v, version) else fallback for v in values]
            replaced += sum(1 for old, new in zip(values, fixed, strict=True) if old != new)
            if field.is_repeated:
                container = getattr(message, field.name)
                del container[:]
                container.extend(fixed)
            else:
                setattr(message, field.name, fixed[0])
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                replaced += _replace_unknown_values(item, version)
    return replaced


def _merge_equal_keys(keyed: _KeyedList, report: Report) -> None:
    entries = keyed.entries(report)
    # Each key's amounts, in the order of the key's first entry.
    totals: dict[tuple[int, ...], list[int]] = {}
    for entry in entries:
        key = tuple(getattr(entry, name) for name in keyed.key)
        summed = totals.setdefault(key, [0] * len(keyed.amounts))
        for i, name in enumerate(keyed.amounts):
            summed[i] += getattr(entry, name)
    if len(totals) == len(entries):
        return
    del entries[:]
    for key, summed in totals.items():
        amounts = summed if keyed.most is None else [min(total, keyed.most) for total in summed]
        entries.add(
            **dict(zip(keyed.amounts, amounts, strict=True)), **dict(zip(keyed.key, key, strict=True))
        )
