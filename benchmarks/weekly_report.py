"""Building one weekly report with a year of events stored (1M and 10M).

The events are written through the agent's own storage (AgentStore.append_events,
in batches), spread evenly over 52 weeks; then the report for a week in the
middle is built the way a submission or a preview builds it: from the kept
per-week counts for a whole week after consent, and by scanning the week's
events for the week the user opted in (the last column).

Run: python -m benchmarks.weekly_report [--sizes 1000000 10000000]
Target: <= 100 ms at 10M stored events.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import SHARING, Override
from printernizer_stats.agent.report import build_report
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.events import KINDS_BY_NAME, RowValues, pack, to_millis
from printernizer_stats.common.weeks import Week

from .harness import percentile, print_table

NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
WEEKS = 52
BATCH = 100_000


def synthetic_rows(count: int, start_ms: int, span_ms: int, rng: random.Random) -> list[RowValues]:
    shapes = [
        pack(KINDS_BY_NAME["job_created"].kind, 2, 0, 0),
        pack(KINDS_BY_NAME["job_completed"].kind, 2, 3, 0),
        pack(KINDS_BY_NAME["job_failed"].kind, 3, 2, 5),
        pack(KINDS_BY_NAME["file_downloaded"].kind, 2, 2, 0),
        pack(KINDS_BY_NAME["error_occurred"].kind, 2, 2, 0),
        pack(KINDS_BY_NAME["printer_connected"].kind, 2, 0, 0),
    ]
    step = span_ms / count
    return [(start_ms + int(i * step), rng.choice(shapes), None) for i in range(count)]


async def measure(size: int, runs: int) -> tuple[float, float, float, float]:
    """(seconds to fill, p50 ms, p95 ms, p50 ms of the scan path) for a
    database holding `size` events."""
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        store = await AgentStore.open(Path(tmp) / "agent.db")
        first = Week.containing(NOW - dt.timedelta(weeks=WEEKS))
        clock = {"now": first.start}
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=lambda: clock["now"])
        # Opted in at the start of the year, so every event counts.
        await agent.set_consent(SHARING, 1)
        fill_start = time.perf_counter()
        start_ms, span_ms = to_millis(first.start), WEEKS * 7 * 86_400_000
        per_batch_span = span_ms * BATCH // size
        for offset in range(0, size, BATCH):
            count = min(BATCH, size - offset)
            rows = synthetic_rows(count, start_ms + offset * span_ms // size, per_batch_span, rng)
            await store.append_events(rows, to_millis(NOW), 0)
        fill = time.perf_counter() - fill_start
        clock["now"] = NOW
        week = Week.containing(NOW - dt.timedelta(weeks=WEEKS // 2))
        timings = []
        for _ in range(runs):
            begin = time.perf_counter()
            report = await agent.report_bytes(week)
            timings.append((time.perf_counter() - begin) * 1000)
        # The week of opting in (consent mid-week) is counted by scanning its events.
        scope = dataclasses.replace(
            await agent.report_scope(week), consent_since=week.start + dt.timedelta(seconds=1)
        )
        scans = []
        for _ in range(runs):
            begin = time.perf_counter()
            await build_report(store, week, scope, NOW)
            scans.append((time.perf_counter() - begin) * 1000)
        assert report, "the report is empty"
        await store.close()
    return fill, percentile(timings, 0.5), percentile(timings, 0.95), percentile(scans, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        fill, p50, p95, scan = asyncio.run(measure(size, args.runs))
        rows.append(
            [
                f"{size:,}",
                f"{p50:.1f} ms",
                f"{p95:.1f} ms",
                f"{scan:.1f} ms",
                f"{fill:.0f} s",
                "<= 100 ms at 10M",
            ]
        )
    print_table(
        "Weekly report from a year of stored events",
        ["events stored", "p50", "p95", "opt-in week (scan) p50", "time to fill", "target"],
        rows,
    )


if __name__ == "__main__":
    main()
