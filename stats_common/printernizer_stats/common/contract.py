"""The contract's rules, checked on the compiled descriptors.

The `.proto` files are the single source of truth; this module reads what they
say at run time: which messages describe usage, which fields are fixed-size
identifiers, which schema version introduced a field, and why each collected
field is collected (its "Why:" comment, for the user-facing disclosure).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    EnumValueDescriptor,
    FieldDescriptor,
    FileDescriptor,
)
from google.protobuf.message import Message
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    analytics_service_pb2,
    common_pb2,
    country_pb2,
    ingest_admin_service_pb2,
    ingest_service_pb2,
    options_pb2,
    usage_event_pb2,
)

from . import consent_levels

PACKAGE = "printernizer.stats.v1"

CONTRACT_MODULES: tuple[ModuleType, ...] = (
    common_pb2,
    country_pb2,
    options_pb2,
    usage_event_pb2,
    aggregated_stats_pb2,
    ingest_service_pb2,
    ingest_admin_service_pb2,
    agent_service_pb2,
    analytics_service_pb2,
)

# The messages that describe usage. Nothing reachable from them may carry free
# text: UsageEvent is what the host app records, AggregatedStats what leaves.
USAGE_ROOTS: tuple[Descriptor, ...] = (
    usage_event_pb2.UsageEvent.DESCRIPTOR,
    aggregated_stats_pb2.AggregatedStats.DESCRIPTOR,
)

# The only `bytes` fields allowed in usage messages: random identifiers of a
# fixed size (a UUID's 16 bytes), validated on both ends.
IDENTIFIER_FIELDS: dict[str, int] = {
    f"{PACKAGE}.AggregatedStats.report_id": 16,
    f"{PACKAGE}.InstallationInfo.installation_id": 16,
}

# The only string fields in the whole contract, each with why it may be text.
# None is reachable from the usage messages or from anything that leaves an
# installation; a test fails on any other string field.
ALLOWED_STRING_FIELDS: dict[str, str] = {
    f"{PACKAGE}.PreviewReportResponse.report_json": "local only: the user's preview, rendered for reading",
    f"{PACKAGE}.AgentSettings.time_zone": "local only: the user's own setting, in their export",
    f"{PACKAGE}.GetStatusResponse.last_failure_code": "local only: a gRPC status code name, for the user",
    f"{PACKAGE}.RefusedEvent.field": "local only: the agent's answer to its host, a field path",
    f"{PACKAGE}.RefusedEvent.reason": "local only: the agent's answer to its host, why an event was refused",
    f"{PACKAGE}.GroupValue.label": "admin analytics output: a display label made by the server",
    f"{PACKAGE}.Anomaly.description": "admin analytics output: the rule in words, made by the server",
    f"{PACKAGE}.ReleaseRegression.description": "admin analytics output: the rule in words, by the server",
}

# What leaves an installation: the report, and the ingest requests around it.
LEAVING_ROOTS: tuple[Descriptor, ...] = (
    aggregated_stats_pb2.AggregatedStats.DESCRIPTOR,
    ingest_service_pb2.SubmitReportsRequest.DESCRIPTOR,
    ingest_service_pb2.DeleteInstallationRequest.DESCRIPTOR,
    ingest_service_pb2.DeletionOrder.DESCRIPTOR,
)


def string_fields(files: Iterable[FileDescriptor] | None = None) -> list[str]:
    """Full names of every string field in the contract's messages."""
    found: list[str] = []

    def walk(message: Descriptor) -> None:
        found.extend(f.full_name for f in message.fields if f.type == FieldDescriptor.TYPE_STRING)
        for inner in message.nested_types:
            walk(inner)

    for file in files if files is not None else contract_files():
        for message in file.message_types_by_name.values():
            walk(message)
    return found


# The newest report schema this code knows (the highest ReportSchemaVersion).
CURRENT_SCHEMA_VERSION: int = max(aggregated_stats_pb2.ReportSchemaVersion.values())


def contract_files() -> list[FileDescriptor]:
    return [module.DESCRIPTOR for module in CONTRACT_MODULES]


