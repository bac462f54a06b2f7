"""End-to-end ingest: SDK -> Unix socket -> agent -> SQLite committed.

Several host threads record through one StatsClient each (as a host with a
few workers would); the rate counts only events the agent acknowledged after
its commit. Also reports the agent's resident memory after the run.

Then, in process, what remembering each batch's identity costs the commit
(one lookup and one upsert per batch, so that a resent batch is stored once):
the same batches of 1,000 events stored with and without an identity.

Run: python -m benchmarks.agent_ingest [--events N] [--clients C]
Target: >= 100k events/s sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from printernizer.stats.v1 import common_pb2, usage_event_pb2
from printernizer_stats.agent.storage import AgentStore, BatchIdentity
from printernizer_stats.common.events import EventDecoder
from printernizer_stats.sdk import Component, PrinterType, StatsClient

from .harness import print_table, running_agent


def produce(client: StatsClient, events: int) -> None:
    bambu, api, error = PrinterType.BAMBU_LAB, Component.API, TimeoutError()
    for i in range(events):
        if i % 10 == 9:
            client.error(error, api)
        else:
            client.job_completed(bambu, 3600.0)
        if i % 5_000 == 0:
            # A real host never records this fast: wait (idle) for the sender
            # instead of overflowing the buffer.
            while client.stats().buffered > 20_000:
                time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in total")
    parser.add_argument("--clients", type=int, default=2, help="recording threads, one client each")
    args = parser.parse_args()
    per_client = args.events // args.clients
    with running_agent() as agent:
        clients = [StatsClient(agent.socket_path, max_buffered=50_000) for _ in range(args.clients)]
        threads = [threading.Thread(target=produce, args=(c, per_client)) for c in clients]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        delivered = all(client.flush(timeout=600) for client in clients)
        elapsed = time.perf_counter() - start
        sent = sum(client.stats().sent for client in clients)
        dropped = sum(client.stats().dropped for client in clients)
        for client in clients:
            client.close()
        rss, peak = agent.rss_kib()
        with sqlite3.connect(agent.db_path) as db:
            stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    if not delivered or stored != per_client * args.clients:
        raise SystemExit(f"delivery incomplete: stored {stored}, sent {sent}, dropped {dropped}")
    print_table(
        "Agent ingest, SDK -> socket -> SQLite (committed)",
        ["measure", "result", "target"],
        [
            ["events stored", f"{stored:,}", ""],
            ["clients (threads)", args.clients, ""],
            ["sustained rate", f"{stored / elapsed:,.0f} events/s", ">= 100,000 events/s"],
            ["agent resident memory after the run", f"{rss / 1024:.0f} MiB (peak {peak / 1024:.0f} MiB)", ""],
        ],
    )


async def bookkeeping(batches: int = 400, size: int = 1_000) -> tuple[float, float]:
    """CPU seconds per batch stored (without, with an identity), alternating runs."""
    now = dt.datetime.now(dt.UTC)
    event = usage_event_pb2.UsageEvent(
        job_created=usage_event_pb2.JobCreated(printer_type=common_pb2.PRINTER_TYPE_PRUSA)
    )
    event.occurred_at.FromDatetime(now.replace(microsecond=0))
    rows = EventDecoder().rows([event] * size, now).rows
    client = os.urandom(16)
    spent = {False: 0.0, True: 0.0}
    with tempfile.TemporaryDirectory() as directory:
        store = await AgentStore.open(Path(directory) / "agent.db")
        try:
            for number in range(batches):
                identified = number % 2 == 1
                started = time.process_time()
                await store.append_events(
                    rows, 0, 0, batch=BatchIdentity(client, number) if identified else None
                )
                spent[identified] += time.process_time() - started
        finally:
            await store.close()
    return spent[False] / (batches / 2), spent[True] / (batches / 2)


def print_bookkeeping() -> None:
    plain, identified = asyncio.run(bookkeeping())
    print_table(
        "A batch of 1,000 events committed, in process (CPU)",
        ["batch", "per batch", "per event"],
        [
            ["without identity", f"{plain * 1000:.2f} ms", f"{plain * 1e6 / 1000:.2f} us"],
            [
                "with identity (stored once)",
                f"{identified * 1000:.2f} ms",
                f"{identified * 1e6 / 1000:.2f} us",
            ],
            [
                "the identity's cost",
                f"{(identified - plain) * 1000:+.3f} ms",
                f"{(identified - plain) * 1e6 / 1000:+.3f} us",
            ],
        ],
    )


if __name__ == "__main__":
    main()
    print_bookkeeping()
