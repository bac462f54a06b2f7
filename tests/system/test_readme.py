"""The README's configuration table matches every service's flags and environment variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from printernizer_stats.agent.__main__ import build_parser as agent_parser
from printernizer_stats.aggregation.__main__ import build_parser as aggregation_parser
from printernizer_stats.analytics.__main__ import build_parser as analytics_parser
from printernizer_stats.common.cli import EnvArgumentParser
from printernizer_stats.gateway.__main__ import build_parser as gateway_parser

from ..conftest import ROOT


def readme_rows() -> dict[str, str]:
    """Service command -> the text of its rows in the configuration table."""
    rows: dict[str, str] = {}
    service = ""
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"\| `python -m ([\w.]+)` \|", line)
        if match:
            service = match.group(1)
        elif not line.startswith("| |"):
            service = "" if not line.startswith("|") else service
        if service and line.startswith("|"):
            rows[service] = rows.get(service, "") + line + "\n"
    return rows


@pytest.mark.parametrize(
    ("service", "parser"),
    [
        ("printernizer_stats.agent", agent_parser),
        ("printernizer_stats.aggregation", aggregation_parser),
        ("printernizer_stats.analytics", analytics_parser),
        ("printernizer_stats.gateway", gateway_parser),
    ],
)
def test_every_option_is_in_the_readme_table(service: str, parser: object) -> None:
    built: EnvArgumentParser = parser()  # type: ignore[operator]
    documented = readme_rows()[service]
    for flag, environment_variable in built.environment_variables.items():
        assert f"`{flag}`" in documented, f"{service} {flag} is missing from the README table"
        assert environment_variable in documented, f"{service} {environment_variable} is missing"
    flags_in_readme = set(re.findall(r"`(--[a-z-]+)`", documented))
    assert flags_in_readme == set(built.environment_variables), "the README lists options the service lacks"


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_test_a_document_names_exists(document: Path) -> None:
    """Where a document says which test checks a promise, that test is there."""
    text = document.read_text()
    every_test = "".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    for path in re.findall(r"`(tests/[\w/]+\.py)", text):
        assert (ROOT / path).exists(), f"{document.name} names {path}, which does not exist"
    for name in re.findall(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`", text):
        assert f"def {name}(" in every_test, f"{document.name} names {name}, which is no test"
