"""Request bodies are bounded.

The only changes the gateway takes are the privacy API's (opt-in, opt-out,
delete: the SDK's router, which reads their small JSON bodies itself). Every
request body is bounded (MAX_BODY_BYTES): one whose Content-Length is over the
limit is refused with 413 before a byte of it is read, and one sent without a
length (chunked) is counted as it arrives and refused as soon as it passes the
limit. Nothing larger is ever held in memory.
"""

from __future__ import annotations

from printernizer_stats.sdk.fastapi import MAX_BODY_BYTES
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ErrorResponse

# MAX_BODY_BYTES is the SDK router's own limit (its largest body is ~30 bytes).
__all__ = ["MAX_BODY_BYTES", "BodyLimit"]


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
