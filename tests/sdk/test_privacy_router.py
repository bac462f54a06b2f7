"""The SDK's privacy router (printernizer_stats.sdk.fastapi) mounted as Printernizer
mounts its own, over a real agent process on its Unix socket: every request
Printernizer's frontend sends (tests/fixtures/printernizer_usage_stats_api.json,
captured from Printernizer v2.42.0's real router) gets the status, fields and
JSON types recorded there; the additions (preview, ledger, disclosure, details)
and the page in English and German."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION, NEVER_COLLECTED
from printernizer_stats.sdk.local import AsyncLocalAgent

from ..agent_harness import (
    AgentProcess,
    agent_dir,
    agent_process,
)
from .conftest import FIXTURE, PREFIX, printernizer_app, record_this_week

__all__ = ["agent_dir"]  # fixtures used here
ENDPOINTS: dict[str, dict[str, Any]] = {endpoint["id"]: endpoint for endpoint in FIXTURE["endpoints"]}
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


@asynccontextmanager
async def printernizer(socket_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Printernizer's API, reached as its frontend reaches it: from the LAN, by its own host name."""
    app = printernizer_app(AsyncLocalAgent(socket_path, raise_errors=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://192.168.1.20:8000", timeout=20
    ) as client:
        yield client


@pytest.fixture
async def agent(agent_dir: Path) -> AsyncIterator[AgentProcess]:
    async with agent_process(agent_dir) as running:
        yield running


async def frontend(client: httpx.AsyncClient, endpoint: str, path: str | None = None) -> httpx.Response:
    """The request usage-statistics.js sends: its method and path, no body, no Content-Type."""
    recorded = ENDPOINTS[endpoint]
    assert recorded["frontend"]["request"]["body"] is None
    request = client.build_request(recorded["method"], path or recorded["path"])
    assert "content-type" not in request.headers
    assert request.content == b""
    return await client.send(request)


def assert_shape(endpoint: str, answer: httpx.Response, status: int = 200) -> dict[str, Any]:
    """Status, media type, and every field the fixture records as required, with its JSON type."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].split(";")[0] == ENDPOINTS[endpoint]["response_media_type"]
    body = answer.json()
    assert isinstance(body, dict)
    check_fields(ENDPOINTS[endpoint]["response_fields"], body, endpoint)
    return body


def check_fields(fields: dict[str, Any], body: dict[str, Any], where: str) -> None:
    for name, spec in fields.items():
        if not spec["required_in_response"] and name not in body:
            continue
        assert name in body, f"{where}: {name} missing from {body}"
        kinds = spec["json_type"] if isinstance(spec["json_type"], list) else [spec["json_type"]]
        value = body[name]
        allowed = tuple(t for kind in kinds for t in JSON_TYPES[kind])
        # JSON's integer is not its boolean (Python's bool is an int).
        wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        assert not wrong, f"{where}: {name} = {value!r} is not {kinds}"
        if "fields" in spec:
            check_fields(spec["fields"], value, f"{where}.{name}")


async def test_every_request_of_printernizers_frontend_gets_its_recorded_shape(agent: AgentProcess) -> None:
    async with printernizer(agent.socket_path) as api:
        fresh = assert_shape("status", await frontend(api, "status"))
        assert fresh == {
            "service_available": True,
            "opted_in": False,
            "total_events": 0,
            "collection_active": True,
        }
        local = assert_shape("local", await frontend(api, "local"))
        assert (local["installation_id"], local["opt_in_status"], local["first_seen"]) == (
            "not_generated",
            "disabled",
            None,
        )
        assert local["this_week"] == {"job_count": 0, "file_count": 0, "error_count": 0}

        stored = await record_this_week(agent)
        joined = assert_shape("opt_in", await frontend(api, "opt_in"))
        assert joined["success"] is True
        assert joined["message"]
        installation = str(uuid.UUID(joined["installation_id"], version=4))
        again = assert_shape("opt_in", await frontend(api, "opt_in"))  # idempotent: the same identity
        assert again["installation_id"] == installation
        with_body = await api.post(f"{PREFIX}/opt-in", json={"schema_version": CURRENT_SCHEMA_VERSION})
        assert assert_shape("opt_in", with_body)["installation_id"] == installation

        sharing = assert_shape("status", await frontend(api, "status"))
        assert (sharing["opted_in"], sharing["total_events"]) == (True, stored)
        local = assert_shape("local", await frontend(api, "local"))
        assert (local["installation_id"], local["opt_in_status"], local["total_events"]) == (
            installation,
            "enabled",
            stored,
        )
        # Printernizer's counts: completed + failed jobs, downloads only, errors.
        assert local["this_week"] == {"job_count": 3, "file_count": 0, "error_count": 2}
        assert dt.datetime.fromisoformat(local["first_seen"]).tzinfo is None  # naive UTC, as Printernizer's

        export = await frontend(api, "export")
        exported = assert_shape("export", export)
        for name, value in ENDPOINTS["export"]["response_headers"].items():
            assert export.headers[name] == value
        assert len(exported["events"]) == stored
        check_fields(
            ENDPOINTS["export"]["response_fields"]["events"]["items"], exported["events"][0], "event"
        )
        assert {e["event_type"] for e in exported["events"]} >= {"job_completed", "error_occurred"}
        assert exported["installation_id"] == installation

        left = assert_shape("opt_out", await frontend(api, "opt_out"))
        assert (left["success"], left["installation_id"]) == (True, None)
        assert assert_shape("status", await frontend(api, "status"))["opted_in"] is False

        deleted = assert_shape("delete_all", await frontend(api, "delete_all"))
        assert (deleted["success"], deleted["deleted_events"]) == (True, stored)
        empty = assert_shape("delete_all", await frontend(api, "delete_all"))
        assert empty["deleted_events"] == 0
        slash = await frontend(api, "delete_all", f"{PREFIX}/")
        assert slash.status_code == 404  # no trailing slash, as in Printernizer
        after = assert_shape("local", await frontend(api, "local"))
        assert (after["total_events"], after["first_seen"]) == (0, None)


async def test_delete_keeps_the_users_choice_to_share(agent: AgentProcess) -> None:
    """Printernizer's delete kept the opt-in; here too, under a new anonymous
    identity (the server is asked to delete the old one's reports)."""
    async with printernizer(agent.socket_path) as api:
        first = (await frontend(api, "opt_in")).json()["installation_id"]
        await record_this_week(agent)
        assert (await frontend(api, "delete_all")).json()["deleted_events"] > 0
        status = (await frontend(api, "status")).json()
        local = (await frontend(api, "local")).json()
    assert status["opted_in"] is True
    assert local["opt_in_status"] == "enabled"
    assert local["installation_id"] not in (first, "not_generated")


async def test_without_the_agent_every_answer_is_clear_and_none_is_a_500(agent_dir: Path) -> None:
    async with printernizer(agent_dir / "absent.sock") as api:
        status = assert_shape("status", await frontend(api, "status"))
        assert status == {
            "service_available": False,
            "opted_in": False,
            "total_events": 0,
            "collection_active": False,
        }
        for endpoint in ("local", "opt_in", "opt_out", "export", "delete_all"):
            answer = await frontend(api, endpoint)
            assert answer.status_code == 503, (endpoint, answer.text)
            body = answer.json()  # Printernizer's envelope, from its own handler
            assert (body["status"], body["error_code"]) == ("error", "HTTP_503")
            assert "Traceback" not in answer.text
        for path in ("/preview", "/ledger", "/details"):
            assert (await api.get(f"{PREFIX}{path}")).status_code == 503
        assert (await api.get(f"{PREFIX}/disclosure")).status_code == 200  # from the contract alone
        assert (await api.get(f"{PREFIX}/page")).status_code == 200


async def test_preview_ledger_details_and_disclosure(agent: AgentProcess) -> None:
    async with printernizer(agent.socket_path) as api:
        await record_this_week(agent)
        await frontend(api, "opt_in")
        preview = (await api.get(f"{PREFIX}/preview")).json()
        assert preview["report"]
        assert "installation" in json.loads(preview["reportJson"])
        assert (await api.get(f"{PREFIX}/preview", params={"week": "2026-W01"})).status_code in (200, 400)
        for bad in ("2025-W53", "W46", "2026-W46x"):
            assert (await api.get(f"{PREFIX}/preview", params={"week": bad})).status_code == 400
        ledger = (await api.get(f"{PREFIX}/ledger", params={"limit": "5"})).json()
        assert ledger["reports"] == []
        assert ledger["deletionReceipts"] == []
        assert (await api.get(f"{PREFIX}/ledger", params={"limit": "0"})).status_code == 400
        details = (await api.get(f"{PREFIX}/details", params={"weeks": "4"})).json()
        assert details["stats"]["consent"]["effective"] == "CONSENT_STATE_SHARING"
        assert len(details["stats"]["recentWeeks"]) == 4
        assert details["status"]["storedEvents"] == "7"

        english = (await api.get(f"{PREFIX}/disclosure")).json()
        german = (await api.get(f"{PREFIX}/disclosure", headers={"Accept-Language": "de-DE,de;q=0.9"})).json()
        assert english["schemaVersion"] == german["schemaVersion"] == CURRENT_SCHEMA_VERSION
        assert (english["language"], german["language"]) == ("en", "de")
        assert [f["field"] for f in english["fields"]] == [f["field"] for f in german["fields"]]
        assert english["neverCollected"] == list(NEVER_COLLECTED)
        assert "IP-Adressen, Hostnamen oder MAC-Adressen" in german["neverCollected"]
        assert english["freeTextFields"] == german["freeTextFields"] == []
        by_field = {f["field"]: f["why"] for f in german["fields"]}
        assert "Zeitzone" in by_field["installation.country"]
        assert (await api.get(f"{PREFIX}/disclosure", params={"lang": "de"})).json()["language"] == "de"


@pytest.mark.processes
async def test_opt_in_under_do_not_track_says_why_it_did_not_start(agent_dir: Path) -> None:
    async with agent_process(agent_dir, DO_NOT_TRACK="1") as agent, printernizer(agent.socket_path) as api:
        answer = await api.post(f"{PREFIX}/opt-in", headers={"Accept-Language": "de"})
        status = (await frontend(api, "status")).json()
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is False
    assert "DO_NOT_TRACK" in body["message"]
    assert (status["opted_in"], status["collection_active"]) == (False, False)


async def test_changes_from_other_sites_and_bad_bodies_are_refused(agent: AgentProcess) -> None:
    async with printernizer(agent.socket_path) as api:
        cross_site = await api.post(f"{PREFIX}/opt-in", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross_site.status_code == 403
        form = await api.post(
            f"{PREFIX}/opt-in", content=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert form.status_code == 415
        assert (await api.delete(PREFIX, headers={"Sec-Fetch-Site": "cross-site"})).status_code == 403
        huge = await api.post(f"{PREFIX}/opt-in", json={"pad": "x" * 5000})
        assert huge.status_code == 413
        nested = b"[" * 2000 + b"]" * 2000  # too deep for json.loads: a 400, not a 500
        for bad in (b"[1]", b"{", nested, b'{"schema_version": true}', b'{"schema_version": 99}'):
            answer = await api.post(
                f"{PREFIX}/opt-in", content=bad, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 400, bad
        ignored = await api.post(f"{PREFIX}/opt-in", json={"anything": 1})  # Printernizer ignored bodies
        assert ignored.json()["success"] is True
        same_origin = await api.post(f"{PREFIX}/opt-in", headers={"Sec-Fetch-Site": "same-origin"})
        assert same_origin.json()["success"] is True


async def test_the_page_in_english_and_german(agent_dir: Path) -> None:
    async with printernizer(agent_dir / "absent.sock") as api:
        english = await api.get(f"{PREFIX}/page")
        german = await api.get(f"{PREFIX}/page", headers={"Accept-Language": "de-AT, en;q=0.5"})
        chosen = await api.get(f"{PREFIX}/page", params={"lang": "en"}, headers={"Accept-Language": "de"})
        script = await api.get(f"{PREFIX}/page/privacy.js")
        style = await api.get(f"{PREFIX}/page/privacy.css")
        missing = await api.get(f"{PREFIX}/page/../fastapi.py")
        other = await api.get(f"{PREFIX}/page/i18n.py")
    assert english.status_code == german.status_code == 200
    assert english.headers["content-type"].startswith("text/html")
    assert english.headers["cache-control"] == "no-store"
    assert '<html lang="en">' in english.text
    assert "<title>Usage statistics \u2013 Printernizer</title>" in english.text
    assert '<html lang="de">' in german.text
    assert "<title>Nutzungsstatistiken \u2013 Printernizer</title>" in german.text
    assert "Anonyme wöchentliche Statistiken mit den Printernizer-Entwicklern teilen" in german.text
    assert "Das Teilen ist aus, bis Sie es einschalten." in german.text  # the script's, embedded
    assert "{{" not in german.text
    assert "{{" not in english.text
    assert '<html lang="en">' in chosen.text  # ?lang= wins over Accept-Language
    assert script.headers["content-type"].startswith("text/javascript")
    assert "_(" in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status_code == other.status_code == 404
