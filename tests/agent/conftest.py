"""The agent folder's harness (beside tests/agent_harness.py, which the SDK's and the system's tests use
too): the fields an INVALID_ARGUMENT error names, and what the aggregation server stored."""

from __future__ import annotations

import grpc
import pytest
from printernizer_stats.common.errors import field_violations
from printernizer_stats.store import schema
from printernizer_stats.store.database import create_sync_engine
from sqlalchemy import func, select

from ..aggregation.conftest import RunningServer


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    """The error an awaited call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def bad_request(call: object) -> list[str]:
    """The fields named by an INVALID_ARGUMENT error."""
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    fields = [f for f, _ in field_violations(error)]
    assert fields, "INVALID_ARGUMENT without a BadRequest detail"
    assert error.details().startswith(f"{fields[0]}: ")
    return fields


def stored_on_server(server: RunningServer) -> int:
    engine = create_sync_engine(server.database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(schema.reports)).scalar_one())
    finally:
        engine.dispose()
