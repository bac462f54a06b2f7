"""`python -m stats_demo`: show the usage-statistics system working on this machine.

Starts a real stats agent on a private Unix socket (in a temporary directory,
or --data-dir), lets an example host app record a few days of usage through the
SDK, and walks through what a Printernizer user sees and controls: statistics
off by default, the local figures, opting in, the exact bytes of the next
report, the export, opting out and deleting everything. It also shows the
contract: its services and what a report contains and why.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from printernizer.stats.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    aggregated_stats_pb2,
    analytics_service_pb2,
    ingest_service_pb2,
)

from stats_agent.process import agent_process
from stats_agent.sdk import (
    Component,
    DeploymentMode,
    Feature,
    FileType,
    JobFailureReason,
    PrinterType,
    StatsClient,
)
from stats_common import contract

SERVICES = (
    (agent_service_pb2, "AgentService", "stats_agent", "local, on a Unix socket"),
    (ingest_service_pb2, "IngestService", "aggregation_server", "public, over TLS"),
    (analytics_service_pb2, "AnalyticsService", "analytics_server", "admin only"),
)
RPC_TIMEOUT = 10


def section(title: str) -> None:
    print(f"\n== {title} ==")


def show_contract() -> None:
    section("The contract (proto/printernizer/stats/v1)")
    for module, name, command, reach in SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        methods = ", ".join(m.name for m in service.methods)
        print(f"{service.full_name} [{reach}; `python -m {command}`]\n  {methods}")
    section("What a weekly report contains, and why (generated from the contract)")
    for item in contract.disclosure():
        if item.path.count(".") <= 1:  # deeper levels are the parts of versions and counts
            print(f"  {item.path:<32} {item.why}")


@contextlib.contextmanager
def running_agent(data_dir: Path) -> Iterator[Path]:
    """`python -m stats_agent` with its socket and database under data_dir."""
    socket_path, db_path = data_dir / "run" / "agent.sock", data_dir / "agent.db"
    environment = {k: v for k, v in os.environ.items() if k != "DO_NOT_TRACK"}
    options = ("--timezone", "Europe/Berlin", "--log-level", "WARNING")
    with agent_process(socket_path, db_path, *options, env=environment) as agent:
        print(f"stats agent running (pid {agent.pid}) on unix:{socket_path}")
        yield socket_path
    print(f"stats agent stopped (exit code {agent.returncode})")


def example_host_app(stats: StatsClient, days: int) -> int:
    """A small Printernizer stand-in using the SDK at its integration points."""
    recorded = 0
    stats.app_started("2.7.0", DeploymentMode.HOME_ASSISTANT_ADDON)
    stats.printer_fleet({PrinterType.BAMBU_LAB: 2, PrinterType.PRUSA: 1})
    stats.feature(Feature.LIBRARY, enabled=True)
    stats.feature(Feature.TIMELAPSE, enabled=False)
    recorded += 4
    for day in range(days):
        for job in range(6):
            printer = PrinterType.BAMBU_LAB if job % 3 else PrinterType.PRUSA
            stats.job_created(printer)
            if (day + job) % 7 == 0:
                stats.job_failed(printer, 1800, JobFailureReason.FILAMENT_RUNOUT)
            else:
                stats.job_completed(printer, 2.5 * 3600)
            stats.file_downloaded(12 * 1024 * 1024, FileType.THREE_MF)
            recorded += 3
        try:
            raise ConnectionRefusedError("printer at 192.168.1.23 refused")  # never leaves: class only
        except ConnectionRefusedError as exc:
            stats.error(exc, Component.PRINTER_SERVICE)
        recorded += 1
    return recorded


def show(title: str, message: object) -> None:
    from google.protobuf import json_format

    print(f"-- {title}")
    print(json_format.MessageToJson(message, indent=2))  # type: ignore[arg-type]


def walk_through(socket_path: Path, days: int) -> bool:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        agent = agent_service_pb2_grpc.AgentServiceStub(channel)
        consent = agent.GetConsent(agent_service_pb2.GetConsentRequest(), timeout=RPC_TIMEOUT).consent
        section("1. Statistics are off by default")
        print(
            "effective consent:",
            agent_service_pb2.ConsentState.Name(consent.effective),
            "/",
            agent_service_pb2.ConsentReason.Name(consent.reason),
        )

        section("2. The host app records events through the SDK (kept locally only)")
        stats = StatsClient(socket_path)
        recorded = example_host_app(stats, days)
        delivered = stats.flush(timeout=10)
        stats.close()
        print(f"recorded {recorded} events; delivered to the agent: {delivered}; {stats.stats()}")

        section("3. The user's own figures (local stats)")
        local = agent.GetLocalStats(agent_service_pb2.GetLocalStatsRequest(weeks=1), timeout=RPC_TIMEOUT)
        show("this week", local.this_week)

        section("4. Opting in, then the exact bytes of the next report")
        agent.SetConsent(
            agent_service_pb2.SetConsentRequest(
                state=agent_service_pb2.CONSENT_STATE_SHARING,
                schema_version=contract.CURRENT_SCHEMA_VERSION,  # type: ignore[arg-type]
            ),
            timeout=RPC_TIMEOUT,
        )
        stats = StatsClient(socket_path)
        stats.job_created(PrinterType.BAMBU_LAB)
        stats.job_completed(PrinterType.BAMBU_LAB, 3 * 3600)
        stats.flush(timeout=10)
        stats.close()
        preview = agent.PreviewReport(agent_service_pb2.PreviewReportRequest(), timeout=RPC_TIMEOUT)
        report = aggregated_stats_pb2.AggregatedStats.FromString(preview.report)
        print(f"{len(preview.report)} bytes; only events recorded after opting in are counted:")
        print(preview.report_json)
        counted_after_consent = report.usage.jobs_created == 1 and report.usage.jobs_completed == 1

        section("5. Export everything, opt out, delete everything")
        pages = list(agent.ExportData(agent_service_pb2.ExportDataRequest(), timeout=RPC_TIMEOUT))
        exported = sum(len(page.events) for page in pages)
        print(f"export: {exported} events in {len(pages)} page(s); settings: {pages[0].settings.time_zone}")
        opted_out = agent.SetConsent(
            agent_service_pb2.SetConsentRequest(state=agent_service_pb2.CONSENT_STATE_LOCAL_ONLY),
            timeout=RPC_TIMEOUT,
        ).consent
        print("after opting out:", agent_service_pb2.ConsentState.Name(opted_out.effective))
        deleted = agent.DeleteAllData(agent_service_pb2.DeleteAllDataRequest(), timeout=RPC_TIMEOUT)
        print(f"deleted {deleted.events_deleted} events and {deleted.reports_deleted} reports")
        status = agent.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT)
        print(f"stored events now: {status.stored_events}")
        ok = (
            consent.effective == agent_service_pb2.CONSENT_STATE_LOCAL_ONLY
            and delivered
            and counted_after_consent
            and exported == recorded + 2
            and status.stored_events == 0
        )
    return ok


def summary(ok: bool, started: float) -> None:
    print(json.dumps({"ok": ok, "seconds": round(time.monotonic() - started, 1)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stats_demo", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="keep the agent's files here (default: a temp dir)")
    parser.add_argument("--days", type=int, default=5, help="days of example usage to record")
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"Printernizer usage statistics, report schema version {contract.CURRENT_SCHEMA_VERSION}")
    print(f"today: {dt.date.today().isoformat()}")
    show_contract()
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="stats-demo-"))
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        socket_path = stack.enter_context(running_agent(data_dir))
        ok = walk_through(socket_path, args.days)
    print("\nEverything worked." if ok else "\nSomething did not work as expected.")
    summary(ok, started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
