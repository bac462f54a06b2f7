"""The SDK's in-memory client (printernizer_stats.sdk.testing) for hosts' own
tests: it keeps exactly what the real client delivers to a real agent for the
same calls, counts what is refused or unplaced as the real one does, and needs
no agent and no socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc, usage_event_pb2
from printernizer_stats.demo.host_app import APP_VERSION, create_app
from printernizer_stats.sdk import (
    Component,
    CpuArchitecture,
    DeploymentMode,
    ErrorType,
    Feature,
    FileSizeBucket,
    FileType,
    JobCreated,
    JobDurationBucket,
    JobFailureReason,
    Platform,
    PrinterType,
    StatsClient,
    UsageEvent,
    this_architecture,
    this_platform,
)
from printernizer_stats.sdk.testing import InMemoryStatsClient, Recorded

from .conftest import AgentThread


@pytest.fixture
def agent() -> Iterator[AgentThread]:
    # Unix socket paths are short: keep the directory under /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sdk-") as tmp:
        base = Path(tmp)
        base.chmod(0o700)
        running = AgentThread(base / "run" / "agent.sock", base / "agent.db").start()
        yield running
        running.stop()


def host_calls(stats: StatsClient, now: dt.datetime) -> None:
    """The same calls on either client: every helper; names the mappings
    place and names they do not; values the client refuses and a time the
    agent refuses."""
    stats.app_started("2.8.0-beta.1", DeploymentMode.DOCKER)
    stats.printer_fleet({PrinterType.BAMBU_LAB: 2, PrinterType.PRUSA: 1, PrinterType.KLIPPER: 0})
    stats.feature(Feature.LIBRARY, True)
    stats.feature(Feature.TIMELAPSE, False)
    stats.job_created("bambu_lab")
    stats.job_completed(PrinterType.BAMBU_LAB, duration_seconds=5400)
    stats.job_completed("unknown")  # no duration measured
    stats.job_failed("prusa_core", 600, JobFailureReason.FILAMENT_RUNOUT)
    stats.job_failed(PrinterType.KLIPPER)
    stats.file_downloaded(5 * 1024 * 1024, "benchy.gcode.3mf")
    stats.file_uploaded(1024, "notes.txt")  # unplaced: OTHER
    stats.printer_connected("a-printer-nobody-knows")  # unplaced: OTHER
    stats.printer_disconnected(PrinterType.OCTOPRINT)
    stats.error(PermissionError(13, "/home/alice/secret.3mf"), Component.FILE_SERVICE)
    stats.error(TimeoutError())  # raised outside Printernizer's modules: component OTHER, unplaced
    stats.job_created(PrinterType.UNSPECIFIED)  # refused by the client: the contract forbids it
    stats.printer_fleet({PrinterType.PRUSA: 20_000})  # refused: more than a fleet may hold
    an_hour_ago = now - dt.timedelta(hours=1)
    stats.record(UsageEvent(occurred_at=an_hour_ago, job_created=JobCreated(printer_type=PrinterType.PRUSA)))
    ahead = now + dt.timedelta(hours=1)
    stats.record(UsageEvent(occurred_at=ahead, job_created=JobCreated(printer_type=PrinterType.PRUSA)))
    stats.record("not an event")  # type: ignore[arg-type]
    stats.app_stopped()


def stored_events(agent: AgentThread) -> list[usage_event_pb2.UsageEvent]:
    """Every event the agent stores, oldest first, as its export gives them."""
    with grpc.insecure_channel(f"unix:{agent.socket_path}") as channel:
        pages = agent_service_pb2_grpc.AgentServiceStub(channel).ExportData(
            agent_service_pb2.ExportDataRequest(), timeout=10
        )
        return [stored.event for page in pages for stored in page.events]


def without_times(events: list[usage_event_pb2.UsageEvent]) -> list[bytes]:
    kinds = []
    for event in events:
        copy = usage_event_pb2.UsageEvent()
        copy.CopyFrom(event)
        copy.ClearField("occurred_at")
        kinds.append(copy.SerializeToString(deterministic=True))
    return kinds


def test_what_it_keeps_is_what_the_real_client_delivers_to_a_real_agent(agent: AgentThread) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    real = StatsClient(agent.socket_path, flush_interval=0.05)
    host_calls(real, now)
    assert real.flush(10), real.stats()
    real.close()
    stored = stored_events(agent)

    memory = InMemoryStatsClient()
    host_calls(memory, now)
    kept = memory.events()

    assert len(stored) == 17  # the calls less the four refused
    assert without_times(kept) == without_times(stored)
    # An event the host dated itself keeps its time; the rest are stamped now, in whole seconds.
    assert kept[15].occurred_at.ToDatetime(tzinfo=dt.UTC) == now - dt.timedelta(hours=1)
    assert stored[15].occurred_at == kept[15].occurred_at
    for event in kept[:15] + kept[16:]:
        assert event.occurred_at.nanos == 0
        assert abs(event.occurred_at.ToDatetime(tzinfo=dt.UTC) - now) < dt.timedelta(minutes=1)

    expected = real.stats()
    assert (expected.sent, expected.invalid, expected.unplaced, expected.dropped) == (17, 4, 3, 0)
    assert memory.stats() == expected


def test_recorded_gives_plain_values_with_the_sdks_enums() -> None:
    stats = InMemoryStatsClient()
    stats.app_started("2.8.0-beta.1", DeploymentMode.HOME_ASSISTANT_ADDON)
    stats.printer_fleet({PrinterType.PRUSA: 1, PrinterType.BAMBU_LAB: 2})
    stats.job_failed("bambu_lab", 90, JobFailureReason.CANCELLED)
    stats.file_uploaded(3 * 1024 * 1024, ".ply")
    python = sys.version_info
    assert stats.recorded() == [
        Recorded(
            "app_started",
            {
                "app_version": {"major": 2, "minor": 8, "patch": 0, "prerelease": True},
                "python_version": {
                    "major": python.major,
                    "minor": python.minor,
                    "patch": python.micro,
                    "prerelease": python.releaselevel != "final",
                },
                "platform": this_platform(),
                "architecture": this_architecture(),
                "deployment_mode": DeploymentMode.HOME_ASSISTANT_ADDON,
            },
        ),
        Recorded(
            "printer_fleet_observed",
            {
                "printers": [
                    {"printer_type": PrinterType.BAMBU_LAB, "count": 2},
                    {"printer_type": PrinterType.PRUSA, "count": 1},
                ]
            },
        ),
        Recorded(
            "job_failed",
            {
                "printer_type": PrinterType.BAMBU_LAB,
                "duration": JobDurationBucket.UNDER_15_MINUTES,
                "reason": JobFailureReason.CANCELLED,
            },
        ),
        Recorded("file_uploaded", {"size": FileSizeBucket.UNDER_10_MB, "file_type": FileType.PLY}),
    ]
    started = stats.recorded("app_started")[0]
    assert type(started.fields["platform"]) is Platform
    assert type(started.fields["architecture"]) is CpuArchitecture
    assert started.occurred_at is not None
    assert abs(started.occurred_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert [r.kind for r in stats.recorded("job_failed")] == ["job_failed"]
    stats.clear()
    assert stats.recorded() == []
    assert stats.stats().sent == 4  # the counts go on


def test_it_needs_no_agent_no_socket_and_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATS_AGENT_SOCKET", "/nonexistent/agent.sock")
    threads = set(threading.enumerate())
    stats = InMemoryStatsClient()
    for _ in range(25_000):  # more than its buffer holds at once: full batches are kept as they fill
        stats.job_created(PrinterType.PRUSA)
    # No thread of its own (other tests' threads may come and go meanwhile: only new ones count).
    assert set(threading.enumerate()) - threads == set()
    assert stats.flush(timeout=0)
    recorded = stats.stats()
    assert (recorded.sent, recorded.buffered, recorded.dropped, recorded.invalid) == (25_000, 0, 0, 0)
    assert recorded.agent_reachable


def test_a_closed_client_keeps_nothing_more_as_the_real_one_sends_nothing_more() -> None:
    stats = InMemoryStatsClient()
    stats.app_stopped()
    stats.close()
    stats.job_created(PrinterType.PRUSA)
    assert [r.kind for r in stats.recorded()] == ["app_stopped"]
    assert not stats.flush()
    assert stats.stats().buffered == 1


def test_its_exception_hooks_record_and_are_put_back_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(threading, "excepthook", lambda _: None)  # keeps the test's output quiet
    before = (sys.excepthook, threading.excepthook)
    stats = InMemoryStatsClient()
    stats.install_exception_hook(Component.SCHEDULER)
    assert (sys.excepthook, threading.excepthook) != before

    def crash() -> None:
        raise PermissionError("token=hunter2")

    worker = threading.Thread(target=crash)
    worker.start()
    worker.join()
    stats.close()
    assert (sys.excepthook, threading.excepthook) == before
    assert stats.recorded() == [
        Recorded(
            "error_occurred", {"error_type": ErrorType.PERMISSION_DENIED, "component": Component.SCHEDULER}
        )
    ]


async def test_a_host_app_tested_with_it() -> None:
    """What a host's own test looks like: the example host app (a Printernizer
    stand-in) given the in-memory client, driven through its REST API."""
    stats = InMemoryStatsClient()
    app = create_app(stats, "/privacy", simulate_every=3600)
    loop = asyncio.get_running_loop()
    handler_before = loop.get_exception_handler()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://host") as client,
    ):
        job = (await client.post("/api/jobs", json={"printer": "mk4"})).json()["job"]
        await client.post(f"/api/jobs/{job}/finish", json={"ok": True, "seconds": 7200})
        assert (await client.post("/api/printers/mk4/connect")).status_code == 500
    assert loop.get_exception_handler() is handler_before  # closed at shutdown: its hooks are gone

    assert stats.recorded("app_started")[0].fields["app_version"] == {
        "major": int(APP_VERSION.split(".")[0]),
        "minor": int(APP_VERSION.split(".")[1]),
        "patch": int(APP_VERSION.split(".")[2]),
        "prerelease": False,
    }
    assert stats.recorded("job_completed") == [
        Recorded(
            "job_completed", {"printer_type": PrinterType.PRUSA, "duration": JobDurationBucket.UNDER_4_HOURS}
        )
    ]
    assert stats.recorded("error_occurred") == [
        Recorded("error_occurred", {"error_type": ErrorType.CONNECTION_LOST, "component": Component.API})
    ]
    assert [r.kind for r in stats.recorded()][-1] == "app_stopped"
    assert stats.stats().invalid == 0
