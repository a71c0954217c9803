"""What a fleet of engine nodes costs AWS's account quotas, and how it drains in a burst.

    python benchmarks/aws_budget.py [--nodes 1000] [--json]

Root, in a network namespace of its own (it makes one: `unshare -n`), nothing leaves it:

- moto (the project's server) behind the throttling proxy (ipfleet/twin/throttling.py),
  whose buckets are AWS's default account quotas scaled by NODES/1,000;
- the twin's instance metadata service on 169.254.169.254, one entry per node;
- the controller as the user data runs it: ipcontroller from ipfleet's config, the
  agent's `publish`, `collect` and `watch`, each a process of its own;
- NODES engine nodes, each an address on the namespace's loopback, running the agent's
  own code in threads (a few processes hold them all): the runtime's download, the
  rendezvous read, the watch (records through the collector, notices, drain), with
  lightweight engines (benchmarks/light_engines.py) as their ipengine units. What
  systemd does on a node (start and stop the engines) is the harness's part;
- a laptop that polls `ipfleet status`'s read (node_status.read_all_records) every 2 s.

The run: a cold start (every node boots within --boot-window seconds, as EC2's launch
burst of about 1,000 instances allows), steady state, then a drain burst (--drain nodes
of the group are taken out in the same minute: Auto Scaling holds each in its drain hook
and its metadata says so, as for a spot interruption) while a client keeps every engine
busy with tasks of --task-seconds. It prints each API's calls (the busiest 10 s and the
means, against its quota) and the figures below; --json prints
{"nodes", "apis": [{"api", "peak_per_s", "mean_per_s", "quota_per_s", ...}],
 "visible_p99_s", "drain_stop_p99_s", "hook_p99_s", "lost_tasks", ...}.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve()
PROJECT = HERE.parents[1]
sys.path[:0] = [str(PROJECT), str(PROJECT / "bootstrap"), str(HERE.parent)]

STACK = "budget"
REGION = "us-east-1"
ZONE = "us-east-1a"
CONTROLLER = "10.213.99.1"
METADATA_ADDRESS = "169.254.169.254"
LAPTOP = "10.213.99.2"
INSIDE = "IPFLEET_BUDGET_NAMESPACE"
NODES_PER_WORKER = 250
POLL_SECONDS = 2.0
HOOK_TIMEOUT = 120  # the drain hook's (components/engine_fleet.py)
_timed_out: list[str] = []
WINDOW = 10  # seconds: token buckets absorb a second's jitter; a quota is a rate over time

# AWS's default account quotas (calls a second, and the bucket's size). Parameter Store's
# reads share one bucket; EC2's Describe* bucket holds 100 and refills 20 a second. Auto
# Scaling publishes no API rates: 10 a second is an assumption, and said so.
QUOTAS: list[dict] = [
    {"apis": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"], "rate": 40, "burst": 40},
    {"apis": ["ssm:PutParameter"], "rate": 3, "burst": 3},
    {"apis": ["ec2:DescribeInstances"], "rate": 20, "burst": 100},
    {"apis": ["autoscaling:DescribeAutoScalingGroups"], "rate": 10, "burst": 10, "assumed": True},
    {"apis": ["autoscaling:DescribeAutoScalingInstances"], "rate": 10, "burst": 10, "assumed": True},
    {"apis": ["autoscaling:CompleteLifecycleAction"], "rate": 10, "burst": 10, "assumed": True},
    {"apis": ["s3:GetObject"], "rate": 5500, "burst": 5500},
    {"apis": ["s3:PutObject"], "rate": 3500, "burst": 3500},
]


def scaled_quotas(nodes: int) -> list[dict]:
    return [{**q, "rate": q["rate"] * nodes / 1000, "burst": max(1.0, q["burst"] * nodes / 1000)} for q in QUOTAS]


# -- the namespace, and what runs in it ---------------------------------------------------


def sh(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def enter_namespace(argv: list[str]) -> None:
    """Run this script again in a network namespace of its own (its loopback only)."""
    if os.geteuid() != 0:
        raise SystemExit("aws_budget.py needs root (a network namespace, and ports below 1024 on its loopback)")
    env = {**os.environ, INSIDE: "1"}
    raise SystemExit(subprocess.run(["unshare", "-n", sys.executable, str(HERE), *argv], env=env).returncode)


def add_addresses(addresses: list[str]) -> None:
    batch = "".join(f"address add {a}/32 dev lo\n" for a in addresses)
    sh("ip", "-batch", "-", input=batch)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Processes this run started, each leading its own group, stopped in reverse order."""

    def __init__(self, work: Path):
        self.work = work
        self.pids: list[int] = []

    def start(self, name: str, args: list[str], env: dict | None = None, limit: int | None = None) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        process = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) if limit else None,
        )
        self.pids.append(process.pid)
        return process

    def stop(self, pid: int) -> None:
        from ipfleet.twin.instances import stop_group

        stop_group(pid)

    def stop_all(self) -> None:
        for pid in reversed(self.pids):
            self.stop(pid)


