"""Identifiers and signatures that the agent and the server must agree on."""

from __future__ import annotations

import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .weeks import Week

ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def report_id(installation_id: bytes, week: Week) -> bytes:
    """The report ID, derived from (installation, week): a re-sent report carries
    the same ID and is stored once, and the server can check the derivation."""
    return uuid.uuid5(uuid.UUID(bytes=installation_id), f"week:{week.key}").bytes


def signature_is_valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is the Ed25519 signature of `data` by `public_key`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