def reachable_messages(*roots: Descriptor) -> list[Descriptor]:
    """Every message type reachable from the roots through fields, roots first."""
    seen: dict[str, Descriptor] = {}
    pending = list(roots)
    while pending:
        message = pending.pop(0)
        if message.full_name in seen:
            continue
        seen[message.full_name] = message
        pending.extend(f.message_type for f in message.fields if f.message_type is not None)
    return list(seen.values())


def _map_key_type(field: FieldDescriptor) -> int | None:
    """The key type of a map field, None for any other field."""
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return None
    key_type: int = entry.fields_by_name["key"].type
    return key_type


def free_text_violations(roots: Iterable[Descriptor] = USAGE_ROOTS) -> list[str]:
    """Fields reachable from the roots that could carry free text.

    A `string` field, a map keyed by string, and any `bytes` field other than
    the declared fixed-size identifiers are violations.
    """
    problems: list[str] = []
    for message in reachable_messages(*roots):
        for field in message.fields:
            if _map_key_type(field) == FieldDescriptor.TYPE_STRING:
                problems.append(f"{field.full_name}: map keyed by string")
            elif field.type == FieldDescriptor.TYPE_STRING:
                problems.append(f"{field.full_name}: string field")
            elif field.type == FieldDescriptor.TYPE_BYTES and field.full_name not in IDENTIFIER_FIELDS:
                problems.append(f"{field.full_name}: bytes field that is not a declared identifier")
    return problems


def all_enums(files: Iterable[FileDescriptor] | None = None) -> Iterator[EnumDescriptor]:
    """Every enum in the contract, top-level and nested."""

    def nested(message: Descriptor) -> Iterator[EnumDescriptor]:
        yield from message.enum_types
        for inner in message.nested_types:
            yield from nested(inner)

    for file in files if files is not None else contract_files():
        yield from file.enum_types_by_name.values()
        for message in file.message_types_by_name.values():
            yield from nested(message)


def enum_zero_violations(files: Iterable[FileDescriptor] | None = None) -> list[str]:
    """Enums whose zero value is missing or not named `<ENUM>_UNSPECIFIED`."""
    problems = []
    for enum in all_enums(files):
        zero = enum.values_by_number.get(0)
        if zero is None or not zero.name.endswith("_UNSPECIFIED"):
            problems.append(f"{enum.full_name}: zero value must be *_UNSPECIFIED")
    return problems


def since_schema_version(field: FieldDescriptor) -> int:
    """The report schema version that introduced a field (0 when undeclared)."""
    value: int = field.GetOptions().Extensions[options_pb2.since_schema_version]
    return value


def declared_value_version(value: EnumValueDescriptor) -> int:
    """The report schema version an enum value declares it was introduced in
    (`value_since_schema_version`); 0 for the first version's values, which
    declare none."""
    declared: int = value.GetOptions().Extensions[options_pb2.value_since_schema_version]
    return declared


_VALUE_VERSIONS: dict[str, dict[int, int]] = {}


def _value_versions(enum: EnumDescriptor) -> dict[int, int]:
    """number -> the schema version that introduced it (1 when undeclared)."""
    versions = _VALUE_VERSIONS.get(enum.full_name)
    if versions is None:
        versions = {v.number: declared_value_version(v) or 1 for v in enum.values}
        _VALUE_VERSIONS[enum.full_name] = versions
    return versions


def value_in_schema(enum: EnumDescriptor, number: int, schema_version: int) -> bool:
    """Whether a report of `schema_version` may carry `number`: a value of the
    enum that was introduced in that version or before."""
    since = _value_versions(enum).get(number)
    return since is not None and since <= schema_version


def fallback_value(enum: EnumDescriptor) -> int:
    """What a value a report may not carry becomes: the enum's OTHER value,
    UNSPECIFIED (0) where it has none."""
    return next((v.number for v in enum.values if v.name.endswith("_OTHER")), 0)


def value_for_schema(enum: EnumDescriptor, number: int, schema_version: int) -> int:
    """`number` when a report of `schema_version` may carry it, else the fallback."""
    return number if value_in_schema(enum, number, schema_version) else fallback_value(enum)


def report_fields() -> list[FieldDescriptor]:
    """Every field that can leave an installation inside a report."""
    return [
        field
        for message in reachable_messages(aggregated_stats_pb2.AggregatedStats.DESCRIPTOR)
        for field in message.fields
    ]


