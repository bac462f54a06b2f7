"""Only the contract's typed fields cross the agent (DESIGN.md, privacy rule 8).

protobuf keeps unknown fields on parse and re-emits them on serialize, so a
field that a newer SDK adds (one the user never consented to) would travel
from an event into the database, the weekly report, the preview and the
export. Events with unknown fields at every depth are sent over the real
socket; their text markers must be found nowhere the agent writes or answers,
and the status counts those events. Payloads and receipts that an older agent
stored with unknown fields must not leak either.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import sqlite3

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import (
    agent_service_pb2,
    aggregated_stats_pb2,
    common_pb2,
    ingest_service_pb2,
    usage_event_pb2,
)
from printernizer_stats.agent.agent import AgentConfig, StatsAgent
from printernizer_stats.agent.consent import LOCAL_ONLY, SHARING, Override
from printernizer_stats.agent.delivery import deliver
from printernizer_stats.agent.storage import AgentStore
from printernizer_stats.common.contract import value_for_schema
from printernizer_stats.common.events import EventDecoder, to_millis
from printernizer_stats.common.weeks import Week

from .. import agent_harness
from ..agent_harness import (
    RPC_TIMEOUT,
    FakeClock,
    RunningAgent,
    event_rules,
    job_created,
    make_config,
    record_request_bytes,
    running_agent,
    short_private_dir,
    usage_events,
)
from ..unknown_fields import (
    LENGTH_DELIMITED,
    Spliced,
    found,
    messages,
    tag,
    varint,
    with_unknown_fields,
)

agent = agent_harness.agent
agent_dir = agent_harness.agent_dir

WEEK = Week(2026, 10)
NOW = WEEK.start + dt.timedelta(days=2, hours=12)  # the agent's clock: Wednesday noon
EARLIEST = NOW - dt.timedelta(days=3)
# Nothing listens there: a submission fails as UNAVAILABLE and its report stays queued.
UNREACHABLE_SERVER = "localhost:1"
PRINTER_TYPES = common_pb2.PrinterType.DESCRIPTOR
PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclasses.dataclass
class Seen:
    """Everything an agent answered or wrote, as bytes, to search for markers."""

    places: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def add(self, name: str, data: bytes | Message) -> None:
        self.places[name] = data if isinstance(data, bytes) else data.SerializeToString()

    def containing(self, markers: list[bytes]) -> dict[str, list[bytes]]:
        """Where any of the markers occurs (a test wants nowhere)."""
        hits = {name: found(markers, data) for name, data in self.places.items()}
        return {name: markers for name, markers in hits.items() if markers}


async def show_everything(agent: RunningAgent, seen: Seen, when: str) -> None:
    """Every answer of the agent's API that shows stored data."""
    stub = agent.stub
    preview = await agent.preview()
    seen.add(f"{when}: preview", preview)  # its report bytes and its JSON
    seen.add(f"{when}: preview JSON", preview.report_json.encode())
    seen.add(f"{when}: local stats", await agent.local_stats())
    for number, page in enumerate(await agent.export()):
        seen.add(f"{when}: export page {number}", page)
    seen.add(f"{when}: status", await agent.status())
    ledger = await stub.ListSentReports(agent_service_pb2.ListSentReportsRequest(), timeout=RPC_TIMEOUT)
    seen.add(f"{when}: ledger", ledger)


