"""Why the aggregation server refuses a request: one set of errors, raised by
the ingest domain and the store alike and mapped to status codes by the
servicer. Nothing was stored or deleted when one is raised."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from .validation import Violation


class Refused(Exception):
    """A request the ingest API refuses."""


class InvalidRequest(Refused):
    """INVALID_ARGUMENT, naming every field at fault; `server_time` is the
    server's clock when it decided (told to an agent whose clock is ahead)."""

    def __init__(self, violations: Sequence[Violation], server_time: dt.datetime | None = None) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = list(violations)
        self.server_time = server_time


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
