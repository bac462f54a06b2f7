"""Running `python -m printernizer_stats.agent` as a child process (demo, benchmarks, tests)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from printernizer_stats.common.health import is_serving


def agent_command(socket_path: Path, db_path: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "printernizer_stats.agent",
        "--socket",
        str(socket_path),
        "--db",
        str(db_path),
        *options,
    ]


@contextlib.contextmanager
def agent_process(
    socket_path: Path,
    db_path: Path,
    *options: str,
    env: Mapping[str, str] | None = None,
    stderr: IO[bytes] | None = None,
    ready_timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start an agent, wait until it answers health checks, stop it with SIGTERM."""
    process = subprocess.Popen(agent_command(socket_path, db_path, *options), env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + ready_timeout
        while not is_serving(f"unix:{socket_path}", timeout=1.0):
            if process.poll() is not None:
                raise RuntimeError(f"the agent exited with code {process.returncode} at start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not answer within {ready_timeout:.0f} s")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
