"""Sending the outbox and deletion requests to the aggregation server.

One delivery sends every pending deletion request, then the queued reports
in one submission (one report per submission while one keeps meeting server
errors). Each outcome follows a fixed table of gRPC codes:

- transient failures (the network, the server's capacity) leave everything
  queued for a later attempt (after the server's RetryInfo delay when it gives
  one); the outbox's caps bound how much waits;
- a server error (INTERNAL, UNKNOWN) may be a bug that one report triggers
  every time, so each report counts the server errors it met. After repeated
  ones, reports go one per submission, so such a report holds back no other,
  and it is dropped once its count and age reach a bound;
- any other code is a refusal the same request would meet again: a report
  refused on its own is dropped, the reason kept in the status; a refused
  submission of several is split, so one bad report does not cost the others.

Accepted reports move to the ledger with the server's receipt in the same
transaction that removes them from the outbox.
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
from printernizer_stats.common.errors import PERIOD_NOT_ENDED, error_reason, retry_delay
from printernizer_stats.common.events import to_millis
from printernizer_stats.common.known_fields import discard_unknown_fields
from printernizer_stats.common.refusals import FailedPrecondition, Unavailable
from printernizer_stats.common.telemetry import grpc_client_interceptors
from printernizer_stats.common.weeks import Week

from .agent import NotSharing, StatsAgent
from .consent import Identity
from .storage import OutboxRow, SentReportRow

log = logging.getLogger(__name__)

# Worth trying again later, without holding it against the reports: the server
# or the network may recover.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
# The server failed: it may recover, or a report may trigger the failure every
# time. Tried again, up to a bound per report.
SERVER_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
# Every code after which the agent tries again.
RETRYABLE = TRANSIENT | SERVER_ERRORS
# Every other code is a refusal that the same request would meet again
# (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION...).

# Once a queued report has met this many server errors, reports are sent one
# per submission: a report the server cannot take then holds back no other.
ONE_AT_A_TIME_AFTER = 2
# A report is dropped once it has met this many server errors, the first at
# least this long before. A week gives the server's maintainers a release
# cycle to fix what fails (until then the report costs one call an hour), and
# the count keeps an agent that was off meanwhile from giving up on its first
# try back.
DROP_AFTER_SERVER_ERRORS = 10
DROP_AFTER_FAILING_FOR = dt.timedelta(days=7)

CALL_TIMEOUT_SECONDS = 30.0

# Which outcome the status shows when one delivery has several: the worst.
_SEVERITY: dict[int, int] = {
    agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED: 0,
    agent_service_pb2.DELIVERY_OUTCOME_RETRYING: 1,
    agent_service_pb2.DELIVERY_OUTCOME_DROPPED: 2,
}


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
    now = agent.now()
    await _send_deletions(agent, uplink, now)
    consent = await agent.consent()
    identity = await agent.identity()
    queued = await agent.queued_reports()  # narrowed to the level chosen now
    if not consent.sharing or identity is None or not queued:
        return Delivery(agent_service_pb2.DELIVERY_OUTCOME_NONE, [])
    one_at_a_time = any(row.server_errors >= ONE_AT_A_TIME_AFTER for row in queued)
    submissions = [[row] for row in queued] if one_at_a_time else [queued]
    receipts: list[ingest_service_pb2.ReportReceipt] = []
    worst = Delivery(agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED, [])
    while submissions:
        reports = submissions.pop(0)
        try:
            response = await uplink.submit(_submission(identity, reports))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if not_over := _period_not_ended(exc):
                # The agent's clock is ahead: the server says which time it is,
                # and the reports wait until their weeks are over (not given up).
                agent.time.learn(not_over)
                if len(reports) > 1:
                    submissions += [[row] for row in reports]  # which of them?
                    continue
                await agent.store.unqueue([row.week for row in reports])
                log.warning("the server says a week is not over yet: this machine's clock is ahead")
                worst = _worse(worst, Delivery(agent_service_pb2.DELIVERY_OUTCOME_RETRYING, [], code.name))
                continue
            if code in TRANSIENT:
                # Nothing more gets through now: the rest waits too.
                retrying = Delivery(
                    agent_service_pb2.DELIVERY_OUTCOME_RETRYING, [], code.name, retry_delay(exc)
                )
                worst = _worse(worst, retrying)
                break
            if code not in SERVER_ERRORS and len(reports) > 1:
                submissions += [[row] for row in reports]  # which of them is refused?
                continue
            worst = _worse(worst, await _failed(agent, reports, code, now))
            continue
        if response.HasField("server_time"):
            agent.time.learn(response.server_time.ToDatetime(dt.UTC))
        if [r.report_id for r in response.receipts] != [row.report_id for row in reports]:
            # Not the receipts of what was sent: nothing can be moved to the
            # ledger. Counted as a server error (the reports stay queued, and a
            # retry gets the original receipts of anything that was stored).
            log.warning("the server's answer does not hold a receipt for each report sent")
            worst = _worse(worst, await _failed(agent, reports, grpc.StatusCode.UNKNOWN, now))
            continue
        receipts += await _accepted(agent, reports, response)
    await agent.store.record_delivery(to_millis(now), worst.outcome, worst.failure_code)
    return Delivery(worst.outcome, receipts, worst.failure_code, worst.retry_after)


def _period_not_ended(error: grpc.aio.AioRpcError) -> dt.datetime | None:
    """The server's time, when it refused a report because its week is not over."""
    reason = error_reason(error)
    if reason is None or reason[0] != PERIOD_NOT_ENDED:
        return None
    try:
        told = dt.datetime.fromisoformat(reason[1].get("server_time", ""))
    except ValueError:
        return None
    return told if told.tzinfo is not None else None


