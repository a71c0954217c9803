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
import yaml

from bootstrap import node_spec, render_user_data
from tests.conftest import ROOT, settings_of

AGENT = ROOT / "bootstrap" / "node" / "ipfleet_node.py"
STACK = "rv"
PARAMETER = f"/ipfleet/{STACK}/connection"


def ssm(env: dict):
    return boto3.client("ssm", region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"])


def create_pending_parameter(env: dict) -> None:
    """What `pulumi up` leaves behind before the controller boots."""
    ssm(env).put_parameter(Name=PARAMETER, Value="pending", Type="SecureString")


def facts_file(tmp_path: Path, role: str, profile_dir: Path, env: dict) -> Path:
    path = tmp_path / f"{role}-node.json"
    path.write_text(json.dumps({
        "role": role, "stack": STACK, "region": "us-east-1", "rendezvous_parameter": PARAMETER,
        "profile_dir": str(profile_dir), "engines_per_node": 1,
        "aws_endpoint_url": env["AWS_ENDPOINT_URL"],
    }))
    return path


def agent(facts: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "IPFLEET_NODE_FACTS": str(facts)}
    return subprocess.run([sys.executable, str(AGENT), *args], env=env, capture_output=True,
                           text=True, timeout=timeout)


def ipfleet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipfleet.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def controller_config_from_user_data(profile_dir: Path) -> None:
    """The controller's ipcontroller_config.py exactly as user data writes it, with the
    node paths pointed at this checkout and the bind address kept on loopback."""
    document = yaml.safe_load(render_user_data(node_spec(settings_of(), "controller", "fs-x")))
    files = {f["path"]: f["content"] for f in document["write_files"]}
    config = files["/var/lib/ipfleet/ipython/profile_default/ipcontroller_config.py"]
    config = config.replace("/opt/ipfleet/venv/bin/python", sys.executable)
    config = config.replace("/usr/local/lib/ipfleet/ipfleet_node.py", str(AGENT))
    config += '\nc.IPController.ip = "127.0.0.1"\nc.IPController.location = "127.0.0.1"\n'
    profile_dir.mkdir(parents=True)
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
    controller_config_from_user_data(controller_profile)
    venv_bin = Path(sys.executable).parent

    processes = []
    try:
        processes.append(start([str(venv_bin / "ipcontroller"), f"--profile-dir={controller_profile}"],
                               tmp_path / "controller.log"))
        published = agent(facts_file(tmp_path, "controller", controller_profile, aws_env), "publish",
                          "--timeout", "60")
        assert published.returncode == 0, published.stdout + published.stderr + \
            (tmp_path / "controller.log").read_text()
        document = json.loads(ssm(aws_env).get_parameter(Name=PARAMETER, WithDecryption=True)
                              ["Parameter"]["Value"])
        assert document["controller"]["versions"]["ipyparallel"]

        waited = agent(facts_file(tmp_path, "engine", engine_profile, aws_env), "wait-connection",
                       "--timeout", "30")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        engine_file = engine_profile / "security" / "ipcontroller-engine.json"
        assert stat.S_IMODE(engine_file.stat().st_mode) == 0o600
        processes.append(start([str(venv_bin / "ipengine"), f"--profile-dir={engine_profile}"],
                               tmp_path / "engine.log"))

        fetched = ipfleet("fetch", STACK, "--region", "us-east-1", "--json", "--timeout", "30")
        assert fetched.returncode == 0, fetched.stderr
        result = json.loads(fetched.stdout)
        client_file = Path(result["path"])
        assert client_file == Path(aws_env["IPYTHONDIR"]) / "profile_ipfleet-rv" / "security" / "ipcontroller-client.json"
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


@pytest.mark.parametrize("value,message", [
    ("garbage", "does not hold ipfleet connection info (not JSON)"),
    ('{"format": 99}', "does not hold ipfleet connection info (format 1 expected)"),
    ('{"format": 1, "client": {"key": "k"}}', "incomplete connection info (missing signature_scheme"),
])
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
