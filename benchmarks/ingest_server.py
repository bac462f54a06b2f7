"""Weekly reports stored per second by a real `python -m printernizer_stats.aggregation`
over TLS, each report on a new connection (as a fleet of agents sends them),
on SQLite and on PostgreSQL; and a simulated fleet (100k installations x 1
week by default) with its total time and the server's peak memory.

Signed reports are made before the clock starts; client processes (each with
many concurrent connections) share the machine with the server, as a load
generator here must. The server's call limits are off (every call comes from
127.0.0.1); everything else is as deployed: signature checks, validation, the
hourly rule, receipts.

Run: python -m benchmarks.ingest_server [--reports N] [--fleet N] [--engines sqlite postgresql]
Target: >= 300 reports/s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from printernizer.stats.v1 import (
    aggregated_stats_pb2,
    common_pb2,
    country_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from printernizer_stats.common.health import is_serving
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import Week
from printernizer_stats.demo.services import free_port

from .harness import cpu_seconds, database, percentile, print_table, rss_kib

WEEK = Week(2026, 46)
ROOT = Path(__file__).resolve().parent.parent


def signed_submission(seed: int) -> bytes:
    """One installation's serialized submission of one realistic report."""
    installation_id = uuid.uuid4().bytes
    key = Ed25519PrivateKey.generate()
    report = aggregated_stats_pb2.AggregatedStats(
        schema_version=aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1,
        report_id=report_id(installation_id, WEEK),
        installation=aggregated_stats_pb2.InstallationInfo(
            installation_id=installation_id,
            app_version=common_pb2.Version(major=2, minor=seed % 8),
            python_version=common_pb2.Version(major=3, minor=11 + seed % 3),
            platform=common_pb2.PLATFORM_LINUX,
            deployment_mode=1 + seed % 4,  # type: ignore[arg-type]
            country=country_pb2.COUNTRY_DE,
        ),
        period=WEEK.to_proto(),
    )
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_PRUSA, count=1 + seed % 3)
    report.printer_fleet.printers.add(printer_type=common_pb2.PRINTER_TYPE_BAMBU_LAB, count=1)
    usage = report.usage
    usage.jobs_created, usage.jobs_completed, usage.jobs_failed = 12, 9, 3
    usage.completed_job_durations.add(duration=common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR, count=9)
    usage.job_failures.add(reason=common_pb2.JOB_FAILURE_REASON_CANCELLED, count=3)
    usage.app_starts, usage.uptime_hours = 2, 120
    report.features.add(feature=common_pb2.FEATURE_LIBRARY, enabled=True)
    report.errors.add(error_type=common_pb2.ERROR_TYPE_TIMEOUT, component=common_pb2.COMPONENT_API, count=4)
    data = report.SerializeToString()
    request = ingest_service_pb2.SubmitReportsRequest(
        installation_id=installation_id,
        public_key=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )
    request.reports.add(report=data, signature=key.sign(data))
    return request.SerializeToString()


@dataclass
class ClientResult:
    latencies: list[float]
    failures: dict[str, int]
    cpu_seconds: float


def run_client(
    target: str, ca: bytes, count: int, concurrency: int, seed: int, ready: Any, go: Any, out: Any
) -> None:
    """One load-generating process: makes `count` signed submissions, reports
    ready, waits for `go`, then sends them, a new TLS channel each."""
    submissions = [
        ingest_service_pb2.SubmitReportsRequest.FromString(signed_submission(seed + i)) for i in range(count)
    ]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    latencies: list[float] = []
    failures: dict[str, int] = {}

    async def worker() -> None:
        while submissions:
            request = submissions.pop()
            start = time.perf_counter()
            async with grpc.aio.secure_channel(target, credentials) as channel:
                try:
                    await ingest_service_pb2_grpc.IngestServiceStub(channel).SubmitReports(
                        request, timeout=60
                    )
                    latencies.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] = failures.get(exc.code().name, 0) + 1

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    ready.put(True)
    go.wait()
    cpu_before = time.process_time()
    asyncio.run(main())
    out.put(ClientResult(latencies, failures, time.process_time() - cpu_before))


