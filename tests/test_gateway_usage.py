"""The gateway's local privacy API end to end: a real HTTP server (uvicorn) in
front of a real agent on its Unix socket. Every endpoint, the loopback-only
and JSON-only rules, and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.demo.services import free_port
from printernizer_stats.gateway.stats_api import Analytics
from printernizer_stats.gateway.usage_api import Agent

from .agent_harness import RunningAgent, agent, agent_dir
from .test_gateway_stats import running_gateway

__all__ = ["agent", "agent_dir"]  # fixtures used here
BASE = "/api/v1/usage-stats"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def local(agent: RunningAgent) -> AsyncIterator[httpx.AsyncClient]:
    unused = Analytics(f"localhost:{free_port()}", None, "t" * 40)  # the statistics side is not used here
    http, task, url = await running_gateway(unused, Agent(str(agent.socket_path)))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_the_whole_privacy_journey(local: httpx.AsyncClient) -> None:
    before = (await local.get(f"{BASE}/local")).json()
    assert before["stats"]["consent"]["effective"] == "CONSENT_STATE_LOCAL_ONLY"
    disclosure = (await local.get(f"{BASE}/disclosure")).json()
    assert disclosure["schemaVersion"] == CURRENT_SCHEMA_VERSION
    assert "installation.country" in {f["field"] for f in disclosure["fields"]}
    assert disclosure["freeTextFields"] == []  # what makes "never collected" true
    assert any("IP addresses" in line for line in disclosure["neverCollected"])

    joined = await local.post(f"{BASE}/opt-in", json={"schema_version": CURRENT_SCHEMA_VERSION})
    assert joined.status_code == 200, joined.text
    assert joined.json()["consent"]["effective"] == "CONSENT_STATE_SHARING"
    preview = (await local.get(f"{BASE}/preview")).json()
    assert preview["report"]  # the exact bytes, base64
    assert "installation" in json.loads(preview["reportJson"])
    assert (await local.get(f"{BASE}/ledger")).status_code == 200

    export = await local.get(f"{BASE}/export")
    assert export.headers["content-disposition"].startswith("attachment;")
    assert "pages" in export.json()

    left = await local.post(f"{BASE}/opt-out", json={})
    assert left.json()["consent"]["effective"] == "CONSENT_STATE_LOCAL_ONLY"
    deleted = await local.post(f"{BASE}/delete-all", json={})
    assert deleted.status_code == 200


async def test_changes_need_a_json_body_and_a_known_version(local: httpx.AsyncClient) -> None:
    # What a cross-site form could send: refused before the agent is asked.
    form = await local.post(
        f"{BASE}/delete-all", content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    too_new = await local.post(f"{BASE}/opt-in", json={"schema_version": CURRENT_SCHEMA_VERSION + 1})
    assert (too_new.status_code, too_new.json()["field"]) == (400, "schema_version")
    assert (await local.get(f"{BASE}/local")).json()["stats"]["consent"][
        "effective"
    ] == "CONSENT_STATE_LOCAL_ONLY"


async def test_only_loopback_host_names_are_answered(local: httpx.AsyncClient) -> None:
    rebound = await local.get(f"{BASE}/local", headers={"Host": "evil.example"})
    assert rebound.status_code == 403
    assert rebound.json()["code"] == "PERMISSION_DENIED"
    assert (await local.get(f"{BASE}/local", headers={"Host": "localhost:8470"})).status_code == 200


async def test_the_privacy_page_is_served_on_loopback_only(local: httpx.AsyncClient) -> None:
    page = await local.get("/privacy")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert (await local.get("/privacy", headers={"Host": "evil.example"})).status_code == 403


async def test_without_an_agent_there_is_no_privacy_page_or_api() -> None:
    unused = Analytics(f"localhost:{free_port()}", None, "t" * 40)
    http, task, url = await running_gateway(unused)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            answers = [(await client.get(path)).status_code for path in ("/privacy", f"{BASE}/local")]
            dashboard = (await client.get("/dashboard")).status_code
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert answers == [404, 404]
    assert dashboard == 200


async def test_beside_one_installation_only_the_privacy_side_is_served(agent: RunningAgent) -> None:
    http, task, url = await running_gateway(None, Agent(str(agent.socket_path)))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            home = await client.get("/")
            served = [(await client.get(path)).status_code for path in ("/privacy", f"{BASE}/local")]
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
    unused = Analytics(f"localhost:{free_port()}", None, "t" * 40)
    http, task, url = await running_gateway(unused, Agent("/nonexistent/agent.sock"))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            answer = await client.get(f"{BASE}/local")
            health = await client.get("/health")
    finally:
        http.should_exit = True
        await asyncio.wait_for(task, 30)
    assert answer.status_code == 503
    assert answer.json()["code"] == "UNAVAILABLE"
    assert health.status_code == 503
    assert "agent" in health.json()["down"]
