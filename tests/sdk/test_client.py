"""The SDK against a real agent on a real Unix socket: wire compatibility,
delivery, and that the host app never sees an exception or a delay."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    common_pb2,
    usage_event_pb2,
)
from printernizer_stats.agent.consent import Override
from printernizer_stats.common.events import unpack
from printernizer_stats.sdk import (
    AppStarted,
    Component,
    CpuArchitecture,
    DeploymentMode,
    ErrorType,
    Feature,
    FileSizeBucket,
    FileType,
    JobCompleted,
    JobDurationBucket,
    JobFailureReason,
    Platform,
    PrinterFleetObserved,
    PrinterType,
    PrinterTypeCount,
    StatsClient,
    UsageEvent,
    Version,
    component_for_exception,
    error_type_for,
    file_size_bucket,
    file_type_for,
    job_duration_bucket,
    parse_version,
    printer_type_for,
)
from printernizer_stats.sdk.encoder import Encoder

from .conftest import AgentThread

EVENT_KIND_ERROR_OCCURRED = agent_service_pb2.EVENT_KIND_ERROR_OCCURRED

# Generous bound for "returns at once": a blocking RPC or a retry sleep would
# take far longer; this is a behaviour check, not a benchmark.
NO_DELAY_SECONDS = 0.25


@pytest.fixture
def paths() -> Iterator[tuple[Path, Path]]:
    # Unix socket paths are short: keep the directory under /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sdk-") as tmp:
        base = Path(tmp)
        base.chmod(0o700)
        yield base / "run" / "agent.sock", base / "agent.db"


@pytest.fixture
def agent(paths: tuple[Path, Path]) -> Iterator[AgentThread]:
    running = AgentThread(*paths).start()
    yield running
    running.stop()


def make_client(socket_path: Path, **options: object) -> StatsClient:
    options.setdefault("flush_interval", 0.05)
    return StatsClient(socket_path, **options)  # type: ignore[arg-type]


# --- Wire compatibility ----------------------------------------------------------


def betterproto_and_protobuf_pairs() -> list[tuple[UsageEvent, usage_event_pb2.UsageEvent]]:
    pb = usage_event_pb2
    return [
        (
            UsageEvent(job_completed=JobCompleted(PrinterType.PRUSA, JobDurationBucket.UNDER_4_HOURS)),
            pb.UsageEvent(job_completed=pb.JobCompleted(printer_type=3, duration=3)),
        ),
        (
            UsageEvent(
                app_started=AppStarted(
                    app_version=Version(major=2, minor=7, patch=1, prerelease=True),
                    python_version=Version(major=3, minor=11, patch=7),
                    platform=Platform.LINUX,
                    architecture=CpuArchitecture.ARM64,
                    deployment_mode=DeploymentMode.HOME_ASSISTANT_ADDON,
                )
            ),
            pb.UsageEvent(
                app_started=pb.AppStarted(
                    app_version=common_pb2.Version(major=2, minor=7, patch=1, prerelease=True),
                    python_version=common_pb2.Version(major=3, minor=11, patch=7),
                    platform=2,
                    architecture=3,
                    deployment_mode=2,
                )
            ),
        ),
        (
            UsageEvent(
                printer_fleet_observed=PrinterFleetObserved(
                    printers=[
                        PrinterTypeCount(PrinterType.BAMBU_LAB, 4),
                        PrinterTypeCount(PrinterType.PRUSA, 1),
                    ]
                )
            ),
            pb.UsageEvent(
                printer_fleet_observed=pb.PrinterFleetObserved(
                    printers=[
                        pb.PrinterTypeCount(printer_type=2, count=4),
                        pb.PrinterTypeCount(printer_type=3, count=1),
                    ]
                )
            ),
        ),
    ]


@pytest.mark.parametrize(("typed", "message"), betterproto_and_protobuf_pairs())
def test_betterproto_events_encode_to_the_same_bytes_as_protobuf(
    typed: UsageEvent, message: usage_event_pb2.UsageEvent
) -> None:
    assert bytes(typed) == message.SerializeToString(deterministic=True)
    assert UsageEvent.parse(message.SerializeToString()) == typed


def test_the_sdk_batch_encoding_is_protobufs_own() -> None:
    """The sender's own path: kind parts as the helpers cache them, and a typed
    event as record() buffers it, framed by Encoder.batch."""
    encoder = Encoder()
    when = 1_763_000_000.7
    parts = [
        encoder.kind_part(("job_created", PrinterType.KLIPPER)),
        encoder.kind_part(("error_occurred", ErrorType.TIMEOUT, Component.API)),
        encoder.kind_part(("app_stopped",)),
        betterproto_and_protobuf_pairs()[1][0],
    ]
    framed, invalid = encoder.batch([when + i for i in range(4)], parts)
    assert invalid == 0
    batch = b"".join(framed)
    pb = usage_event_pb2
    expected = agent_service_pb2.RecordEventsRequest(
        events=[
            pb.UsageEvent(job_created=pb.JobCreated(printer_type=5)),
            pb.UsageEvent(error_occurred=pb.ErrorOccurred(error_type=13, component=8)),
            pb.UsageEvent(app_stopped=pb.AppStopped()),
            betterproto_and_protobuf_pairs()[1][1],
        ]
    )
    for i, event in enumerate(expected.events):
        event.occurred_at.seconds = int(when) + i
    assert batch == expected.SerializeToString()


# --- Delivery --------------------------------------------------------------------


def test_events_reach_the_agent_in_batches(agent: AgentThread) -> None:
    client = make_client(agent.socket_path)
    client.app_started("2.7.0", DeploymentMode.DOCKER)
    for _ in range(2500):
        client.job_completed(PrinterType.BAMBU_LAB, duration_seconds=5400)
    client.error(TimeoutError(), Component.PRINTER_SERVICE)
    assert client.flush(10)
    client.close()
    assert agent.stored_events() == 2502
    stats = agent.stub_call("GetLocalStats", agent_service_pb2.GetLocalStatsRequest())
    usage = stats.this_week.usage  # type: ignore[attr-defined]
    assert usage.jobs_completed == 2500
    assert [(d.duration, d.count) for d in usage.completed_job_durations] == [
        (JobDurationBucket.UNDER_4_HOURS, 2500)
    ]
    assert client.stats().sent == 2502


def test_an_invalid_event_is_counted_and_does_not_cost_the_valid_ones(agent: AgentThread) -> None:
    client = make_client(agent.socket_path)
    client.job_created(PrinterType.PRUSA)
    client.job_created(PrinterType.UNSPECIFIED)  # not allowed by the contract
    client.feature(Feature(999) if False else Feature.TIMELAPSE, True)
    client.record("not an event")  # type: ignore[arg-type]
    assert client.flush(10)
    client.close()
    assert agent.stored_events() == 2
    assert client.stats().invalid == 2


def test_error_events_carry_the_class_only(agent: AgentThread) -> None:
    secret = "/home/alice/prints/secret-part.3mf on alice-laptop"
    client = make_client(agent.socket_path)
    try:
        raise PermissionError(13, secret)
    except PermissionError as exc:
        client.error(exc, Component.FILE_SERVICE)
    assert client.flush(10)
    client.close()
    agent.stop()
    raw = b"".join(p.read_bytes() for p in agent.db_path.parent.glob("agent.db*"))
    assert b"alice" not in raw
    assert b"secret" not in raw
    with contextlib.closing(sqlite3.connect(agent.db_path)) as db:
        shapes = [unpack(shape) for (shape,) in db.execute("SELECT shape FROM events")]
        assert shapes == [(EVENT_KIND_ERROR_OCCURRED, ErrorType.PERMISSION_DENIED, Component.FILE_SERVICE, 0)]


# --- The host never waits and never sees an exception -------------------------------


def test_agent_absent_no_exception_no_delay_and_a_bounded_buffer(paths: tuple[Path, Path]) -> None:
    socket_path, _ = paths
    client = make_client(socket_path, max_buffered=100)
    slowest = 0.0
    for _ in range(150):
        start = time.perf_counter()
        client.job_created(PrinterType.PRUSA)
        slowest = max(slowest, time.perf_counter() - start)
    start = time.perf_counter()
    client.close(timeout=0.2)
    assert time.perf_counter() - start < 1.0
    stats = client.stats()
    assert slowest < NO_DELAY_SECONDS
    assert stats.buffered == 100
    assert stats.dropped == 50
    assert not stats.agent_reachable


def test_agent_started_late_receives_the_buffer_and_the_drop_count(paths: tuple[Path, Path]) -> None:
    socket_path, db_path = paths
    client = make_client(socket_path, max_buffered=100)
    for _ in range(120):
        client.job_created(PrinterType.PRUSA)
    time.sleep(0.2)  # the sender tries and fails while the agent is down
    agent = AgentThread(socket_path, db_path).start()
    try:
        assert client.flush(40), client.stats()
        assert agent.stored_events() == 100
        status = agent.stub_call("GetStatus", agent_service_pb2.GetStatusRequest())
        assert status.dropped_events == 20  # type: ignore[attr-defined]
    finally:
        client.close()
        agent.stop()


def test_agent_stopped_and_restarted(paths: tuple[Path, Path]) -> None:
    socket_path, db_path = paths
    agent = AgentThread(socket_path, db_path).start()
    client = make_client(socket_path)
    client.job_created(PrinterType.PRUSA)
    assert client.flush(10)
    agent.stop()
    slowest = 0.0
    for _ in range(10):
        start = time.perf_counter()
        client.job_created(PrinterType.BAMBU_LAB)
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < NO_DELAY_SECONDS
    agent = AgentThread(socket_path, db_path).start()
    try:
        assert client.flush(40), client.stats()
        assert agent.stored_events() == 11
    finally:
        client.close()
        agent.stop()


def test_do_not_track_stops_recording_and_buffering(paths: tuple[Path, Path]) -> None:
    agent = AgentThread(*paths, override=Override(do_not_track=True)).start()
    client = make_client(agent.socket_path)
    try:
        client.job_created(PrinterType.PRUSA)
        client.flush(10)
        deadline = time.monotonic() + 5
        while client.stats().dropped < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(50):
            client.job_created(PrinterType.PRUSA)
        stats = client.stats()
        assert stats.buffered == 0
        assert stats.dropped == 51
        assert agent.stored_events() == 0
    finally:
        client.close()
        agent.stop()


async def test_recording_from_async_code_does_not_block_the_loop(paths: tuple[Path, Path]) -> None:
    socket_path, _ = paths  # no agent: the worst case for a blocking design
    client = make_client(socket_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    for round_ in range(20):
        before = ticks
        for _ in range(100):
            client.job_created(PrinterType.PRUSA)
            client.error(ValueError("x"), Component.API)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert ticks > before, f"the loop did not run after round {round_}"
    elapsed = time.perf_counter() - started
    task.cancel()
    client.close(timeout=0.1)
    # 4,000 calls with no agent: a design that waited for the socket would take
    # seconds (connection attempts, retry sleeps); these are appends.
    assert elapsed < 1.0, elapsed


def test_bad_arguments_never_raise_into_the_host(paths: tuple[Path, Path]) -> None:
    client = make_client(paths[0])
    client.record(None)  # type: ignore[arg-type]
    client.job_completed(PrinterType.PRUSA, duration_seconds="long")  # type: ignore[arg-type]
    client.file_downloaded(size_bytes=None, file_type=FileType.GCODE)  # type: ignore[arg-type]
    client.error("not an exception", Component.API)  # type: ignore[arg-type]
    client.printer_fleet(None)  # type: ignore[arg-type]
    client.app_started(None, DeploymentMode.DOCKER)  # type: ignore[arg-type]
    client.close(timeout=0.1)
    client.close(timeout=0.1)  # twice is fine
    assert client.stats().invalid >= 5


# --- Coarsening on the device --------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0, JobDurationBucket.UNDER_15_MINUTES),
        (899.9, JobDurationBucket.UNDER_15_MINUTES),
        (900, JobDurationBucket.UNDER_1_HOUR),
        (3600, JobDurationBucket.UNDER_4_HOURS),
        (4 * 3600, JobDurationBucket.UNDER_12_HOURS),
        (12 * 3600, JobDurationBucket.UNDER_24_HOURS),
        (24 * 3600, JobDurationBucket.AT_LEAST_24_HOURS),
    ],
)
def test_job_duration_buckets(seconds: float, bucket: JobDurationBucket) -> None:
    assert job_duration_bucket(seconds) == bucket


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        (0, FileSizeBucket.UNDER_1_MB),
        (1024 * 1024, FileSizeBucket.UNDER_10_MB),
        (100 * 1024 * 1024 - 1, FileSizeBucket.UNDER_100_MB),
        (1024**3, FileSizeBucket.AT_LEAST_1_GB),
    ],
)
def test_file_size_buckets(size: int, bucket: FileSizeBucket) -> None:
    assert file_size_bucket(size) == bucket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.7.0", (2, 7, 0, False)),
        ("v3.1", (3, 1, 0, False)),
        ("2.8.0-beta.1", (2, 8, 0, True)),
        ("2.8.0+joes-laptop", (2, 8, 0, True)),
        ("nightly", (0, 0, 0, False)),
    ],
)
def test_versions_become_numbers_and_never_keep_text(text: str, expected: tuple[int, int, int, bool]) -> None:
    version = parse_version(text)
    assert (version.major, version.minor, version.patch, version.prerelease) == expected


@pytest.mark.parametrize(
    ("exc", "error_type"),
    [
        (ConnectionRefusedError(), ErrorType.CONNECTION_REFUSED),
        (TimeoutError(), ErrorType.TIMEOUT),
        (PermissionError(), ErrorType.PERMISSION_DENIED),
        (OSError(28, "No space left on device"), ErrorType.DISK_FULL),
        (sqlite3.OperationalError(), ErrorType.DATABASE),
        (type("ValidationError", (Exception,), {})(), ErrorType.VALIDATION),
        (KeyError("x"), ErrorType.OTHER),
    ],
)
def test_exceptions_map_to_error_types_by_class(exc: BaseException, error_type: ErrorType) -> None:
    assert error_type_for(exc) == error_type


def test_host_specific_error_classes_can_be_mapped() -> None:
    class PrinterOffline(Exception):
        pass

    assert error_type_for(PrinterOffline(), {PrinterOffline: ErrorType.PRINTER_OFFLINE}) == (
        ErrorType.PRINTER_OFFLINE
    )


def test_job_failure_reason_round_trips_through_the_agent(agent: AgentThread) -> None:
    client = make_client(agent.socket_path)
    client.job_failed(PrinterType.PRUSA, 600, JobFailureReason.FILAMENT_RUNOUT)
    client.file_uploaded(5 * 1024 * 1024, FileType.THREE_MF)
    assert client.flush(10)
    client.close()
    stats = agent.stub_call("GetLocalStats", agent_service_pb2.GetLocalStatsRequest())
    usage = stats.this_week.usage  # type: ignore[attr-defined]
    assert usage.jobs_failed == 1
    assert [(f.reason, f.count) for f in usage.job_failures] == [(JobFailureReason.FILAMENT_RUNOUT, 1)]
    assert usage.files_uploaded == 1


def test_events_recorded_right_after_opting_in_are_counted(agent: AgentThread) -> None:
    """Event times have whole seconds; consent must not lose the rest of its second."""
    before = make_client(agent.socket_path)
    before.job_created(PrinterType.PRUSA)
    assert before.flush(10)
    before.close()
    agent.stub_call(
        "SetConsent",
        agent_service_pb2.SetConsentRequest(state=agent_service_pb2.CONSENT_STATE_SHARING, schema_version=1),
    )
    after = make_client(agent.socket_path)
    after.job_created(PrinterType.BAMBU_LAB)
    after.job_created(PrinterType.BAMBU_LAB)
    assert after.flush(10)
    after.close()
    preview = agent.stub_call("PreviewReport", agent_service_pb2.PreviewReportRequest())
    report = aggregated_stats_pb2.AggregatedStats.FromString(preview.report)  # type: ignore[attr-defined]
    assert report.usage.jobs_created == 2


async def test_exception_hook_records_uncaught_errors_by_class(
    agent: AgentThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    loop = asyncio.get_running_loop()
    client = make_client(agent.socket_path)
    client.install_exception_hook(Component.SCHEDULER)
    try:
        secret = "token=hunter2 at /home/alice"
        sys.excepthook(ValueError, ValueError(secret), None)  # as the interpreter would call it

        def crash() -> None:
            raise PermissionError(secret)

        worker = threading.Thread(target=crash)
        worker.start()
        worker.join()
        loop.call_exception_handler({"message": "task failed", "exception": TimeoutError(secret)})
        assert client.flush(10)
    finally:
        loop.set_exception_handler(None)
        client.close()
    assert secret in capsys.readouterr().err  # the previous hooks still ran
    stats = agent.stub_call("GetLocalStats", agent_service_pb2.GetLocalStatsRequest())
    errors = {(e.error_type, e.component): e.count for e in stats.this_week.errors}  # type: ignore[attr-defined]
    assert errors == {
        (ErrorType.VALIDATION, Component.SCHEDULER): 1,
        (ErrorType.PERMISSION_DENIED, Component.SCHEDULER): 1,
        (ErrorType.TIMEOUT, Component.SCHEDULER): 1,
    }
    agent.stop()
    raw = b"".join(p.read_bytes() for p in agent.db_path.parent.glob("agent.db*"))
    assert b"hunter2" not in raw


def test_flush_is_true_only_once_what_was_recorded_is_delivered(
    agent: AgentThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender takes events out of the buffer before they are the pending
    batch; while it encodes them (slowly here), flush() must still wait."""
    encode = Encoder.batch

    def slow(self: object, times: list[float], parts: list[object]) -> tuple[list[bytes], int]:
        time.sleep(0.3)
        return encode(self, times, parts)  # type: ignore[arg-type]

    monkeypatch.setattr(Encoder, "batch", slow)
    client = make_client(agent.socket_path)
    client.job_completed(PrinterType.BAMBU_LAB, duration_seconds=60)
    assert client.flush(10)
    assert (client.stats().sent, agent.stored_events()) == (1, 1)
    client.close()


