"""Dashboard queries over a large history: 100k installations x 52 weeks of
reports by default, on SQLite and on PostgreSQL.

The reports are written straight into the tables in bulk (running 5 million
reports through the ingest path would take hours and measures ingest, which
`ingest_server` does); the rollups are then built by the refresh the
aggregation server runs, and every query the dashboard makes is timed through the same
Analytics object the server uses.

Run: python -m benchmarks.analytics_queries [--installations N] [--weeks W] [--engines sqlite postgresql]
Target: <= 50 ms p50 for every dashboard query, the overview as one call.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from printernizer.stats.v1 import analytics_service_pb2 as api
from printernizer.stats.v1 import country_pb2
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.common.weeks import Week, weeks_ending
from printernizer_stats.store import schema
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import async_url, create_sync_engine, upgrade
from printernizer_stats.store.rollup_store import Rollups
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from .harness import database, percentile, print_table

NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
LAST = Week.containing(NOW).previous()
BATCH = 20_000
COUNTRIES = [
    country_pb2.COUNTRY_DE,
    country_pb2.COUNTRY_US,
    country_pb2.COUNTRY_GB,
    country_pb2.COUNTRY_FR,
    country_pb2.COUNTRY_NL,
    country_pb2.COUNTRY_AT,
    country_pb2.COUNTRY_CH,
    country_pb2.COUNTRY_IS,
]
Rows = list[dict[str, Any]]


def _digest(*parts: int) -> bytes:
    return hashlib.blake2b(b"-".join(str(p).encode() for p in parts), digest_size=16).digest()


def _state(number: int, minor: int) -> dict[str, Any]:
    return {
        "app_major": 2, "app_minor": minor, "app_patch": number % 3, "app_prerelease": False,
        "python_major": 3, "python_minor": 10 + number % 4, "python_patch": 0,
        "platform": 2 + number % 3, "architecture": 2 + number % 3,
        "deployment_mode": 2 + number % 4, "country": COUNTRIES[number % len(COUNTRIES)],
        "printer_count": 1 + number % 5,
    }  # fmt: skip


def _rows(installations: int, weeks: list[Week]) -> Iterator[tuple[str, Rows]]:
    """Batches of rows per table: a fleet that grows over the year (half of it
    there from the start), upgrades its app over time and reports ~90 % of weeks."""
    stored_at = NOW - dt.timedelta(days=1)

    def joined(number: int) -> int:
        return number * len(weeks) // installations // 2

    batch: Rows = []
    for number in range(installations):
        batch.append(
            {
                "installation_id": _digest(number),
                "public_key": _digest(number) * 2,
                "registered_at": stored_at,
                "first_week": weeks[joined(number)].key,
                "last_week": weeks[-1].key,
                "last_accepted_at": stored_at,
                **_state(number, 9),
            }
        )
        if len(batch) >= BATCH:
            yield "installations", batch
            batch = []
    if batch:
        yield "installations", batch
    report = 0
    for index, week in enumerate(weeks):
        tables: dict[str, Rows] = {
            "reports": [],
            "report_printers": [],
            "report_features": [],
            "report_errors": [],
        }
        for number in range(installations):
            if index < joined(number) or (number * 7 + index) % 10 == 0:
                continue
            report += 1
            tables["reports"].append(
                {
                    "id": report,
                    "report_id": _digest(number, week.key),
                    "installation_id": _digest(number),
                    "week": week.key,
                    "schema_version": 1,
                    "receipt_id": _digest(number, week.key, 1),
                    "stored_at": stored_at,
                    **_state(number, min(9, 2 + (index + number % 13) // 6)),
                    "jobs_created": 10 + number % 7,
                    "jobs_completed": 8,
                    "jobs_failed": 2,
                    "files_downloaded": 3,
                    "files_uploaded": 1,
                    "uptime_hours": 100,
                    "app_starts": 2,
                    "unclean_shutdowns": 0,
                    "printer_connections": 3,
                    "printer_disconnections": 1,
                }
            )
            tables["report_printers"].append(
                {"report": report, "printer_type": 2 + number % 9, "count": 1 + number % 5}
            )
            tables["report_features"].append(
                {"report": report, "feature": 1 + number % 12, "enabled": number % 3 != 0}
            )
            if number % 3 == 0:
                tables["report_errors"].append(
                    {"report": report, "error_type": 2 + number % 8, "component": 2 + number % 5, "count": 1}
                )
            if len(tables["reports"]) >= BATCH or number == installations - 1:
                for name, rows in tables.items():
                    if rows:
                        yield name, rows
                tables = {name: [] for name in tables}


def fill(url: str, installations: int, weeks: list[Week]) -> int:
    """Write the fleet's history; returns the number of reports."""
    upgrade(url)
    engine = create_sync_engine(url)
    written = 0
    try:
        for table, rows in _rows(installations, weeks):
            with engine.begin() as connection:
                connection.execute(insert(schema.metadata.tables[table]), rows)
            if table == "reports":
                written += len(rows)
    finally:
        engine.dispose()
    return written


