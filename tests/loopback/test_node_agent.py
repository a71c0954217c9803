"""The node agent against real servers on loopback: engines following a controller that
moved (real boto3 against moto) and interruption notices from the instance metadata
service (the rest of the agent's tests are in tests/fast/test_node_agent.py)."""

from __future__ import annotations

import json
import os
import time

import boto3
import pytest

from bootstrap.ipfleet_node import agent

RENDEZVOUS = "/ipfleet/mv/connection"


@pytest.fixture
def engine_node(facts, aws_env, tmp_path):
    """An engine node's facts naming a rendezvous parameter in moto. Returns a function
    that publishes a controller at an address there, and the engine file's path."""
    ssm = boto3.client("ssm", region_name="us-east-1")
    values = facts(
        region="us-east-1",
        rendezvous_parameter=RENDEZVOUS,
        profile_dir=str(tmp_path / "profile"),
        node_state_dir=str(tmp_path / "root-state"),
        aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"],
    )
    assert values["rendezvous_parameter"] == RENDEZVOUS

    def publish(address: str) -> None:
        document = {
            "format": agent.FORMAT,
            "stack": "mv",
            "published_at": "2026-11-23T10:00:00+00:00",
            "controller": {"address": address},
            "engine": {"location": address, "key": "k"},
        }
        ssm.put_parameter(Name=RENDEZVOUS, Value=json.dumps(document), Type="SecureString", Overwrite=True)

    return publish, tmp_path / "profile" / "security" / "ipcontroller-engine.json"


def test_interruption_notices_from_the_metadata(imds, monkeypatch):
    """What the watch service drains on: EC2's spot notice, or Auto Scaling taking the node out."""
    base, nodes = imds
    monkeypatch.setattr(agent, "METADATA", base)
    assert agent.interruption() is None  # 404: nothing pending
    values = json.loads(nodes.read_text())

    def serve(**extra):
        node = {**values["127.0.0.1"], **extra}
        nodes.write_text(json.dumps({"127.0.0.1": node}))

    serve(**{"autoscaling/target-lifecycle-state": "InService"})
    assert agent.interruption() is None
    serve(**{"spot/instance-action": json.dumps({"action": "terminate", "time": "2026-11-23T12:00:00Z"})})
    assert agent.interruption() == "spot interruption: terminate at 2026-11-23T12:00:00Z"
    serve(**{"autoscaling/target-lifecycle-state": "Terminated"})
    assert agent.interruption() == "auto scaling: Terminated"


@pytest.fixture
def metadata_requests(imds, monkeypatch):
    """The agent pointed at the twin's metadata service, holding no token yet. Yields the
    requests it makes, as (method, the path's last part), and a set of request numbers
    (1 for the first) that time out instead of reaching the service."""
    import threading
    import urllib.request

    base, _nodes = imds
    monkeypatch.setattr(agent, "METADATA", base)
    monkeypatch.setattr(agent, "_tokens", threading.local())
    asked: list[tuple[str, str]] = []
    time_out: set[int] = set()
    real = urllib.request.urlopen

    def watched(request, *args, **kwargs):
        asked.append((request.get_method(), request.full_url.rsplit("/", 1)[-1]))
        if len(asked) in time_out:
            raise TimeoutError("timed out")
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", watched)
    return asked, time_out


def test_the_metadata_token_is_asked_for_once_and_again_when_refused(metadata_requests):
    """A watch looks every few seconds: one request per value, not a token each time; a
    token the service no longer knows (it restarted) is replaced, once."""
    asked, _ = metadata_requests
    for _ in range(5):
        assert agent.instance_metadata("instance-id") == "i-0123456789abcdef0"
    assert [method for method, _ in asked] == ["PUT"] + ["GET"] * 5
    agent._tokens.held = ("a-token-nobody-gave", agent._tokens.held[1])
    assert agent.instance_metadata("instance-id") == "i-0123456789abcdef0"
    assert [method for method, _ in asked[6:]] == ["GET", "PUT", "GET"]  # 401, a new token, the value


