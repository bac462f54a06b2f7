"""The public community page (`/community`) and its figures (`/api/v1/community/*`):
the anonymised figures the project shares with everyone. Off unless the operator
turns it on (`--community-page`); then served without credentials.

Every figure is an answer of the analytics server, so every one has been through
its small-group protection (docs/privacy.md: no group under k installations,
every count rounded to a multiple of k). The gateway asks a fixed set of
questions (CHARTS) when it starts and then every REFRESH_SECONDS, keeps the
answers as ready-made JSON and CSV, and serves that copy to everyone:

- no public request reaches the analytics server, however many there are;
- no one can ask a question of their own: there are no parameters (a week, a
  window, a dimension), and a parameter given anyway is refused (400);
- until the first refresh succeeds the figures are 503 with Retry-After (the
  page says they are not available yet); a refresh that fails later keeps the
  last good copy and says so in the log, and is tried again after RETRY_SECONDS.

The files: `/api/v1/community` (every chart in one JSON document),
`/api/v1/community/<chart>.json` and `.csv` (one chart), and
`/api/v1/community/disclosure` (what a report contains and why, generated from
the contract: the same document as the privacy API's).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import functools
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Path, Response
from google.protobuf.message import Message
from printernizer.stats.v1 import analytics_service_pb2 as api
from printernizer.stats.v1 import common_pb2
from printernizer_stats.common.weeks import Week, weeks_ending
from printernizer_stats.sdk.i18n import disclosure_document

from .errors import HttpRefusal
from .params import only_declared_parameters
from .stats_api import CALL_TIMEOUT_SECONDS, AnalyticsClient

log = logging.getLogger(__name__)

COMMUNITY_PAGE = "/community"
COMMUNITY_API = "/api/v1/community"
# The figures change when a week completes (and as its late reports arrive): hourly is plenty.
REFRESH_SECONDS = 3600.0
# After a failed refresh (the analytics server down, at start or later), the next try.
RETRY_SECONDS = 60.0
# How long a browser or a proxy may keep a community answer: a refresh shows within minutes.
COMMUNITY_MAX_AGE_SECONDS = 300
# The trends' window, in weeks (the distributions are of its last week).
TREND_WEEKS = 26
# Release health's, as the analytics server's default.
RELEASE_HEALTH_WEEKS = 4
# The label of the row that folds every group smaller than k (the analytics' `other`):
# no enum's label, so it cannot be mistaken for a real group (an `..._OTHER` value is "Other").
COMBINED = "Smaller groups combined"

Row = dict[str, str | int | float]


def week_label(week: common_pb2.IsoWeek) -> str:
    return str(Week.from_proto(week))


@dataclass(frozen=True)
class Chart:
    """One chart of the page: the one question it asks the analytics server (of
    the `weeks` weeks up to the last complete one), its answer as a table, and
    how the page draws it (static/community.js)."""

    name: str  # its files: /api/v1/community/<name>.json and .csv
    title: str
    description: str
    method: str  # the AnalyticsService RPC
    weeks: int  # how many weeks the chart covers, ending with the last complete week
    question: Callable[[api.WeekWindow], Message]
    columns: tuple[str, ...]
    rows: Callable[[Any], list[Row]]  # the answer (`method`'s response) as the table
    plot: dict[str, Any]


def installation_rows(answer: api.GetInstallationTrendResponse) -> list[Row]:
    return [
        {
            "week": week_label(w.week),
            "known": w.known,
            "active": w.active,
            "newInstallations": w.new_installations,
        }
        for w in answer.weeks
    ]


def distribution_rows(column: str) -> Callable[[api.GetDistributionResponse], list[Row]]:
    def rows(answer: api.GetDistributionResponse) -> list[Row]:
        return [
            {
                column: COMBINED if e.other else e.values[0].label,
                "installations": e.installations,
                "share": e.share,
            }
            for e in answer.entries
        ]

    return rows


def version_migration_rows(answer: api.GetVersionMigrationResponse) -> list[Row]:
    """One row per published (version, week); a week in which a version is not
    published (fewer than k installations) has no row. By week, newest version first."""
    rows: list[Row] = [
        {
            "week": week_label(point.week),
            "appVersion": COMBINED if series.other else series.values[0].label,
            "installations": point.installations,
            "share": point.share,
        }
        for series in answer.series
        for point in series.points
        if not point.suppressed
    ]
    return sorted(rows, key=lambda row: str(row["week"]))  # stable: the versions' order stays


def feature_rows(answer: api.GetFeatureAdoptionResponse) -> list[Row]:
    return [
        {
            "feature": COMBINED if f.other else f.feature.label,
            "enabledInstallations": f.enabled_installations,
            "enabledShare": f.enabled_share,
        }
        for f in answer.features
    ]


def release_health_rows(answer: api.GetReleaseHealthResponse) -> list[Row]:
    """One row per version, newest first. A crash-free rate that cannot be shown
    (those with or without a crash fewer than k in a week) is left empty."""
    return [
        {
            "appVersion": r.version.label,
            "installations": r.installations,
            "installationWeeks": r.installation_weeks,
            "crashFreeRate": "" if r.crash_free_suppressed else r.crash_free_rate,
            "jobSuccessRate": r.job_success_rate,
            "errorsPerInstallation": r.errors_per_installation,
        }
        for r in answer.releases
    ]


def _distribution(dimension: api.Dimension.ValueType) -> Callable[[api.WeekWindow], Message]:
    return lambda window: api.GetDistributionRequest(dimensions=[dimension], week=window.until)


def _bars(category: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "bars", "category": category, "value": "installations", **spec}


# Every chart the page shows, in its order. A chart is added here (and drawn by one of the
# page's plot kinds: trend, pie, bars, shares), and tests/disclosure_auditor.py told how to
# check its rows against the truth; it then has its files and its place on the page.
CHARTS: tuple[Chart, ...] = (
    Chart(
        "installations",
        "Installations over time",
        f"Installations known (ever reported, and not deleted), active (reported for the week) and new, "
        f"per week, over the last {TREND_WEEKS} complete weeks.",
        "GetInstallationTrend",
        TREND_WEEKS,
        lambda window: api.GetInstallationTrendRequest(window=window),
        ("week", "known", "active", "newInstallations"),
        installation_rows,
        {
            "kind": "trend",
            "x": "week",
            "wide": True,
            "series": [
                {"column": "known", "name": "known", "type": "line"},
                {"column": "active", "name": "active", "type": "line"},
                {"column": "newInstallations", "name": "new", "type": "bar"},
            ],
        },
    ),
    Chart(
        "version-migration",
        "Version migration",
        f"Share of active installations on each Printernizer version, per week, over the last "
        f"{TREND_WEEKS} complete weeks.",
        "GetVersionMigration",
        TREND_WEEKS,
        lambda window: api.GetVersionMigrationRequest(window=window),
        ("week", "appVersion", "installations", "share"),
        version_migration_rows,
        {"kind": "shares", "x": "week", "group": "appVersion", "value": "share", "wide": True},
    ),
    Chart(
        "app-versions",
        "App versions",
        "Active installations by Printernizer version, in the last complete week.",
        "GetDistribution",
        1,
        _distribution(api.DIMENSION_APP_VERSION),
        ("appVersion", "installations", "share"),
        distribution_rows("appVersion"),
        _bars("appVersion"),
    ),
    Chart(
        "deployment-modes",
        "Deployment modes",
        "Active installations by how Printernizer runs, in the last complete week.",
        "GetDistribution",
        1,
        _distribution(api.DIMENSION_DEPLOYMENT_MODE),
        ("deploymentMode", "installations", "share"),
        distribution_rows("deploymentMode"),
        {"kind": "pie", "category": "deploymentMode", "value": "installations"},
    ),
    Chart(
        "countries",
        "Countries",
        "Active installations by country (from the time zone the user configured, never from an "
        "address), in the last complete week.",
        "GetDistribution",
        1,
        _distribution(api.DIMENSION_COUNTRY),
        ("country", "installations", "share"),
        distribution_rows("country"),
        _bars("country", horizontal=True),
    ),
    Chart(
        "printer-types",
        "Printer types",
        "Active installations with at least one printer of each family, in the last complete week "
        "(an installation with several families counts in each).",
        "GetDistribution",
        1,
        _distribution(api.DIMENSION_PRINTER_TYPE),
        ("printerType", "installations", "share"),
        distribution_rows("printerType"),
        _bars("printerType"),
    ),
    Chart(
        "features",
        "Feature adoption",
        "Share of active installations with each feature switched on, in the last complete week.",
        "GetFeatureAdoption",
        1,
        lambda window: api.GetFeatureAdoptionRequest(week=window.until),
        ("feature", "enabledInstallations", "enabledShare"),
        feature_rows,
        {
            "kind": "bars",
            "category": "feature",
            "value": "enabledShare",
            "percent": True,
            "horizontal": True,
            "wide": True,
        },
    ),
    Chart(
        "release-health",
        "Release health",
        f"Per Printernizer version, over the last {RELEASE_HEALTH_WEEKS} complete weeks: the share of "
        "installation-weeks without an unclean shutdown (crash-free), the completed share of finished "
        "print jobs, and errors per installation-week. The chart shows the job success rate.",
        "GetReleaseHealth",
        RELEASE_HEALTH_WEEKS,
        lambda window: api.GetReleaseHealthRequest(window=window),
        (
            "appVersion",
            "installations",
            "installationWeeks",
            "crashFreeRate",
            "jobSuccessRate",
            "errorsPerInstallation",
        ),
        release_health_rows,
        {"kind": "bars", "category": "appVersion", "value": "jobSuccessRate", "percent": True},
    ),
)


# (Module level: FastAPI reads the routes' annotations in this module's namespace.)
ChartName = Annotated[str, Path(description=f"the chart: {', '.join(c.name for c in CHARTS)}")]


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def csv_of(columns: Sequence[str], rows: Sequence[Row]) -> bytes:
    """The table as CSV (RFC 4180): a header of the column names, then each row,
    every value written as the JSON document writes it."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[column] for column in columns])
    return text.getvalue().encode()


