"""The one rule for every servicer: decode the request, call one domain
method, encode its result. Everything else is answered here, the same way in
every service:

- a domain refusal (printernizer_stats.common.refusals) becomes its status,
  with its details (google.rpc BadRequest, ErrorInfo, RetryInfo: `errors`);
- an infrastructure failure the service knows (its database away, its disk
  full) becomes the refusal it means, logged as a warning;
- anything else is a bug: INTERNAL with a generic message, and what happened
  in the service's log only.

tests/common/test_servicer_boundaries.py holds every servicer to this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc

from . import errors
from .errors import Context
from .refusals import (
    FailedPrecondition,
    FieldError,
    PermissionDenied,
    Refusal,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

Response = TypeVar("Response")


@dataclass(frozen=True)
class Outcome:
    """How one call ended, for a service's metrics."""

    what: str  # the call, as the service names it in its logs and metrics
    seconds: float
    refusal: Refusal | None = None  # the refusal answered, if one was
    failed: bool = False  # a bug: answered INTERNAL


def _no_meaning(failure: Exception) -> Refusal | None:
    return None


class Boundary:
    """How one service answers its calls.

    `failures` says what an infrastructure failure means to a caller (None: it
    is a bug). `describe` says how a bug is logged: by default with its
    traceback; a service whose exceptions may quote what a request carried
    logs less. `admit` may refuse a call before the domain sees it (a rate
    limit by the caller's address). `observe` hears how every call ended."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        failures: Callable[[Exception], Refusal | None] = _no_meaning,
        describe: Callable[[BaseException], str] | None = None,
        admit: Callable[[Context], Refusal | None] | None = None,
        observe: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.log = log
        self.failures = failures
        self.describe = describe
        self.admit = admit
        self.observe = observe

    async def answer(self, context: Context, what: str, call: Callable[[], Awaitable[Response]]) -> Response:
        """The domain call's result, or the call answered with the status its failure deserves."""
        started = time.perf_counter()
        try:
            refusal = self.admit(context) if self.admit is not None else None
            if refusal is None:
                response = await call()
        except Exception as exc:
            refusal = self._meaning(what, exc)
        else:
            if refusal is None:
                self._observe(Outcome(what, time.perf_counter() - started))
                return response
        await self._refuse(context, what, started, refusal)

    async def answer_each(
        self, context: Context, what: str, stream: Callable[[], AsyncIterator[Response]]
    ) -> AsyncIterator[Response]:
        """A streaming call: the domain's items, until it ends or fails (then answered as `answer` does)."""
        started = time.perf_counter()
        try:
            refusal = self.admit(context) if self.admit is not None else None
            if refusal is None:
                async for item in stream():
                    yield item
        except Exception as exc:
            refusal = self._meaning(what, exc)
        else:
            if refusal is None:
                self._observe(Outcome(what, time.perf_counter() - started))
                return
        await self._refuse(context, what, started, refusal)

    def _meaning(self, what: str, exc: Exception) -> Refusal | None:
        """The refusal a failure is answered with; None for a bug. Logs what is not the domain's refusal."""
        if isinstance(exc, Refusal):
            return exc
        refusal = self.failures(exc)
        if refusal is not None:
            self.log.warning("%s: %s (%s)", what, refusal, type(exc).__name__)
        elif self.describe is None:
            self.log.exception("%s failed", what)
        else:
            self.log.error("%s failed: %s", what, self.describe(exc))
        return refusal

    def _observe(self, outcome: Outcome) -> None:
        if self.observe is not None:
            self.observe(outcome)

    async def _refuse(self, context: Context, what: str, started: float, refusal: Refusal | None) -> NoReturn:
        seconds = time.perf_counter() - started
        if refusal is None:
            self._observe(Outcome(what, seconds, failed=True))
            await errors.internal(context)
        self._observe(Outcome(what, seconds, refusal))
        await abort_with(context, refusal)


async def abort_with(context: Context, refusal: Refusal) -> NoReturn:
    """Answer a call with a refusal's status and details."""
    message = str(refusal)
    if isinstance(refusal, FieldError):
        violations = [(v.field, v.description) for v in refusal.violations]
        reasons = dict.fromkeys(v.reason for v in refusal.violations if v.reason)
        await errors.invalid_argument(
            context, violations, *(errors.error_info(reason, refusal.metadata) for reason in reasons)
        )
    if isinstance(refusal, ResourceExhausted):
        await errors.resource_exhausted(context, message, refusal.retry_after)
    if isinstance(refusal, Unavailable):
        await errors.unavailable(context, message, refusal.retry_after)
    if isinstance(refusal, FailedPrecondition):
        await errors.failed_precondition(context, message)
    if isinstance(refusal, Unauthenticated):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    if isinstance(refusal, PermissionDenied):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
    await errors.internal(context)  # a Refusal with no status of its own is a bug
