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
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from google.protobuf.message import Message
from printernizer.stats.v1 import analytics_service_pb2 as api
from printernizer.stats.v1 import analytics_service_pb2_grpc, common_pb2

from stats_common.admin import bearer_metadata
from stats_common.errors import field_violations, retry_delay
from stats_common.telemetry import grpc_client_interceptors

from .backend import Backend

WEEK_PATTERN = r"^\d{4}-W\d{2}$"
MAX_WEEKS = 104

# gRPC status -> HTTP status.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
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


class Analytics(Backend):
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


def week_of(value: str | None) -> common_pb2.IsoWeek | None:
    if value is None:
        return None
    year, week = re.fullmatch(r"(\d{4})-W(\d{2})", value).groups()  # type: ignore[union-attr]
    return common_pb2.IsoWeek(year=int(year), week=int(week))


def _window(weeks: int | None, until: str | None) -> api.WeekWindow:
    window = api.WeekWindow(weeks=weeks or 0)
    if (parsed := week_of(until)) is not None:
        window.until.CopyFrom(parsed)
    return window


def json_of(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


Weeks = Annotated[int | None, Query(ge=1, le=MAX_WEEKS, description=f"weeks in the window (1-{MAX_WEEKS})")]
Until = Annotated[
    str | None, Query(pattern=WEEK_PATTERN, description="the window's last week, e.g. 2026-W46")
]
WeekParam = Annotated[str | None, Query(pattern=WEEK_PATTERN, description="the week, e.g. 2026-W46")]


def stats_router(analytics: Analytics) -> APIRouter:
    expected = f"Bearer {analytics.token}".encode()

    async def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        given = (authorization or "").encode()
        if not hmac.compare_digest(given, expected):
            raise Refusal(
                401, "this API needs the admin token (Authorization: Bearer <token>)", "UNAUTHENTICATED"
            )

    router = APIRouter(prefix="/api/v1/stats", dependencies=[Depends(require_admin)], tags=["statistics"])

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
        dimension: Annotated[str, Path(pattern=f"^({'|'.join(DIMENSIONS)})$")],
        combined_with: Annotated[
            str | None, Query(alias="and", pattern=f"^({'|'.join(DIMENSIONS)})$")
        ] = None,
        week: WeekParam = None,
    ) -> dict[str, Any]:
        """Installations by one dimension, or by two (`and`)."""
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
    async def error_rates(weeks: Weeks = None, until: Until = None) -> dict[str, Any]:
        return await call(
            analytics.stub.GetErrorRates, api.GetErrorRatesRequest(window=_window(weeks, until))
        )

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


class Refusal(Exception):
    def __init__(self, status: int, message: str, code: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.field = status, message, code, field


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = str(first["loc"][-1]) if first.get("loc") else ""
        return JSONResponse(
            {"error": f"{field}: {first.get('msg', 'invalid')}", "code": "INVALID_ARGUMENT", "field": field},
            status_code=400,
        )

    @app.exception_handler(Refusal)
    async def refused(_: Request, exc: Refusal) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message, "code": exc.code}, status_code=exc.status, headers=headers)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def rpc_failed(_: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        status = HTTP_STATUS.get(exc.code(), 502)
        body: dict[str, Any] = {"error": exc.details() or exc.code().name.lower(), "code": exc.code().name}
        violations = field_violations(exc)
        if violations:
            body["field"] = violations[0][0]
        headers = {}
        delay = retry_delay(exc)
        if delay is not None:
            headers["Retry-After"] = str(max(1, round(delay.total_seconds())))
        return JSONResponse(body, status_code=status, headers=headers)
