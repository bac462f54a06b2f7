"""The AnalyticsService over gRPC: protobuf in, Analytics calls, status codes
out. The admin credential is checked before this runs
(printernizer_stats.common.admin.RequireAdminToken)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from opentelemetry import metrics
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from printernizer_stats.common import errors
from printernizer_stats.common.errors import Context
from printernizer_stats.store.database import DATABASE_RETRY, database_unreachable

from .queries import Analytics, QueryError

log = logging.getLogger(__name__)

Response = TypeVar("Response")


_meter = metrics.get_meter("printernizer_stats.analytics_server")
QUERY_DURATION = _meter.create_histogram(
    "stats.query.duration", unit="s", description="time to answer an analytics query, by query and outcome"
)


async def _answer(context: Context, call: Callable[[], Awaitable[Response]], what: str) -> Response:
    started, outcome = time.perf_counter(), "ok"
    try:
        return await call()
    except QueryError as exc:
        outcome = "invalid"
        await errors.invalid_argument(context, [(exc.field, exc.description)])
    except Exception as exc:
        if not database_unreachable(exc):
            outcome = "error"
            log.exception("%s failed", what)
            await errors.internal(context)
        outcome = "unavailable"
        log.warning("%s: the database is not answering (%s)", what, type(exc).__name__)
        await errors.unavailable(context, "the database is not answering; try again later", DATABASE_RETRY)
    finally:
        QUERY_DURATION.record(time.perf_counter() - started, {"query": what, "outcome": outcome})


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, analytics: Analytics) -> None:
        self.analytics = analytics

    async def GetInstallationTrend(
        self, request: analytics_service_pb2.GetInstallationTrendRequest, context: Context
    ) -> analytics_service_pb2.GetInstallationTrendResponse:
        return await _answer(
            context, lambda: self.analytics.installation_trend(request), "installation trend"
        )

    async def GetDistribution(
        self, request: analytics_service_pb2.GetDistributionRequest, context: Context
    ) -> analytics_service_pb2.GetDistributionResponse:
        return await _answer(context, lambda: self.analytics.distribution(request), "distribution")

    async def GetOverview(
        self, request: analytics_service_pb2.GetOverviewRequest, context: Context
    ) -> analytics_service_pb2.GetOverviewResponse:
        return await _answer(context, lambda: self.analytics.overview(request), "overview")

    async def GetFeatureAdoption(
        self, request: analytics_service_pb2.GetFeatureAdoptionRequest, context: Context
    ) -> analytics_service_pb2.GetFeatureAdoptionResponse:
        return await _answer(context, lambda: self.analytics.feature_adoption(request), "feature adoption")

    async def GetVersionMigration(
        self, request: analytics_service_pb2.GetVersionMigrationRequest, context: Context
    ) -> analytics_service_pb2.GetVersionMigrationResponse:
        return await _answer(context, lambda: self.analytics.version_migration(request), "version migration")

    async def GetFeatureTrend(
        self, request: analytics_service_pb2.GetFeatureTrendRequest, context: Context
    ) -> analytics_service_pb2.GetFeatureTrendResponse:
        return await _answer(context, lambda: self.analytics.feature_trend(request), "feature trend")

    async def GetErrorTrend(
        self, request: analytics_service_pb2.GetErrorTrendRequest, context: Context
    ) -> analytics_service_pb2.GetErrorTrendResponse:
        return await _answer(context, lambda: self.analytics.error_trend(request), "error trend")

    async def GetErrorRates(
        self, request: analytics_service_pb2.GetErrorRatesRequest, context: Context
    ) -> analytics_service_pb2.GetErrorRatesResponse:
        return await _answer(context, lambda: self.analytics.error_rates(request), "error rates")

    async def ListAnomalies(
        self, request: analytics_service_pb2.ListAnomaliesRequest, context: Context
    ) -> analytics_service_pb2.ListAnomaliesResponse:
        return await _answer(context, lambda: self.analytics.anomalies(request), "anomalies")

    async def ExportAggregates(
        self, request: analytics_service_pb2.ExportAggregatesRequest, context: Context
    ) -> analytics_service_pb2.ExportAggregatesResponse:
        return await _answer(context, lambda: self.analytics.export(request), "export")
