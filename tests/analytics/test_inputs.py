"""Every AnalyticsService call, asked anything the wire allows, gets a clear
answer: never INTERNAL or UNKNOWN, and INVALID_ARGUMENT names the field.

Requests are generated from the compiled descriptors (tests/unknown_fields.py)
with weeks and windows drawn towards the edges (the calendar's ends, week 0,
53 and 54, windows of 0 and 2^32-1 weeks, enum numbers the contract does not
define), and also as raw bytes; the real analytics server answers over TLS,
on a database holding a small fleet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from printernizer.stats.v1 import analytics_service_pb2, analytics_service_pb2_grpc, common_pb2
from printernizer_stats.common.admin import bearer_metadata
from printernizer_stats.common.errors import field_violations
from printernizer_stats.common.weeks import MAX_YEAR, MIN_YEAR

from ..aggregation.conftest import ADMIN_TOKEN, RunningServer, running_server
from ..disclosure_auditor import Member, Setup
from ..unknown_fields import messages
from .conftest import last_week, refresh_rollups, running_analytics

SERVICE = analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
ADMIN = bearer_metadata(ADMIN_TOKEN)
TIMEOUT = 30
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT}

EDGE_YEARS = [0, 1, MIN_YEAR - 1, MIN_YEAR, MIN_YEAR + 1, 2000, 2026, MAX_YEAR, MAX_YEAR + 1, 9999, 2**32 - 1]
iso_weeks = st.one_of(
    # Real weeks at the ends of the years a week may have, and just outside them.
    st.builds(common_pb2.IsoWeek, year=st.sampled_from(EDGE_YEARS), week=st.sampled_from([1, 2, 9, 52, 53])),
    st.builds(common_pb2.IsoWeek, year=st.just(2026), week=st.integers(0, 60)),
    st.builds(common_pb2.IsoWeek, year=st.integers(0, 2**32 - 1), week=st.integers(0, 2**32 - 1)),
)
window_lengths = st.sampled_from([0, 1, 2, 12, 104, 105, 2**32 - 1]) | st.integers(0, 2**32 - 1)
EDGES = {
    "printernizer.stats.v1.IsoWeek": iso_weeks,
    "printernizer.stats.v1.WeekWindow": st.builds(
        analytics_service_pb2.WeekWindow, weeks=window_lengths, until=iso_weeks
    )
    | st.builds(analytics_service_pb2.WeekWindow, weeks=window_lengths),
}


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the real analytics server over a small fleet."""
    database_url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    server: RunningServer
    async with running_server(database_url, tmp_path, peer_calls_per_second=0) as server:
        week = last_week()
        for member in [Member({week: Setup()}) for _ in range(6)] + [Member({week: Setup(country=276)})]:
            await server.stub.SubmitReports(member.submission(), timeout=TIMEOUT)
        await refresh_rollups(database_url)
        async with running_analytics(database_url, tmp_path / "tls", min_group_size=3) as (port, ca):
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                yield channel


def requests() -> st.SearchStrategy[tuple[str, Message]]:
    """(method, request) for every method of the service."""
    per_method = [
        st.tuples(st.just(method.name), messages(method.input_type, EDGES, valid=False))
        for method in SERVICE.methods
    ]
    return st.one_of(per_method)


async def refusal(call: object) -> grpc.aio.AioRpcError | None:
    """The error a call ends with (None: it was answered)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error
    return None


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(asked=requests())
async def test_every_call_answers_generated_requests_clearly(
    channel: grpc.aio.Channel, asked: tuple[str, Message]
) -> None:
    method, request = asked
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    error = await refusal(getattr(stub, method)(request, metadata=ADMIN, timeout=TIMEOUT))
    if error is not None:
        assert error.code() in REFUSALS, (method, error.code(), error.details())
        assert field_violations(error), (method, error.details())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from([m.name for m in SERVICE.methods]), body=st.binary(max_size=64))
async def test_raw_bytes_are_refused_or_read_never_an_internal_error(
    channel: grpc.aio.Channel, method: str, body: bytes
) -> None:
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    error = await refusal(call(body, metadata=ADMIN, timeout=TIMEOUT))
    if error is not None:
        assert error.code() in REFUSALS, (method, error.code(), error.details())


EDGE_WEEKS = [
    (MIN_YEAR - 1, 52), (MIN_YEAR, 1), (MIN_YEAR, 2), (MIN_YEAR, 10), (MAX_YEAR, 52), (MAX_YEAR + 1, 1),
    (1, 1), (9999, 52), (0, 0), (2025, 53), (2026, 0), (2026, 53), (2026, 54), (2**32 - 1, 2**32 - 1),
]  # fmt: skip
EDGE_LENGTHS = [0, 1, 9, 104, 105, 2**32 - 1]


def edge_requests() -> list[tuple[str, Message]]:
    """Every method with every edge week (and every window length, for windows)."""
    asked: list[tuple[str, Message]] = []
    for method in SERVICE.methods:
        request_class = getattr(analytics_service_pb2, method.input_type.name)
        fields = method.input_type.fields_by_name
        for year, week in EDGE_WEEKS:
            iso_week = common_pb2.IsoWeek(year=year, week=week)
            if "window" in fields:
                for length in EDGE_LENGTHS:
                    window = analytics_service_pb2.WeekWindow(weeks=length, until=iso_week)
                    asked.append((method.name, request_class(window=window)))
            elif "week" in fields:
                asked.append((method.name, request_class(week=iso_week)))
    return asked


@pytest.mark.slow
async def test_every_call_at_the_calendars_edges(channel: grpc.aio.Channel) -> None:
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    asked = edge_requests()
    assert len(asked) > 500  # every method that takes a week or a window
    for method, request in asked:
        error = await refusal(getattr(stub, method)(request, metadata=ADMIN, timeout=TIMEOUT))
        if error is not None:
            assert error.code() in REFUSALS, (method, request, error.code(), error.details())
            assert field_violations(error), (method, request, error.details())
