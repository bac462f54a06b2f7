"""The contract's privacy rules, checked on the compiled descriptors.

Each rule is tested twice: the real contract passes it, and a contract broken
on purpose (compiled from a mutated copy of proto/) fails it, so the check
cannot pass vacuously.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tzdata
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from printernizer.stats.v1 import aggregated_stats_pb2, country_pb2, usage_event_pb2
from printernizer_stats.common import contract

from ..conftest import ROOT

USAGE_EVENT = "printernizer.stats.v1.UsageEvent"
AGGREGATED_STATS = "printernizer.stats.v1.AggregatedStats"


def compile_mutated(tmp_path: Path, mutate: dict[str, tuple[str, str]]) -> descriptor_pool.DescriptorPool:
    """Copy proto/, apply text replacements {file: (old, new)}, compile the copy
    with protoc and load it into a fresh descriptor pool."""
    import grpc_tools

    copy = tmp_path / "proto"
    for source in (ROOT / "proto").rglob("*.proto"):
        target = copy / source.relative_to(ROOT / "proto")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    for name, (old, new) in mutate.items():
        path = copy / "printernizer/stats/v1" / name
        text = path.read_text()
        assert old in text, f"mutation anchor not found in {name}: {old!r}"
        path.write_text(text.replace(old, new, 1))
    out = tmp_path / "contract.binpb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(copy)) for p in copy.rglob("*.proto")]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={copy}",
            f"--proto_path={well_known}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *files,
        ],
        check=True,
    )
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return pool


def usage_roots(pool: descriptor_pool.DescriptorPool) -> tuple:
    return (pool.FindMessageTypeByName(USAGE_EVENT), pool.FindMessageTypeByName(AGGREGATED_STATS))


# --- No free text -------------------------------------------------------------


def test_no_free_text_reachable_from_usage_messages() -> None:
    assert contract.free_text_violations() == []


def test_the_walk_covers_every_usage_message() -> None:
    names = {m.full_name for m in contract.reachable_messages(*contract.USAGE_ROOTS)}
    # Spot-check deep ones: the walk must follow nested and repeated fields.
    assert {
        "printernizer.stats.v1.PrinterTypeCount",
        "printernizer.stats.v1.JobFailureCount",
        "printernizer.stats.v1.Version",
        "google.protobuf.Timestamp",
        "printernizer.stats.v1.PrinterFleetObserved",
    } <= names
    # Every event kind of the oneof is reached.
    oneof = usage_event_pb2.UsageEvent.DESCRIPTOR.oneofs_by_name["kind"]
    assert {f.message_type.full_name for f in oneof.fields} <= names


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "aggregated_stats.proto",
            "uint32 jobs_created = 1 [(since_schema_version) = 1];",
            "uint32 jobs_created = 1 [(since_schema_version) = 1];\n  string note = 99;",
            "UsageCounts.note: string field",
        ),
        (
            "usage_event.proto",
            "message AppStopped {}",
            "message AppStopped {\n  map<string, uint32> reasons = 1;\n}",
            "AppStopped.reasons: map keyed by string",
        ),
        (
            # A string two messages deep, in a message only the event reaches.
            "common.proto",
            "bool prerelease = 4 [(since_schema_version) = 1];",
            "bool prerelease = 4 [(since_schema_version) = 1];\n  string build = 5;",
            "Version.build: string field",
        ),
        (
            "aggregated_stats.proto",
            "bool enabled = 2 [(since_schema_version) = 1];",
            "bool enabled = 2 [(since_schema_version) = 1];\n  bytes blob = 3;",
            "FeatureState.blob: bytes field that is not a declared identifier",
        ),
    ],
)
def test_free_text_in_a_usage_message_is_caught(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    pool = compile_mutated(tmp_path, {file: (old, new)})
    violations = contract.free_text_violations(usage_roots(pool))
    assert any(v.endswith(expected) for v in violations), violations


def test_identifier_fields_are_bytes_fields_of_the_report() -> None:
    fields = {f.full_name: f for f in contract.report_fields()}
    for name, size in contract.IDENTIFIER_FIELDS.items():
        assert fields[name].type == FieldDescriptor.TYPE_BYTES
        assert size == 16


# --- Enums --------------------------------------------------------------------


def test_every_enum_has_an_unspecified_zero() -> None:
    enums = list(contract.all_enums())
    assert len(enums) > 20
    assert contract.enum_zero_violations() == []


def test_an_enum_without_unspecified_zero_is_caught(tmp_path: Path) -> None:
    pool = compile_mutated(
        tmp_path,
        {"common.proto": ("FEATURE_UNSPECIFIED = 0;", "FEATURE_NONE = 0;\n  FEATURE_UNSPECIFIED = 99;")},
    )
    files = [pool.FindFileByName(f.name) for f in contract.contract_files()]
    assert contract.enum_zero_violations(files) == [
        "printernizer.stats.v1.Feature: zero value must be *_UNSPECIFIED"
    ]


def test_open_world_enums_have_an_other_value() -> None:
    for enum in ("Platform", "CpuArchitecture", "DeploymentMode", "PrinterType", "ErrorType", "Component"):
        descriptor = usage_event_pb2.DESCRIPTOR.pool.FindEnumTypeByName(f"printernizer.stats.v1.{enum}")
        assert any(v.name.endswith("_OTHER") for v in descriptor.values), enum


# --- Documentation of what leaves the installation ------------------------------


def test_every_field_that_leaves_says_why_it_is_collected() -> None:
    undocumented = [
        f.full_name
        for f in contract.report_fields() + contract.ingest_request_fields()
        # Well-known types (Timestamp's seconds/nanos) are documented upstream.
        if f.containing_type.file.package == contract.PACKAGE
        if not contract.why_collected(f)
    ]
    assert undocumented == []


def test_every_report_field_declares_the_schema_version_that_added_it() -> None:
    for field in contract.report_fields():
        version = contract.since_schema_version(field)
        assert 1 <= version <= contract.CURRENT_SCHEMA_VERSION, field.full_name


def test_current_schema_version_is_the_newest_enum_value() -> None:
    assert contract.CURRENT_SCHEMA_VERSION == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3


def released_contract() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString((ROOT / "proto/released.binpb").read_bytes())


def test_every_value_added_since_the_release_declares_its_schema_version() -> None:
    assert contract.undeclared_new_values(released_contract()) == []


def test_a_new_value_without_its_schema_version_is_caught() -> None:
    """As if FEATURE_MQTT and ERROR_TYPE_INTERNAL had not been released: they
    declare no version, so a report of the released schema would carry them."""
    released = released_contract()
    for file in released.file:
        for enum in file.enum_type:
            for value in list(enum.value):
                if value.name in ("FEATURE_MQTT", "ERROR_TYPE_INTERNAL"):
                    enum.value.remove(value)
    assert contract.undeclared_new_values(released) == [
        "printernizer.stats.v1.Feature.FEATURE_MQTT: added since the release, so it must declare"
        " value_since_schema_version after 1",
        "printernizer.stats.v1.ErrorType.ERROR_TYPE_INTERNAL: added since the release, so it must declare"
        " value_since_schema_version after 1",
    ]


def test_every_value_a_schema_version_adds_says_why_and_is_in_the_disclosure() -> None:
    assert contract.values_without_why() == []
    items = {item.path: item for item in contract.disclosure()}
    declared = [
        (enum, value)
        for enum in contract.report_enums()
        for value in enum.values
        if contract.declared_value_version(value)
    ]
    assert len(declared) >= 2 + 1 + 1 + 1 + 9 + 10  # features, printer, duration, reason, errors, components
    paths = {
        "Feature": "features.feature",
        "PrinterType": "printer_fleet.printers.printer_type",
        "JobDurationBucket": "usage.completed_job_durations.duration",
        "JobFailureReason": "usage.job_failures.reason",
        "ErrorType": "errors.error_type",
        "Component": "errors.component",
    }
    for enum, value in declared:
        item = items[f"{paths[enum.name]} = {value.name}"]
        assert item.since_schema_version == contract.declared_value_version(value) == 2
        assert item.why
    german = items["features.feature = FEATURE_GERMAN_COMPLIANCE"]
    assert "German business compliance" in german.why


def test_a_report_of_an_older_schema_carries_only_that_schemas_values() -> None:
    feature = aggregated_stats_pb2.FeatureState.DESCRIPTOR.fields_by_name["feature"].enum_type
    assert feature is not None
    new = feature.values_by_name["FEATURE_AUTO_JOB_CREATION"].number
    library = feature.values_by_name["FEATURE_LIBRARY"].number
    assert contract.value_in_schema(feature, library, 1)
    assert not contract.value_in_schema(feature, new, 1)
    assert contract.value_in_schema(feature, new, 2)
    assert not contract.value_in_schema(feature, 999, 2)
    duration = aggregated_stats_pb2.JobDurationCount.DESCRIPTOR.fields_by_name["duration"].enum_type
    assert duration is not None
    unknown = duration.values_by_name["JOB_DURATION_BUCKET_UNKNOWN"].number
    assert contract.value_for_schema(duration, unknown, 1) == 0  # no OTHER: UNSPECIFIED
    assert contract.value_for_schema(duration, unknown, 2) == unknown


def test_disclosure_lists_every_report_field_with_its_reason() -> None:
    items = contract.disclosure()
    paths = [item.path for item in items]
    assert "installation.country" in paths
    assert "usage.jobs_failed" in paths
    assert "errors.component" in paths
    assert all(item.why for item in items)
    country = next(item for item in items if item.path == "installation.country")
    assert "never from an IP address" in country.why


# --- Countries ------------------------------------------------------------------


def zone_tab_countries() -> set[str]:
    path = Path(tzdata.__file__).parent / "zoneinfo" / "zone.tab"
    return {line.split("\t")[0] for line in path.read_text().splitlines() if line and line[0] != "#"}


def test_every_country_of_the_time_zone_table_is_in_the_enum() -> None:
    names = set(country_pb2.Country.keys())
    missing = {code for code in zone_tab_countries() if f"COUNTRY_{code}" not in names}
    assert missing == set()


def test_country_numbers_are_iso_numeric_codes() -> None:
    assert country_pb2.COUNTRY_DE == 276
    assert country_pb2.COUNTRY_US == 840
    assert country_pb2.COUNTRY_JP == 392
    assert all(
        re.fullmatch(r"COUNTRY_([A-Z]{2}|UNSPECIFIED)", name)
        for name in country_pb2.Country.DESCRIPTOR.values_by_name
    )


# --- The few strings the contract has -------------------------------------------------------


def test_the_only_string_fields_are_the_reviewed_ones() -> None:
    assert sorted(contract.string_fields()) == sorted(contract.ALLOWED_STRING_FIELDS)


def test_no_allowed_string_can_leave_an_installation_or_carry_usage() -> None:
    roots = (*contract.USAGE_ROOTS, *contract.LEAVING_ROOTS)
    reachable = {m.full_name for m in contract.reachable_messages(*roots)}
    for name in contract.ALLOWED_STRING_FIELDS:
        assert name.rpartition(".")[0] not in reachable, name


def test_a_new_string_anywhere_is_caught(tmp_path: Path) -> None:
    pool = compile_mutated(
        tmp_path,
        {
            "agent_service.proto": (
                "  uint64 stored_events = 2;",
                "  uint64 stored_events = 2;\n  string note = 99;",
            )
        },
    )
    files = [pool.FindFileByName(f.name) for f in contract.contract_files()]
    assert "printernizer.stats.v1.GetStatusResponse.note" in contract.string_fields(files)
