"""The generated Python code imports, round-trips, and serves."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format
from printernizer.stats.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    aggregated_stats_pb2,
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    common_pb2,
    country_pb2,
    ingest_admin_service_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    usage_event_pb2,
)
from printernizer_stats.common import contract

from ..conftest import ROOT

# The seeds' limit for one report; the ingest server enforces it before parsing.
REPORT_SIZE_CAP = 10 * 1024


def maximal_report() -> aggregated_stats_pb2.AggregatedStats:
    """A report with every list as long as the contract allows and large counts."""
    big = 2**31
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        report_id=bytes(range(16)),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=bytes(range(16, 32)),
            app_version=common_pb2.Version(major=999, minor=999, patch=999, prerelease=True),
            python_version=common_pb2.Version(major=3, minor=13, patch=99),
            platform=common_pb2.PLATFORM_LINUX,
            architecture=common_pb2.CPU_ARCHITECTURE_ARM64,
            deployment_mode=common_pb2.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON,
            country=country_pb2.COUNTRY_ZW,
        ),
        period=common_pb2.IsoWeek(year=2026, week=53),
    )
    for printer_type in common_pb2.PrinterType.values()[1:]:
        report.printer_fleet.printers.add(printer_type=printer_type, count=big)
    usage = report.usage
    for name in ("jobs_created", "jobs_completed", "jobs_failed", "files_downloaded", "files_uploaded"):
        setattr(usage, name, big)
    usage.uptime_hours = 168
    for reason in common_pb2.JobFailureReason.values()[1:]:
        usage.job_failures.add(reason=reason, count=big)
    for bucket in common_pb2.JobDurationBucket.values()[1:]:
        usage.completed_job_durations.add(duration=bucket, count=big)
    for feature in common_pb2.Feature.values()[1:]:
        report.features.add(feature=feature, enabled=True)
    for error_type in common_pb2.ErrorType.values()[1:]:
        for component in common_pb2.Component.values()[1:]:
            report.errors.add(error_type=error_type, component=component, count=big)
    return report


def test_a_maximal_report_fits_the_size_cap() -> None:
    size = maximal_report().ByteSize()
    assert size < REPORT_SIZE_CAP, size


def test_report_round_trips_through_bytes_and_json() -> None:
    report = maximal_report()
    assert aggregated_stats_pb2.AggregatedStats.FromString(report.SerializeToString()) == report
    as_json = json_format.MessageToJson(report)
    assert "COUNTRY_ZW" in as_json
    parsed = json_format.Parse(as_json, aggregated_stats_pb2.AggregatedStats())
    assert parsed == report


def test_usage_event_oneof_holds_exactly_one_kind() -> None:
    event = usage_event_pb2.UsageEvent(job_created=usage_event_pb2.JobCreated(printer_type=2))
    event.error_occurred.error_type = common_pb2.ERROR_TYPE_TIMEOUT
    assert event.WhichOneof("kind") == "error_occurred"
    assert not event.HasField("job_created")


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        (
            agent_service_pb2,
            "AgentService",
            {
                "RecordEvents",
                "GetConsent",
                "SetConsent",
                "GetLocalStats",
                "PreviewReport",
                "ExportData",
                "DeleteAllData",
                "GetStatus",
                "SubmitNow",
                "ListSentReports",
            },
        ),
        (ingest_service_pb2, "IngestService", {"SubmitReports", "DeleteInstallation"}),
        (
            ingest_admin_service_pb2,
            "IngestAdminService",
            {"GetIngestStatus", "DeleteInstallationAsOperator", "PurgeExpiredReports"},
        ),
        (
            analytics_service_pb2,
            "AnalyticsService",
            {
                "GetOverview",
                "GetInstallationTrend",
                "GetDistribution",
                "GetFeatureAdoption",
                "GetVersionMigration",
                "GetFeatureTrend",
                "GetErrorTrend",
                "GetErrorRates",
                "ListAnomalies",
                "ExportAggregates",
                "GetReleaseHealth",
                "GetUsage",
                "GetFeatureAdoptionByVersion",
            },
        ),
    ],
)
def test_services_define_the_expected_methods(module: object, service: str, methods: set[str]) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    assert {m.name for m in descriptor.methods} == methods


def test_every_contract_module_has_been_generated() -> None:
    assert {f.name for f in contract.contract_files()} == {
        f"printernizer/stats/v1/{p.stem}.proto"
        for p in (ROOT / "proto/printernizer/stats/v1").glob("*.proto")
    }


class _UnimplementedIngest(ingest_service_pb2_grpc.IngestServiceServicer):
    """The generated base servicer answers UNIMPLEMENTED for every method."""


async def test_generated_stubs_and_servicers_talk_over_grpc() -> None:
    server = grpc.aio.server()
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(_UnimplementedIngest(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SubmitReports(ingest_service_pb2.SubmitReportsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # The other services' stubs construct against the same channel type.
            agent_service_pb2_grpc.AgentServiceStub(channel)
            analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    finally:
        await server.stop(None)
