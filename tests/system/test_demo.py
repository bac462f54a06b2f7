"""The README's main command: the whole system on embedded defaults, a
simulated fleet reporting through it, and the dashboard's API showing the
fleet's numbers (short mode); Ctrl-C stops every service."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from printernizer_stats.analytics.privacy import rounded
from printernizer_stats.demo.services import free_port

from ..conftest import ROOT

pytestmark = pytest.mark.processes

SERVICES = (
    "printernizer_stats.aggregation",
    "printernizer_stats.analytics",
    "printernizer_stats.agent",
    "printernizer_stats.gateway",
    "host_app",
)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def demo_command(data_dir: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "printernizer_stats.demo",
        "--data-dir",
        str(data_dir),
        "--gateway-port",
        str(free_port()),
        "--host-app-port",
        str(free_port()),
        *options,
    ]


def test_the_short_demo_shows_the_fleet_on_the_dashboard(tmp_path: Path) -> None:
    result = subprocess.run(
        demo_command(tmp_path / "demo", "--short"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DO_NOT_TRACK": "1"},  # the demo's own agent is not the user's
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "Everything worked." in out
    shown = re.search(
        r"The dashboard shows (\d+) installations known \(the fleet: (\d+)\), "
        r"(\d+) active last week \(the fleet: (\d+)\)",
        out,
    )
    assert shown is not None, out
    # Published counts are rounded to a multiple of k = 5 (docs/privacy.md).
    assert shown[1] == shown[2] == "40"
    assert int(shown[3]) == rounded(int(shown[4]), 5)
    assert "rounded to a multiple of 5" in out
    assert "version error spike" in out
    assert re.search(r"The example host app has recorded [1-9]\d* events", out)
    assert re.search(r"Admin dashboard:  http://127\.0\.0\.1:\d+/dashboard", out)
    assert re.search(r"Privacy page:     http://127\.0\.0\.1:\d+/privacy", out)
    for name in SERVICES:  # each service logged to its own file
        assert (tmp_path / "demo" / "logs" / f"{name}.log").exists(), name


def test_ctrl_c_stops_every_service(tmp_path: Path) -> None:
    command = demo_command(tmp_path / "demo", "--installations", "12", "--weeks", "6")
    gateway_port = int(command[command.index("--gateway-port") + 1])
    demo = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    for line in demo.stdout:
        lines.append(line)
        if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
            break
    assert "Press Ctrl-C to stop.\n" in lines, "".join(lines)
    assert listening(gateway_port)
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, rest
    assert "Stopped." in rest
    assert not listening(gateway_port)  # the gateway is gone
    assert not (tmp_path / "demo" / "run" / "agent.sock").exists()  # the agent stopped cleanly
