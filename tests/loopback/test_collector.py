"""The controller's record collector (bootstrap/ipfleet_node/collector.py) as a real
process on loopback, against moto's EC2, S3 and Auto Scaling: engine instances live in a subnet of
127.0.0.0/16, so each one's address is a loopback address the test can send from, and
EC2 says which instance each address is.

Engine nodes' records reach the records document only through it, each from root on the
node it speaks for; what any other sender tries is refused and changes nothing."""

from __future__ import annotations

import errno
import http.client
import json
import os
import random
import time
from datetime import UTC, datetime

import boto3
import pytest

from bootstrap.ipfleet_node import agent, wire
from bootstrap.ipfleet_node.collector import RecordStore
from ipfleet.twin.moto_deploy import create_network, run_instance
from tests.conftest import running_collector

STACK = "rec"
CONTROLLER = "127.0.0.10"
BUCKET = "ipfleet-rec-runtime-0123"


@pytest.fixture
def cluster(aws_env, tmp_path):
    """Two engine instances and the controller in moto's EC2; the collector running as
    the controller runs it (`python -m bootstrap.ipfleet_node collect`)."""
    if os.geteuid() != 0:
        pytest.skip("sending from a port below 1024 needs root, as on a node")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    subnet = create_network(ec2, {"vpc_cidr": "127.0.0.0/16", "subnet_cidr": "127.0.0.0/24", "zone": "us-east-1a"})
    engines = {}
    for _ in range(2):
        made = run_instance(
            ec2,
            {
                "subnet": subnet,
                "address": None,
                "instance_type": "t3.medium",
                "tags": {wire.STACK_TAG: STACK, wire.ROLE_TAG: "engine"},
            },
        )
        engines[made] = ec2.describe_instances(InstanceIds=[made])["Reservations"][0]["Instances"][0][
            "PrivateIpAddress"
        ]
    run_instance(
        ec2,
        {
            "subnet": subnet,
            "address": CONTROLLER,
            "instance_type": "t3.medium",
            "tags": {wire.STACK_TAG: STACK, wire.ROLE_TAG: "controller"},
        },
    )
    facts = tmp_path / "controller.json"
    facts.write_text(
        json.dumps(
            {
                "role": "controller",
                "stack": STACK,
                "region": "us-east-1",
                "aws_endpoint_url": aws_env["AWS_ENDPOINT_URL"],
                "records_address": CONTROLLER,
                "records_reap_seconds": 1,
                "records_flush_seconds": 0.2,
                "runtime": {"bucket": BUCKET},
            }
        )
    )
    log = tmp_path / "collector.log"
    with running_collector({**os.environ, "IPFLEET_NODE_FACTS": str(facts)}, log):
        yield engines, log


def send(method: str, instance_id: str, body: bytes, source: tuple[str, str]) -> tuple[int, str]:
    """One report from SOURCE: (address, "root") sends from a port below 1024, as only root
    on a node can; (address, "user") from one above, as user code must."""
    address, who = source
    ports = (600, 1023) if who == "root" else (20000, 60000)
    for _ in range(20):  # a port of an earlier test may still be in TIME_WAIT
        connection = http.client.HTTPConnection(
            CONTROLLER, wire.RECORDS_PORT, timeout=10, source_address=(address, random.randint(*ports))
        )
        try:
            connection.request(method, f"/nodes/{instance_id}", body=body)
            response = connection.getresponse()
            return response.status, response.read().decode()
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
        finally:
            connection.close()
    raise AssertionError("no free source port")


def record_of(instance_id: str, address: str, phase: str = "running", updated: str | None = None) -> bytes:
    return json.dumps(
        {
            "format": wire.RECORD_FORMAT,
            "role": "engine",
            "instanceId": instance_id,
            "address": address,
            "phase": phase,
            "updated": updated or datetime.now(UTC).isoformat(timespec="seconds"),
        }
    ).encode()


