"""Consent and the installation identity.

Off by default: until the user chooses, the agent keeps events locally for the
user's own view (local-only) and sends nothing. DO_NOT_TRACK=1 or the agent's
own switch force "disabled" (nothing recorded) whatever was chosen.

The identity (a random UUID and an Ed25519 signing key) exists only while the
user shares: it is created at opt-in, never derived from hardware, and thrown
away at opt-out, so a later opt-in is a new, unlinkable installation.

Sharing is at a level (common.consent_levels), recorded with the schema version
whose disclosure the user was shown. A level below everything needs a schema
version that has levels: an older report cannot say its level, and the server
reads it as holding every part.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from printernizer.stats.v1 import agent_service_pb2, aggregated_stats_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.common.events import from_millis
from printernizer_stats.common.refusals import FieldError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ConsentState = int  # agent_service_pb2.ConsentState value
LOCAL_ONLY = agent_service_pb2.CONSENT_STATE_LOCAL_ONLY
SHARING = agent_service_pb2.CONSENT_STATE_SHARING
DISABLED = agent_service_pb2.CONSENT_STATE_DISABLED
UNSPECIFIED = agent_service_pb2.CONSENT_STATE_UNSPECIFIED

# Setting keys in the agent's database.
CHOSEN = "consent.chosen"
SCHEMA_VERSION = "consent.schema_version"
# How much is shared; absent in a database from before levels, which shared everything.
LEVEL = "consent.level"
CHANGED_AT = "consent.changed_at"
SINCE_SEQUENCE = "consent.since_sequence"  # events stored after this count...
SINCE_TIME = "consent.since_time"  # ...if they happened after this (milliseconds)
INSTALLATION_ID = "identity.installation_id"
PRIVATE_KEY = "identity.private_key"
CONSENT_KEYS = (CHOSEN, SCHEMA_VERSION, LEVEL, CHANGED_AT, SINCE_SEQUENCE, SINCE_TIME)


@dataclass(frozen=True)
class Override:
    """Why recording may be off regardless of the user's choice."""

    do_not_track: bool = False
    agent_switch: bool = False


