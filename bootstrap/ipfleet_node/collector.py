"""The controller's record collector: each engine node reports its record here, and the
controller keeps every engine node's record in one document in the stack's bucket
(RecordStore), which `ipfleet status` and `scale --wait` read with one GET whatever the
fleet's size. Engine nodes hold no right to it, so none can write, replace or delete
another's record.

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
Its Auto Scaling calls go in turn, within half the rate assumed for the account, and
drained nodes reporting together share one look at their group: a drain burst of
hundreds of nodes is not throttled.

Runs on the controller as the service user, with the controller's role (EC2's view of
the instances, the records document, its group's hook). `python -m ipfleet_node collect`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .wire import DRAIN_HOOK, RECORD_FORMAT, RECORDS_FORMAT, ROLE_TAG, STACK_TAG, is_instance_id

# A record is at most 4 KB, as the controller's own in SSM (the agent cuts its log tail to fit).
RECORD_LIMIT = 4096
# A source port below this one is bound by root on the sender.
PRIVILEGED_PORTS = 1024
# EC2's answer about an address holds this long: addresses are reused only after their
# instance terminated, and a terminated node's record is reaped.
IDENTITY_TTL = 300.0
# EC2 is asked again for an unknown or stale sender at most this often.
LOOK_AGAIN = 2.0
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
# How many removed nodes the store remembers, to refuse their late reports.
FORGOTTEN_KEPT = 10_000
PATH_PREFIX = "/nodes/"
# Auto Scaling publishes no rate for its calls; ipfleet assumes 10 a second for each
# (as EC2's) and the collector keeps to half of that, all its calls together: a drain
# burst of hundreds of nodes waits its turn here rather than be throttled.
AUTOSCALING_CALLS_PER_SECOND = 5.0
# A drained node's report waits at most this long for its turn; past it, the node is
# answered 202 and says it again a few seconds later.
AUTOSCALING_WAIT = 5.0
# DescribeAutoScalingInstances takes up to 50 instance ids.
DESCRIBE_BATCH = 50


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


class RecordStore:
    """Every engine node's record, in memory and in one S3 object (wire.RECORDS_KEY in the
    stack's bucket): written at most every few seconds, read back when the collector
    starts again (a restarted or replaced controller keeps what the nodes said)."""

    def __init__(self, s3, bucket: str, key: str):
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.records: dict[str, dict] = {}
        self.forgotten: dict[str, str] = {}  # instance -> when its record was removed
        self.changed = False
        self.lock = threading.Lock()

    def load(self) -> int:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return 0
        try:
            nodes = json.loads(body).get("nodes", {})
        except (ValueError, AttributeError):
            return 0  # not ours: written anew at the next change
        with self.lock:
            self.records = {k: v for k, v in nodes.items() if is_instance_id(k) and isinstance(v, dict)}
        return len(self.records)

    def put(self, instance: str, record: dict) -> bool:
        """Keep RECORD unless it is older than what is held: a node's reports may arrive out
        of order (one it gave up on is still on its way), and a late one must not undo a
        later one, nor bring back a node that has gone. False if it was older."""
        updated = str(record.get("updated") or "")
        with self.lock:
            held = self.records.get(instance)
            newest = max(str((held or {}).get("updated") or ""), self.forgotten.get(instance, ""))
            if updated < newest:
                return False
            self.records[instance] = record
            self.changed = True
        return True

    def remove(self, instances: list[str]) -> list[str]:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.lock:
            gone = [i for i in instances if self.records.pop(i, None) is not None]
            # Reports sent before now are late: the node has gone (bounded: the newest only).
            self.forgotten.update((i, now) for i in instances)
            while len(self.forgotten) > FORGOTTEN_KEPT:
                self.forgotten.pop(next(iter(self.forgotten)))
            self.changed = self.changed or bool(gone)
        return gone

    def ids(self) -> list[str]:
        with self.lock:
            return sorted(self.records)

    def flush(self) -> bool:
        """Write the document if anything changed since the last write; True if written."""
        with self.lock:
            if not self.changed:
                return False
            document = {
                "format": RECORDS_FORMAT,
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                "nodes": dict(self.records),
            }
            self.changed = False
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=json.dumps(document).encode(),
                ContentType="application/json",
                ServerSideEncryption="AES256",
            )
        except Exception:
            with self.lock:
                self.changed = True  # written at the next round
            raise
        return True


class Pacer:
    """Calls taken in turn, at most RATE a second. take(within) waits for the caller's
    turn, or says False at once if its turn is further than WITHIN seconds away."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / rate
        self.clock, self.sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def take(self, within: float) -> bool:
        with self._lock:
            now = self.clock()
            turn = max(now, self._next)
            if turn - now > within:
                return False
            self._next = turn + self.interval
        if turn > now:
            self.sleep(turn - now)
        return True