def wait_for(what: str, check, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


# -- the stack in moto (what `pulumi up` made) -------------------------------------------


def make_stack(moto: str, nodes: int, work: Path) -> dict:
    import boto3

    from bootstrap.ipfleet_node import wire
    from ipfleet.twin.moto_deploy import create_engine_group

    def client(service: str):
        return boto3.client(service, region_name=REGION, endpoint_url=moto)

    bucket = f"{STACK}-runtime"
    runtime = os.urandom(64 * 1024)  # the node runtime's wheel, as big as it is
    s3 = client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="runtime/ipfleet_node.whl", Body=runtime)
    ssm = client("ssm")
    for name in (wire.connection_parameter(STACK), wire.keys_parameter(STACK), wire.controller_record_parameter(STACK)):
        ssm.put_parameter(Name=name, Value=wire.PENDING, Type="String")
    ssm.put_parameter(Name=wire.records_location_parameter(STACK), Value=bucket, Type="String")
    group = create_engine_group(
        client("autoscaling"),
        client("ec2"),
        {
            "name": f"{STACK}-engines",
            "min": 0,
            "max": nodes,
            "desired": nodes,
            "user_data": base64.b64encode(b"#cloud-config\n").decode(),
            "instance_type": "c7g.large",
            "zone": ZONE,
            "tags": {wire.STACK_TAG: STACK, wire.ROLE_TAG: "engine"},
            "hook": {
                "name": wire.DRAIN_HOOK,
                "transition": "autoscaling:EC2_INSTANCE_TERMINATING",
                "timeout": HOOK_TIMEOUT,
                "result": "CONTINUE",
            },
        },
    )
    instances = []
    for page in client("ec2").get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            instances += [(i["InstanceId"], i["PrivateIpAddress"]) for i in reservation["Instances"]]
    if len({a for _, a in instances}) != len(instances) or len(instances) != nodes:
        raise RuntimeError(f"moto gave {len(instances)} instances, not {nodes} at distinct addresses")
    import hashlib

    return {
        "bucket": bucket,
        "runtime": {"bucket": bucket, "key": "runtime/ipfleet_node.whl", "sha256": hashlib.sha256(runtime).hexdigest()},
        "group": group,
        "instances": instances,
    }


def metadata_entry(instance: str, address: str, role: str) -> dict:
    return {
        "instance-id": instance,
        "instance-type": "c7g.large",
        "instance-life-cycle": "spot" if role == "engine" else "on-demand",
        "placement/availability-zone": ZONE,
        "local-ipv4": address,
        **({"autoscaling/target-lifecycle-state": "InService"} if role == "engine" else {}),
    }


# -- the engine nodes: the agent's own code, in threads -----------------------------------


