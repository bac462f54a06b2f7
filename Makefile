# The two commands a newcomer needs are `make demo` and `make test`; both set
# up the virtual environment (.venv) with the pinned dependencies first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast check lint typecheck proto-check generate check-generated \
        contract-release constraints clean

# Each folder below is a distribution (its pyproject.toml); the root one is the
# whole system. All are installed editable, at the versions constraints.txt locks.
DISTRIBUTIONS := gen stats_common sdk stats_agent stats_store aggregation_server analytics_server gateway stats_demo

# Re-installs whenever the dependencies change.
$(STAMP): pyproject.toml $(DISTRIBUTIONS:%=%/pyproject.toml) constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt \
		$(DISTRIBUTIONS:%=--editable ./%) --editable '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job: start what exists on embedded defaults and show it working.
demo: setup
	$(BIN)/python -m printernizer_stats.demo

## Every check and every test (what CI runs). Three workers on two cores:
## most tests wait on real processes; a test file stays on one worker.
test: check
	$(BIN)/python -m pytest -n 3 --dist loadfile

## The quick loop while working: the tests that need nothing but this Python
## process (no real processes, PostgreSQL, Chromium or podman) and are not
## slow (the long generated runs); no checks. Under a minute on two cores.
test-fast: setup
	$(BIN)/python -m pytest -n 2 -m "not processes and not postgres and not browser and not containers and not slow"

check: setup lint typecheck proto-check check-generated

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

# buf lint (STANDARD), formatting, and breaking changes against the last
# released image of the contract (proto/released.binpb).
proto-check: setup
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code
	$(BIN)/buf breaking --against proto/released.binpb

## Regenerate gen/ (Python code and type stubs) from proto/.
generate: setup
	$(BIN)/python tools/generate_country_proto.py
	$(BIN)/buf format -w
	$(BIN)/python tools/generate_code.py
	$(BIN)/python tools/generate_plotly_css.py

## Fail when gen/, country.proto or the pages' plotly.css differ from what their sources produce.
check-generated: setup
	$(BIN)/python tools/generate_country_proto.py --check
	$(BIN)/python tools/generate_code.py --check
	$(BIN)/python tools/generate_plotly_css.py --check

## At a release: make the current contract the baseline for `buf breaking`.
contract-release: setup
	$(BIN)/buf build --exclude-source-info -o proto/released.binpb

## Refresh constraints.txt (the full pinned dependency set) from .venv.
constraints: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^printernizer[-_]stats' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
