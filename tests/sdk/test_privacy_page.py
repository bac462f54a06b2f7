"""The SDK's privacy page in a real browser (Debian's Chromium, driven by
Playwright), served by the SDK's router inside a Printernizer-like app under a
strict Content-Security-Policy, over a real agent process: it loads in German,
switches sharing on and off, and deletes. Any console error or CSP violation
fails the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Request, Response
from playwright.async_api import Browser, expect
from printernizer_stats.demo.services import free_port
from printernizer_stats.sdk.local import AsyncLocalAgent

from ..agent_harness import agent_dir, agent_process
from ..gateway.conftest import REPORT_CSP_VIOLATIONS, browser, screenshot
from .conftest import PREFIX, printernizer_app, record_this_week

__all__ = ["agent_dir", "browser"]  # fixtures used here
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
)


@asynccontextmanager
async def serving(socket_path: Path) -> AsyncIterator[str]:
    app = printernizer_app(AsyncLocalAgent(socket_path, raise_errors=True))

    @app.middleware("http")
    async def strict(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = STRICT_CSP
        return response

    port = free_port()
    http = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(http.serve())
    while not http.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_the_page_in_a_browser_in_german(browser: Browser, agent_dir: Path) -> None:
    async with agent_process(agent_dir) as agent:
        await record_this_week(agent)
        async with serving(agent.socket_path) as origin:
            context = await browser.new_context(locale="de-DE")
            page = await context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            await page.add_init_script(REPORT_CSP_VIOLATIONS)
            await page.goto(f"{origin}{PREFIX}/page")
            await expect(page.locator("body[data-loaded=true]")).to_be_attached(timeout=15000)
            await expect(page.locator("h1")).to_have_text("Nutzungsstatistiken")
            await expect(page.locator("#consent-state")).to_contain_text("Das Teilen ist aus")
            await expect(page.locator("#disclosure tbody tr").first).to_be_visible()
            await expect(page.locator("#never-collected")).to_contain_text("IP-Adressen")
            await expect(page.locator("#activity tbody tr")).to_have_count(12)
            await screenshot(page, "sdk-privacy-de.png")

            await page.locator("#sharing").check()
            await expect(page.locator("body[data-consent=sharing]")).to_be_attached()
            await expect(page.locator("#consent-message")).to_have_text("Danke: Das Teilen ist an.")
            await expect(page.locator("input[name=level][value=errors]")).to_be_checked()
            await expect(page.locator("#levels legend")).to_have_text("Wie viel geteilt wird")
            await page.locator("input[name=level][value=basics]").check()
            await expect(page.locator("#consent-message")).to_have_text(
                "Das Teilen ist jetzt auf der Stufe „Grunddaten“."
            )
            await expect(page.locator("body[data-level=basics]")).to_be_attached()

            await page.locator("#sharing").click()  # stays on until confirmed
            await page.locator("#confirm-opt-out-button").click()
            await expect(page.locator("body[data-consent=local-only]")).to_be_attached()

            await page.locator("#delete").click()
            await page.locator("#confirm-delete-button").click()
            await expect(page.locator("#data-message")).to_contain_text("7 Ereignis(se)")
            await context.close()
            assert problems == []
