"""The public community page (`--community-page`) end to end: a simulated fleet reported through the
real ingest path, the real analytics server over TLS, and the gateway on a real port with its community
page on. Off by default; public when on, while the admin API keeps its token; its JSON and CSV agree
with each other and with what the analytics server answers to the same questions; served from the
gateway's copy (the analytics server may be stopped), kept when a refresh fails, 503 before the first
one succeeds; no cookies, nothing from elsewhere; and in Chromium, drawn with data."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from google.protobuf.message import Message
from playwright.async_api import Browser, Page, Request, Route, expect
from printernizer.stats.v1 import analytics_service_pb2 as api
from printernizer.stats.v1 import analytics_service_pb2_grpc
from printernizer_stats.agent.delivery import Uplink
from printernizer_stats.analytics.privacy import rounded
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import last_complete_week, parse_week
from printernizer_stats.demo.fleet import FleetPlan, build_fleet, report_fleet
from printernizer_stats.demo.services import free_port
from printernizer_stats.gateway.__main__ import build_parser
from printernizer_stats.gateway.community import COMBINED, TREND_WEEKS, CommunityFigures
from printernizer_stats.gateway.stats_api import AnalyticsClient
from printernizer_stats.sdk.i18n import disclosure_document
from sqlalchemy.engine import make_url

from .. import databases
from ..aggregation.conftest import ADMIN_TOKEN, TIMEOUT, running_server
from ..analytics.conftest import refresh_rollups, running_analytics
from ..disclosure_auditor import json_counts
from .conftest import ADMIN, REPORT_CSP_VIOLATIONS, running_community_gateway, screenshot

K = 5
CHARTS = [
    "installations",
    "version-migration",
    "app-versions",
    "deployment-modes",
    "countries",
    "printer-types",
    "features",
    "release-health",
]
PUBLIC_PATHS = [
    "/community",
    "/api/v1/community",
    "/api/v1/community/disclosure",
    *(f"/api/v1/community/{chart}.{kind}" for chart in CHARTS for kind in ("json", "csv")),
]


# --- the system ------------------------------------------------------------------------------------------


# The simulated fleet every test reads (the same in the whole test process: it is reported once).
PLAN = FleetPlan(60, 12, last_complete_week(dt.datetime.now(dt.UTC)))


async def reported_fleet(database_url: str) -> None:
    """The simulated fleet's reports, sent through the real TLS ingest into the SQLite
    database at `database_url`, with its rollups up to date."""
    base = Path(make_url(database_url).database or ".").parent
    # Every simulated installation sends from this one address: no per-peer limit.
    async with running_server(database_url, base / "ingest", peer_calls_per_second=0) as ingest:
        uplink = Uplink(f"localhost:{ingest.port}", str(base / "ingest" / "tls" / "ca.crt"))
        try:
            sent = await report_fleet(PLAN, uplink)
        finally:
            await uplink.close()
    assert not sent.failed, sent.failed
    await refresh_rollups(database_url)


async def stop(http: uvicorn.Server, task: asyncio.Task[None]) -> None:
    http.should_exit = True
    await asyncio.wait_for(task, 30)


@dataclass
class Community:
    url: str  # the gateway, with its community page on
    figures: CommunityFigures
    plan: FleetPlan
    ask: Callable[[str, Message], Awaitable[Any]]  # the analytics server, asked directly (the admin)
    stop_analytics: Callable[[], Awaitable[None]]


@pytest.fixture
async def community(tmp_path: Path) -> AsyncIterator[Community]:
    await databases.fill_once(f"sqlite:///{tmp_path / 'aggregation.db'}", reported_fleet)
    database_url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    async with contextlib.AsyncExitStack() as stack:
        analytics = contextlib.AsyncExitStack()  # closed by a test that stops the analytics server
        stack.push_async_callback(analytics.aclose)
        port, ca = await analytics.enter_async_context(
            running_analytics(database_url, tmp_path / "analytics-tls", min_group_size=K)
        )
        http, task, url, figures = await running_community_gateway(
            AnalyticsClient(f"localhost:{port}", ca, ADMIN_TOKEN)
        )
        stack.push_async_callback(stop, http, task)
        channel = grpc.aio.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
        stack.push_async_callback(channel.close)
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)

        async def ask(method: str, request: Message) -> Any:
            return await getattr(stub, method)(
                request, metadata=bearer_metadata(ADMIN_TOKEN), timeout=TIMEOUT
            )

        assert figures.published is not None, "the first refresh failed"
        yield Community(url, figures, PLAN, ask, analytics.aclose)


def csv_rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))


# --- off by default ------------------------------------------------------------------------------------


async def test_the_community_page_is_off_by_default(gateway: httpx.AsyncClient) -> None:
    for path in PUBLIC_PATHS:
        answer = await gateway.get(path)
        assert answer.status_code == 404, path
    schema = (await gateway.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if "community" in path]


@pytest.mark.processes
def test_the_option_is_off_unless_given_and_needs_the_admin_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATS_GATEWAY_COMMUNITY_PAGE", raising=False)
    assert build_parser().parse_args([]).community_page is False
    monkeypatch.setenv("STATS_GATEWAY_COMMUNITY_PAGE", "1")
    assert build_parser().parse_args([]).community_page is True
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STATS_GATEWAY_")}
    gateway = [sys.executable, "-m", "printernizer_stats.gateway"]
    help_text = subprocess.run(
        [*gateway, "--help"], env=environment, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "--community-page" in help_text
    assert "STATS_GATEWAY_COMMUNITY_PAGE" in help_text
    for switch, variables in ((["--community-page"], {}), ([], {"STATS_GATEWAY_COMMUNITY_PAGE": "1"})):
        refused = subprocess.run(
            [*gateway, *switch, "--admin-token-file", "", "--agent-socket", str(tmp_path / "agent.sock")],
            env={**environment, **variables},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "gateway: --community-page needs --admin-token-file (the analytics server's figures)"
        )


# --- on: public, fixed, cached -------------------------------------------------------------------------


async def test_on_it_is_public_and_the_admin_api_still_needs_its_token(community: Community) -> None:
    async with httpx.AsyncClient(base_url=community.url, timeout=TIMEOUT) as client:
        for path in PUBLIC_PATHS:
            answer = await client.get(path)  # no credentials
            assert answer.status_code == 200, (path, answer.text)
            assert "set-cookie" not in answer.headers, path
            assert answer.headers["cache-control"] == "public, max-age=300", path
            assert answer.headers["content-security-policy"].startswith("default-src 'self'"), path
        assert (await client.get("/community")).headers["content-type"] == "text/html; charset=utf-8"
        assert (await client.get("/api/v1/community")).headers["content-type"] == "application/json"
        table = await client.get("/api/v1/community/countries.csv")
        assert table.headers["content-type"] == "text/csv; charset=utf-8"
        assert table.headers["content-disposition"] == 'attachment; filename="printernizer-countries.csv"'

        for path in ("/api/v1/stats/overview", "/api/v1/stats/export", "/api/v1/stats/distribution/country"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["cache-control"] == "no-store"
            answered = await client.get(path, headers=ADMIN)
            assert answered.status_code == 200, path
            assert answered.headers["cache-control"] == "no-store"
        # A wrong token on a community path changes nothing: it is not looked at.
        wrong = await client.get("/api/v1/community", headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 200


async def test_json_and_csv_agree_with_each_other_and_with_the_analytics_server(community: Community) -> None:
    async with httpx.AsyncClient(base_url=community.url, timeout=TIMEOUT) as client:
        everything = (await client.get("/api/v1/community")).json()
        charts = {chart["chart"]: chart for chart in everything["charts"]}
        assert list(charts) == CHARTS
        for name, chart in charts.items():
            alone = (await client.get(f"/api/v1/community/{name}.json")).json()
            assert alone == chart
            table = csv_rows((await client.get(f"/api/v1/community/{name}.csv")).content)
            assert table[0] == chart["columns"]
            assert table[1:] == [[str(row[column]) for column in chart["columns"]] for row in chart["rows"]]
            assert chart["rows"], f"{name} has no figures"
            assert chart["asOf"] == everything["asOf"]

    # The same questions, asked of the analytics server directly (as the admin), for the same weeks.
    until = parse_week(everything["until"]).to_proto()
    window = api.WeekWindow(weeks=TREND_WEEKS, until=until)

    async def distribution(dimension: api.Dimension.ValueType) -> list[tuple[Any, ...]]:
        answer = await community.ask(
            "GetDistribution", api.GetDistributionRequest(dimensions=[dimension], week=until)
        )
        return [
            (COMBINED if e.other else e.values[0].label, e.installations, e.share) for e in answer.entries
        ]

    trend = await community.ask("GetInstallationTrend", api.GetInstallationTrendRequest(window=window))
    migration = await community.ask("GetVersionMigration", api.GetVersionMigrationRequest(window=window))
    features = await community.ask("GetFeatureAdoption", api.GetFeatureAdoptionRequest(week=until))
    health = await community.ask(
        "GetReleaseHealth", api.GetReleaseHealthRequest(window=api.WeekWindow(weeks=4, until=until))
    )

    def week(w: Any) -> str:
        return f"{w.year}-W{w.week:02d}"

    expected = {
        "installations": [(week(w.week), w.known, w.active, w.new_installations) for w in trend.weeks],
        "app-versions": await distribution(api.DIMENSION_APP_VERSION),
        "version-migration": sorted(
            (
                (week(p.week), COMBINED if s.other else s.values[0].label, p.installations, p.share)
                for s in migration.series
                for p in s.points
                if not p.suppressed
            ),
            key=lambda row: row[0],
        ),
        "deployment-modes": await distribution(api.DIMENSION_DEPLOYMENT_MODE),
        "countries": await distribution(api.DIMENSION_COUNTRY),
        "printer-types": await distribution(api.DIMENSION_PRINTER_TYPE),
        "features": [(f.feature.label, f.enabled_installations, f.enabled_share) for f in features.features],
        "release-health": [
            (
                r.version.label,
                r.installations,
                r.installation_weeks,
                "" if r.crash_free_suppressed else r.crash_free_rate,
                r.job_success_rate,
                r.errors_per_installation,
            )
            for r in health.releases
        ],
    }
    for name, chart in charts.items():
        published = [tuple(row[column] for column in chart["columns"]) for row in chart["rows"]]
        assert published == expected[name], name
    assert [w["week"] for w in charts["installations"]["rows"]] == charts["installations"]["weeks"]
    assert len(charts["installations"]["weeks"]) == TREND_WEEKS
    assert charts["countries"]["weeks"] == [everything["until"]]

    # The fleet as published: its size rounded to k; every count a multiple of k.
    fleet = build_fleet(community.plan)
    last = community.plan.weeks - 1
    latest = charts["installations"]["rows"][-1]
    assert latest["known"] == rounded(len(fleet), K)
    assert latest["active"] == rounded(sum(i.first_index <= last <= i.last_index for i in fleet), K)
    assert everything["minGroupSize"] == K
    assert everything["until"] == str(community.plan.last_week)
    assert [(where, n) for where, n in json_counts(everything) if n % K] == []
    assert "Germany" in [row["country"] for row in charts["countries"]["rows"]]
    # The demo fleet's buggy patch is among the releases, in its last 4 weeks.
    assert "2.8.1" in [row["appVersion"] for row in charts["release-health"]["rows"]]


async def test_public_requests_are_answered_from_the_copy_which_a_failed_refresh_keeps(
    community: Community, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=community.url, timeout=TIMEOUT) as client:

        async def every_answer() -> dict[str, bytes]:
            answers = {}
            for path in PUBLIC_PATHS:
                answer = await client.get(path)
                assert answer.status_code == 200, (path, answer.text)
                answers[path] = answer.content
            return answers

        first = await every_answer()
        refreshes = community.figures.attempts
        for _ in range(5):
            assert await every_answer() == first
        assert community.figures.attempts == refreshes  # no request made the gateway ask

        await community.stop_analytics()
        assert await every_answer() == first  # the analytics server is gone: the copy is served

        as_of = json.loads(first["/api/v1/community"])["asOf"]
        with caplog.at_level(logging.WARNING, logger="printernizer_stats.gateway.community"):
            assert not await community.figures.refresh()
        assert "refreshing the figures failed (the analytics server answered UNAVAILABLE" in caplog.text
        assert f"still serving those fetched at {as_of}" in caplog.text
        assert await every_answer() == first
        assert community.figures.attempts == refreshes + 1


async def test_before_the_first_refresh_succeeds_the_figures_are_503_until_they_come(tmp_path: Path) -> None:
    """The analytics server is down when the gateway starts: 503 with Retry-After, the page is there;
    once the server is up, the next try (retry_seconds later) brings the figures."""
    port = free_port()
    tls = ensure_self_made(tmp_path / "analytics-tls")  # the analytics server's, made before it starts
    assert tls.ca_certificate is not None
    analytics = AnalyticsClient(f"localhost:{port}", tls.ca_certificate.read_bytes(), ADMIN_TOKEN)
    http, task, url, figures = await running_community_gateway(analytics, retry_seconds=0.5)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            assert figures.published is None
            for path in (
                "/api/v1/community",
                "/api/v1/community/countries.json",
                "/api/v1/community/countries.csv",
            ):
                answer = await client.get(path)
                assert answer.status_code == 503, path
                assert answer.json()["code"] == "UNAVAILABLE"
                assert "not available yet" in answer.json()["error"]
                assert answer.headers["retry-after"] == "1"  # the next try, 0.5 s away, in whole seconds
                assert answer.headers["cache-control"] == "no-store"
                assert "set-cookie" not in answer.headers
            page = await client.get("/community")
            assert page.status_code == 200
            assert 'id="unavailable"' in page.text  # what the page shows until there are figures
            assert (await client.get("/api/v1/community/disclosure")).status_code == 200  # not a figure
            assert (await client.get("/api/v1/community/nothing.json")).status_code == 404

            database_url = f"sqlite:///{tmp_path / 'empty.db'}"
            listen = f"127.0.0.1:{port}"
            async with running_analytics(
                database_url, tmp_path / "analytics-tls", min_group_size=K, listen=listen
            ):
                for _ in range(600):
                    if figures.published is not None:
                        break
                    await asyncio.sleep(0.1)
                answer = await client.get("/api/v1/community")
            assert answer.status_code == 200, answer.text
            assert answer.json()["minGroupSize"] == K
            assert answer.headers["cache-control"] == "public, max-age=300"
    finally:
        await stop(http, task)


async def test_the_content_is_fixed_unknown_charts_are_404(community: Community) -> None:
    async with httpx.AsyncClient(base_url=community.url, timeout=TIMEOUT) as client:
        for path in (
            "/api/v1/community/nothing.json",
            "/api/v1/community/nothing.csv",
            "/api/v1/community/countries.xml",
            "/api/v1/community/countries",
            "/api/v1/community/disclosure.json",
            "/api/v1/community/countries.json/more",
        ):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["code"] == "NOT_FOUND"
            assert answer.headers["cache-control"] == "no-store"
        # No one asks a question of their own: a parameter is refused, not silently ignored.
        for path, name in (
            ("/api/v1/community?weeks=52", "weeks"),
            ("/api/v1/community/countries.json?week=2026-W01", "week"),
            ("/api/v1/community/countries.csv?and=app-version", "and"),
            ("/api/v1/community/disclosure?lang=de", "lang"),
        ):
            answer = await client.get(path)
            assert answer.status_code == 400, path
            assert (answer.json()["code"], answer.json()["field"]) == ("INVALID_ARGUMENT", name)
        assert (await client.get("/community?utm_source=x")).status_code == 200  # a page ignores its query
        assert (await client.post("/api/v1/community")).status_code == 405
        assert (await client.delete("/api/v1/community/countries.json")).status_code == 405


async def test_the_page_and_its_assets_come_from_the_gateway_and_say_what_is_protected(
    community: Community,
) -> None:
    async with httpx.AsyncClient(base_url=community.url, timeout=TIMEOUT) as client:
        page = (await client.get("/community")).text
        assets = re.findall(r'<script src="([^"]+)"', page) + re.findall(r'<link[^>]* href="([^"]+)"', page)
        assert "/static/community.js" in assets
        own = [page]
        for asset in assets:
            assert asset.startswith("/static/"), asset
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
            assert "set-cookie" not in answer.headers
            if asset != "/static/vendor/plotly.min.js":  # the bundle: the browser test watches its requests
                own.append(answer.text)
        for text in own:
            assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w", text.replace("http://www.w3.org/", ""))
        links = re.findall(r'href="([^"]+)"', page)
        assert "#collected" in links  # what is collected and why, on the page
        assert "/api/v1/community/disclosure" in links
        assert "Groups of fewer than" in page
        assert "rounded to a multiple of" in page

        disclosure = (await client.get("/api/v1/community/disclosure")).json()
        assert disclosure == disclosure_document()
        assert any(item["field"] == "schema_version" for item in disclosure["fields"])

        schema = (await client.get("/openapi.json")).json()
        public = {path: ops for path, ops in schema["paths"].items() if path.startswith("/api/v1/community")}
        assert set(public) == {
            "/api/v1/community",
            "/api/v1/community/disclosure",
            "/api/v1/community/{chart}.json",
            "/api/v1/community/{chart}.csv",
        }
        for path, operations in public.items():
            responses = operations["get"]["responses"]
            assert {"400", "404", "503"} <= set(responses), path
            assert not {"401", "403", "409", "429", "502"} & set(responses), (
                path
            )  # no credentials, no backend
            assert "422" not in responses
            assert "security" not in operations["get"]
        assert "text/csv" in public["/api/v1/community/{chart}.csv"]["get"]["responses"]["200"]["content"]
        assert "401" in schema["paths"]["/api/v1/stats/overview"]["get"]["responses"]


# --- in Chromium ----------------------------------------------------------------------------------------


@dataclass
class Watch:
    """What a page did that it should not: console errors (CSP violations are reported there too),
    uncaught exceptions, requests off the gateway."""

    problems: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)


async def open_page(browser: Browser, origin: str) -> tuple[Page, Watch]:
    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    watch = Watch()

    async def only_the_gateway(route: Route, request: Request) -> None:
        if request.url.startswith(f"{origin}/"):
            await route.continue_()
        else:
            watch.foreign_requests.append(request.url)
            await route.abort()

    await context.route("**/*", only_the_gateway)
    await context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = await context.new_page()
    page.on("console", lambda m: watch.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: watch.problems.append(f"uncaught: {error}"))
    return page, watch


async def test_the_page_draws_every_chart_in_chromium(community: Community, browser: Browser) -> None:
    page, watch = await open_page(browser, community.url)
    await page.goto(f"{community.url}/community")
    await page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    await expect(page.locator("body")).to_have_attribute("data-state", "loaded")
    for chart in CHARTS:
        target = page.locator(f"#chart-{chart}")
        await expect(target).to_have_attribute("data-state", "drawn")
        assert await target.locator(".main-svg .trace").count() > 0, chart
        links = page.locator(f"figure[data-chart={chart}] .downloads a")
        assert await links.evaluate_all("links => links.map(a => a.getAttribute('href'))") == [
            f"/api/v1/community/{chart}.json",
            f"/api/v1/community/{chart}.csv",
        ]
    assert "Germany" in await page.locator("#chart-countries .ytick text").all_text_contents()
    assert "2.8.2" in await page.locator("#chart-app-versions .xtick text").all_text_contents()
    await expect(page.locator("#as-of")).to_contain_text(f"complete weeks up to {community.plan.last_week}")
    await expect(page.locator("#as-of")).to_contain_text("refreshed hourly")
    await expect(page.locator("#privacy-note")).to_contain_text(f"Groups of fewer than {K} installations")
    await expect(page.locator("#privacy-note")).to_contain_text(f"rounded to a multiple of {K}")
    await expect(page.locator("#unavailable")).to_be_hidden()
    await expect(page.locator("#never-collected")).to_contain_text("IP addresses")
    await expect(page.locator("#disclosure-fields tr").first).to_contain_text("schema_version")
    await screenshot(page, "community.png")
    assert watch.problems == []
    assert watch.foreign_requests == []
    cookies = await page.context.cookies()
    assert cookies == []


async def test_the_page_says_when_there_are_no_figures_yet(browser: Browser) -> None:
    analytics = AnalyticsClient(f"localhost:{free_port()}", None, ADMIN_TOKEN)  # nothing there
    http, task, url, _ = await running_community_gateway(analytics)
    try:
        page, watch = await open_page(browser, url)
        await page.goto(f"{url}/community")
        await page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
        await expect(page.locator("body")).to_have_attribute("data-state", "unavailable")
        await expect(page.locator("#unavailable")).to_be_visible()
        await expect(page.locator("#unavailable")).to_contain_text("not available yet")
        await expect(page.locator("#disclosure-fields tr").first).to_contain_text("schema_version")
        await screenshot(page, "community-not-available-yet.png")
        # The browser reports the 503 itself; nothing else may go wrong.
        assert [p for p in watch.problems if "status of 503" not in p] == []
        assert watch.foreign_requests == []
    finally:
        await stop(http, task)
