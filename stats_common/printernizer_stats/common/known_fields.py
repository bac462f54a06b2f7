"""Only the contract's fields cross the agent's boundaries.

protobuf keeps the fields it does not know when it parses a message and writes
them out again when it serializes it. Left alone, a field that a newer SDK (or
a careless client) adds would be stored, copied into reports and sent: a field
the user never consented to. So what comes in has its unknown fields discarded
before anything is stored, and what goes out is built field by field from the
values the contract defines, which also holds for rows an older agent stored.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def discard_unknown_fields(message: Message) -> bool:
    """Discard the unknown fields of `message` at every depth; True when it had any."""
    # Every unknown field takes at least one byte, so the size tells.
    before = message.ByteSize()
    message.DiscardUnknownFields()
    return message.ByteSize() != before


def copy_known_fields(source: Message, target: Message) -> None:
    """Set `target` (a message of the same type) to the known fields of
    `source`, field by field at every depth; `target` is marked present, as a
    copy would be."""
    if source.DESCRIPTOR is not target.DESCRIPTOR:
        raise TypeError(f"cannot copy {source.DESCRIPTOR.full_name} into {target.DESCRIPTOR.full_name}")
    target.SetInParent()
    for field, value in source.ListFields():
        into = getattr(target, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    copy_known_fields(item, into[key])
                else:
                    into[key] = item
        elif field.message_type is not None and field.is_repeated:
            for item in value:
                copy_known_fields(item, into.add())
        elif field.message_type is not None:
            copy_known_fields(value, into)
        elif field.is_repeated:
            into.extend(value)
        else:
            setattr(target, field.name, value)


def known_fields_only(message: M) -> M:
    """A new message holding only the known fields of `message`."""
    copy = type(message)()
    copy_known_fields(message, copy)
    return copy
