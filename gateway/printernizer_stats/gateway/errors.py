"""Every error the gateway answers, in one shape: an HTTP status and the JSON
body {"error": <for people>, "code": <a gRPC status code name>, "field": <the
wrong parameter, when one is>}. The gateway's own refusals (a bad parameter or
body, a missing token, an unknown path) and a backend's gRPC statuses both end
here, and so does anything unexpected: a client never sees a traceback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from printernizer_stats.common.errors import field_violations, retry_delay
from printernizer_stats.common.http_status import BACKEND_FAILED, HTTP_STATUS_OF_GRPC
from starlette.exceptions import HTTPException

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, for people"},
        "code": {"type": "string", "description": "the gRPC status code name"},
        "field": {"type": "string", "description": "the parameter that is wrong, when one is"},
    },
}

# A backend's gRPC status -> the gateway's HTTP status; anything else is 502
# (one table for every REST face: printernizer_stats.common.http_status).
HTTP_STATUS = {grpc.StatusCode[name]: status for name, status in HTTP_STATUS_OF_GRPC.items()}

# The code name of an HTTP error the web framework raises itself, or the SDK's
# privacy router (printernizer_stats.sdk.fastapi) raises for the agent.
_CODE_OF_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    BACKEND_FAILED: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# The backends name a wrong field by its protobuf path; the client sent a REST
# parameter. (The agent's names are the REST names already.)
_REST_PARAMETER = {
    "window.until": "until",
    "window.weeks": "weeks",
    "dimensions[0]": "dimension",
    "dimensions[1]": "and",
}


class ErrorResponse(JSONResponse):
    """An error's JSON body, written as ASCII: it may echo what the client sent
    (an unknown key, a parameter's name), and no such text, not even a lone
    surrogate from a JSON escape, can make it fail to encode."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = {"error": message, "code": code}
        if field is not None:
            body["field"] = field
        super().__init__(body, status_code=status, headers=headers)

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class HttpRefusal(Exception):
    """A request the gateway answers itself, with an error."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.field, self.headers = status, message, code, field, headers

    def response(self) -> ErrorResponse:
        return ErrorResponse(self.status, self.message, self.code, self.field, self.headers)


def invalid(field: str, problem: str) -> HttpRefusal:
    """400: the parameter (or body key) `field` is wrong."""
    return HttpRefusal(400, f"{field}: {problem}", "INVALID_ARGUMENT", field)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, exc: RequestValidationError) -> ErrorResponse:
        first = exc.errors()[0]
        # ("query", "weeks") -> "weeks"; ("path", "dimension") -> "dimension"
        field = str(first["loc"][-1]) if first.get("loc") else "request"
        return invalid(field, first.get("msg", "is invalid")).response()

    @app.exception_handler(HttpRefusal)
    async def refused(_: Request, exc: HttpRefusal) -> ErrorResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> ErrorResponse:
        # An unknown path (404), a method the path does not take (405, with Allow).
        code = _CODE_OF_HTTP_STATUS.get(exc.status_code, "UNKNOWN")
        return ErrorResponse(exc.status_code, str(exc.detail), code, headers=exc.headers)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def rpc_failed(_: Request, exc: grpc.aio.AioRpcError) -> ErrorResponse:
        status = HTTP_STATUS.get(exc.code(), BACKEND_FAILED)
        message = exc.details() or exc.code().name.lower()
        field = None
        if violations := field_violations(exc):
            field = violations[0][0]
            rest = _REST_PARAMETER.get(field, field)
            if message.startswith(f"{field}:"):
                message = rest + message[len(field) :]
            field = rest
        headers = {}
        if (delay := retry_delay(exc)) is not None:
            headers["Retry-After"] = str(max(1, round(delay.total_seconds())))
        return ErrorResponse(status, message, exc.code().name, field, headers)

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> ErrorResponse:
        # A bug in the gateway. Starlette raises the exception again once this
        # answer is sent, so the traceback goes to the server's log, never to the client.
        return ErrorResponse(500, "the gateway failed; its log says why", "INTERNAL")
