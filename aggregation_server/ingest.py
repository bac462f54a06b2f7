"""What the ingest API does, without gRPC: check a submission or a deletion
request and hand it to the store; and the operator's calls of the admin API.

Refusals (from here or from the store) are the errors in `refusals`; the
servicer maps them to status codes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from google.protobuf.message import DecodeError
from printernizer.stats.v1 import aggregated_stats_pb2, ingest_admin_service_pb2, ingest_service_pb2

from stats_common.identity import ID_BYTES, PUBLIC_KEY_BYTES, signature_is_valid
from stats_common.weeks import Week

from .refusals import InvalidRequest, Unauthenticated
from .storage import DeletionReceipt, IngestStore
from .validation import MAX_REPORT_BYTES, Violation, check_report, normalise_unknown_values

# Finished weeks one submission may carry (an agent that was offline for a year).
MAX_REPORTS_PER_SUBMISSION = 60
# A deletion request dated further ahead than this is refused.
CLOCK_SKEW = dt.timedelta(hours=1)


def retention_cutoff(now: dt.datetime, retention_days: int) -> Week:
    """The first week retention keeps: reports of earlier weeks are deleted."""
    return Week.containing(now - dt.timedelta(days=retention_days))


def _invalid(field: str, description: str) -> InvalidRequest:
    return InvalidRequest([Violation(field, description)])


class Ingest:
    def __init__(
        self, store: IngestStore, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    ) -> None:
        self.store = store
        self.clock = clock

    async def submit(
        self, request: ingest_service_pb2.SubmitReportsRequest
    ) -> ingest_service_pb2.SubmitReportsResponse:
        now = self.clock()
        if len(request.installation_id) != ID_BYTES:
            raise _invalid("installation_id", f"must be {ID_BYTES} bytes")
        if len(request.public_key) != PUBLIC_KEY_BYTES:
            raise _invalid("public_key", f"must be {PUBLIC_KEY_BYTES} bytes")
        if not 1 <= len(request.reports) <= MAX_REPORTS_PER_SUBMISSION:
            raise _invalid("reports", f"between 1 and {MAX_REPORTS_PER_SUBMISSION} reports per submission")
        reports = [self._open(i, signed, request, now) for i, signed in enumerate(request.reports)]
        weeks = [(r.period.year, r.period.week) for r in reports]
        if len(set(weeks)) != len(weeks):
            raise _invalid("reports", "the same week is submitted twice")
        unknown_values = sum(normalise_unknown_values(report) for report in reports)
        receipts = await self.store.store(
            request.installation_id, request.public_key, reports, now, unknown_values
        )
        response = ingest_service_pb2.SubmitReportsResponse()
        for receipt in receipts:
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
    ) -> aggregated_stats_pb2.AggregatedStats:
        """Size, signature, decoding and validation of one report, in that order:
        nothing is parsed before its size and signature are known to be good."""
        path = f"reports[{index}]"
        if len(signed.report) > MAX_REPORT_BYTES:
            raise _invalid(f"{path}.report", f"larger than {MAX_REPORT_BYTES} bytes")
        if not signature_is_valid(request.public_key, signed.signature, signed.report):
            raise Unauthenticated(f"{path}.signature does not verify with public_key")
        try:
            report = aggregated_stats_pb2.AggregatedStats.FromString(signed.report)
        except DecodeError:
            raise _invalid(f"{path}.report", "is not an AggregatedStats message") from None
        violations = check_report(report, request.installation_id, now)
        if violations:
            raise InvalidRequest([Violation(f"{path}.{v.field}", v.description) for v in violations])
        return report

    async def delete(
        self, request: ingest_service_pb2.DeleteInstallationRequest
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        now = self.clock()
        try:
            order = ingest_service_pb2.DeletionOrder.FromString(request.order)
        except DecodeError:
            raise _invalid("order", "is not a DeletionOrder message") from None
        if len(order.installation_id) != ID_BYTES:
            raise _invalid("order.installation_id", f"must be {ID_BYTES} bytes")
        if order.requested_at.ToDatetime(tzinfo=dt.UTC) > now + CLOCK_SKEW:
            raise _invalid("order.requested_at", "is in the future")
        if not signature_is_valid(request.public_key, request.signature, request.order):
            raise Unauthenticated("signature does not verify with public_key")
        registered = await self.store.registered_key(order.installation_id)
        if registered is not None and registered != request.public_key:
            # Knowing an installation's ID does not allow deleting it.
            raise Unauthenticated("not signed with the key this installation registered")
        return _deletion_response(await self.store.delete_installation(order.installation_id, now))

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
        if len(request.installation_id) != ID_BYTES:
            raise _invalid("installation_id", f"must be {ID_BYTES} bytes")
        receipt = await self.store.delete_installation(
            request.installation_id, self.clock(), by_operator=True
        )
        return ingest_admin_service_pb2.DeleteInstallationAsOperatorResponse(
            receipt=_deletion_response(receipt)
        )

    async def purge_expired(
        self, retention_days: int
    ) -> ingest_admin_service_pb2.PurgeExpiredReportsResponse:
        now = self.clock()
        cutoff = retention_cutoff(now, retention_days)
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
