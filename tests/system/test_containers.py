"""The container recipes beside Printernizer (deploy/printernizer/), built and run
with podman: a Printernizer stand-in (tests/fixtures/printernizer-standin) with
the agent added by deploy/printernizer/Containerfile (managed mode), and the
agent alone from deploy/printernizer/agent.Containerfile as a second container.

Skipped where podman is missing or cannot run containers, or the base image
is absent (STATS_TEST_BASE_IMAGE, default localhost/debian-python:bookworm, made
by the container-setup tool; any Debian image with python3, pip and venv will
do). The images are built offline (--network none) from wheels made here with
`pip wheel`, kept between runs in a cache keyed by the dependency pins, so a
warm run rebuilds nothing that did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from printernizer_stats.agent.__main__ import build_parser as agent_parser

from ..conftest import ROOT
from .conftest import clean_copies

BASE_IMAGE = os.environ.get("STATS_TEST_BASE_IMAGE", "localhost/debian-python:bookworm")
STANDIN_IMAGE = "localhost/printernizer-standin-test:latest"
HOST_IMAGE = "localhost/printernizer-with-stats-test:latest"
AGENT_IMAGE = "localhost/printernizer-stats-agent-test:latest"
PROJECT_FOLDERS = ("gen", "stats_common", "stats_agent", "sdk")
# What the recipes install from those folders: no extras (the agent imports
# OpenTelemetry only to export, the SDK betterproto2 only for its dataclasses).
INSTALLED = {"gen": "", "stats_common": "", "stats_agent": "", "sdk": ""}
MANAGED_SOCKET = "/app/data/printernizer-stats/run/agent.sock"
SIDECAR_SOCKET = "/run/printernizer-stats/agent.sock"

pytestmark = pytest.mark.timeout(600)


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def podman_works() -> str:
    """Why containers cannot run here ("" when they can)."""
    if shutil.which("podman") is None:
        return "podman is not installed (CI: run the container-setup tool first)"
    try:
        if podman("info", check=False, timeout=60).returncode != 0:
            return "podman does not work here"
        if podman("image", "exists", BASE_IMAGE, check=False, timeout=60).returncode != 0:
            return f"the base image {BASE_IMAGE} is missing (STATS_TEST_BASE_IMAGE)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman does not answer: {exc}"
    return ""


# --- the build -------------------------------------------------------------------------


def wheelhouse() -> Path:
    """Wheels of everything the images install from outside this repository,
    made once per set of pins (constraints.txt and the folders' pyproject.toml)."""
    pins = hashlib.sha256()
    for path in [ROOT / "constraints.txt", *(ROOT / folder / "pyproject.toml" for folder in PROJECT_FOLDERS)]:
        pins.update(path.read_bytes())
    pins.update(sys.version.encode() + repr(INSTALLED).encode())
    cache = Path(os.environ.get("STATS_TEST_WHEELHOUSE_CACHE", Path(tempfile.gettempdir())))
    target = cache / f"printernizer-stats-wheelhouse-{pins.hexdigest()[:16]}"
    if (target / "complete").exists():
        return target
    building = Path(tempfile.mkdtemp(prefix="wheelhouse-", dir=cache))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--constraint",
            str(ROOT / "constraints.txt"),
            "--wheel-dir",
            str(building),
            *(f"{copy}{INSTALLED[copy.name]}" for copy in clean_copies(tuple(INSTALLED))),
        ],
        check=True,
        timeout=600,
    )
    # The build backend, for pip's isolated builds of this repository's folders.
    subprocess.run(
        [*pip, "download", "--no-deps", "--dest", str(building), "setuptools>=77"], check=True, timeout=300
    )
    for own in building.glob("printernizer_stats*.whl"):
        own.unlink()  # built from the folders in the image: changes there are picked up
    (building / "complete").write_text("")
    if not (target / "complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # an unfinished one
    try:
        building.rename(target)
    except OSError:  # another test process made it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    for stale in cache.glob("printernizer-stats-wheelhouse-*"):
        if stale != target:  # for pins no longer in the repository
            shutil.rmtree(stale, ignore_errors=True)
    return target


def build_context(wheels: Path) -> Path:
    """The repository's parts the recipes copy (no caches, no virtualenv), with the wheels."""
    context = Path(tempfile.mkdtemp(prefix="pzs-context-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "_build")
    for folder in PROJECT_FOLDERS:
        shutil.copytree(ROOT / folder, context / folder, ignore=ignore)
    shutil.copy2(ROOT / "constraints.txt", context / "constraints.txt")
    shutil.copytree(ROOT / "deploy" / "printernizer", context / "deploy" / "printernizer", ignore=ignore)
    house = context / "deploy" / "printernizer" / "wheelhouse"
    for wheel in wheels.glob("*.whl"):
        shutil.copy2(wheel, house / wheel.name)
    return context


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """Build the three images (offline); the seconds each build took."""
    reason = podman_works()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    started = time.monotonic()
    wheels = wheelhouse()
    timings["wheels"] = time.monotonic() - started
    context = build_context(wheels)
    offline = ["--network", "none", "--build-arg", "PIP_INSTALL_ARGS=--no-index --find-links /wheelhouse"]
    try:
        for name, arguments in (
            (
                STANDIN_IMAGE,
                [
                    "--build-arg",
                    f"BASE_IMAGE={BASE_IMAGE}",
                    str(ROOT / "tests/fixtures/printernizer-standin"),
                ],
            ),
            (
                HOST_IMAGE,
                [
                    *offline,
                    "--build-arg",
                    f"PRINTERNIZER_IMAGE={STANDIN_IMAGE}",
                    "-f",
                    str(context / "deploy/printernizer/Containerfile"),
                    str(context),
                ],
            ),
            (
                AGENT_IMAGE,
                [
                    *offline,
                    "--build-arg",
                    f"BASE_IMAGE={BASE_IMAGE}",
                    "-f",
                    str(context / "deploy/printernizer/agent.Containerfile"),
                    str(context),
                ],
            ),
        ):
            started = time.monotonic()
            podman("build", "--network", "none", "-q", "-t", name, *arguments, timeout=900)
            timings[name] = time.monotonic() - started
    finally:
        shutil.rmtree(context, ignore_errors=True)
    print("build timings (s):", {k: round(v, 1) for k, v in timings.items()})
    return timings


# --- running ------------------------------------------------------------------------


class Pod:
    """Containers and volumes of one test, removed afterwards."""

    def __init__(self) -> None:
        self.prefix = f"pzs-{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def volume(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        podman("volume", "create", full)
        self.volumes.append(full)
        return full

    def run(self, name: str, *arguments: str) -> str:
        full = f"{self.prefix}-{name}"
        podman("run", "-d", "--name", full, "--network", "none", *arguments)
        self.containers.append(full)
        return full

    def remove(self) -> None:
        for container in self.containers:
            podman("rm", "-f", "-t", "0", container, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)


@pytest.fixture
def pod(images: dict[str, float]) -> Iterator[Pod]:
    made = Pod()
    try:
        yield made
    finally:
        made.remove()


def wait_for_log(container: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = podman("logs", container, check=False)
        logs = result.stdout + result.stderr
        if text in logs:
            return logs
        running = podman("inspect", "-f", "{{.State.Running}}", container, check=False).stdout.strip()
        assert running == "true", f"{container} ended:\n{logs}"
        assert time.monotonic() < deadline, f"no {text!r} from {container} within {timeout} s:\n{logs}"
        time.sleep(0.1)


def agent_view(container: str, socket: str, *user: str) -> dict[str, Any]:
    """status.py in `container` (as its user, or `--user UID:GID`): the agent's status."""
    result = podman("exec", *user, container, "python3", "/app/status.py", socket, check=False)
    view: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return view


def settled_view(container: str, socket: str, stored: int, timeout: float = 10) -> dict[str, Any]:
    """The agent's status once it holds `stored` events (the SDK sends within a
    second; its flush() may return before the first batch is out)."""
    deadline = time.monotonic() + timeout
    while True:
        view = agent_view(container, socket)
        if view.get("stored_events") == stored or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def recorded(logs: str) -> dict[str, Any]:
    line = next(line for line in logs.splitlines() if line.startswith('{"recorded"'))
    stats: dict[str, Any] = json.loads(line)
    return stats


# --- the tests ----------------------------------------------------------------------------


def test_managed_mode_in_printernizers_image(pod: Pod) -> None:
    data = pod.volume("data")
    host = pod.run("host", "-e", "TIMEZONE=Europe/Vienna", "-v", f"{data}:/app/data", HOST_IMAGE)
    wait_for_log(host, '{"recorded"')
    view = settled_view(host, MANAGED_SOCKET, 4)
    # Printernizer's time-zone setting decides the country; nothing is shared by default.
    assert view == {
        "stored_events": 4,
        "consent": "CONSENT_STATE_LOCAL_ONLY",
        "reason": "CONSENT_REASON_DEFAULT",
        "country": "COUNTRY_AT",
    }
    # The agent runs as Printernizer's user, in its data volume, on a private socket.
    listing = podman(
        "exec", host, "stat", "-c", "%n %a %u:%g", "/app/data/printernizer-stats",
        "/app/data/printernizer-stats/run", MANAGED_SOCKET, "/app/data/printernizer-stats/agent.db",
    ).stdout.split("\n")  # fmt: skip
    assert listing[:4] == [
        "/app/data/printernizer-stats 700 1000:1000",
        "/app/data/printernizer-stats/run 750 1000:1000",
        f"{MANAGED_SOCKET} 660 1000:1000",
        "/app/data/printernizer-stats/agent.db 600 1000:1000",
    ]
    processes = podman("exec", host, "ps", "-o", "user=,args=", "-e", check=False).stdout
    if processes:  # (procps may be missing from a base image)
        assert "-m printernizer_stats.agent" in processes
    # Another user cannot reach it.
    refused = agent_view(host, MANAGED_SOCKET, "--user", "2000:2000")
    assert refused["error"] == "UNAVAILABLE", refused
    # Stopping Printernizer (SIGTERM) stops the agent cleanly with it.
    podman("stop", "-t", "20", host)
    exited = podman("inspect", "-f", "{{.State.ExitCode}}", host).stdout.strip()
    assert exited == "0", podman("logs", host).stderr
    assert "stats agent stopping" in podman("logs", host).stderr
    # An upgrade: a new container on the same data keeps the events and the identity.
    again = pod.run("again", "-e", "TIMEZONE=Europe/Vienna", "-v", f"{data}:/app/data", HOST_IMAGE)
    wait_for_log(again, '{"recorded"')
    assert settled_view(again, MANAGED_SOCKET, 8)["stored_events"] == 8


def test_managed_mode_starts_nothing_under_do_not_track(pod: Pod) -> None:
    host = pod.run("host", "-e", "DO_NOT_TRACK=1", HOST_IMAGE)
    logs = wait_for_log(host, '{"recorded"')
    assert "not starting the stats agent: DO_NOT_TRACK" in logs
    assert recorded(logs)["sent"] == 0
    assert podman("exec", host, "test", "-e", "/app/data/printernizer-stats", check=False).returncode == 1


def sidecar(pod: Pod, *environment: str) -> tuple[str, str]:
    """The agent as a second container (as compose.yaml runs it); its socket volume."""
    run, data = pod.volume("run"), pod.volume("data")
    agent = pod.run(
        "agent", "--user", "1000:1000", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", *environment,
        "-v", f"{run}:/run/printernizer-stats", "-v", f"{data}:/app/data", AGENT_IMAGE,
    )  # fmt: skip
    wait_for_log(agent, "stats agent serving")
    return agent, run


def test_the_agent_as_a_second_container(pod: Pod) -> None:
    agent, run = sidecar(pod, "-e", "TZ=America/New_York")
    host = pod.run(
        "host", "-e", f"STATS_AGENT_SOCKET={SIDECAR_SOCKET}", "-v", f"{run}:/run/printernizer-stats:ro",
        HOST_IMAGE,
    )  # fmt: skip
    logs = wait_for_log(host, '{"recorded"')
    assert "not starting" not in logs  # no agent of its own
    assert "printernizer_stats.agent" not in logs
    view = settled_view(host, SIDECAR_SOCKET, 4)
    assert view["stored_events"] == 4, view
    assert view["country"] == "COUNTRY_US", view
    mode = podman("exec", agent, "stat", "-c", "%a %u:%g", "/run/printernizer-stats", SIDECAR_SOCKET).stdout
    assert mode.split("\n")[:2] == ["750 1000:1000", "660 1000:1000"]
    # A user of another uid and gid is refused; Printernizer's group is enough.
    other = ["--rm", "--network", "none", "-v", f"{run}:/run/printernizer-stats:ro", HOST_IMAGE]
    refused = podman(
        "run", "--user", "2000:2000", *other, "python3", "/app/status.py", SIDECAR_SOCKET, check=False
    )
    assert json.loads(refused.stdout)["error"] == "UNAVAILABLE", refused.stdout + refused.stderr
    group = podman("run", "--user", "2000:1000", *other, "python3", "/app/status.py", SIDECAR_SOCKET)
    assert json.loads(group.stdout)["stored_events"] == 4
    # podman stop: SIGTERM, a clean stop that removes the socket.
    podman("stop", "-t", "20", agent)
    assert podman("inspect", "-f", "{{.State.ExitCode}}", agent).stdout.strip() == "0"
    assert "stats agent stopping" in podman("logs", agent).stderr


def test_the_second_container_stores_nothing_under_do_not_track(pod: Pod) -> None:
    _, run = sidecar(pod, "-e", "DO_NOT_TRACK=1")
    host = pod.run(
        "host", "-e", f"STATS_AGENT_SOCKET={SIDECAR_SOCKET}", "-v", f"{run}:/run/printernizer-stats:ro",
        HOST_IMAGE,
    )  # fmt: skip
    wait_for_log(host, '{"recorded"')
    time.sleep(1.5)  # what the SDK would send has been sent
    view = agent_view(host, SIDECAR_SOCKET)
    assert view["stored_events"] == 0
    assert view["consent"] == "CONSENT_STATE_DISABLED"
    assert view["reason"] == "CONSENT_REASON_DO_NOT_TRACK"


# --- the compose file (no podman needed) ----------------------------------------------------


def test_the_compose_file_shares_the_socket_and_printernizers_data(monkeypatch: pytest.MonkeyPatch) -> None:
    compose_dir = ROOT / "deploy" / "printernizer"
    services = yaml.safe_load((compose_dir / "compose.yaml").read_text())["services"]
    host, agent = services["printernizer"], services["stats-agent"]
    for name in agent_parser().environment_variables.values():
        monkeypatch.delenv(name, raising=False)
    args = agent_parser().parse_args(agent["command"])
    socket, database = Path(args.socket), Path(args.db)
    assert host["environment"]["STATS_AGENT_SOCKET"] == str(socket)
    mounts = {
        side: {target: (source, rest) for source, target, *rest in (v.split(":") for v in service["volumes"])}
        for side, service in (("host", host), ("agent", agent))
    }
    # One socket volume: the agent writes it, Printernizer only connects (read-only).
    assert mounts["agent"][str(socket.parent)] == (mounts["host"][str(socket.parent)][0], [])
    assert mounts["host"][str(socket.parent)][1] == ["ro"]
    # The database in Printernizer's data volume, at the path Printernizer has it.
    data_mount = next(t for t in mounts["agent"] if database.is_relative_to(t) and t != str(socket.parent))
    assert mounts["agent"][data_mount][0] == mounts["host"]["/app/data"][0]
    assert data_mount == "/app/data"
    # Printernizer's user (appuser 1000:1000) owns the socket's directory.
    assert agent["user"] == "1000:1000"
    assert (agent["build"]["args"]["UID"], agent["build"]["args"]["GID"]) == ("1000", "1000")
    assert (compose_dir / agent["build"]["context"] / agent["build"]["dockerfile"]).is_file()
    # One time zone and one DO_NOT_TRACK for both.
    for variable in ("TZ", "TIMEZONE", "DO_NOT_TRACK"):
        assert host["environment"][variable] == agent["environment"][variable], variable
    assert agent["environment"]["TZ"] == "${TIMEZONE:-Europe/Berlin}"
    check = agent["healthcheck"]["test"]
    assert check[:4] == ["CMD", "python", "-m", "printernizer_stats.common.health"]
    assert check[4] == f"unix:{socket}"
