"""Serving the agent API on a Unix socket reachable only by its owner and group."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc
from printernizer_stats.common.clock import Clock, SimulatedClock, require_testing
from printernizer_stats.common.interceptors import RejectUndecodableRequests
from printernizer_stats.common.telemetry import metrics_enabled

from .agent import AgentConfig, StatsAgent, remembered_time
from .delivery import Courier, Uplink
from .servicer import AgentServicer
from .storage import AgentStore

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
# Bounds that protect the agent: a full batch of 1,000 events is ~30 KB.
MAX_MESSAGE_BYTES = 1 << 20
SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class SocketError(RuntimeError):
    """The socket cannot be served at the configured path (clear message for people)."""


@dataclass(frozen=True)
class AgentServerConfig:
    socket_path: Path
    db_path: Path
    agent: AgentConfig
    # The aggregation server (HOST:PORT) and the CA bundle that verifies it
    # (None: the system's CAs). Without a server nothing is ever sent.
    server_address: str | None = None
    ca_file: str | None = None
    # For tests of the real process only (STATS_TESTING=1): kill the agent
    # with SIGKILL right after it commits this many batches, before it answers.
    kill_after_commits: int = 0


def prepare_socket_path(path: Path) -> None:
    """Make sure `path` can be bound, privately.

    The socket's directory is created with mode 0750 (owner and group only), or,
    if it exists, must not be reachable by other users: permissions are right
    before the socket exists, never fixed after binding. A socket left behind by
    a killed agent is replaced; one that still answers belongs to a running
    agent and is left alone.
    """
    path = path.absolute()
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise SocketError(
            f"socket path is {len(os.fsencode(path))} bytes long; Unix sockets allow at most "
            f"{MAX_SOCKET_PATH}: choose a shorter --socket path"
        )
    directory = path.parent
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create the socket directory {directory}: {exc.strerror}") from exc
    mode = directory.stat().st_mode
    if mode & stat.S_IRWXO:
        raise SocketError(
            f"the socket directory {directory} is accessible by other users (mode {stat.filemode(mode)}); "
            "use a directory only its owner and group can reach (mode 0750 or stricter)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SocketError(f"the socket directory {directory} is not writable by this user")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_answers(path):
            raise SocketError(f"another agent is already serving on {path}")
        log.info("replacing the stale socket %s", path)
        path.unlink()


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


async def _start_server(
    socket_path: Path, agent: StatsAgent, courier: Courier
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(
        interceptors=[RejectUndecodableRequests()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
        ],
    )
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent, courier), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    # The socket file itself: owner and group read/write. The umask is the
    # process's; it is changed only while the socket is created at start-up.
    old_umask = os.umask(0o117)
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        await server.start()
    finally:
        os.umask(old_umask)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer


def _killer(after_commits: int) -> Callable[[], None] | None:
    """A failpoint for tests: SIGKILL this process at the given commit (a
    committed batch whose answer is never sent, as a crash would leave it)."""
    if not after_commits:
        return None
    require_testing("killing the agent after a commit")
    commits = itertools.count(1)

    def after_commit() -> None:
        if next(commits) == after_commits:
            os.kill(os.getpid(), signal.SIGKILL)

    return after_commit


async def serve(
    config: AgentServerConfig,
    stop: asyncio.Event | None = None,
    clock: Clock | Callable[[], dt.datetime] | None = None,
) -> None:
    """Run the agent until `stop` is set (or SIGTERM/SIGINT), then stop
    gracefully: calls in progress finish, so accepted events are committed.
    `clock` is the agent's time (tests simulate weeks with it)."""
    prepare_socket_path(config.socket_path)
    socket_path = config.socket_path.absolute()
    store = await AgentStore.open(config.db_path)
    agent = StatsAgent(
        store,
        config.agent,
        clock,
        after_commit=_killer(config.kill_after_commits),
        high_water=await remembered_time(store),
    )
    if metrics_enabled():  # OpenTelemetry is imported only where metrics are exported
        from .metrics import AgentMetrics

        AgentMetrics(agent, asyncio.get_running_loop())
    # A simulated clock moves as a test says: look at it every second, not every
    # hour, and reconnect to a restarted server within a second, as its hours pass.
    simulated = isinstance(clock, SimulatedClock)
    reconnect = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000))
    uplink = (
        Uplink(config.server_address, config.ca_file, reconnect if simulated else ())
        if config.server_address
        else None
    )
    courier = Courier(agent, uplink, longest_wait=1.0 if simulated else None)
    try:
        server, health_servicer = await _start_server(socket_path, agent, courier)
    except BaseException:
        if uplink is not None:
            await uplink.close()
        await store.close()
        raise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    background = asyncio.create_task(courier.run())
    log.info("stats agent serving on unix:%s (database %s)", socket_path, config.db_path)
    try:
        await stop.wait()
    finally:
        log.info("stats agent stopping")
        await health_servicer.enter_graceful_shutdown()
        background.cancel()
        await server.stop(grace=5)
        with contextlib.suppress(asyncio.CancelledError):
            await background
        if uplink is not None:
            await uplink.close()
        with contextlib.suppress(Exception):  # a full disk, say: it was kept hourly anyway
            await agent.remember_time()
        await store.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