class NoTurn(Exception):
    """Auto Scaling's calls are queued past AUTOSCALING_WAIT."""


class Collector:
    """What the collector decides; EC2 and Auto Scaling are boto3 clients (the controller's role)."""

    def __init__(
        self,
        stack: str,
        store: RecordStore,
        ec2,
        autoscaling=None,
        clock: Callable[[], float] = time.monotonic,
        log=print,
    ):
        self.stack = stack
        self.store = store
        self.ec2 = ec2
        self.autoscaling = autoscaling  # None: drain hooks are not the collector's to complete
        self.clock = clock
        self.log = log
        self._known: dict[str, str | None] = {}  # address -> instance, as EC2 last said
        self._looked = float("-inf")  # when EC2 last said it
        self._lock = threading.Lock()
        self._looking = threading.Lock()
        self._pacer = Pacer(AUTOSCALING_CALLS_PER_SECOND, clock)
        self._wanted: set[str] = set()  # drained nodes whose hook is to be looked at
        self._hooks: dict[str, str | None] = {}  # what a shared look found for them
        self._asking = threading.Lock()

    def instance_at(self, address: str, fresh: bool = False) -> str | None:
        """The stack's running engine instance at ADDRESS, from EC2's view of all of them:
        one paged DescribeInstances for the whole fleet, asked again when an address is
        unknown or stale (FRESH), at most every LOOK_AGAIN seconds, so a thousand nodes
        arriving at once cost a few calls, not a thousand."""
        with self._lock:
            known, instance, looked = address in self._known, self._known.get(address), self._looked
        if known and not fresh and self.clock() - looked < IDENTITY_TTL:
            return instance
        with self._looking:  # one look at a time; those who waited use its answer
            if self._looked == looked and self.clock() - self._looked >= LOOK_AGAIN:
                self._look()
        with self._lock:
            return self._known.get(address)

    def _look(self) -> None:
        at: dict[str, list[str]] = {}
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{STACK_TAG}", "Values": [self.stack]},
                {"Name": f"tag:{ROLE_TAG}", "Values": ["engine"]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    if instance.get("PrivateIpAddress"):
                        at.setdefault(instance["PrivateIpAddress"], []).append(instance["InstanceId"])
        with self._lock:
            # An address two instances claim (never, in one VPC) speaks for neither.
            self._known = {address: ids[0] if len(ids) == 1 else None for address, ids in at.items()}
            self._looked = self.clock()

    def handle(self, report: Report) -> str:
        """Take REPORT or raise Refused; returns what was done, for the log."""
        return self.answer(report)[1]

    def answer(self, report: Report) -> tuple[int, str]:
        """Take REPORT or raise Refused: (the HTTP status to answer, what was done). 202: a
        drained node's record, taken, whose drain hook Auto Scaling does not hold yet (the
        node says again once it does); 204: done."""
        if report.port >= PRIVILEGED_PORTS:
            raise Refused(403, f"from port {report.port}: only root on a node reports (a port below 1024)")
        if not report.path.startswith(PATH_PREFIX):
            raise Refused(404, "records are under /nodes/")
        claimed = report.path.removeprefix(PATH_PREFIX)
        if not is_instance_id(claimed):
            raise Refused(400, "not an instance id")
        instance = self.instance_at(report.address)
        if instance != claimed:  # a new instance, or one with the address of one that went
            instance = self.instance_at(report.address, fresh=True)
        if instance is None:
            raise Refused(403, f"EC2 has no running engine instance of stack {self.stack} at {report.address}")
        if instance != claimed:
            raise Refused(403, f"{report.address} is {instance}, which may not speak for {claimed}")
        if report.method == "DELETE":
            # The address stays known: a report of this node's that arrives late is taken
            # and ignored (the store remembers the removal); another instance given the
            # address later does not match, and EC2 is asked again.
            self.store.remove([instance])
            return 204, f"forgot {instance}"
        record = self.checked(report, instance)
        if not self.store.put(instance, record):
            return 204, f"kept {instance}'s newer record (this one is from {record.get('updated')})"
        if record.get("phase") == "drained":
            held, done = self.release(instance)
            return (204 if held or self.autoscaling is None else 202), f"recorded {instance}{done}"
        return 204, f"recorded {instance}"

    def release(self, instance: str) -> tuple[bool, str]:
        """A drained node's drain hook, completed if Auto Scaling is holding it there:
        (whether it was held, what was done). Not held, or no turn for Auto Scaling's
        calls soon enough: the node is answered 202 and says it again."""
        if self.autoscaling is None:
            return False, ""
        try:
            group = self.hook_group(instance)
        except NoTurn:
            return False, "; Auto Scaling's calls are queued (the node says it again)"
        if group is None:
            return False, "; not held in its drain hook"
        if not self._pacer.take(AUTOSCALING_WAIT):
            return False, "; Auto Scaling's calls are queued (the node says it again)"
        try:
            self.autoscaling.complete_lifecycle_action(
                AutoScalingGroupName=group,
                LifecycleHookName=DRAIN_HOOK,
                InstanceId=instance,
                LifecycleActionResult="CONTINUE",
            )
        except self.autoscaling.exceptions.ClientError as e:
            # The node said it twice (its first report's answer was late): the first did it.
            if "No active Lifecycle Action" not in str(e):
                raise
            return True, f"; its drain hook in {group} was completed already"
        return True, f"; completed its drain hook {DRAIN_HOOK} in {group}"

    def hook_group(self, instance: str) -> str | None:
        """The group holding INSTANCE in its drain hook (Terminating:Wait), else None.
        Drained nodes reporting together share one DescribeAutoScalingInstances (up to 50
        ids): whoever asks takes the others' ids along, and they use its answer."""
        with self._lock:
            self._wanted.add(instance)
        with self._asking:
            with self._lock:
                if instance in self._hooks:
                    return self._hooks.pop(instance)
                others = sorted(self._wanted - {instance})[: DESCRIBE_BATCH - 1]
                self._wanted.difference_update([instance, *others])
            if not self._pacer.take(AUTOSCALING_WAIT):
                raise NoTurn()
            found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance, *others])
            held = {
                i["InstanceId"]: (i["AutoScalingGroupName"] if i.get("LifecycleState") == "Terminating:Wait" else None)
                for i in found["AutoScalingInstances"]
            }
            with self._lock:
                self._hooks.update({other: held.get(other) for other in others})
            return held.get(instance)

    def checked(self, report: Report, instance: str) -> dict:
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
        return record

    def reap(self) -> list[str]:
        """Forget the records of instances EC2 no longer runs (a node that went without
        saying so: lost power, or terminated before its shutdown ran)."""
        ids = self.store.ids()
        alive: set[str] = set()
        for start in range(0, len(ids), 200):  # EC2 takes up to 200 values in a filter
            found = self.ec2.describe_instances(
                Filters=[
                    {"Name": "instance-id", "Values": ids[start : start + 200]},
                    {"Name": "instance-state-name", "Values": LIVE_STATES},
                ]
            )
            alive |= {i["InstanceId"] for r in found.get("Reservations", []) for i in r.get("Instances", [])}
        return self.store.remove([i for i in ids if i not in alive])


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
                status, done = collector.answer(Report(method, self.path, address, port, body))
                self.send_response(status)
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


def serve(collector: Collector, address: str, port: int, flush_every: float = 2.0, reap_every: float = 60.0) -> None:
    """Serve reports on ADDRESS:PORT until SIGTERM: write the records document when it
    changed (at most every FLUSH_EVERY seconds, and once more on the way out), forget the
    records of gone instances."""
    loaded = collector.store.load()
    server = ThreadingHTTPServer((address, port), handler_for(collector))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    collector.log(f"collecting engine nodes' records on {address}:{port} ({loaded} kept from before)")
    next_reap = time.monotonic() + reap_every
    while not stopping.wait(flush_every):
        try:
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + reap_every
                for instance in collector.reap():
                    collector.log(f"forgot {instance}: EC2 no longer runs it")
            collector.store.flush()
        except Exception as e:  # S3 or EC2 failing: the next round tries again
            collector.log(f"could not write or reap the records: {type(e).__name__}: {e}")
    server.shutdown()
    collector.store.flush()
    collector.log("stopped; the records are written")
