"""The agent API over the real socket (good and bad input), and the weekly
report's semantics on the domain class with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    common_pb2,
    country_pb2,
    usage_event_pb2,
)
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import Override
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.common.errors import field_violations
from printernizer_stats.common.events import MAX_BATCH_EVENTS
from printernizer_stats.common.weeks import Week

from .. import agent_harness
from ..agent_harness import (
    RPC_TIMEOUT,
    FakeClock,
    RunningAgent,
    app_started,
    app_stopped,
    error_occurred,
    event,
    feature,
    fleet,
    job_completed,
    job_created,
    job_failed,
    times_this_week,
)
from .conftest import bad_request, rpc_error

# The harness's fixtures, used by the tests below (imported explicitly, not via conftest).
agent = agent_harness.agent
agent_dir = agent_harness.agent_dir

UTC = dt.UTC
C = common_pb2
KIND = agent_service_pb2


def record_request(*events: usage_event_pb2.UsageEvent) -> agent_service_pb2.RecordEventsRequest:
    return agent_service_pb2.RecordEventsRequest(events=events)


# --- every RPC with good input -------------------------------------------------------------------


async def test_record_events_stores_a_batch_and_the_client_drop_count(agent: RunningAgent) -> None:
    result = await agent.record(job_created(), job_completed(), app_started(), dropped=7)
    assert (result.stored_count, result.recording_disabled) == (3, False)
    result = await agent.record(app_stopped(), dropped=1)
    assert result.stored_count == 1
    status = await agent.status()
    assert status.stored_events == 4
    assert status.dropped_events == 8
    assert status.rejected_events == 0
    assert status.last_outcome == agent_service_pb2.DELIVERY_OUTCOME_NONE
    assert status.queued_reports == 0
    assert not status.HasField("last_submission")
    assert (status.agent_version.major, status.agent_version.minor) == (0, 2)


async def test_empty_batch_is_accepted(agent: RunningAgent) -> None:
    result = await agent.record()
    assert (result.stored_count, result.recording_disabled) == (0, False)
    assert (await agent.status()).stored_events == 0


async def test_set_consent_choices(agent: RunningAgent) -> None:
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    consent = await agent.set_consent(agent_service_pb2.CONSENT_STATE_LOCAL_ONLY)
    assert consent.chosen == agent_service_pb2.CONSENT_STATE_LOCAL_ONLY
    assert consent.reason == agent_service_pb2.CONSENT_REASON_USER_CHOICE
    assert consent.changed_at.ToDatetime(tzinfo=UTC) >= before
    assert await agent.consent() == consent

    consent = await agent.set_consent(agent_service_pb2.CONSENT_STATE_DISABLED)
    assert (consent.chosen, consent.effective) == (
        agent_service_pb2.CONSENT_STATE_DISABLED,
        agent_service_pb2.CONSENT_STATE_DISABLED,
    )
    result = await agent.record(job_created())
    assert (result.stored_count, result.recording_disabled) == (0, True)

    consent = await agent.opt_in()
    assert consent.effective == agent_service_pb2.CONSENT_STATE_SHARING
    assert consent.consented_schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
    assert (await agent.record(job_created())).stored_count == 1


async def test_local_stats_of_a_known_week(agent: RunningAgent) -> None:
    t = times_this_week(6)
    last_week = Week.containing(t[0]).start - dt.timedelta(days=1)
    await agent.record(
        job_created(last_week),
        job_created(t[0], C.PRINTER_TYPE_PRUSA),
        job_created(t[0], C.PRINTER_TYPE_PRUSA),
        job_created(t[1], C.PRINTER_TYPE_BAMBU_LAB),
        job_completed(t[2], duration=C.JOB_DURATION_BUCKET_UNDER_1_HOUR),
        job_completed(t[3], duration=C.JOB_DURATION_BUCKET_UNDER_4_HOURS),
        job_failed(t[3], reason=C.JOB_FAILURE_REASON_CANCELLED),
        error_occurred(t[4], C.ERROR_TYPE_CONNECTION_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
        error_occurred(t[4], C.ERROR_TYPE_CONNECTION_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
        error_occurred(t[5], C.ERROR_TYPE_DISK_FULL, C.COMPONENT_FILE_SERVICE),
        event("file_downloaded", t[5], size=C.FILE_SIZE_BUCKET_UNDER_1_MB, file_type=C.FILE_TYPE_GCODE),
        event("printer_connected", t[1], printer_type=C.PRINTER_TYPE_PRUSA),
        event("printer_connected", t[2], printer_type=C.PRINTER_TYPE_KLIPPER),
        event("printer_disconnected", t[5], printer_type=C.PRINTER_TYPE_PRUSA),
    )
    before = dt.datetime.now(UTC)
    stats = await agent.local_stats(weeks=2)

    current = Week.containing(dt.datetime.now(UTC))
    assert Week.from_proto(stats.this_week.week) == current
    usage = stats.this_week.usage
    assert usage.jobs_created == 3
    assert usage.jobs_completed == 2
    assert usage.jobs_failed == 1
    assert [(d.duration, d.count) for d in usage.completed_job_durations] == [
        (C.JOB_DURATION_BUCKET_UNDER_1_HOUR, 1),
        (C.JOB_DURATION_BUCKET_UNDER_4_HOURS, 1),
    ]
    assert [(f.reason, f.count) for f in usage.job_failures] == [(C.JOB_FAILURE_REASON_CANCELLED, 1)]
    assert usage.files_downloaded == 1
    assert usage.printer_connections == 2
    assert usage.printer_disconnections == 1
    assert [(e.error_type, e.component, e.count) for e in stats.this_week.errors] == [
        (C.ERROR_TYPE_CONNECTION_TIMEOUT, C.COMPONENT_PRINTER_SERVICE, 2),
        (C.ERROR_TYPE_DISK_FULL, C.COMPONENT_FILE_SERVICE, 1),
    ]
    assert [Week.from_proto(w.week) for w in stats.recent_weeks] == [current.previous(), current]
    assert stats.recent_weeks[0].usage.jobs_created == 1
    assert stats.recent_weeks[0].usage.jobs_completed == 0
    assert stats.recent_weeks[1] == stats.this_week
    assert [(t.kind, t.count) for t in stats.totals] == [
        (KIND.EVENT_KIND_JOB_CREATED, 4),
        (KIND.EVENT_KIND_JOB_COMPLETED, 2),
        (KIND.EVENT_KIND_JOB_FAILED, 1),
        (KIND.EVENT_KIND_FILE_DOWNLOADED, 1),
        (KIND.EVENT_KIND_PRINTER_CONNECTED, 2),
        (KIND.EVENT_KIND_PRINTER_DISCONNECTED, 1),
        (KIND.EVENT_KIND_ERROR_OCCURRED, 3),
    ]
    assert stats.HasField("first_seen")
    first_seen = stats.first_seen.ToDatetime(tzinfo=UTC)
    assert before - dt.timedelta(seconds=10) <= first_seen <= before
    assert stats.consent.effective == agent_service_pb2.CONSENT_STATE_LOCAL_ONLY
    assert stats.installation.installation_id == b""
    assert stats.installation.country == country_pb2.COUNTRY_DE
    assert not stats.HasField("last_submission")

    default = await agent.local_stats()
    assert len(default.recent_weeks) == 12
    assert Week.from_proto(default.recent_weeks[-1].week) == current
    assert Week.from_proto(default.recent_weeks[0].week) == Week.containing(
        current.start - dt.timedelta(weeks=11)
    )


async def test_local_stats_of_an_empty_agent(agent: RunningAgent) -> None:
    stats = await agent.local_stats(weeks=1)
    assert len(stats.recent_weeks) == 1
    assert stats.this_week.usage == aggregated_stats_pb2.UsageCounts()
    assert list(stats.totals) == []
    assert not stats.HasField("first_seen")


async def test_preview_of_a_past_week(agent: RunningAgent) -> None:
    past = Week.containing(dt.datetime.now(UTC)).previous().previous()
    preview = await agent.preview(past)
    assert Week.from_proto(preview.week) == past
    report = aggregated_stats_pb2.AggregatedStats.FromString(preview.report)
    assert Week.from_proto(report.period) == past


async def test_export_is_paged(agent: RunningAgent) -> None:
    await agent.record(*(job_created() for _ in range(5)))
    pages = await agent.export(page_size=2)
    assert [len(p.events) for p in pages] == [2, 2, 1]
    assert [e.sequence for p in pages for e in p.events] == [1, 2, 3, 4, 5]
    assert pages[0].HasField("settings")
    assert pages[0].settings.time_zone == "Europe/Berlin"
    assert pages[0].settings.retention_days == 400
    assert not pages[1].HasField("settings")
    assert all(e.HasField("recorded_at") for p in pages for e in p.events)
    # An empty database still exports its settings.
    await agent.stub.DeleteAllData(agent_service_pb2.DeleteAllDataRequest(), timeout=RPC_TIMEOUT)
    pages = await agent.export()
    assert len(pages) == 1
    assert pages[0].HasField("settings")


async def test_export_round_trips_every_event_kind(agent: RunningAgent) -> None:
    moment = dt.datetime.now(UTC).replace(microsecond=123000) - dt.timedelta(seconds=5)
    sent = [
        app_started(moment),
        app_stopped(moment),
        job_created(moment),
        job_completed(moment),
        job_failed(moment),
        event("file_downloaded", moment, size=C.FILE_SIZE_BUCKET_UNDER_1_GB, file_type=C.FILE_TYPE_THREE_MF),
        event("file_uploaded", moment, size=C.FILE_SIZE_BUCKET_AT_LEAST_1_GB, file_type=C.FILE_TYPE_STEP),
        event("printer_connected", moment, printer_type=C.PRINTER_TYPE_ELEGOO),
        event("printer_disconnected", moment, printer_type=C.PRINTER_TYPE_ANYCUBIC),
        error_occurred(moment, C.ERROR_TYPE_OUT_OF_MEMORY, C.COMPONENT_SCHEDULER),
        feature(moment, C.FEATURE_MQTT, True),
        feature(moment, C.FEATURE_IDEAS, False),
        fleet(moment, [(C.PRINTER_TYPE_PRUSA, 3), (C.PRINTER_TYPE_BAMBU_LAB, 1)]),
    ]
    assert (await agent.record(*sent)).stored_count == len(sent)
    exported = [e.event for e in (await agent.export())[0].events]
    assert exported == sent


async def test_delete_all_data_and_ledger(agent: RunningAgent) -> None:
    await agent.record(job_created(), job_created(), job_created())
    deleted = await agent.stub.DeleteAllData(agent_service_pb2.DeleteAllDataRequest(), timeout=RPC_TIMEOUT)
    assert (deleted.events_deleted, deleted.reports_deleted) == (3, 0)
    deleted = await agent.stub.DeleteAllData(agent_service_pb2.DeleteAllDataRequest(), timeout=RPC_TIMEOUT)
    assert (deleted.events_deleted, deleted.reports_deleted) == (0, 0)
    listed = await agent.stub.ListSentReports(
        agent_service_pb2.ListSentReportsRequest(limit=5), timeout=RPC_TIMEOUT
    )
    assert list(listed.reports) == []
    assert list(listed.deletion_receipts) == []


async def test_submit_now_needs_sharing_and_a_server(agent: RunningAgent) -> None:
    error = await rpc_error(agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "opting in" in error.details()
    await agent.opt_in()
    error = await rpc_error(agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "server" in error.details()


# --- bad input -------------------------------------------------------------------------------------


def refusals(response: agent_service_pb2.RecordEventsResponse) -> list[tuple[int, str]]:
    return [(refused.index, refused.field) for refused in response.refused]


async def test_unknown_enum_value_names_the_field(agent: RunningAgent) -> None:
    batch = record_request(job_created(), job_created(printer=999))
    answer = await agent.stub.RecordEvents(batch, timeout=RPC_TIMEOUT)
    assert (answer.stored_count, refusals(answer)) == (1, [(1, "job_created.printer_type")])
    assert "999" in answer.refused[0].reason
    alone = record_request(job_created(printer=999))
    assert await bad_request(agent.stub.RecordEvents(alone, timeout=RPC_TIMEOUT)) == [
        "events[0].job_created.printer_type"
    ]


@pytest.mark.parametrize(
    ("bad_event", "field"),
    [
        (usage_event_pb2.UsageEvent(), "events[0].kind"),
        (job_created(printer=C.PRINTER_TYPE_UNSPECIFIED), "events[0].job_created.printer_type"),
        (job_completed(duration=77), "events[0].job_completed.duration"),
        (
            event("app_started", platform=C.PLATFORM_LINUX),
            "events[0].app_started.app_version",
        ),
        (
            fleet(None, [(C.PRINTER_TYPE_PRUSA, 1), (C.PRINTER_TYPE_PRUSA, 2)]),
            "events[0].printer_fleet_observed.printers[1].printer_type",
        ),
        (fleet(None, [(C.PRINTER_TYPE_PRUSA, 0)]), "events[0].printer_fleet_observed.printers[0].count"),
        (
            job_created(dt.datetime.now(UTC) + dt.timedelta(hours=1)),
            "events[0].occurred_at",
        ),
        (job_created(dt.datetime(1999, 12, 31, tzinfo=UTC)), "events[0].occurred_at"),
    ],
    ids=[
        "no_kind",
        "unspecified_enum",
        "unknown_duration",
        "missing_version",
        "fleet_duplicate",
        "fleet_zero",
        "future",
        "before_2000",
    ],
)
async def test_invalid_event_names_its_field(
    agent: RunningAgent, bad_event: usage_event_pb2.UsageEvent, field: str
) -> None:
    # Beside a valid event, it is refused alone: the valid one is stored.
    answer = await agent.stub.RecordEvents(record_request(bad_event, job_created()), timeout=RPC_TIMEOUT)
    assert (answer.stored_count, refusals(answer)) == (1, [(0, field.removeprefix("events[0]."))])
    # Alone, nothing is stored: the call fails, naming the field.
    alone = record_request(bad_event)
    assert await bad_request(agent.stub.RecordEvents(alone, timeout=RPC_TIMEOUT)) == [field]
    assert (await agent.status()).stored_events == 1


async def test_refused_events_cost_the_others_nothing_and_are_counted(agent: RunningAgent) -> None:
    assert (await agent.record(job_created(), job_created())).stored_count == 2
    mixed = record_request(
        job_created(), usage_event_pb2.UsageEvent(), job_created(), job_completed(duration=77)
    )
    answer = await agent.stub.RecordEvents(mixed, timeout=RPC_TIMEOUT)
    assert (answer.stored_count, refusals(answer)) == (2, [(1, "kind"), (3, "job_completed.duration")])
    status = await agent.status()
    assert (status.stored_events, status.rejected_events) == (4, 2)

    all_bad = record_request(usage_event_pb2.UsageEvent(), job_created(printer=999))
    assert await bad_request(agent.stub.RecordEvents(all_bad, timeout=RPC_TIMEOUT)) == [
        "events[0].kind",
        "events[1].job_created.printer_type",
    ]
    status = await agent.status()
    assert (status.stored_events, status.rejected_events) == (4, 4)

    # A batch over the bound is refused as a whole.
    too_many = record_request(*(job_created() for _ in range(MAX_BATCH_EVENTS + 1)))
    assert await bad_request(agent.stub.RecordEvents(too_many, timeout=RPC_TIMEOUT)) == ["events"]
    status = await agent.status()
    assert (status.stored_events, status.rejected_events) == (4, 4 + MAX_BATCH_EVENTS + 1)

    exactly_max = record_request(*(job_created() for _ in range(MAX_BATCH_EVENTS)))
    assert (await agent.stub.RecordEvents(exactly_max, timeout=RPC_TIMEOUT)).stored_count == MAX_BATCH_EVENTS
    status = await agent.status()
    assert (status.stored_events, status.rejected_events) == (4 + MAX_BATCH_EVENTS, 4 + MAX_BATCH_EVENTS + 1)


@pytest.mark.parametrize(
    ("state", "schema_version", "field"),
    [
        (agent_service_pb2.CONSENT_STATE_UNSPECIFIED, 0, "state"),
        (7, 0, "state"),
        (agent_service_pb2.CONSENT_STATE_SHARING, 0, "schema_version"),
        (agent_service_pb2.CONSENT_STATE_SHARING, CURRENT_SCHEMA_VERSION + 1, "schema_version"),
    ],
    ids=["unspecified", "unknown_state", "sharing_without_version", "sharing_newer_version"],
)
async def test_bad_consent_choice(agent: RunningAgent, state: int, schema_version: int, field: str) -> None:
    request = agent_service_pb2.SetConsentRequest(state=state, schema_version=schema_version)  # type: ignore[arg-type]
    assert await bad_request(agent.stub.SetConsent(request, timeout=RPC_TIMEOUT)) == [field]
    consent = await agent.consent()
    assert consent.chosen == agent_service_pb2.CONSENT_STATE_UNSPECIFIED
    assert consent.reason == agent_service_pb2.CONSENT_REASON_DEFAULT


async def test_bad_limits(agent: RunningAgent) -> None:
    stub = agent.stub
    for weeks in (105, 500):
        request = agent_service_pb2.GetLocalStatsRequest(weeks=weeks)
        assert await bad_request(stub.GetLocalStats(request, timeout=RPC_TIMEOUT)) == ["weeks"]
    assert len((await agent.local_stats(weeks=104)).recent_weeks) == 104

    export = stub.ExportData(agent_service_pb2.ExportDataRequest(page_size=20_000), timeout=RPC_TIMEOUT)
    error = await rpc_error(export.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(error)] == ["page_size"]

    request = agent_service_pb2.ListSentReportsRequest(limit=521)
    assert await bad_request(stub.ListSentReports(request, timeout=RPC_TIMEOUT)) == ["limit"]


async def test_preview_of_a_future_or_impossible_week(agent: RunningAgent) -> None:
    future = Week.containing(dt.datetime.now(UTC)).next()
    request = agent_service_pb2.PreviewReportRequest(week=future.to_proto())
    assert await bad_request(agent.stub.PreviewReport(request, timeout=RPC_TIMEOUT)) == ["week"]
    request = agent_service_pb2.PreviewReportRequest(week=C.IsoWeek(year=2026, week=60))
    assert await bad_request(agent.stub.PreviewReport(request, timeout=RPC_TIMEOUT)) == ["week"]


async def test_message_over_one_mebibyte_is_refused_by_grpc(agent: RunningAgent) -> None:
    moment = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    one = record_request(job_created(moment)).SerializeToString()
    huge = agent_service_pb2.RecordEventsRequest.FromString(one * 60_000)  # repeated fields concatenate
    assert len(huge.events) == 60_000
    assert huge.ByteSize() > 1 << 20
    error = await rpc_error(agent.stub.RecordEvents(huge, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = await agent.status()
    assert (status.stored_events, status.rejected_events) == (0, 0)
    assert (await agent.record(job_created())).stored_count == 1


async def test_garbage_on_the_socket_does_not_hurt_the_agent(agent: RunningAgent) -> None:
    assert (await agent.record(*(job_created() for _ in range(10)))).stored_count == 10

    def send_garbage(payload: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect(str(agent.socket_path))
            with contextlib.suppress(OSError):  # the server may hang up first
                raw.sendall(payload)

    await asyncio.to_thread(send_garbage, os.urandom(64 * 1024))
    await asyncio.to_thread(send_garbage, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096))
    await asyncio.to_thread(send_garbage, b"")

    status = await agent.status()
    assert status.stored_events == 10
    assert (await agent.record(job_created())).stored_count == 1
    assert (await agent.status()).stored_events == 11


def raw_record_events(agent: RunningAgent) -> grpc.aio.UnaryUnaryMultiCallable:
    return agent.channel.unary_unary(
        "/printernizer.stats.v1.AgentService/RecordEvents",
        request_serializer=lambda b: b,
        response_deserializer=agent_service_pb2.RecordEventsResponse.FromString,
    )


async def test_undecodable_request_body_leaves_the_agent_working(agent: RunningAgent) -> None:
    await agent.record(job_created())
    error = await rpc_error(raw_record_events(agent)(b"\xff\xff\xff", timeout=RPC_TIMEOUT))
    assert error.code() != grpc.StatusCode.OK
    status = await agent.status()
    assert status.stored_events == 1
    assert (status.rejected_events, status.dropped_events) == (0, 0)
    assert (await agent.record(job_created())).stored_count == 1


async def test_undecodable_request_body_gets_a_precise_status(agent: RunningAgent) -> None:
    error = await rpc_error(raw_record_events(agent)(b"\xff\xff\xff", timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DecodeError" not in (error.details() or "")


async def test_undecodable_streaming_request_gets_invalid_argument(agent: RunningAgent) -> None:
    raw_export = agent.channel.unary_stream(
        "/printernizer.stats.v1.AgentService/ExportData",
        request_serializer=lambda b: b,
        response_deserializer=agent_service_pb2.ExportDataResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in raw_export(b"\xff\xff\xff", timeout=RPC_TIMEOUT):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_method_is_unimplemented(agent: RunningAgent) -> None:
    raw_call = agent.channel.unary_unary(
        "/printernizer.stats.v1.AgentService/NoSuchMethod",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    error = await rpc_error(raw_call(b"", timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# --- the weekly report, on the domain with a fake clock -------------------------------------------------

# ISO week 2026-W10: Monday 2 March 2026 00:00 UTC up to Monday 9 March.
WEEK = Week(2026, 10)
MON = WEEK.start


def at(day: int, hour: int, minute: int = 0, week: Week = WEEK) -> dt.datetime:
    """Day 0 is the week's Monday; negative days fall in earlier weeks."""
    return week.start + dt.timedelta(days=day, hours=hour, minutes=minute)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AgentStore]:
    opened = await AgentStore.open(tmp_path / "agent.db")
    try:
        yield opened
    finally:
        await opened.close()


