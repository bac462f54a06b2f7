"""Messages that carry fields their type does not know, for the tests that
check that only the contract's typed fields cross a boundary.

protobuf keeps the fields it does not know when it parses a message and writes
them out again when it serializes it, so a field that a newer client adds (or
a careless one invents) travels on unless every boundary drops it. These
Hypothesis strategies walk the compiled descriptors, so they work for any
message type of the contract (or any other):

- `messages(descriptor, rules)`: instances valid per the contract. Generic
  where the descriptors say enough (every singular message field set, one
  member of each oneof, enums defined and non-zero); `rules` supply what they
  cannot say (ranges, uniqueness), keyed by the full name of a message type or
  of a field. With `valid=False`: anything the wire format allows.
- `unknown_fields(descriptor)`: serialized fields a message of that type does
  not know: random field numbers (its own numbers with a wire type they do not
  have, too), every wire type, groups nesting more of them, and UTF-8 text
  that carries a marker (`MARKER_PREFIX` and a token) to search for.
- `with_unknown_fields(instances)`: an instance's bytes with such fields
  spliced in at random depths (the message itself, nested messages, entries of
  repeated fields, well-known types such as Timestamp), with the markers to
  look for and the paths of the messages that carry them.

A test then sends `Spliced.data` through a boundary and searches what comes out
(bytes, files, JSON) for `Spliced.markers`: none may appear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

# What every marker starts with; the token after it comes from Hypothesis.
MARKER_PREFIX = b"UNKNOWN-FIELD-"
MAX_FIELD_NUMBER = (1 << 29) - 1

# Wire types (the low three bits of a tag).
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_TYPES = (VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, FIXED32)

F = FieldDescriptor
_VARINT_TYPES = {F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_SINT32}
_VARINT_TYPES |= {F.TYPE_SINT64, F.TYPE_BOOL, F.TYPE_ENUM}
_FIXED64_TYPES = {F.TYPE_FIXED64, F.TYPE_SFIXED64, F.TYPE_DOUBLE}
_FIXED32_TYPES = {F.TYPE_FIXED32, F.TYPE_SFIXED32, F.TYPE_FLOAT}
_INTEGER_RANGES = {
    F.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    F.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    F.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    F.TYPE_UINT32: (0, (1 << 32) - 1),
    F.TYPE_FIXED32: (0, (1 << 32) - 1),
    F.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    F.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    F.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    F.TYPE_UINT64: (0, (1 << 64) - 1),
    F.TYPE_FIXED64: (0, (1 << 64) - 1),
}

# A field rule gives a field's value (a list for a repeated field; None leaves
# it unset); a message rule gives whole messages of that type.
Rules = Mapping[str, st.SearchStrategy[Any]]


# --- valid (or any) instances ---------------------------------------------------------


def messages(
    descriptor: Descriptor, rules: Rules | None = None, *, valid: bool = True
) -> st.SearchStrategy[Any]:
    """Instances of `descriptor`'s message type; see the module's docstring."""
    rules = rules or {}
    if descriptor.full_name in rules:
        return rules[descriptor.full_name]
    message_class = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class()
        for oneof in descriptor.oneofs:
            # Valid: exactly one member; otherwise perhaps none.
            members = list(oneof.fields) if valid else [None, *oneof.fields]
            chosen = draw(st.sampled_from(members))
            if chosen is not None:
                _set(message, chosen, draw(_field_values(chosen, rules, valid)))
        for field in descriptor.fields:
            if field.containing_oneof is None:
                _set(message, field, draw(_field_values(field, rules, valid)))
        return message

    return build()


def _field_values(field: FieldDescriptor, rules: Rules, valid: bool) -> st.SearchStrategy[Any]:
    if field.full_name in rules:
        return rules[field.full_name]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return st.just([])  # maps are left empty (the usage messages have none)
    single = _single_values(field, rules, valid)
    if field.is_repeated:
        return st.lists(single, max_size=3 if valid else 6)
    if field.message_type is not None and not valid:
        return st.none() | single  # an unset message is something the wire allows
    return single


def _single_values(field: FieldDescriptor, rules: Rules, valid: bool) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, rules, valid=valid)
    if field.type == F.TYPE_ENUM:
        assert field.enum_type is not None
        defined = [v.number for v in field.enum_type.values]
        if valid:
            return st.sampled_from([n for n in defined if n] or [0])
        return st.sampled_from(defined) | st.integers(-(1 << 31), (1 << 31) - 1)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[field.type]
        return st.integers(low, high)
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.floats(allow_nan=False, width=32 if field.type == F.TYPE_FLOAT else 64)
    if field.type == F.TYPE_STRING:
        return st.text(max_size=20)
    return st.binary(max_size=32)


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if value is None:
        return
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


# --- unknown fields -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnknownFields:
    data: bytes  # one or more serialized fields
    markers: tuple[bytes, ...]  # bytes that appear only inside them


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return bytes(out + bytes([low]))
        out.append(low | 0x80)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def _accepted_wire_types(field: FieldDescriptor) -> set[int]:
    """The wire types a parser takes as this field (packed repeated scalars
    come length-delimited too)."""
    if field.type in _VARINT_TYPES:
        native = VARINT
    elif field.type in _FIXED64_TYPES:
        native = FIXED64
    elif field.type in _FIXED32_TYPES:
        native = FIXED32
    elif field.type == F.TYPE_GROUP:
        return {START_GROUP}
    else:
        return {LENGTH_DELIMITED}
    return {native, LENGTH_DELIMITED} if field.is_repeated else {native}


@st.composite
def _marker(draw: st.DrawFn) -> bytes:
    return MARKER_PREFIX + draw(st.binary(min_size=6, max_size=6)).hex().encode()


@st.composite
def _field(draw: st.DrawFn, number: int, wire_type: int, depth: int) -> UnknownFields:
    """One field with this number and wire type, whatever its number means."""
    if wire_type == VARINT:
        return UnknownFields(tag(number, VARINT) + varint(draw(st.integers(0, (1 << 64) - 1))), ())
    if wire_type == FIXED64:
        return UnknownFields(tag(number, FIXED64) + draw(st.binary(min_size=8, max_size=8)), ())
    if wire_type == FIXED32:
        return UnknownFields(tag(number, FIXED32) + draw(st.binary(min_size=4, max_size=4)), ())
    if wire_type == START_GROUP:  # fields of any kind, up to two groups deep
        inside = draw(st.lists(_any_field(depth + 1), max_size=3 if depth < 2 else 0))
        data = tag(number, START_GROUP) + b"".join(f.data for f in inside) + tag(number, END_GROUP)
        return UnknownFields(data, tuple(m for f in inside for m in f.markers))
    # Text around a marker: the marker is what a test searches for, the text
    # is whatever UTF-8 a newer client might put there.
    marker = draw(_marker())
    text = draw(st.text(max_size=12)).encode() + marker + draw(st.text(max_size=12)).encode()
    return UnknownFields(tag(number, LENGTH_DELIMITED) + varint(len(text)) + text, (marker,))


@st.composite
def _any_field(draw: st.DrawFn, depth: int) -> UnknownFields:
    number = draw(st.integers(1, MAX_FIELD_NUMBER))
    return draw(_field(number, draw(st.sampled_from(_WIRE_TYPES)), depth))


@st.composite
def _unknown_field(draw: st.DrawFn, descriptor: Descriptor) -> UnknownFields:
    """One field that a message of this type does not know."""
    known = descriptor.fields_by_number
    numbers = st.integers(1, MAX_FIELD_NUMBER)
    number = draw(st.sampled_from(sorted(known)) | numbers if known else numbers)
    accepted = _accepted_wire_types(known[number]) if number in known else set()
    wire_type = draw(st.sampled_from([w for w in _WIRE_TYPES if w not in accepted]))
    return draw(_field(number, wire_type, 0))


@st.composite
def unknown_fields(draw: st.DrawFn, descriptor: Descriptor) -> UnknownFields:
    """One to four fields a message of this type does not know, at least one
    of them text with a marker."""
    fields = draw(st.lists(_unknown_field(descriptor), max_size=3))
    unknown_number = st.integers(1, MAX_FIELD_NUMBER).filter(lambda n: n not in descriptor.fields_by_number)
    text = draw(_field(draw(unknown_number), LENGTH_DELIMITED, 0))
    fields.insert(draw(st.integers(0, len(fields))), text)
    return UnknownFields(b"".join(f.data for f in fields), tuple(m for f in fields for m in f.markers))


# --- spliced into messages ------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Spliced:
    clean: Message  # the valid instance
    data: bytes  # its bytes, with unknown fields at the depths in `paths`
    markers: tuple[bytes, ...]  # found only inside the unknown fields
    paths: tuple[str, ...]  # the messages that carry them ("" is the message itself)

    @property
    def carries_unknown_fields(self) -> bool:
        return bool(self.paths)

    def __repr__(self) -> str:
        known = text_format.MessageToString(self.clean, as_one_line=True)
        where = f"unknown fields at {list(self.paths)}"
        return f"Spliced({self.clean.DESCRIPTOR.name} {{{known}}}, {where}, data={self.data!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How Hypothesis prints a failing example (its printer takes this over __repr__)."""
        printer.text(repr(self))


