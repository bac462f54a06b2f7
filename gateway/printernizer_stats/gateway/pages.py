"""The pages: the admin statistics dashboard (/dashboard), one installation's
privacy page (/privacy, only beside the local privacy API: it leads to the SDK's
page, served with that API at /api/v1/usage-stats/page), and the public community
page (/community, when turned on: see community.py).

The dashboard and the community page are static files (web/, assets in web/static) that call the
REST APIs from the browser. Their charts are drawn by plotly.js, served from the installed plotly
package: nothing is loaded from anywhere else, so the pages work offline and
under the gateway's strict Content-Security-Policy. plotly.js's own style rules
come from web/static/plotly.css (made by tools/generate_plotly_css.py) instead
of the <style> element it would otherwise inject.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from .community import COMMUNITY_PAGE
from .usage_api import USAGE_PAGE

WEB = Path(str(files("printernizer_stats.gateway") / "web"))
PLOTLY_JS = Path(str(files("plotly") / "package_data" / "plotly.min.js"))
STATIC_PREFIX = "/static"
PRIVACY_PAGE = "/privacy"


@functools.cache
def plotly_gzipped() -> bytes:
    """plotly.js compressed once per process, on first request (4.8 MB, 1.4 MB on the wire)."""
    return gzip.compress(PLOTLY_JS.read_bytes(), compresslevel=9, mtime=0)


def install_pages(app: FastAPI, dashboard: bool, privacy_page: bool, community: bool = False) -> None:
    """The dashboard when `dashboard`, the privacy page when `privacy_page`, the
    community page when `community`, and their assets; `/` leads to the
    dashboard, or else to the privacy page."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/dashboard" if dashboard else PRIVACY_PAGE)

    if dashboard:

        @router.get("/dashboard")
        async def dashboard_page() -> FileResponse:
            return FileResponse(WEB / "dashboard.html")

    if community:

        @router.get(COMMUNITY_PAGE)
        async def community_page() -> FileResponse:
            return FileResponse(WEB / "community.html")

    if privacy_page:
        # Loopback only, like its API (usage_api.LoopbackOnly). The page's own
        # URLs are relative to its address: it is sent there, not served here.
        @router.get(PRIVACY_PAGE)
        async def privacy(request: Request) -> RedirectResponse:
            query = request.url.query  # ?lang=de goes along
            return RedirectResponse(f"{USAGE_PAGE}?{query}" if query else USAGE_PAGE)

    @router.get(f"{STATIC_PREFIX}/vendor/plotly.min.js")
    async def plotly_js(accept_encoding: Annotated[str, Header()] = "") -> Response:
        if "gzip" not in accept_encoding.lower():
            return FileResponse(PLOTLY_JS, media_type="text/javascript")
        return Response(
            await asyncio.to_thread(plotly_gzipped),
            media_type="text/javascript",
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )

    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=WEB / "static"), name="static")
