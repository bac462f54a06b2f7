"""Consent levels through the SDK: the privacy router's opt-in takes a level
(`{"schema_version": 3, "level": "usage"}`) and says it, the preview shows
what a level sends, the disclosure says from which level each field is shared,
and a level the agent cannot honour is a 400 that says why; `LocalAgent` and
`AsyncLocalAgent` carry the level to a real agent process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from printernizer.stats.v1 import aggregated_stats_pb2
from printernizer_stats.common import consent_levels
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.sdk.fastapi import LEVELS
from printernizer_stats.sdk.local import AsyncLocalAgent, LocalAgent, unwrap

from ..agent_harness import AgentProcess, agent_dir, agent_process
from .conftest import PREFIX, printernizer_app, record_this_week

__all__ = ["agent_dir"]  # fixtures used here
Report = aggregated_stats_pb2.AggregatedStats
BASICS = aggregated_stats_pb2.CONSENT_LEVEL_BASICS
USAGE = aggregated_stats_pb2.CONSENT_LEVEL_USAGE
ERRORS = aggregated_stats_pb2.CONSENT_LEVEL_ERRORS
V3 = aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
PART_KEYS = ("printerFleet", "features", "usage", "errors")


@pytest.fixture
async def agent(agent_dir: Path) -> AsyncIterator[AgentProcess]:
    async with agent_process(agent_dir) as running:
        yield running


@asynccontextmanager
async def privacy_api(socket_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncLocalAgent]]:
    local = AsyncLocalAgent(socket_path, raise_errors=True)
    transport = httpx.ASGITransport(app=printernizer_app(local))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://192.168.1.20:8000", timeout=20
    ) as client:
        yield client, local
    await local.close()


def shown_parts(preview: dict[str, Any]) -> tuple[str, list[str]]:
    """The level a preview's JSON says, and the parts it shows."""
    report = json.loads(preview["reportJson"])
    return report["consentLevel"], [key for key in PART_KEYS if key in report]


async def test_the_router_shares_at_the_level_chosen_and_keeps_the_identity(agent: AgentProcess) -> None:
    async with privacy_api(agent.socket_path) as (api, local):
        await record_this_week(agent)
        joined = await api.post(f"{PREFIX}/opt-in", json={"schema_version": V3, "level": "usage"})
        assert joined.status_code == 200, joined.text
        assert (joined.json()["success"], joined.json()["level"]) == (True, "usage")
        installation = joined.json()["installation_id"]
        consent = unwrap(await local.consent())
        assert (consent.level, consent.consented_schema_version) == (USAGE, V3)
        assert shown_parts((await api.get(f"{PREFIX}/preview")).json()) == (
            "CONSENT_LEVEL_USAGE",
            ["printerFleet", "features", "usage"],
        )

        # A level alone keeps the version agreed, and the installation.
        lowered = (await api.post(f"{PREFIX}/opt-in", json={"level": "basics"})).json()
        assert (lowered["level"], lowered["installation_id"]) == ("basics", installation)
        assert unwrap(await local.consent()).level == BASICS
        assert shown_parts((await api.get(f"{PREFIX}/preview")).json()) == ("CONSENT_LEVEL_BASICS", [])
        # The preview of another level, without choosing it.
        everything = (await api.get(f"{PREFIX}/preview", params={"level": "errors"})).json()
        assert shown_parts(everything) == ("CONSENT_LEVEL_ERRORS", list(PART_KEYS))
        assert unwrap(await local.consent()).level == BASICS
        details = (await api.get(f"{PREFIX}/details")).json()
        assert details["stats"]["consent"]["level"] == "CONSENT_LEVEL_BASICS"

        # Printernizer's own page sends no body: for a user who shares, that changes nothing.
        assert (await api.post(f"{PREFIX}/opt-in")).json()["level"] == "basics"
        # Deleting everything keeps the choice, the level with it, under a new identity.
        assert (await api.delete(PREFIX)).json()["success"] is True
        after = unwrap(await local.consent())
        assert (after.level, after.consented_schema_version) == (BASICS, V3)
        assert (await api.get(f"{PREFIX}/local")).json()["installation_id"] != installation

        assert (await api.post(f"{PREFIX}/opt-out")).json()["success"] is True
        assert unwrap(await local.consent()).level == 0
        bodiless = (await api.post(f"{PREFIX}/opt-in")).json()  # Printernizer's opt-in: everything
        assert bodiless["level"] == "errors"