@dataclass(frozen=True)
class PublishedFigures:
    """One refresh's figures, ready to serve."""

    fetched_at: dt.datetime
    document: dict[str, Any]  # every chart, as /api/v1/community serves it
    index_json: bytes
    chart_json: dict[str, bytes]
    chart_csv: dict[str, bytes]


def published_figures(
    charts: Sequence[Chart],
    answers: Sequence[Message],
    until: Week,
    fetched_at: dt.datetime,
    refresh_seconds: float,
) -> PublishedFigures:
    # k, as the analytics server says it (every answer that carries it says the same).
    k = max((int(getattr(answer, "min_group_size", 0)) for answer in answers), default=0)
    about = {
        "asOf": fetched_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "refreshSeconds": int(refresh_seconds),
        "until": str(until),
        "minGroupSize": k,
    }
    documents: list[dict[str, Any]] = []
    for chart, answer in zip(charts, answers, strict=True):
        documents.append(
            {
                "chart": chart.name,
                "title": chart.title,
                "description": chart.description,
                "weeks": [str(w) for w in weeks_ending(until, chart.weeks)],
                **about,
                "columns": list(chart.columns),
                "rows": chart.rows(answer),
                "plot": chart.plot,
            }
        )
    index = {**about, "charts": documents}
    return PublishedFigures(
        fetched_at,
        index,
        _json_bytes(index),
        {d["chart"]: _json_bytes(d) for d in documents},
        {chart.name: csv_of(chart.columns, d["rows"]) for chart, d in zip(charts, documents, strict=True)},
    )


