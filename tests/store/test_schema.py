"""The aggregation server's schema and migrations on real SQLite and PostgreSQL,
and compiled for SQL Server (which cannot run here)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from printernizer_stats.store import schema
from printernizer_stats.store.database import (
    alembic_config,
    async_url,
    create_sync_engine,
    downgrade,
    sync_url,
    upgrade,
)
from sqlalchemy import delete, func, insert, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .. import databases

NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)

# Every test here runs on SQLite and on a fresh PostgreSQL database.
database_url = databases.database_url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    engine = create_sync_engine(database_url)
    yield engine
    engine.dispose()


def test_the_migrations_create_exactly_the_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), schema.metadata)
    assert differences == []


def test_every_counter_has_its_row_after_the_migrations(engine: Engine) -> None:
    from printernizer_stats.store.ingest_store import Counter

    with engine.connect() as connection:
        rows = dict(connection.execute(select(schema.ingest_counters)).all())
    assert rows == {counter.value: 0 for counter in Counter}


def test_migrations_downgrade_and_upgrade_again(database_url: str) -> None:
    upgrade(database_url)
    engine = create_sync_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(schema.metadata.tables) <= tables
        downgrade(database_url, "base")
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) <= {"alembic_version"}
        upgrade(database_url)
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def installation_row(installation_id: bytes) -> dict[str, object]:
    return {
        "installation_id": installation_id,
        "public_key": bytes(32),
        "registered_at": NOW,
        "first_week": 202646,
        "last_week": 202646,
        "last_accepted_at": NOW,
    }


def report_row(installation_id: bytes, week: int) -> dict[str, object]:
    return {
        "report_id": uuid.uuid4().bytes,
        "installation_id": installation_id,
        "week": week,
        "schema_version": 1,
        "receipt_id": uuid.uuid4().bytes,
        "stored_at": NOW,
    }


async def test_database_errors_never_list_the_statements_parameters(database_url: str) -> None:
    """SQLAlchemy appends a statement's parameters (identifiers) to its errors'
    text: every engine the server makes hides them. (A driver may still quote
    the row it refused, as PostgreSQL's DETAIL does: the servicer logs no
    exception's message at all, see tests/aggregation/test_ingest_logs.py.)"""
    from printernizer_stats.store.database import create_server_engine

    upgrade(database_url)
    installation = uuid.uuid4().bytes
    sync_engine, server_engine = create_sync_engine(database_url), create_server_engine(database_url)
    try:
        with sync_engine.begin() as connection:
            connection.execute(insert(schema.installations), installation_row(installation))
        with pytest.raises(IntegrityError) as refused, sync_engine.begin() as connection:
            connection.execute(insert(schema.installations), installation_row(installation))
        async with server_engine.begin() as connection:
            with pytest.raises(IntegrityError) as refused_async:
                await connection.execute(insert(schema.installations), installation_row(installation))
    finally:
        sync_engine.dispose()
        await server_engine.dispose()
    for error in (refused.value, refused_async.value):
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(error)
        assert repr(installation)[2:-1] not in str(error)


def test_one_report_per_installation_and_week(engine: Engine) -> None:
    installation = uuid.uuid4().bytes
    first = report_row(installation, 202646)
    with engine.begin() as connection:
        connection.execute(insert(schema.installations), installation_row(installation))
        connection.execute(insert(schema.reports), first)
    # The same week under another report ID, and the same report ID in another week.
    for duplicate in (
        report_row(installation, 202646),
        {**report_row(installation, 202647), "report_id": first["report_id"]},
    ):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(insert(schema.reports), duplicate)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(schema.reports)).scalar() == 1


def test_deleting_an_installation_deletes_its_reports_and_their_lists(engine: Engine) -> None:
    installation = uuid.uuid4().bytes
    with engine.begin() as connection:
        connection.execute(insert(schema.installations), installation_row(installation))
        report = connection.execute(
            insert(schema.reports), report_row(installation, 202646)
        ).inserted_primary_key[0]
        connection.execute(
            insert(schema.report_errors), {"report": report, "error_type": 2, "component": 3, "count": 4}
        )
        connection.execute(insert(schema.report_printers), {"report": report, "printer_type": 2, "count": 1})
    with engine.begin() as connection:
        connection.execute(
            delete(schema.installations).where(schema.installations.c.installation_id == installation)
        )
    with engine.connect() as connection:
        for table in (schema.reports, schema.report_errors, schema.report_printers):
            assert connection.execute(select(func.count()).select_from(table)).scalar() == 0


