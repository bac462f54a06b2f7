"""The aggregation server's checks on a submitted report (domain rules, no transport)."""

from __future__ import annotations

import uuid

import pytest
from printernizer.stats.v1 import aggregated_stats_pb2, common_pb2, country_pb2
from printernizer_stats.aggregation.validation import check_report, normalise_unknown_values
from printernizer_stats.common import consent_levels
from printernizer_stats.common.identity import signature_is_valid
from printernizer_stats.common.weeks import Week

from .conftest import FIRST_KEPT, INSTALLATION, NOW, current_report, valid_report


def fields(report: aggregated_stats_pb2.AggregatedStats, installation: bytes = INSTALLATION) -> list[str]:
    return [v.field for v in check_report(report, installation, NOW, FIRST_KEPT)]


def test_a_valid_report_passes() -> None:
    assert check_report(valid_report(), INSTALLATION, NOW, FIRST_KEPT) == []


def test_a_report_older_than_retention_keeps_is_refused() -> None:
    assert fields(valid_report(FIRST_KEPT)) == []
    assert fields(valid_report(FIRST_KEPT.previous())) == ["period"]


def test_a_report_for_the_week_in_progress_is_refused() -> None:
    assert fields(valid_report(Week.containing(NOW))) == ["period"]


def test_a_report_of_a_week_that_does_not_exist_is_refused() -> None:
    report = valid_report()
    report.period.week = 53  # 2026 has 53 ISO weeks; 2025 does not
    report.period.year = 2025
    assert "period" in fields(report)


def test_unknown_schema_version() -> None:
    report = valid_report()
    report.schema_version = 99  # type: ignore[assignment]
    assert fields(report) == ["schema_version"]


def test_report_id_must_be_derived_from_installation_and_week() -> None:
    report = valid_report()
    report.report_id = uuid.uuid4().bytes
    assert fields(report) == ["report_id"]


def test_identifier_sizes_and_the_envelope_must_match() -> None:
    report = valid_report()
    report.installation.installation_id = b"short"
    assert fields(report) == ["installation.installation_id"]
    report.installation.installation_id = uuid.uuid1().bytes  # 16 bytes, but not a version-4 UUID
    assert fields(report) == ["installation.installation_id"]
    assert fields(valid_report(), installation=uuid.uuid4().bytes) == [
        "installation.installation_id",
        "report_id",
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r.usage, "uptime_hours", 169), "usage.uptime_hours"),
        (lambda r: setattr(r.usage, "unclean_shutdowns", 3), "usage.unclean_shutdowns"),
        (lambda r: setattr(r.usage, "jobs_failed", 7), "usage.job_failures"),
        (lambda r: setattr(r.usage, "jobs_completed", 4), "usage.completed_job_durations"),
        (lambda r: setattr(r.usage, "files_downloaded", 2_000_000), "usage.files_downloaded"),
        (lambda r: setattr(r.errors[0], "count", 0), "errors[0].count"),
        (lambda r: setattr(r.printer_fleet.printers[0], "count", 20_000), "printer_fleet.printers[0].count"),
        (lambda r: setattr(r.installation.app_version, "major", 70_000), "installation.app_version.major"),
        (lambda r: r.features.add(feature=common_pb2.FEATURE_LIBRARY), "features[1]"),
        (
            lambda r: r.errors.add(
                error_type=common_pb2.ERROR_TYPE_TIMEOUT, component=common_pb2.COMPONENT_API, count=1
            ),
            "errors[1]",
        ),
        (
            lambda r: r.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, count=1),
            "printer_fleet.printers[1]",
        ),
    ],
)
def test_implausible_or_duplicated_values_name_the_field(change: object, field: str) -> None:
    report = valid_report()
    change(report)  # type: ignore[operator]
    assert field in fields(report)