def stored(until=lambda nodes: True, timeout: float = 15) -> dict[str, dict]:
    """The records document's nodes once UNTIL holds of them."""
    s3 = boto3.client("s3", region_name="us-east-1")
    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = json.loads(s3.get_object(Bucket=BUCKET, Key=wire.RECORDS_KEY)["Body"].read())["nodes"]
        except s3.exceptions.NoSuchKey:
            nodes = {}
        if until(nodes):
            return nodes
        assert time.monotonic() < deadline, nodes
        time.sleep(0.2)


def settled() -> dict[str, dict]:
    """The document after the collector's next write would have happened (it writes
    every 0.2 s here)."""
    time.sleep(1.0)
    return stored()


def test_each_engine_node_writes_only_its_own_record_through_the_controller(cluster, facts, aws_env):
    engines, log = cluster
    (a, a_address), (b, b_address) = engines.items()
    # The agent's own path: the connection document names the controller, the node sends
    # its record from its address and a root-only port.
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=wire.connection_parameter(STACK),
        Value=json.dumps({"format": wire.FORMAT, "engine": {}, "controller": {"address": CONTROLLER}}),
        Type="SecureString",
    )
    facts(role="engine", stack=STACK, region="us-east-1", aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    for instance, address in engines.items():
        identity = {"instanceId": instance, "address": address}
        assert agent.send_to_collector(agent.load_facts(), "PUT", identity, record_of(instance, address))
    assert {i: r["address"] for i, r in stored(lambda nodes: len(nodes) == 2).items()} == engines

    before = stored()
    hostile = {
        # user code on node A: any port it can bind is 1024 or above
        "an unprivileged port": ("PUT", a, record_of(a, a_address, "failed"), (a_address, "user"), 403),
        # root on node A speaking for B, under B's name or with B's address
        "another's name": ("PUT", b, record_of(b, a_address, "failed"), (a_address, "root"), 403),
        "another's address": ("PUT", a, record_of(a, b_address, "failed"), (a_address, "root"), 403),
        "another's delete": ("DELETE", b, b"", (a_address, "root"), 403),
        # an address EC2 gives no engine of this stack (the controller's own, here)
        "no engine there": ("PUT", a, record_of(a, CONTROLLER), (CONTROLLER, "root"), 403),
        "the controller's role": (
            "PUT",
            a,
            record_of(a, a_address).replace(b'"engine"', b'"controller"'),
            (a_address, "root"),
            403,
        ),
        "not JSON": ("PUT", a, b"{not json", (a_address, "root"), 400),
        "oversized": ("PUT", a, b" " * 5000, (a_address, "root"), 413),
        "not an instance id": ("PUT", "i-$(id)", record_of(a, a_address), (a_address, "root"), 400),
    }
    for what, (method, instance, body, source, status) in hostile.items():
        answer = send(method, instance, body, source)
        assert answer[0] == status, (what, answer)
    # A's own report that arrives late (it gave up on it; a later one got there first):
    # taken, but the later record stays.
    late = record_of(a, a_address, "booting", updated="2026-01-01T00:00:00+00:00")
    assert send("PUT", a, late, (a_address, "root"))[0] == 204
    assert settled() == before  # nothing any of them sent was written or deleted
    assert "refused" in log.read_text() and "kept" in log.read_text()

    # Going: the node deletes its own record (at shutdown), and only its own; a report
    # it sent before that and that arrives after does not bring it back.
    assert send("DELETE", a, b"", (a_address, "root"))[0] == 204
    assert set(stored(lambda nodes: a not in nodes)) == {b}
    assert send("PUT", a, late, (a_address, "root"))[0] == 204
    assert set(settled()) == {b}


def test_records_of_instances_that_are_gone_are_reaped(cluster):
    """A node that went without saying so (lost, terminated before its shutdown ran):
    its record goes at the collector's next round, and only its."""
    engines, log = cluster
    (a, a_address), (b, b_address) = engines.items()
    for instance, address in engines.items():
        assert send("PUT", instance, record_of(instance, address), (address, "root"))[0] == 204
    assert set(stored(lambda nodes: len(nodes) == 2)) == {a, b}
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=[b])
    assert set(stored(lambda nodes: b not in nodes)) == {a}
    assert f"forgot {b}: EC2 no longer runs it" in log.read_text()


