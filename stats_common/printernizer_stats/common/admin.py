"""The admin credential: a bearer token for operator and analytics calls.

It is separate from everything an installation holds: an installation's key
signs its own reports and deletion request and nothing else, and the admin
token cannot stand in for it. The token lives in a file (mode 0600) that the
servers read at start; for local use it is made on first start, like the
self-made TLS certificates. It is compared in constant time and never logged.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import grpc

from .errors import Context

# A token shorter than this is refused at start: it could be guessed.
MIN_TOKEN_CHARS = 32


class AdminTokenError(ValueError):
    """The token file cannot be used (one clear line for the operator)."""


def ensure_token_file(path: Path) -> str:
    """The token in `path`, made (0600, in a 0700 directory) when missing.
    Several servers starting at once agree on one token: it is written to a
    private temporary file first and linked into place only when complete."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".admin-token-")
        try:
            with os.fdopen(descriptor, "w") as file:  # mkstemp makes it 0600
                file.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another server made it first: use theirs
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    return read_token_file(path)


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise AdminTokenError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise AdminTokenError(
            f"the admin token in {path} must be one word of at least {MIN_TOKEN_CHARS} characters"
        )
    return token


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that carries the token (for clients)."""
    return (("authorization", f"Bearer {token}"),)


class RequireAdminToken(grpc.aio.ServerInterceptor):
    """Calls to `services` need `authorization: Bearer <token>`; without it
    they end with UNAUTHENTICATED before the servicer runs. Other services on
    the same server are untouched."""

    def __init__(self, token: str, services: Collection[str]) -> None:
        self._expected = f"Bearer {token}".encode()
        self._services = frozenset(services)

    def allows(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        given = next((value for key, value in metadata or () if key == "authorization"), None)
        if given is None:
            return False
        given_bytes = given if isinstance(given, bytes) else str(given).encode()
        return hmac.compare_digest(given_bytes, self._expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        service = handler_call_details.method.split("/")[1] if handler_call_details.method else ""
        if service not in self._services or self.allows(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        async def refuse(request: Any, context: Context) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this call needs the admin credential")

        # Every admin method is unary; the body is not even decoded.
        return grpc.unary_unary_rpc_method_handler(refuse)
