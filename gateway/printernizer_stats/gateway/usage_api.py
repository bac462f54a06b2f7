"""`/api/v1/usage-stats/*`: one installation's privacy API and its page over
its agent's Unix socket. Both are the SDK's (printernizer_stats.sdk.fastapi:
Printernizer's own paths and shapes, plus the preview, the ledger, the
disclosure, the details and the page at `/page`), the same router Printernizer
mounts; the gateway adds only its own rules in front of it.

It is meant for the user's own machine: it answers only requests addressed to
a loopback host name (so a web page cannot reach it through DNS rebinding).
Every body is bounded (bodies.BodyLimit), and the router refuses a change that
a browser marks as cross-site or that is sent as a form; no cross-origin access
is granted either.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from printernizer_stats.common.telemetry import grpc_client_interceptors
from printernizer_stats.sdk.fastapi import usage_stats_router
from printernizer_stats.sdk.local import AsyncLocalAgent
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ErrorResponse

USAGE_PREFIX = "/api/v1/usage-stats"
USAGE_PAGE = f"{USAGE_PREFIX}/page"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}
# A Host header: a name or a bracketed IPv6 address, then an optional port.
_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::[0-9]{1,5})?")


def local_agent(socket_path: str) -> AsyncLocalAgent:
    """The SDK's client of the local agent at `socket_path`, as the router needs it."""
    return AsyncLocalAgent(socket_path, raise_errors=True, interceptors=grpc_client_interceptors())


def install_usage_api(app: FastAPI, agent: AsyncLocalAgent) -> None:
    """The SDK's privacy API and page over `agent`, under USAGE_PREFIX (its
    `DELETE` is answered on the prefix itself). Loopback only: LoopbackOnly,
    installed beside it (printernizer_stats.gateway.app)."""
    app.include_router(usage_stats_router(agent=agent), prefix=USAGE_PREFIX)


def is_loopback(host_headers: list[bytes]) -> bool:
    """Whether a request is addressed to this machine: exactly one Host header,
    naming a loopback host."""
    if len(host_headers) != 1:
        return False
    match = _HOST.fullmatch(host_headers[0].decode("latin-1"))
    return match is not None and match["name"].lower() in LOOPBACK_HOSTS


class LoopbackOnly:
    """ASGI middleware: requests under `prefixes` that are not addressed to a
    loopback host name are refused with 403 before anything else is looked at
    (the path, the parameters, the body), so no answer tells such a caller more."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app, self.prefixes = app, prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        guarded = any(path == prefix or path.startswith(f"{prefix}/") for prefix in self.prefixes)
        if scope["type"] == "http" and guarded:
            hosts = [value for name, value in scope["headers"] if name == b"host"]
            if not is_loopback(hosts):
                refusal = ErrorResponse(
                    403, "this API answers only on this machine (a loopback host name)", "PERMISSION_DENIED"
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