async def test_a_level_that_cannot_be_honoured_is_a_400_that_says_why(agent: AgentProcess) -> None:
    async with privacy_api(agent.socket_path) as (api, local):
        before = unwrap(await local.consent())
        for body in (
            {"level": "lots"},
            {"level": 2},
            {"level": None},
            {"schema_version": V3, "level": "ERRORS"},
        ):
            answer = await api.post(f"{PREFIX}/opt-in", json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["message"] == (
                "level must be one of: basics, printers_and_features, usage, errors"
            )
        # Printernizer's page described schema 1, which has no levels.
        old = await api.post(f"{PREFIX}/opt-in", json={"schema_version": 1, "level": "basics"})
        assert old.status_code == 400
        assert old.json()["message"].startswith("level: the disclosure of schema version 1 has no levels")
        german = await api.post(f"{PREFIX}/opt-in", json={"level": "viel"}, headers={"Accept-Language": "de"})
        assert german.json()["message"].startswith("level muss eines von diesen sein")
        assert (await api.get(f"{PREFIX}/preview", params={"level": "all"})).status_code == 400
        assert unwrap(await local.consent()) == before  # nothing changed


async def test_the_disclosure_says_from_which_level_each_field_is_shared(agent_dir: Path) -> None:
    async with privacy_api(agent_dir / "absent.sock") as (api, _):
        document = (await api.get(f"{PREFIX}/disclosure")).json()
    level_of = {item["field"]: item["level"] for item in document["fields"]}
    assert document["schemaVersion"] == CURRENT_SCHEMA_VERSION
    assert level_of["installation.country"] == level_of["report_id"] == "CONSENT_LEVEL_BASICS"
    assert level_of["consent_level"] == "CONSENT_LEVEL_BASICS"
    assert level_of["printer_fleet.printers.count"] == "CONSENT_LEVEL_PRINTERS_AND_FEATURES"
    assert level_of["features.feature = FEATURE_GERMAN_COMPLIANCE"] == "CONSENT_LEVEL_PRINTERS_AND_FEATURES"
    assert level_of["usage.jobs_failed"] == "CONSENT_LEVEL_USAGE"
    assert level_of["errors.component"] == "CONSENT_LEVEL_ERRORS"
    for field, level in level_of.items():  # every field: the level of the part it belongs to
        part = field.split(".")[0].split(" ")[0]
        expected = consent_levels.LEVEL_OF_FIELD.get(part, BASICS)
        assert level == aggregated_stats_pb2.ConsentLevel.Name(expected), field  # type: ignore[arg-type]


def test_the_api_names_each_level_of_the_contract() -> None:
    assert LEVELS == {
        "basics": BASICS,
        "printers_and_features": aggregated_stats_pb2.CONSENT_LEVEL_PRINTERS_AND_FEATURES,
        "usage": USAGE,
        "errors": ERRORS,
    }


async def test_the_local_agent_clients_carry_the_level(agent: AgentProcess) -> None:
    with LocalAgent(agent.socket_path) as local:
        assert unwrap(local.opt_in(V3, BASICS)).level == BASICS
        preview = unwrap(local.preview(level=USAGE))
        report = Report.FromString(preview.report)
        assert (report.consent_level, report.HasField("usage")) == (USAGE, True)
        refused = local.opt_in(1, BASICS)
        assert not refused
        assert (refused.code, refused.field) == ("INVALID_ARGUMENT", "level")  # type: ignore[union-attr]
        assert unwrap(local.consent()).level == BASICS
    async with AsyncLocalAgent(agent.socket_path) as local_async:
        assert unwrap(await local_async.opt_in(V3, ERRORS)).level == ERRORS
        shown = unwrap(await local_async.preview(level=BASICS))
        assert Report.FromString(shown.report).consent_level == BASICS