# Enums a report carries whose values are not a matter of consent: the schema
# versions themselves, and ISO 3166 countries (generated from the tz database).
UNVERSIONED_ENUMS = (f"{PACKAGE}.ReportSchemaVersion", f"{PACKAGE}.Country")


def report_enums() -> list[EnumDescriptor]:
    """Every enum a report carries, in the order the report reaches them."""
    found: dict[str, EnumDescriptor] = {}
    for field in report_fields():
        if field.enum_type is not None:
            found.setdefault(field.enum_type.full_name, field.enum_type)
    return list(found.values())


def undeclared_new_values(released: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Values of enums a report carries that the released contract lacks and
    that do not declare a schema version newer than the released contract's
    newest: a new value must wait for the user's consent to a new version."""
    released_enums: dict[str, set[str]] = {}
    released_version = 0
    for file in released.file:
        if file.package != PACKAGE:
            continue
        for enum_proto in file.enum_type:
            released_enums[f"{PACKAGE}.{enum_proto.name}"] = {v.name for v in enum_proto.value}
            if enum_proto.name == "ReportSchemaVersion":
                released_version = max(v.number for v in enum_proto.value)
    problems: list[str] = []
    for enum in report_enums():
        if enum.full_name in UNVERSIONED_ENUMS or enum.full_name not in released_enums:
            continue  # a new enum comes with a new field, which declares its version
        for value in enum.values:
            declared = declared_value_version(value)
            if value.name not in released_enums[enum.full_name] and not (
                released_version < declared <= CURRENT_SCHEMA_VERSION
            ):
                problems.append(
                    f"{value_name(value)}: added since the release, so it must declare"
                    f" value_since_schema_version after {released_version}"
                )
    return problems


def values_without_why() -> list[str]:
    """Enum values that declare a schema version (so the disclosure lists them)
    but say nothing about why they are collected."""
    return [
        value_name(value)
        for enum in all_enums()
        for value in enum.values
        if declared_value_version(value) and not why_for(value_name(value))
    ]


# Fields of the public ingest requests: they leave the installation too.
def ingest_request_fields() -> list[FieldDescriptor]:
    roots = (
        ingest_service_pb2.SubmitReportsRequest.DESCRIPTOR,
        ingest_service_pb2.DeleteInstallationRequest.DESCRIPTOR,
        ingest_service_pb2.DeletionOrder.DESCRIPTOR,
    )
    return [field for message in reachable_messages(*roots) for field in message.fields]


# --- Comments (from the descriptor set generated with source info) -----------

_MESSAGE_TYPE, _ENUM_TYPE = 4, 5  # FileDescriptorProto field numbers
_FIELD, _NESTED_TYPE, _NESTED_ENUM = 2, 3, 4  # DescriptorProto field numbers
_ENUM_VALUE = 2  # EnumDescriptorProto field number


@cache
def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    # Beside the generated modules (printernizer.stats.v1 is a namespace
    # package, which importlib.resources cannot read from on Python 3.11).
    path = Path(common_pb2.__file__).with_name("contract_descriptor.binpb")
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def _enum_comments(
    e: descriptor_pb2.EnumDescriptorProto,
    scope: str,
    path: tuple[int, ...],
    by_path: dict[tuple[int, ...], str],
    found: dict[str, str],
) -> None:
    name = f"{scope}.{e.name}"
    found[name] = by_path.get(path, "")
    for i, value in enumerate(e.value):
        found[f"{name}.{value.name}"] = by_path.get((*path, _ENUM_VALUE, i), "")


def _message_comments(
    m: descriptor_pb2.DescriptorProto,
    scope: str,
    path: tuple[int, ...],
    by_path: dict[tuple[int, ...], str],
    found: dict[str, str],
) -> None:
    name = f"{scope}.{m.name}"
    found[name] = by_path.get(path, "")
    for i, field in enumerate(m.field):
        found[f"{name}.{field.name}"] = by_path.get((*path, _FIELD, i), "")
    for i, inner in enumerate(m.nested_type):
        _message_comments(inner, name, (*path, _NESTED_TYPE, i), by_path, found)
    for i, inner_enum in enumerate(m.enum_type):
        _enum_comments(inner_enum, name, (*path, _NESTED_ENUM, i), by_path, found)


@cache
def comments() -> dict[str, str]:
    """Leading comments of every message, field, enum and enum value of the
    contract, by full name, as written in the `.proto` files."""
    found: dict[str, str] = {}
    for file in _descriptor_set().file:
        if file.package != PACKAGE:
            continue
        by_path = {
            tuple(location.path): location.leading_comments.strip()
            for location in file.source_code_info.location
            if location.leading_comments
        }
        for i, m in enumerate(file.message_type):
            _message_comments(m, file.package, (_MESSAGE_TYPE, i), by_path, found)
        for i, e in enumerate(file.enum_type):
            _enum_comments(e, file.package, (_ENUM_TYPE, i), by_path, found)
    return found


def why_collected(field: FieldDescriptor) -> str:
    """The reason a field is collected: its comment from "Why:" on, one line."""
    return why_for(field.full_name)


def value_name(value: EnumValueDescriptor) -> str:
    """An enum value's name within its enum ("printernizer.stats.v1.Feature.FEATURE_MQTT"),
    the key of its comment (protobuf itself scopes values beside their enum)."""
    return f"{value.type.full_name}.{value.name}"


def why_for(full_name: str) -> str:
    """The "Why:" part of a field's or enum value's comment, one line."""
    comment = comments().get(full_name, "")
    start = comment.find("Why:")
    if start < 0:
        return ""
    return " ".join(comment[start + len("Why:") :].split())


@dataclass(frozen=True)
class DisclosureItem:
    """One line of "what we collect": a field of the report and why, or a value
    added to one of its enums after the first schema version ("features.feature
    = FEATURE_GERMAN_COMPLIANCE"), so the user sees what a new version adds;
    `level` is the lowest consent level that shares it (a ConsentLevel)."""

    path: str
    why: str
    since_schema_version: int
    level: int


# "What we never collect", shown beside the disclosure. Each line is a kind of
# data that a report cannot express: a report has no free-text field
# (`free_text_violations` stays empty, tested), times are whole weeks and
# durations and sizes are ranges.
NEVER_COLLECTED = (
    "names, e-mail addresses or any other text that you type",
    "file names, file paths or file contents",
    "IP addresses, host names or MAC addresses",
    "serial numbers of printers or of the computer",
    "exact times (only the week a report covers) or exact durations and sizes (only ranges)",
    "clicks, pages viewed or time spent in the app",
)


def disclosure() -> list[DisclosureItem]:
    """What a report contains and why, in the contract's order, generated from
    the contract itself so the disclosure cannot drift from what is sent. A
    field is followed by the values its enum gained after the first version.
    Each item says from which consent level it is shared: that of the report's
    part it belongs to (common.consent_levels)."""
    items: list[DisclosureItem] = []

    def walk(message: Descriptor, prefix: str, seen: tuple[str, ...]) -> None:
        for field in message.fields:
            path = f"{prefix}{field.name}"
            part = path.split(".")[0]
            level = consent_levels.LEVEL_OF_FIELD.get(part, consent_levels.BASICS)
            items.append(DisclosureItem(path, why_collected(field), since_schema_version(field), level))
            for value in field.enum_type.values if field.enum_type is not None else ():
                if declared_value_version(value):
                    why = why_for(value_name(value))
                    since = declared_value_version(value)
                    items.append(DisclosureItem(f"{path} = {value.name}", why, since, level))
            if field.message_type is not None and field.message_type.full_name not in seen:
                walk(field.message_type, f"{path}.", (*seen, field.message_type.full_name))

    root = aggregated_stats_pb2.AggregatedStats.DESCRIPTOR
    walk(root, "", (root.full_name,))
    return items


def strip_fields_newer_than(message: Message, schema_version: int) -> None:
    """Clear, in place, every field introduced after `schema_version`: the agent
    never sends a field newer than the version the user consented to. (Enum
    values newer than it are mapped when the report is built, where equal
    entries can be merged: see the agent's report builder.)"""
    for field, value in message.ListFields():
        if since_schema_version(field) > schema_version:
            message.ClearField(field.name)
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                strip_fields_newer_than(item, schema_version)
