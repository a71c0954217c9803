# ipfleet's developer entry points. Both README commands start here.
#   make demo   set up, then boot the example stack's twin and run StarCluster's demo on it
#   make test   set up, then run the whole test suite
# Setup needs root on a Debian/Ubuntu machine for the system packages.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# What the tests call besides Python: the real cloud-init schema checker,
# shellcheck, iproute2 (`ip`: namespaces, and the node agent), and what the twin
# boots nodes with (debootstrap, systemd-nspawn from systemd-container), the
# twin's security group (nftables) and the laptop's ssh client.
APT_PACKAGES := cloud-init shellcheck iproute2 python3-venv debootstrap systemd-container nftables openssh-client

.PHONY: setup system-packages venv demo test lock clean

setup: system-packages venv

system-packages:
	@missing=""; \
	for tool in cloud-init shellcheck ip debootstrap systemd-nspawn nft ssh; do \
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

demo: setup
	$(BIN)/ipfleet twin demo example

test: setup
	$(BIN)/python -m pytest -q

# Refresh requirements.lock after changing dependencies in pyproject.toml.
lock: venv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip compile pyproject.toml --extra test --universal \
	  --python-version 3.11 --no-header --no-annotate -q -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