def nested_messages(message: Message, path: str = "") -> Iterator[tuple[str, Message]]:
    """`message` and every message set inside it, at any depth, with their paths."""
    yield path, message
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            for index, item in enumerate(value):
                yield from nested_messages(item, f"{name}[{index}]")
        else:
            yield from nested_messages(value, name)


def with_unknown_fields(
    instances: st.SearchStrategy[Any], *, depths: Callable[[int], st.SearchStrategy[int]] | None = None
) -> st.SearchStrategy[Spliced]:
    """An instance's bytes with unknown fields spliced into one to three of its
    messages at any depth (`depths(n)` may choose how many of the n messages
    instead, zero included)."""
    how_many = depths or (lambda n: st.integers(1, min(3, n)))

    @st.composite
    def splice(draw: st.DrawFn) -> Spliced:
        clean = draw(instances)
        message = type(clean)()
        message.CopyFrom(clean)
        nodes = list(nested_messages(message))
        count = draw(how_many(len(nodes)))
        chosen = draw(
            st.lists(st.sampled_from(range(len(nodes))), min_size=count, max_size=count, unique=True)
        )
        markers: list[bytes] = []
        for index in sorted(chosen):
            _, node = nodes[index]
            fields = draw(unknown_fields(node.DESCRIPTOR))
            node.MergeFromString(fields.data)  # parsed, they stay as the node's unknown fields
            markers += fields.markers
        paths = tuple(nodes[i][0] for i in sorted(chosen))
        return Spliced(clean, message.SerializeToString(), tuple(markers), paths)

    return splice()


def found(markers: tuple[bytes, ...] | list[bytes], *places: bytes) -> list[bytes]:
    """The markers that occur in any of `places` (a test wants none)."""
    return [m for m in markers if any(m in place for place in places)]
