"""The gateway folder's harness, and the gateway's test harness for the other folders: the gateway on a
real port in this process (`running_gateway`; `stats_gateway` and the `gateway` fixture put it in front
of the analytics and aggregation servers), and Chromium driven by Playwright (the `browser` fixture,
with `screenshot` and the script that reports Content-Security-Policy violations). Other folders
import what they use from here (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright
from printernizer_stats.demo.services import free_port
from printernizer_stats.gateway.app import create_app
from printernizer_stats.gateway.community import RETRY_SECONDS, CommunityFigures
from printernizer_stats.gateway.stats_api import AnalyticsClient
from printernizer_stats.sdk.local import AsyncLocalAgent

from ..aggregation.conftest import (  # the fixtures the `gateway` fixture stands on
    ADMIN_TOKEN,
    TIMEOUT,
    Installation,
    RunningServer,
    database_url,
    report_of,
    server,
)
from ..analytics.conftest import last_week, refresh_rollups, running_analytics
from ..conftest import ROOT

__all__ = ["database_url", "server"]  # fixtures used here

# --- the gateway on a real port, in this process ---------------------------------------------------------

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def running_gateway(
    analytics: AnalyticsClient | None, agent: AsyncLocalAgent | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """The gateway on a real port (uvicorn), in this process."""
    port = free_port()
    app = create_app(analytics, agent)
    http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(http.serve())
    while not http.started:
        await asyncio.sleep(0.02)
    return http, task, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def stats_gateway(server: RunningServer, tls_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Three installations' reports (last week, Germany) through `server`, the analytics server over
    its database (k = 2) and the gateway in front of it: a client of the gateway."""
    for _ in range(3):
        agent = Installation(uuid.uuid4().bytes)
        await server.stub.SubmitReports(agent.submission(report_of(agent, last_week())), timeout=TIMEOUT)
    await refresh_rollups(server.database_url)
    async with running_analytics(server.database_url, tls_dir, min_group_size=2) as (port, ca):
        http, task, url = await running_gateway(AnalyticsClient(f"localhost:{port}", ca, ADMIN_TOKEN))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                yield client
        finally:
            http.should_exit = True
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def gateway(server: RunningServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with stats_gateway(server, tmp_path / "tls") as client:
        yield client


# --- Chromium, through Playwright -------------------------------------------------------------------------

CHROMIUM = os.environ.get("STATS_TEST_CHROMIUM", "/usr/bin/chromium")
# As root, in a sandbox with no network: no sandboxing of its own, no GPU, no
# calls home (Chromium's background services would try to reach Google).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("STATS_TEST_SCREENSHOTS", ROOT / "build" / "screenshots"))
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        if "STATS_TEST_CHROMIUM" in os.environ:
            pytest.fail(f"$STATS_TEST_CHROMIUM is {CHROMIUM}, which does not exist")
        pytest.skip(f"no Chromium at {CHROMIUM}; .ci/run installs Debian's chromium package")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / name, full_page=True)


# --- the gateway with its public community page on --------------------------------------------------------


async def running_community_gateway(
    analytics: AnalyticsClient, retry_seconds: float = RETRY_SECONDS
) -> tuple[uvicorn.Server, asyncio.Task[None], str, CommunityFigures]:
    """The gateway with `--community-page` on a real port, in this process, returned once its first
    refresh of the community figures has been tried (successful or not). It refreshes hourly after a
    success, `retry_seconds` after a failure; a test may call `figures.refresh()` itself."""
    figures = CommunityFigures(analytics, retry_seconds=retry_seconds)
    port = free_port()
    app = create_app(analytics, community=figures)
    http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(http.serve())
    while not http.started or not figures.attempts:
        await asyncio.sleep(0.02)
    return http, task, f"http://127.0.0.1:{port}", figures
