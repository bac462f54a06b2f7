"""The IngestService and IngestAdminService over gRPC: protobuf in, Ingest
calls, status codes out. The admin credential is checked before the admin
servicer runs (printernizer_stats.common.admin.RequireAdminToken).

The peer's address is used here, in memory only, to limit how fast one peer
can call; it is never stored and never logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple, NoReturn, TypeVar

import grpc
from printernizer.stats.v1 import (
    ingest_admin_service_pb2,
    ingest_admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from printernizer_stats.common import errors
from printernizer_stats.common.errors import PERIOD_NOT_ENDED, Context
from printernizer_stats.store.database import DATABASE_RETRY, database_unreachable

from . import metrics
from .ingest import Ingest
from .refusals import Forbidden, InvalidRequest, Refused, TooManySubmissions, Unauthenticated, WrongKey

log = logging.getLogger(__name__)

Response = TypeVar("Response")


class Wait(NamedTuple):
    seconds: float
    scope: str  # the limit that asks for the wait: "peer" or "global"


class TokenBucket:
    """`rate` calls per second with bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst

    def take(self, state: tuple[float, float] | None, now: float) -> tuple[tuple[float, float], float]:
        """The bucket's new (tokens, time) and 0 if a call may go ahead, else seconds to wait."""
        tokens, last = state if state is not None else (self.burst, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            return (tokens - 1, now), 0.0
        return (tokens, now), (1 - tokens) / self.rate


class CallLimiter:
    """Limits how fast the server is called, in memory only: per peer address
    (`peer_rate` calls per second, bursts of `peer_burst`) and for all peers
    together (`global_rate`, bursts of `global_burst`). A rate of 0 turns that
    limit off (behind a proxy every call has the proxy's address). At most
    `capacity` peers are remembered, the oldest forgotten first, so the state
    cannot grow without bound. Addresses are never stored or logged."""

    def __init__(
        self,
        peer_rate: float = 5.0,
        peer_burst: float = 20.0,
        global_rate: float = 2000.0,
        global_burst: float = 4000.0,
        capacity: int = 100_000,
    ) -> None:
        self.peer = TokenBucket(peer_rate, peer_burst) if peer_rate > 0 else None
        self.overall = TokenBucket(global_rate, global_burst) if global_rate > 0 else None
        self.capacity = capacity
        self._peers: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._overall: tuple[float, float] | None = None

    def wait_needed(self, peer: str, now: float | None = None) -> Wait:
        """Seconds 0 if the call may go ahead (and is counted), else the
        seconds to wait and which limit ("peer" or "global") says so."""
        now = time.monotonic() if now is None else now
        if self.peer is not None:
            state, wait = self.peer.take(self._peers.pop(peer, None), now)
            self._peers[peer] = state
            while len(self._peers) > self.capacity:
                self._peers.popitem(last=False)
            if wait:
                return Wait(wait, "peer")
        if self.overall is not None:
            self._overall, wait = self.overall.take(self._overall, now)
            if wait:
                return Wait(wait, "global")
        return Wait(0.0, "")

    @property
    def peers_remembered(self) -> int:
        return len(self._peers)


def peer_address(context: Context) -> str:
    """The caller's address without its port ("ipv4:1.2.3.4:5678" -> "1.2.3.4")."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingest: Ingest, limiter: CallLimiter) -> None:
        self.ingest = ingest
        self.limiter = limiter

    async def _limit(self, context: Context) -> None:
        wait = self.limiter.wait_needed(peer_address(context))
        if wait.seconds > 0:
            metrics.RATE_LIMITED.add(1, {"scope": wait.scope})
            await errors.resource_exhausted(
                context, "too many calls; slow down", dt.timedelta(seconds=wait.seconds)
            )

    async def _answer(self, context: Context, call: Callable[[], Awaitable[Response]], what: str) -> Response:
        started = time.perf_counter()
        try:
            await self._limit(context)
            return await _answer(context, call, what)
        finally:
            metrics.DURATION.record(time.perf_counter() - started, {"method": what})

    async def SubmitReports(
        self, request: ingest_service_pb2.SubmitReportsRequest, context: Context
    ) -> ingest_service_pb2.SubmitReportsResponse:
        response = await self._answer(context, lambda: self.ingest.submit(request), "submission")
        for receipt in response.receipts:
            accepted = receipt.status == ingest_service_pb2.RECEIPT_STATUS_ACCEPTED
            metrics.REPORTS.add(1, {"outcome": "accepted" if accepted else "duplicate"})
        return response

    async def DeleteInstallation(
        self, request: ingest_service_pb2.DeleteInstallationRequest, context: Context
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        response = await self._answer(context, lambda: self.ingest.delete(request), "deletion")
        metrics.DELETIONS.add(1)
        return response


class IngestAdminServicer(ingest_admin_service_pb2_grpc.IngestAdminServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def GetIngestStatus(
        self, request: ingest_admin_service_pb2.GetIngestStatusRequest, context: Context
    ) -> ingest_admin_service_pb2.GetIngestStatusResponse:
        return await _answer(context, self.ingest.status, "status")

    async def DeleteInstallationAsOperator(
        self, request: ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest, context: Context
    ) -> ingest_admin_service_pb2.DeleteInstallationAsOperatorResponse:
        return await _answer(context, lambda: self.ingest.delete_as_operator(request), "operator deletion")

    async def PurgeExpiredReports(
        self, request: ingest_admin_service_pb2.PurgeExpiredReportsRequest, context: Context
    ) -> ingest_admin_service_pb2.PurgeExpiredReportsResponse:
        return await _answer(context, self.ingest.purge_expired, "retention")


async def _answer(context: Context, call: Callable[[], Awaitable[Response]], what: str) -> Response:
    """Run a call; map refusals and failures to statuses."""
    try:
        return await call()
    except Refused as exc:
        metrics.REFUSED.add(1, {"reason": REFUSAL_REASONS.get(type(exc), "other"), "method": what})
        await _refuse(context, exc)
    except Exception as exc:
        if not database_unreachable(exc):
            metrics.REFUSED.add(1, {"reason": "internal_error", "method": what})
            log.error("%s failed: %s", what, describe_failure(exc))
            await errors.internal(context)
        # Nothing was stored (the transaction did not commit): the caller retries.
        metrics.REFUSED.add(1, {"reason": "database_unavailable", "method": what})
        log.warning("%s: the database is not answering (%s)", what, type(exc).__name__)
        await errors.unavailable(context, "the database is not answering; try again later", DATABASE_RETRY)


def describe_failure(exc: BaseException) -> str:
    """An unexpected failure for the log, without any exception's message:
    messages can hold what the request carried (a driver's error quotes the
    row it refused, a KeyError its key), and no identifier may reach a log.
    What is left locates it: each exception's type (with a database error's
    SQLSTATE) along the chain of causes, and where it passed through this
    project's code and where it was raised, innermost last."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = f"{type(current).__module__}.{type(current).__qualname__}"
        sqlstate = getattr(getattr(current, "orig", None), "sqlstate", None) or getattr(
            current, "sqlstate", None
        )
        if isinstance(sqlstate, str):
            kind += f" (SQLSTATE {sqlstate})"
        frames = traceback.extract_tb(current.__traceback__)
        shown = [f for f in frames if Path(f.filename).parent.name in _OWN_PACKAGES]
        if frames and (not shown or shown[-1] is not frames[-1]):
            shown.append(frames[-1])
        where = " > ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in shown)
        parts.append(f"{kind} at {where}" if where else kind)
        current = current.__cause__ or current.__context__
    return "; caused by ".join(parts)


