"""Every field checked against what it means, at its edges, over real TLS on
SQLite and PostgreSQL: each table below is tried value by value, and every
refusal must be INVALID_ARGUMENT naming exactly the field (so the agent drops
the report instead of retrying it), every acceptance a receipt.

- Installation IDs are random version-4 UUIDs: every version nibble with
  every variant, and wrong lengths, in each of the four fields that carry
  one (the submission, the report, the deletion order, the operator's call).
- A report's period at the calendar's ends, in the future, and older than
  the server keeps (--retention-days).
- A deletion order's requested_at at the ends of what a Timestamp can say.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from printernizer.stats.v1 import common_pb2, ingest_admin_service_pb2, ingest_service_pb2
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import error_reason, field_violations
from printernizer_stats.common.identity import report_id
from printernizer_stats.common.weeks import Week

from .. import databases
from .conftest import ADMIN_TOKEN, TIMEOUT, Installation, RunningServer, report_of, rpc_error, running_server

database_url = databases.database_url
ADMIN = bearer_metadata(ADMIN_TOKEN)
# The server's clock: a Sunday noon, so "now" is inside 2026-W47.
NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
RETENTION_DAYS = 28
FIRST_KEPT = Week.containing(NOW - dt.timedelta(days=RETENTION_DAYS))  # 2026-W43
LAST_COMPLETE = Week(2026, 46)


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(
        database_url, tmp_path, clock=lambda: NOW, retention_days=RETENTION_DAYS, peer_calls_per_second=0
    ) as running:
        yield running


async def outcome(call: object) -> list[str] | str | None:
    """None for an answer; the fields an INVALID_ARGUMENT names; any other
    refusal as its code's name (which no table expects)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            return error.code().name
        return [field for field, _ in field_violations(error)]
    return None


def with_version_and_variant(base: bytes, version: int, variant: int) -> bytes:
    """`base` with its version nibble and its two variant bits set as given."""
    data = bytearray(base)
    data[6] = (data[6] & 0x0F) | version << 4
    data[8] = (data[8] & 0x3F) | variant << 6
    return bytes(data)


def candidate_ids() -> list[tuple[bytes, bool]]:
    """(installation ID, whether the contract allows it): every version with
    every variant (only version 4 with variant 0b10 is allowed), and wrong sizes."""
    base = uuid.uuid4().bytes
    shaped = [
        (with_version_and_variant(base, version, variant), (version, variant) == (4, 0b10))
        for version, variant in itertools.product(range(16), range(4))
    ]
    return [*shaped, (b"", False), (base[:15], False), (base + b"\x00", False), (bytes(16), False)]


def fresh_v4_like(candidate: bytes) -> bytes:
    """An unused ID of the same shape as `candidate` (the allowed ones are used up when accepted)."""
    if len(candidate) != 16:
        return candidate
    fresh = bytearray(uuid.uuid4().bytes)
    fresh[6], fresh[8] = (fresh[6] & 0x0F) | (candidate[6] & 0xF0), (fresh[8] & 0x3F) | (candidate[8] & 0xC0)
    return bytes(fresh)


async def test_installation_ids_are_version_4_uuids_in_every_field(server: RunningServer) -> None:
    tried = 0
    for shape, allowed in candidate_ids():
        # The submission's installation_id (the report carries the same ID).
        candidate = fresh_v4_like(shape)
        agent = Installation(candidate)
        report = (
            report_of(agent, LAST_COMPLETE)
            if len(candidate) == 16
            else report_of(Installation(), LAST_COMPLETE)
        )
        report.installation.installation_id = candidate
        found = await outcome(server.stub.SubmitReports(agent.submission(report), timeout=TIMEOUT))
        assert found == (None if allowed else ["installation_id"]), (candidate.hex(), found)

        # The report's installation.installation_id, under a valid submission.
        agent = Installation(uuid.uuid4().bytes)
        report = report_of(agent, LAST_COMPLETE)
        report.installation.installation_id = (
            with_version_and_variant(agent.installation_id, shape[6] >> 4, shape[8] >> 6)
            if len(shape) == 16
            else shape
        )
        found = await outcome(server.stub.SubmitReports(agent.submission(report), timeout=TIMEOUT))
        assert found == (None if allowed else ["reports[0].report.installation.installation_id"]), found

        # A deletion order's installation_id.
        order = ingest_service_pb2.DeletionOrder(installation_id=fresh_v4_like(shape))
        order.requested_at.FromDatetime(NOW)
        deleter = Installation(order.installation_id)
        found = await outcome(
            server.stub.DeleteInstallation(
                deleter.signed_deletion(order.SerializeToString()), timeout=TIMEOUT
            )
        )
        assert found == (None if allowed else ["order.installation_id"]), found

        # The operator's call.
        request = ingest_admin_service_pb2.DeleteInstallationAsOperatorRequest(
            installation_id=fresh_v4_like(shape)
        )
        found = await outcome(
            server.admin.DeleteInstallationAsOperator(request, metadata=ADMIN, timeout=TIMEOUT)
        )
        assert found == (None if allowed else ["installation_id"]), found
        tried += 4
    assert tried == 4 * 68


# (year, week), and whether a report for it is accepted at NOW with 28 days' retention.
PERIODS: list[tuple[tuple[int, int] | None, bool]] = [
    (None, False),  # unset
    ((0, 1), False),
    ((1, 1), False),
    ((1899, 52), False),
    ((1900, 1), False),  # a week Week can hold, but long gone
    ((2026, 0), False),
    ((2026, 54), False),
    ((2025, 53), False),  # 2025 has 52 ISO weeks
    ((2020, 53), False),  # 2020 has 53, but retention deleted it long ago
    ((FIRST_KEPT.previous().year, FIRST_KEPT.previous().week), False),  # retention would delete it at once
    ((FIRST_KEPT.year, FIRST_KEPT.week), True),
    ((LAST_COMPLETE.year, LAST_COMPLETE.week), True),
    ((2026, 47), False),  # the week in progress
    ((2026, 53), False),  # exists, not over yet
    ((2027, 1), False),
    ((9000, 52), False),
    ((9001, 1), False),
    ((9999, 52), False),
    ((10000, 1), False),
    ((2**31, 1), False),
    ((2**32 - 1, 2**32 - 1), False),
]


