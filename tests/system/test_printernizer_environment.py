"""Printernizer's own pinned environment takes the SDK and the agent untouched.

A virtual environment made from Printernizer v2.42.0's requirements.txt
(tests/fixtures/printernizer-v2.42.0, with where it came from) is kept in the
user's cache, keyed by that file, with its `pip freeze` and `pip check` as it
was on its own; only the first run pays for it (about a minute). Each run
installs the SDK and the agent afresh from their folders, and checks that:

- pip changed none of Printernizer's packages (no upgrade, no downgrade);
- `pip check` is as clean as before;
- the SDK imports without betterproto2 (which Printernizer's dateutil pin
  excludes), the agent runs from that environment, and a host records events
  through the SDK that the agent stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ..agent_harness import db_event_count, short_private_dir
from ..conftest import ROOT
from .conftest import clean_copies

# Making the environment from Printernizer's pins takes minutes on a cold cache (pip timeouts below).
pytestmark = [pytest.mark.processes, pytest.mark.timeout(1500)]

FIXTURE = ROOT / "tests" / "fixtures" / "printernizer-v2.42.0" / "requirements.txt"
OURS = ("gen", "stats_common", "sdk", "stats_agent")  # what a host installs: the SDK and the agent
OUR_NAMES = ("printernizer-stats-contract", "printernizer-stats-common", "printernizer-stats-sdk")
OUR_NAMES += ("printernizer-stats-agent",)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "printernizer-stats" / "tests"


def run(*command: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout)


def printernizer_environment() -> Path:
    """Printernizer's pinned environment, made once per version of its requirements."""
    key = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"printernizer-v2.42.0-{key}"
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    made = run(base, "-m", "venv", "--clear", venv)
    assert made.returncode == 0, made.stderr
    installed = run(python, "-m", "pip", "install", "--quiet", "-r", FIXTURE, timeout=1200)
    if installed.returncode != 0:
        pytest.fail(f"Printernizer's own requirements did not install:\n{installed.stderr[-3000:]}")
    # Printernizer's environment as it is on its own: what every run compares with.
    (venv / "baseline.freeze").write_text(json.dumps(frozen(python)))
    (venv / "baseline.check").write_text(json.dumps(pip_check(python)))
    (venv / ".complete").touch()
    return python


def frozen(python: Path) -> dict[str, str]:
    listed = run(python, "-m", "pip", "list", "--format=freeze", "--exclude-editable")
    assert listed.returncode == 0, listed.stderr
    return dict(line.lower().split("==", 1) for line in listed.stdout.splitlines() if "==" in line)


def pip_check(python: Path) -> list[str]:
    checked = run(python, "-m", "pip", "check")
    lines = checked.stdout.strip().splitlines()
    return [] if checked.returncode == 0 else lines


@pytest.fixture(scope="module")
def printernizer_with_ours() -> tuple[Path, dict[str, str], dict[str, str], list[str], list[str]]:
    python = printernizer_environment()
    venv = python.parent.parent
    before = json.loads((venv / "baseline.freeze").read_text())
    check_before = json.loads((venv / "baseline.check").read_text())
    run(python, "-m", "pip", "uninstall", "--quiet", "--yes", *OUR_NAMES)  # the code as it is now
    started = time.monotonic()
    installed = run(python, "-m", "pip", "install", "--quiet", *clean_copies(OURS))
    assert installed.returncode == 0, installed.stderr[-3000:]
    print(f"\nthe SDK and the agent installed beside Printernizer in {time.monotonic() - started:.1f} s")
    return python, before, frozen(python), check_before, pip_check(python)


def test_printernizers_packages_stay_as_they_are(
    printernizer_with_ours: tuple[Path, dict[str, str], dict[str, str], list[str], list[str]],
) -> None:
    _, before, after, check_before, check_after = printernizer_with_ours
    changed = {
        name: (version, after.get(name)) for name, version in before.items() if after.get(name) != version
    }
    assert changed == {}, f"installing the SDK and the agent changed Printernizer's packages: {changed}"
    assert check_after == check_before
    added = sorted(set(after) - set(before))
    assert not {"betterproto2", "sqlalchemy", "opentelemetry-sdk", "psycopg-binary", "plotly"} & set(added), (
        added
    )
    print(f"added: {', '.join(added)}")


def test_the_sdk_imports_without_betterproto2_and_records_into_the_agent(
    printernizer_with_ours: tuple[Path, dict[str, str], dict[str, str], list[str], list[str]],
) -> None:
    python = printernizer_with_ours[0]
    base = short_private_dir()
    socket_path, db_path = base / "run" / "agent.sock", base / "data" / "agent.db"
    host = textwrap.dedent(
        f"""
        import sys, time
        from printernizer_stats.sdk import PrinterType, StatsClient, DeploymentMode
        assert "betterproto2" not in sys.modules and "pydantic" not in sys.modules
        client = StatsClient({str(socket_path)!r})
        client.app_started("2.42.0", DeploymentMode.DOCKER)
        for _ in range(5):
            client.job_created(PrinterType.BAMBU_LAB)
        assert client.flush(20), client.stats()
        print(client.stats())
        client.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": "", "DO_NOT_TRACK": ""}
    agent = subprocess.Popen(
        [python, "-m", "printernizer_stats.agent", "--socket", socket_path, "--db", db_path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert agent.poll() is None, agent.stdout.read().decode() if agent.stdout else ""
            assert time.monotonic() < deadline, "the agent did not serve within 30 s"
            time.sleep(0.05)
        recorded = subprocess.run(
            [python, "-c", host], env=env, capture_output=True, text=True, timeout=60, cwd=base
        )
        assert recorded.returncode == 0, recorded.stderr
    finally:
        agent.terminate()
        agent.wait(10)
    assert db_event_count(db_path) == 6
