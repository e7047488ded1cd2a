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

## Lint and run the whole test suite (unit, integration, end-to-end with real Envoy).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

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