def test_a_metadata_service_that_does_not_answer_is_asked_again(metadata_requests):
    """A busy node's metadata service can time out for a moment: the value that exists
    is read on the next try, and a value that does not exist (404) is not asked twice."""
    asked, time_out = metadata_requests
    time_out.add(2)  # the first value's read, after the token's
    assert agent.instance_metadata("instance-id") == "i-0123456789abcdef0"
    assert [path for _, path in asked] == ["token", "instance-id", "instance-id"]
    assert agent.instance_metadata("public-ipv4") is None
    assert [path for _, path in asked[3:]] == ["public-ipv4"]


def test_the_watch_reports_under_the_instance_id_once_the_metadata_says_it(facts, tmp_path, monkeypatch):
    """A watch that started while the metadata service did not answer has only the host
    name: it asks again and reports under the instance id, never under the host name."""
    import threading

    facts(role="engine", stack="mv", region="us-east-1", engines_per_node=2, node_state_dir=str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "connection.json").write_text(json.dumps({"controller": "10.0.0.10", "engine": {}}))
    identities = iter([{"instanceId": "vm", "address": "10.0.0.5"}, {"instanceId": "vm", "address": "10.0.0.5"}])
    monkeypatch.setattr(
        agent, "node_identity", lambda: next(identities, {"instanceId": "i-0123456789abcdef0", "address": "10.0.0.5"})
    )
    sent: list[str] = []
    stop = threading.Event()

    def put_record(_facts, identity, _text):
        sent.append(identity["instanceId"])
        stop.set()
        return 204

    monkeypatch.setattr(agent, "put_record", put_record)
    monkeypatch.setattr(agent, "engines_now", lambda _facts: {"running": 2, "expected": 2})
    monkeypatch.setattr(agent, "instance_metadata", lambda path: None)
    watching = threading.Thread(target=agent.watch, args=(0.05,), kwargs={"stop": stop}, daemon=True)
    watching.start()
    watching.join(timeout=10)
    stop.set()
    assert sent == ["i-0123456789abcdef0"]


def test_engines_follow_a_controller_that_moved(engine_node, capsys):
    """What an engine does at every start: re-read the rendezvous, rewrite its file if it changed."""
    publish, engine_file = engine_node
    publish("10.0.0.10")
    agent.wait_connection(timeout=5)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.10"
    agent.wait_connection(timeout=5)
    assert "unchanged" in capsys.readouterr().out
    publish("10.0.0.42")  # a replaced controller published its new address
    agent.wait_connection(timeout=5)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42"
    assert "controller at 10.0.0.42 (was 10.0.0.10)" in capsys.readouterr().out
    assert oct(engine_file.stat().st_mode & 0o777) == "0o600"


def test_an_engine_file_just_read_is_used_without_asking_again(engine_node, capsys):
    """Engines started right after the boot's read skip theirs; one restarted later reads again."""
    publish, engine_file = engine_node
    publish("10.0.0.10")
    agent.wait_connection(timeout=5)
    publish("10.0.0.42")
    agent.wait_connection(timeout=5, fresh_within=60)  # just read: not asked again
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.10"
    assert "used as it is" in capsys.readouterr().out
    old = time.time() - 120
    os.utime(engine_file, (old, old))  # read two minutes ago: a restarted engine asks again
    agent.wait_connection(timeout=5, fresh_within=60)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42"
    agent.wait_connection(timeout=5)  # unchanged, but confirmed: fresh again
    assert time.time() - engine_file.stat().st_mtime < 5