def test_unknown_enum_values_become_other_not_raw_values() -> None:
    report = valid_report()
    report.installation.platform = 77  # type: ignore[assignment]  # a value from a newer contract
    report.printer_fleet.printers[0].printer_type = 88  # type: ignore[assignment]
    report.installation.country = 999  # type: ignore[assignment]  # no OTHER: becomes UNSPECIFIED
    assert normalise_unknown_values(report) == 3
    assert report.installation.platform == common_pb2.PLATFORM_OTHER
    assert report.printer_fleet.printers[0].printer_type == common_pb2.PRINTER_TYPE_OTHER
    assert report.installation.country == country_pb2.COUNTRY_UNSPECIFIED
    assert normalise_unknown_values(report) == 0


def schema_2_values(report: aggregated_stats_pb2.AggregatedStats) -> aggregated_stats_pb2.AggregatedStats:
    """`report` with a value schema 2 added in every list that can carry one."""
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_UNKNOWN, count=1)
    report.features.add(feature=common_pb2.FEATURE_GERMAN_COMPLIANCE, enabled=True)
    report.usage.jobs_completed += 1
    report.usage.completed_job_durations.add(duration=common_pb2.JOB_DURATION_BUCKET_UNKNOWN, count=1)
    report.usage.jobs_failed += 1
    report.usage.job_failures.add(reason=common_pb2.JOB_FAILURE_REASON_UNKNOWN, count=1)
    conflict, business = common_pb2.ERROR_TYPE_CONFLICT, common_pb2.COMPONENT_BUSINESS
    report.errors.add(error_type=conflict, component=business, count=2)
    return report


def test_a_schema_2_report_keeps_the_values_schema_2_added() -> None:
    report = schema_2_values(valid_report())
    report.schema_version = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_2
    sent = report.SerializeToString()
    assert check_report(report, INSTALLATION, NOW, FIRST_KEPT) == []
    assert normalise_unknown_values(report) == 0
    assert report.SerializeToString() == sent


def test_a_schema_1_report_never_stores_a_value_schema_2_added() -> None:
    """A value newer than the report's schema is one the user did not consent
    to: it is treated as a value the server does not know (counted, never
    stored), while the rest of the report, and older reports, keep working."""
    report = schema_2_values(valid_report())
    assert report.schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
    assert check_report(report, INSTALLATION, NOW, FIRST_KEPT) == []
    # printer type, feature, duration, reason, error type and component
    assert normalise_unknown_values(report) == 6
    assert [(p.printer_type, p.count) for p in report.printer_fleet.printers] == [
        (common_pb2.PRINTER_TYPE_PRUSA, 2),
        (common_pb2.PRINTER_TYPE_OTHER, 1),
    ]
    assert [f.feature for f in report.features] == [common_pb2.FEATURE_LIBRARY]
    assert [(d.duration, d.count) for d in report.usage.completed_job_durations] == [
        (common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR, 3),
        (common_pb2.JOB_DURATION_BUCKET_UNSPECIFIED, 1),
    ]
    assert [(f.reason, f.count) for f in report.usage.job_failures] == [
        (common_pb2.JOB_FAILURE_REASON_CANCELLED, 2),
        (common_pb2.JOB_FAILURE_REASON_OTHER, 1),
    ]
    assert (common_pb2.ERROR_TYPE_OTHER, common_pb2.COMPONENT_OTHER, 2) in [
        (e.error_type, e.component, e.count) for e in report.errors
    ]
    assert check_report(report, INSTALLATION, NOW, FIRST_KEPT) == []
    assert normalise_unknown_values(report) == 0


def test_signatures() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    data = valid_report().SerializeToString()
    signature = key.sign(data)
    assert signature_is_valid(public, signature, data)
    assert not signature_is_valid(public, signature, data + b"\x00")
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert not signature_is_valid(other, signature, data)
    assert not signature_is_valid(public[:31], signature, data)
    assert not signature_is_valid(public, signature[:63], data)


# --- consent levels ------------------------------------------------------------------------------------


