"""The gateway's FastAPI application: the admin statistics API and its
dashboard, the local privacy API and its page (the SDK's router), and the
public community page with its figures (when turned on)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from printernizer_stats.common.http_status import BACKEND_FAILED
from printernizer_stats.common.telemetry import metrics_enabled, tracing_enabled
from printernizer_stats.sdk.local import AsyncLocalAgent

from .bodies import MAX_BODY_BYTES, BodyLimit
from .community import (
    COMMUNITY_API,
    COMMUNITY_MAX_AGE_SECONDS,
    COMMUNITY_PAGE,
    CommunityFigures,
    community_router,
)
from .errors import ERROR_SCHEMA, install_error_handlers
from .health import Plain, health_router
from .pages import PRIVACY_PAGE, STATIC_PREFIX, install_pages
from .stats_api import AnalyticsClient, stats_router
from .usage_api import USAGE_PREFIX, LoopbackOnly, install_usage_api

# Every error an API operation can answer, for its OpenAPI description: the
# gateway's own refusals, and each status a backend's gRPC status becomes.
API_ERRORS = {
    400: "a parameter or the body is invalid",
    404: "the backend found nothing",
    409: "the backend refused the change as conflicting",
    429: "the backend is busy, or its disk is full: try again after Retry-After seconds",
    501: "the backend does not implement this call",
    BACKEND_FAILED: "the backend failed",
    503: "the analytics server or the agent is down",
    504: "the backend did not answer in time",
}
STATS_ERRORS = {401: "the admin token is missing or wrong", 403: "the analytics server refused the token"}
USAGE_ERRORS = {
    401: "the agent refused the call",
    403: "not addressed to this machine (a loopback name), or a change sent by another site",
}
# The community figures need no credentials and never ask a backend on a request.
COMMUNITY_ERRORS = {
    400: "a query parameter was given: the community figures take none",
    404: "there is no such chart",
    503: "the figures are not available yet (none fetched since the gateway started): try again after "
    "Retry-After seconds",
}
BODY_ERRORS = {413: f"the body is larger than {MAX_BODY_BYTES} bytes", 415: "the body is a form, not JSON"}

# Pages load nothing from elsewhere: scripts, styles and data come from this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
)


def create_app(
    analytics: AnalyticsClient | None,
    agent: AsyncLocalAgent | None = None,
    community: CommunityFigures | None = None,
) -> FastAPI:
    """The statistics API and the dashboard over `analytics`, the local privacy
    API and its page (the SDK's) over `agent` (usage_api.local_agent), and the
    public community page over `community`, refreshed on its schedule while the
    app runs: any of them may be left out."""
    agent_health = Plain(agent.target) if agent is not None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        refreshing = asyncio.create_task(community.run()) if community is not None else None
        yield
        if refreshing is not None:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
        if analytics is not None:
            await analytics.close()
        if agent is not None:
            await agent.close()
        if agent_health is not None:
            await agent_health.close()

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
    if analytics is not None:
        app.include_router(stats_router(analytics))
    if agent is not None:
        install_usage_api(app, agent)
    if community is not None:
        app.include_router(community_router(community))
    app.include_router(health_router(analytics, agent_health))
    install_error_handlers(app)
    install_pages(
        app, dashboard=analytics is not None, privacy_page=agent is not None, community=community is not None
    )

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, corrected to what the gateway answers: a bad
        parameter is 400 (not 422), and every error has the same JSON body."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
            error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for path, operations in schema.get("paths", {}).items():
                if not path.startswith("/api/"):
                    continue  # /health: no parameters, no credentials
                public = is_community_path(path)
                own = STATS_ERRORS if path.startswith("/api/v1/stats") else USAGE_ERRORS
                for method, operation in operations.items():
                    errors = dict(COMMUNITY_ERRORS) if public else {**API_ERRORS, **own}
                    if method in ("post", "delete"):
                        errors.update(BODY_ERRORS)
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    for status, description in sorted(errors.items()):
                        responses[str(status)] = {"description": description, **error}
            for name in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Spans and request metrics (no client address: see printernizer_stats.common.telemetry).
    if tracing_enabled() or metrics_enabled():
        FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])

    # Outermost last: the security headers go on every answer; a request that is
    # not addressed to this machine is refused before its body is even counted.
    app.add_middleware(BodyLimit)
    if agent is not None:
        app.add_middleware(LoopbackOnly, prefixes=(USAGE_PREFIX, PRIVACY_PAGE))

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        # Admin and personal figures are never cached; the pages' assets (fixed by
        # the installed version) may be, for a day; the community page and its
        # public figures (the same for everyone, refreshed hourly) for minutes.
        path, ok = request.url.path, response.status_code == 200
        if ok and path.startswith(f"{STATIC_PREFIX}/"):
            response.headers["Cache-Control"] = "public, max-age=86400"
        elif ok and community is not None and is_community_path(path):
            response.headers["Cache-Control"] = f"public, max-age={COMMUNITY_MAX_AGE_SECONDS}"
        else:
            response.headers["Cache-Control"] = "no-store"
        return response

    return app


def is_community_path(path: str) -> bool:
    return path in (COMMUNITY_PAGE, COMMUNITY_API) or path.startswith(f"{COMMUNITY_API}/")
