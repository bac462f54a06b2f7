"""The gateway's local privacy API end to end: a real HTTP server (uvicorn) in
front of a real agent on its Unix socket. The API and its page are the SDK's
router (Printernizer's paths and shapes, tests/sdk/test_privacy_router.py);
here, that the gateway serves them: every endpoint, the gateway's loopback-only
rule in front of them, the router's own rules, and errors in the gateway's shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.demo.services import free_port
from printernizer_stats.gateway.stats_api import AnalyticsClient
from printernizer_stats.gateway.usage_api import local_agent

from ..agent_harness import RunningAgent, agent, agent_dir
from .conftest import running_gateway

__all__ = ["agent", "agent_dir"]  # fixtures used here
BASE = "/api/v1/usage-stats"


@pytest.fixture
async def local(agent: RunningAgent) -> AsyncIterator[httpx.AsyncClient]:
    # The statistics side is not used here.
    unused = AnalyticsClient(f"localhost:{free_port()}", None, "t" * 40)
    http, task, url = await running_gateway(unused, local_agent(str(agent.socket_path)))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_the_whole_privacy_journey(local: httpx.AsyncClient) -> None:
    status = (await local.get(f"{BASE}/status")).json()
    assert (status["service_available"], status["opted_in"]) == (True, False)
    before = (await local.get(f"{BASE}/local")).json()
    assert (before["opt_in_status"], before["installation_id"]) == ("disabled", "not_generated")
    disclosure = (await local.get(f"{BASE}/disclosure")).json()
    assert disclosure["schemaVersion"] == CURRENT_SCHEMA_VERSION
    assert "installation.country" in {f["field"] for f in disclosure["fields"]}
    assert disclosure["freeTextFields"] == []  # what makes "never collected" true
    assert any("IP addresses" in line for line in disclosure["neverCollected"])

    joined = await local.post(f"{BASE}/opt-in", json={"schema_version": CURRENT_SCHEMA_VERSION})
    assert joined.status_code == 200, joined.text
    assert joined.json()["success"] is True
    details = (await local.get(f"{BASE}/details")).json()
    assert details["stats"]["consent"]["effective"] == "CONSENT_STATE_SHARING"
    assert (
        details["stats"]["consent"]["consentedSchemaVersion"]
        == f"REPORT_SCHEMA_VERSION_{CURRENT_SCHEMA_VERSION}"
    )
    preview = (await local.get(f"{BASE}/preview")).json()
    assert preview["report"]  # the exact bytes, base64
    assert "installation" in json.loads(preview["reportJson"])
    assert (await local.get(f"{BASE}/ledger")).status_code == 200

    export = await local.get(f"{BASE}/export")
    assert export.headers["content-disposition"].startswith("attachment;")
    assert {"export_version", "settings", "events"} <= set(export.json())

    left = await local.post(f"{BASE}/opt-out")  # no body: as Printernizer's own page sends it
    assert left.json()["success"] is True
    assert (await local.get(f"{BASE}/local")).json()["opt_in_status"] == "disabled"
    deleted = await local.delete(BASE)
    assert deleted.status_code == 200
    assert deleted.json()["success"] is True


async def test_changes_from_another_site_and_unknown_versions_are_refused(local: httpx.AsyncClient) -> None:
    # What a cross-site form could send: refused before the agent is asked.
    form = await local.request(
        "DELETE", BASE, content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    cross_site = await local.post(f"{BASE}/opt-in", json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert (cross_site.status_code, cross_site.json()["code"]) == (403, "PERMISSION_DENIED")
    too_new = await local.post(f"{BASE}/opt-in", json={"schema_version": CURRENT_SCHEMA_VERSION + 1})
    assert too_new.status_code == 400
    assert too_new.json()["error"].startswith("schema_version")
    assert (await local.get(f"{BASE}/local")).json()["opt_in_status"] == "disabled"


async def test_only_loopback_host_names_are_answered(local: httpx.AsyncClient) -> None:
    rebound = await local.get(f"{BASE}/local", headers={"Host": "evil.example"})
    assert rebound.status_code == 403
    assert rebound.json()["code"] == "PERMISSION_DENIED"
    assert (await local.get(f"{BASE}/local", headers={"Host": "localhost:8470"})).status_code == 200


async def test_the_privacy_page_is_the_sdks_and_served_on_loopback_only(local: httpx.AsyncClient) -> None:
    moved = await local.get("/privacy", params={"lang": "de"})
    assert (moved.status_code, moved.headers["location"]) == (307, f"{BASE}/page?lang=de")
    assert (await local.get("/privacy")).headers["location"] == f"{BASE}/page"
    page = await local.get("/privacy", follow_redirects=True)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("privacy.js", "privacy.css"):
        assert (await local.get(f"{BASE}/page/{asset}")).status_code == 200
    german = await local.get(f"{BASE}/page", headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert german.headers["content-language"] == "de"
    for path in ("/privacy", f"{BASE}/page", f"{BASE}/page/privacy.js"):
        assert (await local.get(path, headers={"Host": "evil.example"})).status_code == 403, path


async def test_without_an_agent_there_is_no_privacy_page_or_api() -> None:
    unused = AnalyticsClient(f"localhost:{free_port()}", None, "t" * 40)
    http, task, url = await running_gateway(unused)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            answers = [
                (await client.get(path)).status_code for path in ("/privacy", f"{BASE}/local", f"{BASE}/page")
            ]
            dashboard = (await client.get("/dashboard")).status_code
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert answers == [404, 404, 404]
    assert dashboard == 200


async def test_beside_one_installation_only_the_privacy_side_is_served(agent: RunningAgent) -> None:
    http, task, url = await running_gateway(None, local_agent(str(agent.socket_path)))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            home = await client.get("/")
            served = [
                (await client.get(path, follow_redirects=True)).status_code
                for path in ("/privacy", f"{BASE}/local")
            ]
            absent = [
                (await client.get(path)).status_code for path in ("/dashboard", "/api/v1/stats/overview")
            ]
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert home.headers["location"] == "/privacy"
    assert served == [200, 200]
    assert absent == [404, 404]


async def test_an_agent_that_is_down_is_503() -> None:
    unused = AnalyticsClient(f"localhost:{free_port()}", None, "t" * 40)
    http, task, url = await running_gateway(unused, local_agent("/nonexistent/agent.sock"))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            answer = await client.get(f"{BASE}/local")
            status = await client.get(f"{BASE}/status")
            health = await client.get("/health")
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert answer.status_code == 503
    assert answer.json()["code"] == "UNAVAILABLE"
    assert status.status_code == 200  # Printernizer's /status answers anyway
    assert status.json()["service_available"] is False
    assert health.status_code == 503
    assert "agent" in health.json()["down"]
