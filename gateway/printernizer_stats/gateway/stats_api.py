"""`/api/v1/stats/*`: the admin dashboard's REST API over the analytics server.

Each endpoint checks the caller's bearer token (the admin token, compared in
constant time), validates its bounded parameters, makes one gRPC call and
returns the answer as JSON. gRPC statuses become HTTP statuses with a JSON
body: {"error": <message>, "code": <gRPC code name>, "field": <the wrong
parameter, when one is>}.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf import json_format
from google.protobuf.message import Message
from printernizer.stats.v1 import analytics_service_pb2 as api
from printernizer.stats.v1 import analytics_service_pb2_grpc
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.telemetry import grpc_client_interceptors

from .backend import Backend
from .errors import HttpRefusal, invalid
from .params import Until, WeekParam, Weeks, only_declared_parameters, week_of

CALL_TIMEOUT_SECONDS = 10.0

DIMENSIONS = {
    name.removeprefix("DIMENSION_").lower().replace("_", "-"): number
    for name, number in api.Dimension.items()
    if number
}
ERROR_GROUPINGS = {
    name.removeprefix("ERROR_GROUPING_").lower().replace("_", "-"): number
    for name, number in api.ErrorGrouping.items()
    if number
}
DimensionName = Annotated[str, Path(pattern=f"^({'|'.join(DIMENSIONS)})$")]
SecondDimension = Annotated[
    str | None,
    Query(alias="and", pattern=f"^({'|'.join(DIMENSIONS)})$", description="a second, other dimension"),
]
# In OpenAPI as a security scheme (not a header parameter); checked in require_admin.
ADMIN_BEARER = HTTPBearer(auto_error=False, description="the admin token")


class AnalyticsClient(Backend):
    """The TLS channel to the analytics server, with the admin token."""

    def __init__(self, target: str, ca: bytes | None, token: str) -> None:
        super().__init__()
        self.target, self.ca, self.token = target, ca, token
        self.metadata = bearer_metadata(token)

    def _open(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.aio.secure_channel(self.target, credentials, interceptors=grpc_client_interceptors())

    @functools.cached_property
    def stub(self) -> analytics_service_pb2_grpc.AnalyticsServiceAsyncStub:
        return analytics_service_pb2_grpc.AnalyticsServiceStub(self.channel)


def _window(weeks: int | None, until: str | None) -> api.WeekWindow:
    window = api.WeekWindow(weeks=weeks or 0)
    if (parsed := week_of(until)) is not None:
        window.until.CopyFrom(parsed)
    return window


def json_of(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def stats_router(analytics: AnalyticsClient) -> APIRouter:
    expected = analytics.token.encode()

    async def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN_BEARER)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HttpRefusal(
                401,
                "this API needs the admin token (Authorization: Bearer <token>)",
                "UNAUTHENTICATED",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # The token first: without it, nothing about the parameters is said.
    router = APIRouter(
        prefix="/api/v1/stats",
        dependencies=[Depends(require_admin), Depends(only_declared_parameters)],
        tags=["statistics"],
    )

    async def call(rpc: Callable[..., Awaitable[Message]], request: Message) -> dict[str, Any]:
        return json_of(await rpc(request, metadata=analytics.metadata, timeout=CALL_TIMEOUT_SECONDS))

    @router.get("/overview")
    async def overview(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        """Everything the dashboard's first screen shows."""
        return await call(analytics.stub.GetOverview, api.GetOverviewRequest(window=_window(weeks, until)))

    @router.get("/installations")
    async def installations(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        """Known, active and new installations per week."""
        return await call(
            analytics.stub.GetInstallationTrend, api.GetInstallationTrendRequest(window=_window(weeks, until))
        )

    @router.get("/distribution/{dimension}")
    async def distribution(
        dimension: DimensionName, combined_with: SecondDimension = None, week: WeekParam = None
    ) -> dict[str, Any]:
        """Installations by one dimension, or by two (`and`)."""
        if combined_with == dimension:
            raise invalid("and", f"must name a dimension other than {dimension}")
        dimensions = [DIMENSIONS[dimension]] + ([DIMENSIONS[combined_with]] if combined_with else [])
        request = api.GetDistributionRequest(dimensions=dimensions)
        if (parsed := week_of(week)) is not None:
            request.week.CopyFrom(parsed)
        return await call(analytics.stub.GetDistribution, request)

    @router.get("/features")
    async def features(week: WeekParam = None) -> dict[str, Any]:
        """Share of installations with each feature switched on."""
        request = api.GetFeatureAdoptionRequest()
        if (parsed := week_of(week)) is not None:
            request.week.CopyFrom(parsed)
        return await call(analytics.stub.GetFeatureAdoption, request)

    @router.get("/version-migration")
    async def version_migration(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        return await call(
            analytics.stub.GetVersionMigration, api.GetVersionMigrationRequest(window=_window(weeks, until))
        )

    @router.get("/feature-trends")
    async def feature_trends(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        return await call(
            analytics.stub.GetFeatureTrend, api.GetFeatureTrendRequest(window=_window(weeks, until))
        )

    @router.get("/errors")
    async def errors(
        weeks: Weeks = None,
        until: Until = None,
        group_by: Annotated[str, Query(pattern=f"^({'|'.join(ERROR_GROUPINGS)})$")] = "error-type",
    ) -> dict[str, Any]:
        request = api.GetErrorTrendRequest(window=_window(weeks, until), group_by=ERROR_GROUPINGS[group_by])
        return await call(analytics.stub.GetErrorTrend, request)

    @router.get("/error-rates")
    async def error_rates(
        weeks: Weeks = None,
        until: Until = None,
        by: Annotated[
            str,
            Query(
                pattern="^(app-version|deployment-mode)$",
                description="per app version, or per mode and version",
            ),
        ] = "app-version",
    ) -> dict[str, Any]:
        request = api.GetErrorRatesRequest(
            window=_window(weeks, until), by_deployment_mode=by == "deployment-mode"
        )
        return await call(analytics.stub.GetErrorRates, request)

    @router.get("/release-health")
    async def release_health(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        """Each app version's health over the window (default 4 weeks), against the release before it."""
        return await call(
            analytics.stub.GetReleaseHealth, api.GetReleaseHealthRequest(window=_window(weeks, until))
        )

    @router.get("/usage")
    async def usage(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        """Jobs, their durations and failure reasons, files, connections, uptime and crashes per week."""
        return await call(analytics.stub.GetUsage, api.GetUsageRequest(window=_window(weeks, until)))

    @router.get("/features-by-version")
    async def features_by_version(week: WeekParam = None) -> dict[str, Any]:
        """Feature adoption on each app version in one week."""
        request = api.GetFeatureAdoptionByVersionRequest()
        if (parsed := week_of(week)) is not None:
            request.week.CopyFrom(parsed)
        return await call(analytics.stub.GetFeatureAdoptionByVersion, request)

    @router.get("/anomalies")
    async def anomalies(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        return await call(
            analytics.stub.ListAnomalies, api.ListAnomaliesRequest(window=_window(weeks, until))
        )

    @router.get("/export")
    async def export(weeks: Weeks = None, until: Until = None) -> Response:
        """Every aggregated figure of the window, as a JSON file."""
        body = await call(
            analytics.stub.ExportAggregates, api.ExportAggregatesRequest(window=_window(weeks, until))
        )
        return JSONResponse(
            body, headers={"Content-Disposition": 'attachment; filename="printernizer-usage-statistics.json"'}
        )

    return router
