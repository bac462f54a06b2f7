"""Running the real stats agent for integration tests.

`agent` (fixture) serves the agent in-process with `printernizer_stats.agent.server.serve`
on a real Unix socket and a real SQLite file; `AgentProcess` runs it as
`python -m printernizer_stats.agent` for the signal tests. Event builders (and
Hypothesis strategies of valid events) and small helpers for calling the API
live here too.

Test modules import the fixtures explicitly:
`from ..agent_harness import agent  # noqa: F401`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st
from printernizer.stats.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    aggregated_stats_pb2,
    common_pb2,
    usage_event_pb2,
)
from printernizer_stats.agent import process
from printernizer_stats.agent.agent import AgentConfig
from printernizer_stats.agent.consent import Override
from printernizer_stats.agent.server import AgentServerConfig, serve
from printernizer_stats.common.limits import MAX_PRINTERS_PER_TYPE, MAX_VERSION_PART
from printernizer_stats.common.weeks import Week

from . import unknown_fields
from .conftest import ROOT, TEMP_ROOT

RPC_TIMEOUT = 10
START_TIMEOUT = 20.0
TIMEZONE = "Europe/Berlin"
PROBE_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
UTC = dt.UTC


# --- directories ----------------------------------------------------------------------


def short_private_dir(root: str = "/tmp") -> Path:
    """A new directory under `root` with mode 0700: short enough for socket paths."""
    path = Path(tempfile.mkdtemp(prefix="pzs-", dir=root))
    path.chmod(0o700)
    return path


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    """A private base directory (0700) for one test's sockets and databases."""
    path = short_private_dir(TEMP_ROOT)  # removed below: it may be in RAM
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# --- events ---------------------------------------------------------------------------


def timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def event(kind: str, at: dt.datetime | None = None, **fields: Any) -> usage_event_pb2.UsageEvent:
    """A UsageEvent of one kind ("job_created", ...) with the body's fields."""
    body_class = getattr(usage_event_pb2, "".join(part.title() for part in kind.split("_")))
    message = usage_event_pb2.UsageEvent(**{kind: body_class(**fields)})
    if at is not None:
        message.occurred_at.CopyFrom(timestamp(at))
    return message


def job_created(
    at: dt.datetime | None = None, printer: int = common_pb2.PRINTER_TYPE_PRUSA
) -> usage_event_pb2.UsageEvent:
    return event("job_created", at, printer_type=printer)


def job_completed(
    at: dt.datetime | None = None,
    printer: int = common_pb2.PRINTER_TYPE_PRUSA,
    duration: int = common_pb2.JOB_DURATION_BUCKET_UNDER_1_HOUR,
) -> usage_event_pb2.UsageEvent:
    return event("job_completed", at, printer_type=printer, duration=duration)


def job_failed(
    at: dt.datetime | None = None,
    reason: int = common_pb2.JOB_FAILURE_REASON_CANCELLED,
    printer: int = common_pb2.PRINTER_TYPE_PRUSA,
    duration: int = common_pb2.JOB_DURATION_BUCKET_UNDER_15_MINUTES,
) -> usage_event_pb2.UsageEvent:
    return event("job_failed", at, printer_type=printer, duration=duration, reason=reason)


def error_occurred(at: dt.datetime | None, error_type: int, component: int) -> usage_event_pb2.UsageEvent:
    return event("error_occurred", at, error_type=error_type, component=component)


def app_started(
    at: dt.datetime | None = None, version: tuple[int, int, int] = (2, 3, 4)
) -> usage_event_pb2.UsageEvent:
    return event(
        "app_started",
        at,
        app_version=common_pb2.Version(major=version[0], minor=version[1], patch=version[2]),
        python_version=common_pb2.Version(major=3, minor=12, patch=1),
        platform=common_pb2.PLATFORM_LINUX,
        architecture=common_pb2.CPU_ARCHITECTURE_ARM64,
        deployment_mode=common_pb2.DEPLOYMENT_MODE_DOCKER,
    )