# --- Printernizer's own values (docs/sdk.md, "Printernizer's values") ----------------


class PrinternizerError(Exception):
    """Stand-ins named as Printernizer's classes in src/utils/errors.py."""


class PrinterNotFoundError(PrinternizerError):
    pass


class FileNotFoundError(PrinternizerError):
    pass


def test_printernizers_values_are_placed_and_the_rest_counted(agent: AgentThread) -> None:
    client = make_client(agent.socket_path)
    client.job_created("bambu_lab")
    client.job_completed("unknown")  # no measured duration
    client.job_failed("prusa_core")  # no duration, no reason
    client.printer_connected("a-printer-nobody-knows")  # OTHER, counted as unplaced
    client.file_uploaded(1024, "model.PLY")
    client.file_downloaded(1024, "notes.txt")  # OTHER, counted as unplaced
    client.error(PrinterNotFoundError("printer 'garage' not found"), Component.API)
    client.error(FileNotFoundError("/home/me/secret.3mf"), Component.FILE_SERVICE)
    assert client.flush(10)
    stats = client.stats()
    client.close()
    assert (stats.sent, stats.invalid, stats.unplaced) == (8, 0, 2)
    local = agent.stub_call("GetLocalStats", agent_service_pb2.GetLocalStatsRequest()).this_week  # type: ignore[attr-defined]
    assert [(d.duration, d.count) for d in local.usage.completed_job_durations] == [
        (JobDurationBucket.UNKNOWN, 1)
    ]
    assert {(e.error_type, e.component) for e in local.errors} == {
        (ErrorType.NOT_FOUND, Component.API),
        (ErrorType.FILE_NOT_FOUND, Component.FILE_SERVICE),
    }


def test_the_component_is_the_printernizer_module_an_error_came_from() -> None:
    namespace: dict[str, object] = {"__name__": "src.services.job_service"}
    exec("def fail():\n    raise ValueError('job 42 is odd')", namespace)
    with pytest.raises(ValueError, match="odd") as raised:
        namespace["fail"]()  # type: ignore[operator]
    assert component_for_exception(raised.value) == (Component.JOB_SERVICE, True)
    assert component_for_exception(ValueError()) == (Component.OTHER, False)
    assert file_type_for("benchy.gcode.3mf") == (FileType.THREE_MF, True)
    assert printer_type_for(None) == (PrinterType.UNKNOWN, True)
    assert job_duration_bucket(None) == job_duration_bucket(float("nan")) == JobDurationBucket.UNKNOWN