async def sharing_agent(
    store: AgentStore, clock: FakeClock, timezone: str = "Europe/Berlin", schema_version: int = 1
) -> StatsAgent:
    """An agent that opted in (at the clock's time) before the events below."""
    agent = StatsAgent(store, AgentConfig(timezone, 400, Override()), clock=clock)
    await agent.set_consent(agent_service_pb2.CONSENT_STATE_SHARING, schema_version)
    return agent


async def report(agent: StatsAgent, week: Week = WEEK) -> aggregated_stats_pb2.AggregatedStats:
    return aggregated_stats_pb2.AggregatedStats.FromString(await agent.report_bytes(week))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at(-14, 12))  # consent two weeks before WEEK


async def record_at(agent: StatsAgent, clock: FakeClock, now: dt.datetime, *events: object) -> None:
    clock.now = now
    result = await agent.record(events, 0)  # type: ignore[arg-type]
    assert result.stored == len(events)


async def test_report_counts_jobs_errors_and_failure_reasons(store: AgentStore, clock: FakeClock) -> None:
    agent = await sharing_agent(store, clock, schema_version=CURRENT_SCHEMA_VERSION)
    previous_week = [
        *(job_created(at(-3, h)) for h in range(5)),
        job_failed(at(-1, 23, 59), reason=C.JOB_FAILURE_REASON_TIMEOUT),
        error_occurred(at(-1, 10), C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
    ]
    this_week = [
        job_created(at(0, 0), C.PRINTER_TYPE_PRUSA),  # the week's first instant
        job_created(at(1, 9), C.PRINTER_TYPE_PRUSA),
        job_created(at(6, 23, 59), C.PRINTER_TYPE_KLIPPER),
        job_completed(at(1, 10), C.PRINTER_TYPE_PRUSA, C.JOB_DURATION_BUCKET_UNDER_1_HOUR),
        job_completed(at(2, 10), C.PRINTER_TYPE_PRUSA, C.JOB_DURATION_BUCKET_UNDER_1_HOUR),
        job_completed(at(3, 10), C.PRINTER_TYPE_KLIPPER, C.JOB_DURATION_BUCKET_UNDER_12_HOURS),
        job_failed(at(2, 11), reason=C.JOB_FAILURE_REASON_FILAMENT_RUNOUT),
        job_failed(at(4, 11), reason=C.JOB_FAILURE_REASON_CANCELLED),
        job_failed(at(5, 11), reason=C.JOB_FAILURE_REASON_CANCELLED, printer=C.PRINTER_TYPE_BAMBU_LAB),
        error_occurred(at(1, 1), C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
        error_occurred(at(1, 2), C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
        error_occurred(at(1, 3), C.ERROR_TYPE_TIMEOUT, C.COMPONENT_JOB_SERVICE),
        error_occurred(at(6, 3), C.ERROR_TYPE_DISK_FULL, C.COMPONENT_FILE_SERVICE),
        event("file_downloaded", at(2, 1), size=C.FILE_SIZE_BUCKET_UNDER_1_MB, file_type=C.FILE_TYPE_GCODE),
        event("file_uploaded", at(2, 2), size=C.FILE_SIZE_BUCKET_UNDER_1_MB, file_type=C.FILE_TYPE_STL),
        event("file_uploaded", at(2, 3), size=C.FILE_SIZE_BUCKET_UNDER_1_MB, file_type=C.FILE_TYPE_STL),
        event("printer_connected", at(0, 5), printer_type=C.PRINTER_TYPE_PRUSA),
        event("printer_disconnected", at(0, 6), printer_type=C.PRINTER_TYPE_PRUSA),
    ]
    next_week = [
        job_created(at(7, 0)),  # the next week's first instant
        *(job_completed(at(7, h)) for h in range(1, 5)),
        error_occurred(at(8, 1), C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
        error_occurred(at(8, 2), C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE),
    ]
    await record_at(agent, clock, at(9, 12), *previous_week, *this_week, *next_week)

    got = await report(agent)
    assert Week.from_proto(got.period) == WEEK
    usage = got.usage
    assert usage.jobs_created == 3
    assert usage.jobs_completed == 3
    assert usage.jobs_failed == 3
    assert [(d.duration, d.count) for d in usage.completed_job_durations] == [
        (C.JOB_DURATION_BUCKET_UNDER_1_HOUR, 2),
        (C.JOB_DURATION_BUCKET_UNDER_12_HOURS, 1),
    ]
    assert [(f.reason, f.count) for f in usage.job_failures] == [
        (C.JOB_FAILURE_REASON_CANCELLED, 2),
        (C.JOB_FAILURE_REASON_FILAMENT_RUNOUT, 1),
    ]
    # Each job on the family that ran it: (completed, failed) per family, in the contract's order.
    assert [(j.printer_type, j.completed, j.failed) for j in usage.jobs_by_printer_type] == [
        (C.PRINTER_TYPE_BAMBU_LAB, 0, 1),
        (C.PRINTER_TYPE_PRUSA, 2, 2),
        (C.PRINTER_TYPE_KLIPPER, 1, 0),
    ]
    assert [(e.error_type, e.component, e.count) for e in got.errors] == [
        (C.ERROR_TYPE_DISK_FULL, C.COMPONENT_FILE_SERVICE, 1),
        (C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE, 2),
        (C.ERROR_TYPE_TIMEOUT, C.COMPONENT_JOB_SERVICE, 1),
    ]
    assert (usage.files_downloaded, usage.files_uploaded) == (1, 2)
    assert (usage.printer_connections, usage.printer_disconnections) == (1, 1)
    assert (usage.app_starts, usage.uptime_hours, usage.unclean_shutdowns) == (0, 0, 0)

    # The neighbouring weeks count their own events only: no event counted twice.
    before = await report(agent, WEEK.previous())
    after = await report(agent, WEEK.next())
    assert (before.usage.jobs_created, before.usage.jobs_failed) == (5, 1)
    assert [(e.error_type, e.component, e.count) for e in before.errors] == [
        (C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE, 1)
    ]
    assert (after.usage.jobs_created, after.usage.jobs_completed) == (1, 4)
    assert [(e.error_type, e.component, e.count) for e in after.errors] == [
        (C.ERROR_TYPE_TIMEOUT, C.COMPONENT_PRINTER_SERVICE, 2)
    ]
    total_created = sum(r.usage.jobs_created for r in (before, got, after))
    assert total_created == 9

    # The same bytes each time: the report is deterministic.
    assert await agent.report_bytes(WEEK) == await agent.report_bytes(WEEK)


async def test_report_states_are_the_latest_before_the_week_ends(store: AgentStore, clock: FakeClock) -> None:
    agent = await sharing_agent(store, clock)
    await record_at(
        agent,
        clock,
        at(9, 12),
        # Before the week: the starting state.
        feature(at(-5, 9), C.FEATURE_LIBRARY, True),
        feature(at(-5, 9), C.FEATURE_CAMERA, True),
        fleet(at(-5, 9), [(C.PRINTER_TYPE_PRUSA, 2)]),
        app_started(at(-5, 9), version=(2, 3, 4)),
        app_stopped(at(-5, 10)),
        # During the week.
        feature(at(1, 9), C.FEATURE_LIBRARY, False),
        feature(at(2, 9), C.FEATURE_TIMELAPSE, True),
        feature(at(3, 9), C.FEATURE_TIMELAPSE, False),
        feature(at(4, 9), C.FEATURE_TIMELAPSE, True),
        feature(at(4, 10), C.FEATURE_MQTT, True),
        feature(at(4, 10), C.FEATURE_MQTT, False),  # same moment, stored later: wins
        fleet(at(2, 9), [(C.PRINTER_TYPE_PRUSA, 3), (C.PRINTER_TYPE_BAMBU_LAB, 1)]),
        app_started(at(3, 9), version=(2, 4, 0)),
        app_stopped(at(3, 10)),
        # After the week: not part of its report.
        feature(at(7, 9), C.FEATURE_CAMERA, False),
        feature(at(7, 9), C.FEATURE_NOTIFICATIONS, True),
        fleet(at(7, 9), [(C.PRINTER_TYPE_KLIPPER, 1)]),
        app_started(at(8, 9), version=(3, 0, 0)),
    )
    got = await report(agent)
    assert [(f.feature, f.enabled) for f in got.features] == [
        (C.FEATURE_LIBRARY, False),
        (C.FEATURE_TIMELAPSE, True),
        (C.FEATURE_CAMERA, True),
        (C.FEATURE_MQTT, False),
    ]
    assert [(p.printer_type, p.count) for p in got.printer_fleet.printers] == [
        (C.PRINTER_TYPE_BAMBU_LAB, 1),
        (C.PRINTER_TYPE_PRUSA, 3),
    ]
    version = got.installation.app_version
    assert (version.major, version.minor, version.patch) == (2, 4, 0)
    assert got.installation.platform == C.PLATFORM_LINUX
    assert got.installation.architecture == C.CPU_ARCHITECTURE_ARM64
    assert got.installation.deployment_mode == C.DEPLOYMENT_MODE_DOCKER
    assert (got.installation.python_version.major, got.installation.python_version.minor) == (3, 12)

    later = await report(agent, WEEK.next())
    assert [(p.printer_type, p.count) for p in later.printer_fleet.printers] == [(C.PRINTER_TYPE_KLIPPER, 1)]
    assert (C.FEATURE_CAMERA, False) in [(f.feature, f.enabled) for f in later.features]
    assert later.installation.app_version.major == 3


async def test_uptime_of_a_clean_run(store: AgentStore, clock: FakeClock) -> None:
    agent = await sharing_agent(store, clock)
    await record_at(agent, clock, at(9, 12), app_started(at(0, 10)), app_stopped(at(0, 20)))
    usage = (await report(agent)).usage
    assert (usage.uptime_hours, usage.app_starts, usage.unclean_shutdowns) == (10, 1, 0)
    assert (await report(agent, WEEK.next())).usage.uptime_hours == 0


async def test_uptime_of_a_crash(store: AgentStore, clock: FakeClock) -> None:
    agent = await sharing_agent(store, clock)
    await record_at(
        agent,
        clock,
        at(9, 12),
        app_started(at(0, 10)),
        job_created(at(0, 12)),  # the last sign of life of the first run
        app_started(at(0, 15)),  # no stop before: the first run crashed
        app_stopped(at(0, 16)),
    )
    usage = (await report(agent)).usage
    # First run 10:00-12:00 (2 h), second run 15:00-16:00 (1 h).
    assert (usage.uptime_hours, usage.app_starts, usage.unclean_shutdowns) == (3, 2, 1)


async def test_uptime_of_a_run_across_the_week_end(store: AgentStore, clock: FakeClock) -> None:
    agent = await sharing_agent(store, clock)
    await record_at(agent, clock, at(9, 12), app_started(at(6, 22)), app_stopped(at(7, 3)))
    this_week = (await report(agent)).usage
    next_week = (await report(agent, WEEK.next())).usage
    # Sunday 22:00 to the week's end is 2 h; the next week has Monday 00:00-03:00.
    assert (this_week.uptime_hours, this_week.app_starts) == (2, 1)
    assert (next_week.uptime_hours, next_week.app_starts, next_week.unclean_shutdowns) == (3, 0, 0)


async def test_uptime_of_a_run_still_going(store: AgentStore, clock: FakeClock) -> None:
    agent = await sharing_agent(store, clock)
    await record_at(agent, clock, at(2, 10), app_started(at(0, 10)))
    # The week is in progress (Wednesday 10:00): the run counts up to now.
    assert (await report(agent)).usage.uptime_hours == 48
    clock.now = at(10, 0)
    assert (await report(agent)).usage.uptime_hours == 7 * 24 - 10
    assert (await report(agent, WEEK.next())).usage.uptime_hours == 72


async def test_report_counts_from_the_moment_of_consent(store: AgentStore) -> None:
    clock = FakeClock(at(2, 12))  # opted in on Wednesday noon
    agent = await sharing_agent(store, clock)
    await record_at(
        agent,
        clock,
        at(2, 13),
        job_created(at(1, 9)),  # before consent (delivered late): not counted
        job_created(at(2, 11, 59)),
        job_created(at(2, 12, 30)),
        job_created(at(2, 13)),
    )
    clock.now = at(9, 0)
    assert (await report(agent)).usage.jobs_created == 2
    assert (await report(agent, WEEK.previous())).usage.jobs_created == 0
    # The user's own view shows all four.
    activity = await agent.local_activity(2)
    assert [a.usage.jobs_created for a in activity] == [4, 0]


@pytest.mark.parametrize(
    ("timezone", "country"),
    [
        ("Europe/Berlin", country_pb2.COUNTRY_DE),
        ("UTC", country_pb2.COUNTRY_UNSPECIFIED),
        ("Etc/GMT+1", country_pb2.COUNTRY_UNSPECIFIED),
        ("Europe/Vienna", country_pb2.COUNTRY_AT),
    ],
)
async def test_country_comes_from_the_time_zone(
    store: AgentStore, clock: FakeClock, timezone: str, country: int
) -> None:
    agent = await sharing_agent(store, clock, timezone)
    clock.now = at(9, 0)
    got = await report(agent)
    assert got.installation.country == country
    assert (await agent.local_stats(1)).installation.country == country
