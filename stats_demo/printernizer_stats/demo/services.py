"""Starting the system's services as child processes, the way an operator runs
them (`python -m SERVICE` with flags), each logging to its own file, and
stopping them with SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from printernizer_stats.common.health import is_serving

STOP_TIMEOUT = 30.0


class ServiceFailed(RuntimeError):
    """A service did not start; the message ends with the last lines of its log."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on the port (as servers do, with SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def grpc_ready(target: str, ca_file: Path | None = None) -> Callable[[], bool]:
    def ready() -> bool:
        credentials = None
        if ca_file is not None:
            if not ca_file.exists():
                return False
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        return is_serving(target, timeout=1.0, credentials=credentials)

    return ready


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:  # noqa: S310 - our own loopback URL
                return bool(answer.status == 200)
        except OSError:
            return False

    return ready


@contextlib.contextmanager
def service(
    name: str,
    module: str,
    arguments: list[str],
    logs: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[Service]:
    """`python -m module arguments`, until the block ends; waits until `ready()`.

    The child gets a session of its own, so a Ctrl-C in the terminal reaches
    only the demo, which then stops its services in order."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *arguments],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = Service(name, process, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready():
            if process.poll() is not None:
                raise ServiceFailed(f"{name} exited with code {process.returncode}:\n{running.tail()}")
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{name} was not ready within {ready_timeout:.0f} s:\n{running.tail()}")
            time.sleep(0.1)
        yield running
    finally:
        stop(running)


def stop(running: Service) -> None:
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()
