"""Host-side cost of recording events, against the first implementation's way.

- `record()` caller cost: what one helper call costs the host's code (target
  <= 0.5 us).
- host CPU per event: the host process's whole CPU time (recording plus the
  SDK's background encoding and sending) divided by the events, with a real
  agent process on the other end of the socket, the host recording at a
  steady rate (default 50,000 events/s, far above any real Printernizer):
  the caller cost plus the CPU of every background thread (the SDK's sender
  and gRPC's threads, read per thread from /proc) (target <= 2 us).
- baseline: one aiosqlite INSERT and COMMIT per event, awaited by the caller,
  as the first implementation recorded events.

Run: python -m benchmarks.sdk_record [--events N] [--rate EVENTS_PER_SECOND]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

import aiosqlite
from printernizer_stats.sdk import Component, ErrorType, PrinterType, StatsClient

from .harness import print_table, running_agent


def caller_cost(events: int) -> float:
    """Nanoseconds per record() call, the sender idle (no agent), in bursts
    of 10,000 into a buffer emptied between bursts as the sender would."""
    burst = 10_000
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        client = StatsClient(Path(tmp) / "absent.sock", max_buffered=2 * burst, batch_size=2 * burst)
        job = client.job_created
        bambu = PrinterType.BAMBU_LAB
        elapsed = 0
        for _ in range(events // burst):
            start = time.perf_counter_ns()
            for _ in range(burst):
                job(bambu)
            elapsed += time.perf_counter_ns() - start
            buffer = client._buffer  # the sender's part, done here: it takes the batch
            buffer.take(buffer.ready(burst))
        client.close(timeout=0.1)
    return elapsed / (events // burst * burst)


def _background_cpu_seconds() -> float:
    """CPU time of every thread of this process but the main one: the SDK's
    sender and gRPC's own threads (from /proc, in clock ticks)."""
    main = threading.main_thread().native_id
    ticks = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == main:
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def host_cpu_per_event(events: int, rate: int | None) -> tuple[float, float, float]:
    """(us of CPU per event in the background threads, us of the whole process
    per event, events/s delivered) with a real agent, the host recording at a
    steady `rate` (in 1 ms ticks) as a busy app would, or (None) flat out,
    pausing only when the buffer is nearly full."""
    with running_agent() as agent:
        client = StatsClient(agent.socket_path, max_buffered=50_000)
        bambu, api = PrinterType.BAMBU_LAB, Component.API
        timeout_error = TimeoutError()
        per_tick = max(1, (rate or 0) // 1000)
        background_start, cpu_start = _background_cpu_seconds(), time.process_time()
        wall_start = next_tick = time.perf_counter()
        for i in range(events):
            if i % 10 == 9:
                client.error(timeout_error, api)
            else:
                client.job_completed(bambu, 3600.0)
            if rate is None:
                if i % 5_000 == 0:
                    while client.stats().buffered > 40_000:
                        time.sleep(0.005)
            elif i % per_tick == per_tick - 1:
                next_tick += 0.001
                pause = next_tick - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        delivered = client.flush(timeout=120)
        wall = time.perf_counter() - wall_start
        background = _background_cpu_seconds() - background_start
        process = time.process_time() - cpu_start
        stats = client.stats()
        client.close()
        if not delivered or stats.sent != events:
            raise RuntimeError(f"not everything was delivered: {stats}")
    return background / events * 1e6, process / events * 1e6, events / wall


async def baseline(events: int) -> float:
    """Microseconds per event with an INSERT and a COMMIT per event."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        async with aiosqlite.connect(Path(tmp) / "baseline.db") as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(
                "CREATE TABLE usage_events (id INTEGER PRIMARY KEY, event_type TEXT, metadata TEXT)"
            )
            await db.commit()
            start = time.perf_counter()
            for _ in range(events):
                await db.execute(
                    "INSERT INTO usage_events (event_type, metadata) VALUES (?, ?)",
                    ("error_occurred", f'{{"error_type": "{ErrorType.TIMEOUT.name}"}}'),
                )
                await db.commit()
            return (time.perf_counter() - start) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=int, default=50_000, help="events/s for the steady-rate run")
    args = parser.parse_args()
    calls = caller_cost(1_000_000)
    background, process, rate = host_cpu_per_event(args.events, args.rate)
    burst_background, _, burst_rate = host_cpu_per_event(args.events, None)
    slow = asyncio.run(baseline(5_000))
    print_table(
        "Recording events from the host app",
        ["measure", "result", "target"],
        [
            ["record() caller cost per call", f"{calls / 1000:.3f} us", "<= 0.5 us"],
            [f"SDK background threads per event ({args.rate:,} events/s)", f"{background:.2f} us", ""],
            [
                "host CPU per event incl. flush (call + background)",
                f"{calls / 1000 + background:.2f} us",
                "<= 2 us",
            ],
            ["whole host process per event (incl. this benchmark's pacing)", f"{process:.2f} us", ""],
            ["delivered to the agent, committed", f"{rate:,.0f} events/s", ""],
            [
                "host CPU per event incl. flush, recording flat out",
                f"{calls / 1000 + burst_background:.2f} us ({burst_rate:,.0f} events/s delivered)",
                "",
            ],
            ["baseline: aiosqlite INSERT + COMMIT per event", f"{slow:.1f} us", "(first implementation)"],
        ],
    )


if __name__ == "__main__":
    main()