def app_stopped(at: dt.datetime | None = None) -> usage_event_pb2.UsageEvent:
    return event("app_stopped", at)


def feature(at: dt.datetime | None, which: int, enabled: bool) -> usage_event_pb2.UsageEvent:
    return event("feature_enabled" if enabled else "feature_disabled", at, feature=which)


def fleet(at: dt.datetime | None, counts: Sequence[tuple[int, int]]) -> usage_event_pb2.UsageEvent:
    return event(
        "printer_fleet_observed",
        at,
        printers=[usage_event_pb2.PrinterTypeCount(printer_type=t, count=n) for t, n in counts],
    )


# --- generated events (Hypothesis) ----------------------------------------------------------


def timestamps(earliest: dt.datetime, latest: dt.datetime) -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    """Any moment in [earliest, latest], to the nanosecond."""
    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.integers(int(earliest.timestamp()), int(latest.timestamp()) - 1),
        nanos=st.integers(0, 999_999_999),
    )


def _printer_fleets() -> st.SearchStrategy[list[usage_event_pb2.PrinterTypeCount]]:
    """Each printer family at most once, 1 to MAX_PRINTERS_PER_TYPE printers each."""
    families = [v.number for v in common_pb2.PrinterType.DESCRIPTOR.values if v.number]
    return st.lists(st.sampled_from(families), unique=True, max_size=4).flatmap(
        lambda chosen: st.tuples(*(st.integers(1, MAX_PRINTERS_PER_TYPE) for _ in chosen)).map(
            lambda counts: [
                usage_event_pb2.PrinterTypeCount(printer_type=t, count=n)  # type: ignore[arg-type]
                for t, n in zip(chosen, counts, strict=True)
            ]
        )
    )


def event_rules(earliest: dt.datetime, latest: dt.datetime) -> unknown_fields.Rules:
    """The agent's rules for events that the descriptors cannot express."""
    return {
        "printernizer.stats.v1.UsageEvent.occurred_at": st.none() | timestamps(earliest, latest),
        "printernizer.stats.v1.Version": st.builds(
            common_pb2.Version,
            major=st.integers(0, MAX_VERSION_PART),
            minor=st.integers(0, MAX_VERSION_PART),
            patch=st.integers(0, MAX_VERSION_PART),
            prerelease=st.booleans(),
        ),
        "printernizer.stats.v1.PrinterFleetObserved.printers": _printer_fleets(),
    }


def usage_events(earliest: dt.datetime, latest: dt.datetime) -> st.SearchStrategy[usage_event_pb2.UsageEvent]:
    """Events of every kind that the agent accepts when its clock reads `latest`
    (those without a time take the agent's)."""
    return unknown_fields.messages(usage_event_pb2.UsageEvent.DESCRIPTOR, event_rules(earliest, latest))


def record_request_bytes(*events: bytes, dropped_by_client: int = 0) -> bytes:
    """A RecordEventsRequest made of serialized events, sent as they are."""
    request = b"".join(
        unknown_fields.tag(1, unknown_fields.LENGTH_DELIMITED) + unknown_fields.varint(len(e)) + e
        for e in events
    )
    if dropped_by_client:
        request += agent_service_pb2.RecordEventsRequest(
            dropped_by_client=dropped_by_client
        ).SerializeToString()
    return request


def times_this_week(count: int) -> list[dt.datetime]:
    """`count` distinct-ish moments inside the current ISO week, before now, oldest first."""
    now = dt.datetime.now(UTC)  # the agent's clock is read later, so every moment is in its past
    start = Week.containing(now).start
    span = now - start
    return [start + span * (i + 1) / (count + 1) for i in range(count)]


