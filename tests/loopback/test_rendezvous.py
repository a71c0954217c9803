"""The rendezvous for real: a real ipcontroller publishes through the node agent to
moto (real HTTP, real boto3), the agent hands the engine its file, a real ipengine
registers, `ipfleet fetch` brings the client file home and ipyparallel.Client runs work.
Everything listens on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from bootstrap.spec import node_spec
from ipfleet import remote
from tests.conftest import run_cli, settings_of
from tests.loopback.controller_config import loopback_controller_config

# The node agent as its units run it (python -m), from this checkout.
AGENT = [sys.executable, "-m", "bootstrap.ipfleet_node"]
STACK = "rv"
PARAMETER = f"/ipfleet/{STACK}/connection"
KEYS_PARAMETER = f"/ipfleet/{STACK}/keys"


def ssm(env: dict):
    return boto3.client("ssm", region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"])


def create_pending_parameter(env: dict) -> None:
    """What `pulumi up` leaves behind before the controller boots."""
    for name in (PARAMETER, KEYS_PARAMETER):
        ssm(env).put_parameter(Name=name, Value="pending", Type="SecureString", Overwrite=True)


def facts_file(tmp_path: Path, role: str, profile_dir: Path, env: dict, access: str = "ssm") -> Path:
    """The node's facts as user data writes them, with paths moved into tmp_path."""
    from bootstrap.render import facts

    settings = settings_of(access=access, adminCidrs=["203.0.113.0/24"] if access != "ssm" else [])
    values = facts(node_spec(settings, role, "fs-x"))
    # The parameters' paths are the wire contract's for STACK: the agent derives them.
    values.update(
        stack=STACK,
        profile_dir=str(profile_dir),
        engines_per_node=1,
        aws_endpoint_url=env["AWS_ENDPOINT_URL"],
        keys_file=str(tmp_path / "keys.json"),
        # No `ipfleet` group on the test machine: the keys file stays owner-only here
        # (test_node_agent checks the group-readable form).
        service_user=None,
    )
    path = tmp_path / f"{role}-node.json"
    path.write_text(json.dumps(values))
    return path


# Nothing listens on loopback's discard port: the agent finds no metadata service at
# once, and never looks for one off this machine.
NO_METADATA = "http://127.0.0.1:9/latest"


