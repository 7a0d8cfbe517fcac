# bandit-processor developer commands. `make help` lists them.
# Every target that needs Python creates .venv first, so a fresh clone needs no other step.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA := deploy/local-kafka/kafka.sh

.DEFAULT_GOAL := help
.PHONY: demo bench help install lint format test test-unit test-integration bench-bandits bench-policy bench-ensemble bench-join bench-loop kafka-up kafka-down kafka-status clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev extras

lint: $(STAMP) ## ruff lint + format check, mypy strict
	$(BIN)/ruff check processor tests
	$(BIN)/ruff format --check processor tests
	$(BIN)/mypy

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix processor tests
	$(BIN)/ruff format processor tests

test: lint ## lint, then every test: doctests, unit and integration (starts a real Kafka broker)
	$(BIN)/pytest --doctest-modules processor/bandits tests/unit tests/integration

test-unit: $(STAMP) ## doctests and unit tests only (no broker)
	$(BIN)/pytest --doctest-modules processor/bandits tests/unit

test-integration: $(STAMP) ## integration tests only (starts a real Kafka broker)
	$(BIN)/pytest tests/integration

bench-bandits: $(STAMP) ## per-event object API vs keyed batch API (updates/s, decisions/s)
	$(BIN)/python -m tests.perf.bench_bandits

bench-join: $(STAMP) ## reward join without Kafka: bytes per log entry, memory at 10M entries, join on vs off
	$(BIN)/python -m tests.perf.bench_join

bench-loop: $(STAMP) ## the stage's request loop at 10k req/s without Kafka: ms a loop and a cycle end
	$(BIN)/python -m tests.perf.bench_loop

bench-policy: $(STAMP) ## bidding policy on the simulated market: speed, profit per request, emergency share, pacing
	$(BIN)/python -m tests.perf.bench_policy

bench-ensemble: $(STAMP) ## ensemble learning figures, OPE interval coverage, bootstrap time (fixed seeds)
	$(BIN)/python -m tests.perf.bench_ensemble

bench: ## full benchmark on the real broker: table + bench-results/bench.json (uses .venv-bench)
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -q --upgrade pip
	.venv-bench/bin/pip install -q -e '.[bench]'
	.venv-bench/bin/python -m tests.perf.bench

demo: $(STAMP) ## start a local broker, the stage and the simulator; live summary; stop cleanly
	$(BIN)/python -m processor.cli.demo

kafka-up: ## start the local single-node Kafka (KRaft) from Maven jars; prints the bootstrap address
	$(KAFKA) start

kafka-down: ## stop the local Kafka broker
	$(KAFKA) stop

kafka-status: ## is the local Kafka broker running? (exit 3 if not)
	$(KAFKA) status

clean: ## remove caches and build output (keeps .venv and the broker jar cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
