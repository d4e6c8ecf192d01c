# tegrid: two commands do everything on a fresh machine.
#   make demo   - set up, then run the main job (a community day through every real component)
#   make test   - set up, then run the whole test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
NODE_BIN := $(abspath node_modules/.bin)
export PATH := $(BIN):$(NODE_BIN):$(PATH)
export SOLCX_BINARY_PATH ?= $(abspath .solcx)
PYTEST := $(BIN)/pytest
# Python suites run without brownie's pytest plugin (it would launch a chain for every run);
# the contract suite runs through `brownie test`, which enables it.
PYTEST_PLAIN := $(PYTEST) -p no:pytest-brownie

STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed
STAMP_SOL := build/.compiled
CONTRACT_SOURCES := $(shell find contracts -name '*.sol' 2>/dev/null)


.PHONY: brownie-network console-network help setup prereqs test test-contracts test-python test-ganache test-stateful-long demo lint lock clean fuzz-api console \
	bench bench-grid bench-chain bench-api bench-oracle bench-e2e bench-clearing bench-flex

help:
	@echo "make setup | test | demo | lint | test-ganache | test-stateful-long | fuzz-api | bench-<grid|chain|api|oracle|e2e|clearing> | lock | clean"

prereqs:
	@command -v $(PYTHON) >/dev/null || { echo "missing: $(PYTHON) - install Python 3.11 (e.g. pyenv install 3.11, or apt-get install python3.11 python3.11-venv)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { echo "missing: Python 3.11 - $(PYTHON) is $$($(PYTHON) --version); set PYTHON=/path/to/python3.11"; exit 1; }
	@command -v node >/dev/null || { echo "missing: node - install Node.js 20 (apt-get install nodejs, or nodesource)"; exit 1; }
	@command -v npm >/dev/null || { echo "missing: npm - install npm (apt-get install npm)"; exit 1; }

$(STAMP_PY): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip -c constraints.txt 2>/dev/null || true
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Link the npm tools into the venv so an activated venv (and brownie) finds anvil, cast, ganache, and
# let `source .venv/bin/activate` export the compiler folder for `brownie compile/console/test`.
$(VENV)/bin/anvil: $(STAMP_PY) $(STAMP_NPM)
	@for tool in anvil cast ganache ganache-cli; do ln -sf ../../node_modules/.bin/$$tool $(VENV)/bin/$$tool; done
	@grep -q SOLCX_BINARY_PATH $(VENV)/bin/activate || \
		echo 'export SOLCX_BINARY_PATH="$(abspath .solcx)"' >> $(VENV)/bin/activate

$(STAMP_SOL): $(STAMP_PY) $(STAMP_NPM) $(CONTRACT_SOURCES) brownie-config.yaml
	$(BIN)/python -m backend.chain.compiler
	$(BIN)/brownie compile
	@mkdir -p build && touch $@

# The contract suite runs on a brownie network of its own (Anvil on port 8599, shanghai, 30M gas), so
# it never attaches to a chain someone left on 8545 (brownie's `development`).
BROWNIE_NETWORK := tegrid-anvil
BROWNIE_NETWORK_SETTINGS := cmd=anvil host=http://127.0.0.1 port=8599 accounts=10 evm_version=shanghai gas_limit=30000000 base_fee=0

brownie-network: $(STAMP_PY)
	@$(BIN)/brownie networks list 2>/dev/null | grep -q '$(BROWNIE_NETWORK)' || \
		$(BIN)/brownie networks add Development $(BROWNIE_NETWORK) $(BROWNIE_NETWORK_SETTINGS) >/dev/null

setup: prereqs $(STAMP_PY) $(STAMP_NPM) $(VENV)/bin/anvil $(STAMP_SOL) brownie-network
	@$(BIN)/python -m backend.chain.compiler >/dev/null

test: setup test-contracts test-python

# `brownie console` on the running chain (TEGRID_RPC_URL, default port 8545): the network
# `tegrid-local` is (re)registered for that host and port - brownie attaches to a chain answering
# there instead of launching one - then `from scripts.console import *` gives the deployed contracts.
TEGRID_RPC_URL ?= http://127.0.0.1:8545
console-network: $(STAMP_PY)
	@$(BIN)/brownie networks delete tegrid-local >/dev/null 2>&1 || true
	@hostport=$$(echo '$(TEGRID_RPC_URL)' | sed -E 's#^(https?://[^:/]+):([0-9]+).*#\1 \2#'); \
		$(BIN)/brownie networks add Development tegrid-local cmd=anvil host=$${hostport% *} \
		port=$${hostport#* } >/dev/null

console: setup console-network
	$(BIN)/brownie console --network tegrid-local

# Each run registers a network on a free port of its own, so two runs on one machine never share a chain.
BROWNIE_RUN_NETWORK = port=$$($(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	net=tegrid-anvil-$$port; \
	$(BIN)/brownie networks add Development $$net $(subst port=8599,port=$$port,$(BROWNIE_NETWORK_SETTINGS)) >/dev/null || exit 1; \
	trap '$(BIN)/brownie networks delete '$$net' >/dev/null 2>&1' EXIT

test-contracts: setup
	@$(BROWNIE_RUN_NETWORK); $(BIN)/brownie test tests/contracts --network $$net

test-python: setup
	$(PYTEST_PLAIN) tests --ignore=tests/contracts

test-ganache: setup
	$(BIN)/brownie test tests/contracts --network ganache-cli

test-stateful-long: setup
	@$(BROWNIE_RUN_NETWORK); TEGRID_LONG_STATEFUL=1 $(BIN)/brownie test tests/contracts -k stateful_ledger_long --network $$net

# API fuzz: schemathesis in a venv of its own (it does not co-install with brownie) against a real
# `tegrid serve --dev`; fails on any 5xx. FUZZ_EXAMPLES: generated requests per operation at most.
SCHEMATHESIS := $(abspath .schemathesis)/bin/schemathesis
FUZZ_EXAMPLES ?= 100
$(SCHEMATHESIS):
	$(PYTHON) -m venv .schemathesis
	.schemathesis/bin/pip install --quiet schemathesis==4.32.5

fuzz-api: setup $(SCHEMATHESIS)
	bash tests/fuzz/run_api_fuzz.sh $(SCHEMATHESIS) $(FUZZ_EXAMPLES)

demo: setup
	$(BIN)/tegrid demo

lint: setup
	$(BIN)/ruff check backend grid bench scripts tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: bench-grid bench-chain

bench-grid: setup
	$(BIN)/tegrid bench grid --json
bench-chain: setup
	$(BIN)/tegrid bench chain --json
bench-api: setup
	$(BIN)/tegrid bench api --json
bench-oracle: setup
	$(BIN)/tegrid bench oracle --json
bench-e2e: setup
	$(BIN)/tegrid bench e2e --json
bench-clearing: setup
	$(BIN)/tegrid bench clearing --json
bench-flex: setup
	$(BIN)/tegrid bench flex --json

# Re-resolve the Python lock (constraints.txt) from pyproject.toml.
lock: prereqs
	rm -rf /tmp/tegrid-lock && $(PYTHON) -m venv /tmp/tegrid-lock
	/tmp/tegrid-lock/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	/tmp/tegrid-lock/bin/pip freeze --exclude-editable > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) node_modules build .solcx .env .tegrid .schemathesis
