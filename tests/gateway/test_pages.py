"""The gateway's two pages in a real browser (the dashboard, and at /privacy the
SDK's privacy page that the gateway serves): Debian's Chromium, driven by Playwright,
against the whole system running in this process (a simulated fleet reported
through the real ingest path, the analytics server, a real agent and the
gateway). Every request the browser makes is checked to stay on the gateway's
origin, and any console error or Content-Security-Policy violation fails the
test. Screenshots go to build/screenshots (or $STATS_TEST_SCREENSHOTS)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Request, Route, expect
from printernizer.stats.v1 import agent_service_pb2, aggregated_stats_pb2
from printernizer_stats.analytics.privacy import rounded
from printernizer_stats.demo.fleet import build_fleet

from ..agent_harness import RPC_TIMEOUT
from ..system_harness import RunningSystem, running_system
from .conftest import REPORT_CSP_VIOLATIONS, screenshot

CHARTS = [
    "chart-installations",
    "chart-deployment",
    "chart-versions",
    "chart-countries",
    "chart-printers",
    "chart-features",
    "chart-errors",
    "chart-migration",
    "chart-jobs",
    "chart-durations",
    "chart-failures",
    "chart-printer-jobs",
    "chart-stability",
    "chart-files",
    "chart-deployment-errors",
    "chart-features-by-version",
]


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[RunningSystem]:
    async with running_system(tmp_path) as running:
        yield running


@dataclass
class Watch:
    """What a page did that it should not: console errors (CSP violations are
    reported there too), uncaught exceptions, requests off the gateway."""

    problems: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)


async def open_page(browser: Browser, origin: str) -> tuple[Page, Watch]:
    context = await browser.new_context(accept_downloads=True, viewport={"width": 1300, "height": 900})
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


def expected_installations(system: RunningSystem) -> tuple[int, int]:
    """(known, active in the last week) of the simulated fleet, as published:
    rounded to a multiple of k (docs/privacy.md)."""
    fleet = build_fleet(system.plan)
    last = system.plan.weeks - 1
    active = sum(i.first_index <= last <= i.last_index for i in fleet)
    return rounded(len(fleet), system.min_group_size), rounded(active, system.min_group_size)


async def wait_for_deletion_receipt(system: RunningSystem, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        ledger = await system.agent.stub.ListSentReports(
            agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT
        )
        if ledger.deletion_receipts:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the agent never received the server's deletion receipt")


async def test_the_dashboard_draws_the_fleet_and_its_anomalies(
    system: RunningSystem, browser: Browser
) -> None:
    page, watch = await open_page(browser, system.url)
    await page.goto(f"{system.url}/dashboard")

    await page.fill("#token", "not-the-admin-token-" + "y" * 30)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#sign-in-error")).to_contain_text("not accepted")
    await expect(page.locator("#dashboard")).to_be_hidden()
    await screenshot(page, "dashboard-wrong-token.png")
    watch.problems = [p for p in watch.problems if "401" not in p]  # the refused calls themselves

    await page.fill("#token", system.token)
    await page.click("#sign-in button[type=submit]")
    await page.wait_for_selector("body[data-loaded=true]", timeout=30_000)

    known, active = expected_installations(system)
    await expect(page.locator("#kpi-total")).to_have_text(str(known))
    await expect(page.locator("#kpi-active-week")).to_have_text(str(active))
    rounding = f"rounded to a multiple of {system.min_group_size}"
    await expect(page.locator("#privacy-note")).to_contain_text(rounding)
    for chart in CHARTS:
        await expect(page.locator(f"#{chart}")).to_have_attribute("data-state", "drawn")
        assert await page.locator(f"#{chart} .main-svg .trace").count() > 0, chart
    versions = await page.locator("#chart-versions .xtick text").all_text_contents()
    assert "2.8.2" in versions  # the upgrade wave's latest version leads
    assert "Germany" in await page.locator("#chart-countries .ytick text").all_text_contents()

    # The buggy patch's spike, the fleet's only critical one.
    spike = page.locator("#anomaly-list li[data-kind=ANOMALY_KIND_VERSION_ERROR_SPIKE]", has_text="2.8.1")
    await expect(spike.locator(".severity")).to_have_class("severity critical")
    # The same patch's planted regression (crashes, failed jobs) against the release before it: flagged
    # in release health and raised as an anomaly; the fix after it is not.
    await expect(page.locator('#release-health tr[data-version="2.8.1"] td.regressed').first).to_be_visible()
    assert await page.locator('#release-health tr[data-version="2.8.2"] td.regressed').count() == 0
    regression = page.locator("#anomaly-list li[data-kind=ANOMALY_KIND_RELEASE_REGRESSION]", has_text="2.8.1")
    await expect(regression.first).to_be_visible()

    async with page.expect_download() as download_info:
        await page.click("#export")
    download = await download_info.value
    assert download.suggested_filename == "printernizer-usage-statistics.json"
    export = json.loads(Path(await download.path()).read_text())
    assert export["overview"]["active"]["totalKnown"] == str(known)
    assert "2.8.1" in [r["version"]["label"] for r in export["releaseHealth"]["releases"]]
    assert export["usage"]["weeks"]
    assert export["featureAdoptionByVersion"]["versions"]

    await screenshot(page, "dashboard.png")
    assert watch.problems == []
    assert watch.foreign_requests == []


async def test_the_privacy_page_shares_shows_exports_and_deletes(
    system: RunningSystem, browser: Browser
) -> None:
    page, watch = await open_page(browser, system.url)
    await page.goto(f"{system.url}/privacy")  # leads to the SDK's page, /api/v1/usage-stats/page
    await page.wait_for_selector("body[data-loaded=true]")
    assert page.url.startswith(f"{system.url}/api/v1/usage-stats/page"), page.url
    await expect(page.locator("body")).to_have_attribute("data-consent", "local-only")
    await expect(page.locator("#activity tbody tr")).to_have_count(12)
    await expect(page.locator("#disclosure tbody tr").first).to_contain_text("schema_version")
    await expect(page.locator("#never-collected")).to_contain_text("IP addresses")
    await expect(page.locator("#ledger-empty")).to_be_visible()
    # Four levels, each saying what it sends; none chosen until the user chooses.
    levels = page.locator("input[name=level]")
    await expect(levels).to_have_count(4)
    for level in await levels.all():
        await expect(level).not_to_be_checked()
    await expect(page.locator("#levels")).to_contain_text("which kinds of error happened")
    errors_row = page.locator("#disclosure tbody tr", has_text="errors.component").first
    await expect(errors_row.locator("td").last).to_have_text("Everything")  # the level it is shared from
    country_row = page.locator("#disclosure tbody tr", has_text="installation.country")
    await expect(country_row.locator("td").last).to_have_text("Basics")
    await screenshot(page, "privacy-before.png")

    await page.check("#sharing")  # no level chosen: everything, as before there were levels
    await expect(page.locator("body")).to_have_attribute("data-consent", "sharing")
    consent = (await system.agent.status()).consent
    assert consent.effective == agent_service_pb2.CONSENT_STATE_SHARING
    assert consent.level == aggregated_stats_pb2.CONSENT_LEVEL_ERRORS
    await expect(page.locator("input[name=level][value=errors]")).to_be_checked()
    await expect(page.locator("#preview-json")).to_contain_text('"schemaVersion"')

    # Choosing a level shares at it; the preview shows what it sends.
    await page.check("input[name=level][value=usage]")
    await expect(page.locator("body")).to_have_attribute("data-level", "usage")
    await expect(page.locator("#consent-message")).to_have_text("Sharing is now at the level “Usage”.")
    chosen = await system.agent.stub.GetConsent(agent_service_pb2.GetConsentRequest(), timeout=RPC_TIMEOUT)
    assert chosen.consent.level == aggregated_stats_pb2.CONSENT_LEVEL_USAGE
    assert chosen.consent.consented_schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
    await expect(page.locator("#preview-json")).to_contain_text('"consentLevel": "CONSENT_LEVEL_USAGE"')
    await expect(page.locator("#preview-json")).not_to_contain_text('"errors"')
    await expect(page.locator("#preview-intro")).to_contain_text("at the level “Usage”")
    await screenshot(page, "privacy-levels.png")

    # A week later the agent sends that week's report at the level chosen; the page lists it, receipt and all.
    system.clock.offset += dt.timedelta(days=8)
    sent = await system.agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
    assert len(sent.receipts) == 1, sent
    ledger = await system.agent.stub.ListSentReports(
        agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT
    )
    (report,) = [aggregated_stats_pb2.AggregatedStats.FromString(r.report) for r in ledger.reports]
    assert report.consent_level == aggregated_stats_pb2.CONSENT_LEVEL_USAGE
    await page.reload()
    await page.wait_for_selector("body[data-loaded=true]")
    await expect(page.locator("#ledger tbody tr")).to_have_count(1)
    await expect(page.locator("#ledger tbody tr")).to_contain_text("accepted")

    async with page.expect_download() as download_info:
        await page.click("#export")
    exported = json.loads(Path(await (await download_info.value).path()).read_text())
    assert exported["events"], exported
    assert len(exported["sent_reports"]) == 1, exported

    # Turning sharing off asks first; "Keep sharing" changes nothing.
    await page.click("#sharing")
    await page.click("#confirm-opt-out button[value=cancel]")
    await expect(page.locator("#sharing")).to_be_checked()
    assert (await system.agent.status()).consent.effective == agent_service_pb2.CONSENT_STATE_SHARING
    await page.click("#sharing")
    await screenshot(page, "privacy-confirm-opt-out.png")
    await page.click("#confirm-opt-out-button")
    await expect(page.locator("body")).to_have_attribute("data-consent", "local-only")
    # The agent sends the deletion request in the background; once the server
    # has confirmed it, the page lists the receipt.
    await wait_for_deletion_receipt(system)
    await page.reload()
    await expect(page.locator("#deletions")).to_contain_text("the server deleted 1 report(s)")

    # Deleting asks first too; cancelling keeps every event.
    stored = (await system.agent.status()).stored_events
    assert stored > 0
    await page.click("#delete")
    await page.click("#confirm-delete button[value=cancel]")
    assert (await system.agent.status()).stored_events == stored
    await page.click("#delete")
    await page.click("#confirm-delete-button")
    await expect(page.locator("#data-message")).to_contain_text(f"Deleted {stored} event(s)")
    assert (await system.agent.status()).stored_events == 0
    await screenshot(page, "privacy-after-delete.png")

    assert watch.problems == []
    assert watch.foreign_requests == []
