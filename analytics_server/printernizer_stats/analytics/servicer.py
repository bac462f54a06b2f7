"""The AnalyticsService over gRPC: each call hands its request to one method
of Analytics and returns its answer; the shared boundary answers refusals and
failures (printernizer_stats.common.boundary), and times every query. The
admin credential is checked before this runs
(printernizer_stats.common.admin.RequireAdminToken)."""

from __future__ import annotations

import logging

from opentelemetry import metrics
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from printernizer_stats.common.boundary import Boundary, Outcome
from printernizer_stats.common.errors import Context
from printernizer_stats.common.refusals import FieldError, Unavailable
from printernizer_stats.store.database import database_refusal

from .queries import Analytics

log = logging.getLogger(__name__)


_meter = metrics.get_meter("printernizer_stats.analytics_server")
QUERY_DURATION = _meter.create_histogram(
    "stats.query.duration", unit="s", description="time to answer an analytics query, by query and outcome"
)


def _timed(outcome: Outcome) -> None:
    if outcome.failed:
        label = "error"
    elif outcome.refusal is None:
        label = "ok"
    elif isinstance(outcome.refusal, FieldError):
        label = "invalid"
    elif isinstance(outcome.refusal, Unavailable):
        label = "unavailable"  # the database
    else:
        label = "error"
    QUERY_DURATION.record(outcome.seconds, {"query": outcome.what, "outcome": label})


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, analytics: Analytics) -> None:
        self.analytics = analytics
        self.boundary = Boundary(log, failures=database_refusal, observe=_timed)

    async def GetInstallationTrend(
        self, request: analytics_service_pb2.GetInstallationTrendRequest, context: Context
    ) -> analytics_service_pb2.GetInstallationTrendResponse:
        return await self.boundary.answer(
            context, "installation trend", lambda: self.analytics.installation_trend(request)
        )

    async def GetDistribution(
        self, request: analytics_service_pb2.GetDistributionRequest, context: Context
    ) -> analytics_service_pb2.GetDistributionResponse:
        return await self.boundary.answer(
            context, "distribution", lambda: self.analytics.distribution(request)
        )

    async def GetOverview(
        self, request: analytics_service_pb2.GetOverviewRequest, context: Context
    ) -> analytics_service_pb2.GetOverviewResponse:
        return await self.boundary.answer(context, "overview", lambda: self.analytics.overview(request))

    async def GetFeatureAdoption(
        self, request: analytics_service_pb2.GetFeatureAdoptionRequest, context: Context
    ) -> analytics_service_pb2.GetFeatureAdoptionResponse:
        return await self.boundary.answer(
            context, "feature adoption", lambda: self.analytics.feature_adoption(request)
        )

    async def GetVersionMigration(
        self, request: analytics_service_pb2.GetVersionMigrationRequest, context: Context
    ) -> analytics_service_pb2.GetVersionMigrationResponse:
        return await self.boundary.answer(
            context, "version migration", lambda: self.analytics.version_migration(request)
        )

    async def GetFeatureTrend(
        self, request: analytics_service_pb2.GetFeatureTrendRequest, context: Context
    ) -> analytics_service_pb2.GetFeatureTrendResponse:
        return await self.boundary.answer(
            context, "feature trend", lambda: self.analytics.feature_trend(request)
        )

    async def GetErrorTrend(
        self, request: analytics_service_pb2.GetErrorTrendRequest, context: Context
    ) -> analytics_service_pb2.GetErrorTrendResponse:
        return await self.boundary.answer(context, "error trend", lambda: self.analytics.error_trend(request))

    async def GetErrorRates(
        self, request: analytics_service_pb2.GetErrorRatesRequest, context: Context
    ) -> analytics_service_pb2.GetErrorRatesResponse:
        return await self.boundary.answer(context, "error rates", lambda: self.analytics.error_rates(request))

    async def ListAnomalies(
        self, request: analytics_service_pb2.ListAnomaliesRequest, context: Context
    ) -> analytics_service_pb2.ListAnomaliesResponse:
        return await self.boundary.answer(context, "anomalies", lambda: self.analytics.anomalies(request))

    async def ExportAggregates(
        self, request: analytics_service_pb2.ExportAggregatesRequest, context: Context
    ) -> analytics_service_pb2.ExportAggregatesResponse:
        return await self.boundary.answer(context, "export", lambda: self.analytics.export(request))

    async def GetReleaseHealth(
        self, request: analytics_service_pb2.GetReleaseHealthRequest, context: Context
    ) -> analytics_service_pb2.GetReleaseHealthResponse:
        return await self.boundary.answer(
            context, "release health", lambda: self.analytics.release_health(request)
        )

    async def GetUsage(
        self, request: analytics_service_pb2.GetUsageRequest, context: Context
    ) -> analytics_service_pb2.GetUsageResponse:
        return await self.boundary.answer(context, "usage", lambda: self.analytics.usage(request))

    async def GetFeatureAdoptionByVersion(
        self,
        request: analytics_service_pb2.GetFeatureAdoptionByVersionRequest,
        context: Context,
    ) -> analytics_service_pb2.GetFeatureAdoptionByVersionResponse:
        return await self.boundary.answer(
            context,
            "feature adoption by version",
            lambda: self.analytics.feature_adoption_by_version(request),
        )