class FakeClock:
    """A clock for StatsAgent that a test sets by hand: moving `now` is time
    passing (the elapsed time moves with it); `wall_error` sets the wall clock
    wrong, and only the wall clock (a clock that jumps)."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.wall_error = dt.timedelta()
        self.time_service = False  # whether an NTP keeps the wall clock right

    def __call__(self) -> dt.datetime:
        return self.now + self.wall_error

    def elapsed(self) -> float:
        return (self.now - _ELAPSED_ZERO).total_seconds()

    def synchronized(self) -> bool:
        return self.time_service


_ELAPSED_ZERO = dt.datetime(2000, 1, 1, tzinfo=UTC)


# --- a running agent ----------------------------------------------------------------------


@dataclass
class RunningAgent:
    socket_path: Path
    db_path: Path
    channel: grpc.aio.Channel
    stub: agent_service_pb2_grpc.AgentServiceStub
    config: AgentServerConfig

    @property
    def target(self) -> str:
        return f"unix:{self.socket_path}"

    async def record(
        self, *events: usage_event_pb2.UsageEvent, dropped: int = 0
    ) -> agent_service_pb2.RecordEventsResponse:
        return await self.stub.RecordEvents(
            agent_service_pb2.RecordEventsRequest(events=events, dropped_by_client=dropped),
            timeout=RPC_TIMEOUT,
        )

    async def status(self) -> agent_service_pb2.GetStatusResponse:
        return await self.stub.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT)

    async def consent(self) -> agent_service_pb2.Consent:
        response = await self.stub.GetConsent(agent_service_pb2.GetConsentRequest(), timeout=RPC_TIMEOUT)
        return response.consent

    async def set_consent(self, state: int, schema_version: int = 0) -> agent_service_pb2.Consent:
        response = await self.stub.SetConsent(
            agent_service_pb2.SetConsentRequest(state=state, schema_version=schema_version),  # type: ignore[arg-type]
            timeout=RPC_TIMEOUT,
        )
        return response.consent

    async def opt_in(self) -> agent_service_pb2.Consent:
        return await self.set_consent(
            agent_service_pb2.CONSENT_STATE_SHARING, aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
        )

    async def opt_out(self) -> agent_service_pb2.Consent:
        return await self.set_consent(agent_service_pb2.CONSENT_STATE_LOCAL_ONLY)

    async def preview(self, week: Week | None = None) -> agent_service_pb2.PreviewReportResponse:
        request = agent_service_pb2.PreviewReportRequest()
        if week is not None:
            request.week.CopyFrom(week.to_proto())
        return await self.stub.PreviewReport(request, timeout=RPC_TIMEOUT)

    async def preview_report(self, week: Week | None = None) -> aggregated_stats_pb2.AggregatedStats:
        return aggregated_stats_pb2.AggregatedStats.FromString((await self.preview(week)).report)

    async def export(self, page_size: int = 0) -> list[agent_service_pb2.ExportDataResponse]:
        call = self.stub.ExportData(
            agent_service_pb2.ExportDataRequest(page_size=page_size), timeout=RPC_TIMEOUT
        )
        return [page async for page in call]

    async def local_stats(self, weeks: int = 0) -> agent_service_pb2.GetLocalStatsResponse:
        return await self.stub.GetLocalStats(
            agent_service_pb2.GetLocalStatsRequest(weeks=weeks), timeout=RPC_TIMEOUT
        )

    async def record_bytes(self, request: bytes) -> agent_service_pb2.RecordEventsResponse:
        """RecordEvents with a request body sent byte for byte (see record_request_bytes)."""
        call = self.channel.unary_unary(
            "/printernizer.stats.v1.AgentService/RecordEvents",
            request_serializer=lambda body: body,
            response_deserializer=agent_service_pb2.RecordEventsResponse.FromString,
        )
        return await call(request, timeout=RPC_TIMEOUT)

    def database_files(self) -> dict[str, bytes]:
        """The raw bytes of the database and its WAL and shared-memory files, as they are now."""
        found = {}
        for suffix in ("", "-wal", "-shm"):
            path = self.db_path.with_name(self.db_path.name + suffix)
            if path.exists():
                found[path.name] = path.read_bytes()
        return found


def make_config(
    base: Path,
    *,
    override: Override = Override(),
    timezone: str = TIMEZONE,
    retention_days: int = 400,
    socket_path: Path | None = None,
    db_path: Path | None = None,
) -> AgentServerConfig:
    return AgentServerConfig(
        socket_path=socket_path or base / "run" / "agent.sock",
        db_path=db_path or base / "data" / "agent.db",
        agent=AgentConfig(timezone=timezone, retention_days=retention_days, override=override),
    )


async def wait_until_serving(target: str, timeout: float = START_TIMEOUT, alive: Any = None) -> None:
    """Poll the health service until it answers SERVING. `alive()` returning
    False (the task or process died) stops the wait early."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: BaseException | None = None
    socket_path = Path(target.removeprefix("unix:"))
    while asyncio.get_running_loop().time() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the agent stopped before serving (last error: {last})")
        if not socket_path.exists():
            await asyncio.sleep(0.01)
            continue
        try:
            # A private subchannel pool: no reconnect back-off shared with earlier probes.
            async with grpc.aio.insecure_channel(target, options=PROBE_OPTIONS) as channel:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1
                )
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the agent did not answer a health check on {target} within {timeout}s: {last}")


