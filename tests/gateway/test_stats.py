"""The gateway's statistics API end to end: a real HTTP server (uvicorn) in front
of the real analytics server over TLS, beside the real aggregation server, on
SQLite and PostgreSQL. Auth, every endpoint, parameter bounds, error mapping,
and the security headers.

The tests only read: they share one stack (and one gateway in front of the
stand-in below), started once for the module on the module's event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from printernizer_stats.common import errors
from printernizer_stats.demo.services import free_port
from printernizer_stats.gateway.errors import HTTP_STATUS
from printernizer_stats.gateway.pages import PLOTLY_JS
from printernizer_stats.gateway.stats_api import AnalyticsClient

from .. import databases
from ..aggregation.conftest import ADMIN_TOKEN, TIMEOUT, running_server
from .conftest import ADMIN, running_gateway, stats_gateway

database_url = databases.module_database_url
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """The conftest's `gateway`, once for the module."""
    base = tmp_path_factory.mktemp("stack")
    async with running_server(database_url, base) as server, stats_gateway(server, base / "tls") as client:
        yield client


ENDPOINTS = [
    "/api/v1/stats/overview",
    "/api/v1/stats/installations?weeks=4",
    "/api/v1/stats/distribution/country",
    "/api/v1/stats/distribution/country?and=app-version",
    "/api/v1/stats/features",
    "/api/v1/stats/version-migration",
    "/api/v1/stats/feature-trends",
    "/api/v1/stats/errors?group_by=component",
    "/api/v1/stats/error-rates",
    "/api/v1/stats/anomalies",
    "/api/v1/stats/export",
]


async def test_every_endpoint_answers_with_the_token_and_only_with_it(gateway: httpx.AsyncClient) -> None:
    for path in ENDPOINTS:
        answer = await gateway.get(path, headers=ADMIN)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["content-type"] == "application/json"
        for headers in ({}, {"Authorization": "Bearer wrong-" + "x" * 40}, {"Authorization": ADMIN_TOKEN}):
            refused = await gateway.get(path, headers=headers)
            assert refused.status_code == 401, path
            assert refused.json()["code"] == "UNAUTHENTICATED"
            assert refused.headers["www-authenticate"] == "Bearer"


async def test_health_says_serving_when_the_analytics_server_is(gateway: httpx.AsyncClient) -> None:
    health = await gateway.get("/health")  # no credentials needed, nothing else said
    assert (health.status_code, health.json()) == (200, {"status": "serving"})


async def test_answers_carry_the_analytics_figures(gateway: httpx.AsyncClient) -> None:
    countries = (await gateway.get("/api/v1/stats/distribution/country", headers=ADMIN)).json()
    # 3 installations, published rounded to a multiple of k = 2.
    assert countries["totalInstallations"] == "4"
    assert [(e["values"][0]["label"], e["installations"]) for e in countries["entries"]] == [("Germany", "4")]
    export = await gateway.get("/api/v1/stats/export?weeks=2", headers=ADMIN)
    assert export.headers["content-disposition"].startswith("attachment;")
    assert len(export.json()["distributions"]) == 8


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/stats/installations?weeks=10000", "weeks"),
        ("/api/v1/stats/installations?weeks=0", "weeks"),
        ("/api/v1/stats/overview?until=last-week", "until"),
        ("/api/v1/stats/distribution/favourite-colour", "dimension"),
        ("/api/v1/stats/errors?group_by=mood", "group_by"),
        # A real week, but not complete yet: the analytics server refuses it, and
        # the gateway names the parameter the client sent (not `window.until`).
        ("/api/v1/stats/overview?until=2999-W01", "until"),
    ],
)
async def test_bad_parameters_are_400_naming_the_field(
    gateway: httpx.AsyncClient, path: str, field: str
) -> None:
    answer = await gateway.get(path, headers=ADMIN)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "INVALID_ARGUMENT"
    assert answer.json()["field"] == field


async def test_an_unreachable_analytics_server_is_503() -> None:
    http, task, url = await running_gateway(AnalyticsClient(f"localhost:{free_port()}", None, ADMIN_TOKEN))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            answer = await client.get("/api/v1/stats/overview", headers=ADMIN)
            health = await client.get("/health")
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert answer.status_code == 503
    assert answer.json()["code"] == "UNAVAILABLE"
    assert (health.status_code, health.json()) == (503, {"status": "not serving", "down": ["analytics"]})


