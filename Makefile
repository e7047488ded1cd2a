# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint unit integration e2e bench-overhead bench-routing bench-scrape clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start 3 simulated vLLM servers, the picker and Envoy on loopback; show routing; Ctrl-C stops.
run: $(STAMP)
	$(BIN)/epp stack

## Lint, type-check and run the whole test suite (unit, integration, end-to-end with real Envoy).
## The coverage floor lives here, not in pytest's addopts, so running one test file stays quiet.
COVERAGE_FLOOR ?= 88
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest --cov=epp --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

bench-overhead: $(STAMP)
	$(BIN)/python -m benchmarks.overhead

bench-routing: $(STAMP)
	$(BIN)/python -m benchmarks.routing

bench-scrape: $(STAMP)
	$(BIN)/python -m benchmarks.scrape

clean:
	rm -rf $(VENV) .stack .pytest_cache .ruff_cache *.egg-info
