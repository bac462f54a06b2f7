"""The agent's metrics, read from its status when they are collected (a
Prometheus scrape or an OTLP export): nothing is counted twice, and nothing
is computed while no one collects. docs/operations.md says what each means."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from printernizer.stats.v1 import agent_service_pb2

from .agent import StatsAgent

STATUS_TIMEOUT_SECONDS = 5.0
STATUS_MAX_AGE_SECONDS = 1.0  # one status serves every instrument of one collection


Status = agent_service_pb2.GetStatusResponse
_STORAGE_FAILING = (agent_service_pb2.STORAGE_CONDITION_FULL, agent_service_pb2.STORAGE_CONDITION_FAILING)
# (name, a level (gauge) or a total that only grows (counter), read from the status, unit, meaning)
INSTRUMENTS: tuple[tuple[str, str, Callable[[Status], int], str, str], ...] = (
    (
        "stats.agent.outbox.reports",
        "gauge",
        lambda s: s.queued_reports,
        "{report}",
        "reports waiting to be sent",
    ),
    ("stats.agent.events.stored", "gauge", lambda s: s.stored_events, "{event}", "events kept locally"),
    (
        "stats.agent.events.dropped",
        "counter",
        lambda s: s.dropped_events,
        "{event}",
        "events the host app's SDK dropped (its buffer was full or the agent away)",
    ),
    ("stats.agent.events.rejected", "counter", lambda s: s.rejected_events, "{event}", "events refused"),
    (
        "stats.agent.reports.evicted",
        "counter",
        lambda s: s.evicted_reports,
        "{report}",
        "unsent reports dropped because the outbox was full",
    ),
    (
        "stats.agent.reports.dropped",
        "counter",
        lambda s: s.dropped_reports,
        "{report}",
        "reports never accepted: refused by the server for good, or given up after a week of failures",
    ),
    (
        "stats.agent.delivery.failing",
        "gauge",
        lambda s: int(s.last_outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING),
        "",
        "1 while the last delivery failed and its reports wait to be tried again, else 0",
    ),
    (
        "stats.agent.storage.failing",
        "gauge",
        lambda s: int(s.storage in _STORAGE_FAILING),
        "",
        "1 while the agent's database refuses writes (the disk full, or another failure), else 0",
    ),
)


class AgentMetrics:
    def __init__(self, agent: StatsAgent, loop: asyncio.AbstractEventLoop) -> None:
        self.agent, self.loop = agent, loop
        self._loop_thread = threading.get_ident()  # made on the loop's thread
        self._status: agent_service_pb2.GetStatusResponse | None = None
        self._read_at = 0.0
        meter = metrics.get_meter("printernizer_stats.stats_agent")
        for name, kind, read, unit, description in INSTRUMENTS:
            create = meter.create_observable_counter if kind == "counter" else meter.create_observable_gauge
            create(name, [self._observe(read)], unit=unit, description=description)

    def _observe(self, value: Callable[[Status], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            status = self._current_status()
            return [] if status is None else [Observation(value(status))]

        return callback

    def _current_status(self) -> agent_service_pb2.GetStatusResponse | None:
        """The agent's status, read on its own event loop (collection runs in another thread)."""
        if threading.get_ident() == self._loop_thread:
            return self._status  # waiting for the loop from its own thread would never end
        if self._status is None or time.monotonic() - self._read_at > STATUS_MAX_AGE_SECONDS:
            reading = self.agent.status()
            try:
                future = asyncio.run_coroutine_threadsafe(reading, self.loop)
            except Exception:  # the loop is closed: skip this collection
                reading.close()  # never scheduled: close it rather than leave it unawaited
                return None
            try:
                self._status = future.result(timeout=STATUS_TIMEOUT_SECONDS)
                self._read_at = time.monotonic()
            except Exception:  # the loop is stopping or the database is busy: skip this collection
                future.cancel()
                return None
        return self._status
