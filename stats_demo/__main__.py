"""`python -m stats_demo`: show the usage-statistics system working on this machine.

At this stage of the project it presents the contract: the services and their
methods, what a weekly report contains and why (generated from the contract's
own comments), an example report as the exact bytes that would be sent, and the
contract's privacy checks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from google.protobuf import json_format
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    analytics_service_pb2,
    common_pb2,
    country_pb2,
    ingest_service_pb2,
)

from stats_common import contract

SERVICES = (
    (agent_service_pb2, "AgentService", "stats_agent", "local, on a Unix socket"),
    (ingest_service_pb2, "IngestService", "aggregation_server", "public, over TLS"),
    (analytics_service_pb2, "AnalyticsService", "analytics_server", "admin only"),
)

# The ingest server refuses larger reports before parsing them.
REPORT_SIZE_CAP = 10 * 1024


def example_report() -> aggregated_stats_pb2.AggregatedStats:
    """A plausible week of a small Home Assistant installation."""
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        report_id=bytes.fromhex("5f0c3a9e2b7d4e1f8a6c0d9b3e2f7a14"),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=bytes.fromhex("c2a4e1d07b3f4a9c8e5d6f1a2b3c4d5e"),
            app_version=common_pb2.Version(major=2, minor=7, patch=0),
            python_version=common_pb2.Version(major=3, minor=11, patch=7),
            platform=common_pb2.PLATFORM_LINUX,
            architecture=common_pb2.CPU_ARCHITECTURE_ARM64,
            deployment_mode=common_pb2.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON,
            country=country_pb2.COUNTRY_DE,
        ),
        period=common_pb2.IsoWeek(year=2026, week=46),
    )
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_BAMBU_LAB, count=2)
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, count=1)
    usage = report.usage
    usage.jobs_created, usage.jobs_completed, usage.jobs_failed = 23, 20, 2
    usage.job_failures.add(reason=common_pb2.JOB_FAILURE_REASON_FILAMENT_RUNOUT, count=2)
    usage.completed_job_durations.add(duration=common_pb2.JOB_DURATION_BUCKET_UNDER_4_HOURS, count=20)
    usage.files_downloaded, usage.uptime_hours, usage.app_starts = 31, 166, 1
    usage.printer_connections = 3
    report.features.add(feature=common_pb2.FEATURE_LIBRARY, enabled=True)
    report.features.add(feature=common_pb2.FEATURE_TIMELAPSE, enabled=False)
    report.errors.add(
        error_type=common_pb2.ERROR_TYPE_CONNECTION_TIMEOUT,
        component=common_pb2.COMPONENT_PRINTER_SERVICE,
        count=4,
    )
    return report


def section(title: str) -> None:
    print(f"\n== {title} ==")


def show_services() -> None:
    section("Services in the contract (proto/printernizer/stats/v1)")
    for module, name, command, reach in SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        print(f"{service.full_name}  [{reach}; served by `python -m {command}`]")
        for method in service.methods:
            print(f"  - {method.name}")


def show_disclosure() -> None:
    section("What a weekly report contains, and why (generated from the contract)")
    for item in contract.disclosure():
        if item.path.count(".") <= 1:  # deeper levels are the parts of versions and counts
            print(f"  {item.path:<32} {item.why}")


def show_example() -> None:
    report = example_report()
    data = report.SerializeToString()
    section(f"An example report: {len(data)} bytes on the wire (the ingest limit is {REPORT_SIZE_CAP})")
    print(json_format.MessageToJson(report, indent=2, always_print_fields_with_no_presence=True))


def run_checks() -> bool:
    section("Contract checks")
    checks = {
        "no free text reachable from UsageEvent or AggregatedStats": contract.free_text_violations(),
        "every enum has an *_UNSPECIFIED zero value": contract.enum_zero_violations(),
        "every report field says why it is collected": [
            f.full_name for f in contract.report_fields() if not contract.why_collected(f)
        ],
    }
    ok = True
    for name, problems in checks.items():
        print(f"  [{'ok' if not problems else 'FAIL'}] {name}")
        for problem in problems:
            print(f"        {problem}")
        ok = ok and not problems
    for command in ("stats_agent", "aggregation_server", "analytics_server", "gateway"):
        result = subprocess.run(
            [sys.executable, "-m", command, "--help"], capture_output=True, text=True, timeout=60
        )
        print(f"  [{'ok' if result.returncode == 0 else 'FAIL'}] python -m {command} --help")
        ok = ok and result.returncode == 0
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stats_demo", description=__doc__)
    parser.parse_args(argv)
    print(f"Printernizer usage statistics: report schema version {contract.CURRENT_SCHEMA_VERSION}")
    show_services()
    show_disclosure()
    show_example()
    ok = run_checks()
    print("\nAll checks passed." if ok else "\nSome checks failed.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
