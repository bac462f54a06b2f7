"""Why the aggregation server refuses a request: the store's refusals, and
the request that is invalid (decided by the ingest domain before the store is
asked). Mapped to status codes by the servicer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from printernizer_stats.store.refusals import (
    Forbidden,
    Refused,
    TooManySubmissions,
    Unauthenticated,
    WrongKey,
)

from .validation import Violation

__all__ = ["Forbidden", "InvalidRequest", "Refused", "TooManySubmissions", "Unauthenticated", "WrongKey"]


class InvalidRequest(Refused):
    """INVALID_ARGUMENT, naming every field at fault; `server_time` is the
    server's clock when it decided (told to an agent whose clock is ahead)."""

    def __init__(self, violations: Sequence[Violation], server_time: dt.datetime | None = None) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = list(violations)
        self.server_time = server_time
