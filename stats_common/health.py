"""Asking a gRPC server whether it is serving (grpc.health.v1)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2

_CHECK = "/grpc.health.v1.Health/Check"


def is_serving(
    target: str,
    service: str = "",
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> bool:
    """True when the server at `target` (e.g. "unix:/path") answers SERVING;
    over TLS when `credentials` are given."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    with channel:
        check = channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply: health_pb2.HealthCheckResponse = check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
