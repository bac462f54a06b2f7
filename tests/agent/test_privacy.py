"""The privacy rules of DESIGN.md, checked against the real agent over its Unix socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from printernizer.stats.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    aggregated_stats_pb2,
    common_pb2,
    country_pb2,
    ingest_service_pb2,
)
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import Identity, Override
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.identity import installation_id_problem, report_id
from printernizer_stats.common.weeks import Week

from .. import agent_harness
from ..agent_harness import (
    RPC_TIMEOUT,
    FakeClock,
    RunningAgent,
    agent_process,
    app_started,
    db_rows,
    error_occurred,
    event,
    job_completed,
    job_created,
    job_failed,
    make_config,
    running_agent,
    times_this_week,
)

# The harness's fixtures, used by the tests below (imported explicitly, not via conftest).
agent = agent_harness.agent
agent_dir = agent_harness.agent_dir

LOCAL_ONLY = agent_service_pb2.CONSENT_STATE_LOCAL_ONLY
SHARING = agent_service_pb2.CONSENT_STATE_SHARING
DISABLED = agent_service_pb2.CONSENT_STATE_DISABLED
UNSPECIFIED = agent_service_pb2.CONSENT_STATE_UNSPECIFIED
ZERO_ID = bytes(16)


async def settings(running: RunningAgent) -> agent_service_pb2.AgentSettings:
    pages = await running.export()
    return pages[0].settings


# --- 1. off by default ------------------------------------------------------------------------


async def test_fresh_agent_is_local_only_by_default(agent: RunningAgent) -> None:
    consent = await agent.consent()
    assert consent.chosen == UNSPECIFIED
    assert consent.effective == LOCAL_ONLY
    assert consent.reason == agent_service_pb2.CONSENT_REASON_DEFAULT
    assert consent.consented_schema_version == 0
    assert consent.current_schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_3
    assert consent.level == aggregated_stats_pb2.CONSENT_LEVEL_UNSPECIFIED
    assert not consent.HasField("changed_at")
    status = await agent.status()
    assert status.consent == consent
    assert not status.HasField("next_submission")


async def test_preview_without_consent_has_no_identity_and_no_counts(agent: RunningAgent) -> None:
    t = times_this_week(3)
    stored = await agent.record(
        job_created(t[0]),
        job_completed(t[1]),
        error_occurred(t[2], common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API),
        job_created(),  # stamped by the agent: now
    )
    assert stored.stored_count == 4
    assert not stored.recording_disabled
    await asyncio.sleep(0.01)

    report = await agent.preview_report()
    assert report.installation.installation_id == ZERO_ID
    assert report.report_id == ZERO_ID
    assert report.usage == aggregated_stats_pb2.UsageCounts()
    assert list(report.errors) == []
    # The user's own view has the events, the report does not.
    assert (await agent.local_stats()).this_week.usage.jobs_created == 2
    assert (await settings(agent)).installation_id == b""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- 2. only events recorded after consent are reported ------------------------------------------


async def test_only_events_after_consent_are_reported(agent: RunningAgent) -> None:
    t = times_this_week(4)
    before = await agent.record(
        job_created(t[0]),
        job_created(t[1]),
        job_created(t[2]),
        job_completed(t[3]),
        error_occurred(t[3], common_pb2.ERROR_TYPE_DISK_FULL, common_pb2.COMPONENT_FILE_SERVICE),
        job_created(),  # now: after every earlier moment, but still before consent
    )
    assert before.stored_count == 6
    await asyncio.sleep(0.01)

    consent = await agent.opt_in()
    assert consent.chosen == SHARING
    assert consent.effective == SHARING
    assert consent.reason == agent_service_pb2.CONSENT_REASON_USER_CHOICE
    assert consent.consented_schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
    consented_at = consent.changed_at.ToDatetime(tzinfo=dt.UTC)
    await asyncio.sleep(0.01)

    after = await agent.record(
        job_created(),
        job_created(),
        job_failed(reason=common_pb2.JOB_FAILURE_REASON_FILAMENT_RUNOUT),
        event(
            "file_uploaded", size=common_pb2.FILE_SIZE_BUCKET_UNDER_10_MB, file_type=common_pb2.FILE_TYPE_STL
        ),
        error_occurred(None, common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_PRINTER_SERVICE),
        # Sent after consent but happened before it (an SDK's buffered event): not counted.
        job_created(consented_at - dt.timedelta(seconds=2)),
    )
    assert after.stored_count == 6
    await asyncio.sleep(0.01)

    report = await agent.preview_report()
    assert report.usage.jobs_created == 2
    assert report.usage.jobs_completed == 0
    assert report.usage.jobs_failed == 1
    assert [(f.reason, f.count) for f in report.usage.job_failures] == [
        (common_pb2.JOB_FAILURE_REASON_FILAMENT_RUNOUT, 1)
    ]
    assert list(report.usage.completed_job_durations) == []
    assert report.usage.files_uploaded == 1
    assert report.usage.files_downloaded == 0
    assert [(e.error_type, e.component, e.count) for e in report.errors] == [
        (common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_PRINTER_SERVICE, 1)
    ]
    assert report.installation.installation_id != ZERO_ID
    # Locally, everything is still visible.
    assert (await agent.status()).stored_events == 12


# --- 1. DO_NOT_TRACK and the agent's switch -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        (Override(do_not_track=True), agent_service_pb2.CONSENT_REASON_DO_NOT_TRACK),
        (Override(agent_switch=True), agent_service_pb2.CONSENT_REASON_AGENT_SWITCH),
    ],
    ids=["do_not_track", "agent_switch"],
)
async def test_override_disables_recording(agent_dir: Path, override: Override, reason: int) -> None:
    async with running_agent(make_config(agent_dir, override=override)) as running:
        consent = await running.consent()
        assert consent.effective == DISABLED
        assert consent.reason == reason
        assert consent.chosen == UNSPECIFIED

        result = await running.record(job_created(), job_completed(), dropped=3)
        assert result.recording_disabled is True
        assert result.stored_count == 0
        status = await running.status()
        assert status.stored_events == 0
        assert status.consent.effective == DISABLED
        assert status.consent.reason == reason

        # Even a user who opts in stays disabled: the override wins, nothing is shared.
        chosen = await running.opt_in()
        assert chosen.chosen == SHARING
        assert chosen.effective == DISABLED
        assert chosen.reason == reason
        result = await running.record(job_created())
        assert (result.stored_count, result.recording_disabled) == (0, True)
        assert (await running.status()).stored_events == 0
        report = await running.preview_report()
        assert report.installation.installation_id == ZERO_ID
        assert report.report_id == ZERO_ID
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert db_rows(running.db_path, "SELECT COUNT(*) FROM events") == [(0,)]


@pytest.mark.processes
@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        ((), {"DO_NOT_TRACK": "1"}, agent_service_pb2.CONSENT_REASON_DO_NOT_TRACK),
        (("--disable",), {}, agent_service_pb2.CONSENT_REASON_AGENT_SWITCH),
    ],
    ids=["DO_NOT_TRACK=1", "--disable"],
)
async def test_command_line_overrides_disable_recording(
    agent_dir: Path, args: tuple[str, ...], env: dict[str, str], reason: int
) -> None:
    async with agent_process(agent_dir, *args, **env) as process:
        async with grpc.aio.insecure_channel(process.target) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            consent = (
                await stub.GetConsent(agent_service_pb2.GetConsentRequest(), timeout=RPC_TIMEOUT)
            ).consent
            assert (consent.effective, consent.reason) == (DISABLED, reason)
            result = await stub.RecordEvents(
                agent_service_pb2.RecordEventsRequest(events=[job_created()]), timeout=RPC_TIMEOUT
            )
            assert (result.stored_count, result.recording_disabled) == (0, True)
        assert await process.stop() == 0
    assert db_rows(process.db_path, "SELECT COUNT(*) FROM events") == [(0,)]


# --- 3. the identity: random, replaced on opt-out ------------------------------------------------


async def test_identity_is_random_and_replaced_after_opt_out(agent: RunningAgent) -> None:
    await agent.opt_in()
    first = await settings(agent)
    assert len(first.installation_id) == 16
    assert uuid.UUID(bytes=first.installation_id).version == 4
    assert uuid.UUID(bytes=first.installation_id).variant == uuid.RFC_4122
    assert len(first.public_key) == 32
    stored = dict(db_rows(agent.db_path, "SELECT key, value FROM settings WHERE key LIKE 'identity.%'"))
    assert stored["identity.installation_id"] == first.installation_id
    assert len(stored["identity.private_key"]) == 32

    out = await agent.opt_out()
    assert (out.chosen, out.effective) == (LOCAL_ONLY, LOCAL_ONLY)
    assert out.consented_schema_version == 0
    after_out = await settings(agent)
    assert after_out.installation_id == b""
    assert after_out.public_key == b""
    # Forgotten, not just hidden: neither the ID nor the private key stays in the database.
    assert db_rows(agent.db_path, "SELECT key FROM settings WHERE key LIKE 'identity.%'") == []
    assert (await agent.preview_report()).installation.installation_id == ZERO_ID

    await agent.opt_in()
    second = await settings(agent)
    assert len(second.installation_id) == 16
    assert uuid.UUID(bytes=second.installation_id).version == 4
    assert second.installation_id != first.installation_id
    assert second.public_key != first.public_key
    assert len(second.public_key) == 32


async def test_every_installation_id_is_a_random_version_4_uuid(agent: RunningAgent) -> None:
    """The server refuses anything else (printernizer_stats.common.identity decides for both sides)."""
    seen = set()
    for _ in range(5):
        await agent.opt_in()
        installation_id = (await settings(agent)).installation_id
        assert installation_id_problem(installation_id) is None
        seen.add(installation_id)
        await agent.opt_out()
    assert len(seen) == 5
    assert all(installation_id_problem(Identity.create().installation_id) is None for _ in range(1000))


async def test_a_new_installation_counts_nothing_from_the_old_one(agent: RunningAgent) -> None:
    await agent.opt_in()
    await asyncio.sleep(0.01)
    await agent.record(job_created(), job_created(), job_completed())
    await asyncio.sleep(0.01)
    old = await agent.preview_report()
    assert (old.usage.jobs_created, old.usage.jobs_completed) == (2, 1)
    await agent.opt_out()
    await agent.record(job_created())  # local-only meanwhile
    await asyncio.sleep(0.01)
    await agent.opt_in()
    await asyncio.sleep(0.01)
    await agent.record(job_failed())
    await asyncio.sleep(0.01)
    new = await agent.preview_report()
    assert new.installation.installation_id != old.installation.installation_id
    assert new.report_id != old.report_id
    assert (new.usage.jobs_created, new.usage.jobs_completed, new.usage.jobs_failed) == (0, 0, 1)


async def test_opting_in_again_keeps_the_identity(agent: RunningAgent) -> None:
    """Agreeing again while sharing is not an opt-out: same installation."""
    await agent.opt_in()
    first = await settings(agent)
    await agent.opt_in()
    assert (await settings(agent)).installation_id == first.installation_id
    assert db_rows(agent.db_path, "SELECT COUNT(*) FROM deletion_requests") == [(0,)]


# --- 5. opt-out keeps a signed deletion request ----------------------------------------------------


async def test_opt_out_stores_a_signed_deletion_request(agent: RunningAgent) -> None:
    await agent.opt_in()
    identity = await settings(agent)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    await agent.opt_out()
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    rows = db_rows(
        agent.db_path,
        "SELECT installation_id, request, created_at, receipt, confirmed_at FROM deletion_requests",
    )
    assert len(rows) == 1
    installation_id, request_bytes, created_at, receipt, confirmed_at = rows[0]
    assert bytes(installation_id) == identity.installation_id
    assert receipt is None
    assert confirmed_at is None
    assert before.timestamp() * 1000 <= created_at <= after.timestamp() * 1000

    request = ingest_service_pb2.DeleteInstallationRequest.FromString(bytes(request_bytes))
    order = ingest_service_pb2.DeletionOrder.FromString(request.order)
    assert order.installation_id == identity.installation_id
    assert before <= order.requested_at.ToDatetime(tzinfo=dt.UTC) <= after
    assert request.public_key == identity.public_key
    assert len(request.signature) == 64
    public_key = Ed25519PublicKey.from_public_bytes(identity.public_key)
    public_key.verify(request.signature, request.order)  # raises if the signature is wrong
    with pytest.raises(InvalidSignature):
        public_key.verify(request.signature, request.order + b"\x00")

    # Opting out while local-only already has no identity to delete: no second request.
    await agent.set_consent(DISABLED)
    assert db_rows(agent.db_path, "SELECT COUNT(*) FROM deletion_requests") == [(1,)]


# --- 4. the preview is the report ---------------------------------------------------------------------


async def test_preview_bytes_are_the_report(agent: RunningAgent) -> None:
    await agent.opt_in()
    await asyncio.sleep(0.01)
    await agent.record(
        job_created(),
        job_completed(duration=common_pb2.JOB_DURATION_BUCKET_UNDER_4_HOURS),
        error_occurred(None, common_pb2.ERROR_TYPE_PROTOCOL, common_pb2.COMPONENT_MQTT),
        event("feature_enabled", feature=common_pb2.FEATURE_CAMERA),
    )
    await asyncio.sleep(0.01)
    identity = await settings(agent)

    first = await agent.preview()
    second = await agent.preview()
    week = Week.from_proto(first.week)
    assert week == Week.containing(dt.datetime.now(dt.UTC))
    assert second.report == first.report
    assert second.report_json == first.report_json
    explicit = await agent.preview(week)
    assert explicit.report == first.report

    report = aggregated_stats_pb2.AggregatedStats.FromString(first.report)
    assert report.SerializeToString(deterministic=True) == first.report
    assert json_format.Parse(first.report_json, aggregated_stats_pb2.AggregatedStats()) == report
    assert report.report_id == report_id(identity.installation_id, week)
    assert report.installation.installation_id == identity.installation_id
    assert report.period == week.to_proto()
    assert report.schema_version == aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1
    assert report.installation.country == country_pb2.COUNTRY_DE
    assert (report.usage.jobs_created, report.usage.jobs_completed) == (1, 1)
    assert [(f.feature, f.enabled) for f in report.features] == [(common_pb2.FEATURE_CAMERA, True)]


# --- 4. export, delete everything, export ----------------------------------------------------------------


async def test_export_then_delete_all_then_export(agent: RunningAgent) -> None:
    await agent.opt_in()
    identity = await settings(agent)
    t = times_this_week(5)
    await agent.record(job_created(t[0]), job_created(t[1]), job_completed(t[2]), job_failed(t[3]))
    await agent.record(job_created(t[4]), dropped=2)
    with pytest.raises(grpc.aio.AioRpcError):  # both refused: counted, not stored
        await agent.record(event("job_created"), event("job_created"))
    # A report the ledger holds (the agent has no aggregation server in these tests).
    receipt = ingest_service_pb2.ReportReceipt(
        report_id=report_id(identity.installation_id, Week.from_key(202601)),
        status=ingest_service_pb2.RECEIPT_STATUS_ACCEPTED,
        receipt_id=bytes(range(16)),
    )
    report = aggregated_stats_pb2.AggregatedStats(report_id=receipt.report_id)
    sqlite = sqlite3.connect(agent.db_path, timeout=10)
    with sqlite:
        sqlite.execute(
            "INSERT INTO sent_reports (report_id, week, report, receipt, sent_at) VALUES (?, ?, ?, ?, ?)",
            (
                receipt.report_id,
                202601,
                report.SerializeToString(),
                receipt.SerializeToString(),
                1_767_600_000_000,
            ),
        )
    sqlite.close()

    pages = await agent.export()
    assert len(pages) == 1
    exported = pages[0]
    assert [e.sequence for e in exported.events] == [1, 2, 3, 4, 5]
    assert [e.event.WhichOneof("kind") for e in exported.events] == [
        "job_created",
        "job_created",
        "job_completed",
        "job_failed",
        "job_created",
    ]
    assert exported.events[0].event.occurred_at.ToMilliseconds() == int(t[0].timestamp() * 1000)
    assert [r.receipt for r in exported.sent_reports] == [receipt]
    assert exported.settings.installation_id == identity.installation_id
    status = await agent.status()
    assert (status.stored_events, status.rejected_events, status.dropped_events) == (5, 2, 2)

    deleted = await agent.stub.DeleteAllData(agent_service_pb2.DeleteAllDataRequest(), timeout=RPC_TIMEOUT)
    assert deleted.events_deleted == 5
    assert deleted.reports_deleted == 1

    pages = await agent.export()
    assert len(pages) == 1
    assert list(pages[0].events) == []
    assert list(pages[0].sent_reports) == []
    # Deleting everything while sharing opts out first: the identity is gone,
    # the signed deletion request for the server is kept.
    assert pages[0].settings.installation_id == b""
    assert pages[0].settings.consent.chosen == LOCAL_ONLY
    assert db_rows(agent.db_path, "SELECT key FROM settings WHERE key LIKE 'identity.%'") == []
    assert db_rows(agent.db_path, "SELECT installation_id FROM deletion_requests") == [
        (identity.installation_id,)
    ]
    status = await agent.status()
    assert (status.stored_events, status.rejected_events, status.dropped_events) == (0, 0, 0)
    assert db_rows(agent.db_path, "SELECT COUNT(*) FROM events") == [(0,)]
    listed = await agent.stub.ListSentReports(agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT)
    assert list(listed.reports) == []


async def test_delete_all_keeps_a_local_only_choice(agent: RunningAgent) -> None:
    await agent.opt_out()  # an explicit local-only choice
    await agent.record(job_created(), job_created())
    deleted = await agent.stub.DeleteAllData(agent_service_pb2.DeleteAllDataRequest(), timeout=RPC_TIMEOUT)
    assert (deleted.events_deleted, deleted.reports_deleted) == (2, 0)
    consent = await agent.consent()
    assert (consent.chosen, consent.reason) == (LOCAL_ONLY, agent_service_pb2.CONSENT_REASON_USER_CHOICE)
    assert db_rows(agent.db_path, "SELECT COUNT(*) FROM deletion_requests") == [(0,)]


# --- no event time reaches a report -------------------------------------------------------------------------


def reachable_messages(descriptor: Descriptor) -> set[str]:
    seen: set[str] = set()
    pending = [descriptor]
    while pending:
        message = pending.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        pending.extend(
            f.message_type
            for f in message.fields
            if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type
        )
    return seen


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_no_timestamp_is_reachable_from_the_report() -> None:
    reachable = reachable_messages(aggregated_stats_pb2.AggregatedStats.DESCRIPTOR)
    assert "printernizer.stats.v1.InstallationInfo" in reachable  # the walk does go deep
    assert "printernizer.stats.v1.PrinterTypeCount" in reachable
    assert timestamp_pb2.Timestamp.DESCRIPTOR.full_name not in reachable
    assert "google.protobuf.Duration" not in reachable


async def test_report_bytes_carry_no_event_time(agent: RunningAgent) -> None:
    await agent.opt_in()
    await asyncio.sleep(0.05)
    now = dt.datetime.now(dt.UTC)
    moments = [now - dt.timedelta(milliseconds=ms) for ms in (7, 13, 29)]
    consent_at = (await agent.consent()).changed_at.ToDatetime(tzinfo=dt.UTC)
    assert all(m > consent_at for m in moments)
    await agent.record(*(job_created(m) for m in moments))
    await asyncio.sleep(0.01)

    preview = await agent.preview()
    report = aggregated_stats_pb2.AggregatedStats.FromString(preview.report)
    assert report.usage.jobs_created == 3  # the events are in the report, their times are not
    exported = (await agent.export())[0]
    for stored in exported.events:
        stamp = stored.event.occurred_at
        assert stamp.SerializeToString() not in preview.report
        assert varint(stamp.seconds) not in preview.report
        assert varint(stamp.ToMilliseconds()) not in preview.report
        assert varint(stored.recorded_at.seconds) not in preview.report


# --- rule 2 on the domain: uptime must not come from events before consent ---------------------------------


async def test_uptime_in_report_ignores_a_start_recorded_before_consent(tmp_path: Path) -> None:
    week = Week(2026, 10)
    clock = FakeClock(week.start + dt.timedelta(days=2, hours=10))  # Wednesday 10:00
    store = await AgentStore.open(tmp_path / "agent.db")
    try:
        domain = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
        # Local-only: the app starts (and will later crash without a stop).
        assert (await domain.record([app_started(clock.now)], 0)).stored == 1
        clock.now += dt.timedelta(hours=2)  # Wednesday 12:00: the user opts in
        await domain.set_consent(SHARING, aggregated_stats_pb2.REPORT_SCHEMA_VERSION_1)
        clock.now = week.end  # the week is over; nothing was recorded after consent
        report = aggregated_stats_pb2.AggregatedStats.FromString(await domain.report_bytes(week))
        assert report.usage.app_starts == 0
        # Wednesday 12:00 to the week's end is 108 h, all inferred from the pre-consent start.
        assert report.usage.uptime_hours == 0
    finally:
        await store.close()
