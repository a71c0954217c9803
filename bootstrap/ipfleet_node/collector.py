"""The controller's record collector: each engine node reports its record here, and the
controller writes it under /ipfleet/STACK/nodes/ID. Engine nodes hold no right to any
record parameter, so none can write, replace or delete another's.

A report is taken only when the network says who sent it:
- from a source port below 1024, which only root on the sending node can bind (NFS's
  "secure" rule): user code on an engine node cannot report for it;
- from the private address EC2 gives one running engine instance of this stack (the
  VPC drops packets whose source address is not the sending instance's), and that
  instance is the one the record speaks for.
The record itself is checked for its size, its shape and the same instance id and
address; the laptop checks its fields again (ipfleet/node_status.py).

A drained node's record also lets it go: when Auto Scaling holds the instance in its
drain hook (Terminating:Wait), the collector completes the hook for it, so engine nodes
need no Auto Scaling rights at all (none can let another go before it has drained).

Runs on the controller as the service user, with the controller's role (EC2's view of
the instances, the records path in SSM, its group's hook). `python -m ipfleet_node collect`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .wire import DRAIN_HOOK, RECORD_FORMAT, ROLE_TAG, STACK_TAG

# SSM's standard parameters hold 4 KB: a record is no longer.
RECORD_LIMIT = 4096
# A source port below this one is bound by root on the sender.
PRIVILEGED_PORTS = 1024
# EC2's answer about an address holds this long: addresses are reused only after their
# instance terminated, and a terminated node's record is reaped.
IDENTITY_TTL = 300.0
# A sender EC2 named otherwise is looked up again at most this often.
RECHECK = 10.0
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
PATH_PREFIX = "/nodes/"


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Report:
    method: str  # PUT (a record) or DELETE (the node is going)
    path: str  # /nodes/INSTANCE-ID
    address: str  # the peer's address and port, as the kernel saw them
    port: int
    body: bytes = b""


class Collector:
    """What the collector decides; EC2 and SSM are boto3 clients (the controller's role)."""

    def __init__(
        self,
        stack: str,
        records_path: str,
        ec2,
        ssm,
        autoscaling=None,
        clock: Callable[[], float] = time.monotonic,
        log=print,
    ):
        self.stack = stack
        self.records_path = records_path
        self.ec2 = ec2
        self.ssm = ssm
        self.autoscaling = autoscaling  # None: drain hooks are not the collector's to complete
        self.clock = clock
        self.log = log
        self._known: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def instance_at(self, address: str, fresh: bool = False) -> str | None:
        """The stack's engine instance EC2 gives ADDRESS, if exactly one (cached a while;
        FRESH: ask again, unless asked in the last RECHECK seconds)."""
        with self._lock:
            known = self._known.get(address)
        if known and self.clock() - known[1] < (RECHECK if fresh else IDENTITY_TTL):
            return known[0]
        found = self.ec2.describe_instances(
            Filters=[
                {"Name": "private-ip-address", "Values": [address]},
                {"Name": f"tag:{STACK_TAG}", "Values": [self.stack]},
                {"Name": f"tag:{ROLE_TAG}", "Values": ["engine"]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]
        )
        ids = [i["InstanceId"] for r in found.get("Reservations", []) for i in r.get("Instances", [])]
        instance = ids[0] if len(ids) == 1 else None
        with self._lock:
            self._known[address] = (instance, self.clock())
        return instance

    def handle(self, report: Report) -> str:
        """Take REPORT or raise Refused; returns what was done, for the log."""
        if report.port >= PRIVILEGED_PORTS:
            raise Refused(403, f"from port {report.port}: only root on a node reports (a port below 1024)")
        if not report.path.startswith(PATH_PREFIX):
            raise Refused(404, "records are under /nodes/")
        claimed = report.path.removeprefix(PATH_PREFIX)
        if not _is_instance_id(claimed):
            raise Refused(400, "not an instance id")
        instance = self.instance_at(report.address)
        if instance != claimed:  # a new instance may have the address of one that went
            instance = self.instance_at(report.address, fresh=True)
        if instance is None:
            raise Refused(403, f"EC2 has no running engine instance of stack {self.stack} at {report.address}")
        if instance != claimed:
            raise Refused(403, f"{report.address} is {instance}, which may not speak for {claimed}")
        name = f"{self.records_path}/{instance}"
        if report.method == "DELETE":
            try:
                self.ssm.delete_parameter(Name=name)
            except self.ssm.exceptions.ParameterNotFound:
                pass
            with self._lock:
                self._known.pop(report.address, None)  # the address may go to another instance
            return f"deleted {name}"
        text = self.checked(report, instance)
        self.ssm.put_parameter(Name=name, Value=text, Type="String", Overwrite=True)
        if json.loads(text).get("phase") == "drained":
            return f"wrote {name}" + self.release(instance)
        return f"wrote {name}"

    def release(self, instance: str) -> str:
        """A drained node's drain hook, completed if Auto Scaling is holding it there."""
        if self.autoscaling is None:
            return ""
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"]
        if not found or found[0].get("LifecycleState") != "Terminating:Wait":
            return "; not held in its drain hook"
        group = found[0]["AutoScalingGroupName"]
        self.autoscaling.complete_lifecycle_action(
            AutoScalingGroupName=group,
            LifecycleHookName=DRAIN_HOOK,
            InstanceId=instance,
            LifecycleActionResult="CONTINUE",
        )
        return f"; completed its drain hook {DRAIN_HOOK} in {group}"

    def checked(self, report: Report, instance: str) -> str:
        """The record as the node sent it, once it says what the network says."""
        if len(report.body) > RECORD_LIMIT:
            raise Refused(413, f"{len(report.body)} bytes: a record holds {RECORD_LIMIT}")
        try:
            record = json.loads(report.body)
        except ValueError:
            raise Refused(400, "not JSON") from None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise Refused(400, f"not a record of format {RECORD_FORMAT}")
        if record.get("role") != "engine":
            raise Refused(403, "only engine nodes report here")
        if record.get("instanceId") != instance or record.get("address") != report.address:
            raise Refused(403, f"the record does not speak for {instance} at {report.address}")
        return report.body.decode()

    def reap(self) -> list[str]:
        """Delete the records of instances EC2 no longer runs (a node that went without
        saying so: lost power, or terminated before its shutdown ran)."""
        names = {}
        for page in self.ssm.get_paginator("get_parameters_by_path").paginate(Path=self.records_path):
            for parameter in page.get("Parameters", []):
                names[parameter["Name"].rsplit("/", 1)[-1]] = parameter["Name"]
        if not names:
            return []
        alive: set[str] = set()
        ids = sorted(names)
        for start in range(0, len(ids), 200):  # EC2 takes up to 200 values in a filter
            found = self.ec2.describe_instances(
                Filters=[
                    {"Name": "instance-id", "Values": ids[start : start + 200]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )
            alive |= {i["InstanceId"] for r in found.get("Reservations", []) for i in r.get("Instances", [])}
        gone = [names[i] for i in ids if i not in alive]
        for name in gone:
            try:
                self.ssm.delete_parameter(Name=name)
            except self.ssm.exceptions.ParameterNotFound:
                pass
        return gone


def _is_instance_id(text: str) -> bool:
    tail = text.removeprefix("i-")
    return text.startswith("i-") and 8 <= len(tail) <= 17 and all(c in "0123456789abcdef" for c in tail)


def handler_for(collector: Collector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a node that stops halfway holds a thread no longer than this

        def _report(self, method: str) -> None:
            address, port = self.client_address[:2]
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > RECORD_LIMIT:
                    self.rfile.read(min(length, 16 * RECORD_LIMIT))  # so the answer is not lost in a reset
                    raise Refused(413, f"{length} bytes: a record holds {RECORD_LIMIT}")
                body = self.rfile.read(length) if length > 0 else b""
                done = collector.handle(Report(method, self.path, address, port, body))
                self.send_response(204)
                self.end_headers()
                collector.log(f"{address}: {done}")
            except Refused as e:
                collector.log(f"{address}:{port} {method} {self.path[:80]!r} refused: {e.reason}")
                self._answer(e.status, e.reason)
            except Exception as e:  # EC2 or SSM failing: the node tries again later
                collector.log(f"{address}: {method} failed: {type(e).__name__}: {e}")
                self._answer(503, f"{type(e).__name__}")

        def _answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
            self._report("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._report("DELETE")

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass  # every report is logged once, above

    return Handler


def serve(collector: Collector, address: str, port: int, reap_every: float = 60.0) -> None:
    """Serve reports on ADDRESS:PORT for good; reap the records of gone instances."""
    server = ThreadingHTTPServer((address, port), handler_for(collector))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    collector.log(f"collecting engine nodes' records on {address}:{port}")
    while True:
        time.sleep(reap_every)
        try:
            for name in collector.reap():
                collector.log(f"reaped {name}: its instance is gone")
        except Exception as e:
            collector.log(f"could not reap records: {type(e).__name__}: {e}")
