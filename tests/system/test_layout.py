"""The tests' own layout (tests/conftest.py): test modules sit in the folder of the part they test,
none imports from another (what several share lives in a conftest.py or a harness module), and every
fixture that marks its users' kind is still there to mark them. And the product's names: no two of
its classes share one, and no module sits beside its own plural."""

from __future__ import annotations

import ast
import collections
import importlib
import inspect
import pkgutil
from pathlib import Path

import printernizer_stats
import pytest
from _pytest.fixtures import FixtureFunctionDefinition  # pytest's fixture type (pytest is pinned)

from ..conftest import FIXTURE_MARKERS, ROOT

TESTS = ROOT / "tests"
# The project's packages (printernizer_stats.<part>), the contract (gen/, proto/) and the whole system.
PARTS = {module.name for module in pkgutil.iter_modules(printernizer_stats.__path__)} | {"contract", "system"}
# Python files of the tests (tests/fixtures holds data: other projects' files).
SOURCES = sorted(path for path in TESTS.rglob("*.py") if "fixtures" not in path.relative_to(TESTS).parts)


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports (absolute names; a `from package import name` counts as
    package.name too, as it may name a module)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found += [target, *(f"{target}.{alias.name}" for alias in node.names)]
    return found


def test_the_layout_checks_see_the_tests() -> None:
    assert {"aggregation", "agent", "sdk", "store"} <= PARTS
    assert len([path for path in SOURCES if path.name.startswith("test_")]) > 50


def test_every_test_module_sits_in_the_folder_of_a_part() -> None:
    for path in SOURCES:
        if path.name.startswith("test_"):
            where, shown = path.parent.relative_to(TESTS), path.relative_to(ROOT)
            assert len(where.parts) == 1, f"{shown}: tests go in tests/<part>/"
            assert where.name in PARTS, f"{shown}: {where.name} is no part of {sorted(PARTS)}"
            # A package: test modules of the same name in two folders stay two modules.
            assert (path.parent / "__init__.py").exists(), f"{shown}: its folder lacks __init__.py"


def test_no_test_module_imports_from_another() -> None:
    for path in SOURCES:
        for name in imported_modules(path):
            if name.split(".")[0] == "tests":
                assert not any(part.startswith("test_") for part in name.split(".")), (
                    f"{path.relative_to(ROOT)} imports {name}: move what it needs to a conftest.py"
                )


@pytest.mark.parametrize("key", sorted(FIXTURE_MARKERS))
def test_every_fixture_marker_names_a_fixture(key: str) -> None:
    """tests/conftest.py marks the users of these fixtures by module and name: a fixture that moved
    or was renamed would leave its users unmarked (and in `make test-fast`)."""
    module_name, _, name = key.partition(":")
    found = getattr(importlib.import_module(module_name), name, None)
    assert isinstance(found, FixtureFunctionDefinition), f"{key} is no fixture"
    function = inspect.unwrap(found)
    assert f"{function.__module__}:{function.__name__}" == key, f"{key} is defined elsewhere"


# The product's modules (every package of printernizer_stats), but for the SDK's enums generated from
# the contract: they repeat the contract's names on purpose.
PRODUCT_SOURCES = sorted(
    path
    for folder in printernizer_stats.__path__
    for path in Path(folder).rglob("*.py")
    if "_generated" not in path.parts
)
# Reviewed: the SDK's public `Unavailable` (what a call returns when it failed) is host-facing API,
# kept; the servers' `Unavailable` is a refusal inside the services.
SHARED_CLASS_NAMES = {"Unavailable"}


def test_no_two_classes_share_a_name() -> None:
    defined: dict[str, list[str]] = collections.defaultdict(list)
    for path in PRODUCT_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                defined[node.name].append(str(path.relative_to(ROOT)))
    assert len(defined) > 100  # the walk saw the product
    twice = {name: where for name, where in defined.items() if len(where) > 1}
    assert set(twice) <= SHARED_CLASS_NAMES, {n: w for n, w in twice.items() if n not in SHARED_CLASS_NAMES}


def test_no_module_sits_beside_its_plural() -> None:
    for path in PRODUCT_SOURCES:
        plural = path.with_name(f"{path.stem}s.py")
        assert not plural.exists(), f"{path.relative_to(ROOT)} and {plural.name} mean different things"