async def test_a_reports_period_at_the_edges(server: RunningServer) -> None:
    answers = {}
    for period, _ in PERIODS:
        agent = Installation(uuid.uuid4().bytes)
        report = report_of(agent, LAST_COMPLETE)
        if period is None:
            report.ClearField("period")
        else:
            report.period.CopyFrom(common_pb2.IsoWeek(year=period[0], week=period[1]))
            with contextlib.suppress(ValueError):  # no such week: no report ID to derive (nor checked)
                report.report_id = report_id(agent.installation_id, Week(*period))
        answers[period] = await outcome(server.stub.SubmitReports(agent.submission(report), timeout=TIMEOUT))
    assert answers == {
        period: None if accepted else ["reports[0].report.period"] for period, accepted in PERIODS
    }


SECONDS_MIN, SECONDS_MAX = -62135596800, 253402300799  # 0001-01-01 and 9999-12-31T23:59:59
NOW_SECONDS = int(NOW.timestamp())
# (seconds, nanos), and whether a deletion order dated so is answered.
REQUESTED_AT: list[tuple[tuple[int, int] | None, bool]] = [
    (None, True),  # unset: 1970, an agent with a clock that never was set
    ((0, 0), True),
    ((-1, 0), True),
    ((SECONDS_MIN, 0), True),
    ((SECONDS_MIN - 1, 0), False),
    ((-(2**63), 0), False),
    ((NOW_SECONDS, 999_999_999), True),
    ((NOW_SECONDS + 3500, 0), True),  # within the clock skew allowed
    ((NOW_SECONDS + 7200, 0), False),  # in the future
    ((SECONDS_MAX, 999_999_999), False),
    ((SECONDS_MAX + 1, 0), False),
    ((2**63 - 1, 0), False),
    ((NOW_SECONDS, -1), False),
    ((NOW_SECONDS, 1_000_000_000), False),
    ((NOW_SECONDS, 2**31 - 1), False),
    ((NOW_SECONDS, -(2**31)), False),
]


async def test_a_deletion_orders_time_at_the_edges(server: RunningServer) -> None:
    answers = {}
    for requested_at, _ in REQUESTED_AT:
        agent = Installation(uuid.uuid4().bytes)
        order = ingest_service_pb2.DeletionOrder(installation_id=agent.installation_id)
        if requested_at is not None:
            order.requested_at.CopyFrom(
                timestamp_pb2.Timestamp(seconds=requested_at[0], nanos=requested_at[1])
            )
        signed = agent.signed_deletion(order.SerializeToString())
        answers[requested_at] = await outcome(server.stub.DeleteInstallation(signed, timeout=TIMEOUT))
    assert answers == {
        requested_at: None if accepted else ["order.requested_at"] for requested_at, accepted in REQUESTED_AT
    }


async def test_the_admin_calls_without_fields_answer_at_any_state(server: RunningServer) -> None:
    """The admin calls that take nothing answer on an empty database and after
    reports at the retention boundary were stored and purged."""
    status = ingest_admin_service_pb2.GetIngestStatusRequest()
    assert (await server.admin.GetIngestStatus(status, metadata=ADMIN, timeout=TIMEOUT)).reports == 0
    agent = Installation(uuid.uuid4().bytes)
    await server.stub.SubmitReports(
        agent.submission(report_of(agent, FIRST_KEPT), report_of(agent, LAST_COMPLETE)), timeout=TIMEOUT
    )
    purge = ingest_admin_service_pb2.PurgeExpiredReportsRequest()
    purged = await server.admin.PurgeExpiredReports(purge, metadata=ADMIN, timeout=TIMEOUT)
    assert (Week.from_proto(purged.cutoff), purged.reports_deleted) == (
        FIRST_KEPT,
        0,
    )  # what is accepted is kept
    answered = await server.admin.GetIngestStatus(status, metadata=ADMIN, timeout=TIMEOUT)
    assert (Week.from_proto(answered.oldest_week), Week.from_proto(answered.newest_week)) == (
        FIRST_KEPT,
        LAST_COMPLETE,
    )


async def test_a_week_not_over_yet_tells_the_agent_the_servers_time(server: RunningServer) -> None:
    """An agent whose clock is ahead sends a week that has not ended: the refusal
    says so in a way it can act on (keep the report, learn the time)."""
    agent = Installation(uuid.uuid4().bytes)
    this_week = Week.containing(NOW)  # the server's clock
    request = agent.submission(report_of(agent, this_week.next()))
    refused = await rpc_error(server.stub.SubmitReports(request, timeout=TIMEOUT))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(refused)] == ["reports[0].report.period"]
    assert error_reason(refused) == ("PERIOD_NOT_ENDED", {"server_time": NOW.isoformat()})
    # Other refusals carry no such reason; an accepted submission carries the time too.
    broken = report_of(agent, this_week.previous())
    broken.usage.uptime_hours = 999
    other = await rpc_error(server.stub.SubmitReports(agent.submission(broken), timeout=TIMEOUT))
    assert error_reason(other) is None
    request = agent.submission(report_of(agent, this_week.previous()))
    accepted = await server.stub.SubmitReports(request, timeout=TIMEOUT)
    assert accepted.server_time.ToDatetime(dt.UTC) == NOW
