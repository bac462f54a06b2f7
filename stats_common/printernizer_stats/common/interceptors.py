"""Server interceptors every service installs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from . import errors
from .errors import Context


class _Undecodable:
    """Stands in for a request body that is not the method's message."""


_UNDECODABLE = _Undecodable()
# The whole body is at fault: the field violation names the request itself.
_VIOLATION = ("request", "is not a valid protobuf message of the method's request type")


class RejectUndecodableRequests(grpc.aio.ServerInterceptor):
    """Answer a request whose body does not decode with INVALID_ARGUMENT.

    Left to grpc, a decoding failure becomes UNKNOWN with the parser's
    exception text; clients deserve the precise code and a plain message.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc.aio hands over handlers whose behaviours are coroutines; the
        # typing stubs describe the sync ones, hence Any.
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        decode = handler.request_deserializer

        def tolerant_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception:
                return _UNDECODABLE

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def checked_unary(request: Any, context: Context) -> Any:
                if request is _UNDECODABLE:
                    await errors.invalid_argument(context, [_VIOLATION])
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                checked_unary,
                request_deserializer=tolerant_decode,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def checked_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                if request is _UNDECODABLE:
                    await errors.invalid_argument(context, [_VIOLATION])
                async for response in stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                checked_stream,
                request_deserializer=tolerant_decode,
                response_serializer=handler.response_serializer,
            )
        return handler
