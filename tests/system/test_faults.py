"""Faults, with real parts: the database restarts while reports arrive, the
aggregation server is killed in the middle of requests, and the disk under
the agent fills up. Nothing that was accepted is lost, senders retry, and
the host app never notices."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.agent.delivery import Uplink
from printernizer_stats.common.tls import ensure_self_made
from printernizer_stats.common.weeks import last_complete_week
from printernizer_stats.demo.fleet import FleetPlan, FleetProgress, build_fleet, report_fleet, submission
from printernizer_stats.demo.services import free_port
from printernizer_stats.sdk import PrinterType, StatsClient

from ..agent_harness import RPC_TIMEOUT, agent_process, db_event_count, job_created
from ..aggregation.conftest import ServerProcess, count_reports, start_server
from ..postgres_instance import postgres_instance
from .conftest import agent_status, small_disk

pytestmark = pytest.mark.processes


def expected_reports(plan: FleetPlan) -> int:
    return sum(len(request.reports) for i in build_fleet(plan) if (request := submission(i, plan)))


async def report_with_a_fault(
    plan: FleetPlan, port: int, ca: Path, fault_after: int, fault: Callable[[], None]
) -> tuple[FleetProgress, asyncio.Task[None]]:
    """Send the fleet; once `fault_after` submissions are through, run `fault()`
    (in a thread) while the rest are still being sent."""
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []

    def on_progress(progress: FleetProgress, _total: int) -> None:
        if progress.sent >= fault_after and not started:
            started.append(loop.create_task(asyncio.to_thread(fault)))

    uplink = Uplink(f"localhost:{port}", str(ca))
    try:
        sent = await report_fleet(plan, uplink, concurrency=4, on_progress=on_progress, max_retry_delay=0.3)
    finally:
        await uplink.close()
    assert started, "the fault never happened"
    return sent, started[0]


@pytest.mark.postgres
async def test_reports_arriving_while_the_database_restarts_are_all_stored_once(tmp_path: Path) -> None:
    plan = FleetPlan(120, 6, last_complete_week(dt.datetime.now(dt.UTC)), seed=7)
    with postgres_instance() as database:
        ensure_self_made(tmp_path / "tls")
        server = start_server(tmp_path, database.url, "server", extra=("--peer-calls-per-second", "0"))
        try:
            await server.wait_until_serving()
            sent, restart = await report_with_a_fault(
                plan, server.port, tmp_path / "tls" / "ca.crt", 20, database.restart
            )
            await restart
        finally:
            server.process.terminate()
            await asyncio.to_thread(server.process.wait, 30)
        assert sent.failed == []
        assert sent.retried > 0, "no submission met the restart"
        assert sent.sent == plan.installations - sum(submission(i, plan) is None for i in build_fleet(plan))
        assert count_reports(database.url) == expected_reports(plan)  # every report, each once
    assert "Traceback" not in server.log()


async def test_killing_the_aggregation_server_mid_request_loses_nothing(tmp_path: Path) -> None:
    plan = FleetPlan(120, 6, last_complete_week(dt.datetime.now(dt.UTC)), seed=11)
    database_url = f"sqlite:///{tmp_path / 'aggregation.db'}"
    ensure_self_made(tmp_path / "tls")
    port = free_port()
    servers: list[ServerProcess] = [
        start_server(tmp_path, database_url, "first", port=port, extra=("--peer-calls-per-second", "0"))
    ]
    await servers[0].wait_until_serving()

    def kill_and_restart() -> None:
        servers[0].process.kill()  # SIGKILL: no graceful stop, requests in flight are cut
        servers[0].process.wait(10)
        servers.append(
            start_server(tmp_path, database_url, "second", port=port, extra=("--peer-calls-per-second", "0"))
        )

    try:
        sent, fault = await report_with_a_fault(plan, port, tmp_path / "tls" / "ca.crt", 20, kill_and_restart)
        await fault
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.terminate()
                await asyncio.to_thread(server.process.wait, 30)
    assert servers[0].process.returncode == -signal.SIGKILL
    assert sent.failed == []
    assert sent.retried > 0, "no submission met the outage"
    assert count_reports(database_url) == expected_reports(plan)


async def test_a_full_disk_under_the_agent_is_reported_and_corrupts_nothing() -> None:
    with small_disk("3m") as disk:
        filler = disk / "filler"
        async with agent_process(disk) as agent:
            filler.write_bytes(b"\0" * (2_600 * 1024))  # most of the disk is taken
            host = StatsClient(agent.socket_path, max_buffered=5_000)
            try:
                # The host app goes on recording as usual; every call returns.
                full = False
                for _ in range(600):  # at most 30 s: a loaded machine stores more slowly
                    for _ in range(1_000):
                        host.job_created(PrinterType.PRUSA)
                    await asyncio.sleep(0.05)
                    status = await agent_status(agent.target)
                    if status.storage == agent_service_pb2.STORAGE_CONDITION_FULL:
                        full = True
                        break
                assert full, "the disk never filled"
                for _ in range(10_000):  # still recording while the disk is full (more than it buffers)
                    host.job_created(PrinterType.PRUSA)
                assert host.stats().dropped > 0  # counted, not raised
            finally:
                host.close(timeout=1)
            assert agent.process is not None
            assert agent.process.poll() is None  # the agent keeps running
            assert status.storage_condition_since.seconds > 0
            stored = status.stored_events
            assert stored > 0

            # Room again: the next events are stored and the status says so.
            filler.unlink()
            async with grpc.aio.insecure_channel(agent.target) as channel:
                stub = agent_service_pb2_grpc.AgentServiceStub(channel)
                answer = await stub.RecordEvents(
                    agent_service_pb2.RecordEventsRequest(events=[job_created()]), timeout=RPC_TIMEOUT
                )
            assert answer.stored_count == 1
            recovered = await agent_status(agent.target)
            assert recovered.storage == agent_service_pb2.STORAGE_CONDITION_OK
            assert recovered.stored_events >= stored + 1
            assert await agent.stop() == 0
        database = sqlite3.connect(agent.db_path)
        try:
            assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            database.close()
        assert db_event_count(agent.db_path) == recovered.stored_events  # nothing stored was lost
