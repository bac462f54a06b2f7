"""The README's main command works."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_demo_runs_and_its_checks_pass() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stats_demo"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "All checks passed." in out
    assert "[FAIL]" not in out
    assert "printernizer.stats.v1.IngestService" in out
    # The example report is printed as JSON between its heading and the checks.
    start = out.index("{", out.index("== An example report"))
    end = out.index("== Contract checks")
    report = json.loads(out[start:end])
    assert report["installation"]["country"] == "COUNTRY_DE"
    assert report["usage"]["jobsFailed"] == 2
