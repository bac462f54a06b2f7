"""Shared test fixtures: paths of the repository and of the tools it installs,
and the in-memory telemetry every in-process service reports to."""

from __future__ import annotations

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
from printernizer_stats.common.otel import PrivateSpanExporter, private_views

ROOT = Path(__file__).resolve().parent.parent


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
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(PrivateSpanExporter(SPANS)))
trace.set_tracer_provider(_tracer_provider)
METRICS = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS], views=private_views()))


@pytest.fixture(autouse=True)
def _forget_spans() -> None:
    """Each test starts with no spans kept: the in-memory store never grows past one test."""
    SPANS.clear()
