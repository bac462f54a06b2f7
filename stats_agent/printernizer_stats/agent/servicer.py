"""The AgentService over gRPC: each call decodes its request, calls one method
of the agent (or of its courier, for SubmitNow) and encodes the result; the
shared boundary answers refusals and failures (printernizer_stats.common.boundary)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.common.boundary import Boundary
from printernizer_stats.common.errors import Context

from .agent import StatsAgent, report_json
from .delivery import Courier
from .storage import storage_refusal

log = logging.getLogger(__name__)


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: StatsAgent, courier: Courier) -> None:
        self.agent = agent
        self.courier = courier
        self.boundary = Boundary(log, failures=storage_refusal)

    async def RecordEvents(
        self, request: agent_service_pb2.RecordEventsRequest, context: Context
    ) -> agent_service_pb2.RecordEventsResponse:
        result = await self.boundary.answer(
            context,
            "recording events",
            lambda: self.agent.record(
                request.events, request.dropped_by_client, request.client_id, request.batch_sequence
            ),
        )
        return agent_service_pb2.RecordEventsResponse(
            stored_count=result.stored,
            recording_disabled=result.recording_disabled,
            refused=result.refused,
            duplicate=result.duplicate,
        )

    async def GetConsent(
        self, request: agent_service_pb2.GetConsentRequest, context: Context
    ) -> agent_service_pb2.GetConsentResponse:
        consent = await self.boundary.answer(context, "reading the consent", self.agent.consent)
        return agent_service_pb2.GetConsentResponse(consent=consent.to_proto())

    async def SetConsent(
        self, request: agent_service_pb2.SetConsentRequest, context: Context
    ) -> agent_service_pb2.SetConsentResponse:
        consent = await self.boundary.answer(
            context,
            "setting the consent",
            lambda: self.agent.set_consent(request.state, request.schema_version, request.level),
        )
        return agent_service_pb2.SetConsentResponse(consent=consent.to_proto())

    async def GetLocalStats(
        self, request: agent_service_pb2.GetLocalStatsRequest, context: Context
    ) -> agent_service_pb2.GetLocalStatsResponse:
        return await self.boundary.answer(
            context, "local statistics", lambda: self.agent.local_stats(request.weeks)
        )

    async def PreviewReport(
        self, request: agent_service_pb2.PreviewReportRequest, context: Context
    ) -> agent_service_pb2.PreviewReportResponse:
        requested = request.week if request.HasField("week") else None
        week, report = await self.boundary.answer(
            context, "preview", lambda: self.agent.preview_requested(requested, request.level)
        )
        return agent_service_pb2.PreviewReportResponse(
            week=week.to_proto(), report=report, report_json=report_json(report)
        )

    async def ExportData(
        self, request: agent_service_pb2.ExportDataRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.ExportDataResponse]:
        async for page in self.boundary.answer_each(
            context, "export", lambda: self.agent.export(request.page_size)
        ):
            yield page

    async def DeleteAllData(
        self, request: agent_service_pb2.DeleteAllDataRequest, context: Context
    ) -> agent_service_pb2.DeleteAllDataResponse:
        events, reports = await self.boundary.answer(context, "deleting everything", self.agent.delete_all)
        return agent_service_pb2.DeleteAllDataResponse(events_deleted=events, reports_deleted=reports)

    async def GetStatus(
        self, request: agent_service_pb2.GetStatusRequest, context: Context
    ) -> agent_service_pb2.GetStatusResponse:
        return await self.boundary.answer(context, "status", self.agent.status)

    async def SubmitNow(
        self, request: agent_service_pb2.SubmitNowRequest, context: Context
    ) -> agent_service_pb2.SubmitNowResponse:
        receipts = await self.boundary.answer(context, "submitting now", self.courier.submit_now)
        return agent_service_pb2.SubmitNowResponse(receipts=receipts)

    async def ListSentReports(
        self, request: agent_service_pb2.ListSentReportsRequest, context: Context
    ) -> agent_service_pb2.ListSentReportsResponse:
        return await self.boundary.answer(
            context, "sent reports", lambda: self.agent.sent_reports(request.limit)
        )
