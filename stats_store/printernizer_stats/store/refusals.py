"""Why a request is refused, as far as the database decides it (whose key an
installation is, whether it was deleted, its submission rate): raised by the
ingest store and the ingest domain alike, mapped to status codes by the
aggregation server's servicer. Nothing was stored or deleted when one is raised."""

from __future__ import annotations

import datetime as dt


class Refused(Exception):
    """A request the ingest API refuses."""


class Unauthenticated(Refused):
    """UNAUTHENTICATED: a signature that does not verify."""


class WrongKey(Unauthenticated):
    """UNAUTHENTICATED: validly signed, but not with the installation's key.
    One message whatever the installation's state (live, rate-limited,
    deleted), so that the answer tells a caller without the key nothing."""

    def __init__(self) -> None:
        super().__init__("not signed with this installation's key")


class Forbidden(Refused):
    """PERMISSION_DENIED (to the key's holder only): the installation was deleted."""


class TooManySubmissions(Refused):
    """RESOURCE_EXHAUSTED, with the delay after which a retry may succeed."""

    def __init__(self, retry_after: dt.timedelta) -> None:
        super().__init__(f"one submission per installation per hour; retry in {retry_after}")
        self.retry_after = retry_after
