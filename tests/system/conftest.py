"""The system folder's harness, for its tests and the others': a gRPC server's health awaited, a
PostgreSQL database made to go away for a while, a disk that really fills up, the agent's status, and
clean copies of the project's folders to install from. Other folders import what they use from here
(see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from sqlalchemy.engine import make_url

from .. import databases
from ..agent_harness import RPC_TIMEOUT
from ..aggregation.conftest import TIMEOUT
from ..conftest import ROOT

# --- the servers' health, and their database away --------------------------------------------------------

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.contextmanager
def database_away(url: str) -> Iterator[None]:
    """The database refuses new connections and its sessions end (as when it
    restarts), until the block ends."""
    name = make_url(url).database
    admin = (
        make_url(databases.POSTGRES_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            yield
        finally:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def wait_for_health(channel: grpc.aio.Channel, wanted: int, timeout: float = 20) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = asyncio.get_running_loop().time() + timeout
    status = None
    while asyncio.get_running_loop().time() < deadline:
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)).status
        if status == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {status}, expected {wanted}")


# --- the agent on a disk that fills up -------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(size: str) -> Iterator[Path]:
    """A tmpfs of `size`: a disk that really fills up."""
    where = Path(tempfile.mkdtemp(prefix="full-", dir="/tmp"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        where.rmdir()
        if "STATS_TEST_CHROMIUM" in os.environ:  # CI: this machine can mount
            pytest.fail(f"cannot mount a tmpfs: {mounted.stderr!r}")
        pytest.skip("mounting a small filesystem needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


async def agent_status(target: str) -> agent_service_pb2.GetStatusResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        return await stub.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT)


# --- installing the project's folders --------------------------------------------------------------------


def clean_copies(folders: tuple[str, ...]) -> list[Path]:
    """Copies of the folders to install from: pip builds in the folder it is
    given (a build/ directory), which another test may be building in too."""
    target = Path(tempfile.mkdtemp(prefix="pzs-sources-"))
    leftovers = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    return [Path(shutil.copytree(ROOT / folder, target / folder, ignore=leftovers)) for folder in folders]
