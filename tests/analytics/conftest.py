"""The analytics folder's harness, and the analytics server's test harness for the other folders: the
server in this process over TLS (`running_analytics`), the rollups brought up to date as the aggregation
server's job would (`refresh_rollups`), a known fleet stored through the real ingest path (the `stored`
fixture), and an SMTP server that keeps what it is sent (the `smtp` fixture). Other folders import what
they use from here (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from printernizer.stats.v1 import common_pb2
from printernizer_stats.aggregation.ingest import Ingest
from printernizer_stats.analytics.email_reports import MailConfig
from printernizer_stats.analytics.queries import Analytics
from printernizer_stats.analytics.server import AnalyticsServerConfig, serve
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import Week
from printernizer_stats.demo.services import free_port
from printernizer_stats.store import schema
from printernizer_stats.store.analytics_store import AnalyticsStore
from printernizer_stats.store.database import create_server_engine
from printernizer_stats.store.ingest_store import IngestStore
from printernizer_stats.store.rollup_store import Rollups
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from .. import databases
from ..agent_harness import FakeClock
from ..aggregation.conftest import ADMIN_TOKEN, NOW, Installation, report_of

database_url = databases.database_url

# --- the server in this process, over TLS ----------------------------------------------------------------


@asynccontextmanager
async def running_analytics(
    database_url: str, tls_dir: Path, clock: Callable[[], dt.datetime] | None = None, **config: Any
) -> AsyncIterator[tuple[int, bytes]]:
    """The analytics server in this process, over TLS with the self-made
    material in `tls_dir`; `config` overrides AnalyticsServerConfig fields. Yields its
    port and the CA that verifies it. It answers from the rollups as the
    aggregation server last refreshed them (see refresh_rollups)."""
    tls = ensure_self_made(tls_dir)
    settings = dataclasses.replace(
        AnalyticsServerConfig("127.0.0.1:0", database_url, tls, ADMIN_TOKEN), **config
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    times = {} if clock is None else {"clock": clock}
    task = asyncio.create_task(serve(settings, stop, on_ready=ready.set_result, **times))
    try:
        port = await asyncio.wait_for(ready, 60)
        assert tls.ca_certificate is not None
        yield port, tls.ca_certificate.read_bytes()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def refresh_rollups(database_url: str) -> None:
    """What the aggregation server's rollup job does, done now: for tests that fill a database, then
    start an analytics server over it. A refresh skips while another holds its lock (on PostgreSQL,
    the aggregation server's own job at its start), so it is done until the rollups count every
    stored report."""
    engine = create_server_engine(database_url)
    try:
        stored = select(func.count()).select_from(schema.reports)
        rolled_up = select(func.coalesce(func.sum(schema.weekly_totals.c.active), 0))
        for _ in range(200):
            await Rollups(engine).refresh()
            async with engine.connect() as connection:
                if await connection.scalar(stored) == await connection.scalar(rolled_up):
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("the rollups did not catch up with the stored reports")
    finally:
        await engine.dispose()


def last_week() -> Week:
    return Week.containing(dt.datetime.now(dt.UTC)).previous()


# --- a known fleet, stored through the real ingest path --------------------------------------------------

W44, W45, W46 = Week(2026, 44), Week(2026, 45), Week(2026, 46)  # NOW is in W47: W46 is the last complete
DOCKER, HA, PI, STANDALONE = (
    common_pb2.DEPLOYMENT_MODE_DOCKER,
    common_pb2.DEPLOYMENT_MODE_HOME_ASSISTANT_ADDON,
    common_pb2.DEPLOYMENT_MODE_RASPBERRY_PI,
    common_pb2.DEPLOYMENT_MODE_STANDALONE,
)
K = 3


@dataclass
class Member:
    mode: int
    version: tuple[int, int, int]
    weeks: tuple[Week, ...]
    timelapse: bool | None = None  # None: the report does not mention it


# The fleet, by hand: 12 installations, all with the library switched on.
FLEET = (
    [Member(DOCKER, (2, 7, 0), (W45, W46), timelapse=True)] * 6
    + [Member(HA, (2, 8, 0), (W46,))] * 2
    + [Member(PI, (2, 8, 0), (W45, W46), timelapse=False)] * 3
    + [Member(STANDALONE, (2, 6, 1), (W44,))]
)


@dataclass
class Stored:
    ingest: Ingest
    analytics: Analytics
    rollups: Rollups
    installations: list[Installation]


async def store_fleet(database_url: str) -> list[Installation]:
    """FLEET through the real ingest path into the database at `database_url` (at the latest schema),
    the rollups refreshed; the installations that signed."""
    store = IngestStore.open(database_url)
    try:
        ingest = Ingest(store, FakeClock(NOW))
        installations = []
        for member in FLEET:
            agent = Installation(uuid.uuid4().bytes)
            reports = []
            for week in member.weeks:
                report = report_of(agent, week, current=True)  # jobs per printer family too
                report.installation.deployment_mode = member.mode  # type: ignore[assignment]
                version = report.installation.app_version
                version.major, version.minor, version.patch = member.version
                if member.timelapse is not None:
                    report.features.add(feature=common_pb2.FEATURE_TIMELAPSE, enabled=member.timelapse)
                reports.append(report)
            await ingest.submit(agent.submission(*reports))
            installations.append(agent)
        assert await Rollups(store.engine, FakeClock(NOW)).refresh() == [W44, W45, W46]
    finally:
        await store.close()
    return installations


# FLEET stored once per test process in a SQLite file, which each test on SQLite gets a copy of
# (storing it takes about half a second). Its installations' keys sign the copies' later requests.
_sqlite_fleet: list[tuple[Path, list[Installation]]] = []


async def sqlite_fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Installation]]:
    if not _sqlite_fleet:
        path = tmp_path_factory.mktemp("fleet") / "fleet.db"
        databases.upgrade(f"sqlite:///{path}")
        _sqlite_fleet.append((path, await store_fleet(f"sqlite:///{path}")))
    return _sqlite_fleet[0]


@pytest.fixture
async def stored(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stored]:
    """FLEET stored in this test's own database."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        template, installations = await sqlite_fleet(tmp_path_factory)
        shutil.copyfile(template, str(url.database))
    else:
        databases.upgrade(database_url)
        installations = await store_fleet(database_url)
    store = IngestStore.open(database_url)
    rollups = Rollups(store.engine, FakeClock(NOW))
    analytics = Analytics(AnalyticsStore(store.engine), K, FakeClock(NOW))
    yield Stored(Ingest(store, FakeClock(NOW)), analytics, rollups, installations)
    await store.close()


# --- an SMTP server in this process ---------------------------------------------------------------------


class Inbox:
    """An SMTP handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def mail(port: int, **extra: Any) -> MailConfig:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "sender": "stats@printernizer.invalid",
        "recipients": ("maintainers@printernizer.invalid",),
    }
    return MailConfig(**(settings | extra))