def _submission(identity: Identity, reports: Sequence[OutboxRow]) -> ingest_service_pb2.SubmitReportsRequest:
    request = ingest_service_pb2.SubmitReportsRequest(
        installation_id=identity.installation_id, public_key=identity.public_key
    )
    for row in reports:
        request.reports.add(report=row.report, signature=row.signature)
    return request


async def _accepted(
    agent: StatsAgent, reports: Sequence[OutboxRow], response: ingest_service_pb2.SubmitReportsResponse
) -> list[ingest_service_pb2.ReportReceipt]:
    """Move accepted reports to the ledger with their receipts, which keep
    only the fields this agent knows."""
    sent_at = to_millis(agent.now())
    receipts = list(response.receipts)
    for receipt in receipts:
        discard_unknown_fields(receipt)
    await agent.store.mark_sent(
        [
            SentReportRow(row.report_id, row.week, row.report, receipt.SerializeToString(), sent_at)
            for row, receipt in zip(reports, receipts, strict=True)
        ]
    )
    return receipts


async def _failed(
    agent: StatsAgent, reports: Sequence[OutboxRow], code: grpc.StatusCode, now: dt.datetime
) -> Delivery:
    """A refusal drops the reports; a server error counts against each of them,
    and drops those that reached the bound."""
    if code in SERVER_ERRORS:
        counted = await agent.store.count_server_error([row.week for row in reports], to_millis(now))
        cutoff = to_millis(now - DROP_AFTER_FAILING_FOR)
        doomed = [
            row.week
            for row in counted
            if row.server_errors >= DROP_AFTER_SERVER_ERRORS
            and row.first_server_error_at is not None
            and row.first_server_error_at <= cutoff
        ]
        if not doomed:
            return Delivery(agent_service_pb2.DELIVERY_OUTCOME_RETRYING, [], code.name)
    else:
        doomed = [row.week for row in reports]
    await agent.store.drop_outbox(doomed, code.name, to_millis(now))
    log.warning("dropped %d report(s) the server would not take: %s", len(doomed), code.name)
    return Delivery(agent_service_pb2.DELIVERY_OUTCOME_DROPPED, [], code.name)


def _worse(first: Delivery, second: Delivery) -> Delivery:
    """The outcome the status shows for a delivery: the worst of its parts."""
    return second if _SEVERITY[second.outcome] > _SEVERITY[first.outcome] else first


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
        discard_unknown_fields(receipt)  # the ledger keeps only the fields this agent knows
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
    submission in flight and wakes it to send the deletion request (the
    agent tells it: StatsAgent.when_sharing_stops)."""

    def __init__(self, agent: StatsAgent, uplink: Uplink | None, longest_wait: float | None = None) -> None:
        self.agent = agent
        self.uplink = uplink
        # How long the loop sleeps at most between two looks at the time.
        self.longest_wait = longest_wait or MAINTENANCE_INTERVAL_SECONDS
        self._wake = asyncio.Event()
        self._submission: asyncio.Task[Delivery] | None = None
        self._not_before: dt.datetime | None = None
        self._backoff = Backoff()
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        agent.when_sharing_stops(self.stop_sending)

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
        """The hour (or the longest wait), or sooner when a retry is due."""
        if self._not_before is None:
            return self.longest_wait
        waiting = (self._not_before - self.agent.now()).total_seconds()
        return max(0.0, min(self.longest_wait, waiting))

    async def tick(self) -> None:
        for task, what in (
            (self.agent.queue_finished_weeks, "queueing reports"),
            (self.agent.prune, "pruning old events"),
            (self.agent.forget_old_batches, "forgetting old batch identities"),
            (self.agent.remember_time, "keeping the time"),
            (self._deliver_if_due, "delivering reports"),
        ):
            try:
                await task()
            except Exception:
                log.exception("%s failed; will try again later", what)

    async def _deliver_if_due(self) -> None:
        if self.uplink is None:
            return
        now = self.agent.now()
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
        await self._deliver(self.uplink)

    async def submit_now(self) -> list[ingest_service_pb2.ReportReceipt]:
        """SubmitNow: queue the finished weeks and deliver them at once; the
        receipts of what the server took. Checked first, so a call that is
        refused changes nothing; a delivery the server did not take (all of
        it) is refused too, saying whether the reports wait or were dropped."""
        if not (await self.agent.consent()).sharing:
            raise NotSharing("statistics are only sent after opting in to sharing")
        if self.uplink is None:
            raise NotSharing("no aggregation server is configured for this agent")
        await self.agent.queue_finished_weeks()
        delivery = await self._deliver(self.uplink)
        if delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING:
            raise Unavailable(
                f"the aggregation server did not take the reports ({delivery.failure_code}); they stay queued"
            )
        if delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_DROPPED:
            raise FailedPrecondition(
                f"the aggregation server refused the reports ({delivery.failure_code}); they were dropped"
            )
        return delivery.receipts

    async def _deliver(self, uplink: Uplink) -> Delivery:
        """Deliver once, and schedule the next try after a retryable failure."""
        self._submission = asyncio.create_task(deliver(self.agent, uplink))
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
            self._not_before = self.agent.now() + delay
        else:
            self._backoff.reset()
            self._not_before = None
        return delivery

    @property
    def next_attempt(self) -> dt.datetime | None:
        """When a failed delivery is tried again (None: no retry pending)."""
        return self._not_before
