"""`python -m printernizer_stats.demo.host_app`: a small stand-in for Printernizer.

A FastAPI app that uses the stats SDK at the integration points Printernizer
has (docs/sdk.md): start-up and shutdown, the printer fleet, feature switches,
print jobs, file transfers, printer connections and errors. Its "printers" are
simulated: a background task starts and finishes jobs every few seconds, so
events keep flowing into the real local agent. Its REST routes do the same on
request, and `/` links to the gateway's privacy page, where Printernizer would
mount it in its own UI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator
from typing import Annotated

import uvicorn
from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse
from printernizer_stats.common.cli import host_port
from printernizer_stats.sdk import (
    Component,
    DeploymentMode,
    ErrorType,
    Feature,
    FileType,
    JobFailureReason,
    PrinterType,
    StatsClient,
)
from pydantic import BaseModel

APP_VERSION = "2.8.2"
PRINTERS = {"bambu-x1c": PrinterType.BAMBU_LAB, "bambu-p1s": PrinterType.BAMBU_LAB, "mk4": PrinterType.PRUSA}


class PrinterOfflineError(ConnectionError):
    """A printer did not answer (Printernizer's own exception class)."""


class Job(BaseModel):
    printer: str


class Finished(BaseModel):
    ok: bool = True
    seconds: float = 3600.0


def create_app(stats: StatsClient, privacy_page: str, simulate_every: float = 3.0) -> FastAPI:
    jobs: dict[int, str] = {}
    rng = random.Random()  # noqa: S311 - simulated printers, not secrets

    async def simulate_printers() -> None:
        """The printers' life: jobs start and finish, now and then one fails or drops off."""
        while True:
            await asyncio.sleep(simulate_every)
            printer = rng.choice(list(PRINTERS))
            stats.job_created(PRINTERS[printer])
            if rng.random() < 0.1:
                stats.job_failed(PRINTERS[printer], rng.uniform(60, 3600), JobFailureReason.FILAMENT_RUNOUT)
            else:
                stats.job_completed(PRINTERS[printer], rng.uniform(600, 6 * 3600))
            stats.file_downloaded(rng.randrange(1, 80) * 1024 * 1024, FileType.THREE_MF)
            if rng.random() < 0.05:
                stats.printer_disconnected(PRINTERS[printer])
                stats.error(PrinterOfflineError("printer 192.168.1.40 is offline"), Component.PRINTER_SERVICE)
                stats.printer_connected(PRINTERS[printer])

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Printernizer's start-up: the SDK's first calls.
        stats.install_exception_hook(Component.OTHER)
        stats.app_started(APP_VERSION, DeploymentMode.DOCKER)
        fleet: dict[PrinterType, int] = {}
        for printer_type in PRINTERS.values():
            fleet[printer_type] = fleet.get(printer_type, 0) + 1
        stats.printer_fleet(fleet)
        for printer_type in PRINTERS.values():
            stats.printer_connected(printer_type)
        stats.feature(Feature.LIBRARY, enabled=True)
        stats.feature(Feature.TIMELAPSE, enabled=True)
        stats.feature(Feature.MATERIAL_TRACKING, enabled=False)
        simulation = asyncio.create_task(simulate_printers())
        try:
            yield
        finally:
            simulation.cancel()
            stats.app_stopped()
            stats.close()

    app = FastAPI(title="Example host app (a Printernizer stand-in)", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def any_error(_: Request, exc: Exception) -> JSONResponse:
        stats.error(exc, Component.API)  # the class only, never the message
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def home() -> str:
        return (
            "<!doctype html><title>Printernizer (example)</title><h1>Printernizer (example host app)</h1>"
            f'<p>Usage statistics: <a href="{privacy_page}">{privacy_page}</a></p>'
        )

    @app.post("/api/jobs")
    async def start_job(job: Job) -> dict[str, int]:
        if job.printer not in PRINTERS:
            raise HTTPException(404, "no such printer")
        number = len(jobs) + 1
        jobs[number] = job.printer
        stats.job_created(PRINTERS[job.printer])
        return {"job": number}

    @app.post("/api/jobs/{number}/finish")
    async def finish_job(number: Annotated[int, Path(ge=1)], finished: Finished) -> dict[str, bool]:
        printer = jobs.pop(number, None)
        if printer is None:
            raise HTTPException(404, "no such job")
        if finished.ok:
            stats.job_completed(PRINTERS[printer], finished.seconds)
        else:
            stats.job_failed(PRINTERS[printer], finished.seconds, JobFailureReason.CANCELLED)
        return {"ok": finished.ok}

    @app.post("/api/printers/{printer}/connect")
    async def connect(printer: str) -> dict[str, str]:
        if printer not in PRINTERS:
            raise HTTPException(404, "no such printer")
        # The example's printers are never reachable on demand: the error is recorded by class.
        raise PrinterOfflineError(f"{printer} at 192.168.1.40 did not answer")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="printernizer_stats.demo.host_app", description=__doc__)
    parser.add_argument("--listen", type=host_port, default="127.0.0.1:8471", metavar="HOST:PORT")
    parser.add_argument("--agent-socket", required=True, help="the local stats agent's Unix socket")
    parser.add_argument("--privacy-page", default="http://127.0.0.1:8470/privacy", help="its address")
    parser.add_argument("--simulate-every", type=float, default=3.0, help="seconds between simulated jobs")
    args = parser.parse_args(argv)
    stats = StatsClient(args.agent_socket, error_types={PrinterOfflineError: ErrorType.PRINTER_OFFLINE})
    host, _, port = args.listen.rpartition(":")
    app = create_app(stats, args.privacy_page, args.simulate_every)
    uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