def test_a_failed_bootstrap_step_is_reported_and_fetch_stops_waiting(facts, aws_env, imds, tmp_path, monkeypatch):
    """A node's record (real boto3 against moto, metadata through IMDSv2 on loopback):
    `ipfleet status` reads the step, exit code and log lines, and `fetch` gives up at once."""
    from ipfleet.fetch import FetchError, fetch
    from ipfleet.node_status import read_records

    base, _nodes = imds
    monkeypatch.setattr(agent, "METADATA", base)
    boot_log = tmp_path / "cloud-init-output.log"
    boot_log.write_text("".join(f"line {i}\n" for i in range(40)) + "ERROR: No matching distribution for numpyy\n")
    monkeypatch.setattr(agent, "BOOT_LOG", boot_log)
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name="/ipfleet/bad/connection", Value="pending", Type="SecureString")
    facts(
        role="controller",
        stack="bad",
        region="us-east-1",
        controller_record_parameter="/ipfleet/bad/controller",
        profile_dir=str(tmp_path / "profile"),
        state_dir=str(tmp_path / "state"),
        node_state_dir=str(tmp_path / "root-state"),
        aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"],
    )

    agent.report("failed", step="python venv", exit_code=1)

    [record] = read_records(ssm, boto3.client("s3", region_name="us-east-1"), "bad")
    assert (record.role, record.instance_id, record.phase) == ("controller", "i-0123456789abcdef0", "failed")
    assert record.error["step"] == "python venv" and record.error["exitCode"] == 1
    assert record.error["log"][-1] == "ERROR: No matching distribution for numpyy"
    assert len(record.error["log"]) == 15
    # Later reports (the watch service's) keep saying it: the failure is kept on the node.
    assert json.loads((tmp_path / "root-state" / "bootstrap-failure.json").read_text())["step"] == "python venv"
    with pytest.raises(FetchError, match=r"(?s)failed its bootstrap at python venv \(exit 1\).*numpyy"):
        fetch("bad", "us-east-1", timeout=60, poll_seconds=0.1)


def test_a_big_fleet_looks_at_the_rendezvous_in_turn(engine_node, monkeypatch, capsys):
    """1,000 engine nodes booting at once, or that lost their controller, spread their
    looks over 100 s (10 a second for each of a node's two readers: half SSM's shared
    read rate) and poll no faster than that while it is away; an engine whose node's
    other engine looked meanwhile does not look at all."""
    publish, engine_file = engine_node
    publish("10.0.0.10")
    agent.wait_connection(timeout=5)  # a small fleet (no fleet_nodes): no pause
    facts = agent.load_facts()
    facts["fleet_nodes"] = 1000
    monkeypatch.setattr(agent, "load_facts", lambda: facts)
    assert agent.rendezvous_spread(facts) == 100
    engine_file.unlink()  # at boot, a big fleet looks in turn too
    booting: list[float] = []
    monkeypatch.setattr(agent.time, "sleep", booting.append)
    agent.wait_connection(timeout=5)
    assert len(booting) == 1 and 0 <= booting[0] <= 100 and engine_file.exists()
    old = time.time() - 120
    os.utime(engine_file, (old, old))
    pauses: list[float] = []
    monkeypatch.setattr(agent.time, "sleep", pauses.append)
    publish("10.0.0.42")
    agent.wait_connection(timeout=5, fresh_within=60)
    assert len(pauses) == 1 and 0 <= pauses[0] <= 100
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42"
    # Another engine of the node refreshes the file while this one waits its turn.
    os.utime(engine_file, (old, old))
    monkeypatch.setattr(agent.time, "sleep", lambda s: (pauses.append(s), os.utime(engine_file)))
    publish("10.0.0.99")
    agent.wait_connection(timeout=5, fresh_within=60)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42"
    assert "read from the rendezvous meanwhile" in capsys.readouterr().out


def test_one_look_at_boot_serves_the_engines_and_the_watch(engine_node, tmp_path, monkeypatch, capsys):
    """Root looks at the rendezvous once at boot (`wait-connection --root`) and keeps its
    copy in its own folder; the engines' first start and the watch's reports use it,
    so a node booting reads SSM once, not three times."""
    publish, engine_file = engine_node
    publish("10.0.0.10")
    monkeypatch.setattr(agent, "_collector_at", {})
    reads: list[str] = []
    real = agent.read_published
    monkeypatch.setattr(agent, "read_published", lambda client, name: reads.append(name) or real(client, name))
    agent.wait_connection(timeout=5, root=True)
    copy = json.loads((tmp_path / "root-state" / "connection.json").read_text())
    assert copy["controller"] == "10.0.0.10" and copy["engine"]["location"] == "10.0.0.10"
    assert not engine_file.exists()  # root writes nothing where the service user writes
    agent.wait_connection(timeout=5, fresh_within=60)  # the engines' first start
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.10"
    assert "taken from" in capsys.readouterr().out
    assert agent.collector_address(agent.load_facts()) == "10.0.0.10"  # the watch
    assert reads == [RENDEZVOUS]
    # A copy that is stale (the controller since lost) is not used: the engine reads again.
    old = time.time() - 120
    os.utime(tmp_path / "root-state" / "connection.json", (old, old))
    os.utime(engine_file, (old, old))
    publish("10.0.0.42")
    agent.wait_connection(timeout=5, fresh_within=60)
    assert json.loads(engine_file.read_text())["location"] == "10.0.0.42" and len(reads) == 2


