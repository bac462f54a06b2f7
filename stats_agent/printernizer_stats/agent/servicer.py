"""The AgentService over gRPC: protobuf in, StatsAgent calls, status codes out."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.common import errors
from printernizer_stats.common.errors import Context
from printernizer_stats.common.events import InvalidEvent

from .agent import NotSharing, RequestError, StatsAgent, report_json
from .consent import SHARING, ConsentError
from .delivery import Courier
from .storage import StorageError, disk_full

log = logging.getLogger(__name__)

Response = TypeVar("Response")

# When the disk is full, a retry soon is pointless.
_DISK_FULL_RETRY = dt.timedelta(minutes=5)


async def _map_error(context: Context, exc: Exception) -> None:
    """Translate a domain error into its status (aborts the call)."""
    if isinstance(exc, InvalidEvent | ConsentError | RequestError):
        await errors.invalid_argument(context, [(exc.field, exc.description)])
    if isinstance(exc, NotSharing):
        await errors.failed_precondition(context, str(exc))
    if disk_full(exc):
        await errors.resource_exhausted(context, "the agent's disk is full", _DISK_FULL_RETRY)
    if isinstance(exc, StorageError | sqlite3.Error | OSError):
        log.warning("storage failure: %s", exc)
        await errors.unavailable(context, "the agent's storage is unavailable")
    log.exception("unexpected error in the agent API")
    await errors.internal(context)


def _unary(
    method: Callable[[AgentServicer, Any, Context], Awaitable[Response]],
) -> Callable[[AgentServicer, Any, Context], Awaitable[Response]]:
    @functools.wraps(method)
    async def wrapper(self: AgentServicer, request: Any, context: Context) -> Response:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _map_error(context, exc)
            raise AssertionError("unreachable") from exc  # pragma: no cover

    return wrapper


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: StatsAgent, courier: Courier) -> None:
        self.agent = agent
        self.courier = courier

    @_unary
    async def RecordEvents(
        self, request: agent_service_pb2.RecordEventsRequest, context: Context
    ) -> agent_service_pb2.RecordEventsResponse:
        result = await self.agent.record(
            request.events, request.dropped_by_client, request.client_id, request.batch_sequence
        )
        if result.refused and not result.stored:
            # Nothing of the batch could be stored: a refusal, naming every event's field.
            await errors.invalid_argument(
                context, [(f"events[{r.index}].{r.field}", r.reason) for r in result.refused]
            )
        return agent_service_pb2.RecordEventsResponse(
            stored_count=result.stored,
            recording_disabled=result.recording_disabled,
            refused=result.refused,
            duplicate=result.duplicate,
        )

    @_unary
    async def GetConsent(
        self, request: agent_service_pb2.GetConsentRequest, context: Context
    ) -> agent_service_pb2.GetConsentResponse:
        return agent_service_pb2.GetConsentResponse(consent=(await self.agent.consent()).to_proto())

    @_unary
    async def SetConsent(
        self, request: agent_service_pb2.SetConsentRequest, context: Context
    ) -> agent_service_pb2.SetConsentResponse:
        was_sharing = (await self.agent.consent()).chosen == SHARING
        consent = await self.agent.set_consent(request.state, request.schema_version)
        if was_sharing and consent.chosen != SHARING:
            self.courier.stop_sending()  # and send the deletion request now
        return agent_service_pb2.SetConsentResponse(consent=consent.to_proto())

    @_unary
    async def GetLocalStats(
        self, request: agent_service_pb2.GetLocalStatsRequest, context: Context
    ) -> agent_service_pb2.GetLocalStatsResponse:
        return await self.agent.local_stats(request.weeks)

    @_unary
    async def PreviewReport(
        self, request: agent_service_pb2.PreviewReportRequest, context: Context
    ) -> agent_service_pb2.PreviewReportResponse:
        week = None
        if request.HasField("week"):
            week = self.agent.requested_week(request.week.year, request.week.week)
        chosen, report = await self.agent.preview(week)
        return agent_service_pb2.PreviewReportResponse(
            week=chosen.to_proto(), report=report, report_json=report_json(report)
        )

    async def ExportData(
        self, request: agent_service_pb2.ExportDataRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.ExportDataResponse]:
        try:
            async for page in self.agent.export(request.page_size):
                yield page
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _map_error(context, exc)

    @_unary
    async def DeleteAllData(
        self, request: agent_service_pb2.DeleteAllDataRequest, context: Context
    ) -> agent_service_pb2.DeleteAllDataResponse:
        was_sharing = (await self.agent.consent()).chosen == SHARING
        events, reports = await self.agent.delete_all()
        if was_sharing:
            self.courier.stop_sending()
        return agent_service_pb2.DeleteAllDataResponse(events_deleted=events, reports_deleted=reports)

    @_unary
    async def GetStatus(
        self, request: agent_service_pb2.GetStatusRequest, context: Context
    ) -> agent_service_pb2.GetStatusResponse:
        return await self.agent.status()

    @_unary
    async def SubmitNow(
        self, request: agent_service_pb2.SubmitNowRequest, context: Context
    ) -> agent_service_pb2.SubmitNowResponse:
        delivery = await self.courier.submit_now()
        if delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_RETRYING:
            await errors.unavailable(
                context,
                f"the aggregation server did not take the reports ({delivery.failure_code}); "
                "they stay queued",
            )
        if delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_DROPPED:
            await errors.failed_precondition(
                context,
                f"the aggregation server refused the reports ({delivery.failure_code}); they were dropped",
            )
        return agent_service_pb2.SubmitNowResponse(receipts=delivery.receipts)

    @_unary
    async def ListSentReports(
        self, request: agent_service_pb2.ListSentReportsRequest, context: Context
    ) -> agent_service_pb2.ListSentReportsResponse:
        return agent_service_pb2.ListSentReportsResponse(
            reports=await self.agent.ledger(request.limit),
            deletion_receipts=await self.agent.deletion_receipts(),
        )
