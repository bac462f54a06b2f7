"""The agent's server: socket permissions and safety checks, the command line,
graceful and abrupt shutdown, health and reflection."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.agent.server import MAX_SOCKET_PATH, SERVICE_NAME, SocketError, serve
from printernizer_stats.agent.storage import StorageError

from .. import agent_harness
from ..agent_harness import (
    RPC_TIMEOUT,
    AgentProcess,
    RunningAgent,
    agent_command,
    agent_environment,
    agent_process,
    current_umask,
    db_event_count,
    db_rows,
    job_created,
    make_config,
    running_agent,
)
from ..conftest import ROOT

# The harness's fixtures, used by the tests below (imported explicitly, not via conftest).
agent = agent_harness.agent
agent_dir = agent_harness.agent_dir

# --- the socket and its directory ---------------------------------------------------------------


async def test_socket_directory_and_socket_are_private(agent: RunningAgent) -> None:
    directory = agent.socket_path.parent
    mode = stat.S_IMODE(directory.stat().st_mode)
    assert mode == 0o750 & ~current_umask()
    assert mode & stat.S_IRWXO == 0
    socket_mode = agent.socket_path.lstat().st_mode
    assert stat.S_ISSOCK(socket_mode)
    assert stat.S_IMODE(socket_mode) & stat.S_IRWXO == 0
    assert stat.S_IMODE(socket_mode) & 0o111 == 0  # never executable
    assert stat.S_IMODE(socket_mode) == 0o660  # the agent's own umask, whatever the caller's
    assert stat.S_IMODE(agent.db_path.stat().st_mode) == 0o600
    assert (await agent.status()).stored_events == 0


@pytest.mark.processes
@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root to switch user"
)
async def test_another_user_cannot_reach_the_socket(agent: RunningAgent) -> None:
    base = agent.socket_path.parent.parent
    base.chmod(0o755)  # only the socket's own directory stands in the way
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "else:\n"
        "    print('connected')\n"
    )
    result = await asyncio.to_thread(
        subprocess.run,
        ["/usr/bin/python3", "-c", probe, str(agent.socket_path)],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert result.stdout.strip() == "denied", result.stderr
    assert (await agent.status()).stored_events == 0


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o701])
async def test_world_accessible_directory_is_refused(agent_dir: Path, mode: int) -> None:
    directory = agent_dir / "open"
    directory.mkdir()
    directory.chmod(mode)
    config = make_config(agent_dir, socket_path=directory / "agent.sock")
    with pytest.raises(SocketError, match="accessible by other users") as caught:
        await asyncio.wait_for(serve(config, asyncio.Event()), timeout=10)
    assert str(directory) in str(caught.value)
    assert "0750" in str(caught.value)
    assert list(directory.iterdir()) == []  # nothing bound
    assert not config.db_path.exists()  # nothing opened either
    assert stat.S_IMODE(directory.stat().st_mode) == mode  # and nothing "fixed" behind the user's back


async def test_too_long_socket_path_is_refused(agent_dir: Path) -> None:
    path = agent_dir / ("d" * 100) / "agent.sock"
    length = len(os.fsencode(path))
    assert length > MAX_SOCKET_PATH == 107
    config = make_config(agent_dir, socket_path=path)
    with pytest.raises(SocketError, match=f"socket path is {length} bytes long") as caught:
        await asyncio.wait_for(serve(config, asyncio.Event()), timeout=10)
    assert "107" in str(caught.value)
    assert not path.parent.exists()


async def test_longest_allowed_socket_path_works(agent_dir: Path) -> None:
    prefix = len(os.fsencode(agent_dir / "r")) + 1
    path = agent_dir / "r" / ("s" * (MAX_SOCKET_PATH - prefix))
    assert len(os.fsencode(path)) == MAX_SOCKET_PATH
    async with running_agent(make_config(agent_dir, socket_path=path)) as running:
        assert (await running.record(job_created())).stored_count == 1


async def test_stale_socket_is_replaced(agent_dir: Path) -> None:
    directory = agent_dir / "run"
    directory.mkdir(mode=0o750)
    path = directory / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a killed agent leaves its socket file behind
    assert stat.S_ISSOCK(path.lstat().st_mode)
    async with running_agent(make_config(agent_dir, socket_path=path)) as running:
        assert (await running.record(job_created())).stored_count == 1
        assert stat.S_ISSOCK(path.lstat().st_mode)
    assert not path.exists()  # a graceful stop removes its own socket


async def test_a_file_at_the_socket_path_is_not_replaced(agent_dir: Path) -> None:
    directory = agent_dir / "run"
    directory.mkdir(mode=0o750)
    path = directory / "agent.sock"
    path.write_text("precious")
    with pytest.raises(SocketError, match="exists and is not a socket"):
        await asyncio.wait_for(serve(make_config(agent_dir, socket_path=path), asyncio.Event()), timeout=10)
    assert path.read_text() == "precious"


async def test_a_second_agent_on_a_live_socket_is_refused(agent: RunningAgent, agent_dir: Path) -> None:
    await agent.record(job_created())
    other = make_config(agent_dir, socket_path=agent.socket_path, db_path=agent_dir / "other" / "agent.db")
    with pytest.raises(SocketError, match="another agent is already serving"):
        await asyncio.wait_for(serve(other, asyncio.Event()), timeout=10)
    assert not other.db_path.exists()
    assert stat.S_ISSOCK(agent.socket_path.lstat().st_mode)  # left alone
    assert (await agent.status()).stored_events == 1  # and the first agent still answers


async def test_a_second_agent_on_the_same_database_is_refused(agent: RunningAgent, agent_dir: Path) -> None:
    """Two agents on one database would each act on a cached consent."""
    await agent.record(job_created())
    other = make_config(agent_dir, socket_path=agent_dir / "run2" / "agent.sock", db_path=agent.db_path)
    with pytest.raises(StorageError, match="another agent is using the database"):
        await asyncio.wait_for(serve(other, asyncio.Event()), timeout=10)
    assert (await agent.status()).stored_events == 1


async def test_the_database_lock_is_released_at_stop(agent_dir: Path) -> None:
    config = make_config(agent_dir)
    async with agent_harness.running_agent(config) as first:
        await first.record(job_created())
    async with agent_harness.running_agent(config) as second:
        assert (await second.status()).stored_events == 1


# --- the command line ---------------------------------------------------------------------------------


def run_agent_command(socket_path: Path, db_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_command(socket_path, db_path),
        cwd=ROOT,
        env=agent_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("printernizer_stats.agent: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.processes
async def test_command_with_an_unreadable_ca_file(agent_dir: Path) -> None:
    result = subprocess.run(
        [
            *agent_command(agent_dir / "run" / "a.sock", agent_dir / "a.db"),
            "--server",
            "localhost:1",
            "--ca-file",
            "/nope.pem",
        ],
        cwd=ROOT,
        env=agent_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(result, "--ca-file", "/nope.pem")


@pytest.mark.processes
async def test_command_with_an_uncreatable_socket_directory(agent_dir: Path) -> None:
    blocker = agent_dir / "a-file"
    blocker.write_text("")
    result = await asyncio.to_thread(
        run_agent_command, blocker / "run" / "agent.sock", agent_dir / "agent.db"
    )
    assert_one_line_error(result, "cannot create the socket directory", str(blocker / "run"))
    assert not (agent_dir / "agent.db").exists()


@pytest.mark.processes
@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any directory")
async def test_command_with_a_read_only_socket_directory(agent_dir: Path) -> None:
    directory = agent_dir / "run"
    directory.mkdir(mode=0o550)
    result = await asyncio.to_thread(run_agent_command, directory / "agent.sock", agent_dir / "agent.db")
    assert_one_line_error(result, "not writable")


@pytest.mark.processes
async def test_command_with_a_world_accessible_socket_directory(agent_dir: Path) -> None:
    directory = agent_dir / "run"
    directory.mkdir()
    directory.chmod(0o777)
    result = await asyncio.to_thread(run_agent_command, directory / "agent.sock", agent_dir / "agent.db")
    assert_one_line_error(result, "accessible by other users")


@pytest.mark.processes
async def test_command_with_an_unusable_database(agent_dir: Path) -> None:
    blocker = agent_dir / "a-file"
    blocker.write_text("")
    socket_path = agent_dir / "run" / "agent.sock"
    result = await asyncio.to_thread(run_agent_command, socket_path, blocker / "data" / "agent.db")
    assert_one_line_error(result, "cannot open the database")
    assert not socket_path.exists()


# --- shutdown: graceful and abrupt ----------------------------------------------------------------------


async def send_batches(
    stub: agent_service_pb2_grpc.AgentServiceStub,
    size: int,
    acked: list[int],
    failures: list[grpc.StatusCode],
) -> None:
    """Send batches until the agent stops answering; acked gets each stored_count."""
    request = agent_service_pb2.RecordEventsRequest(events=[job_created() for _ in range(size)])
    while True:
        try:
            response = await stub.RecordEvents(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            failures.append(exc.code())
            return
        assert response.stored_count == size
        acked.append(response.stored_count)


async def wait_for_acks(acked: list[int], at_least: int, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while sum(acked) < at_least and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


@pytest.mark.processes
async def test_sigterm_keeps_every_acknowledged_event(agent_dir: Path) -> None:
    async with agent_process(agent_dir) as process:
        acked: list[int] = []
        failures: list[grpc.StatusCode] = []
        async with grpc.aio.insecure_channel(process.target) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            senders = [asyncio.create_task(send_batches(stub, 50, acked, failures)) for _ in range(4)]
            await wait_for_acks(acked, 1000, 5)
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*senders), timeout=30)
        assert await process.wait() == 0, process.log()
    assert sum(acked) >= 1000
    assert failures  # every sender ended because the agent went away
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert not process.socket_path.exists()  # removed on the way out
    assert db_event_count(process.db_path) == sum(acked)
    assert db_rows(process.db_path, "PRAGMA integrity_check") == [("ok",)]
    assert "Traceback" not in process.log()


@pytest.mark.processes
async def test_sigkill_loses_no_acknowledged_event(agent_dir: Path) -> None:
    async with agent_process(agent_dir) as process:
        acked: list[int] = []
        failures: list[grpc.StatusCode] = []
        async with grpc.aio.insecure_channel(process.target) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            sender = asyncio.create_task(send_batches(stub, 100, acked, failures))
            await asyncio.sleep(0.5)
            await wait_for_acks(acked, 100, 5)
            process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(sender, timeout=30)
        assert await process.wait() == -signal.SIGKILL
    assert failures == [grpc.StatusCode.UNAVAILABLE]
    assert stat.S_ISSOCK(process.socket_path.lstat().st_mode)  # left behind by the kill
    assert db_rows(process.db_path, "PRAGMA integrity_check") == [("ok",)]
    stored = db_event_count(process.db_path)
    # Nothing acknowledged is lost, and a batch is all-or-nothing: at most the
    # one batch in flight was committed without its answer arriving.
    assert stored - sum(acked) in (0, 100), (stored, sum(acked))

    restarted = AgentProcess(
        socket_path=process.socket_path, db_path=process.db_path, log_path=agent_dir / "restart.log"
    )
    await restarted.start()  # replaces the stale socket
    try:
        async with grpc.aio.insecure_channel(restarted.target) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            status = await stub.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT)
            assert status.stored_events == stored
            response = await stub.RecordEvents(
                agent_service_pb2.RecordEventsRequest(events=[job_created()]), timeout=RPC_TIMEOUT
            )
            assert response.stored_count == 1
        assert await restarted.stop() == 0
    finally:
        restarted.kill()
    assert db_event_count(process.db_path) == stored + 1
    assert db_rows(process.db_path, "PRAGMA integrity_check") == [("ok",)]


async def test_stop_event_stops_the_in_process_server(agent_dir: Path) -> None:
    config = make_config(agent_dir)
    async with running_agent(config) as running:
        await running.record(job_created(), job_created())
    assert not config.socket_path.exists()
    assert db_event_count(config.db_path) == 2
    # The same database serves again after a restart.
    async with running_agent(config) as running:
        assert (await running.status()).stored_events == 2


# --- health and reflection ------------------------------------------------------------------------------


async def test_health_check(agent: RunningAgent) -> None:
    health = health_pb2_grpc.HealthStub(agent.channel)
    for service in ("", "printernizer.stats.v1.AgentService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    assert SERVICE_NAME == "printernizer.stats.v1.AgentService"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_agent_service(agent: RunningAgent) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(agent.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="printernizer.stats.v1.AgentService"),
    ]
    call = stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT)
    responses = [response async for response in call]
    assert len(responses) == 2
    services = {s.name for s in responses[0].list_services_response.service}
    assert services == {
        "printernizer.stats.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    agent_file = next(f for f in files if f.name == "printernizer/stats/v1/agent_service.proto")
    methods = {m.name for s in agent_file.service for m in s.method}
    assert {"RecordEvents", "PreviewReport", "ExportData", "DeleteAllData", "SetConsent"} <= methods