def worker(spec_file: Path) -> None:
    """Run the nodes SPEC_FILE names until SIGTERM: each boots at its time, then runs
    the agent's boot steps and its watch, from its own address."""
    import http.client

    import boto3
    from ipfleet_node import agent, pyenv
    from light_engines import EngineHost

    spec = json.loads(spec_file.read_text())
    local = threading.local()
    events = open(spec["events"], "a", buffering=1)
    events_lock = threading.Lock()
    host = EngineHost()

    def event(kind: str, **extra) -> None:
        with events_lock:
            events.write(json.dumps({"node": local.node["instance"], "event": kind, "at": time.time(), **extra}) + "\n")

    # Each node's calls leave from its own address (as on its own instance): the metadata
    # service and the collector tell nodes apart by it.
    real_init = http.client.HTTPConnection.__init__

    def from_node(self, *args, **kwargs):
        if kwargs.get("source_address") is None and getattr(local, "node", None):
            kwargs["source_address"] = (local.node["address"], 0)
        real_init(self, *args, **kwargs)

    http.client.HTTPConnection.__init__ = from_node  # type: ignore[method-assign]
    # boto3's default session is not safe to make clients from in several threads at once.
    client_lock = threading.Lock()
    real_client = boto3.client

    def one_at_a_time(*args, **kwargs):
        with client_lock:
            return real_client(*args, **kwargs)

    boto3.client = one_at_a_time
    agent.load_facts = lambda: local.facts

    class PerNode(dict):
        """The agent's module-level memo of the controller's address, one per node here
        (on a node, the watch's process holds it alone)."""

        def __contains__(self, name) -> bool:
            return super().__contains__((local.node["instance"], name))

        def __getitem__(self, name):
            return super().__getitem__((local.node["instance"], name))

        def __setitem__(self, name, value) -> None:
            super().__setitem__((local.node["instance"], name), value)

    agent._collector_at = PerNode()
    agent.log = lambda message: print(f"{local.node['instance']}: {message}", flush=True)
    pyenv.log = agent.log

    # systemd's part: the node's ipengine units, and stopping them on a drain.
    def engines_now(facts: dict) -> dict:
        return {"running": host.running(local.node["instance"]), "expected": facts["engines_per_node"]}

    def drain(facts: dict, reason: str) -> None:
        event("drain_seen", reason=reason)
        host.stop(local.node["instance"])
        event("stopped")
        local.state["stop_after"] = time.monotonic() + 30  # the instance goes once its hook is done

    agent.engines_now = engines_now
    agent.drain = drain

    def node(entry: dict) -> None:
        local.node = entry
        root = Path(spec["work"]) / entry["instance"]
        local.facts = {
            **spec["facts"],
            "profile_dir": str(root / "profile"),
            "node_state_dir": str(root / "root-state"),
            "boot_finished": str(root / "boot-finished"),
        }
        time.sleep(max(0.0, entry["boot_at"] - time.time()))
        event("boot")
        stop = threading.Event()
        # The watch starts with the boot (bootstrap.sh), its first record says "booting".
        watch = threading.Thread(target=watching, args=(entry, local.facts, stop), daemon=True)
        watch.start()
        pyenv.download_runtime(local.facts)
        agent.wait_connection(timeout=1800, root=True)  # ipfleet-connection.service
        for _ in range(local.facts["engines_per_node"]):  # each ipengine unit's ExecStartPre
            agent.wait_connection(timeout=120, fresh_within=60)
        engine_file = Path(local.facts["profile_dir"]) / "security" / "ipcontroller-engine.json"
        registered = host.start(entry["instance"], local.facts["engines_per_node"], engine_file)
        event("engines", registered=registered)
        Path(local.facts["boot_finished"]).touch()

    def watching(entry: dict, facts: dict, stop: threading.Event) -> None:
        state: dict = {"stop_after": None}
        local.node, local.facts, local.state = entry, facts, state

        def until_gone() -> None:
            while not stop.wait(1):
                if state["stop_after"] and time.monotonic() > state["stop_after"]:
                    stop.set()

        threading.Thread(target=until_gone, daemon=True).start()
        agent.watch(interval=5.0, stop=stop)
        agent.forget()  # the shutdown unit's last word
        event("gone")

    for entry in spec["nodes"]:
        threading.Thread(target=node, args=(entry,), daemon=True).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait(spec["deadline"] - time.time())
    events.flush()
    os._exit(0)


# -- the run ----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


