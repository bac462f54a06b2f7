"""The CI checks on the contract fail when they should.

`make check` runs buf lint/format/breaking and the generated-code drift check
on the real tree; these tests run the same commands on a copy of the tree
broken on purpose, and assert that they fail for the right reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, tool

V1 = Path("proto/printernizer/stats/v1")


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """A copy of what the contract checks read: buf.yaml, proto/, gen/, tools/."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "buf.yaml", copy)
    for folder in ("proto", "gen", "tools"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit(copy: Path, file: str, old: str, new: str) -> None:
    path = copy / V1 / file
    text = path.read_text()
    assert old in text, f"edit anchor not found in {file}: {old!r}"
    path.write_text(text.replace(old, new, 1))


def run(copy: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=copy, capture_output=True, text=True)


def breaking(copy: Path) -> subprocess.CompletedProcess[str]:
    return run(copy, tool("buf"), "breaking", "--against", "proto/released.binpb")


def test_unchanged_contract_is_not_breaking(tree_copy: Path) -> None:
    result = breaking(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_removing_an_enum_value_is_a_breaking_change(tree_copy: Path) -> None:
    edit(tree_copy, "common.proto", "  PRINTER_TYPE_PRUSA = 3;\n", "")
    result = breaking(tree_copy)
    assert result.returncode != 0
    assert 'enum value "3" on enum "PrinterType" was deleted' in result.stdout


def test_renumbering_a_report_field_is_a_breaking_change(tree_copy: Path) -> None:
    edit(
        tree_copy,
        "aggregated_stats.proto",
        "uint32 jobs_failed = 3 [(since_schema_version) = 1];",
        "uint32 jobs_failed = 30 [(since_schema_version) = 1];",
    )
    result = breaking(tree_copy)
    assert result.returncode != 0
    assert "jobs_failed" in result.stdout + result.stderr


def test_adding_a_field_is_not_breaking(tree_copy: Path) -> None:
    edit(
        tree_copy,
        "aggregated_stats.proto",
        "uint32 printer_disconnections = 12 [(since_schema_version) = 1];",
        "uint32 printer_disconnections = 12 [(since_schema_version) = 1];\n"
        "  // Why: a test.\n  uint32 restarts = 900 [(since_schema_version) = 3];",
    )
    result = breaking(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_rejects_an_enum_without_unspecified_zero(tree_copy: Path) -> None:
    assert run(tree_copy, tool("buf"), "lint").returncode == 0
    edit(tree_copy, "common.proto", "FEATURE_UNSPECIFIED = 0;", "FEATURE_NONE = 0;")
    result = run(tree_copy, tool("buf"), "lint")
    assert result.returncode != 0
    assert "FEATURE_NONE" in result.stdout


def test_format_check_rejects_badly_formatted_proto(tree_copy: Path) -> None:
    assert run(tree_copy, tool("buf"), "format", "-d", "--exit-code").returncode == 0
    edit(tree_copy, "common.proto", "message Version {", "message   Version{")
    result = run(tree_copy, tool("buf"), "format", "-d", "--exit-code")
    assert result.returncode != 0


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "tools/generate_code.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_generated_code_drift_is_detected(tree_copy: Path) -> None:
    edit(
        tree_copy,
        "aggregated_stats.proto",
        "uint32 printer_disconnections = 12 [(since_schema_version) = 1];",
        "uint32 printer_disconnections = 12 [(since_schema_version) = 1];\n"
        "  // Why: a test.\n  uint32 restarts = 900 [(since_schema_version) = 3];",
    )
    result = run(tree_copy, sys.executable, "tools/generate_code.py", "--check")
    assert result.returncode == 1
    assert "differs: gen/printernizer/stats/v1/aggregated_stats_pb2.py" in result.stderr


def test_country_proto_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "tools/generate_country_proto.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
