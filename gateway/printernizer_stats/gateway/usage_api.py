"""`/api/v1/usage-stats/*`: one installation's privacy API over its agent's
Unix socket (the seeds' local, opt-in, opt-out, export and delete-all, plus
the next report's preview, the ledger of what was sent, and the disclosure).

It is meant for the user's own machine: it answers only requests addressed to
a loopback host name (so a web page cannot reach it through DNS rebinding),
and its changes take JSON bodies only (so a cross-site form cannot post
them; no cross-origin access is granted either).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from google.protobuf import json_format
from printernizer.stats.v1 import agent_service_pb2 as agent_api
from printernizer.stats.v1 import agent_service_pb2_grpc, aggregated_stats_pb2
from printernizer_stats.common.contract import (
    CURRENT_SCHEMA_VERSION,
    NEVER_COLLECTED,
    disclosure,
    free_text_violations,
)
from printernizer_stats.common.telemetry import grpc_client_interceptors
from pydantic import Field
from starlette.types import ASGIApp, Receive, Scope, Send

from .backend import Backend
from .bodies import StrictBody, documented_body, json_body
from .errors import ErrorResponse
from .params import Limit, WeekParam, Weeks, only_declared_parameters, week_of
from .stats_api import CALL_TIMEOUT_SECONDS, json_of

# An export streams every stored event: a year of a busy installation (millions
# of events) takes a minute or two.
EXPORT_TIMEOUT_SECONDS = 600.0

USAGE_PREFIX = "/api/v1/usage-stats"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}
# A Host header: a name or a bracketed IPv6 address, then an optional port.
_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::[0-9]{1,5})?")


class Agent(Backend):
    """The channel to the local agent's Unix socket."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path

    def _open(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"unix:{self.socket_path}", interceptors=grpc_client_interceptors())

    @functools.cached_property
    def stub(self) -> agent_service_pb2_grpc.AgentServiceAsyncStub:
        return agent_service_pb2_grpc.AgentServiceStub(self.channel)


class NoFields(StrictBody):
    """An empty JSON object: a change is always a JSON POST."""


class OptIn(StrictBody):
    schema_version: int = Field(
        ge=1, le=CURRENT_SCHEMA_VERSION, description="the disclosure's version the user saw"
    )


def is_loopback(host_headers: list[bytes]) -> bool:
    """Whether a request is addressed to this machine: exactly one Host header,
    naming a loopback host."""
    if len(host_headers) != 1:
        return False
    match = _HOST.fullmatch(host_headers[0].decode("latin-1"))
    return match is not None and match["name"].lower() in LOOPBACK_HOSTS


class LoopbackOnly:
    """ASGI middleware: requests under `prefixes` that are not addressed to a
    loopback host name are refused with 403 before anything else is looked at
    (the path, the parameters, the body), so no answer tells such a caller more."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app, self.prefixes = app, prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        guarded = any(path == prefix or path.startswith(f"{prefix}/") for prefix in self.prefixes)
        if scope["type"] == "http" and guarded:
            hosts = [value for name, value in scope["headers"] if name == b"host"]
            if not is_loopback(hosts):
                refusal = ErrorResponse(
                    403, "this API answers only on this machine (a loopback host name)", "PERMISSION_DENIED"
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def usage_router(agent: Agent) -> APIRouter:
    # Loopback only: LoopbackOnly, installed beside this router (printernizer_stats.gateway.app).
    router = APIRouter(
        prefix=USAGE_PREFIX, dependencies=[Depends(only_declared_parameters)], tags=["usage statistics"]
    )

    @router.get("/local")
    async def local(weeks: Weeks = None) -> dict[str, Any]:
        """This installation's own figures and consent."""
        answer = await agent.stub.GetLocalStats(
            agent_api.GetLocalStatsRequest(weeks=weeks or 0), timeout=CALL_TIMEOUT_SECONDS
        )
        status = await agent.stub.GetStatus(agent_api.GetStatusRequest(), timeout=CALL_TIMEOUT_SECONDS)
        return {"stats": json_of(answer), "status": json_of(status)}

    @router.get("/disclosure")
    async def what_we_collect() -> dict[str, Any]:
        """What a report contains and why, generated from the contract, and what
        it can never contain. `freeTextFields` lists any field that could carry
        text (none: the contract's rules forbid them)."""
        return {
            "schemaVersion": CURRENT_SCHEMA_VERSION,
            "fields": [
                {"field": i.path, "why": i.why, "since": i.since_schema_version} for i in disclosure()
            ],
            "neverCollected": list(NEVER_COLLECTED),
            "freeTextFields": free_text_violations(),
        }

    @router.post("/opt-in", openapi_extra=documented_body(OptIn))
    async def opt_in(choice: Annotated[OptIn, Depends(json_body(OptIn))]) -> dict[str, Any]:
        request = agent_api.SetConsentRequest(
            state=agent_api.CONSENT_STATE_SHARING,
            schema_version=aggregated_stats_pb2.ReportSchemaVersion.ValueType(choice.schema_version),
        )
        return json_of(await agent.stub.SetConsent(request, timeout=CALL_TIMEOUT_SECONDS))

    @router.post(
        "/opt-out", dependencies=[Depends(json_body(NoFields))], openapi_extra=documented_body(NoFields)
    )
    async def opt_out() -> dict[str, Any]:
        """Stop sharing (the agent sends its deletion request); local figures stay."""
        request = agent_api.SetConsentRequest(state=agent_api.CONSENT_STATE_LOCAL_ONLY)
        return json_of(await agent.stub.SetConsent(request, timeout=CALL_TIMEOUT_SECONDS))

    @router.post(
        "/delete-all", dependencies=[Depends(json_body(NoFields))], openapi_extra=documented_body(NoFields)
    )
    async def delete_all() -> dict[str, Any]:
        return json_of(
            await agent.stub.DeleteAllData(agent_api.DeleteAllDataRequest(), timeout=CALL_TIMEOUT_SECONDS)
        )

    @router.get("/preview")
    async def preview(week: WeekParam = None) -> dict[str, Any]:
        """The exact next report (bytes, base64) and the same rendered for reading."""
        request = agent_api.PreviewReportRequest()
        if (parsed := week_of(week)) is not None:
            request.week.CopyFrom(parsed)
        return json_of(await agent.stub.PreviewReport(request, timeout=CALL_TIMEOUT_SECONDS))

    @router.get("/ledger")
    async def ledger(limit: Limit = None) -> dict[str, Any]:
        """Every report that was sent, with the server's receipts."""
        request = agent_api.ListSentReportsRequest(limit=limit or 0)
        return json_of(await agent.stub.ListSentReports(request, timeout=CALL_TIMEOUT_SECONDS))

    @router.get("/export")
    async def export() -> StreamingResponse:
        """Everything the agent keeps, as a JSON file (streamed page by page)."""
        # The whole stream is bounded too: a hung agent must not hold a download open forever.
        pages = agent.stub.ExportData(agent_api.ExportDataRequest(), timeout=EXPORT_TIMEOUT_SECONDS)
        first = await anext(aiter(pages), None)  # fail before the download starts

        async def body() -> AsyncIterator[str]:
            yield '{"pages": ['
            if first is not None:
                yield json_format.MessageToJson(first)
                async for page in pages:
                    yield "," + json_format.MessageToJson(page)
            yield "]}"

        return StreamingResponse(
            body(),
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="printernizer-usage-data.json"'},
        )

    return router
