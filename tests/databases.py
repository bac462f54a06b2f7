"""Real databases for the server-side tests: a SQLite file, and a fresh
database on the test PostgreSQL server ($STATS_TEST_POSTGRES_URL, which
.ci/run provides); and the latest schema in one, or a test's fleet, the SQLite
file as a copy."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from printernizer_stats.store import database
from printernizer_stats.store.analytics_store import AnalyticsStore
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("STATS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server, dropped afterwards."""
    server = make_url(POSTGRES_URL)
    name = f"stats_test_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if "STATS_TEST_POSTGRES_URL" in os.environ:
            raise  # CI promised a server: its absence is a failure
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL} ({exc}); .ci/run provides one")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(
                hide_password=False
            )
        finally:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def empty_database(kind: str, directory: Path) -> contextlib.AbstractContextManager[str]:
    if kind == "sqlite":
        return contextlib.nullcontext(f"sqlite:///{directory / 'aggregation.db'}")
    return fresh_postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, then a fresh PostgreSQL database."""
    with empty_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The same, one for all the tests of a module that share a stack over it. Imported as
    `database_url`, so that tests/conftest.py marks its PostgreSQL half."""
    with empty_database(request.param, tmp_path_factory.mktemp("database")) as url:
        yield url


# --- the latest schema ---------------------------------------------------------------------------------


@functools.cache
def _migrated_sqlite_template() -> Path:
    """A SQLite file at the latest schema, migrated once per test process."""
    directory = Path(tempfile.mkdtemp(prefix="stats-schema-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    template = directory / "migrated.db"
    database.upgrade(f"sqlite:///{template}")
    return template


def copy_migrated_template(database_url: str) -> bool:
    """Make an absent SQLite database file a copy of one at the latest schema: the migrations take
    about 0.1 s a database, the copy well under a millisecond. False, and nothing done, for any
    other database (an existing file, PostgreSQL)."""
    path = _absent_sqlite_file(database_url)
    if path is None:
        return False
    shutil.copyfile(_migrated_sqlite_template(), path)
    return True


def upgrade(database_url: str) -> None:
    """The database at `database_url` brought to the latest schema: an absent SQLite file as a copy
    (see copy_migrated_template), any other by running the migrations."""
    if not copy_migrated_template(database_url):
        database.upgrade(database_url)


# --- a fleet filled once ------------------------------------------------------------------------------

_filled: dict[str, Path] = {}


def _absent_sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite database that does not exist yet (None: any other database)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database)
    return None if path.exists() or not path.parent.is_dir() else path


async def fill_once(database_url: str, fill: Callable[[str], Awaitable[None]]) -> None:
    """The database at `database_url` filled as `fill(url)` fills one (the schema, reports, a
    refresh...). An absent SQLite file becomes a copy of the one `fill` filled the first time this
    test process asked for it: filling takes up to seconds, a copy milliseconds. So `fill` must fill
    alike each time (what a test checks must not depend on one run's random IDs), and close its
    connections before it returns. Any other database is filled by `fill` itself."""
    path = _absent_sqlite_file(database_url)
    if path is None:
        await fill(database_url)
        return
    key = f"{fill.__module__}.{fill.__qualname__}"
    if key not in _filled:
        directory = Path(tempfile.mkdtemp(prefix="stats-filled-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        await fill(f"sqlite:///{directory / 'filled.db'}")
        _filled[key] = directory / "filled.db"
    for suffix in ("", "-wal"):  # (a -wal only while a connection stayed open)
        if Path(f"{_filled[key]}{suffix}").exists():
            shutil.copyfile(f"{_filled[key]}{suffix}", f"{path}{suffix}")


@contextlib.asynccontextmanager
async def filled_analytics_store(
    database_url: str, fill: Callable[[str], Awaitable[None]]
) -> AsyncIterator[AnalyticsStore]:
    """The analytics' reads of the database at `database_url`, filled as `fill_once` fills it."""
    await fill_once(database_url, fill)
    store = AnalyticsStore.open(database_url)
    try:
        yield store
    finally:
        await store.close()
