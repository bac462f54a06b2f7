"""A StatsClient for a host's own tests: it records into memory, needs no
agent and no socket, and lets the test read what was recorded.

    from printernizer_stats.sdk import JobDurationBucket, PrinterType
    from printernizer_stats.sdk.testing import InMemoryStatsClient, Recorded

    stats = InMemoryStatsClient()
    job_service = JobService(stats=stats)  # the host's code, given the client
    job_service.finish(job)
    assert stats.recorded("job_completed") == [
        Recorded(
            "job_completed",
            {"printer_type": PrinterType.BAMBU_LAB, "duration": JobDurationBucket.UNDER_4_HOURS},
        )
    ]

It is a StatsClient (the same helpers, buffer and encoder), with memory where
the agent's socket would be: what it keeps is what the real client would
deliver for the same calls, byte for byte. Values that do not fit the contract
are refused and counted in `stats().invalid`, names the mappings do not know
are recorded as OTHER and counted in `stats().unplaced`, and each event is
checked as the agent checks it before it is kept (a typed event dated ten
minutes ahead is refused, say).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from printernizer.stats.v1 import agent_service_pb2, usage_event_pb2
from printernizer_stats.common.events import MAX_BATCH_EVENTS, EventDecoder

from ._generated import enums
from ._generated.enums import ErrorType
from .buffer import EventBuffer, now, use_simulated_clock
from .client import ClientStats, StatsClient
from .encoder import Encoder
from .printernizer import PRINTERNIZER_ERROR_TYPES

__all__ = ["InMemoryStatsClient", "Recorded"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """One recorded event as plain values: its kind, as the contract's
    UsageEvent names it ("job_completed"), and its fields by name, enums as
    the SDK's enums, messages (a Version) as dicts, repeated fields (a
    fleet's printers) as lists. Compared without its time, which a test
    cannot know beforehand."""

    kind: str
    fields: dict[str, Any]
    occurred_at: dt.datetime | None = field(default=None, compare=False)


class MemoryTransport:
    """Delivers the buffer into memory at once: through the client's encoder
    into the bytes the agent would get, then checked as the agent checks
    them; what the agent would store is kept."""

    def __init__(self, buffer: EventBuffer, encoder: Encoder) -> None:
        self._buffer, self._encoder = buffer, encoder
        self._decoder = EventDecoder()  # the agent's own check of each event
        self._lock = threading.Lock()
        self._closed = False
        self.events: list[usage_event_pb2.UsageEvent] = []
        self.sent = 0
        self.invalid = 0
        self.agent_reachable = True

    def deliver(self) -> None:
        """Everything buffered, unless closed (a closed client sends nothing)."""
        with self._lock:
            buffer = self._buffer
            while len(buffer) and not self._closed:
                framed, invalid = self._encoder.batch(*buffer.take(buffer.ready(MAX_BATCH_EVENTS)))
                self.invalid += invalid
                # The request's events as the agent parses them, before its drop count and identity.
                events = agent_service_pb2.RecordEventsRequest.FromString(b"".join(framed)).events
                decoded = self._decoder.rows(events, dt.datetime.fromtimestamp(now(), dt.UTC))
                refused = {refusal.index for refusal in decoded.refused}
                self.invalid += len(refused)
                kept = [event for index, event in enumerate(events) if index not in refused]
                self.events.extend(kept)
                self.sent += len(kept)

    def in_flight(self) -> int:
        return 0

    def dropped(self) -> int:
        return 0  # only the buffer drops (beyond its bound): counted there

    def flush(self, timeout: float) -> bool:
        self.deliver()
        return not len(self._buffer)

    def close(self, timeout: float) -> None:
        self.deliver()
        self._closed = True


class InMemoryStatsClient(StatsClient):
    """A StatsClient that keeps what it records in memory: `events()` as the
    contract's messages, `recorded()` as plain values, `stats()` as ever.

    Events are delivered when a batch is full and whenever the test reads, so
    nothing is dropped unless more than `max_buffered` wait at once. `close()`
    delivers what waits, stops, and puts back the exception hooks it installed.
    """

    def __init__(
        self,
        *,
        max_buffered: int = 10_000,
        batch_size: int = 1_000,
        error_types: Mapping[type[BaseException], ErrorType] | None = None,
        error_names: Mapping[str, ErrorType] = PRINTERNIZER_ERROR_TYPES,
    ) -> None:
        # Not StatsClient.__init__: the same recording, delivered into memory instead of to a socket.
        use_simulated_clock()
        self._record_into(EventBuffer(max_buffered, batch_size), error_types, error_names)
        self._memory = MemoryTransport(self._buffer, self._encoder)
        self._buffer.batch_ready = self._memory.deliver
        self._transport = self._memory

    def events(self) -> list[usage_event_pb2.UsageEvent]:
        """What was recorded so far, in order, as the agent would store it:
        UsageEvent messages, each with its time in whole seconds."""
        self._memory.deliver()
        return list(self._memory.events)

    def recorded(self, kind: str | None = None) -> list[Recorded]:
        """What was recorded so far (of one kind, "job_completed", if given) as plain values."""
        recorded = []
        for event in self.events():
            name = event.WhichOneof("kind")
            if name is not None and kind in (None, name):
                occurred = event.occurred_at.ToDatetime(tzinfo=dt.UTC)  # the client always sets it
                recorded.append(Recorded(name, _plain(getattr(event, name)), occurred))
        return recorded

    def clear(self) -> None:
        """Forget the events kept so far (the counts of `stats()` go on)."""
        self._memory.deliver()
        self._memory.events.clear()

    def stats(self) -> ClientStats:
        self._memory.deliver()
        return super().stats()

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        try:
            while self._remove_hooks:
                self._remove_hooks.pop()()
        except Exception:
            log.debug("putting back the exception hooks failed", exc_info=True)


def _plain(message: Message) -> dict[str, Any]:
    return {
        item.name: (
            [_plain_value(item, value) for value in getattr(message, item.name)]
            if item.is_repeated
            else _plain_value(item, getattr(message, item.name))
        )
        for item in message.DESCRIPTOR.fields
    }


def _plain_value(descriptor: Any, value: Any) -> Any:  # a FieldDescriptor (its C type, or Python's)
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        return _plain(value)
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        enum: Any = getattr(enums, descriptor.enum_type.name, None)
        if enum is not None:
            with contextlib.suppress(ValueError):  # a value the SDK's enum lacks stays a number
                return enum(value)
    return value
