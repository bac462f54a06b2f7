"""Request bodies: bounded, and read as a strict contract.

The gateway's changes (opt-in, opt-out, delete-all) take small JSON objects.
- Every request body is bounded (MAX_BODY_BYTES): one whose Content-Length is
  over the limit is refused with 413 before a byte of it is read, and one sent
  without a length (chunked) is counted as it arrives and refused as soon as
  it passes the limit. Nothing larger is ever held in memory.
- A body is `application/json` (else 415; a cross-site form cannot send it),
  UTF-8, one JSON object, with no key given twice, no key its model does not
  have and no value of the wrong type (no "1" or true for 1). Each refusal is
  a 400 naming the key, or `body` when the body as a whole is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ErrorResponse, Refusal, invalid

MAX_BODY_BYTES = 4096  # the largest body any endpoint takes is ~30 bytes


class BodyLimit:
    """ASGI middleware: refuse any request body over `limit` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        # Read what arrives, counting, up to the limit; then hand the app the
        # same bytes. A chunked body has no length to trust before it is read.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # then: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Answered at once. The server (uvicorn) then discards the rest of the
        # body as it arrives: a client usually sends all of it before reading
        # the answer, and closing the connection now would lose that answer.
        response = ErrorResponse(413, f"body: is larger than {self.limit} bytes", "INVALID_ARGUMENT", "body")
        await response(scope, receive, send)


class StrictBody(BaseModel):
    """A request body: no key beyond its fields, no value of another type."""

    model_config = ConfigDict(extra="forbid", strict=True)


Body = TypeVar("Body", bound=StrictBody)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would silently keep the last of two values for one key.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise invalid(key, "is given more than once")
        seen[key] = value
    return seen


def _not_a_number(constant: str) -> NoReturn:
    raise invalid("body", f"{constant} is not JSON")


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object `raw` holds, read strictly; Refusal (400) otherwise."""
    try:
        text = raw.decode("utf-8")  # strict: JSON is UTF-8, and a BOM is refused below
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_not_a_number)
    except UnicodeDecodeError:
        raise invalid("body", "is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise invalid("body", f"is not JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise invalid("body", "is nested too deeply") from None
    if not isinstance(value, dict):
        raise invalid("body", "must be a JSON object")
    return value


def _is_json(content_type: str) -> bool:
    media_type, *parameters = (part.strip().lower() for part in content_type.split(";"))
    settings = [parameter.partition("=") for parameter in parameters]
    charsets = {value.strip().strip('"') for name, _, value in settings if name.strip() == "charset"}
    return media_type == "application/json" and charsets <= {"utf-8"}


def json_body(model: type[Body]) -> Callable[[Request], Awaitable[Body]]:
    """A dependency that reads the request's body as a `model`."""

    async def read(request: Request) -> Body:
        if not _is_json(request.headers.get("content-type", "")):
            raise Refusal(
                415, "send a JSON body (Content-Type: application/json)", "INVALID_ARGUMENT", "Content-Type"
            )
        value = json_object(await request.body())
        # Unknown keys first: they say the client speaks another contract.
        for key in value:
            if not key:
                raise invalid("body", "has an empty key")
            if key not in model.model_fields:
                raise invalid(key, "is not a field of this body")
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise invalid(".".join(map(str, first["loc"])) or "body", first["msg"]) from None

    return read


def documented_body(model: type[StrictBody]) -> dict[str, Any]:
    """The OpenAPI request body for `model` (read by json_body, not by FastAPI)."""
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
    return {"requestBody": schema}
