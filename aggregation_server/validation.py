"""Checking a submitted weekly report before anything is stored.

Plain domain code (no gRPC): the servicer turns the violations into
INVALID_ARGUMENT with google.rpc.BadRequest field violations. Every rule
names the field at fault, relative to the report ("usage.uptime_hours",
"errors[3]").

Enum values this server does not know (a newer agent) are not errors: they are
counted as unknown by `normalise_unknown_values`, never stored raw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from printernizer.stats.v1 import aggregated_stats_pb2

from stats_common.contract import CURRENT_SCHEMA_VERSION, IDENTIFIER_FIELDS
from stats_common.identity import ID_BYTES, report_id
from stats_common.weeks import Week

# The largest serialized report accepted, checked before parsing.
MAX_REPORT_BYTES = 10 * 1024
# A report may arrive this long before its week has ended by the server's clock.
CLOCK_SKEW = dt.timedelta(hours=1)
WEEK_HOURS = 168
# Plausible maxima for one installation in one week; beyond them a report is
# more likely broken or forged than real.
MAX_WEEKLY_COUNT = 1_000_000
MAX_PRINTERS_PER_TYPE = 10_000
MAX_VERSION_PART = 10_000


# Records one violation: (field, description).
_Problem = Callable[[str, str], None]


@dataclass(frozen=True)
class Violation:
    field: str
    description: str


def check_report(
    report: aggregated_stats_pb2.AggregatedStats, installation_id: bytes, now: dt.datetime
) -> list[Violation]:
    """Every rule the report breaks (an empty list: the report is acceptable)."""
    problems: list[Violation] = []

    def problem(field: str, description: str) -> None:
        problems.append(Violation(field, description))

    if not 1 <= report.schema_version <= CURRENT_SCHEMA_VERSION:
        problem("schema_version", f"unknown schema version {report.schema_version}")
    for name, size in IDENTIFIER_FIELDS.items():
        message_name, _, field = name.rpartition(".")
        holder = report if message_name.endswith("AggregatedStats") else report.installation
        value = getattr(holder, field)
        path = field if holder is report else f"installation.{field}"
        if len(value) != size:
            problem(path, f"must be {size} bytes, got {len(value)}")
    if report.installation.installation_id != installation_id:
        problem("installation.installation_id", "differs from the submission's installation_id")
    week = _week(report, problem)
    if week is not None:
        if week.end > now + CLOCK_SKEW:
            problem("period", f"{week} has not ended yet")
        if len(installation_id) == ID_BYTES and report.report_id != report_id(installation_id, week):
            problem("report_id", "is not derived from the installation ID and the week")
    _check_version(report.installation.app_version, "installation.app_version", problem)
    _check_version(report.installation.python_version, "installation.python_version", problem)
    _check_counts(report, problem)
    _check_unique(report, problem)
    return problems


def _week(report: aggregated_stats_pb2.AggregatedStats, problem: _Problem) -> Week | None:
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


def _check_counts(report: aggregated_stats_pb2.AggregatedStats, problem: _Problem) -> None:
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
    for i, entry in enumerate(report.errors):
        if not 1 <= entry.count <= MAX_WEEKLY_COUNT:
            problem(f"errors[{i}].count", f"must be between 1 and {MAX_WEEKLY_COUNT}")
    for i, printer in enumerate(report.printer_fleet.printers):
        if not 1 <= printer.count <= MAX_PRINTERS_PER_TYPE:
            problem(f"printer_fleet.printers[{i}].count", f"must be between 1 and {MAX_PRINTERS_PER_TYPE}")


def _check_unique(report: aggregated_stats_pb2.AggregatedStats, problem: _Problem) -> None:
    lists: Iterable[tuple[str, Iterable[object]]] = (
        ("printer_fleet.printers", (p.printer_type for p in report.printer_fleet.printers)),
        ("features", (f.feature for f in report.features)),
        ("errors", ((e.error_type, e.component) for e in report.errors)),
        ("usage.job_failures", (f.reason for f in report.usage.job_failures)),
        ("usage.completed_job_durations", (d.duration for d in report.usage.completed_job_durations)),
    )
    for path, keys in lists:
        seen: set[object] = set()
        for i, key in enumerate(keys):
            if key in seen:
                problem(f"{path}[{i}]", "repeats an entry listed before")
            seen.add(key)


def normalise_unknown_values(message: Message) -> int:
    """Replace, in place, enum values this server does not know with the enum's
    OTHER value (or UNSPECIFIED where it has none); returns how many were
    replaced, so they are counted as unknown rather than stored raw."""
    replaced = 0
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            fallback = next((v.number for v in enum.values if v.name.endswith("_OTHER")), 0)
            values = list(value) if field.is_repeated else [value]
            fixed = [v if v in enum.values_by_number else fallback for v in values]
            replaced += sum(1 for old, new in zip(values, fixed, strict=True) if old != new)
            if field.is_repeated:
                container = getattr(message, field.name)
                del container[:]
                container.extend(fixed)
            else:
                setattr(message, field.name, fixed[0])
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                replaced += normalise_unknown_values(item)
    return replaced
