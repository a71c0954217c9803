"""Shared fixtures: offline plans of stacks, and a real moto server on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ipfleet.plan import Plan, record, run_plan
from ipfleet.settings import Settings, parse_settings
from ipfleet.stack_config import read_stack_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "stacks" / "Pulumi.example.yaml"


# A well-formed public key for stacks that need one (its private half is nowhere).
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0RDvBtSl0jJ1kdhv8xLd6hlFj8mo8hLNCHDAlUQ0A me@laptop"


def example_config(**overrides) -> dict:
    """The example stack's config, with `ipfleet:` keys overridden (None removes one)."""
    config = read_stack_file(EXAMPLE)
    for key, value in overrides.items():
        full = key if ":" in key else f"ipfleet:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return config


def plan_of(stack: str = "test", **overrides) -> Plan:
    """Run the real Pulumi program (__main__.py) offline with the example stack's config."""
    config = example_config(**overrides)
    return run_plan(ROOT, stack, config, parse_settings(stack, config))


def settings_of(stack: str = "test", **overrides) -> Settings:
    return parse_settings(stack, example_config(**overrides))


def declare(settings: Settings, body) -> Plan:
    """Run one component's construction under the mock runtime."""
    return record(settings, {}, body)


def write_stack(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`ipfleet ARGS` as a user runs it: a process of its own (without colours unless ENV says)."""
    return subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env if env is not None else {**os.environ, "NO_COLOR": "1"},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto server on 127.0.0.1: real HTTP, real boto3, AWS APIs answered locally,
    with the twin's Auto Scaling rules (ipfleet/twin/moto_server.py)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ipfleet.twin.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Environment pointing boto3 at moto, with throwaway credentials."""
    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        # Never let boto3 look for instance credentials on the network.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    return env


@pytest.fixture
def imds(tmp_path):
    """The twin's IMDSv2 service on loopback, serving one node (127.0.0.1); yields
    (base URL, the JSON file it re-reads: change it to change what the node sees)."""
    nodes = tmp_path / "metadata.json"
    nodes.write_text(
        json.dumps(
            {
                "127.0.0.1": {
                    "instance-id": "i-0123456789abcdef0",
                    "local-ipv4": "127.0.0.1",
                    "public-ipv4": None,
                    "iam-role": "demo-engine",
                }
            }
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipfleet.twin.instance_metadata",
            str(nodes),
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/latest"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(base, timeout=1)
            except urllib.error.HTTPError:
                break  # answering (401)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base, nodes
    finally:
        server.terminate()
        server.wait(timeout=10)


def skip_without_twin() -> None:
    if os.environ.get("IPFLEET_SKIP_TWIN") == "1":
        pytest.skip("IPFLEET_SKIP_TWIN=1")
    from ipfleet.twin import cluster

    cluster.check_platform()


def running_twin(folder: Path, stack: str, config: dict) -> Iterator:
    """A module fixture's body: STACK's twin booted, connected and demoed; down after."""
    from ipfleet.twin import cluster, laptop

    skip_without_twin()
    state = cluster.up(str(write_stack(folder, stack, config)))
    try:
        cluster.wait_ready(state, timeout=600)
        laptop.fetch_and_demo(state, timeout=300)
        yield state
    finally:
        assert cluster.down(state) == []


def twin_exec(stack: str, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ipfleet twin exec STACK -- COMMAND...`, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", "twin", "exec", stack, "--", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A test's tier is its folder (tests/fast, tests/loopback, tests/twin), marked here, so
# `make test-fast` and `-m loopback` select by folder. A test in tests/fast that takes a
# fixture starting a real server (directly or through another fixture) is misfiled:
# collection fails, naming it.
TIERS = ("fast", "loopback", "twin")
LOOPBACK_FIXTURES = {"moto_url", "imds"}


def tier_of_path(path: Path) -> str:
    folder = path.relative_to(Path(__file__).parent).parts[0]
    if folder not in TIERS:
        raise pytest.UsageError(f"{path}: a test lives in tests/fast, tests/loopback or tests/twin")
    return folder


def pytest_collection_modifyitems(items) -> None:
    misfiled = []
    for item in items:
        tier = tier_of_path(Path(item.fspath))
        if tier != "fast":
            item.add_marker(getattr(pytest.mark, tier))
        elif LOOPBACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            misfiled.append(item.nodeid)
    if misfiled:
        raise pytest.UsageError(
            f"tests in tests/fast that start real servers (move them to tests/loopback): {misfiled}"
        )


# `make test` says how long each tier took: the time of its tests, setups and teardowns
# (a twin's boot is its first test's setup), printed before pytest's closing line.
_TIER_SECONDS: dict[str, float] = {}


def _tier(item_keywords) -> str:
    if "twin" in item_keywords:
        return "twin"
    return "loopback" if "loopback" in item_keywords else "fast"


def pytest_runtest_logreport(report) -> None:
    tier = _tier(report.keywords)
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if _TIER_SECONDS:
        times = ", ".join(
            f"{tier} {_TIER_SECONDS[tier]:.0f} s" for tier in ("fast", "loopback", "twin") if tier in _TIER_SECONDS
        )
        terminalreporter.write_line(f"time by tier: {times}")


@pytest.fixture
def facts(tmp_path, monkeypatch):
    """Write the node agent's facts file (keyword values) and point the agent at it."""
    from bootstrap.ipfleet_node import agent

    def write(**values):
        path = tmp_path / "node.json"
        path.write_text(json.dumps(values))
        monkeypatch.setattr(agent, "FACTS_FILE", path)
        return values

    return write


@contextlib.contextmanager
def running_collector(env: dict[str, str], log: Path) -> Iterator[None]:
    """The controller's collector (`python -m bootstrap.ipfleet_node collect`) with the
    facts ENV names, its output in LOG, until the end (then SIGTERM: it writes and stops)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bootstrap.ipfleet_node", "collect"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while "collecting" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
