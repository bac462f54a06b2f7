"""`python -m printernizer_stats.aggregation` as real processes: two replicas on one
PostgreSQL database (started together, receiving the same reports at the same
moment), and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import Week
from printernizer_stats.demo.services import free_port

from .. import databases
from ..conftest import ROOT
from .conftest import Installation, ServerProcess, count_reports, report_of, start_server

pytestmark = pytest.mark.processes

W45, W46 = Week(2026, 45), Week(2026, 46)
TIMEOUT = 10


@contextlib.asynccontextmanager
async def servers(base: Path, database_url: str, count: int) -> AsyncIterator[list[ServerProcess]]:
    """`count` server processes started at the same moment on one database."""
    ensure_self_made(base / "tls")  # shared certificate material, as replicas would mount it
    started = [start_server(base, database_url, f"server{i}") for i in range(count)]
    try:
        await asyncio.gather(*(s.wait_until_serving() for s in started))
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(10)


@contextlib.contextmanager
def stubs(
    base: Path, running: list[ServerProcess]
) -> Iterator[list[ingest_service_pb2_grpc.IngestServiceStub]]:
    credentials = grpc.ssl_channel_credentials(root_certificates=(base / "tls" / "ca.crt").read_bytes())
    channels = [grpc.aio.secure_channel(f"localhost:{s.port}", credentials) for s in running]
    yield [ingest_service_pb2_grpc.IngestServiceStub(channel) for channel in channels]
    for channel in channels:
        asyncio.get_running_loop().create_task(channel.close())


@pytest.mark.postgres
async def test_two_processes_on_one_postgresql_store_a_report_once(tmp_path: Path) -> None:
    with databases.fresh_postgres_database() as database_url:
        # Started together on an empty database: the migrations run once, in turn.
        async with servers(tmp_path, database_url, 2) as running:
            with stubs(tmp_path, running) as (first, second):
                installations = [Installation(uuid.uuid4().bytes) for _ in range(8)]
                for agent in installations:
                    request = agent.submission(report_of(agent, W45), report_of(agent, W46))
                    # The same submission reaches both replicas at the same moment
                    # (a retry after a lost answer, through a load balancer).
                    answers = await asyncio.gather(
                        first.SubmitReports(request, timeout=TIMEOUT),
                        second.SubmitReports(request, timeout=TIMEOUT),
                        return_exceptions=True,
                    )
                    receipts = [a for a in answers if isinstance(a, ingest_service_pb2.SubmitReportsResponse)]
                    assert len(receipts) == 2, answers
                    statuses = sorted(r.receipts[0].status for r in receipts)
                    assert statuses == [
                        ingest_service_pb2.RECEIPT_STATUS_ACCEPTED,
                        ingest_service_pb2.RECEIPT_STATUS_DUPLICATE,
                    ]
                    assert receipts[0].receipts[0].receipt_id == receipts[1].receipts[0].receipt_id
                assert count_reports(database_url) == 2 * len(installations)

                # The hourly rule holds across replicas: two different weeks at
                # once, one to each, and only one submission is accepted.
                agent = Installation(uuid.uuid4().bytes)
                answers = await asyncio.gather(
                    first.SubmitReports(agent.submission(report_of(agent, W45)), timeout=TIMEOUT),
                    second.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT),
                    return_exceptions=True,
                )
                refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
                assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED], answers
                assert count_reports(database_url) == 2 * len(installations) + 1
        for server in running:
            assert "Traceback" not in server.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_server_stops_cleanly_on_a_signal(tmp_path: Path, signum: int) -> None:
    database_url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    async with servers(tmp_path, database_url, 1) as (server,):
        with stubs(tmp_path, [server]) as (stub,):
            agent = Installation(uuid.uuid4().bytes)
            await stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
        server.process.send_signal(signum)
        code = await asyncio.to_thread(server.process.wait, 20)
    assert code == 0, server.log()
    assert "Traceback" not in server.log()
    assert count_reports(database_url) == 1  # what was accepted is kept


def established_connections(pid: int, port: int) -> int:
    """TCP connections to `port` that process `pid` holds open (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            columns = row.split()
            local_port = int(columns[1].rsplit(":", 1)[1], 16)
            if local_port == port and columns[3] == "01" and columns[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


@pytest.mark.postgres
async def test_processes_behind_one_address_share_the_work(tmp_path: Path) -> None:
    with databases.fresh_postgres_database() as database_url:
        migrate = subprocess.run(
            [
                sys.executable,
                "-m",
                "printernizer_stats.aggregation",
                "--migrations",
                "only",
                "--database-url",
                database_url,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert "schema revision" in migrate.stdout
        # Two processes listen on one address (the kernel spreads connections
        # between them: SO_REUSEPORT, which gRPC sets) and leave migrations alone.
        port = free_port()
        ensure_self_made(tmp_path / "tls")
        started = [
            start_server(tmp_path, database_url, f"server{i}", port=port, extra=("--migrations", "skip"))
            for i in range(2)
        ]
        try:
            await asyncio.gather(*(s.wait_until_serving() for s in started))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(tmp_path / "tls" / "ca.crt").read_bytes()
            )
            # Each installation on its own connection, all kept open.
            channels = [grpc.aio.secure_channel(f"localhost:{port}", credentials) for _ in range(24)]
            installations = [Installation(uuid.uuid4().bytes) for _ in channels]
            for channel, agent in zip(channels, installations, strict=True):
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                await stub.SubmitReports(agent.submission(report_of(agent, W46)), timeout=TIMEOUT)
            shares = [established_connections(s.process.pid, port) for s in started]
            assert sum(shares) == len(channels)
            assert min(shares) > 0, shares  # both processes took connections
            for channel in channels:
                await channel.close()
            assert count_reports(database_url) == len(installations)

            # One process stops: the address still serves, from the other.
            started[0].process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(started[0].process.wait, 20) == 0
            late = Installation(uuid.uuid4().bytes)
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                await stub.SubmitReports(late.submission(report_of(late, W46)), timeout=TIMEOUT)
            assert count_reports(database_url) == len(installations) + 1
        finally:
            for server in started:
                if server.process.poll() is None:
                    server.process.kill()
                    server.process.wait(10)
        for server in started:
            assert "Traceback" not in server.log()
            assert "migrat" not in server.log().lower()  # --migrations skip
