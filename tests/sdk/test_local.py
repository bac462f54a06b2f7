"""The SDK's client for the agent's local API (printernizer_stats.sdk.local):
against a real agent process, with the agent absent (it never raises unless
asked to), and the carrying over of Printernizer's own stored opt-in."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from printernizer.stats.v1 import agent_service_pb2, aggregated_stats_pb2
from printernizer_stats.sdk.local import (
    MIGRATION_MARKER,
    AgentError,
    AsyncLocalAgent,
    LocalAgent,
    MigrationAction,
    Unavailable,
    migrate_printernizer_opt_in,
    migrate_printernizer_opt_in_async,
)

from ..agent_harness import AgentProcess, agent_dir, agent_process
from ..conftest import ROOT

__all__ = ["agent_dir"]  # fixtures used here
SHARING = agent_service_pb2.CONSENT_STATE_SHARING


@pytest.fixture
async def agent(agent_dir: Path) -> AsyncIterator[AgentProcess]:
    async with agent_process(agent_dir) as running:
        yield running


def sync_calls(client: LocalAgent) -> dict[str, object]:
    return {
        "consent": client.consent(),
        "set_consent": client.set_consent(agent_service_pb2.CONSENT_STATE_LOCAL_ONLY),
        "opt_in": client.opt_in(1),
        "opt_out": client.opt_out(),
        "status": client.status(),
        "local_stats": client.local_stats(4),
        "preview": client.preview(),
        "sent_reports": client.sent_reports(),
        "export": client.export(),
        "delete_all": client.delete_all(),
        "submit_now": client.submit_now(),
    }


async def async_calls(client: AsyncLocalAgent) -> dict[str, object]:
    return {
        "consent": await client.consent(),
        "set_consent": await client.set_consent(agent_service_pb2.CONSENT_STATE_LOCAL_ONLY),
        "opt_in": await client.opt_in(1),
        "opt_out": await client.opt_out(),
        "status": await client.status(),
        "local_stats": await client.local_stats(4),
        "preview": await client.preview(),
        "sent_reports": await client.sent_reports(),
        "export": await client.export(),
        "delete_all": await client.delete_all(),
        "submit_now": await client.submit_now(),
    }


async def test_without_the_agent_nothing_raises_and_every_call_says_unavailable(agent_dir: Path) -> None:
    absent = agent_dir / "no-agent.sock"
    started = time.monotonic()
    with LocalAgent(absent) as client:
        answers = await asyncio.to_thread(sync_calls, client)
    async with AsyncLocalAgent(absent) as async_client:
        answers_async = await async_calls(async_client)
    assert time.monotonic() - started < 5  # no waiting for an agent that is not there
    for name, answer in {**answers, **{f"async {k}": v for k, v in answers_async.items()}}.items():
        assert isinstance(answer, Unavailable), name
        assert not answer, name
        assert (answer.code, answer.unreachable) == ("UNAVAILABLE", True), name
        assert "cannot be reached" in answer.message


async def test_with_raise_errors_the_one_exception_is_agent_error(agent_dir: Path) -> None:
    absent = agent_dir / "no-agent.sock"
    client = LocalAgent(absent, raise_errors=True)
    for call in (client.status, client.consent, client.delete_all, client.export):
        with pytest.raises(AgentError) as raised:
            await asyncio.to_thread(call)
        assert raised.value.code == "UNAVAILABLE"
        assert raised.value.unreachable
    with pytest.raises(AgentError):
        await asyncio.to_thread(lambda: list(LocalAgent(absent).export_pages()))  # a stream never pretends
    async_client = AsyncLocalAgent(absent, raise_errors=True)
    with pytest.raises(AgentError):
        await async_client.local_stats()
    with pytest.raises(AgentError):
        [page async for page in async_client.export_pages()]


async def test_a_refusal_names_its_field(agent: AgentProcess) -> None:
    client = AsyncLocalAgent(agent.socket_path)
    refused = await client.set_consent(SHARING, 0)  # sharing needs the disclosure's version
    assert isinstance(refused, Unavailable)
    assert (refused.code, refused.unreachable) == ("INVALID_ARGUMENT", False)
    assert refused.field == "schema_version"
    with pytest.raises(AgentError) as raised:
        await AsyncLocalAgent(agent.socket_path, raise_errors=True).set_consent(SHARING, 0)
    assert raised.value.field == "schema_version"


async def test_sync_and_async_clients_against_the_real_agent(agent: AgentProcess) -> None:
    sync = LocalAgent(agent.socket_path)
    consent = await asyncio.to_thread(sync.opt_in, aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1)
    assert not isinstance(consent, Unavailable)
    assert consent.effective == SHARING
    answers = await asyncio.to_thread(sync_calls, sync)  # ends local-only, everything deleted
    for name, answer in answers.items():
        if name != "submit_now":  # FAILED_PRECONDITION: not sharing at that point
            assert not isinstance(answer, Unavailable), (name, answer)
    export = answers["export"]
    assert isinstance(export, list)
    assert export[0].HasField("settings")
    async with AsyncLocalAgent(agent.socket_path) as client:
        status = await client.status()
        assert not isinstance(status, Unavailable)
        assert status.stored_events == 0
        pages = [page async for page in client.export_pages()]
        assert pages[0].settings.consent.chosen == agent_service_pb2.CONSENT_STATE_LOCAL_ONLY
    sync.close()


def test_the_client_imports_with_grpcio_and_protobuf_alone() -> None:
    """Neither betterproto2 (the `dataclasses` extra) nor a web framework is needed."""
    heavy = ("fastapi", "starlette", "pydantic", "betterproto2", "babel", "opentelemetry", "sqlalchemy")
    script = (
        "import sys\n"
        "sys.modules.update(dict.fromkeys(('betterproto2', 'fastapi', 'pydantic'), None))  # not installed\n"
        "import printernizer_stats.sdk.local\n"
        f"print([m for m in {heavy!r} if sys.modules.get(m)])"
    )
    found = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert (found.returncode, found.stdout.strip()) == (0, "[]"), found.stdout + found.stderr


# --- Printernizer's stored opt-in --------------------------------------------------------------


def printernizer_database(path: Path, settings: dict[str, str]) -> Path:
    """The usage tables as Printernizer's src/database/database.py creates them."""
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "CREATE TABLE usage_events (id TEXT PRIMARY KEY, event_type TEXT NOT NULL,"
            " timestamp DATETIME NOT NULL, metadata TEXT, submitted BOOLEAN DEFAULT 0,"
            " created_at DATETIME DEFAULT CURRENT_TIMESTAMP)"
        )
        connection.execute(
            "CREATE TABLE usage_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
            " updated_at DATETIME DEFAULT CURRENT_TIMESTAMP)"
        )
        connection.executemany("INSERT INTO usage_settings (key, value) VALUES (?, ?)", settings.items())
    connection.close()
    return path