def test_root_s_copy_is_checked_before_use(engine_node, tmp_path, monkeypatch):
    """A copy that does not parse, or names no IP address, is not used: the watch asks the
    rendezvous instead (a half-written file must not send records elsewhere)."""
    publish, _engine_file = engine_node
    publish("10.0.0.10")
    facts = agent.load_facts()
    copy = tmp_path / "root-state" / "connection.json"
    copy.parent.mkdir(parents=True)
    for text in ("{", json.dumps({"controller": "evil.example", "engine": {}}), json.dumps({"controller": "10.9.9.9"})):
        copy.write_text(text)
        assert agent.read_root_copy(facts) is None
        monkeypatch.setattr(agent, "_collector_at", {})
        assert agent.collector_address(facts) == "10.0.0.10"
    copy.write_text(json.dumps({"controller": "10.9.9.9", "engine": {"location": "10.9.9.9"}}))
    monkeypatch.setattr(agent, "_collector_at", {})
    assert agent.collector_address(facts) == "10.9.9.9"
    assert agent.collector_address(facts, fresh=True) == "10.0.0.10"  # asked again after a failure


def test_a_drained_node_stops_first_and_says_again_until_its_group_holds_it(facts, tmp_path, monkeypatch):
    """On a notice the watch stops the engines before it reports; a drained record the
    collector took while Auto Scaling did not hold the node yet (202) is said again a
    few seconds later, not only at the next heartbeat, so that its hook is completed."""
    import threading

    facts(role="engine", stack="mv", region="us-east-1", engines_per_node=2, node_state_dir=str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "connection.json").write_text(json.dumps({"controller": "10.0.0.10", "engine": {}}))
    happened: list[tuple[str, float]] = []
    answers = iter([204, 202, 204])
    stop = threading.Event()

    def put_record(_facts, _identity, text):
        happened.append((json.loads(text)["phase"], time.monotonic()))
        answer = next(answers, 204)
        if answer == 204 and json.loads(text)["phase"] == "drained" and len(happened) > 2:
            stop.set()
        return answer

    monkeypatch.setattr(agent, "put_record", put_record)
    monkeypatch.setattr(agent, "node_identity", lambda: {"instanceId": "i-0123456789abcdef0", "address": "10.0.0.5"})
    monkeypatch.setattr(agent, "engines_now", lambda _facts: {"running": 0, "expected": 2})
    notice = {"spot/instance-action": None, "autoscaling/target-lifecycle-state": "Terminated"}
    monkeypatch.setattr(agent, "instance_metadata", lambda path: notice.get(path))
    monkeypatch.setattr(agent, "interruption", lambda: "spot interruption: terminate" if notice["armed"] else None)
    monkeypatch.setattr(agent, "drain", lambda _facts, _reason: happened.append(("engines stopped", time.monotonic())))
    notice["armed"] = False
    watching = threading.Thread(target=agent.watch, args=(0.05,), kwargs={"stop": stop}, daemon=True)
    watching.start()
    deadline = time.monotonic() + 5
    while not happened and time.monotonic() < deadline:
        time.sleep(0.05)
    notice["armed"] = True
    watching.join(timeout=20)
    stop.set()
    phases = [what for what, _ in happened]
    assert phases[:4] == ["booting", "engines stopped", "drained", "drained"], phases
    said_again = happened[3][1] - happened[2][1]
    assert 4.5 <= said_again < 8, said_again  # after the 202: shortly, not at the heartbeat
