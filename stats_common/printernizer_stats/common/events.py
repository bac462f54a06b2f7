"""Validating events and turning them into storage rows, driven by the contract.

Every event kind's fields are read from the compiled descriptors, so a new
event kind in the contract needs no code here: enum fields become up to three
integer columns (what the weekly report groups by), and a kind with richer
fields (AppStarted's versions, a printer fleet) also keeps its serialized
message as the row's payload.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from printernizer.stats.v1 import agent_service_pb2, usage_event_pb2
from printernizer_stats.common.known_fields import copy_known_fields, discard_unknown_fields
from printernizer_stats.common.limits import HOST_CLOCK_SKEW, MAX_PRINTERS_PER_TYPE, MAX_VERSION_PART
from printernizer_stats.common.refusals import FieldError

# A call carries at most this many events (~75 KB): the SDK sends when 1,000
# are waiting, and more in one call only when a backlog has built up.
MAX_BATCH_EVENTS = 5000
# No event happened before this: an earlier time is a clock that was never set.
EARLIEST_EVENT = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

_EVENT = usage_event_pb2.UsageEvent.DESCRIPTOR
_KIND_ONEOF = _EVENT.oneofs_by_name["kind"]

# An event that does not fit the contract: the field error, by the name the SDK
# knows it (`field` is the path in the request).
InvalidEvent = FieldError


@dataclass(frozen=True)
class KindSpec:
    """How one event kind is validated and stored."""

    kind: int  # EventKind value
    field: FieldDescriptor  # the oneof member in UsageEvent
    columns: tuple[FieldDescriptor, ...]  # enum fields stored as f1..f3
    keeps_payload: bool  # the kind has fields beyond its enum columns
    column_names: tuple[str, ...]
    allowed: tuple[frozenset[int], ...]  # per column: defined, non-zero values


def _spec(field: FieldDescriptor) -> KindSpec:
    message = field.message_type
    assert message is not None  # every oneof member is a message
    enums = tuple(f for f in message.fields if f.type == FieldDescriptor.TYPE_ENUM and not _repeated(f))
    kind = agent_service_pb2.EventKind.Value(f"EVENT_KIND_{field.name.upper()}")
    columns = enums[:3]
    return KindSpec(
        kind=kind,
        field=field,
        columns=columns,
        keeps_payload=len(enums) > 3 or len(enums) != len(message.fields),
        column_names=tuple(f.name for f in columns),
        allowed=tuple(_defined_nonzero(f) for f in columns),
    )


def _defined_nonzero(field: Any) -> frozenset[int]:
    return frozenset(v.number for v in field.enum_type.values if v.number)


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


KINDS_BY_NAME: dict[str, KindSpec] = {f.name: _spec(f) for f in _KIND_ONEOF.fields}
KINDS: dict[int, KindSpec] = {spec.kind: spec for spec in KINDS_BY_NAME.values()}


# An event's kind and enum values are stored packed in one integer, its
# "shape" (16 bits each: kind, f1, f2, f3): one column to bind and to group
# by instead of four, which more than halves the cost of storing an event.
_FIELD_BITS = 16
_FIELD_MASK = (1 << _FIELD_BITS) - 1
MAX_ENUM_VALUE = _FIELD_MASK


def pack(kind: int, f1: int, f2: int, f3: int) -> int:
    return (kind << 48) | (f1 << 32) | (f2 << 16) | f3


def unpack(shape: int) -> tuple[int, int, int, int]:
    """(kind, f1, f2, f3) of a packed shape."""
    return shape >> 48, (shape >> 32) & _FIELD_MASK, (shape >> 16) & _FIELD_MASK, shape & _FIELD_MASK


class EventRow(NamedTuple):
    """One event as stored: times in milliseconds since the epoch (UTC)."""

    occurred_at: int
    kind: int
    f1: int
    f2: int
    f3: int
    payload: bytes | None

    def packed(self) -> RowValues:
        """The values storage writes: (occurred_at, shape, payload)."""
        return self.occurred_at, pack(self.kind, self.f1, self.f2, self.f3), self.payload

    @classmethod
    def unpacked(cls, occurred_at: int, shape: int, payload: bytes | None) -> EventRow:
        return cls(occurred_at, *unpack(shape), payload)


# What storage writes for an event: (occurred_at, shape, payload).
RowValues = tuple[int, int, bytes | None]


def to_millis(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_millis(millis: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC)


EARLIEST_EVENT_MS = to_millis(EARLIEST_EVENT)


def _check_enum(value: int, field: Any, path: str) -> None:
    enum = field.enum_type
    assert enum is not None
    if value not in enum.values_by_number:
        raise FieldError(path, f"{value} is not a value of {enum.name}")
    if value == 0:
        raise FieldError(path, f"must be set ({enum.values_by_number[0].name} is not allowed)")


def _check_message(message: Message, path: str) -> None:
    """Enum fields set to defined, non-zero values; nested messages checked too."""
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        field_path = f"{path}.{field.name}"
        if field.type == FieldDescriptor.TYPE_ENUM:
            if _repeated(field):
                for i, item in enumerate(getattr(message, field.name)):
                    _check_enum(item, field, f"{field_path}[{i}]")
            else:
                _check_enum(getattr(message, field.name), field, field_path)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if _repeated(field):
                for i, item in enumerate(getattr(message, field.name)):
                    _check_message(item, f"{field_path}[{i}]")
            elif message.HasField(field.name):
                _check_message(getattr(message, field.name), field_path)
            else:
                raise FieldError(field_path, "must be set")
    _check_rules(message, path)


def _check_rules(message: Message, path: str) -> None:
    """The few rules that are not about enums."""
    if isinstance(message, usage_event_pb2.PrinterFleetObserved):
        seen: set[int] = set()
        for i, entry in enumerate(message.printers):
            if entry.printer_type in seen:
                raise FieldError(f"{path}.printers[{i}].printer_type", "listed twice")
            seen.add(entry.printer_type)
    elif isinstance(message, usage_event_pb2.PrinterTypeCount):
        if not 1 <= message.count <= MAX_PRINTERS_PER_TYPE:
            raise FieldError(f"{path}.count", f"must be between 1 and {MAX_PRINTERS_PER_TYPE}")
    elif message.DESCRIPTOR.full_name == "printernizer.stats.v1.Version":
        for part in ("major", "minor", "patch"):
            if getattr(message, part) > MAX_VERSION_PART:
                raise FieldError(f"{path}.{part}", f"must be at most {MAX_VERSION_PART}")


def validate(event: usage_event_pb2.UsageEvent, now_ms: int) -> EventRow:
    """Check one event against the contract and return its storage row.
    FieldError.field is relative to the event ("job_created.printer_type").

    This runs for every recorded event, so the common kinds (only enum
    fields) take a fast path of set lookups; the rare richer kinds are checked
    field by field through their descriptors. The payload is the body as it
    is: the agent discards unknown fields first (EventDecoder).
    """
    name = event.WhichOneof("kind")
    if name is None:
        raise FieldError("kind", "no event kind is set")
    spec = KINDS_BY_NAME[name]
    body = getattr(event, name)
    payload = None
    if spec.keeps_payload:
        _check_message(body, name)
        payload = body.SerializeToString(deterministic=True)
    columns = [getattr(body, column) for column in spec.column_names]
    for value, allowed, column in zip(columns, spec.allowed, spec.columns, strict=False):
        if value not in allowed:
            _check_enum(value, column, f"{name}.{column.name}")
    if event.HasField("occurred_at"):
        occurred = timestamp_millis(event.occurred_at, "occurred_at")
        if occurred > now_ms + _MAX_SKEW_MS:
            raise FieldError("occurred_at", "is in the future")
        if occurred < EARLIEST_EVENT_MS:
            raise FieldError("occurred_at", "is before the year 2000")
    else:
        occurred = now_ms
    columns += [0, 0, 0]
    return EventRow(occurred, spec.kind, columns[0], columns[1], columns[2], payload)


def timestamp_millis(stamp: timestamp_pb2.Timestamp, path: str) -> int:
    """A Timestamp as milliseconds since the epoch. Its nanos must be what the
    Timestamp type allows: anything else is a broken encoder, not a time."""
    if not 0 <= stamp.nanos <= MAX_NANOS:
        raise FieldError(f"{path}.nanos", f"must be between 0 and {MAX_NANOS:,}")
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


_MAX_SKEW_MS = int(HOST_CLOCK_SKEW.total_seconds() * 1000)
MAX_NANOS = 999_999_999


_CACHE_LIMIT = 4096
_TIMESTAMP_TAG = 0x0A  # UsageEvent.occurred_at: field 1, length-delimited
_MULTI_BYTE_LENGTH = 0x80  # a varint byte with this bit set is followed by more


class DecodedBatch(NamedTuple):
    rows: list[RowValues]  # the valid events, in order
    # Valid events that carried fields this agent does not know (discarded, the rest kept).
    with_unknown_fields: int
    # The events that do not fit the contract: their position, field and why.
    refused: list[agent_service_pb2.RefusedEvent]


class EventDecoder:
    """Validates batches of events and turns them into rows, fast.

    Reading a protobuf message's fields from Python costs far more than the
    C code that serializes it, so each event is serialized once and split into
    its timestamp part and its kind part (protobuf writes fields in number
    order: `occurred_at`, field 1, comes first). The kind part, a handful of
    bytes shared by many events, is validated once and cached; the timestamp
    part is cached per second. Anything the cache has not seen takes the full
    validation path.

    Fields the contract does not define (a newer SDK's, a careless client's)
    are discarded at every depth on that path, before anything is stored.
    protobuf writes unknown fields after the known ones, so they land inside
    one of the two parts; the cache keys are the parts' bytes, so a part with
    unknown fields never shares a key with a clean one. Those parts are cached
    apart from the clean ones, which keeps the clean path exactly as it was:
    only an event with unknown fields pays a second lookup (and is counted).
    """

    def __init__(self) -> None:
        self._kinds: dict[bytes, tuple[int, bytes | None]] = {}
        self._times: dict[bytes, int] = {}
        self._stripped_kinds: dict[bytes, tuple[int, bytes | None]] = {}
        self._stripped_times: dict[bytes, int] = {}

    def rows(
        self,
        events: Sequence[usage_event_pb2.UsageEvent],
        now: dt.datetime,
        shift: dt.timedelta = dt.timedelta(),
    ) -> DecodedBatch:
        """The valid events of a batch as rows, and the refused ones with the
        field at fault, relative to the event ("job_created.printer_type").
        FieldError only for the batch as a whole (too many events).

        Event times are checked against `now` (the wall clock they were read
        from), then `shift` is added to them (to an unset one, `now`'s): the
        agent's correction of a wall clock that jumped."""
        if len(events) > MAX_BATCH_EVENTS:
            raise FieldError("events", f"at most {MAX_BATCH_EVENTS} events per call, got {len(events)}")
        now_ms = to_millis(now)
        latest = now_ms + _MAX_SKEW_MS
        kinds, times = self._kinds, self._times
        rows: list[RowValues] = []
        refused: list[agent_service_pb2.RefusedEvent] = []
        stripped: set[int] = set()  # indexes of the events that carried unknown fields
        for index, event in enumerate(events):
            try:
                data = event.SerializeToString()
                if data and data[0] == _TIMESTAMP_TAG:
                    # The timestamp's key starts with its length byte. A length that
                    # takes more bytes (a timestamp padded with unknown fields) makes
                    # a key no cache holds, and `_time` sends the event down the
                    # slow path instead of splitting it at the wrong place.
                    end = 2 + data[1]
                    stamp, kind_part = data[1:end], data[end:]
                    occurred = times.get(stamp)
                    if occurred is None:
                        occurred = self._time(index, stamp, stripped)
                        if occurred is None:
                            row, carried = self._checked(data, now_ms)
                            if carried:
                                stripped.add(index)
                            rows.append(row)
                            continue
                    if not EARLIEST_EVENT_MS <= occurred <= latest:
                        self._raise(event, now_ms)
                else:
                    kind_part, occurred = data, now_ms
                shaped = kinds.get(kind_part)
                if shaped is None:
                    shaped = self._kind(index, kind_part, now_ms, stripped)
                rows.append((occurred, *shaped))
            except FieldError as exc:
                stripped.discard(index)  # nothing of it is kept
                refused.append(
                    agent_service_pb2.RefusedEvent(index=index, field=exc.field, reason=exc.description)
                )
        if shift:
            moved = to_millis(now + shift) - now_ms
            rows = [(occurred + moved, shape, payload) for occurred, shape, payload in rows]
        return DecodedBatch(rows, len(stripped), refused)

    def _time(self, index: int, stamp: bytes, stripped: set[int]) -> int | None:
        """The milliseconds of a timestamp part (its length byte, then its
        bytes), or None when its length does not fit in one byte."""
        if stamp[0] & _MULTI_BYTE_LENGTH:
            return None
        millis = self._stripped_times.get(stamp)
        if millis is not None:
            stripped.add(index)
            return millis
        moment = timestamp_pb2.Timestamp.FromString(stamp[1:])
        carried = discard_unknown_fields(moment)
        millis = timestamp_millis(moment, "occurred_at")
        cache = self._stripped_times if carried else self._times
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[stamp] = millis
        if carried:
            stripped.add(index)
        return millis

    def _kind(
        self, index: int, kind_part: bytes, now_ms: int, stripped: set[int]
    ) -> tuple[int, bytes | None]:
        shaped = self._stripped_kinds.get(kind_part)
        if shaped is not None:
            stripped.add(index)
            return shaped
        (_, shape, payload), carried = self._checked(kind_part, now_ms)
        cache = self._stripped_kinds if carried else self._kinds
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[kind_part] = (shape, payload)
        if carried:
            stripped.add(index)
        return shape, payload

    @staticmethod
    def _checked(data: bytes, now_ms: int) -> tuple[RowValues, bool]:
        """The slow path: an event (or its kind part) parsed, stripped of
        unknown fields and validated field by field; True when it had any."""
        event = usage_event_pb2.UsageEvent.FromString(data)
        carried = discard_unknown_fields(event)
        return validate(event, now_ms).packed(), carried

    @staticmethod
    def _raise(event: usage_event_pb2.UsageEvent, now_ms: int) -> None:
        validate(event, now_ms)  # raises FieldError naming the time's problem
        raise AssertionError("an event with a time out of bounds passed validation")  # pragma: no cover


def to_event(row: EventRow) -> usage_event_pb2.UsageEvent:
    """The UsageEvent a stored row came from (for export), built from known values."""
    spec = KINDS[row.kind]
    event = usage_event_pb2.UsageEvent()
    event.occurred_at.FromMilliseconds(row.occurred_at)
    body = getattr(event, spec.field.name)
    if row.payload is not None:
        # Field by field: a payload an older agent stored may hold unknown fields.
        copy_known_fields(type(body).FromString(row.payload), body)
    else:
        body.SetInParent()
        for field, value in zip(spec.columns, (row.f1, row.f2, row.f3), strict=False):
            setattr(body, field.name, value)
    return event
