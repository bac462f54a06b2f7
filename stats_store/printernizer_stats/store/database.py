"""The statistics database: URLs, engines and migrations (Alembic).

Migrations always run on a synchronous driver; the server itself uses the
asynchronous one of the same database (aiosqlite for SQLite; asyncpg for
PostgreSQL, measured at a sixth less CPU per report than psycopg's async mode,
while migrations use psycopg; aioodbc on pyodbc for SQL Server).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from printernizer_stats.common.refusals import Unavailable
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Database -> the asynchronous driver the server uses.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "mssql": "mssql+aioodbc",
    "mssql+pyodbc": "mssql+aioodbc",
}

# Asynchronous driver -> the synchronous driver migrations use.
_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "mssql+aioodbc": "mssql+pyodbc",
}


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = _SYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def async_url(url: str) -> str:
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # '%' must be doubled for the ini-style option parser.
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (by default the latest)."""
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The schema revision the database at `url` is at (None: no tables yet)."""
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def read_only(url: str) -> bool:
    """Whether the database at `url` takes no writes: a PostgreSQL hot standby (in recovery), or a
    role or database that is read-only by default. Other databases are taken as writable."""
    if make_url(url).get_backend_name() != "postgresql":
        return False
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            answer = connection.scalar(
                text("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'")
            )
    finally:
        engine.dispose()
    return bool(answer)


def downgrade(url: str, revision: str) -> None:
    """Take the database at `url` back to `revision` ("base": no tables)."""
    command.downgrade(alembic_config(url), revision)


def create_sync_engine(url: str) -> Engine:
    """A synchronous engine (migrations, tools, tests) with the settings every
    connection needs: SQLite enforces foreign keys only when asked to."""
    engine = create_engine(sync_url(url), hide_parameters=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", enable_sqlite_foreign_keys)
    return engine


def create_server_engine(url: str) -> AsyncEngine:
    """The asynchronous engine a server uses, with the same settings."""
    engine = create_async_engine(async_url(url), hide_parameters=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", enable_sqlite_foreign_keys)
    return engine


# What is stored (installation and report IDs) must never reach a log line.
# Every engine hides its statements' parameters from its exceptions
# (hide_parameters), and the database libraries' own logs, which write
# parameters and rows at INFO and DEBUG (SQLAlchemy's engines log rows;
# aiosqlite logs every call with its arguments), stay off whatever
# --log-level says, in every process that uses this package's databases.
for _name in ("sqlalchemy.engine", "aiosqlite"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def enable_sqlite_foreign_keys(connection: Any, _record: Any) -> None:
    """A connect hook: SQLite enforces foreign keys (and cascades) only when asked."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


async def database_answers(engine: AsyncEngine, timeout: float = 3.0) -> bool:
    """Whether the database answers a trivial query within `timeout`: the
    servers' readiness (their gRPC health turns NOT_SERVING while it does not)."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure to answer means "not ready"; the cause is the database's
        return False
    return True


# When a caller should try again after the database did not answer.
DATABASE_RETRY = dt.timedelta(seconds=10)

# PostgreSQL's SQLSTATEs of a database that cannot be reached for now: connection
# exceptions (08), insufficient resources (53), operator intervention such as a
# shutdown or a start in progress (57P), and not accepting connections (55000).
UNREACHABLE_SQLSTATES = ("08", "53", "57P", "55000")


def database_unreachable(exc: BaseException) -> bool:
    """A failure to reach the database (down, restarting, connection lost or
    timed out), as opposed to a bug."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if exc.connection_invalidated or sqlstate.startswith(UNREACHABLE_SQLSTATES):
            return True
    return isinstance(
        exc,
        sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | sqlalchemy.exc.TimeoutError
        | OSError
        | TimeoutError,
    )


def database_refusal(exc: Exception) -> Unavailable | None:
    """What a failure to reach the database means to a server's caller: try
    again later (nothing was stored: the transaction did not commit)."""
    if database_unreachable(exc):
        return Unavailable("the database is not answering; try again later", DATABASE_RETRY)
    return None
