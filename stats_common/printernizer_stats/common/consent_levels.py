"""Which parts of the weekly report each consent level shares (ConsentLevel in
aggregated_stats.proto), defined once: the agent leaves out what the user did
not choose, and the aggregation server refuses a report that carries more than
its level and counts each part over the installations that shared it."""

from __future__ import annotations

from collections.abc import Iterator

from printernizer.stats.v1 import aggregated_stats_pb2, options_pb2

ConsentLevel = aggregated_stats_pb2.ConsentLevel
BASICS = aggregated_stats_pb2.CONSENT_LEVEL_BASICS
PRINTERS_AND_FEATURES = aggregated_stats_pb2.CONSENT_LEVEL_PRINTERS_AND_FEATURES
USAGE = aggregated_stats_pb2.CONSENT_LEVEL_USAGE
ERRORS = aggregated_stats_pb2.CONSENT_LEVEL_ERRORS
# Every level, lowest first; the highest shares everything a report can hold.
LEVELS = (BASICS, PRINTERS_AND_FEATURES, USAGE, ERRORS)
EVERYTHING = ERRORS
# The report schema version from which a report says its level (before it, a
# report holds every part).
SINCE_SCHEMA_VERSION: int = (
    aggregated_stats_pb2.AggregatedStats.DESCRIPTOR.fields_by_name["consent_level"]
    .GetOptions()
    .Extensions[options_pb2.since_schema_version]
)

# The lowest level that shares each of AggregatedStats' fields; a field not
# named here (the schema version, the report ID, the installation, the week,
# the level itself) is part of every report.
LEVEL_OF_FIELD: dict[str, int] = {
    "printer_fleet": PRINTERS_AND_FEATURES,
    "features": PRINTERS_AND_FEATURES,
    "usage": USAGE,
    "errors": ERRORS,
}


def level_of(report: aggregated_stats_pb2.AggregatedStats) -> int:
    """The level a report was made at: its own, or everything for a report of
    a schema version before levels (which held every part)."""
    return report.consent_level or EVERYTHING


def shares(level: int, field: str) -> bool:
    """Whether a report at `level` holds AggregatedStats' `field`."""
    return level >= LEVEL_OF_FIELD.get(field, BASICS)


def fields_beyond(report: aggregated_stats_pb2.AggregatedStats, level: int) -> Iterator[str]:
    """The fields `report` carries that `level` does not share."""
    for descriptor, _ in report.ListFields():
        if not shares(level, descriptor.name):
            yield descriptor.name


def keep_only(report: aggregated_stats_pb2.AggregatedStats, level: int) -> None:
    """Leave out of `report` every part `level` does not share."""
    for name in LEVEL_OF_FIELD:
        if not shares(level, name):
            report.ClearField(name)  # type: ignore[arg-type]
