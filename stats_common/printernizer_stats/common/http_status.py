"""The HTTP status a backend's gRPC status becomes, for every REST face of the
system (the gateway's APIs, the SDK's router inside the host app)."""

from __future__ import annotations

# By gRPC status code name; any other (INTERNAL, UNKNOWN, DATA_LOSS: the backend
# failed) is BACKEND_FAILED.
HTTP_STATUS_OF_GRPC: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
BACKEND_FAILED = 502


def http_status_of(grpc_code_name: str) -> int:
    """The HTTP status for a gRPC status code name ("UNAVAILABLE" -> 503)."""
    return HTTP_STATUS_OF_GRPC.get(grpc_code_name, BACKEND_FAILED)
