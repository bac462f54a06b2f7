"""The IngestService over gRPC: protobuf in, Ingest calls, status codes out.

The peer's address is used here, in memory only, to limit how fast one peer
can call; it is never stored and never logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc
from printernizer.stats.v1 import ingest_service_pb2, ingest_service_pb2_grpc

from stats_common import errors
from stats_common.errors import Context

from .ingest import Ingest
from .refusals import Forbidden, InvalidRequest, Refused, TooManySubmissions, Unauthenticated

log = logging.getLogger(__name__)

Response = TypeVar("Response")


class PeerLimiter:
    """At most `rate` calls per second per peer address (a token bucket),
    remembering at most `capacity` peers: the oldest are forgotten first, so
    the state cannot grow without bound. Addresses live in memory only."""

    def __init__(self, rate: float = 5.0, burst: float = 20.0, capacity: int = 100_000) -> None:
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_needed(self, peer: str, now: float | None = None) -> float:
        """0 if the call may go ahead (and is counted), else seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[peer] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[peer] = (tokens, now)
            wait = (1 - tokens) / self.rate
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return wait


def peer_address(context: Context) -> str:
    """The caller's address without its port ("ipv4:1.2.3.4:5678" -> "1.2.3.4")."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, ingest: Ingest, limiter: PeerLimiter) -> None:
        self.ingest = ingest
        self.limiter = limiter

    async def _limit(self, context: Context) -> None:
        wait = self.limiter.wait_needed(peer_address(context))
        if wait > 0:
            await errors.resource_exhausted(
                context, "too many calls from this peer", dt.timedelta(seconds=wait)
            )

    async def _answer(self, context: Context, call: Callable[[], Awaitable[Response]], what: str) -> Response:
        """Run a call after the peer limit; map refusals and failures to statuses."""
        await self._limit(context)
        try:
            return await call()
        except Refused as exc:
            await _refuse(context, exc)
        except Exception:
            log.exception("%s failed", what)
            await errors.internal(context)

    async def SubmitReports(
        self, request: ingest_service_pb2.SubmitReportsRequest, context: Context
    ) -> ingest_service_pb2.SubmitReportsResponse:
        return await self._answer(context, lambda: self.ingest.submit(request), "submission")

    async def DeleteInstallation(
        self, request: ingest_service_pb2.DeleteInstallationRequest, context: Context
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        return await self._answer(context, lambda: self.ingest.delete(request), "deletion")


async def _refuse(context: Context, exc: Refused) -> NoReturn:
    if isinstance(exc, InvalidRequest):
        await errors.invalid_argument(context, [(v.field, v.description) for v in exc.violations])
    if isinstance(exc, TooManySubmissions):
        await errors.resource_exhausted(context, str(exc), exc.retry_after)
    if isinstance(exc, Unauthenticated):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if isinstance(exc, Forbidden):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    await errors.internal(context)
