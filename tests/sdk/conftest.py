"""The SDK folder's harness: a real agent in a thread of this process (`AgentThread`), and an app that
mounts the SDK's privacy router as Printernizer mounts its own (`printernizer_app`, with the prefix
recorded in tests/fixtures/printernizer_usage_stats_api.json), with a week's events to show."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path

import grpc
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc, common_pb2
from printernizer_stats.agent.agent import AgentConfig
from printernizer_stats.agent.consent import Override
from printernizer_stats.agent.server import AgentServerConfig, serve
from printernizer_stats.sdk.fastapi import usage_stats_router
from printernizer_stats.sdk.local import AsyncLocalAgent

from ..agent_harness import (
    AgentProcess,
    app_started,
    error_occurred,
    job_completed,
    job_created,
    job_failed,
    times_this_week,
)
from ..conftest import ROOT


class AgentThread:
    """A real agent (printernizer_stats.agent.server.serve) in a thread with its own loop."""

    def __init__(self, socket_path: Path, db_path: Path, override: Override = Override()) -> None:
        self.socket_path, self.db_path, self.override = socket_path, db_path, override
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> AgentThread:
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            config = AgentServerConfig(
                self.socket_path, self.db_path, AgentConfig("Europe/Berlin", 400, self.override)
            )
            task = asyncio.create_task(serve(config, self._stop))
            while not self.socket_path.exists():
                await asyncio.sleep(0.01)
            ready.set()
            await task

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the agent did not start"
        return self

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def stub_call(self, method: str, request: object) -> object:
        with grpc.insecure_channel(f"unix:{self.socket_path}") as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            return getattr(stub, method)(request, timeout=10)

    def stored_events(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "printernizer_usage_stats_api.json").read_text())
PREFIX = FIXTURE["mount"]["prefix"]


def printernizer_app(agent: AsyncLocalAgent) -> FastAPI:
    """An app mounted as Printernizer's src/main.py mounts its router: the prefix,
    redirect_slashes=False, and its HTTPException handler's envelope."""
    app = FastAPI(redirect_slashes=False)
    app.include_router(usage_stats_router(agent=agent), prefix=PREFIX)

    @app.exception_handler(HTTPException)
    async def envelope(_: Request, exc: HTTPException) -> JSONResponse:  # src/utils/errors.py:927
        body = {
            "status": "error",
            "message": exc.detail,
            "error_code": f"HTTP_{exc.status_code}",
            "details": {},
            "timestamp": dt.datetime.now().isoformat(),
        }
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    return app


async def record_this_week(agent: AgentProcess) -> int:
    """Two completed jobs, one failed, a created one, a start and two errors, all this week."""
    moments = times_this_week(7)
    events = [
        app_started(moments[0]),
        job_created(moments[1]),
        job_completed(moments[2]),
        job_completed(moments[3]),
        job_failed(moments[4]),
        error_occurred(moments[5], common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API),
        error_occurred(moments[6], common_pb2.ERROR_TYPE_TIMEOUT, common_pb2.COMPONENT_API),
    ]
    async with grpc.aio.insecure_channel(agent.target) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        answer = await stub.RecordEvents(agent_service_pb2.RecordEventsRequest(events=events), timeout=10)
    assert answer.stored_count == len(events)
    return len(events)
