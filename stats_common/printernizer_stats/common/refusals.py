"""Why a call is refused, in the domain's own terms: each class is one gRPC
status, and the domain code that raises it needs no gRPC (this module imports
none). `printernizer_stats.common.boundary` answers each with its status and
details; a servicer never chooses a status itself.

`FieldError` is the one type for a request whose fields are wrong, whichever
part decides it (the SDK and the agent checking events, the agent's API, the
aggregation server's checks of a report, the analytics' queries)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Refusal(Exception):
    """A call the domain refuses; its message is what the caller reads."""


@dataclass(frozen=True)
class FieldViolation:
    """One wrong field: its path in the request ("events[3].occurred_at") and why."""

    field: str
    description: str
    # A machine-readable reason (a google.rpc.ErrorInfo reason of
    # printernizer_stats.common.errors), for the few a client acts on.
    reason: str = ""


class FieldError(Refusal, ValueError):
    """INVALID_ARGUMENT: the request's fields named by `violations`, the first
    one also in the message. `metadata` is what a client acting on a
    violation's reason needs (the server's time, say)."""

    def __init__(self, field: str, description: str) -> None:
        self._set((FieldViolation(field, description),), {})

    @classmethod
    def of(
        cls, violations: Iterable[FieldViolation], metadata: Mapping[str, str] | None = None
    ) -> FieldError:
        """One error naming several fields (at least one)."""
        error = cls.__new__(cls)
        error._set(tuple(violations), dict(metadata or {}))
        return error

    def _set(self, violations: tuple[FieldViolation, ...], metadata: dict[str, str]) -> None:
        if not violations:
            raise ValueError("a FieldError names at least one field")
        Exception.__init__(self, "; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations
        self.metadata = metadata

    @property
    def field(self) -> str:
        return self.violations[0].field

    @property
    def description(self) -> str:
        return self.violations[0].description


class Unauthenticated(Refusal):
    """UNAUTHENTICATED: a signature or a credential that does not verify."""


class PermissionDenied(Refusal):
    """PERMISSION_DENIED: the caller is known, and may not do this."""


class FailedPrecondition(Refusal):
    """FAILED_PRECONDITION: not in the state this needs (the user has not opted in, say)."""


class ResourceExhausted(Refusal):
    """RESOURCE_EXHAUSTED, with the delay after which a retry may succeed."""

    def __init__(self, message: str, retry_after: dt.timedelta) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(Refusal):
    """UNAVAILABLE (try again), with the delay after which a retry may succeed when known."""

    def __init__(self, message: str, retry_after: dt.timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
