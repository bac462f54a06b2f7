"""Sending the outbox and deletion requests to the aggregation server.

One delivery sends every pending deletion request, then every queued report
in one submission. Each outcome follows a fixed table of gRPC codes: a
retryable failure leaves everything queued for a later attempt (after the
server's RetryInfo delay when it gives one); a refusal drops the reports, the
reason kept in the status. Accepted reports move to the ledger with the
server's receipt in the same transaction that removes them from the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from printernizer.stats.v1 import agent_service_pb2, ingest_service_pb2, ingest_service_pb2_grpc

from stats_common.errors import retry_delay
from stats_common.telemetry import grpc_client_interceptors
from stats_common.weeks import Week

from .agent import NotSharing, StatsAgent
from .events import to_millis
from .storage import SentReportRow

log = logging.getLogger(__name__)

# Worth trying again later: the server or the network may recover.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
# Every other code is a refusal that the same request would meet again
# (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION...).

CALL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Delivery:
    outcome: int  # agent_service_pb2.DeliveryOutcome
    receipts: list[ingest_service_pb2.ReportReceipt]
    failure_code: str = ""
    retry_after: dt.timedelta | None = None


class Uplink:
    """The TLS channel to the aggregation server; verifies the server against
    `ca_file` (the system's CAs when None). `options` are gRPC channel options."""

    def __init__(
        self, target: str, ca_file: str | None = None, options: Sequence[tuple[str, int]] = ()
    ) -> None:
        roots = open(ca_file, "rb").read() if ca_file else None  # noqa: SIM115 - read once, at start
        self._channel = grpc.aio.secure_channel(
            target,
            grpc.ssl_channel_credentials(root_certificates=roots),
            options=list(options),
            interceptors=grpc_client_interceptors(),
        )
        self._stub = ingest_service_pb2_grpc.IngestServiceStub(self._channel)

    async def submit(
        self, request: ingest_service_pb2.SubmitReportsRequest
    ) -> ingest_service_pb2.SubmitReportsResponse:
        return await self._stub.SubmitReports(request, timeout=CALL_TIMEOUT_SECONDS)

    async def delete(
        self, request: ingest_service_pb2.DeleteInstallationRequest
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        return await self._stub.DeleteInstallation(request, timeout=CALL_TIMEOUT_SECONDS)

    async def close(self) -> None:
        await self._channel.close()


async def deliver(agent: StatsAgent, uplink: Uplink) -> Delivery:
    """Send pending deletion requests and the outbox once; record the outcome."""
    now = agent.clock()
    await _send_deletions(agent, uplink, now)
    consent = await agent.consent()
    identity = await agent.identity()
    queued = await agent.store.outbox()
    if not consent.sharing or identity is None or not queued:
        return Delivery(agent_service_pb2.DELIVERY_OUTCOME_NONE, [])
    request = ingest_service_pb2.SubmitReportsRequest(
        installation_id=identity.installation_id, public_key=identity.public_key
    )
    for row in queued:
        request.reports.add(report=row.report, signature=row.signature)
    try:
        response = await uplink.submit(request)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code in RETRYABLE:
            delivery = Delivery(
                agent_service_pb2.DELIVERY_OUTCOME_RETRYING, [], code.name, retry_after=retry_delay(exc)
            )
        else:
            # The same reports would be refused again: drop them, keep why.
            await agent.store.drop_outbox([row.week for row in queued])
            log.warning("the server refused %d report(s): %s", len(queued), code.name)
            delivery = Delivery(agent_service_pb2.DELIVERY_OUTCOME_DROPPED, [], code.name)
        await agent.store.record_delivery(to_millis(now), delivery.outcome, delivery.failure_code)
        return delivery
    sent_at = to_millis(agent.clock())
    ledger = [
        SentReportRow(row.report_id, row.week, row.report, receipt.SerializeToString(), sent_at)
        for row, receipt in zip(queued, response.receipts, strict=True)
    ]
    await agent.store.mark_sent(ledger)
    await agent.store.record_delivery(to_millis(now), agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED, "")
    return Delivery(agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED, list(response.receipts))


async def _send_deletions(agent: StatsAgent, uplink: Uplink, now: dt.datetime) -> None:
    """Deletion requests are retried until the server confirms them."""
    for pending in await agent.store.deletion_requests():
        if pending.confirmed_at is not None:
            continue
        request = ingest_service_pb2.DeleteInstallationRequest.FromString(pending.request)
        try:
            receipt = await uplink.delete(request)
        except grpc.aio.AioRpcError as exc:
            log.info("deletion request not confirmed yet (%s); will try again", exc.code().name)
            continue
        await agent.store.confirm_deletion(pending.id, receipt.SerializeToString(), to_millis(now))


def due_at(installation_id: bytes, week: Week) -> dt.datetime:
    """When a finished week's report is sent: at an offset inside the day after
    the week ends, fixed per installation and week, so a fleet does not arrive
    in one burst."""
    digest = hashlib.sha256(installation_id + week.key.to_bytes(4, "big")).digest()
    return week.end + dt.timedelta(seconds=int.from_bytes(digest[:4], "big") % 86_400)


# After the backoff gives up, the next try waits for the hourly schedule.
RETRY_INTERVAL = dt.timedelta(hours=1)
MAINTENANCE_INTERVAL_SECONDS = 3600.0


@dataclass
class Backoff:
    """Exponential backoff with jitter and a cap (5 s -> 30 s, x1.5, +/-20 %),
    giving up after `give_up_after` tries in a row (then the hourly schedule
    takes over until a delivery gets an answer)."""

    initial: float = 5.0
    maximum: float = 30.0
    multiplier: float = 1.5
    jitter: float = 0.2
    give_up_after: int = 8
    attempts: int = 0

    def next_delay(self, rng: random.Random) -> dt.timedelta | None:
        if self.attempts >= self.give_up_after:
            return None
        base = min(self.maximum, self.initial * self.multiplier**self.attempts)
        self.attempts += 1
        return dt.timedelta(seconds=base * rng.uniform(1 - self.jitter, 1 + self.jitter))

    def reset(self) -> None:
        self.attempts = 0


class Courier:
    """The agent's background work: every hour (and when woken), queue finished
    weeks, prune old events, and deliver what is due. Opting out cancels a
    submission in flight and wakes it to send the deletion request."""

    def __init__(self, agent: StatsAgent, uplink: Uplink | None) -> None:
        self.agent = agent
        self.uplink = uplink
        self._wake = asyncio.Event()
        self._submission: asyncio.Task[Delivery] | None = None
        self._not_before: dt.datetime | None = None
        self._backoff = Backoff()
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets

    def wake(self) -> None:
        self._wake.set()

    def stop_sending(self) -> None:
        """Called at opt-out: nothing more is sent, not even what is in flight."""
        if self._submission is not None:
            self._submission.cancel()
        self._not_before = None
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._seconds_until_next_tick())
            self._wake.clear()

    def _seconds_until_next_tick(self) -> float:
        """The hour, or sooner when a retry is due."""
        if self._not_before is None:
            return MAINTENANCE_INTERVAL_SECONDS
        waiting = (self._not_before - self.agent.clock()).total_seconds()
        return max(0.0, min(MAINTENANCE_INTERVAL_SECONDS, waiting))

    async def tick(self) -> None:
        for task, what in (
            (self.agent.queue_finished_weeks, "queueing reports"),
            (self.agent.prune, "pruning old events"),
            (self._deliver_if_due, "delivering reports"),
        ):
            try:
                await task()
            except Exception:
                log.exception("%s failed; will try again later", what)

    async def _deliver_if_due(self) -> None:
        if self.uplink is None:
            return
        now = self.agent.clock()
        queued = await self.agent.store.outbox()
        identity = await self.agent.identity()
        due = (
            bool(queued)
            and identity is not None
            and now >= due_at(identity.installation_id, Week.from_key(queued[0].week))
        )
        pending_deletions = any(r.confirmed_at is None for r in await self.agent.store.deletion_requests())
        if not due and not pending_deletions:
            return
        if self._not_before is not None and now < self._not_before:
            return
        await self.submit_now()

    async def submit_now(self) -> Delivery:
        """Deliver at once (SubmitNow); a cancelled attempt counts as retrying."""
        if self.uplink is None:
            raise NotSharing("no aggregation server is configured for this agent")
        self._submission = asyncio.create_task(deliver(self.agent, self.uplink))
        try:
            delivery = await self._submission
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return Delivery(agent_service_pb2.DELIVERY_OUTCOME_NONE, [], "CANCELLED")
        finally:
            self._submission = None
        if delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING:
            # The server's RetryInfo wins; else back off, and after a bound wait for the hour.
            # A server that stays down is then tried once an hour, not in bursts.
            delay = delivery.retry_after or self._backoff.next_delay(self._rng) or RETRY_INTERVAL
            self._not_before = self.agent.clock() + delay
        else:
            self._backoff.reset()
            self._not_before = None
        return delivery

    @property
    def next_attempt(self) -> dt.datetime | None:
        """When a failed delivery is tried again (None: no retry pending)."""
        return self._not_before
