"""The gateway's FastAPI application: the admin statistics API and the local
privacy API (the two pages come with a later release)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from .stats_api import Analytics, install_error_handlers, stats_router
from .usage_api import Agent, usage_router

# Pages load nothing from elsewhere: scripts, styles and data come from this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
)


def create_app(analytics: Analytics, agent: Agent | None = None) -> FastAPI:
    """The statistics API over `analytics`; with `agent`, also the local privacy API."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await analytics.close()
        if agent is not None:
            await agent.close()

    app = FastAPI(
        title="Printernizer usage statistics gateway",
        version="1",
        lifespan=lifespan,
        description="The admin dashboard's statistics API. No cross-origin access is granted.",
        # FastAPI's interactive docs load their scripts from a CDN: not here. The
        # schema itself is served at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(stats_router(analytics))
    if agent is not None:
        app.include_router(usage_router(agent))
    install_error_handlers(app)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    return app