def stored_settings(path: Path) -> dict[str, str]:
    connection = sqlite3.connect(path)
    try:
        return dict(connection.execute("SELECT key, value FROM usage_settings").fetchall())
    finally:
        connection.close()


OPTED_IN = {
    "opt_in_status": "enabled",
    "installation_id": "814ef1d1-f105-45fd-b8c9-bf8a681b4081",
    "first_run_date": "2026-07-01T10:00:00.000000",
}


async def test_a_printernizer_opt_in_is_carried_over_once(agent: AgentProcess, agent_dir: Path) -> None:
    database = printernizer_database(agent_dir / "printernizer.db", OPTED_IN)
    client = AsyncLocalAgent(agent.socket_path)
    done = await migrate_printernizer_opt_in_async(database, client)
    assert (done.action, done.stored_opt_in) == (MigrationAction.OPTED_IN, "enabled")
    assert done.consent is not None
    assert done.consent.effective == SHARING
    assert done.consent.consented_schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
    assert stored_settings(database)[MIGRATION_MARKER].startswith("opted_in ")
    assert stored_settings(database)["opt_in_status"] == "enabled"  # Printernizer's own rows untouched

    again = await migrate_printernizer_opt_in_async(database, client)
    assert again.action == MigrationAction.ALREADY_MIGRATED
    await client.opt_out()  # the user changes their mind in the new page
    later = await asyncio.to_thread(migrate_printernizer_opt_in, database, LocalAgent(agent.socket_path))
    assert later.action == MigrationAction.ALREADY_MIGRATED
    consent = await client.consent()
    assert not isinstance(consent, Unavailable)
    assert consent.effective != SHARING


async def test_a_choice_made_in_the_agent_is_never_overridden(agent: AgentProcess, agent_dir: Path) -> None:
    database = printernizer_database(agent_dir / "printernizer.db", OPTED_IN)
    client = AsyncLocalAgent(agent.socket_path)
    await client.opt_out()  # chosen: local only
    result = await migrate_printernizer_opt_in_async(database, client, mark=False)
    assert result.action == MigrationAction.ALREADY_CHOSEN
    assert MIGRATION_MARKER not in stored_settings(database)
    consent = await client.consent()
    assert not isinstance(consent, Unavailable)
    assert consent.chosen == agent_service_pb2.CONSENT_STATE_LOCAL_ONLY


async def test_nothing_to_carry_over(agent: AgentProcess, agent_dir: Path) -> None:
    client = AsyncLocalAgent(agent.socket_path)
    declined = printernizer_database(agent_dir / "declined.db", {"opt_in_status": "disabled"})
    never_asked = printernizer_database(agent_dir / "never.db", {})
    assert (await migrate_printernizer_opt_in_async(declined, client)).action == MigrationAction.NOT_OPTED_IN
    assert (
        await migrate_printernizer_opt_in_async(never_asked, client)
    ).action == MigrationAction.NOT_OPTED_IN
    absent = await migrate_printernizer_opt_in_async(agent_dir / "absent.db", client)
    assert absent.action == MigrationAction.NO_DATABASE
    assert not (agent_dir / "absent.db").exists()  # nothing is created
    other = agent_dir / "other.db"
    sqlite3.connect(other).close()  # a database without Printernizer's tables
    assert (await migrate_printernizer_opt_in_async(other, client)).action == MigrationAction.NO_DATABASE
    consent = await client.consent()
    assert not isinstance(consent, Unavailable)
    assert consent.chosen == agent_service_pb2.CONSENT_STATE_UNSPECIFIED


def test_with_the_agent_down_the_migration_waits_for_the_next_start(tmp_path: Path) -> None:
    database = printernizer_database(tmp_path / "printernizer.db", OPTED_IN)
    result = migrate_printernizer_opt_in(database, LocalAgent(tmp_path / "absent.sock", raise_errors=True))
    assert result.action == MigrationAction.FAILED
    assert "cannot be reached" in result.detail
    assert MIGRATION_MARKER not in stored_settings(database)  # tried again next time