@contextlib.contextmanager
def aggregation_server(database_url: str, base: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, bytes]]:
    tls = ensure_self_made(base / "tls")
    assert tls.ca_certificate is not None
    log_path = base / "server.log"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "printernizer_stats.aggregation",
                "--listen", f"127.0.0.1:{port}",
                "--database-url", database_url,
                "--tls-dir", str(base / "tls"),
                "--admin-token-file", str(base / "admin-token"),
                "--peer-calls-per-second", "0",
                "--global-calls-per-second", "0",
                "--log-level", "WARNING",
            ],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        _wait_until_serving(f"localhost:{port}", tls.ca_certificate.read_bytes(), process, log_path)
        yield process, f"localhost:{port}", tls.ca_certificate.read_bytes()
    finally:
        process.terminate()
        process.wait(30)
        server_log = log_path.read_text(errors="replace")
        if "Traceback" in server_log:
            print(f"the server logged errors:\n{server_log[-4000:]}", file=sys.stderr)


def _wait_until_serving(target: str, ca: bytes, process: subprocess.Popen[bytes], log_path: Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    deadline = time.monotonic() + 60
    while not is_serving(target, timeout=1, credentials=credentials):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{log_path.read_text()}")
        time.sleep(0.2)


@dataclass
class RunResult:
    stored: int
    seconds: float
    latencies: list[float]
    failures: dict[str, int]
    peak_rss_kib: int
    server_cpu_seconds: float
    client_cpu_seconds: float


def run(engine: str, reports: int, clients: int, concurrency: int) -> RunResult:
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        database(engine, Path(tmp)) as url,
        aggregation_server(url, Path(tmp)) as (process, target, ca),
    ):
        share = reports // clients
        context = multiprocessing.get_context("spawn")
        ready, out, go = context.Queue(), context.Queue(), context.Event()
        workers = [
            context.Process(
                target=run_client, args=(target, ca, share, concurrency, i * share, ready, go, out)
            )
            for i in range(clients)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get()  # every report is made and signed before the clock starts
        cpu_before = cpu_seconds(process.pid)
        start = time.perf_counter()
        go.set()
        results = [out.get() for _ in workers]
        seconds = time.perf_counter() - start
        server_cpu = cpu_seconds(process.pid) - cpu_before
        for worker in workers:
            worker.join()
        _, peak = rss_kib(process.pid)
    latencies = [latency for r in results for latency in r.latencies]
    failures: dict[str, int] = {}
    for r in results:
        for code, n in r.failures.items():
            failures[code] = failures.get(code, 0) + n
    client_cpu = sum(r.cpu_seconds for r in results)
    return RunResult(len(latencies), seconds, latencies, failures, peak, server_cpu, client_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=3000, help="reports per rate run")
    parser.add_argument("--fleet", type=int, default=100_000, help="installations in the fleet run (0: skip)")
    parser.add_argument(
        "--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--clients", type=int, default=2, help="load-generating processes")
    parser.add_argument("--concurrency", type=int, default=16, help="connections at once per client process")
    args = parser.parse_args()
    rows = []
    runs = [(engine, "rate", args.reports) for engine in args.engines]
    if args.fleet:
        runs += [(engine, "fleet", args.fleet) for engine in args.engines]
    for engine, kind, count in runs:
        result = run(engine, count, args.clients, args.concurrency)
        ms = [latency * 1000 for latency in result.latencies]
        rows.append(
            [
                engine,
                f"{kind} ({count:,} installations)",
                f"{result.stored / result.seconds:,.0f}",
                f"{result.seconds:,.1f} s",
                f"{percentile(ms, 0.5):.1f} ms",
                f"{percentile(ms, 0.95):.1f} ms",
                f"{result.server_cpu_seconds / max(result.stored, 1) * 1000:.2f} ms",
                f"{result.client_cpu_seconds / max(result.stored, 1) * 1000:.2f} ms",
                f"{result.peak_rss_kib / 1024:.0f} MiB",
                ", ".join(f"{k}: {v}" for k, v in result.failures.items()) or "none",
            ]
        )
        print(f"done: {engine} {kind}", file=sys.stderr)
    print_table(
        f"Aggregation server ingest over TLS, a new connection per report "
        f"({args.clients} client processes x {args.concurrency} connections)",
        [
            "engine",
            "run",
            "reports/s",
            "total",
            "p50",
            "p95",
            "server CPU/report",
            "client CPU/report",
            "server peak RSS",
            "failures",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
