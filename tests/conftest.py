"""Shared test fixtures: paths of the repository and of the tools it installs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

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
