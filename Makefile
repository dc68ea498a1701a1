# tidemark: `make demo` runs the end-to-end demo, `make test` the whole test suite.
# Both install what is missing first (redis-server, openssl, curl, jq, nginx, postgresql,
# prometheus for promtool, chromium for the dashboard test, and for the deployment checks
# kubectl, npm and python3-venv, from Debian's packages).

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)
APT_PACKAGES := redis-server openssl curl jq nginx postgresql prometheus chromium kubernetes-client npm python3-venv

.PHONY: all deps build release test check-deploy unit soak chaos demo demo-postgres bench fmt lint clean

all: build

## deps: install missing system packages (Debian/Ubuntu) and check for cargo
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

build: deps
	$(CARGO) build

release: deps
	$(CARGO) build --release

## test: formatting, lints, the deployment checks, unit and integration tests (real redis-server processes)
test: deps check-deploy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --lib --bins --tests

## check-deploy: render k8s/ with kustomize and validate it offline (schemas, policy, KEDA), lint the Dockerfile
check-deploy: deps
	bash .ci/check-deploy

## soak: the randomized convergence test over more seeds than `make test` runs (200)
SEEDS ?= 1000
## (FROM=n starts at seed n, to cut a long soak into slices)
FROM ?= 1
soak: deps
	TIDEMARK_SEEDS=$(SEEDS) TIDEMARK_SEED_FROM=$(FROM) $(CARGO) test --test it convergence -- --nocapture

## chaos: the chaos test with DURATION seconds of faults (default 600; `make test` runs 30) and seed SEED
DURATION ?= 600
SEED ?= 1
chaos: deps
	TIDEMARK_CHAOS_SECS=$(DURATION) TIDEMARK_CHAOS_SEED=$(SEED) $(CARGO) test --test it chaos:: -- --nocapture

## demo: 500-page Confluence space, full sync, 6 changes, incremental sync
demo: release
	bash deploy/demo.sh

## demo-postgres: the same demo into a PostgreSQL server it starts itself, ending with a full-text query
demo-postgres: release
	TIDEMARK_DEMO_SINK=postgres bash deploy/demo.sh

## bench: full vs incremental sync and the queue against a bare Redis ceiling
bench: release
	$(CARGO) bench --bench sync
	$(CARGO) bench --bench scale

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