def rates(calls: list[dict], start: float, end: float) -> dict[str, dict]:
    """Per API: the busiest WINDOW seconds' rate and the mean between START and END."""
    per: dict[str, list[float]] = {}
    for c in calls:
        if start <= c["at"] <= end:
            per.setdefault(c["api"], []).append(c["at"])
    found = {}
    for api, times in per.items():
        buckets: dict[int, int] = {}
        for t in times:
            buckets[int((t - start) // WINDOW)] = buckets.get(int((t - start) // WINDOW), 0) + 1
        found[api] = {
            "peak_per_s": round(max(buckets.values()) / WINDOW, 2),
            "mean_per_s": round(len(times) / max(1.0, end - start), 3),
            "calls": len(times),
        }
    return found


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args) -> dict:
    import boto3
    from scale import controller_config, unit_descriptor_limit

    from ipfleet import aws
    from ipfleet.node_status import read_all_records

    sh("ip", "link", "set", "lo", "up")
    add_addresses([CONTROLLER, METADATA_ADDRESS, LAPTOP])  # the controller's first: its private address
    work = Path(tempfile.mkdtemp(prefix="ipfleet-budget-"))
    processes = Processes(work)
    env = {
        "AWS_ACCESS_KEY_ID": "budget",
        "AWS_SECRET_ACCESS_KEY": "budget",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(work / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",  # botocore's own look for credentials (the env has them)
        "IPFLEET_METADATA_URL": f"http://{METADATA_ADDRESS}/latest",
        "PYTHONPATH": f"{PROJECT / 'bootstrap'}:{PROJECT}:{HERE.parent}",
    }
    os.environ.update(env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict = {"nodes": args.nodes, "engines_per_node": args.engines_per_node}
    try:
        moto_port = free_port()
        processes.start(
            "moto", [sys.executable, "-m", "ipfleet.twin.moto_server", "-H", "127.0.0.1", "-p", str(moto_port)]
        )
        moto = f"http://127.0.0.1:{moto_port}"
        wait_for("moto", lambda: _answers(f"{moto}/moto-api/"), 60)
        stack = make_stack(moto, args.nodes, work)
        say(f"stack made in moto: {args.nodes} engine instances in {stack['group']}")
        add_addresses([a for _, a in stack["instances"]])
        quotas_file = work / "quotas.json"
        quotas_file.write_text(json.dumps(scaled_quotas(args.nodes)))
        calls_file = work / "calls.jsonl"
        proxy = processes.start(
            "proxy", [sys.executable, "-m", "ipfleet.twin.throttling", moto, str(quotas_file), str(calls_file)]
        )
        proxy_url = wait_for("the proxy", lambda: (work / "proxy.log").read_text().strip(), 30)
        metadata_file = work / "metadata.json"
        entries = {a: metadata_entry(i, a, "engine") for i, a in stack["instances"]}
        # The controller's processes reach the metadata from whichever local address the kernel picks.
        controller_entry = metadata_entry("i-0c0a7e0011e70000", CONTROLLER, "controller")
        for address in (CONTROLLER, "127.0.0.1", METADATA_ADDRESS):
            entries[address] = controller_entry
        metadata_file.write_text(json.dumps(entries))
        processes.start(
            "metadata", [sys.executable, "-m", "ipfleet.twin.instance_metadata", str(metadata_file), "--port", "80"]
        )

        # The controller, as its user data starts it.
        limit = unit_descriptor_limit("example")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        (work / "controller").mkdir()
        profile = work / "controller" / "profile"
        profile.mkdir()
        (profile / "ipcontroller_config.py").write_text(controller_config("example", work / "controller"))
        processes.start(
            "ipcontroller",
            [sys.executable, "-m", "ipyparallel.controller", f"--profile-dir={profile}", "--ip=127.0.0.1"],
            {"IPYTHONDIR": str(work / "ipython")},
            limit=min(limit, hard),
        )
        security = profile / "security"
        wait_for("ipcontroller", lambda: (security / "ipcontroller-engine.json").exists(), 60)
        records_port = free_port()
        boot_finished = work / "controller" / "boot-finished"
        boot_finished.touch()
        controller_facts = {
            "role": "controller",
            "stack": STACK,
            "region": REGION,
            "aws_endpoint_url": proxy_url,
            "access": "ssm",
            "login_user": "ipfleet-admin",
            "profile_dir": str(profile),
            "node_state_dir": str(work / "controller" / "root-state"),
            "boot_finished": str(boot_finished),
            "runtime": stack["runtime"],
            "records_address": CONTROLLER,
            "records_port": records_port,
            "state_dir": str(work / "controller" / "state"),
            # The keeper as a stack without autoscaling has it (it still looks at the group).
            "keeper": {
                "idle_minutes": 60,
                "min_engine_nodes": 0,
                "autoscale": False,
                "tasks_per_engine": 1,
                "cooldown_seconds": 300,
                "ping_ms": 1000,
            },
        }
        facts_file = work / "controller" / "node.json"
        facts_file.write_text(json.dumps(controller_facts))
        node_env = {"IPFLEET_NODE_FACTS": str(facts_file)}
        agent = [sys.executable, "-m", "ipfleet_node"]
        processes.start("collect", [*agent, "collect"], node_env)
        publish = processes.start("publish", [*agent, "publish", "--timeout", "60"], node_env)
        if publish.wait(120) != 0:
            raise RuntimeError(f"publish failed: {work / 'publish.log'}")
        processes.start("controller-watch", [*agent, "watch"], node_env)
        processes.start("keeper", [sys.executable, "-m", "ipfleet_node.keeper"], node_env)

        # The engine nodes, booting over the launch window.
        start = time.time() + 5
        boots = {i: start + random.uniform(0, args.boot_window) for i, _ in stack["instances"]}
        engine_facts = {
            "role": "engine",
            "stack": STACK,
            "region": REGION,
            "aws_endpoint_url": proxy_url,
            "engines_per_node": args.engines_per_node,
            "fleet_nodes": args.nodes,
            "records_port": records_port,
            "runtime": stack["runtime"],
        }
        events_file = work / "events.jsonl"
        deadline = time.time() + 3600
        nodes = [{"instance": i, "address": a, "boot_at": boots[i]} for i, a in stack["instances"]]
        for index in range(0, len(nodes), NODES_PER_WORKER):
            spec = work / f"worker-{index}.json"
            spec.write_text(
                json.dumps(
                    {
                        "nodes": nodes[index : index + NODES_PER_WORKER],
                        "facts": engine_facts,
                        "work": str(work / "nodes"),
                        "events": str(events_file),
                        "deadline": deadline,
                    }
                )
            )
            processes.start(f"worker-{index}", [sys.executable, str(HERE), "--worker", str(spec)])
        say(f"{args.nodes} engine nodes boot within {args.boot_window} s of {time.strftime('%H:%M:%S')}")

        # The laptop: `ipfleet status`'s read, every POLL_SECONDS, through the quotas, from
        # an address of its own (this process's other calls go to moto itself).
        os.environ["AWS_ENDPOINT_URL"] = proxy_url
        _calls_from(LAPTOP)
        ssm, s3 = aws.client("ssm", REGION), aws.client("s3", REGION)
        seen: dict[str, float] = {}
        laptop_stop = threading.Event()

        def laptop() -> None:
            while not laptop_stop.wait(POLL_SECONDS):
                try:
                    found = read_all_records(ssm, s3, STACK)
                except Exception as e:  # throttled past its bound: said, and polled again
                    say(f"status: {type(e).__name__}: {e}")
                    continue
                now = time.time()
                for record in found.valid:
                    seen.setdefault(record.instance_id, now)

        threading.Thread(target=laptop, daemon=True).start()
        said = [time.monotonic()]

        def all_visible_yet() -> bool:
            count = len([i for i in boots if i in seen])
            if time.monotonic() - said[0] > 30:
                say(f"{count} of {args.nodes} nodes visible in status")
                said[0] = time.monotonic()
            return count == args.nodes

        wait_for("every node visible in status", all_visible_yet, args.boot_window + 420, every=2)
        all_visible = time.time()
        visible = [seen[i] - boots[i] for i in boots]
        report["visible_p99_s"] = percentile(visible, 99)
        report["visible_max_s"] = round(max(visible), 1)
        say(f"every node visible; p99 {report['visible_p99_s']} s after its boot")
        engines_up = wait_for(
            "every engine registered",
            lambda: _registered(profile) >= args.nodes * args.engines_per_node and time.time(),
            300,
            every=1,
        )
        report["all_registered_s"] = round(engines_up - start, 1)

        # Steady state, then the burst, with every engine busy.
        time.sleep(args.steady)
        steady_end = time.time()
        from ipfleet.fleet_client import FleetClient

        client = FleetClient(str(security / "ipcontroller-client.json"))
        view = client.load_balanced_view()
        engines = args.nodes * args.engines_per_node
        tasks = engines * max(1, int((args.drain_window + 60) // args.task_seconds))
        results = view.map_async(time.sleep, [args.task_seconds] * tasks)
        say(f"{tasks} tasks of {args.task_seconds} s sent to {engines} engines")
        time.sleep(args.task_seconds)
        autoscaling = boto3.client("autoscaling", region_name=REGION, endpoint_url=moto)
        notices: dict[str, float] = {}
        steps = 20
        per_step = max(1, args.drain // steps)
        desired = args.nodes
        for _ in range(steps):
            if len(notices) >= args.drain:
                break
            desired -= min(per_step, args.drain - len(notices))
            autoscaling.set_desired_capacity(AutoScalingGroupName=stack["group"], DesiredCapacity=desired)
            group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[stack["group"]])
            leaving = [
                i["InstanceId"]
                for i in group["AutoScalingGroups"][0]["Instances"]
                if i["LifecycleState"] == "Terminating:Wait" and i["InstanceId"] not in notices
            ]
            now = time.time()
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 120))
            for instance in leaving:
                address = next(a for i, a in stack["instances"] if i == instance)
                entries[address] = {
                    **entries[address],
                    "spot/instance-action": json.dumps({"action": "terminate", "time": at}),
                    "autoscaling/target-lifecycle-state": "Terminated",
                }
                notices[instance] = now
            _write_atomically(metadata_file, json.dumps(entries))  # the service re-reads it any time
            time.sleep(args.drain_window / steps)
        say(f"{len(notices)} nodes noticed within {args.drain_window} s")
        # AWS goes on with a hook's default result once its timeout passes: so does the run.
        wait_for(
            "the drained nodes' hooks",
            lambda: _hooks_done(autoscaling, stack["group"], notices, HOOK_TIMEOUT),
            HOOK_TIMEOUT + 120,
            every=2,
        )
        drained_end = time.time()
        results.wait(timeout=args.task_seconds * 4 + 600)
        lost = tasks
        if results.ready():
            try:
                lost = tasks - len(results.get())
            except Exception as e:
                say(f"the tasks failed: {type(e).__name__}: {e}")
        report["tasks"] = tasks
        report["lost_tasks"] = lost
        client.close()
        laptop_stop.set()
        processes.stop(proxy.pid)
        calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
        events = [json.loads(line) for line in events_file.read_text().splitlines()]
        when = {(e["node"], e["event"]): e["at"] for e in events}
        up = [when[(i, "engines")] - when[(i, "boot")] for i in boots if (i, "engines") in when and (i, "boot") in when]
        report["engines_p99_s"] = percentile(up, 99)  # a node's boot to its engines registered
        stops = [when[(i, "stopped")] - t for i, t in notices.items() if (i, "stopped") in when]
        hooks: dict[str, float] = {}
        for c in calls:
            if c["api"] == "autoscaling:CompleteLifecycleAction" and not c["throttled"] and c.get("instance"):
                hooks.setdefault(c["instance"], c["at"])
        hook_times = [hooks[i] - t for i, t in notices.items() if i in hooks]
        report["drain_nodes"] = len(notices)
        report["drain_stopped"] = len(stops)
        report["drain_stop_p99_s"] = percentile(stops, 99)
        report["hooks_completed_by_collector"] = len(hook_times)
        report["hooks_timed_out"] = len(_timed_out)
        hook_times += [float(HOOK_TIMEOUT)] * len(_timed_out)  # counted, at the timeout
        report["hook_p99_s"] = percentile(hook_times, 99)
        phases = {
            "cold": rates(calls, start, all_visible),
            "steady": rates(calls, all_visible, steady_end),
            "drain": rates(calls, steady_end, drained_end),
            "all": rates(calls, start, drained_end),
        }
        report["phases_s"] = {
            "cold": round(all_visible - start),
            "steady": round(steady_end - all_visible),
            "drain": round(drained_end - steady_end),
        }
        quota_of = {api: q for q in scaled_quotas(args.nodes) for api in q["apis"]}
        report["apis"] = [
            {
                "api": api,
                "peak_per_s": whole["peak_per_s"],
                "mean_per_s": whole["mean_per_s"],
                "cold_mean_per_s": phases["cold"].get(api, {}).get("mean_per_s", 0),
                "steady_mean_per_s": phases["steady"].get(api, {}).get("mean_per_s", 0),
                "drain_peak_per_s": phases["drain"].get(api, {}).get("peak_per_s", 0),
                "throttled": sum(1 for c in calls if c["api"] == api and c["throttled"]),
                "calls_by": _callers(calls, api, start, drained_end),
                "quota_per_s": quota_of[api]["rate"] if api in quota_of else None,
                "quota_assumed": bool(quota_of.get(api, {}).get("assumed")),
            }
            for api, whole in sorted(phases["all"].items())
        ]
        return report
    finally:
        processes.stop_all()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _calls_from(address: str) -> None:
    import http.client

    real_init = http.client.HTTPConnection.__init__

    def init(self, *args, **kwargs):
        if kwargs.get("source_address") is None:
            kwargs["source_address"] = (address, 0)
        real_init(self, *args, **kwargs)

    http.client.HTTPConnection.__init__ = init  # type: ignore[method-assign]


def _callers(calls: list[dict], api: str, start: float, end: float) -> dict[str, int]:
    """Who made API's calls: the engine nodes, the controller's processes, the laptop."""
    by = {"nodes": 0, "controller": 0, "laptop": 0}
    for c in calls:
        if c["api"] == api and start <= c["at"] <= end:
            source = c.get("source")
            by["laptop" if source == LAPTOP else "controller" if source in (CONTROLLER, "127.0.0.1") else "nodes"] += 1
    return by


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False


def _registered(profile: Path) -> int:
    try:
        return len(json.loads((profile / "log" / "engines.json").read_text())["engines"])
    except (OSError, ValueError, KeyError):
        return 0


def _hooks_done(autoscaling, group: str, notices: dict[str, float], timeout: float) -> bool:
    """Whether no drained node's hook waits any more; a hook past its timeout is completed
    here, as AWS completes it, with its default result (listed in _timed_out)."""
    from bootstrap.ipfleet_node import wire

    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
    waiting = [i["InstanceId"] for i in found["Instances"] if i["LifecycleState"] == "Terminating:Wait"]
    for instance in waiting:
        if time.time() - notices.get(instance, time.time()) > timeout:
            autoscaling.complete_lifecycle_action(
                AutoScalingGroupName=group,
                LifecycleHookName=wire.DRAIN_HOOK,
                InstanceId=instance,
                LifecycleActionResult="CONTINUE",
            )
            _timed_out.append(instance)
    return not waiting


def print_table(report: dict) -> None:
    print(
        f"{report['nodes']} engine nodes ({report['engines_per_node']} engines each); phases: "
        + ", ".join(f"{k} {v} s" for k, v in report["phases_s"].items())
    )
    print(f"busiest {WINDOW} s per API (calls a second), means by phase, against the account's quota")
    print(
        "| API | peak/s | mean/s | cold mean/s | steady mean/s | throttled | quota/s | peak / quota "
        "| calls: nodes / controller / laptop |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for a in report["apis"]:
        quota = a["quota_per_s"]
        share = f"{a['peak_per_s'] / quota:.2f}" if quota else "-"
        print(
            f"| {a['api']} | {a['peak_per_s']} | {a['mean_per_s']} | {a['cold_mean_per_s']} | "
            f"{a['steady_mean_per_s']} | {a['throttled']} | "
            f"{quota if quota is not None else 'none'}{' (assumed)' if a['quota_assumed'] else ''} | {share} | "
            f"{a['calls_by']['nodes']} / {a['calls_by']['controller']} / {a['calls_by']['laptop']} |"
        )
    print(
        f"\nvisible in status: p99 {report['visible_p99_s']} s after boot (max {report['visible_max_s']} s); "
        f"a node's engines registered p99 {report['engines_p99_s']} s after its boot; "
        f"every engine registered {report['all_registered_s']} s after the first boot"
    )
    print(
        f"drain burst: {report['drain_nodes']} nodes noticed in {report.get('drain_window', 60)} s; engines stopped "
        f"p99 {report['drain_stop_p99_s']} s after the notice ({report['drain_stopped']} nodes); drain hook "
        f"completed p99 {report['hook_p99_s']} s ({report['hooks_completed_by_collector']} by the collector, "
        f"{report['hooks_timed_out']} timed out); "
        f"{report['lost_tasks']} of {report['tasks']} tasks lost"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--engines-per-node", type=int, default=2)
    parser.add_argument("--boot-window", type=float, default=60.0, help="seconds over which the nodes boot")
    parser.add_argument("--steady", type=float, default=120.0, help="seconds of steady state measured")
    parser.add_argument("--drain", type=int, default=200, help="nodes taken out in the burst")
    parser.add_argument("--drain-window", type=float, default=60.0)
    parser.add_argument("--task-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if os.environ.get(INSIDE) != "1":
        enter_namespace(sys.argv[1:])
    report = run(args)
    report["drain_window"] = args.drain_window
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