async def queue_the_week(agent: RunningAgent, clock: FakeClock) -> bytes:
    """Finish WEEK and have its report queued as the bytes that will be sent."""
    clock.now = WEEK.end + dt.timedelta(hours=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.SubmitNow(agent_service_pb2.SubmitNowRequest(), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # queued, not sent
    (report,) = [row[0] for row in agent_harness.db_rows(agent.db_path, "SELECT report FROM outbox")]
    return bytes(report)


def expected_export(clean: usage_event_pb2.UsageEvent) -> usage_event_pb2.UsageEvent:
    """What the agent keeps of a valid event: its time to the millisecond (the
    agent's clock when it has none) and its kind."""
    kept = usage_event_pb2.UsageEvent()
    kept.CopyFrom(clean)
    millis = to_millis(NOW)
    if clean.HasField("occurred_at"):
        millis = clean.occurred_at.seconds * 1000 + clean.occurred_at.nanos // 1_000_000
    kept.occurred_at.FromMilliseconds(millis)
    return kept


@st.composite
def batches(draw: st.DrawFn) -> list[Spliced]:
    """Valid events of every kind, drawn from a small pool as real traffic
    repeats itself (so the decoder's caches meet the same parts again), each
    occurrence clean or with unknown fields at one to three depths of its own
    (the event, its kind, its timestamp, versions, fleet entries)."""
    pool = draw(st.lists(usage_events(EARLIEST, NOW), min_size=1, max_size=4))
    occurrence = st.sampled_from(pool).flatmap(
        lambda event: with_unknown_fields(st.just(event), depths=lambda n: st.integers(0, min(3, n)))
    )
    return draw(st.lists(occurrence, min_size=1, max_size=12))


@pytest.mark.slow
@settings(PROPERTY, max_examples=40)
@given(batch=batches())
async def test_unknown_fields_are_found_nowhere_and_counted(batch: list[Spliced]) -> None:
    base = short_private_dir()
    clock = FakeClock(NOW)
    config = dataclasses.replace(make_config(base), server_address=UNREACHABLE_SERVER)
    seen = Seen()
    try:
        async with running_agent(config, clock) as running:
            await running.opt_in()
            answer = await running.record_bytes(record_request_bytes(*(s.data for s in batch)))
            assert answer.stored_count == len(batch)
            status = await running.status()
            await show_everything(running, seen, "week in progress")
            seen.add("report queued", await queue_the_week(running, clock))
            await show_everything(running, seen, "report queued")
            for name, data in running.database_files().items():
                seen.add(f"running: {name}", data)
            exported = [e.event for page in await running.export() for e in page.events]
        for name, data in running.database_files().items():
            seen.add(f"stopped: {name}", data)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    markers = [m for s in batch for m in s.markers]
    assert seen.containing(markers) == {}
    assert status.events_with_unknown_fields == sum(s.carries_unknown_fields for s in batch)
    assert status.rejected_events == 0
    # Only the unknown fields went: everything the contract defines was kept.
    assert exported == [expected_export(s.clean) for s in batch]


@pytest.mark.slow
@settings(PROPERTY, max_examples=150)
@given(calls=st.lists(batches(), min_size=1, max_size=4))
def test_the_decoder_keeps_exactly_the_known_fields_whatever_it_has_cached(
    calls: list[list[Spliced]],
) -> None:
    """One decoder across calls, as in the agent: every row is the row of the
    clean event, and exactly the events that carried unknown fields are
    counted, whichever parts its caches have seen before (and how)."""
    decoder = EventDecoder()
    for batch in calls:
        decoded = decoder.rows([usage_event_pb2.UsageEvent.FromString(s.data) for s in batch], NOW)
        assert decoded.rows == EventDecoder().rows([s.clean for s in batch], NOW).rows  # type: ignore[misc]
        assert decoded.with_unknown_fields == sum(s.carries_unknown_fields for s in batch)
        assert all(
            m not in (payload or b"") for _, _, payload in decoded.rows for s in batch for m in s.markers
        )


# --- what an older agent stored --------------------------------------------------------------

RULES = event_rules(EARLIEST, NOW)


@pytest.mark.slow
@settings(PROPERTY, max_examples=15)
@given(
    app=with_unknown_fields(messages(usage_event_pb2.AppStarted.DESCRIPTOR, RULES)),
    fleet=with_unknown_fields(messages(usage_event_pb2.PrinterFleetObserved.DESCRIPTOR, RULES)),
)
async def test_payloads_an_older_agent_stored_with_unknown_fields_do_not_leak(
    app: Spliced, fleet: Spliced
) -> None:
    base = short_private_dir()
    clock = FakeClock(NOW)
    config = dataclasses.replace(make_config(base), server_address=UNREACHABLE_SERVER)
    seen = Seen()
    try:
        async with running_agent(config, clock) as running:
            await running.opt_in()
            started = usage_event_pb2.UsageEvent(app_started=app.clean)  # type: ignore[arg-type]
            observed = usage_event_pb2.UsageEvent(printer_fleet_observed=fleet.clean)  # type: ignore[arg-type]
            assert (await running.record(started, observed)).stored_count == 2
        # An agent before this version stored each body as it came, unknown fields and all.
        with sqlite3.connect(config.db_path) as db:
            for kind, spliced in ((1, app), (13, fleet)):
                db.execute("UPDATE events SET payload = ? WHERE shape >> 48 = ?", (spliced.data, kind))
        db.close()
        async with running_agent(config, clock) as running:
            await show_everything(running, seen, "week in progress")
            seen.add("report queued", await queue_the_week(running, clock))
            await show_everything(running, seen, "report queued")
            exported = [e.event for page in await running.export() for e in page.events]
    finally:
        shutil.rmtree(base, ignore_errors=True)

    assert seen.containing([*app.markers, *fleet.markers]) == {}
    assert [e.app_started for e in exported[:1]] == [app.clean]
    assert [e.printer_fleet_observed for e in exported[1:]] == [fleet.clean]
    report = aggregated_stats_pb2.AggregatedStats.FromString(seen.places["report queued"])
    assert report.installation.app_version == app.clean.app_version  # type: ignore[attr-defined]
    # One entry per family the report's schema names (a newer family is counted as OTHER).
    families = {
        value_for_schema(PRINTER_TYPES, p.printer_type, report.schema_version)
        for p in fleet.clean.printers  # type: ignore[attr-defined]
    }
    assert len(report.printer_fleet.printers) == len(families)


@settings(PROPERTY, max_examples=10)
@given(data=st.data())
async def test_a_report_an_older_agent_queued_with_unknown_fields_is_rebuilt(data: st.DataObject) -> None:
    base = short_private_dir()
    clock = FakeClock(NOW)
    config = dataclasses.replace(make_config(base), server_address=UNREACHABLE_SERVER)
    seen = Seen()
    try:
        async with running_agent(config, clock) as running:
            await running.opt_in()
            await running.record(agent_harness.app_started(NOW), agent_harness.fleet(NOW, [(2, 3), (5, 1)]))
            queued = aggregated_stats_pb2.AggregatedStats.FromString(await queue_the_week(running, clock))
        # An agent before this version copied unknown fields into the report it queued.
        spliced = data.draw(with_unknown_fields(st.just(queued)))
        with sqlite3.connect(config.db_path) as db:
            db.execute("UPDATE outbox SET report = ?", (spliced.data,))
        db.close()
        async with running_agent(config, clock) as running:
            seen.add("report queued", await queue_the_week(running, clock))
            await show_everything(running, seen, "report queued")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert seen.containing(list(spliced.markers)) == {}
    assert seen.places["report queued"] == queued.SerializeToString(deterministic=True)


# --- the decoder's fast path ------------------------------------------------------------------


def with_text_in(message: Message, number: int, text: bytes) -> None:
    """Merge one length-delimited unknown field into `message`."""
    message.MergeFromString(tag(number, LENGTH_DELIMITED) + varint(len(text)) + text)


async def test_a_timestamp_carrying_200_bytes_of_unknown_fields_is_read_whole(agent: RunningAgent) -> None:
    moment = dt.datetime.now(dt.UTC).replace(microsecond=250_000) - dt.timedelta(minutes=1)
    padded = job_created(moment)
    marker = b"UNKNOWN-FIELD-padded-timestamp"
    with_text_in(padded.occurred_at, 7, marker + b"-" * 170)
    data = padded.SerializeToString()
    assert data[0] == 0x0A  # occurred_at comes first...
    assert data[1] & 0x80  # ...and its length takes two bytes
    clean = job_created(moment).SerializeToString()
    answer = await agent.record_bytes(record_request_bytes(data, clean, data))
    assert answer.stored_count == 3
    exported = [e.event for page in await agent.export() for e in page.events]
    assert exported == [job_created(moment)] * 3
    status = await agent.status()
    assert (status.events_with_unknown_fields, status.rejected_events) == (2, 0)
    assert found([marker], *agent.database_files().values()) == []


async def test_events_with_unknown_fields_are_counted_on_the_cached_path_too(agent: RunningAgent) -> None:
    """The decoder caches the parts of events it has seen; a part that carried
    unknown fields is cached apart from the clean one, so every event that
    carries them is counted, however often it comes, and clean ones never."""
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    in_kind = job_created(moment)
    with_text_in(in_kind.job_created, 9, b"UNKNOWN-FIELD-in-kind")
    in_time = job_created(moment)
    with_text_in(in_time.occurred_at, 9, b"UNKNOWN-FIELD-in-time")
    at_top = job_created(moment)
    with_text_in(at_top, 99, b"UNKNOWN-FIELD-at-top")
    clean = job_created(moment)
    batch = record_request_bytes(*(e.SerializeToString() for e in (clean, in_kind, in_time, at_top, clean)))
    for calls in (1, 2, 3):
        assert (await agent.record_bytes(batch)).stored_count == 5
        assert (await agent.status()).events_with_unknown_fields == 3 * calls
    exported = [e.event for page in await agent.export() for e in page.events]
    assert exported == [clean] * 15
    assert found([b"UNKNOWN-FIELD-"], *agent.database_files().values()) == []


async def test_a_clean_part_is_never_taken_for_one_with_unknown_fields(agent: RunningAgent) -> None:
    """An event whose timestamp alone carries unknown fields has a clean kind
    part: a clean event of the same kind that comes later is not counted."""
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    in_time = job_created(moment)
    with_text_in(in_time.occurred_at, 9, b"UNKNOWN-FIELD-in-time")
    in_kind = job_created(moment - dt.timedelta(seconds=1))
    with_text_in(in_kind.job_created, 9, b"UNKNOWN-FIELD-in-kind")
    later = [job_created(moment + dt.timedelta(seconds=s)) for s in (1, 2)]
    earlier = job_created(moment - dt.timedelta(seconds=1))
    batch = (in_time, *later, in_kind, earlier)
    assert (
        await agent.record_bytes(record_request_bytes(*(e.SerializeToString() for e in batch)))
    ).stored_count == 5
    assert (await agent.status()).events_with_unknown_fields == 2


# --- receipts from the server -----------------------------------------------------------------


@dataclasses.dataclass
class ServerWithExtraFields:
    """Stands in for an aggregation server whose answers carry fields this
    agent does not know (a newer server, or a broken one)."""

    receipt: Spliced
    deletion: Spliced

    async def submit(
        self, request: ingest_service_pb2.SubmitReportsRequest
    ) -> ingest_service_pb2.SubmitReportsResponse:
        """The generated receipt (unknown fields and all) for each report, naming it."""
        data = b""
        for signed in request.reports:
            sent = aggregated_stats_pb2.AggregatedStats.FromString(signed.report)
            # report_id given a second time: the last one counts.
            receipt = (
                self.receipt.data
                + ingest_service_pb2.ReportReceipt(report_id=sent.report_id).SerializeToString()
            )
            data += tag(1, LENGTH_DELIMITED) + varint(len(receipt)) + receipt
        return ingest_service_pb2.SubmitReportsResponse.FromString(data)

    async def delete(
        self, request: ingest_service_pb2.DeleteInstallationRequest
    ) -> ingest_service_pb2.DeleteInstallationResponse:
        return ingest_service_pb2.DeleteInstallationResponse.FromString(self.deletion.data)


@settings(PROPERTY, max_examples=25)
@given(
    receipt=with_unknown_fields(messages(ingest_service_pb2.ReportReceipt.DESCRIPTOR)),
    deletion=with_unknown_fields(messages(ingest_service_pb2.DeleteInstallationResponse.DESCRIPTOR)),
)
async def test_receipts_keep_only_the_fields_this_agent_knows(receipt: Spliced, deletion: Spliced) -> None:
    base = short_private_dir()
    db_path = base / "agent.db"
    clock = FakeClock(NOW)
    store = await AgentStore.open(db_path)
    seen = Seen()
    try:
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
        await agent.set_consent(SHARING, 1)
        await agent.record([job_created(NOW)], 0)
        clock.now = WEEK.end + dt.timedelta(hours=2)
        assert await agent.queue_finished_weeks() == 1
        server = ServerWithExtraFields(receipt, deletion)
        delivery = await deliver(agent, server)  # type: ignore[arg-type]
        assert delivery.outcome == agent_service_pb2.DELIVERY_OUTCOME_ACCEPTED
        seen.add("receipts answered", ingest_service_pb2.SubmitReportsResponse(receipts=delivery.receipts))
        (sent,) = await agent.ledger(0)
        expected = ingest_service_pb2.ReportReceipt()
        expected.CopyFrom(receipt.clean)
        expected.report_id = sent.receipt.report_id  # the server names the report it received
        assert sent.receipt == expected
        await agent.set_consent(LOCAL_ONLY, 0)
        await deliver(agent, server)  # type: ignore[arg-type]
        assert await agent.deletion_receipts() == [deletion.clean]
        await store.close()
        for suffix in ("", "-wal", "-shm"):
            path = db_path.with_name(db_path.name + suffix)
            if path.exists():
                seen.add(path.name, path.read_bytes())

        # Receipts an older agent stored as the server sent them are read field by field.
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE sent_reports SET receipt = ?", (receipt.data,))
            db.execute("UPDATE deletion_requests SET receipt = ?", (deletion.data,))
        db.close()
        store = await AgentStore.open(db_path)
        agent = StatsAgent(store, AgentConfig("Europe/Berlin", 400, Override()), clock=clock)
        seen.add("ledger", agent_service_pb2.ListSentReportsResponse(reports=await agent.ledger(0)))
        seen.add(
            "deletion receipts",
            agent_service_pb2.ListSentReportsResponse(deletion_receipts=await agent.deletion_receipts()),
        )
        for number, page in enumerate([page async for page in agent.export(0)]):
            seen.add(f"export page {number}", page)
    finally:
        await store.close()
        shutil.rmtree(base, ignore_errors=True)
    assert seen.containing([*receipt.markers, *deletion.markers]) == {}
