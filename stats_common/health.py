"""Asking a gRPC server whether it is serving (grpc.health.v1)."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2

_CHECK = "/grpc.health.v1.Health/Check"


def is_serving(target: str, service: str = "", timeout: float = 2.0) -> bool:
    """True when the server at `target` (e.g. "unix:/path") answers SERVING."""
    with grpc.insecure_channel(target) as channel:
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


def wait_until_serving(target: str, timeout: float = 30.0) -> bool:
    """Poll until the server answers SERVING; False if it did not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_serving(target):
            return True
        time.sleep(0.05)
    return False