def agent(facts: Path, *args: str, timeout: float = 60, metadata: str = NO_METADATA) -> subprocess.CompletedProcess:
    env = {**os.environ, "IPFLEET_NODE_FACTS": str(facts), "IPFLEET_METADATA_URL": metadata}
    return subprocess.run([*AGENT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def ipfleet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cli(*args, env=dict(os.environ), timeout=timeout)


def controller_config_from_user_data(
    profile_dir: Path, keys_file: Path, access: str = "ssm", state_dir: Path | None = None
) -> None:
    """The controller's ipcontroller_config.py exactly as user data writes it, with the
    node paths pointed at this checkout and the bind address kept on loopback."""
    settings = settings_of(access=access, adminCidrs=["203.0.113.0/24"] if access != "ssm" else [])
    config = loopback_controller_config(settings, keys_file, state_dir or profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    (profile_dir / "ipcontroller_config.py").write_text(config)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_controller_publishes_engine_registers_laptop_runs_work(aws_env, tmp_path):
    create_pending_parameter(aws_env)
    controller_profile = tmp_path / "controller" / "profile_default"
    engine_profile = tmp_path / "engine" / "profile_default"
    controller_config_from_user_data(controller_profile, tmp_path / "keys.json")
    venv_bin = Path(sys.executable).parent

    processes = []
    try:
        keys = agent(facts_file(tmp_path, "controller", controller_profile, aws_env), "keys")
        assert keys.returncode == 0, keys.stdout + keys.stderr
        assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
        processes.append(
            start([str(venv_bin / "ipcontroller"), f"--profile-dir={controller_profile}"], tmp_path / "controller.log")
        )
        published = agent(facts_file(tmp_path, "controller", controller_profile, aws_env), "publish", "--timeout", "60")
        assert published.returncode == 0, (
            published.stdout + published.stderr + (tmp_path / "controller.log").read_text()
        )
        document = json.loads(ssm(aws_env).get_parameter(Name=PARAMETER, WithDecryption=True)["Parameter"]["Value"])
        assert document["controller"]["versions"]["ipyparallel"]
        # The controller signs with the key it made at first boot and stored.
        stored = json.loads(ssm(aws_env).get_parameter(Name=KEYS_PARAMETER, WithDecryption=True)["Parameter"]["Value"])
        assert document["client"]["key"] == stored["hmac_key"]
        assert "curve_serverkey" not in document["client"] or not document["client"]["curve_serverkey"]

        waited = agent(facts_file(tmp_path, "engine", engine_profile, aws_env), "wait-connection", "--timeout", "30")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        engine_file = engine_profile / "security" / "ipcontroller-engine.json"
        assert stat.S_IMODE(engine_file.stat().st_mode) == 0o600
        processes.append(
            start([str(venv_bin / "ipengine"), f"--profile-dir={engine_profile}"], tmp_path / "engine.log")
        )

        fetched = ipfleet("fetch", STACK, "--region", "us-east-1", "--json", "--timeout", "30")
        assert fetched.returncode == 0, fetched.stderr
        result = json.loads(fetched.stdout)
        client_file = Path(result["path"])
        assert (
            client_file == Path(aws_env["IPYTHONDIR"]) / "profile_ipfleet-rv" / "security" / "ipcontroller-client.json"
        )
        assert stat.S_IMODE(client_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(client_file.parent.stat().st_mode) == 0o700

        import ipyparallel as ipp

        rc = ipp.Client(profile=result["profile"])
        try:
            rc.wait_for_engines(1, timeout=60)
            squares = rc[:].map_sync(lambda x: x**30, range(8))
            assert squares == [x**30 for x in range(8)]
        finally:
            rc.close()
        # The fixed ports from ipfleet/ports.py are the ones in use.
        from ipfleet import ports

        def used(info: dict) -> set[int]:
            found = set()
            for key, value in info.items():
                if key not in ("key", "location", "curve_serverkey") and isinstance(value, (int, list)):
                    found |= set(value) if isinstance(value, list) else {value}
            return found

        # What the security group opens to clients (access: direct) covers the client file...
        assert used(document["client"]) <= set(ports.CLIENT_FACING_PORTS.as_list())
        # ...and engines use only the engine pool, all within what the cluster opens to itself.
        assert used(document["engine"]) <= set(ports.ENGINE_PORTS.as_list())
        assert ports.ENGINE_PORTS.last <= ports.CONTROLLER_PORTS.last
    finally:
        for process in reversed(processes):
            stop(process)


def test_engine_wait_is_bounded_and_says_why(aws_env, tmp_path):
    create_pending_parameter(aws_env)
    started = time.monotonic()
    waited = agent(facts_file(tmp_path, "engine", tmp_path / "p", aws_env), "wait-connection", "--timeout", "3")
    assert waited.returncode != 0
    assert "nothing published at /ipfleet/rv/connection after 3 s" in waited.stderr
    assert "controller has not published yet" in waited.stdout
    assert time.monotonic() - started < 20


def test_fetch_reports_a_stack_that_does_not_exist(aws_env):
    result = ipfleet("fetch", "ghost", "--region", "us-east-1")
    assert result.returncode == 1
    assert "no ipfleet stack 'ghost' in us-east-1" in result.stderr
    assert "Traceback" not in result.stderr


def test_fetch_waits_then_explains_a_controller_that_never_publishes(aws_env):
    create_pending_parameter(aws_env)
    result = ipfleet("fetch", STACK, "--region", "us-east-1", "--timeout", "2")
    assert result.returncode == 1
    assert "has not published connection info" in result.stderr


@pytest.mark.parametrize(
    "value,message",
    [
        ("garbage", "does not hold ipfleet connection info (not JSON)"),
        ('{"format": 99}', "does not hold ipfleet connection info (format 1 expected)"),
        ('{"format": 1, "client": {"key": "k"}}', "/ipfleet/rv/connection: stack: field required"),
    ],
)
def test_fetch_rejects_malformed_content(aws_env, value, message):
    ssm(aws_env).put_parameter(Name=PARAMETER, Value=value, Type="SecureString")
    result = ipfleet("fetch", STACK, "--region", "us-east-1", "--timeout", "2")
    assert result.returncode == 1
    assert message in result.stderr
    assert not (Path(aws_env["IPYTHONDIR"]) / "profile_ipfleet-rv").exists()


def test_fetch_without_credentials_says_so(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = ipfleet("fetch", STACK, "--region", "us-east-1")
    assert result.returncode == 1
    assert "no AWS credentials" in result.stderr


def boot_controller(tmp_path: Path, aws_env: dict, access: str = "ssm", **extra_facts) -> tuple[subprocess.Popen, dict]:
    """What the controller's units do at boot: keys, ipcontroller, publish. Returns (process, published)."""
    profile = tmp_path / "controller" / "profile_default"
    controller_config_from_user_data(profile, tmp_path / "keys.json", access)
    facts = facts_file(tmp_path, "controller", profile, aws_env, access)
    if extra_facts:
        facts.write_text(json.dumps({**json.loads(facts.read_text()), **extra_facts}))
    keys = agent(facts, "keys")
    assert keys.returncode == 0, keys.stdout + keys.stderr
    process = start(
        [str(Path(sys.executable).parent / "ipcontroller"), f"--profile-dir={profile}"], tmp_path / "controller.log"
    )
    published = agent(facts, "publish", "--timeout", "60")
    assert published.returncode == 0, published.stderr + (tmp_path / "controller.log").read_text()
    value = ssm(aws_env).get_parameter(Name=PARAMETER, WithDecryption=True)["Parameter"]["Value"]
    return process, json.loads(value)


def test_keys_survive_a_restart_and_a_replaced_controller(aws_env, tmp_path):
    create_pending_parameter(aws_env)
    process, first = boot_controller(tmp_path, aws_env)
    stop(process)
    security = tmp_path / "controller" / "profile_default" / "security"
    # A restart: the local keys are kept.
    process, restarted = boot_controller(tmp_path, aws_env)
    stop(process)
    assert restarted["client"]["key"] == first["client"]["key"]
    # A replaced controller: a new disk, nothing local; the keys come back from the stack.
    (tmp_path / "keys.json").unlink()
    for f in security.iterdir():
        f.unlink()
    process, replaced = boot_controller(tmp_path, aws_env)
    stop(process)
    assert replaced["client"]["key"] == first["client"]["key"]
    assert replaced["engine"]["key"] == first["engine"]["key"]
    # What a real controller publishes has the shape the laptop demands of it.
    document = remote.parse(remote.PublishedDocument, replaced, "published")
    assert document.client.client_file()["key"] == first["client"]["key"]


def test_direct_mode_requires_the_curve_server_key(aws_env, tmp_path):
    import ipyparallel as ipp

    create_pending_parameter(aws_env)
    process, document = boot_controller(tmp_path, aws_env, access="direct")
    try:
        checked = remote.parse(remote.PublishedDocument, document, "published").client.client_file()
        assert checked["curve_serverkey"] == document["client"]["curve_serverkey"]
        stored = json.loads(ssm(aws_env).get_parameter(Name=KEYS_PARAMETER, WithDecryption=True)["Parameter"]["Value"])
        assert document["client"]["curve_serverkey"] == stored["curve_public_key"]
        assert document["client"]["key"] == stored["hmac_key"]  # signing stays on under Curve
        rc = ipp.Client(document["client"], timeout=10)
        rc.close()
        # Everything else right, but no server key: the Curve handshake never completes.
        stripped = {k: v for k, v in document["client"].items() if k != "curve_serverkey"}
        with pytest.raises(TimeoutError):
            ipp.Client(stripped, timeout=3)
    finally:
        stop(process)


def test_the_notebook_token_is_not_in_the_document_engines_read(aws_env, tmp_path):
    """Engines read the connection document; the notebook's token has its own parameter,
    which only the controller's role and laptops read."""
    create_pending_parameter(aws_env)
    notebook = "/ipfleet/rv/notebook"
    ssm(aws_env).put_parameter(Name=notebook, Value="pending", Type="SecureString")
    process, document = boot_controller(tmp_path, aws_env, notebook_port=8888, notebook_parameter=notebook)
    stop(process)
    assert document["notebook"] == {"port": 8888}
    assert "token" not in json.dumps(document["notebook"])
    stored = json.loads(ssm(aws_env).get_parameter(Name=KEYS_PARAMETER, WithDecryption=True)["Parameter"]["Value"])
    token = ssm(aws_env).get_parameter(Name=notebook, WithDecryption=True)["Parameter"]["Value"]
    assert token == stored["notebook_token"]
    # The laptop puts the two together, checked.
    from ipfleet.fetch import fetch

    fetched = fetch("rv", "us-east-1", timeout=5)
    assert fetched.notebook == {"port": 8888, "token": token}
