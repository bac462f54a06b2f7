"""Identifiers and signatures that the agent and the server must agree on."""

from __future__ import annotations

import uuid

from .weeks import Week

ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def installation_id_problem(installation_id: bytes) -> str | None:
    """What is wrong with `installation_id`, or None when it is what the contract
    says an installation ID is: a random version-4 UUID (16 bytes, version
    nibble 4, RFC 4122 variant bits 10). Anything else was not made by an
    agent (or was made from something that is not random), so it is refused."""
    if len(installation_id) != ID_BYTES:
        return f"must be {ID_BYTES} bytes (a version-4 UUID), got {len(installation_id)}"
    parsed = uuid.UUID(bytes=installation_id)
    if parsed.version != 4 or parsed.variant != uuid.RFC_4122:
        return "must be a random version-4 UUID (RFC 4122)"
    return None


def report_id(installation_id: bytes, week: Week) -> bytes:
    """The report ID, derived from (installation, week): a re-sent report carries
    the same ID and is stored once, and the server can check the derivation."""
    return uuid.uuid5(uuid.UUID(bytes=installation_id), f"week:{week.key}").bytes


def signature_is_valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is the Ed25519 signature of `data` by `public_key`."""
    # cryptography is imported by what verifies (the server), not by all that uses IDs.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