@dataclass(frozen=True)
class Identity:
    """The installation's ID and signing key: made when the user first shares.
    cryptography (7 MB) is imported only then, or when a stored key is used."""

    installation_id: bytes
    private_key: Ed25519PrivateKey

    @classmethod
    def create(cls) -> Identity:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(uuid.uuid4().bytes, Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def settings(self) -> dict[str, bytes | None]:
        raw = self.private_key.private_bytes_raw()
        return {INSTALLATION_ID: self.installation_id, PRIVATE_KEY: raw}


@dataclass(frozen=True)
class ConsentRecord:
    """The consent as stored, and what is in effect given the overrides."""

    chosen: ConsentState
    schema_version: int
    level: int  # a ConsentLevel while the user chose SHARING, else 0
    changed_at: dt.datetime | None
    since_sequence: int
    since_time: dt.datetime | None
    override: Override

    @classmethod
    def from_settings(cls, settings: dict[str, bytes], override: Override) -> ConsentRecord:
        def number(key: str) -> int:
            return int(settings[key].decode()) if key in settings else 0

        changed, since = number(CHANGED_AT), number(SINCE_TIME)
        chosen = number(CHOSEN)
        return cls(
            chosen=chosen,
            schema_version=number(SCHEMA_VERSION),
            level=(number(LEVEL) or consent_levels.EVERYTHING) if chosen == SHARING else 0,
            changed_at=from_millis(changed) if changed else None,
            since_sequence=number(SINCE_SEQUENCE),
            since_time=from_millis(since) if since else None,
            override=override,
        )

    @property
    def effective(self) -> ConsentState:
        if self.override.do_not_track or self.override.agent_switch:
            return DISABLED
        return self.chosen if self.chosen != UNSPECIFIED else LOCAL_ONLY

    @property
    def reason(self) -> int:
        if self.override.do_not_track:
            return agent_service_pb2.CONSENT_REASON_DO_NOT_TRACK
        if self.override.agent_switch:
            return agent_service_pb2.CONSENT_REASON_AGENT_SWITCH
        if self.chosen == UNSPECIFIED:
            return agent_service_pb2.CONSENT_REASON_DEFAULT
        return agent_service_pb2.CONSENT_REASON_USER_CHOICE

    @property
    def recording(self) -> bool:
        return self.effective != DISABLED

    @property
    def sharing(self) -> bool:
        return self.effective == SHARING

    def to_proto(self) -> agent_service_pb2.Consent:
        message = agent_service_pb2.Consent(
            chosen=self.chosen,  # type: ignore[arg-type]
            effective=self.effective,  # type: ignore[arg-type]
            reason=self.reason,  # type: ignore[arg-type]
            consented_schema_version=self.schema_version if self.chosen == SHARING else 0,  # type: ignore[arg-type]
            current_schema_version=CURRENT_SCHEMA_VERSION,  # type: ignore[arg-type]
            level=self.level,  # type: ignore[arg-type]
        )
        if self.changed_at is not None:
            message.changed_at.FromDatetime(self.changed_at)
        return message


def check_level(level: int) -> None:
    """Refuse a level the contract does not define (0, unset, is allowed)."""
    if level != 0 and level not in consent_levels.LEVELS:
        raise FieldError("level", f"{level} is not a ConsentLevel")


def check_choice(state: int, schema_version: int, level: int = 0) -> None:
    """Refuse a consent change the agent cannot honour, naming the field."""
    if state not in (LOCAL_ONLY, SHARING, DISABLED):
        raise FieldError("state", "must be LOCAL_ONLY, SHARING or DISABLED")
    # Whatever the state, a version this agent does not define is refused, not ignored.
    if schema_version > CURRENT_SCHEMA_VERSION:
        raise FieldError(
            "schema_version", f"{schema_version} is newer than this agent's {CURRENT_SCHEMA_VERSION}"
        )
    if schema_version not in aggregated_stats_pb2.ReportSchemaVersion.values():
        raise FieldError("schema_version", f"{schema_version} is not a ReportSchemaVersion")
    if state == SHARING and schema_version == 0:
        raise FieldError("schema_version", "required to opt in: the version of the disclosure shown")
    check_level(level)
    if state != SHARING and level != 0:
        raise FieldError("level", "is chosen only with SHARING (nothing is sent otherwise)")
    below_everything = level not in (0, consent_levels.EVERYTHING)
    if state == SHARING and below_everything and schema_version < consent_levels.SINCE_SCHEMA_VERSION:
        # A report of that version cannot say its level: the server would read it as everything.
        raise FieldError(
            "level",
            f"the disclosure of schema version {schema_version} has no levels: sharing less than "
            f"everything needs version {consent_levels.SINCE_SCHEMA_VERSION} or later",
        )


def choice_settings(
    state: int,
    schema_version: int,
    level: int,
    now: dt.datetime,
    since_sequence: int,
    since_time: dt.datetime,
) -> dict[str, bytes | None]:
    """The settings that record a choice made at `now`; reports count events
    stored after `since_sequence` that happened after `since_time`. Sharing
    with no level (0) shares everything, as before levels existed.

    The sequence number is the exact boundary; the time only keeps out events
    that happened before consent but arrived later. Event times have whole
    seconds, so `since_time` is taken to the whole second as well."""
    since_time = since_time.replace(microsecond=0)
    return {
        CHOSEN: str(state).encode(),
        SCHEMA_VERSION: str(schema_version if state == SHARING else 0).encode(),
        LEVEL: str((level or consent_levels.EVERYTHING) if state == SHARING else 0).encode(),
        CHANGED_AT: str(int(now.timestamp() * 1000)).encode(),
        SINCE_SEQUENCE: str(since_sequence).encode(),
        SINCE_TIME: str(int(since_time.timestamp() * 1000)).encode(),
    }


def load_identity(settings: dict[str, bytes]) -> Identity | None:
    if INSTALLATION_ID not in settings or PRIVATE_KEY not in settings:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Identity(settings[INSTALLATION_ID], Ed25519PrivateKey.from_private_bytes(settings[PRIVATE_KEY]))
