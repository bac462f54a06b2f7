"""Every input to the agent's API gets a clear answer, never INTERNAL.

Each AgentService field is tried at its edges (the calendar's ends, week 0, 53
and 54, limits beyond their maximum, enum numbers the contract does not
define, timestamps before 1970 and after 9999, nanos out of range), then
Hypothesis calls every RPC on the real socket with generated requests and raw
random bytes. Whatever comes in: never INTERNAL or UNKNOWN; INVALID_ARGUMENT
names the request field at fault; and a refused call leaves what was stored
exactly as it was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import agent_service_pb2, common_pb2, usage_event_pb2
from printernizer_stats.agent.agent import FIRST_WEEK, MAX_DROPPED_BY_CLIENT
from printernizer_stats.common.contract import CURRENT_SCHEMA_VERSION
from printernizer_stats.common.errors import field_violations
from printernizer_stats.common.weeks import Week

from ..agent_harness import (
    RPC_TIMEOUT,
    FakeClock,
    RunningAgent,
    job_created,
    make_config,
    record_request_bytes,
    running_agent,
    short_private_dir,
    usage_events,
)
from ..unknown_fields import LENGTH_DELIMITED, messages, tag, varint

NOW = Week(2026, 20).start + dt.timedelta(days=2, hours=12)  # the agent's clock: a Wednesday
SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
METHODS = list(SERVICE.methods)
# Far enough back that nothing the tests record is ever pruned behind their back.
KEEP_EVERYTHING_DAYS = 20_000
# The field named when a body does not decode as the request type at all.
WHOLE_REQUEST = "request"
# Any other code would be a surprise: FAILED_PRECONDITION is SubmitNow without
# consent or a server.
EXPECTED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
U32, U64, I32 = (1 << 32) - 1, (1 << 64) - 1, (1 << 31) - 1


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    """An agent on a fixed clock (no week ends during a test) that keeps
    everything: what it stores changes only through the calls made."""
    base = short_private_dir()
    try:
        async with running_agent(
            make_config(base, retention_days=KEEP_EVERYTHING_DAYS), FakeClock(NOW)
        ) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- calling any method with any body, and what it stored -------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    fields: list[str]  # the BadRequest field violations, in order


async def call(agent: RunningAgent, method: MethodDescriptor, body: bytes) -> Answer:
    """Call `method` with `body` sent byte for byte."""
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = agent.channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)
            async for _ in stream(body, timeout=RPC_TIMEOUT):
                pass
        else:
            unary = agent.channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
            await unary(body, timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        return Answer(exc.code(), exc.details() or "", [f for f, _ in field_violations(exc)])
    return Answer(grpc.StatusCode.OK, "", [])


def stored(agent: RunningAgent) -> tuple[dict[str, list[tuple[Any, ...]]], int]:
    """Every row of every table of the agent's database (read from outside),
    and apart from them the rejected-events counter, which a refused batch
    adds to."""
    connection = sqlite3.connect(agent.db_path, timeout=10)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(connection.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        connection.close()
    rejected = sum(int(value) for name, value in rows["counters"] if name == "rejected_events")
    rows["counters"] = [row for row in rows["counters"] if row[0] != "rejected_events"]
    # A refused batch with an identity is remembered with its answer (so a
    # resent one gets the same answer): not a change of what is stored.
    rows.pop("client_batches", None)
    # Nor is the newest time the agent has seen, which it keeps on its own schedule.
    rows["settings"] = [row for row in rows.get("settings", []) if row[0] != "clock.high_water"]
    return rows, rejected


def decodes(method: MethodDescriptor, body: bytes) -> Any | None:
    request_class = getattr(agent_service_pb2, method.input_type.name)
    try:
        return request_class.FromString(body)
    except DecodeError:
        return None


async def answer_is_clear(agent: RunningAgent, method: MethodDescriptor, body: bytes) -> Answer:
    """Call and check the answer: an expected code, a named field when the
    request is refused as invalid, nothing changed when it is refused."""
    before, rejected_before = stored(agent)
    answer = await call(agent, method, body)
    request = decodes(method, body)
    assert answer.code in EXPECTED_CODES, (method.name, answer)
    if answer.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert answer.fields, f"{method.name}: INVALID_ARGUMENT without a field: {answer.details}"
        assert answer.details.startswith(f"{answer.fields[0]}: ")
        if request is None:
            assert answer.fields == [WHOLE_REQUEST]
        else:  # a field of the request, or inside one ("events[3].job_created.printer_type")
            named = re.match(r"[a-z_]+", answer.fields[0])
            assert named is not None
            assert named.group() in method.input_type.fields_by_name, answer.fields
    if answer.code != grpc.StatusCode.OK:
        after, rejected_after = stored(agent)
        refused_batch = request is not None and method.name == "RecordEvents"
        counted = (
            len(request.events) if refused_batch and answer.code == grpc.StatusCode.INVALID_ARGUMENT else 0
        )
        assert rejected_after == rejected_before + counted
        assert after == before, f"{method.name} was refused ({answer.code.name}) but changed what is stored"
    return answer


def method(name: str) -> MethodDescriptor:
    return SERVICE.methods_by_name[name]


# --- each field at its edges ---------------------------------------------------------------


def preview_of(year: int, week: int) -> bytes:
    return agent_service_pb2.PreviewReportRequest(
        week=common_pb2.IsoWeek(year=year, week=week)
    ).SerializeToString()


@pytest.mark.parametrize(
    ("year", "week"),
    [
        (0, 1),
        (1, 1),
        (1899, 52),
        (FIRST_WEEK.year, FIRST_WEEK.week - 1),  # before the earliest event the agent accepts
        (9000, 1),  # in the future
        (9999, 52),
        (U32, 1),
        (2025, 0),
        (2025, 53),  # 2025 has 52 ISO weeks
        (2025, 54),
        (2026, 54),
        (2026, U32),
        (0, 0),  # an IsoWeek sent empty is still a week asked for
    ],
)
async def test_preview_of_a_week_outside_the_calendar_names_the_week(
    agent: RunningAgent, year: int, week: int
) -> None:
    answer = await answer_is_clear(agent, method("PreviewReport"), preview_of(year, week))
    assert (answer.code, answer.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["week"])


@pytest.mark.parametrize(
    ("year", "week"), [(FIRST_WEEK.year, FIRST_WEEK.week), (2015, 53), (2020, 53), (2026, 20)]
)
async def test_preview_of_the_first_week_a_53rd_week_or_this_week(
    agent: RunningAgent, year: int, week: int
) -> None:
    answer = await answer_is_clear(agent, method("PreviewReport"), preview_of(year, week))
    assert answer.code == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("name", "request_message", "field", "good"),
    [
        ("GetLocalStats", agent_service_pb2.GetLocalStatsRequest, "weeks", (0, 1, 104)),
        ("ExportData", agent_service_pb2.ExportDataRequest, "page_size", (0, 1, 10_000)),
        ("ListSentReports", agent_service_pb2.ListSentReportsRequest, "limit", (0, 1, 520)),
    ],
)
async def test_limits_at_their_edges(
    agent: RunningAgent, name: str, request_message: Any, field: str, good: tuple[int, ...]
) -> None:
    await agent.record(job_created(NOW))
    for value in good:
        body = request_message(**{field: value}).SerializeToString()
        assert (await answer_is_clear(agent, method(name), body)).code == grpc.StatusCode.OK
    for value in (good[-1] + 1, U32):
        answer = await answer_is_clear(
            agent, method(name), request_message(**{field: value}).SerializeToString()
        )
        assert (answer.code, answer.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


@pytest.mark.parametrize(
    ("state", "schema_version", "field"),
    [
        (4, 0, "state"),
        (-1, 0, "state"),
        (I32, 1, "state"),
        (agent_service_pb2.CONSENT_STATE_LOCAL_ONLY, CURRENT_SCHEMA_VERSION + 1, "schema_version"),
        (agent_service_pb2.CONSENT_STATE_LOCAL_ONLY, -1, "schema_version"),
        (agent_service_pb2.CONSENT_STATE_DISABLED, I32, "schema_version"),
        (agent_service_pb2.CONSENT_STATE_SHARING, -(1 << 31), "schema_version"),
        (agent_service_pb2.CONSENT_STATE_SHARING, 0, "schema_version"),
    ],
)
async def test_consent_with_enum_numbers_the_contract_does_not_define(
    agent: RunningAgent, state: int, schema_version: int, field: str
) -> None:
    body = agent_service_pb2.SetConsentRequest(state=state, schema_version=schema_version).SerializeToString()  # type: ignore[arg-type]
    answer = await answer_is_clear(agent, method("SetConsent"), body)
    assert (answer.code, answer.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


def event_at(seconds: int, nanos: int = 0) -> usage_event_pb2.UsageEvent:
    event = job_created()
    event.occurred_at.seconds, event.occurred_at.nanos = seconds, nanos
    return event


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (event_at(-1), "events[1].occurred_at"),
        (event_at(-(1 << 63)), "events[1].occurred_at"),
        (event_at(253_402_300_800), "events[1].occurred_at"),  # 10000-01-01
        (event_at((1 << 63) - 1), "events[1].occurred_at"),
        (event_at(int(NOW.timestamp()), 1_000_000_000), "events[1].occurred_at.nanos"),
        (event_at(int(NOW.timestamp()), -1), "events[1].occurred_at.nanos"),
        (event_at(int(NOW.timestamp()), -(1 << 31)), "events[1].occurred_at.nanos"),
        (event_at(int(NOW.timestamp()), I32), "events[1].occurred_at.nanos"),
    ],
    ids=[
        "negative",
        "int64_min",
        "year_10000",
        "int64_max",
        "nanos_1e9",
        "nanos_-1",
        "nanos_min",
        "nanos_max",
    ],
)
async def test_events_at_the_ends_of_time_name_their_field(
    agent: RunningAgent, event: usage_event_pb2.UsageEvent, field: str
) -> None:
    # Beside a valid event: that one is stored, this one refused by name.
    body = record_request_bytes(job_created(NOW).SerializeToString(), event.SerializeToString())
    answer = await answer_is_clear(agent, method("RecordEvents"), body)
    assert answer.code == grpc.StatusCode.OK
    response = await agent.record_bytes(body)
    assert [(r.index, r.field) for r in response.refused] == [(1, field.removeprefix("events[1]."))]
    # Alone: nothing to store, the call is refused naming the field.
    alone = record_request_bytes(event.SerializeToString())
    answer = await answer_is_clear(agent, method("RecordEvents"), alone)
    assert (answer.code, answer.fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field.replace("[1]", "[0]")])


async def test_a_timestamp_with_unknown_fields_is_a_time(agent: RunningAgent) -> None:
    event = event_at(int(NOW.timestamp()) - 60, 999_999_999)
    event.occurred_at.MergeFromString(tag(3, LENGTH_DELIMITED) + varint(5) + b"later")
    answer = await answer_is_clear(
        agent, method("RecordEvents"), record_request_bytes(event.SerializeToString())
    )
    assert answer.code == grpc.StatusCode.OK
    status = await agent.status()
    assert (status.stored_events, status.events_with_unknown_fields) == (1, 1)


async def test_a_drop_count_beyond_any_client_names_its_field(agent: RunningAgent) -> None:
    accepted = record_request_bytes(
        job_created(NOW).SerializeToString(), dropped_by_client=MAX_DROPPED_BY_CLIENT
    )
    assert (await answer_is_clear(agent, method("RecordEvents"), accepted)).code == grpc.StatusCode.OK
    for dropped in (MAX_DROPPED_BY_CLIENT + 1, U64):
        body = record_request_bytes(job_created(NOW).SerializeToString(), dropped_by_client=dropped)
        answer = await answer_is_clear(agent, method("RecordEvents"), body)
        assert (answer.code, answer.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["dropped_by_client"])
    assert (await agent.status()).dropped_events == MAX_DROPPED_BY_CLIENT


# --- any request to any method ---------------------------------------------------------------

EDGE_YEARS = [0, 1, 1899, 1900, FIRST_WEEK.year, 2000, 2026, 9000, 9001, 9999, U32]
EDGE_WEEKS = [0, 1, 52, 53, 54, U32]


def edgy_requests(method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Requests near the edges that matter for `method` (beyond what any
    generated message may hold)."""
    if method.name == "RecordEvents":
        valid = usage_events(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), NOW + dt.timedelta(minutes=10))
        anything = messages(usage_event_pb2.UsageEvent.DESCRIPTOR, valid=False)
        events = st.lists(valid | anything, max_size=6)
        dropped = st.sampled_from([0, MAX_DROPPED_BY_CLIENT, MAX_DROPPED_BY_CLIENT + 1, U64]) | st.integers(
            0, U64
        )
        return st.builds(
            lambda e, d: agent_service_pb2.RecordEventsRequest(
                events=e, dropped_by_client=d
            ).SerializeToString(),
            events,
            dropped,
        )
    if method.name == "PreviewReport":
        years = st.sampled_from(EDGE_YEARS) | st.integers(0, U32)
        weeks = st.sampled_from(EDGE_WEEKS) | st.integers(0, U32)
        return st.builds(preview_of, years, weeks)
    if method.name == "SetConsent":
        states = st.sampled_from([0, 1, 2, 3, 4, -1]) | st.integers(-(1 << 31), I32)
        versions = st.sampled_from([0, 1, 2, -1]) | st.integers(-(1 << 31), I32)
        return st.builds(
            lambda s, v: agent_service_pb2.SetConsentRequest(state=s, schema_version=v).SerializeToString(),
            states,
            versions,
        )
    return st.nothing()


def requests(method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Anything a client could send to `method`: generated messages of its
    request type, requests at its edges, and raw bytes."""
    generated = messages(method.input_type, valid=False).map(lambda m: m.SerializeToString())
    return generated | edgy_requests(method) | st.binary(max_size=64)


# (method name, request body): names, so that a failing example reads plainly.
calls = st.sampled_from([m.name for m in METHODS]).flatmap(
    lambda n: st.tuples(st.just(n), requests(method(n)))
)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(calls, min_size=1, max_size=5))
async def test_every_rpc_answers_any_request_clearly(
    agent: RunningAgent, sequence: list[tuple[str, bytes]]
) -> None:
    """One agent serves every example, as a real one serves every client:
    what it stores accumulates, and every refused call must leave it alone."""
    for name, body in sequence:
        answer = await answer_is_clear(agent, method(name), body)
        event(f"{name}: {answer.code.name}")  # shown by --hypothesis-show-statistics
    status = await agent.status()
    assert status.storage == agent_service_pb2.STORAGE_CONDITION_OK