async def test_security_headers_and_no_cross_origin_access(gateway: httpx.AsyncClient) -> None:
    answer = await gateway.get(
        "/api/v1/stats/overview", headers={**ADMIN, "Origin": "https://elsewhere.example"}
    )
    assert "access-control-allow-origin" not in answer.headers
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert (await gateway.get("/docs")).status_code == 404  # its scripts would come from a CDN
    schema = (await gateway.get("/openapi.json")).json()
    assert {path.split("?")[0].replace("/country", "/{dimension}") for path in ENDPOINTS} <= set(
        schema["paths"]
    )
    assert "503" in schema["paths"]["/health"]["get"]["responses"]
    for path, operations in schema["paths"].items():
        if path == "/health":
            continue
        for operation in operations.values():
            # What the gateway really answers: 400 with its error body, never FastAPI's 422.
            assert "422" not in operation["responses"]
            assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }


async def test_the_dashboard_and_its_assets_come_from_the_gateway(gateway: httpx.AsyncClient) -> None:
    home = await gateway.get("/")
    assert (home.status_code, home.headers["location"]) == (307, "/dashboard")
    page = await gateway.get("/dashboard")  # the page itself holds no figures: no token needed
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    styles = re.findall(r'<link[^>]* href="([^"]+)"', page.text)
    assert "/static/vendor/plotly.min.js" in scripts
    for asset in scripts + styles:
        assert asset.startswith("/static/"), asset  # nothing from elsewhere
        answer = await gateway.get(asset)
        assert answer.status_code == 200, asset
        assert answer.headers["cache-control"] == "public, max-age=86400"
    plotly_js = await gateway.get("/static/vendor/plotly.min.js")  # httpx asks for gzip
    assert plotly_js.headers["content-type"].startswith("text/javascript")
    assert plotly_js.headers["content-encoding"] == "gzip"
    assert int(plotly_js.headers["content-length"]) < len(plotly_js.content) / 2  # compressed on the wire
    assert plotly_js.content == PLOTLY_JS.read_bytes()  # and the same file once unpacked
    plain = await gateway.get("/static/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == PLOTLY_JS.read_bytes()
    assert (await gateway.get("/static/missing.js")).headers["cache-control"] == "no-store"


class PlainAnalyticsClient(AnalyticsClient):
    """The gateway's channel, without TLS: to the stand-in below."""

    def _open(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target)


class RefusingAnalytics(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    """A stand-in for the analytics server that answers GetOverview with a
    chosen gRPC status. The real server cannot be made to answer most of these
    (it is never rate limited, never times out, never unimplemented), and the
    gateway must still map each one; everything else here is real (gRPC, TLS is
    not needed for the mapping)."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK

    async def GetOverview(
        self, request: analytics_service_pb2.GetOverviewRequest, context: grpc.aio.ServicerContext
    ) -> analytics_service_pb2.GetOverviewResponse:
        if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            await errors.resource_exhausted(context, "slow down", dt.timedelta(seconds=7))
        if self.code == grpc.StatusCode.INVALID_ARGUMENT:
            await errors.invalid_argument(context, [("window.weeks", "too many")])
        await context.abort(self.code, f"refused with {self.code.name}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def refusing_gateway() -> AsyncIterator[tuple[RefusingAnalytics, httpx.AsyncClient]]:
    """The stand-in, and a client of the gateway in front of it: each test sets the code it answers."""
    refusing = RefusingAnalytics()
    server = grpc.aio.server()
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(refusing, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    analytics = PlainAnalyticsClient(f"127.0.0.1:{port}", None, ADMIN_TOKEN)
    http, task, url = await running_gateway(analytics)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            yield refusing, client
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
        await server.stop(None)


@pytest.mark.parametrize(
    ("code", "status"),
    [(code, status) for code, status in HTTP_STATUS.items() if code != grpc.StatusCode.CANCELLED]
    + [(grpc.StatusCode.INTERNAL, 502), (grpc.StatusCode.DATA_LOSS, 502), (grpc.StatusCode.UNKNOWN, 502)],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else str(value),
)
async def test_every_grpc_status_maps_to_its_http_status(
    refusing_gateway: tuple[RefusingAnalytics, httpx.AsyncClient], code: grpc.StatusCode, status: int
) -> None:
    refusing, client = refusing_gateway
    refusing.code = code
    answer = await client.get("/api/v1/stats/overview", headers=ADMIN)
    assert answer.status_code == status
    assert answer.json()["code"] == code.name
    assert answer.json()["error"]
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert answer.headers["retry-after"] == "7"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert answer.json()["field"] == "weeks"  # the REST name of window.weeks