# Where this project's code lives, as frames name it.
_OWN_PACKAGES = frozenset({"printernizer_stats.aggregation", "printernizer_stats.common"})

# The reason a refusal is counted under (stats.ingest.refused).
REFUSAL_REASONS: dict[type[Refused], str] = {
    InvalidRequest: "invalid",
    Unauthenticated: "unauthenticated",
    WrongKey: "unauthenticated",
    Forbidden: "deleted_installation",
    TooManySubmissions: "too_many_submissions",
}


async def _refuse(context: Context, exc: Refused) -> NoReturn:
    if isinstance(exc, InvalidRequest):
        violations = [(v.field, v.description) for v in exc.violations]
        reasons = {v.reason for v in exc.violations if v.reason}
        if PERIOD_NOT_ENDED in reasons and exc.server_time is not None:
            # The agent's clock is ahead: it keeps the report, and learns the time.
            info = errors.error_info(PERIOD_NOT_ENDED, {"server_time": exc.server_time.isoformat()})
            await errors.invalid_argument(context, violations, info)
        await errors.invalid_argument(context, violations)
    if isinstance(exc, TooManySubmissions):
        await errors.resource_exhausted(context, str(exc), exc.retry_after)
    if isinstance(exc, Unauthenticated):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if isinstance(exc, Forbidden):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    await errors.internal(context)