@contextlib.asynccontextmanager
async def running_agent(
    config: AgentServerConfig, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC)
) -> AsyncIterator[RunningAgent]:
    """The real server in this process, until the block ends (then a graceful stop)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop, clock))
    try:
        target = f"unix:{config.socket_path.absolute()}"
        try:
            await wait_until_serving(target, alive=lambda: not task.done())
        except RuntimeError:
            await task  # raises the server's own error
            raise
        async with grpc.aio.insecure_channel(target) as channel:
            yield RunningAgent(
                socket_path=config.socket_path.absolute(),
                db_path=config.db_path,
                channel=channel,
                stub=agent_service_pb2_grpc.AgentServiceStub(channel),
                config=config,
            )
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@pytest.fixture
async def agent(agent_dir: Path) -> AsyncIterator[RunningAgent]:
    """The real agent, in-process, on a private Unix socket and a fresh SQLite file."""
    async with running_agent(make_config(agent_dir)) as running:
        yield running


# --- the agent as a process ----------------------------------------------------------------


def agent_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATS_AGENT_") and k != "DO_NOT_TRACK"}
    env.update(extra)
    return env


def agent_command(socket_path: Path, db_path: Path, *extra: str) -> list[str]:
    return process.agent_command(
        socket_path, db_path, "--timezone", TIMEZONE, "--log-level", "WARNING", *extra
    )


@dataclass
class AgentProcess:
    """`python -m printernizer_stats.agent` as a child process (stderr goes to a file)."""

    socket_path: Path
    db_path: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=agent_environment)
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"unix:{self.socket_path}"

    async def start(self, wait: bool = True) -> None:
        """Start the process and, with `wait`, wait until it serves (an agent
        set to kill itself may be gone before a probe sees it serving)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                agent_command(self.socket_path, self.db_path, *self.extra_args),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        process = self.process
        if not wait:
            return
        try:
            await wait_until_serving(self.target, alive=lambda: process.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise RuntimeError(f"agent process failed to start: {exc}\n{self.log()}") from exc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    async def stop(self) -> int:
        """SIGTERM and wait for the exit code."""
        self.send_signal(signal.SIGTERM)
        return await self.wait()


@contextlib.asynccontextmanager
async def agent_process(base: Path, *extra_args: str, **env: str) -> AsyncIterator[AgentProcess]:
    """A started agent process; killed at the end if still running."""
    process = AgentProcess(
        socket_path=base / "run" / "agent.sock",
        db_path=base / "data" / "agent.db",
        log_path=base / "agent.log",
        extra_args=extra_args,
        env=agent_environment(**env),
    )
    await process.start()
    try:
        yield process
    finally:
        process.kill()


# --- reading the database directly -----------------------------------------------------------


def db_rows(db_path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Run a read-only query on the agent's database from outside the agent."""
    connection = sqlite3.connect(db_path, timeout=10)
    try:
        return [tuple(row) for row in connection.execute(sql, params).fetchall()]
    finally:
        connection.close()


def db_event_count(db_path: Path) -> int:
    return int(db_rows(db_path, "SELECT COUNT(*) FROM events")[0][0])