def at_level(level: int) -> aggregated_stats_pb2.AggregatedStats:
    """The valid report as an agent at `level` sends it (schema version 3)."""
    report = current_report()
    report.consent_level = level  # type: ignore[assignment]
    consent_levels.keep_only(report, level)
    return report


@pytest.mark.parametrize("level", consent_levels.LEVELS)
def test_a_report_holding_exactly_its_level_passes(level: int) -> None:
    assert fields(at_level(level)) == []


@pytest.mark.parametrize("level", consent_levels.LEVELS[:-1])
def test_a_report_holding_more_than_its_level_is_refused_naming_each_part(level: int) -> None:
    report = current_report()  # every part
    report.consent_level = level  # type: ignore[assignment]
    beyond = [name for name, lowest in consent_levels.LEVEL_OF_FIELD.items() if lowest > level]
    assert sorted(fields(report)) == sorted(beyond)


def test_a_level_is_required_from_its_schema_version_and_refused_before() -> None:
    unset = at_level(consent_levels.EVERYTHING)
    unset.ClearField("consent_level")
    assert fields(unset) == ["consent_level"]
    unknown = at_level(consent_levels.EVERYTHING)
    unknown.consent_level = 9  # type: ignore[assignment]
    assert fields(unknown) == ["consent_level"]
    early = valid_report()
    early.schema_version = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_2
    early.consent_level = consent_levels.BASICS  # type: ignore[assignment]
    assert fields(early) == ["consent_level"]
    # Before levels, a report holds every part, and says nothing of a level.
    assert fields(valid_report()) == []
    assert consent_levels.level_of(valid_report()) == consent_levels.EVERYTHING


# --- jobs per printer family (schema version 3) ---------------------------------------------------------


def test_jobs_per_printer_family_must_add_up_to_the_jobs() -> None:
    assert fields(current_report()) == []
    report = current_report()
    report.usage.jobs_by_printer_type[1].completed = 2  # 4 completed on the families, 3 in all
    assert fields(report) == ["usage.jobs_by_printer_type"]
    report = current_report()
    report.usage.jobs_by_printer_type[0].failed = 1
    assert fields(report) == ["usage.jobs_by_printer_type"]
    report = current_report()
    del report.usage.jobs_by_printer_type[:]  # jobs on no family at all
    assert fields(report) == ["usage.jobs_by_printer_type", "usage.jobs_by_printer_type"]
    report = current_report()
    report.usage.jobs_by_printer_type.add(printer_type=common_pb2.PRINTER_TYPE_CREALITY)  # no jobs
    assert fields(report) == ["usage.jobs_by_printer_type[2]"]
    report = current_report()
    report.usage.jobs_by_printer_type.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA)  # listed twice
    assert "usage.jobs_by_printer_type[2]" in fields(report)


def test_a_field_newer_than_the_reports_schema_version_is_refused_naming_it() -> None:
    early = valid_report()
    early.schema_version = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_2
    early.usage.jobs_by_printer_type.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, completed=3, failed=2)
    assert fields(early) == ["usage.jobs_by_printer_type"]
    # Without the entries a version-2 report's jobs are fine: it had no way to say.
    assert fields(valid_report()) == []


def test_unknown_printer_families_merge_with_their_jobs_summed() -> None:
    report = current_report()
    del report.usage.jobs_by_printer_type[:]
    report.usage.jobs_by_printer_type.add(printer_type=common_pb2.PRINTER_TYPE_OTHER, completed=1)
    report.usage.jobs_by_printer_type.add(printer_type=900, completed=1, failed=1)  # type: ignore[arg-type]
    report.usage.jobs_by_printer_type.add(printer_type=901, completed=1, failed=1)  # type: ignore[arg-type]
    assert fields(report) == []
    assert normalise_unknown_values(report) == 2
    [other] = report.usage.jobs_by_printer_type
    assert (other.printer_type, other.completed, other.failed) == (common_pb2.PRINTER_TYPE_OTHER, 3, 2)