class CommunityFigures:
    """The community figures: fetched from the analytics server on a schedule
    (`run`), kept as the last good `PublishedFigures`, served from it."""

    def __init__(
        self,
        analytics: AnalyticsClient,
        refresh_seconds: float = REFRESH_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        charts: Sequence[Chart] = CHARTS,
    ) -> None:
        self.analytics = analytics
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = min(retry_seconds, refresh_seconds)
        self.charts = tuple(charts)
        self.published: PublishedFigures | None = None
        self.attempts = 0  # refreshes tried and finished, successful or not
        self._next_attempt = 0.0  # the event loop's time of the next scheduled refresh
        self._lock = asyncio.Lock()

    async def _ask(self, method: str, request: Message) -> Message:
        rpc = getattr(self.analytics.stub, method)
        answer: Message = await rpc(request, metadata=self.analytics.metadata, timeout=CALL_TIMEOUT_SECONDS)
        return answer

    async def refresh(self) -> bool:
        """Fetch every chart's figures anew; True when they replaced the copy
        served, False when the copy (if any) stays (the reason is logged)."""
        async with self._lock:
            try:
                # Every chart ends with the same week: the analytics server's last complete one.
                latest: api.GetInstallationTrendResponse = await self.analytics.stub.GetInstallationTrend(
                    api.GetInstallationTrendRequest(window=api.WeekWindow(weeks=1)),
                    metadata=self.analytics.metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                until = Week.from_proto(latest.weeks[-1].week)
                answers = await asyncio.gather(
                    *(
                        self._ask(c.method, c.question(api.WeekWindow(weeks=c.weeks, until=until.to_proto())))
                        for c in self.charts
                    )
                )
                published = published_figures(
                    self.charts, answers, until, dt.datetime.now(dt.UTC), self.refresh_seconds
                )
            except grpc.aio.AioRpcError as exc:
                why = f"the analytics server answered {exc.code().name}: {exc.details()}"
                log.warning(
                    "community page: refreshing the figures failed (%s); %s", why, self._still_serving()
                )
                return False
            except Exception:
                log.exception("community page: the figures could not be made; %s", self._still_serving())
                return False
            else:
                self.published = published
                return True
            finally:
                self.attempts += 1

    def _still_serving(self) -> str:
        if self.published is None:
            return "none are served yet"
        return f"still serving those fetched at {self.published.document['asOf']}"

    async def run(self) -> None:
        """Refresh now, then every refresh_seconds (retry_seconds after a failure), until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            refreshed = await self.refresh()
            delay = self.refresh_seconds if refreshed else self.retry_seconds
            self._next_attempt = loop.time() + delay
            await asyncio.sleep(delay)

    def retry_after(self) -> int:
        """Whole seconds until the next refresh is tried (at least 1)."""
        try:
            left = self._next_attempt - asyncio.get_running_loop().time()
        except RuntimeError:
            left = self.retry_seconds
        return max(1, math.ceil(left))


@functools.cache
def disclosure_json() -> bytes:
    """What a report contains and why (English), generated from the contract."""
    return _json_bytes(disclosure_document())


def community_router(figures: CommunityFigures) -> APIRouter:
    names = [chart.name for chart in figures.charts]
    # No parameters: the content is fixed. One given anyway (`?weeks=52`) is refused rather
    # than ignored, so that no one takes the answer for the one they asked for.
    router = APIRouter(
        prefix=COMMUNITY_API, dependencies=[Depends(only_declared_parameters)], tags=["community"]
    )

    def current() -> PublishedFigures:
        if figures.published is None:
            raise HttpRefusal(
                503,
                "the community figures are not available yet: the gateway has not fetched them since it "
                "started; try again later",
                "UNAVAILABLE",
                headers={"Retry-After": str(figures.retry_after())},
            )
        return figures.published

    def known(chart: str) -> str:
        if chart not in names:
            raise HttpRefusal(404, f"there is no such chart; the charts are: {', '.join(names)}", "NOT_FOUND")
        return chart

    json_answer: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {"schema": {"type": "object"}}}}
    }

    @router.get("", response_class=Response, responses=json_answer)
    async def every_chart() -> Response:
        """Every chart of the community page, in one JSON document."""
        return Response(current().index_json, media_type="application/json")

    @router.get("/disclosure", response_class=Response, responses=json_answer)
    async def what_is_collected() -> Response:
        """What an installation's weekly report contains and why, generated from the contract, and what
        it can never contain."""
        return Response(disclosure_json(), media_type="application/json")

    @router.get("/{chart}.json", response_class=Response, responses=json_answer)
    async def chart_json(chart: ChartName) -> Response:
        """One chart: its figures as a table (`columns`, `rows`), with when they were fetched."""
        name = known(chart)  # an unknown chart is 404 whether or not there are figures yet
        return Response(current().chart_json[name], media_type="application/json")

    @router.get(
        "/{chart}.csv",
        response_class=Response,
        responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    )
    async def chart_csv(chart: ChartName) -> Response:
        """One chart's table as CSV: the same columns and rows as its JSON."""
        name = known(chart)
        return Response(
            current().chart_csv[name],
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="printernizer-{name}.csv"'},
        )

    return router
