"""Why a request is refused, as far as the database decides it (whose key an
installation is, whether it was deleted, its submission rate): raised by the
ingest store, each one of the refusals of printernizer_stats.common.refusals,
answered with its status at the servers' boundary. Nothing was stored or
deleted when one is raised."""

from __future__ import annotations

import datetime as dt

from printernizer_stats.common.refusals import PermissionDenied, ResourceExhausted, Unauthenticated


class WrongKey(Unauthenticated):
    """UNAUTHENTICATED: validly signed, but not with the installation's key.
    One message whatever the installation's state (live, rate-limited,
    deleted), so that the answer tells a caller without the key nothing."""

    def __init__(self) -> None:
        super().__init__("not signed with this installation's key")


class Forbidden(PermissionDenied):
    """PERMISSION_DENIED (to the key's holder only): the installation was deleted."""


class TooManySubmissions(ResourceExhausted):
    """RESOURCE_EXHAUSTED, with the delay after which a retry may succeed."""

    def __init__(self, retry_after: dt.timedelta) -> None:
        super().__init__(f"one submission per installation per hour; retry in {retry_after}", retry_after)