def _distribution(*dimensions: api.Dimension.ValueType) -> Callable[[Analytics], Awaitable[object]]:
    return lambda a: a.distribution(api.GetDistributionRequest(dimensions=dimensions))


QUERIES: list[tuple[str, Callable[[Analytics], Awaitable[object]]]] = [
    ("overview (one call)", lambda a: a.overview(api.GetOverviewRequest())),
    ("installation trend, 12 weeks", lambda a: a.installation_trend(api.GetInstallationTrendRequest())),
    (
        "installation trend, 52 weeks",
        lambda a: a.installation_trend(api.GetInstallationTrendRequest(window=api.WeekWindow(weeks=52))),
    ),
    ("distribution: app versions", _distribution(api.DIMENSION_APP_VERSION)),
    ("distribution: countries", _distribution(api.DIMENSION_COUNTRY)),
    ("distribution: printer types", _distribution(api.DIMENSION_PRINTER_TYPE)),
    ("distribution: country x app version", _distribution(api.DIMENSION_COUNTRY, api.DIMENSION_APP_VERSION)),
    ("feature adoption", lambda a: a.feature_adoption(api.GetFeatureAdoptionRequest())),
    ("version migration, 12 weeks", lambda a: a.version_migration(api.GetVersionMigrationRequest())),
    ("feature trend, 12 weeks", lambda a: a.feature_trend(api.GetFeatureTrendRequest())),
    ("error trend by type, 12 weeks", lambda a: a.error_trend(api.GetErrorTrendRequest())),
    ("error rates per version, 12 weeks", lambda a: a.error_rates(api.GetErrorRatesRequest())),
    ("anomalies, 12 weeks", lambda a: a.anomalies(api.ListAnomaliesRequest())),
    ("release health, 4 weeks", lambda a: a.release_health(api.GetReleaseHealthRequest())),
    ("usage, 12 weeks", lambda a: a.usage(api.GetUsageRequest())),
    (
        "error rates by deployment mode and version, 12 weeks",
        lambda a: a.error_rates(api.GetErrorRatesRequest(by_deployment_mode=True)),
    ),
    (
        "feature adoption by version",
        lambda a: a.feature_adoption_by_version(api.GetFeatureAdoptionByVersionRequest()),
    ),
]


async def measure(url: str, runs: int) -> tuple[float, list[tuple[str, float, float]]]:
    engine = create_async_engine(async_url(url))
    try:
        start = time.perf_counter()
        await Rollups(engine, lambda: NOW).refresh()
        refresh_seconds = time.perf_counter() - start
        analytics = Analytics(AnalyticsStore(engine), 5, lambda: NOW)
        results = []
        for name, query in QUERIES:
            await query(analytics)  # warm: connections, compiled statements
            timings = []
            for _ in range(runs):
                began = time.perf_counter()
                await query(analytics)
                timings.append((time.perf_counter() - began) * 1000)
            results.append((name, percentile(timings, 0.5), percentile(timings, 0.95)))
        return refresh_seconds, results
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--installations", type=int, default=100_000)
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--runs", type=int, default=20)
    engines = ["sqlite", "postgresql"]
    parser.add_argument("--engines", nargs="+", default=engines, choices=engines)
    args = parser.parse_args()
    weeks = weeks_ending(LAST, args.weeks)
    rows: list[list[object]] = []
    notes = []
    for engine in args.engines:
        with (
            tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp,
            database(engine, Path(tmp)) as url,
        ):
            began = time.perf_counter()
            reports = fill(url, args.installations, weeks)
            filled = time.perf_counter() - began
            refresh, results = asyncio.run(measure(url, args.runs))
            print(f"done: {engine} ({reports:,} reports written in {filled:.0f} s)", file=sys.stderr)
            notes.append(f"{engine}: {reports:,} reports; first refresh of the rollups {refresh:.1f} s")
            for name, p50, p95 in results:
                rows.append([engine, name, f"{p50:.1f} ms", f"{p95:.1f} ms", "✔" if p50 <= 50 else "✘"])
    print_table(
        f"Dashboard queries, {args.installations:,} installations x {args.weeks} weeks "
        f"({args.runs} runs each)",
        ["engine", "query", "p50", "p95", "p50 <= 50 ms"],
        rows,
    )
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
