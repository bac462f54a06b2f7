"""Turning domain errors into precise gRPC statuses.

Clients get the right code with machine-readable details (google.rpc
BadRequest field violations, RetryInfo delays), never a stack trace.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

Context = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: Context, code: int, message: str, *details: object) -> NoReturn:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - abort always raises


# The domain of this project's google.rpc.ErrorInfo reasons, and the reasons.
ERROR_DOMAIN = "stats.printernizer"
# A report whose week is not over by the aggregation server's clock: the
# agent's clock is ahead; it keeps the report and learns the time.
PERIOD_NOT_ENDED = "PERIOD_NOT_ENDED"


async def invalid_argument(
    context: Context, violations: Sequence[tuple[str, str]], *more: error_details_pb2.ErrorInfo
) -> NoReturn:
    """INVALID_ARGUMENT naming every wrong field (first one in the message),
    with any ErrorInfo a client acts on."""
    field, description = violations[0]
    details = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
        ]
    )
    await _abort(context, code_pb2.INVALID_ARGUMENT, f"{field}: {description}", details, *more)


def error_info(reason: str, metadata: dict[str, str]) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


async def resource_exhausted(context: Context, message: str, retry_after: dt.timedelta) -> NoReturn:
    """RESOURCE_EXHAUSTED with the delay after which a retry may succeed."""
    delay = error_details_pb2.RetryInfo()
    delay.retry_delay.FromTimedelta(retry_after)
    await _abort(context, code_pb2.RESOURCE_EXHAUSTED, message, delay)


async def failed_precondition(context: Context, message: str) -> NoReturn:
    await _abort(context, code_pb2.FAILED_PRECONDITION, message)


async def unavailable(context: Context, message: str, retry_after: dt.timedelta | None = None) -> NoReturn:
    """UNAVAILABLE (try again), with the delay after which a retry may succeed when known."""
    if retry_after is None:
        await _abort(context, code_pb2.UNAVAILABLE, message)
    delay = error_details_pb2.RetryInfo()
    delay.retry_delay.FromTimedelta(retry_after)
    await _abort(context, code_pb2.UNAVAILABLE, message, delay)


async def internal(context: Context) -> NoReturn:
    """For bugs: a generic message; the details go to the server's log only."""
    await _abort(context, code_pb2.INTERNAL, "internal error; see the server's log")


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried by an error (for clients and tests)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: list[tuple[str, str]] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


def error_reason(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]] | None:
    """The reason and metadata of this project's ErrorInfo an error carries, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                return info.reason, dict(info.metadata)
    return None


def retry_delay(error: grpc.aio.AioRpcError) -> dt.timedelta | None:
    """The RetryInfo delay carried by an error, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta()
    return None
