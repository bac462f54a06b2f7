"""From the host's calls to the contract's messages: each event validated
against the contract and encoded as RecordEventsRequest bytes.

Encoding is the hot spot of the flush, so each distinct part of an event (its
kind with its enum values; the second it happened in) is serialized once by
protobuf and cached; a batch is the concatenation of the cached pieces, which
is exactly protobuf's own encoding of the same RecordEventsRequest.

An event that does not fit the contract raises InvalidEvent here, before it
is buffered (the helpers' values) or when its batch is made (a typed event
passed to `record()`): either way it is counted as invalid and never sent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf import timestamp_pb2
from printernizer.stats.v1 import common_pb2, usage_event_pb2
from printernizer_stats.common.events import KINDS_BY_NAME, InvalidEvent, validate

from ._generated.enums import DeploymentMode, PrinterType
from .mapping import parse_version, python_version, this_architecture, this_platform

if TYPE_CHECKING:  # betterproto2's dataclasses: the `dataclasses` extra, imported only when used
    from ._generated.printernizer.stats.v1 import UsageEvent

# Cached encodings kept at most (distinct kinds are few; seconds roll over).
_CACHE_LIMIT = 4096


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# RecordEventsRequest.events is field 1, length-delimited: tag byte 0x0A.
_EVENTS_TAG = b"\x0a"
# Tag and one-byte length for the usual event of under 128 bytes.
_SHORT_FRAMES = [_EVENTS_TAG + bytes([size]) for size in range(128)]


def _validated(event: usage_event_pb2.UsageEvent) -> bytes:
    """The event's bytes; InvalidEvent when it does not fit the contract."""
    validate(event, int(time.time() * 1000))
    return event.SerializeToString(deterministic=True)


class Encoder:
    """Builds RecordEventsRequest bytes from buffered items, caching per part."""

    def __init__(self) -> None:
        self._kinds: dict[Any, bytes] = {}
        self._seconds: dict[int, bytes] = {}

    def kind_part(self, key: Any) -> bytes:
        """The serialized kind of an event (validated once per distinct key):
        `(kind name, enum values…)`, or a typed event's kind as betterproto2
        serialized it. InvalidEvent when it does not fit the contract."""
        part = self._kinds.get(key)
        if part is None:
            part = _validated(self._build(key))
            if len(self._kinds) >= _CACHE_LIMIT:
                self._kinds.clear()
            self._kinds[key] = part
        return part

    @staticmethod
    def _build(key: Any) -> usage_event_pb2.UsageEvent:
        if isinstance(key, tuple):
            name, *values = key
            spec = KINDS_BY_NAME[name]
            event = usage_event_pb2.UsageEvent()
            body = getattr(event, name)
            body.SetInParent()
            for field, value in zip(spec.columns, values, strict=True):
                setattr(body, field.name, int(value))
            return event
        # A typed betterproto2 event's kind, serialized by betterproto2: the
        # same wire format, parsed by protobuf.
        return usage_event_pb2.UsageEvent.FromString(key)

    # The two kinds with values beyond enums: built here, not cached (their values vary; they are rare).

    @staticmethod
    def app_started(app_version: str, deployment_mode: DeploymentMode) -> bytes:
        """Printernizer's version (as numbers), Python's, the platform and CPU (the SDK's own)."""
        event = usage_event_pb2.UsageEvent()
        started = event.app_started
        started.app_version.CopyFrom(parse_version(app_version))
        started.python_version.CopyFrom(python_version())
        started.platform = common_pb2.Platform.ValueType(this_platform())
        started.architecture = common_pb2.CpuArchitecture.ValueType(this_architecture())
        started.deployment_mode = common_pb2.DeploymentMode.ValueType(deployment_mode)
        return _validated(event)

    @staticmethod
    def printer_fleet(counts: Mapping[PrinterType, int]) -> bytes:
        """The configured printers by family (families without any left out)."""
        event = usage_event_pb2.UsageEvent()
        for printer_type, count in sorted(counts.items()):
            if count > 0:
                event.printer_fleet_observed.printers.add(printer_type=int(printer_type), count=count)
        event.printer_fleet_observed.SetInParent()
        return _validated(event)

    def time_part(self, second: int) -> bytes:
        part = self._seconds.get(second)
        if part is None:
            part = usage_event_pb2.UsageEvent(
                occurred_at=timestamp_pb2.Timestamp(seconds=second)
            ).SerializeToString()
            if len(self._seconds) >= _CACHE_LIMIT:
                self._seconds.clear()
            self._seconds[second] = part
        return part

    def batch(self, times: list[float], parts: list[Any]) -> tuple[list[bytes], int]:
        """Frame buffered events; returns (framed events, count of invalid ones).

        `parts` holds encoded kind parts (bytes), or typed events to encode
        here. The loop inlines the cache look-ups: it runs for every event."""
        seconds = self._seconds
        framed: list[bytes] = []
        invalid = 0
        for when, part in zip(times, parts, strict=True):
            try:
                if type(part) is not bytes:  # a typed event
                    occurred, key = _key_of(part)
                    when = occurred or when
                    part = self.kind_part(key)
                second = int(when)
                body = (seconds.get(second) or self.time_part(second)) + part
            except Exception:
                invalid += 1
                continue
            size = len(body)
            framed.append((_SHORT_FRAMES[size] if size < 128 else _EVENTS_TAG + _varint(size)) + body)
        return framed, invalid


class KindParts(dict[Any, Any]):
    """The encoded kind parts of one event kind, by its enum values.

    One dict level per enum field, keyed by the enum members: a hit is a plain
    subscript (C code, no tuple built), which keeps the host's cost per call
    small. A miss builds the next level, or encodes and validates the event's
    kind through the encoder; values that do not fit the contract raise
    InvalidEvent (not stored, so a mistake is counted each time).

        parts = KindParts("job_completed", encoder)
        parts[PrinterType.PRUSA][JobDurationBucket.UNDER_1_HOUR]  # bytes
    """

    def __init__(self, kind: str, encoder: Encoder, prefix: tuple[Any, ...] = ()) -> None:
        super().__init__()
        self.kind, self._encoder, self._prefix = kind, encoder, prefix
        self._depth = len(KINDS_BY_NAME[kind].columns)

    def __missing__(self, value: Any) -> Any:
        values = (*self._prefix, value)
        if len(values) < self._depth:
            found: Any = KindParts(self.kind, self._encoder, values)
        else:
            found = self._encoder.kind_part((self.kind, *values))
        if len(self) < _CACHE_LIMIT:
            self[value] = found
        return found


def _key_of(event: UsageEvent) -> tuple[float | None, Any]:
    """(time it happened if the host set one, cache key) of a typed event (a
    betterproto2 dataclass: only a host with the `dataclasses` extra has them)."""
    import betterproto2

    from ._generated.printernizer.stats.v1 import UsageEvent

    name, body = betterproto2.which_one_of(event, "kind")
    when = event.occurred_at.timestamp() if event.occurred_at is not None else None
    spec = KINDS_BY_NAME.get(name)
    if spec is None or body is None:
        raise InvalidEvent("kind", "no event kind is set")
    if spec.keeps_payload:
        return when, bytes(UsageEvent(**{name: body}))
    return when, (name, *(int(getattr(body, f.name)) for f in spec.columns))
