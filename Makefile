# modelbus — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export UV_PYTHON_DOWNLOADS := never
export UV_SYSTEM_CERTS := 1
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
PYTEST_ARGS ?=

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(TOOLS)/bin/uv:
	@echo "uv not found: installing it into $(TOOLS)/ from PyPI"
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

install: $(if $(shell command -v uv 2>/dev/null),,$(TOOLS)/bin/uv) ## Install everything (uv workspace, all services)
	$(UV) sync --all-packages --frozen

up: install ## Start the embedded stack (broker, MongoDB-wire, store, 6 services) and run the demo loop
	$(UV) run --frozen python -m modelbus_embedded up

up-only: install ## Start the embedded stack without the demo
	$(UV) run --frozen python -m modelbus_embedded up --no-demo

down: ## Stop everything `make up` started
	@if [ -x "$(UV)" ] || command -v uv >/dev/null; then $(UV) run --frozen python -m modelbus_embedded down; fi

status: ## Show the embedded services' readiness
	$(UV) run --frozen python -m modelbus_embedded status

browser: ## Install Debian's Chromium for the report test, if missing (root with apt-get only)
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (headless report test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	fi

system-libs: ## Install the system libraries wheels expect (libgomp1 for LightGBM), if missing (root with apt-get only)
	@if ! ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1' && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing libgomp1 (LightGBM)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libgomp1 >/dev/null; \
	fi

test: install system-libs browser ## Run the whole test suite (starts and stops the servers it needs)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: install system-libs ## Only the fast tests (no servers)
	$(UV) run --frozen pytest -m "not integration and not e2e" $(PYTEST_ARGS)

fuzz: install ## Schemathesis over every service's OpenAPI on the real stack, auth on, 200 examples per operation (MODELBUS_FUZZ_EXAMPLES, MODELBUS_FUZZ_SEED)
	MODELBUS_FUZZ_EXAMPLES=$${MODELBUS_FUZZ_EXAMPLES:-200} $(UV) run --frozen pytest -o timeout=3600 -s tests/e2e/test_fuzz_openapi.py $(PYTEST_ARGS)

chaos: install system-libs ## The fault suite, full form: SIGKILL of each service, broker SIGSTOP and MongoDB down 30 s, store failing uploads, poison on every topic (build/chaos/results.{json,md})
	MODELBUS_CHAOS=full $(UV) run --frozen pytest -o timeout=3600 -s tests/chaos $(PYTEST_ARGS)

lint: install ## ruff check + format check
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

schemas: install ## Regenerate JSON Schemas and AsyncAPI documents
	$(UV) run --frozen python -m modelbus_contracts.schema contracts/schemas
	$(UV) run --frozen python -m modelbus_platform.asyncapi infra/asyncapi

bench-mlserver-venv: install ## MLServer 1.7 and its scikit-learn runtime in a throwaway venv (build/mlserver-venv), the serving benches' baseline
	@[ -x build/mlserver-venv/bin/python ] && build/mlserver-venv/bin/python -c 'import mlserver_sklearn' 2>/dev/null || { $(UV) venv -q --allow-existing build/mlserver-venv && $(UV) pip install -q --python build/mlserver-venv 'mlserver==1.7.*' 'mlserver-sklearn==1.7.*' numpy; } || echo "MLServer 1.7 not installed: the benches skip it"

bench: install bench-mlserver-venv ## Serving benchmarks: online v2 infer, stream, hot swap (build/bench/{online,stream,hotswap}.json)
	@command -v wrk >/dev/null || echo "wrk not installed (apt-get install -y wrk): using the asyncio load generator"
	$(UV) run --frozen python benchmarks/online_bench.py
	$(UV) run --frozen python benchmarks/stream_bench.py
	$(UV) run --frozen python benchmarks/hotswap_bench.py

bench-sklearn: install bench-mlserver-venv ## A scikit-learn model online: the scorer through ONNX Runtime vs MLServer's scikit-learn runtime (build/bench/sklearn_online.json)
	$(UV) run --frozen python benchmarks/sklearn_online_bench.py $(BENCH_ARGS)

bench-loop: install ## The loop on drift scenarios through the public interfaces, default settings, vs never/nightly retrain (build/bench/loop.json; BENCH_ARGS=--quick)
	$(UV) run --frozen python benchmarks/loop_bench.py $(BENCH_ARGS)

bench-batch: install ## Batch scoring rows/s: the batch service's job path vs a bare pyarrow+numpy script (build/bench/batch.json)
	$(UV) run --frozen python benchmarks/batch_bench.py $(BENCH_ARGS)

bench-auth: install ## What authentication costs the infer route: off vs an API key vs a JWT, in process and over HTTP (the scorer process, wrk) (build/bench/auth_overhead.json)
	$(UV) run --frozen python benchmarks/auth_overhead_bench.py $(BENCH_ARGS)

bench-monitor: install ## Drift detection (modelbus vs River defaults) and monitor throughput (build/bench/{drift,monitor}.json)
	$(UV) run --frozen python benchmarks/drift_bench.py $(BENCH_ARGS)
	$(UV) run --frozen python benchmarks/monitor_bench.py

bench-scaling: install ## Scaling curve: one scorer's online load curve, 1 vs 2 scorers (stream group, online) (build/bench/scaling.json; BENCH_ARGS=--quick)
	$(UV) run --frozen python benchmarks/scaling_bench.py $(BENCH_ARGS)

clean: down ## Remove the embedded stack's data folder
	rm -rf .data

.PHONY: help install system-libs browser up up-only down status test test-unit fuzz chaos lint schemas bench bench-mlserver-venv bench-sklearn bench-loop bench-batch bench-monitor bench-auth bench-scaling clean
