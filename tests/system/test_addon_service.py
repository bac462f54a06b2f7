"""The Home Assistant add-on's service for the agent (deploy/home-assistant/):
its s6-overlay layout and options checked statically, and its `run` and
`finish` scripts run under Debian's s6 (s6-svscan, not s6-overlay's /init),
with a stand-in for bashio and with-contenv and the add-on's paths moved into
a temporary directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from printernizer.stats.v1 import agent_service_pb2, agent_service_pb2_grpc, country_pb2
from printernizer_stats.sdk import PrinterType, StatsClient

from ..agent_harness import short_private_dir
from ..conftest import ROOT

ADDON = ROOT / "deploy" / "home-assistant"
S6_RC = ADDON / "rootfs" / "etc" / "s6-overlay" / "s6-rc.d"
SERVICE = S6_RC / "printernizer-stats-agent"
BASHIO_FUNCTIONS = {
    "bashio::config",
    "bashio::config.true",
    "bashio::config.has_value",
    "bashio::log.info",
    "bashio::log.warning",
    "bashio::log.error",
}

# --- static ----------------------------------------------------------------------------


def test_the_service_has_the_s6_rc_layout() -> None:
    assert (SERVICE / "type").read_text().strip() == "longrun"
    assert (SERVICE / "notification-fd").read_text().strip() == "3"  # readiness
    assert (SERVICE / "dependencies.d" / "base").is_file()
    assert (S6_RC / "user" / "contents.d" / "printernizer-stats-agent").is_file()  # enabled
    for script in ("run", "finish"):
        path = SERVICE / script
        assert path.stat().st_mode & 0o111 == 0o111, f"{script} is not executable"
        assert path.read_text().startswith("#!/command/with-contenv bashio\n"), script
        subprocess.run(["bash", "-n", str(path)], check=True)  # bash syntax
        used = set(re.findall(r"bashio::[\w.]+", path.read_text()))
        assert used <= BASHIO_FUNCTIONS, used - BASHIO_FUNCTIONS


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_scripts_pass_shellcheck() -> None:
    subprocess.run(["shellcheck", str(SERVICE / "run"), str(SERVICE / "finish")], check=True)


def test_the_run_script_reads_the_options_the_addon_declares() -> None:
    config = yaml.safe_load((ADDON / "config.additions.yaml").read_text())
    assert set(config["options"]) <= set(config["schema"])
    run = (SERVICE / "run").read_text()
    read = set(re.findall(r"bashio::config(?:\.\w+)? '(\w+)'", run))
    # Printernizer's own options it takes: log_level and timezone.
    assert read == set(config["schema"]) | {"log_level", "timezone"}
    assert "exec s6-setuidgid" in run
    assert "-m printernizer_stats.agent" in run


# --- run under s6 ------------------------------------------------------------------------

BASHIO_STANDIN = r"""
# bashio stand-in: options from $BASHIO_OPTIONS (a JSON file, as /data/options.json)
bashio::config() {
    python3 -c 'import json, sys
value = json.load(open(sys.argv[1])).get(sys.argv[2])
if isinstance(value, bool):
    value = str(value).lower()
print(sys.argv[3] if value is None or value == "" else value)' \
        "${BASHIO_OPTIONS}" "$1" "${2:-}"
}
bashio::config.true() { [ "$(bashio::config "$1" false)" = "true" ]; }
bashio::config.has_value() { [ -n "$(bashio::config "$1")" ]; }
bashio::log.info() { echo "[INFO] $*" >&2; }
bashio::log.warning() { echo "[WARNING] $*" >&2; }
bashio::log.error() { echo "[ERROR] $*" >&2; }
"""


def have_s6() -> str:
    missing = [
        tool
        for tool in ("s6-svscan", "s6-svscanctl", "s6-svc", "s6-svstat", "s6-svwait", "s6-setuidgid")
        if shutil.which(tool) is None
    ]
    if missing:
        return f"Debian's s6 is not installed (apt-get install s6): {missing}"
    if os.geteuid() != 0:
        return "the run script changes users: needs root"
    return ""


class Addon:
    """The service in a scan directory of its own, the add-on's paths under `base`."""

    def __init__(self, base: Path, options: dict[str, Any], *, python: str = sys.executable) -> None:
        self.base = base
        self.run_dir = base / "run"
        self.data_dir = base / "data"
        self.socket = self.run_dir / "agent.sock"
        self.scan = base / "scan"
        self.service = self.scan / "printernizer-stats-agent"
        self.log = base / "log"
        self.service.mkdir(parents=True)
        (base / "options.json").write_text(json.dumps(options))
        (base / "bashio").write_text(BASHIO_STANDIN)
        for script in ("run", "finish"):
            text = (SERVICE / script).read_text()
            text = text.replace(
                "#!/command/with-contenv bashio\n",
                f"#!/bin/bash\nset -o errexit -o nounset -o pipefail\nsource {base / 'bashio'}\n",
            )
            text = (
                text.replace("/run/printernizer-stats", str(self.run_dir))
                .replace("/data/printernizer-stats", str(self.data_dir))
                .replace("/opt/printernizer-stats/bin/python", python)
                .replace("AGENT_USER=printernizer-stats", "AGENT_USER=root")
                .replace("READY_WITHIN=20", "READY_WITHIN=5")
            )
            (self.service / script).write_text(text)
            (self.service / script).chmod(0o755)
        shutil.copy(SERVICE / "notification-fd", self.service / "notification-fd")
        self.svscan: subprocess.Popen[bytes] | None = None

    def start(self, **environment: str) -> None:
        env = {
            "PATH": os.environ["PATH"],
            "BASHIO_OPTIONS": str(self.base / "options.json"),
            "PYTHONPATH": os.pathsep.join(sys.path),
            **environment,
        }
        with self.log.open("ab") as log:
            self.svscan = subprocess.Popen(
                ["s6-svscan", str(self.scan)], env=env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + 10
        while not (self.service / "supervise" / "status").exists():
            assert time.monotonic() < deadline, "s6-svscan did not start the supervisor"
            time.sleep(0.05)

    def status(self) -> str:
        return subprocess.run(
            ["s6-svstat", str(self.service)], capture_output=True, text=True, check=False
        ).stdout.strip()

    def pid(self) -> int | None:
        """The service's process while it is up."""
        found = re.search(r"^up \(pid (\d+)", self.status())
        return int(found[1]) if found else None

    def wait_ready(self, timeout: float = 30) -> float:
        started = time.monotonic()
        subprocess.run(
            ["s6-svwait", "-U", "-t", str(int(timeout * 1000)), str(self.service)],
            check=True,
            timeout=timeout + 5,
        )
        return time.monotonic() - started

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        subprocess.run(["s6-svc", "-wD", "-d", "-T", "15000", str(self.service)], check=False, timeout=20)
        subprocess.run(["s6-svscanctl", "-t", str(self.scan)], check=False, timeout=10)
        if self.svscan is not None:
            try:
                self.svscan.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.svscan.pid, signal.SIGKILL)
                self.svscan.wait()