def test_the_schema_compiles_for_sql_server() -> None:
    """No SQL Server runs here: the migration is rendered as SQL Server DDL
    (Alembic's offline mode) and checked for what SQL Server refuses."""
    script = io.StringIO()
    with contextlib.redirect_stdout(script):
        command.upgrade(alembic_config("mssql+pyodbc://user@dsn"), "head", sql=True)
    ddl = script.getvalue()
    for table in schema.metadata.tables:
        assert f"CREATE TABLE {table} (" in ddl
    assert "IMAGE" not in ddl  # SQL Server cannot key or index IMAGE columns
    assert "VARBINARY(16)" in ddl
    assert "DATETIMEOFFSET" in ddl
    assert "ON DELETE CASCADE" in ddl


def test_no_column_can_hold_free_text() -> None:
    """Like the contract: nothing stored about an installation is text (the
    only text column is the name of an operational counter)."""
    text_columns = [
        f"{table.name}.{column.name}"
        for table in schema.metadata.tables.values()
        for column in table.columns
        if column.type.python_type is str
    ]
    assert text_columns == ["ingest_counters.name"]


@pytest.mark.parametrize(
    ("url", "sync", "asynchronous"),
    [
        ("sqlite:///x.db", "sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("mssql+pyodbc://u@dsn", "mssql+pyodbc://u@dsn", "mssql+aioodbc://u@dsn"),
    ],
)
def test_each_database_url_has_a_sync_and_an_async_driver(url: str, sync: str, asynchronous: str) -> None:
    assert sync_url(url) == sync
    assert async_url(url) == asynchronous


async def test_every_query_the_store_runs_compiles_for_sql_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SQL Server runs here: record every statement the store executes on
    SQLite through the paths it has (store, replay, refusals, deletion,
    retention, status) and compile each for SQL Server. The rollups take the
    way they take on SQL Server (no temporary tables, no upsert)."""
    from printernizer_stats.aggregation.ingest import Ingest
    from printernizer_stats.common.refusals import Refusal
    from printernizer_stats.common.weeks import Week
    from printernizer_stats.store import rollup_store
    from printernizer_stats.store.ingest_store import IngestStore

    monkeypatch.setattr(rollup_store, "NATIVE_DIALECTS", frozenset())
    from sqlalchemy import event
    from sqlalchemy.dialects import mssql
    from sqlalchemy.sql import ClauseElement

    from ..agent_harness import FakeClock
    from ..aggregation.conftest import NOW, Installation, report_of

    url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    upgrade(url)
    store = IngestStore.open(url)
    statements: list[ClauseElement] = []

    def remember(_conn: object, clause: object, *_args: object) -> None:
        if isinstance(clause, ClauseElement):
            statements.append(clause)

    event.listen(store.engine.sync_engine, "before_execute", remember)
    ingest = Ingest(store, FakeClock(NOW), retention_days=30)
    agent, week = Installation(uuid.uuid4().bytes), Week.containing(NOW).previous()
    try:
        submission = agent.submission(report_of(agent, week.previous()), report_of(agent, week))
        await ingest.submit(submission)
        await ingest.submit(submission)  # a replay
        for refused in (agent.submission(report_of(agent, week.previous().previous())),):
            with contextlib.suppress(Refusal):
                await ingest.submit(refused)  # within the hour
        await ingest.delete(agent.deletion())
        with contextlib.suppress(Refusal):
            await ingest.submit(submission)  # deleted
        await ingest.purge_expired()
        await ingest.status()
        # The analytics server's rollups and queries run on the same database.
        from printernizer.stats.v1 import analytics_service_pb2
        from printernizer_stats.analytics.queries import Analytics
        from printernizer_stats.store.analytics_store import AnalyticsStore
        from printernizer_stats.store.rollup_store import Rollups

        other = Installation(uuid.uuid4().bytes)
        await ingest.submit(other.submission(report_of(other, week)))
        await Rollups(store.engine, FakeClock(NOW)).refresh()
        analytics = Analytics(AnalyticsStore(store.engine), 5, FakeClock(NOW))
        await analytics.installation_trend(analytics_service_pb2.GetInstallationTrendRequest())
        for dimension in analytics_service_pb2.Dimension.values()[1:]:
            await analytics.distribution(analytics_service_pb2.GetDistributionRequest(dimensions=[dimension]))
    finally:
        await store.close()
    assert len(statements) >= 10
    for statement in statements:
        compiled = str(statement.compile(dialect=mssql.dialect()))
        assert compiled
