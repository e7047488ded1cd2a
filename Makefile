# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run run-tls test lint unit integration e2e fuzz bench-overhead bench-routing bench-scrape bench-collector bench-soak bench-flowcontrol bench-slo bench-autoscale bench-routing-precise bench-routing-pickers bench-compare bench-scaleout clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start 3 simulated vLLM servers, the picker and Envoy on loopback; show routing; Ctrl-C stops.
run: $(STAMP)
	$(BIN)/epp stack

## The same stack with TLS between Envoy and the picker (self-signed certificate).
run-tls: $(STAMP)
	$(BIN)/epp stack --tls

## Lint, type-check and run the whole test suite (unit, integration, end-to-end with real Envoy).
## The coverage floor lives here, not in pytest's addopts, so running one test file stays quiet.
COVERAGE_FLOOR ?= 92
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

## Property-based fuzz: the ext_proc stream with EPP_FUZZ_CASES cases (100,000 by default; prints the
## count), then configs and pool files with hypothesis's "fuzz" profile (20,000 cases each).
EPP_FUZZ_CASES ?= 100000
fuzz: $(STAMP)
	EPP_FUZZ_CASES=$(EPP_FUZZ_CASES) $(BIN)/pytest tests/integration/test_extproc_fuzz.py -q -s -p no:cacheprovider \
		--timeout 0
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/unit/test_config_fuzz.py -q -p no:cacheprovider --timeout 0

bench-overhead: $(STAMP)
	$(BIN)/python -m benchmarks.overhead

bench-routing: $(STAMP)
	$(BIN)/python -m benchmarks.routing

bench-scrape: $(STAMP)
	$(BIN)/python -m benchmarks.scrape

## The collector at scale: 100 endpoints serving ~50 KB pages at 50 ms and 200 ms; picker CPU, scrape age.
bench-collector: $(STAMP)
	$(BIN)/python -m benchmarks.collector --profile

## Soak: 100,000 mixed requests through real Envoy; RSS, per-key structure sizes, errors by kind.
bench-soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak

## Autoscaler: a load ramp on simulators; recommended replicas vs load (PNG), rise time, flaps (~50 s).
bench-autoscale: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.autoscale.run

## SLO-aware routing vs the default profile: attainment, goodput, no-SLO p90 TTFT, predictor error and cost.
bench-slo: $(STAMP)
	$(BIN)/python -m benchmarks.slo.run

## Precise vs approximate prefix routing: eviction-heavy and shared-prefix workloads (~3.5 min).
bench-routing-precise: $(STAMP)
	$(BIN)/python -m benchmarks.routing --workloads eviction-heavy,shared-prefix --routers default,precise,precise-wholeprompt --seconds 15

## Precise vs approximate with two pickers behind one Envoy (each approximate index sees half the decisions; ~4 min).
bench-routing-pickers: $(STAMP)
	$(BIN)/python -m benchmarks.routing --workloads eviction-heavy --rate 24 --seconds 45 --routers default,precise,default-2pickers,precise-2pickers
	$(BIN)/python -m benchmarks.routing --workloads shared-prefix --rate 16 --seconds 15 --routers default,precise,default-2pickers,precise-2pickers

# 1 picker, 2 pickers each on its own, 2 pickers sharing state through Redis; then the gateway's capacity with 1 and 2 workers.
bench-scaleout: $(STAMP)
	$(BIN)/python -m benchmarks.scaleout

## Side by side with sglang-router and vllm-router (installed into their own venv): TTFT, throughput, CPU per
## router (~11 min; QUICK=1 for ~2.5 min, SWEEP=1 adds a rate sweep). Results in benchmarks/results/compare/.
bench-compare: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.compare.setup
	$(BIN)/python -m benchmarks.compare $(if $(QUICK),--quick) $(if $(SWEEP),--sweep)

## Flow control under 2x overload: high-priority p90 TTFT, low-priority shedding, per-workload fairness, queue CPU per request.
bench-flowcontrol: $(STAMP)
	$(BIN)/python -m benchmarks.flowcontrol.run

clean:
	rm -rf $(VENV) .stack .pytest_cache .ruff_cache *.egg-info
