"""The README's main command works."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_demo_runs_the_agent_and_everything_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stats_demo", "--days", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Everything worked." in out
    assert json.loads(out.strip().splitlines()[-1])["ok"] is True
    assert "printernizer.stats.v1.IngestService" in out
    # The preview JSON is printed between its heading and the next section.
    start = out.index("{", out.index("== 4. Opting in"))
    end = out.index("== 5. Export")
    report = json.loads(out[start:end])
    assert report["installation"]["country"] == "COUNTRY_DE"
    assert report["usage"]["jobsCreated"] == 1
    # The exception's message (an IP address) never reaches the report.
    assert "192.168" not in out[start:end]