def test_a_restarted_collector_keeps_what_the_nodes_said(cluster, aws_env, tmp_path):
    """The document is written on the way out and read back at the start: a restarted (or
    replaced) controller does not wait for every node's next report to know them."""
    engines, log = cluster
    for instance, address in engines.items():
        assert send("PUT", instance, record_of(instance, address), (address, "root"))[0] == 204
    written = stored(lambda nodes: len(nodes) == 2)
    store = RecordStore(boto3.client("s3", region_name="us-east-1"), BUCKET, wire.RECORDS_KEY)
    assert store.load() == 2 and store.records == written


def test_a_drained_node_is_let_go_by_the_controller_and_only_once_drained(cluster):
    """Engine nodes hold no Auto Scaling rights: the collector completes the drain hook of
    a node that reports `drained` while its group holds it in Terminating:Wait (moto with
    the hook's wait, ipfleet/twin/moto_server.py), and of no other."""
    import base64

    from ipfleet.twin.moto_deploy import create_engine_group

    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    [subnet] = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["CidrBlock"] == "127.0.0.0/24"]
    group = create_engine_group(
        autoscaling,
        ec2,
        {
            "name": f"{STACK}-engines",
            "min": 0,
            "max": 3,
            "desired": 2,
            "user_data": base64.b64encode(b"#cloud-config\n").decode(),
            "instance_type": "t3.medium",
            "zone": "us-east-1a",
            "subnet": subnet,
            "tags": {wire.STACK_TAG: STACK, wire.ROLE_TAG: "engine"},
            "hook": {
                "name": wire.DRAIN_HOOK,
                "transition": "autoscaling:EC2_INSTANCE_TERMINATING",
                "timeout": 120,
                "result": "CONTINUE",
            },
        },
    )

    def members() -> dict[str, str]:
        found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        return {i["InstanceId"]: i["LifecycleState"] for i in found["Instances"]}

    def address(instance: str) -> str:
        return ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]

    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=1)
    [leaving] = [i for i, state in members().items() if state == "Terminating:Wait"]
    [staying] = [i for i, state in members().items() if state == "InService"]
    # Still running its engines: held.
    assert send("PUT", leaving, record_of(leaving, address(leaving)), (address(leaving), "root"))[0] == 204
    # A node in service that says it drained: recorded, not let go; the answer says its
    # group does not hold it (it says so again if its metadata says otherwise).
    assert send("PUT", staying, record_of(staying, address(staying), "drained"), (address(staying), "root"))[0] == 202
    assert members() == {leaving: "Terminating:Wait", staying: "InService"}
    # The leaving node, drained: its hook completed, it leaves the group.
    drained = record_of(leaving, address(leaving), "drained")
    assert send("PUT", leaving, drained, (address(leaving), "root"))[0] == 204
    assert members() == {staying: "InService"}
    _, log = cluster
    assert f"completed its drain hook {wire.DRAIN_HOOK} in {group}" in log.read_text()


