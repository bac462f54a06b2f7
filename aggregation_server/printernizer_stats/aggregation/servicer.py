"""The IngestService and IngestAdminService over gRPC: each call hands its
request to one method of Ingest and returns its answer; the shared boundary
answers refusals and failures (printernizer_stats.common.boundary), and
counts them. The admin credential is checked before the admin servicer runs
(printernizer_stats.common.admin.RequireAdminToken).

The peer's address is used here, in memory only, to limit how fast one peer
can call; it is never stored and never logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from printernizer.stats.v1 import (
    ingest_admin_service_pb2,
    ingest_admin_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
)
from printernizer_stats.common.boundary import Boundary, Outcome
from printernizer_stats.common.errors import Context
from printernizer_stats.common.refusals import (
    FieldError,
    PermissionDenied,
    Refusal,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from printernizer_stats.store.database import database_refusal

from . import metrics
from .ingest import Ingest

log = logging.getLogger(__name__)


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


class TooManyCalls(ResourceExhausted):
    """A call refused by the rate limit (`scope`: "peer" or "global"), before Ingest sees it."""

    def __init__(self, wait: Wait) -> None:
        super().__init__("too many calls; slow down", dt.timedelta(seconds=wait.seconds))
        self.scope = wait.scope


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingest: Ingest, limiter: CallLimiter) -> None:
        self.ingest = ingest
        self.limiter = limiter
        self.boundary = Boundary(
            log, failures=database_refusal, describe=describe_failure, admit=self._admit, observe=_timed
        )

    def _admit(self, context: Context) -> Refusal | None:
        wait = self.limiter.wait_needed(peer_address(context))
        return TooManyCalls(wait) if wait.seconds > 0 else None

    async def SubmitReports(
        self, request: ingest_service_pb2.SubmitReportsRequest, context: Context
    ) -> ingest_service_pb2.SubmitReportsResponse:
        return await self.boundary.answer(context, "submission", lambda: self.ingest.submit(request))

    async def DeleteInstallation(
        self, request: ingest_service_pb2.DeleteInstallationRequest, context: Context
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        return await self.boundary.answer(context, "deletion", lambda: self.ingest.delete(request))


class IngestAdminServicer(ingest_admin_service_pb2_grpc.IngestAdminServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.boundary = Boundary(log, failures=database_refusal, describe=describe_failure, observe=_counted)

    async def GetIngestStatus(
        self, request: ingest_admin_service_pb2.GetIngestStatusRequest, context: Context
    ) -> ingest_admin_service_pb2.GetIngestStatusResponse:
        return await self.boundary.answer(context, "status", self.ingest.status)

    async def DeleteInstallationAsOperator(
        self, request: ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest, context: Context
    ) -> ingest_admin_service_pb2.DeleteInstallationAsOperatorResponse:
        return await self.boundary.answer(
            context, "operator deletion", lambda: self.ingest.delete_as_operator(request)
        )

    async def PurgeExpiredReports(
        self, request: ingest_admin_service_pb2.PurgeExpiredReportsRequest, context: Context
    ) -> ingest_admin_service_pb2.PurgeExpiredReportsResponse:
        return await self.boundary.answer(context, "retention", self.ingest.purge_expired)


# The reason a refusal is counted under (stats.ingest.refused), by its kind; a
# failure that is a bug counts as "internal_error".
REFUSAL_REASONS: tuple[tuple[type[Refusal], str], ...] = (
    (FieldError, "invalid"),
    (Unauthenticated, "unauthenticated"),
    (PermissionDenied, "deleted_installation"),  # the only one the ingest API answers
    (ResourceExhausted, "too_many_submissions"),
    (Unavailable, "database_unavailable"),
)


def _counted(outcome: Outcome) -> None:
    """Count a refused call by its reason; a call refused by the rate limit by its scope."""
    if isinstance(outcome.refusal, TooManyCalls):
        metrics.RATE_LIMITED.add(1, {"scope": outcome.refusal.scope})
    elif outcome.refusal is not None:
        reason = next((r for kind, r in REFUSAL_REASONS if isinstance(outcome.refusal, kind)), "other")
        metrics.REFUSED.add(1, {"reason": reason, "method": outcome.what})
    elif outcome.failed:
        metrics.REFUSED.add(1, {"reason": "internal_error", "method": outcome.what})


def _timed(outcome: Outcome) -> None:
    """Count it, and how long the answer took."""
    _counted(outcome)
    metrics.DURATION.record(outcome.seconds, {"method": outcome.what})


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


# Where this project's code lives, as frames name it: the folders of its packages
# (printernizer_stats/aggregation/..., printernizer_stats/store/..., printernizer_stats/common/...).
_OWN_PACKAGES = frozenset({"aggregation", "store", "common"})
