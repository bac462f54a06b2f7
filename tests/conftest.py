"""Shared test fixtures: paths of the repository and of the tools it installs,
and the in-memory telemetry every in-process service reports to.

The tests mirror the tree: tests/<part>/ holds the tests of printernizer_stats.<part> (contract/ the
contract's, system/ the whole system's), and tests/<part>/conftest.py is that folder's harness:
its fixtures, helpers and constants. Harnesses several folders share sit here beside this file
(agent_harness.py, system_harness.py, databases.py, ...).

Across folders, one rule: a test module (or harness) that needs another folder's harness imports it
by name, fixtures included (`from ..aggregation.conftest import RunningServer, server`; a fixture
imported into a module is that module's fixture). None is registered globally through
pytest_plugins: a test's fixtures stay visible in its own imports, and two folders' same-named
fixtures cannot shadow each other. No test module imports from another test module
(tests/system/test_layout.py checks that, and where test modules sit)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from printernizer_stats.common.otel import OwnRandomIdGenerator, PrivateSpanExporter, private_views

ROOT = Path(__file__).resolve().parent.parent


def _temp_root() -> str:
    """/dev/shm where it is a RAM filesystem with room and $TMPDIR does not say otherwise, else /tmp."""
    ram = "/dev/shm"
    if "TMPDIR" in os.environ or not os.path.isdir(ram) or not os.access(ram, os.W_OK | os.X_OK):
        return "/tmp"
    room = os.statvfs(ram)
    return ram if room.f_bavail * room.f_frsize >= 2 * 1024**3 else "/tmp"


# Where the tests keep their files: every SQLite commit waits for its fsync, about 12 ms on a virtual
# disk and nothing in RAM. pytest's tmp_path is made there (pytest keeps its last three runs' only),
# and so are the directories that tests remove when they end. Short enough for Unix socket paths.
TEMP_ROOT = _temp_root()
if TEMP_ROOT != "/tmp":
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", TEMP_ROOT)


def tool(name: str) -> str:
    """A command installed in the project's environment (next to this Python)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make setup`")
    return found


@pytest.fixture
def repo_root() -> Path:
    return ROOT


# Every span and metric the services make in this test process is kept in
# memory (through the same privacy filter as a real exporter), for the
# telemetry tests to inspect. Set once: OpenTelemetry's providers are global.
SPANS = InMemorySpanExporter()
_tracer_provider = TracerProvider(id_generator=OwnRandomIdGenerator())  # as the services make theirs
_tracer_provider.add_span_processor(SimpleSpanProcessor(PrivateSpanExporter(SPANS)))
trace.set_tracer_provider(_tracer_provider)
METRICS = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS], views=private_views()))


@pytest.fixture(autouse=True)
def _forget_spans() -> None:
    """Each test starts with no spans kept: the in-memory store never grows past one test."""
    SPANS.clear()


# --- kinds of tests (the markers are registered in pyproject.toml) ----------------------------------------
# `make test-fast` deselects what needs more than this Python process (real processes, the PostgreSQL
# server, Chromium, podman) and the slow generated runs. Where the kind follows from a fixture it is
# marked here; a test that starts processes itself carries its marker (the test's or its module's).

# Fixtures, by the module and name of their function, whose every user is of these kinds.
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "tests.sdk.test_local:agent": ("processes",),  # the agent as a process (agent_harness.agent_process)
    "tests.sdk.test_privacy_router:agent": ("processes",),  # the same
    "tests.sdk.test_managed:managed": ("processes",),  # the agent, started by the SDK
    "tests.system.test_addon_service:addon_base": ("processes",),  # its tests run the add-on under s6
    "tests.gateway.conftest:browser": ("browser", "processes"),  # Chromium, through Playwright
    "tests.system.test_readiness:postgres_url": ("postgres",),  # a fresh database on the server
    "tests.system.test_containers:images": ("containers",),  # podman builds them
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kinds: set[str] = set()
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            kinds.add("postgres")  # databases.database_url's PostgreSQL half
        fixture_info = getattr(item, "_fixtureinfo", None)
        if fixture_info is not None:
            for name in item.fixturenames:  # type: ignore[attr-defined]
                definitions = fixture_info.name2fixturedefs.get(name)
                if definitions:
                    func = definitions[-1].func  # the definition this test gets
                    kinds.update(FIXTURE_MARKERS.get(f"{func.__module__}:{func.__name__}", ()))
        for kind in sorted(kinds - {mark.name for mark in item.iter_markers()}):
            item.add_marker(kind)