def test_status_reads_a_fleet_of_any_size_in_the_same_few_calls(aws_env):
    """What `ipfleet status` and every poll of `scale --wait` ask AWS for the records:
    the controller's record, its keeper's summary, where the engine records are, and the
    one document: the same calls for 2 engine nodes as for 2,000."""
    from ipfleet.node_status import read_all_records

    ssm = boto3.client("ssm", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    ssm.put_parameter(Name=wire.records_location_parameter(STACK), Value=BUCKET, Type="String")
    calls: list[str] = []
    for client in (ssm, s3):
        client.meta.events.register("before-call.*.*", lambda model, **_: calls.append(model.name))

    def calls_for(nodes: int) -> list[str]:
        records = {}
        for n in range(nodes):
            instance = f"i-{n:017x}"
            records[instance] = json.loads(record_of(instance, f"10.0.{n // 250}.{n % 250}"))
        document = {"format": wire.RECORDS_FORMAT, "nodes": records}
        s3.put_object(Bucket=BUCKET, Key=wire.RECORDS_KEY, Body=json.dumps(document).encode())
        calls.clear()
        found = read_all_records(ssm, s3, STACK)
        assert len(found.valid) == nodes and not found.refused
        return list(calls)

    few, many = calls_for(2), calls_for(2000)
    assert few == many == ["GetParameter", "GetParameter", "GetObject"]


def test_a_fleet_arriving_at_once_costs_ec2_a_few_calls(aws_env):
    """Who sent a report comes from EC2's view of the whole fleet, asked once for many
    senders (and again at most every 2 s): 60 nodes reporting at once, one call."""
    from bootstrap.ipfleet_node.collector import Collector, Report

    ec2 = boto3.client("ec2", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    subnet = create_network(ec2, {"vpc_cidr": "10.9.0.0/16", "subnet_cidr": "10.9.0.0/24", "zone": "us-east-1a"})
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": wire.STACK_TAG, "Value": STACK}, {"Key": wire.ROLE_TAG, "Value": "engine"}]
    made = ec2.run_instances(
        ImageId=image,
        MinCount=60,
        MaxCount=60,
        SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"]
    calls: list[str] = []
    ec2.meta.events.register("before-call.ec2.*", lambda model, **_: calls.append(model.name))
    collector = Collector(STACK, RecordStore(s3, BUCKET, wire.RECORDS_KEY), ec2, log=lambda _: None)
    for instance in made:
        address = instance["PrivateIpAddress"]
        body = record_of(instance["InstanceId"], address)
        done = collector.handle(Report("PUT", f"/nodes/{instance['InstanceId']}", address, 700, body))
        assert done == f"recorded {instance['InstanceId']}"
    assert calls == ["DescribeInstances"]
    assert len(collector.store.ids()) == 60


@pytest.mark.parametrize(
    "controller",
    [None, "10.0.0.10", {"address": "$(id)"}, {"address": ["10.0.0.10"]}, {"address": "10.0.0.10\nHost: x"}, {}],
)
def test_a_connection_document_without_an_address_is_refused_by_root_not_followed(controller, facts, aws_env, capsys):
    """Root's watch reads where the controller is from the document the controller's role
    writes: one with no IP address there is a line in the journal, and no report is sent
    (nor does the watch crash)."""
    document = {"format": wire.FORMAT, "engine": {}}
    if controller is not None:
        document["controller"] = controller
    name = wire.connection_parameter(STACK)
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=name, Value=json.dumps(document), Type="SecureString", Overwrite=True
    )
    facts(role="engine", stack=STACK, region="us-east-1", aws_endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    agent._collector_at.clear()
    assert agent.collector_address(agent.load_facts()) is None
    identity = {"instanceId": "i-0123456789abcdef0", "address": "127.0.0.1"}
    assert agent.send_to_collector(agent.load_facts(), "PUT", identity, b"{}") == 0
    out = capsys.readouterr().out
    assert f"cannot read the controller's address from {name}" in out
    assert "$(id)" not in out and "Host: x" not in out


def test_a_drain_hook_completed_by_an_earlier_report_is_not_a_failure():
    """A drained node whose first report's answer came late says it again: Auto Scaling
    refuses to complete the hook twice, and the collector takes that as done (not a 503
    that would have the node say it a third time). Another refusal is still an error."""
    import botocore.exceptions

    from bootstrap.ipfleet_node.collector import Collector

    class Group:
        exceptions = botocore.exceptions
        refusal = "No active Lifecycle Action found with instance ID i-0123456789abcdef0"

        def describe_auto_scaling_instances(self, InstanceIds):  # noqa: N803 (boto3's names)
            return {
                "AutoScalingInstances": [
                    {"InstanceId": i, "LifecycleState": "Terminating:Wait", "AutoScalingGroupName": "g"}
                    for i in InstanceIds
                ]
            }

        def complete_lifecycle_action(self, **_):
            error = {"Error": {"Code": "ValidationError", "Message": self.refusal}}
            raise botocore.exceptions.ClientError(error, "CompleteLifecycleAction")

    group = Group()
    collector = Collector(STACK, None, None, group, log=lambda _: None)
    assert collector.release("i-0123456789abcdef0") == (True, "; its drain hook in g was completed already")
    group.refusal = "Rate exceeded"
    with pytest.raises(botocore.exceptions.ClientError):
        collector.release("i-0123456789abcdef0")


def test_auto_scaling_calls_are_taken_in_turn_at_a_bounded_rate():
    """The collector's pacer: at most its rate, in turn; a caller whose turn is too far
    away is told at once (and answered 202), not kept waiting."""
    from bootstrap.ipfleet_node.collector import Pacer

    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))

    pacer = Pacer(5.0, clock=lambda: now[0], sleep=sleep)
    assert [pacer.take(within=1.1) for _ in range(7)] == [True] * 6 + [False]
    assert slept == [0.2, 0.4, 0.6, 0.8, 1.0]
    now[0] += 10  # later, the first call goes at once again
    assert pacer.take(within=0.0) and slept[-1] == 1.0


def test_drained_nodes_reporting_together_share_one_look_at_their_group():
    """A drain burst: 40 drained nodes report at once; the collector asks Auto Scaling
    about them in a few shared calls (up to 50 ids each), not one call each, and each
    node gets its own answer."""
    import threading

    import botocore.exceptions

    from bootstrap.ipfleet_node.collector import Collector

    held = {f"i-{n:017x}" for n in range(0, 40, 2)}
    asked: list[list[str]] = []

    class Group:
        exceptions = botocore.exceptions

        def describe_auto_scaling_instances(self, InstanceIds):  # noqa: N803 (boto3's names)
            asked.append(list(InstanceIds))
            time.sleep(0.3)  # Auto Scaling's answer takes a while: the others queue meanwhile
            return {
                "AutoScalingInstances": [
                    {
                        "InstanceId": i,
                        "AutoScalingGroupName": "g",
                        "LifecycleState": "Terminating:Wait" if i in held else "InService",
                    }
                    for i in InstanceIds
                ]
            }

    collector = Collector(STACK, None, None, Group(), log=lambda _: None)
    answers: dict[str, str | None] = {}

    def ask(instance: str) -> None:
        answers[instance] = collector.hook_group(instance)

    threads = [threading.Thread(target=ask, args=(f"i-{n:017x}",)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert answers == {f"i-{n:017x}": ("g" if f"i-{n:017x}" in held else None) for n in range(40)}
    assert sorted(i for ids in asked for i in ids) == sorted(answers)  # each asked about once
    assert len(asked) <= 4, [len(ids) for ids in asked]


def test_a_drained_node_whose_turn_is_far_away_is_asked_to_say_it_again(monkeypatch):
    """Auto Scaling's calls queued past the collector's bound: the node is answered as
    not held yet (202), and says it again a few seconds later."""
    import botocore.exceptions

    from bootstrap.ipfleet_node import collector as collector_module

    class Group:
        exceptions = botocore.exceptions
        completed: list[str] = []

        def describe_auto_scaling_instances(self, InstanceIds):  # noqa: N803 (boto3's names)
            return {
                "AutoScalingInstances": [
                    {"InstanceId": i, "LifecycleState": "Terminating:Wait", "AutoScalingGroupName": "g"}
                    for i in InstanceIds
                ]
            }

        def complete_lifecycle_action(self, InstanceId, **_):  # noqa: N803
            self.completed.append(InstanceId)

    group = Group()
    collector = collector_module.Collector(STACK, None, None, group, log=lambda _: None)
    collector._pacer = collector_module.Pacer(0.05)  # a turn every 20 s: the bound is 5 s
    assert collector.release("i-0123456789abcdef0") == (
        False,
        "; Auto Scaling's calls are queued (the node says it again)",
    )  # its look took the first turn; its completion would wait 20 s
    assert group.completed == []
