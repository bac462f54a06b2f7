"""The SDK's core needs only grpcio and protobuf: its enums are plain IntEnums
generated from the contract, named as betterproto2 names them; the
contract's dataclasses (betterproto2, the `dataclasses` extra) and the
Country enum are imported only when a host asks for them."""

from __future__ import annotations

import enum
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import printernizer_stats.sdk as sdk
import pytest
from printernizer_stats.common.clock import TESTING_ENVIRONMENT, SimulatedClock
from printernizer_stats.sdk import buffer as buffer_module
from printernizer_stats.sdk._generated import country, enums
from printernizer_stats.sdk._generated.printernizer.stats import v1 as dataclasses


@pytest.mark.parametrize("name", [*enums.__all__, *country.__all__])
def test_each_enum_has_betterproto2s_names_and_values(name: str) -> None:
    ours = getattr(enums, name, None) or getattr(country, name)
    theirs = getattr(dataclasses, name)
    assert issubclass(ours, enum.IntEnum)
    assert {m.name: m.value for m in ours} == {m.name: m.value for m in theirs}
    assert getattr(sdk, name) is ours


def test_every_enum_of_the_dataclasses_is_generated() -> None:
    generated = {
        name
        for name, value in vars(dataclasses).items()
        if isinstance(value, type)
        and issubclass(value, enum.Enum)
        and value.__module__ == dataclasses.__name__
    }
    assert generated == set(enums.__all__) | set(country.__all__)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_importing_the_sdk_loads_no_betterproto2_and_no_country() -> None:
    done = run_python(
        """
        import sys
        import printernizer_stats.sdk as sdk
        heavy = {"betterproto2", "pydantic", "dateutil", "printernizer_stats.sdk._generated.country"}
        print(sorted(heavy & set(sys.modules)))
        sdk.Country.DE
        assert "printernizer_stats.sdk._generated.country" in sys.modules
        event = sdk.UsageEvent(job_created=sdk.JobCreated(printer_type=sdk.PrinterType.PRUSA))
        assert "betterproto2" in sys.modules and bytes(event)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_betterproto2_the_dataclasses_name_their_extra_and_the_rest_works() -> None:
    done = run_python(
        """
        import sys
        sys.modules["betterproto2"] = None  # as if not installed
        from printernizer_stats.sdk import PrinterType, StatsClient
        client = StatsClient("/nonexistent/agent.sock")
        client.job_created(PrinterType.PRUSA)
        client.close(timeout=0.1)
        from printernizer_stats.sdk.testing import InMemoryStatsClient  # a host's tests need no extra either
        in_memory = InMemoryStatsClient()
        in_memory.job_created(PrinterType.PRUSA)
        assert [r.fields for r in in_memory.recorded()] == [{"printer_type": PrinterType.PRUSA}]
        try:
            from printernizer_stats.sdk import UsageEvent
        except ImportError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'printernizer-stats-sdk[dataclasses]'" in done.stdout


def test_a_client_made_after_a_simulated_one_keeps_the_machines_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The simulated clock (tests of the real processes) is the process's while
    asked for, and not a moment longer: a later client stamps real times."""
    clock_file = tmp_path / "clock.json"
    monkeypatch.setenv(TESTING_ENVIRONMENT, "1")
    monkeypatch.setenv("STATS_AGENT_SIMULATED_CLOCK", str(clock_file))
    SimulatedClock.write(clock_file, advance=21 * 86_400.0)
    sdk.StatsClient(tmp_path / "absent.sock").close(timeout=0.1)
    assert buffer_module.now() - time.time() > 20 * 86_400
    monkeypatch.delenv("STATS_AGENT_SIMULATED_CLOCK")
    sdk.StatsClient(tmp_path / "absent.sock").close(timeout=0.1)
    assert abs(buffer_module.now() - time.time()) < 5
