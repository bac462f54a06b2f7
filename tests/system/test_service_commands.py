"""`python -m printernizer_stats.analytics` and `python -m printernizer_stats.gateway` as real processes, the
way the README starts them: they serve, stop cleanly on SIGTERM, and refuse
unusable settings with one clear line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from printernizer_stats.common.health import is_serving
from printernizer_stats.demo.services import free_port

from ..conftest import ROOT

pytestmark = pytest.mark.processes


def start(tmp_path: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(ready: object, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "did not start in time"
        time.sleep(0.2)


def stop(process: subprocess.Popen[str], exit_codes: tuple[int, ...] = (0,)) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode in exit_codes, output
    assert "Traceback" not in output
    return output


def test_analytics_server_and_gateway_serve_and_stop(tmp_path: Path) -> None:
    analytics_port, gateway_port = free_port(), free_port()
    analytics = start(tmp_path, "printernizer_stats.analytics", "--listen", f"127.0.0.1:{analytics_port}")
    gateway = None
    try:
        ca = tmp_path / "printernizer-stats" / "tls" / "ca.crt"
        credentials = lambda: grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())  # noqa: E731
        wait_for(
            lambda: ca.exists() and is_serving(f"localhost:{analytics_port}", credentials=credentials()),
            analytics,
        )
        gateway = start(
            tmp_path,
            "printernizer_stats.gateway",
            "--listen",
            f"127.0.0.1:{gateway_port}",
            "--analytics",
            f"localhost:{analytics_port}",
            "--agent-socket",
            "",
        )
        url = f"http://127.0.0.1:{gateway_port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, gateway)
        token = (tmp_path / "printernizer-stats" / "admin-token").read_text().strip()
        overview = httpx.get(f"{url}/api/v1/stats/overview", headers={"Authorization": f"Bearer {token}"})
        assert overview.status_code == 200, overview.text
        assert overview.json()["minGroupSize"] == 5
        assert httpx.get(f"{url}/api/v1/stats/overview").status_code == 401
        assert httpx.get(f"{url}/api/v1/usage-stats/local").status_code == 404  # --agent-socket "": off

        # The health command containers and scripts use.
        def health(*options: str) -> subprocess.CompletedProcess[str]:
            command = [
                sys.executable,
                "-m",
                "printernizer_stats.common.health",
                f"localhost:{analytics_port}",
                *options,
            ]
            return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

        assert (health("--ca-file", str(ca)).returncode, health("--ca-file", str(ca)).stdout) == (
            0,
            "SERVING\n",
        )
        assert health("--ca-file", str(ca), "--server-name", "analytics").returncode == 1  # not its name
        assert health().returncode == 1  # TLS only
    finally:
        if gateway is not None:
            # uvicorn shuts down gracefully, then ends by the signal it caught
            # (so a process manager sees why it stopped).
            assert "Application shutdown complete" in stop(gateway, (0, -signal.SIGTERM))
        stop(analytics)


def test_unusable_settings_are_one_clear_line(tmp_path: Path) -> None:
    missing_token = subprocess.run(
        [sys.executable, "-m", "printernizer_stats.gateway", "--admin-token-file", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing_token.returncode == 1
    assert missing_token.stderr.startswith("gateway: cannot read the admin token file")
    assert "Traceback" not in missing_token.stderr
    short = tmp_path / "short-token"
    short.write_text("abc\n")
    for command in (["printernizer_stats.analytics"], ["printernizer_stats.aggregation"]):
        refused = subprocess.run(
            [sys.executable, "-m", *command, "--admin-token-file", str(short)],
            cwd=ROOT,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1, refused.stderr
        assert "must be one word of at least 32 characters" in refused.stderr
        assert "Traceback" not in refused.stderr
    no_mail_host = subprocess.run(
        [sys.executable, "-m", "printernizer_stats.analytics", "--mail-to", "a@printernizer.invalid"],
        cwd=ROOT,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_mail_host.returncode == 2
    assert "need --smtp-host" in no_mail_host.stderr
    nothing = subprocess.run(
        [sys.executable, "-m", "printernizer_stats.gateway", "--admin-token-file", "", "--agent-socket", ""],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nothing.returncode == 1
    assert (
        nothing.stderr.strip() == "gateway: nothing to serve: set --admin-token-file, --agent-socket or both"
    )
    migrations = subprocess.run(
        [
            sys.executable,
            "-m",
            "printernizer_stats.aggregation",
            "--migrations",
            "only",
            "--database-url",
            "postgresql:",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrations.returncode == 1
    assert migrations.stderr.startswith("printernizer_stats.aggregation: the migrations failed:")
    assert len(migrations.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for command, says in (
            (["printernizer_stats.analytics", "--metrics-listen", busy], "cannot serve metrics on"),  # in use
            (["printernizer_stats.aggregation", "--tls-names", "bad name"], "is not a host name"),
            (["printernizer_stats.gateway", "--metrics-listen", "nonsense"], "expected HOST:PORT"),
            (["printernizer_stats.demo", "--weeks", "61"], "--weeks"),  # more than one submission holds
            (["printernizer_stats.demo", "--gateway-port", "99999"], "expected a port"),
        ):
            refused = subprocess.run(
                [sys.executable, "-m", *command],
                cwd=ROOT,
                env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode in (1, 2), (command, refused.stderr)
            assert "Traceback" not in refused.stderr, command
            assert says in refused.stderr.strip().splitlines()[-1], (command, refused.stderr)