@pytest.fixture
def addon_base() -> Iterator[Path]:
    reason = have_s6()
    if reason:
        pytest.skip(reason)
    base = short_private_dir()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def agent_status(socket: Path) -> tuple[agent_service_pb2.GetStatusResponse, str]:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        status = stub.GetStatus(agent_service_pb2.GetStatusRequest(), timeout=10)
        local = stub.GetLocalStats(agent_service_pb2.GetLocalStatsRequest(), timeout=10)
    return status, country_pb2.Country.Name(local.installation.country)


def record(socket: Path, count: int) -> None:
    client = StatsClient(socket)
    try:
        for _ in range(count):
            client.job_created(PrinterType.BAMBU_LAB)
        client.flush(10)
    finally:
        client.close()


def stored(socket: Path, expected: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = agent_status(socket)[0].stored_events
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_the_agent_service_runs_supervised_and_ready(addon_base: Path) -> None:
    addon = Addon(addon_base, {"log_level": "warning", "timezone": ""})
    try:
        addon.start(TZ="America/New_York")  # the Supervisor's TZ
        addon.wait_ready()
        assert "ready" in addon.status()
        assert addon.run_dir.stat().st_mode & 0o777 == 0o750
        assert addon.data_dir.stat().st_mode & 0o777 == 0o700
        assert (addon.data_dir / "agent.db").exists()
        record(addon.socket, 2)
        assert stored(addon.socket, 2) == 2
        status, country = agent_status(addon.socket)
        assert country == "COUNTRY_US"
        assert agent_service_pb2.ConsentState.Name(status.consent.effective) == "CONSENT_STATE_LOCAL_ONLY"
        # kill -9: s6 restarts it (about a second), the stale socket is replaced, events flow again.
        first = addon.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        while addon.pid() in (None, first):
            assert time.monotonic() - killed < 10, addon.status()
            time.sleep(0.05)
        addon.wait_ready()
        assert time.monotonic() - killed < 10  # s6 waits a second; the agent starts in about one
        record(addon.socket, 1)
        assert stored(addon.socket, 3) == 3
        assert "killed by signal 9" in addon.logs()
    finally:
        addon.stop()
    assert "killed by signal 15" not in addon.logs()  # a stop is not a crash
    assert not addon.socket.exists()  # removed on SIGTERM


def test_printernizers_timezone_option_and_the_off_switch(addon_base: Path) -> None:
    addon = Addon(addon_base, {"timezone": "Europe/Vienna", "usage_statistics_off": True})
    try:
        addon.start(TZ="America/New_York")
        addon.wait_ready()
        record(addon.socket, 2)
        time.sleep(1.5)
        status, country = agent_status(addon.socket)
        assert country == "COUNTRY_AT"
        assert status.stored_events == 0
        assert agent_service_pb2.ConsentState.Name(status.consent.effective) == "CONSENT_STATE_DISABLED"
        assert agent_service_pb2.ConsentReason.Name(status.consent.reason) == "CONSENT_REASON_AGENT_SWITCH"
    finally:
        addon.stop()


def test_an_agent_that_keeps_failing_is_given_up_without_holding_printernizer_back(addon_base: Path) -> None:
    addon = Addon(addon_base, {}, python="/bin/false")
    try:
        addon.start()
        # After the bound the service idles, up and ready: Printernizer starts.
        assert addon.wait_ready(30) < 20
        assert "not restarting it" in addon.logs()
        time.sleep(2.5)
        assert addon.status().startswith("up"), addon.status()
        assert addon.logs().count("not restarting it") == 1
        assert addon.logs().count("exited with code 1") == 6
    finally:
        addon.stop()
