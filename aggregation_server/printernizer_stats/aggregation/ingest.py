"""What the ingest API does, without gRPC: check a submission or a deletion
request and hand it to the store; and the operator's calls of the admin API.

Every check that does not need the database comes first, in the same order
for every request: the envelope, sizes, the signature, then the content. None
of them looks anything up, so their answers cannot depend on an
installation's state; the store then refuses any key but the installation's
before it answers anything else.

Refusals (from here or from the store) are those of
printernizer_stats.common.refusals, answered with their status codes by the
shared boundary. The domain also counts what it answered (`metrics`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from google.protobuf.message import DecodeError
from printernizer.stats.v1 import aggregated_stats_pb2, ingest_admin_service_pb2, ingest_service_pb2
from printernizer_stats.common.identity import PUBLIC_KEY_BYTES, installation_id_problem, signature_is_valid
from printernizer_stats.common.known_fields import discard_unknown_fields
from printernizer_stats.common.limits import AGENT_CLOCK_SKEW
from printernizer_stats.common.refusals import FieldError, FieldViolation, Unauthenticated
from printernizer_stats.common.weeks import MIN_YEAR, Week
from printernizer_stats.store.ingest_store import CheckedReport, DeletionReceipt, IngestStore

from . import metrics
from .validation import MAX_REPORT_BYTES, check_report, normalise_unknown_values

# Finished weeks one submission may carry (an agent that was offline for a year).
MAX_REPORTS_PER_SUBMISSION = 60
# A serialized DeletionOrder is about 40 bytes; anything much larger is not one.
MAX_ORDER_BYTES = 1024
DEFAULT_RETENTION_DAYS = 730
# The first week a Week can be: retention never reaches before it.
_FIRST_WEEK = Week(MIN_YEAR, 1)


def retention_cutoff(now: dt.datetime, retention_days: int) -> Week:
    """The first week retention keeps: reports of earlier weeks are deleted."""
    if retention_days >= (now - _FIRST_WEEK.start).days:
        return _FIRST_WEEK
    return Week.containing(now - dt.timedelta(days=retention_days))


def _check_installation_id(field: str, installation_id: bytes) -> None:
    problem = installation_id_problem(installation_id)
    if problem is not None:
        raise FieldError(field, problem)


class Ingest:
    def __init__(
        self,
        store: IngestStore,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention_days = retention_days

    async def submit(
        self, request: ingest_service_pb2.SubmitReportsRequest
    ) -> ingest_service_pb2.SubmitReportsResponse:
        now = self.clock()
        _check_installation_id("installation_id", request.installation_id)
        if len(request.public_key) != PUBLIC_KEY_BYTES:
            raise FieldError("public_key", f"must be {PUBLIC_KEY_BYTES} bytes")
        if not 1 <= len(request.reports) <= MAX_REPORTS_PER_SUBMISSION:
            raise FieldError("reports", f"between 1 and {MAX_REPORTS_PER_SUBMISSION} reports per submission")
        first_kept = retention_cutoff(now, self.retention_days)
        reports = [
            self._open(i, signed, request, now, first_kept) for i, signed in enumerate(request.reports)
        ]
        weeks = [(r.report.period.year, r.report.period.week) for r in reports]
        if len(set(weeks)) != len(weeks):
            raise FieldError("reports", "the same week is submitted twice")
        receipts = await self.store.store(request.installation_id, request.public_key, reports, now)
        response = ingest_service_pb2.SubmitReportsResponse()
        response.server_time.FromDatetime(now)
        for receipt in receipts:
            metrics.REPORTS.add(1, {"outcome": "duplicate" if receipt.duplicate else "accepted"})
            item = response.receipts.add(
                report_id=receipt.report_id,
                status=ingest_service_pb2.RECEIPT_STATUS_DUPLICATE
                if receipt.duplicate
                else ingest_service_pb2.RECEIPT_STATUS_ACCEPTED,
                receipt_id=receipt.receipt_id,
            )
            item.stored_at.FromDatetime(receipt.stored_at)
        return response

    def _open(
        self,
        index: int,
        signed: ingest_service_pb2.SignedReport,
        request: ingest_service_pb2.SubmitReportsRequest,
        now: dt.datetime,
        first_kept: Week,
    ) -> CheckedReport:
        """Size, signature, decoding, unknown fields, validation and unknown
        enum values of one report, in that order: nothing is parsed before its
        size and signature are known to be good, and nothing this server does
        not know is checked or kept."""
        path = f"reports[{index}].report"
        if len(signed.report) > MAX_REPORT_BYTES:
            raise FieldError(path, f"larger than {MAX_REPORT_BYTES} bytes")
        if not signature_is_valid(request.public_key, signed.signature, signed.report):
            raise Unauthenticated(f"reports[{index}].signature does not verify with public_key")
        try:
            report = aggregated_stats_pb2.AggregatedStats.FromString(signed.report)
        except DecodeError:
            raise FieldError(path, "is not an AggregatedStats message") from None
        unknown_fields = discard_unknown_fields(report)
        violations = check_report(report, request.installation_id, now, first_kept)
        if violations:
            # The server's time goes with them: an agent whose clock is ahead
            # (PERIOD_NOT_ENDED) keeps the report, and learns the time.
            raise FieldError.of(
                [FieldViolation(f"{path}.{v.field}", v.description, v.reason) for v in violations],
                {"server_time": now.isoformat()},
            )
        return CheckedReport(report, normalise_unknown_values(report), unknown_fields)

    async def delete(
        self, request: ingest_service_pb2.DeleteInstallationRequest
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        """The checks of a submission, in the same order, for a deletion order."""
        now = self.clock()
        if len(request.public_key) != PUBLIC_KEY_BYTES:
            raise FieldError("public_key", f"must be {PUBLIC_KEY_BYTES} bytes")
        if len(request.order) > MAX_ORDER_BYTES:
            raise FieldError("order", f"larger than {MAX_ORDER_BYTES} bytes")
        if not signature_is_valid(request.public_key, request.signature, request.order):
            raise Unauthenticated("signature does not verify with public_key")
        try:
            order = ingest_service_pb2.DeletionOrder.FromString(request.order)
        except DecodeError:
            raise FieldError("order", "is not a DeletionOrder message") from None
        discard_unknown_fields(order)
        _check_installation_id("order.installation_id", order.installation_id)
        try:
            requested_at = order.requested_at.ToDatetime(tzinfo=dt.UTC)
        except (ValueError, OverflowError):  # seconds beyond years 1-9999, or nanos beyond a second
            raise FieldError("order.requested_at", "is not a valid timestamp") from None
        if requested_at > now + AGENT_CLOCK_SKEW:
            raise FieldError("order.requested_at", "is in the future")
        receipt = await self.store.delete_installation(
            order.installation_id, now, signed_by=request.public_key
        )
        metrics.DELETIONS.add(1)
        return _deletion_response(receipt)

    # --- the operator's calls (the servicer checks the admin credential) -----------

    async def status(self) -> ingest_admin_service_pb2.GetIngestStatusResponse:
        status = await self.store.status()
        response = ingest_admin_service_pb2.GetIngestStatusResponse(
            installations=status.installations, reports=status.reports, tombstones=status.tombstones
        )
        if status.oldest_week is not None and status.newest_week is not None:
            response.oldest_week.CopyFrom(status.oldest_week.to_proto())
            response.newest_week.CopyFrom(status.newest_week.to_proto())
        for counter, value in status.counters.items():
            response.counters.add(
                counter=ingest_admin_service_pb2.IngestCounter.Value(f"INGEST_COUNTER_{counter.value}"),
                value=value,
            )
        return response

    async def delete_as_operator(
        self, request: ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest
    ) -> ingest_admin_service_pb2.DeleteInstallationAsOperatorResponse:
        _check_installation_id("installation_id", request.installation_id)
        receipt = await self.store.delete_installation(request.installation_id, self.clock(), signed_by=None)
        return ingest_admin_service_pb2.DeleteInstallationAsOperatorResponse(
            receipt=_deletion_response(receipt)
        )

    async def purge_expired(self) -> ingest_admin_service_pb2.PurgeExpiredReportsResponse:
        now = self.clock()
        cutoff = retention_cutoff(now, self.retention_days)
        deleted = await self.store.purge_weeks_before(cutoff)
        response = ingest_admin_service_pb2.PurgeExpiredReportsResponse(
            cutoff=cutoff.to_proto(), reports_deleted=deleted
        )
        response.purged_at.FromDatetime(now)
        return response


def _deletion_response(receipt: DeletionReceipt) -> ingest_service_pb2.DeleteInstallationResponse:
    response = ingest_service_pb2.DeleteInstallationResponse(
        installation_id=receipt.installation_id,
        reports_deleted=receipt.reports_deleted,
        receipt_id=receipt.receipt_id,
    )
    response.deleted_at.FromDatetime(receipt.deleted_at)
    return response
