"""ipfleet's agent on every node: how the controller and the engines find each other.

The controller makes the cluster's keys at its first boot (or restores them from
the stack's keys parameter), then publishes its connection info to the stack's
rendezvous parameter, an SSM SecureString; engines wait for it and start.
No secret ever travels in user data, and nobody SSHes in to hand files around.

Runs with the node's venv Python (boto3 is there). Reads its facts from
/etc/ipfleet/node.json, written by cloud-init. Every wait is bounded and logged.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import platform
import random
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from . import paths, wire
from .wire import CLIENT_FACING_PORTS, FORMAT, KEYS_FORMAT, PENDING, RECORD_FORMAT, engines_on

FACTS_FILE = Path(os.environ.get("IPFLEET_NODE_FACTS", "/etc/ipfleet/node.json"))
# EC2's instance metadata service (tests point this at a stand-in on loopback).
METADATA = os.environ.get("IPFLEET_METADATA_URL", "http://169.254.169.254/latest")
SSH_HOST_KEYS = Path("/etc/ssh")


def log(message: str) -> None:
    print(f"ipfleet-node: {message}", flush=True)


def load_facts() -> dict:
    return json.loads(FACTS_FILE.read_text())


# ipfleet's folders and files on a node (paths.py); a facts file may move one (the
# loopback tests keep theirs in a temporary folder).
NODE_PATHS = {
    "state_dir": paths.STATE_DIR,
    "node_state_dir": paths.NODE_STATE_DIR,
    "profile_dir": paths.PROFILE_DIR,
    "keys_file": paths.KEYS_FILE,
    "boot_finished": paths.BOOT_FINISHED,
}


# The stack's parameters, by the wire contract; a facts file may name others (tests do).
PARAMETERS = {
    "rendezvous_parameter": wire.connection_parameter,
    "keys_parameter": wire.keys_parameter,
    "controller_record_parameter": wire.controller_record_parameter,
    "keeper_parameter": wire.keeper_parameter,
    "notebook_parameter": wire.notebook_parameter,
}


def parameter(facts: dict, name: str) -> str:
    return facts.get(name) or PARAMETERS[name](facts["stack"])


def node_path(facts: dict, name: str) -> Path:
    return Path(facts.get(name) or NODE_PATHS[name])


def security_dir(facts: dict) -> Path:
    return node_path(facts, "profile_dir") / "security"


def aws_client(facts: dict, service: str, patient: bool = False):
    import boto3
    from botocore.config import Config

    # boto3 also honours AWS_ENDPOINT_URL; the facts file carries the stack's
    # endpoint override so every process on the node agrees on it.
    endpoint = facts.get("aws_endpoint_url") or None
    # botocore asks the metadata service for credentials once, with a 1 s timeout: on
    # a busy node that can miss, and the client stays without credentials for good.
    os.environ.setdefault("AWS_METADATA_SERVICE_TIMEOUT", "5")
    os.environ.setdefault("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "3")
    # AWS throttles per account: every call backs off with jitter, and gives up after a
    # bound (saying "reached max retries" in its error); PATIENT callers (a hundred nodes
    # booting at once share the account's few writes a second) also pace themselves.
    if patient:
        config = Config(retries={"mode": "adaptive", "total_max_attempts": 10})
    else:
        config = Config(retries={"mode": "standard", "total_max_attempts": 5})
    return boto3.client(service, region_name=facts["region"], endpoint_url=endpoint, config=config)


def ssm_client(facts: dict, patient: bool = False):
    return aws_client(facts, "ssm", patient)


def private_address() -> str:
    """The node's private IPv4 address: what engines and clients are told to dial."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet" and addr.get("local"):
                return addr["local"]
    raise SystemExit("ipfleet-node: no global IPv4 address on this node")


# A metadata session token is asked for once and used until shortly before it expires
# (as AWS advises): a watch that looks every few seconds asks for one value per look,
# not two requests. Each thread keeps its own (a token belongs to its caller).
TOKEN_SECONDS = 21600
_tokens = threading.local()


def _metadata_token(fresh: bool = False) -> str:
    token, expires = getattr(_tokens, "held", ("", 0.0))
    if fresh or time.monotonic() > expires - 60:
        token_request = urllib.request.Request(
            f"{METADATA}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_SECONDS)}
        )
        with urllib.request.urlopen(token_request, timeout=2) as response:
            token = response.read().decode()
        _tokens.held = (token, time.monotonic() + TOKEN_SECONDS)
    return token


# How often a metadata read is tried when the service does not answer (a busy node's
# service times out or refuses for a moment; AWS throttles it per instance): a value
# that exists must not be taken for one that does not.
METADATA_ATTEMPTS = 3


def instance_metadata(path: str) -> str | None:
    """One instance metadata value through IMDSv2 (the only version nodes allow). None
    when the node has no such value (404) or the service did not answer, after a few
    tries a fraction of a second apart."""
    for attempt in range(METADATA_ATTEMPTS):
        try:
            return _metadata_value(path)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no such value (no public address, no notice)
                return None
        except OSError:  # timed out, refused, reset: tried again
            pass
        if attempt + 1 < METADATA_ATTEMPTS:
            time.sleep(0.25 * 2**attempt * random.uniform(0.5, 1.0))
    return None


def _metadata_value(path: str) -> str | None:
    for fresh in (False, True):
        request = urllib.request.Request(
            f"{METADATA}/meta-data/{path}", headers={"X-aws-ec2-metadata-token": _metadata_token(fresh)}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.read().decode().strip() or None
        except urllib.error.HTTPError as e:
            if e.code != 401 or fresh:  # 401: the token is no longer good; ask for another, once
                raise
    return None


def host_keys() -> list[str]:
    """This node's SSH host public keys, so laptops can pin them (no trust on first use)."""
    return sorted(" ".join(p.read_text().split()[:2]) for p in SSH_HOST_KEYS.glob("ssh_host_*_key.pub"))


def _write_private(path: Path, text: str, group: str | None = None) -> None:
    """Owner-only from the first byte (readable by GROUP too, when root writes), and a
    new file renamed into place: never written through a link someone planted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    if group and os.geteuid() == 0:
        import grp

        os.fchown(fd, 0, grp.getgrnam(group).gr_gid)
        os.fchmod(fd, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def new_keys() -> dict:
    import zmq

    public, secret = zmq.curve_keypair()
    return {
        "format": KEYS_FORMAT,
        "hmac_key": secrets.token_hex(32),
        "curve_public_key": public.decode("ascii"),
        "curve_secret_key": secret.decode("ascii"),
        "notebook_token": secrets.token_urlsafe(32),
    }


def ensure_keys() -> None:
    """Controller: keep the local keys, else restore the stack's, else make and store new ones.

    Storing comes before using: a controller that could not save its keys
    fails here (and systemd retries) instead of running with keys nobody kept.
    """
    facts = load_facts()
    local = node_path(facts, "keys_file")
    if local.exists():
        log(f"keeping the keys in {local}")
        return
    client = ssm_client(facts)
    name = parameter(facts, "keys_parameter")
    try:
        stored = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except client.exceptions.ParameterNotFound:
        stored = PENDING
    if stored != PENDING:
        keys = json.loads(stored)
        if keys.get("format") != KEYS_FORMAT:
            raise SystemExit(f"ipfleet-node: {name} holds no ipfleet keys")
        log(f"restored the cluster's keys from {name}")
    else:
        keys = new_keys()
        client.put_parameter(Name=name, Value=json.dumps(keys), Type="SecureString", Overwrite=True)
        log(f"made new keys and stored them in {name}")
    # Root's file, which ipcontroller (the service user's group) reads and cannot change.
    _write_private(local, json.dumps(keys), facts.get("service_user"))


def load_keys(facts: dict) -> dict:
    return json.loads(node_path(facts, "keys_file").read_text())


def run_notebook() -> None:
    """Controller: JupyterLab on loopback, its token from the keys (not on the command line)."""
    facts = load_facts()
    os.environ["JUPYTER_TOKEN"] = load_keys(facts)["notebook_token"]
    lab = str(Path(sys.executable).with_name("jupyter-lab"))
    os.execv(
        lab, [lab, "--no-browser", "--ip=127.0.0.1", f"--port={facts['notebook_port']}", "--ServerApp.port_retries=0"]
    )


def engine_count(facts: dict) -> int:
    return engines_on(facts["engines_per_node"], os.cpu_count() or 1)


def _versions() -> dict:
    """What must match between a laptop and the engines for pickled functions to work."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("ipyparallel", "cloudpickle", "pyzmq"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def wait_for_files(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.stat().st_size > 0 for p in paths):
        if time.monotonic() > deadline:
            raise SystemExit(f"ipfleet-node: controller wrote no connection files in {timeout:.0f} s")
        time.sleep(0.5)


def publish(timeout: float) -> None:
    """Controller: publish the connection files the running ipcontroller wrote."""
    facts = load_facts()
    sec = security_dir(facts)
    client_file, engine_file = sec / "ipcontroller-client.json", sec / "ipcontroller-engine.json"
    log(f"waiting for {client_file} and {engine_file}")
    wait_for_files([client_file, engine_file], timeout)
    controller = {
        "address": private_address(),
        "public_address": instance_metadata("public-ipv4"),
        "instance_id": instance_metadata("instance-id"),
        "access": facts["access"],
        "versions": _versions(),
        # Who laptops log in as, with which key, and the host keys to pin.
        "ssh": {"user": facts["login_user"], "authorized_key": facts.get("ssh_public_key"), "host_keys": host_keys()},
    }
    document = {
        "format": FORMAT,
        "stack": facts["stack"],
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "controller": controller,
        "client": json.loads(client_file.read_text()),
        "engine": json.loads(engine_file.read_text()),
    }
    client = ssm_client(facts)
    if facts.get("notebook_port"):
        # The token has a parameter of its own: engines read this document, not that one.
        document["notebook"] = {"port": facts["notebook_port"]}
        token = load_keys(facts)["notebook_token"]
        client.put_parameter(
            Name=parameter(facts, "notebook_parameter"), Value=token, Type="SecureString", Overwrite=True
        )
    client.put_parameter(
        Name=parameter(facts, "rendezvous_parameter"),
        Value=json.dumps(document),
        Type="SecureString",
        Overwrite=True,
    )
    log(f"published connection info to {parameter(facts, 'rendezvous_parameter')}")


def read_published(client, name: str) -> dict | None:
    """The published document, or None while the controller has not published."""
    try:
        value = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except client.exceptions.ParameterNotFound:
        return None
    if value == PENDING:
        return None
    document = json.loads(value)
    if document.get("format") != FORMAT or "engine" not in document:
        raise ValueError(f"{name} holds no ipfleet connection info")
    return document


# SSM's reads are shared by the whole account (about 40 a second by default). A fleet
# whose nodes all look at the rendezvous at once (a cold start; a controller loss, when
# every engine restarts) spreads its looks at this rate, a quarter of the quota: laptops,
# the controller and the account's other users share the rest.
FLEET_READS_PER_SECOND = 10.0


def rendezvous_spread(facts: dict) -> float:
    """Seconds over which the fleet's nodes spread their looks at the rendezvous."""
    return max(0, int(facts.get("fleet_nodes") or 0)) / FLEET_READS_PER_SECOND


def root_copy(facts: dict) -> Path:
    """Root's copy of what the controller published for this node: the engines' section
    and the controller's address, in root's own folder (readable by the service user's
    group, never writable by it). Read once at boot by root (`wait-connection --root`),
    it serves the engines' first start and the watch's reports without asking AWS again."""
    return node_path(facts, "node_state_dir") / "connection.json"


def read_root_copy(facts: dict, fresh_within: float | None = None) -> dict | None:
    """Root's copy ({"controller": address, "engine": {...}}), if there, well-formed and
    (with FRESH_WITHIN) written that recently."""
    path = root_copy(facts)
    try:
        if fresh_within is not None and not 0 <= time.time() - path.stat().st_mtime < fresh_within:
            return None
        copy = json.loads(path.read_text())
        ipaddress.ip_address(copy["controller"])
        if not isinstance(copy["engine"], dict):
            return None
        return copy
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _look_in_turn(facts: dict, target: Path) -> bool:
    """A fleet booting at once, or every engine of it restarted after losing its
    controller: the nodes look at the rendezvous in turn. True if TARGET was refreshed
    meanwhile (by another engine of this node): no look needed."""
    spread = rendezvous_spread(facts)
    if spread <= 1:
        return False
    pause = random.uniform(0, spread)
    log(f"looking at the rendezvous in {pause:.0f} s (a fleet of {facts.get('fleet_nodes')} nodes looks in turn)")
    before = time.time()
    time.sleep(pause)
    # (File times come from a coarse clock, a few ms behind time.time().)
    return target.exists() and target.stat().st_mtime >= before - 1


def read_rendezvous(facts: dict, timeout: float) -> dict:
    """The published document, waited for (bounded), polling gently."""
    client = ssm_client(facts)
    name = parameter(facts, "rendezvous_parameter")
    spread = rendezvous_spread(facts)
    deadline = time.monotonic() + timeout
    delay, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            document = read_published(client, name)
        except Exception as e:  # AWS may be briefly unreachable while the node boots
            log(f"attempt {attempt}: cannot read {name} yet ({type(e).__name__}: {e})")
            document = None
            client = ssm_client(facts)  # a client that found no credentials never looks again
        if document is not None:
            return document
        if time.monotonic() + delay > deadline:
            raise SystemExit(f"ipfleet-node: nothing published at {name} after {timeout:.0f} s")
        log(f"attempt {attempt}: controller has not published yet; next look in {delay:.1f} s")
        time.sleep(delay)
        # Engines boot beside their controller: look every second or so at first, then
        # back off, jittered, so that a big fleet stays within SSM's read rate.
        delay = min(delay * 1.2, max(10.0, spread)) * random.uniform(0.9, 1.1)


def _write_if_changed(target: Path, text: str, group: str | None = None) -> str | None:
    """Write TEXT to TARGET unless it holds it already (then only its time: confirmed
    now); returns what it held before, or None."""
    previous = target.read_text() if target.exists() else None
    if previous == text:
        os.utime(target)
    else:
        _write_private(target, text, group)
    return previous


def wait_connection(timeout: float, fresh_within: float = 0.0, root: bool = False) -> None:
    """Engine node: wait (bounded) for the controller to publish, then write the engine file.

    ROOT: root's look at boot, which writes root's copy (root_copy) instead: one read of
    the rendezvous serves the node's engines and its watch.
    FRESH_WITHIN: seconds; an engine file, or root's copy, read from the rendezvous that
    recently (at boot, or by this node's other engine) is used as it is, without AWS
    and boto3's second of CPU per engine. An engine that restarts after losing its
    controller finds both older than that and reads again."""
    facts = load_facts()
    if root:
        target = root_copy(facts)
        if not _look_in_turn(facts, target):
            document = read_rendezvous(facts, timeout)
            address = str(ipaddress.ip_address(document["controller"]["address"]))
            copy = {"controller": address, "engine": document["engine"], "published_at": document["published_at"]}
            _write_if_changed(target, json.dumps(copy), facts.get("service_user"))
            log(f"controller at {address} (published {document['published_at']}); wrote {target}")
        return
    target = security_dir(facts) / "ipcontroller-engine.json"
    if fresh_within > 0:
        if target.exists() and 0 <= time.time() - target.stat().st_mtime < fresh_within:
            log(f"{target} read from the rendezvous {time.time() - target.stat().st_mtime:.0f} s ago: used as it is")
            return
        held = read_root_copy(facts, fresh_within)
        if held is not None:
            _write_if_changed(target, json.dumps(held["engine"]))
            log(f"controller at {held['controller']}: taken from {root_copy(facts)}, read at boot")
            return
    if _look_in_turn(facts, target):
        log(f"{target} read from the rendezvous meanwhile: used as it is")
        return
    document = read_rendezvous(facts, timeout)
    text = json.dumps(document["engine"])
    previous = _write_if_changed(target, text)
    if previous == text:
        log(f"controller at {document['controller']['address']} (published {document['published_at']}) unchanged")
        return
    moved = "" if previous is None else f" (was {json.loads(previous).get('location')})"
    log(
        f"controller at {document['controller']['address']}{moved} published {document['published_at']}; wrote {target}"
    )


def mount(unit: str, timeout: float) -> None:
    """Root, at boot: start a mount unit, bounded and logged.

    A network file system's server name must resolve first: an EFS file
    system's name resolves only once a mount target exists in this node's zone,
    a minute or two after `pulumi up` created it. Then the mount itself is
    retried: the target may answer DNS before it answers NFS.
    """
    import socket

    facts = load_facts()
    entry = next((m for m in facts["mounts"] if m["unit"] == unit), None)
    if entry is None:
        raise SystemExit(f"ipfleet-node: {unit} is not one of this node's mounts")
    host = entry["what"].split(":", 1)[0] if entry["type"].startswith("nfs") else None
    deadline = time.monotonic() + timeout
    delay, attempt = 2.0, 0
    while True:
        attempt += 1
        problem = None
        if host:
            try:
                socket.getaddrinfo(host, 2049, proto=socket.IPPROTO_TCP)
            except OSError as e:
                problem = f"{host} does not resolve yet ({e})"
        if problem is None:
            result = subprocess.run(["systemctl", "start", unit], capture_output=True, text=True)
            if result.returncode == 0:
                log(f"mounted {entry['where']} ({unit}) on attempt {attempt}")
                return
            problem = f"systemctl start {unit} failed: {(result.stderr or result.stdout).strip()}"
        if time.monotonic() + delay > deadline:
            raise SystemExit(f"ipfleet-node: {entry['where']} not mounted after {timeout:.0f} s: {problem}")
        log(f"attempt {attempt}: {problem}; next try in {delay:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


# -- what this node tells `ipfleet status` -------------------------------------------

# SSM's standard parameters hold 4 KB: the log tail is cut to fit.
RECORD_LIMIT = 4000
BOOT_LOG = Path("/var/log/cloud-init-output.log")
ENGINE_UNITS = "ipengine@*.service"


def node_identity() -> dict:
    """Who this node is, from the instance metadata (the hostname where there is none)."""
    return {
        "instanceId": instance_metadata("instance-id") or platform.node(),
        "instanceType": instance_metadata("instance-type"),
        "lifecycle": instance_metadata("instance-life-cycle"),  # "spot" or "on-demand"
        "zone": instance_metadata("placement/availability-zone"),
        "address": instance_metadata("local-ipv4"),
    }


def log_tail(unit: str | None = None, lines: int = 15) -> list[str]:
    """The last lines of a unit's journal, or of the boot log (cloud-init's output)."""
    if unit:
        out = subprocess.run(
            ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit], capture_output=True, text=True
        ).stdout
        return out.splitlines()[-lines:]
    try:
        return BOOT_LOG.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def engines_now(facts: dict) -> dict:
    """Controller: the engines it has registered (its restore file); engine node: engines running."""
    if facts["role"] == "controller":
        state = node_path(facts, "profile_dir") / "log" / "engines.json"
        try:
            return {"registered": len(json.loads(state.read_text())["engines"])}
        except (OSError, ValueError, KeyError):
            return {"registered": 0}
    listing = subprocess.run(
        ["systemctl", "list-units", "--plain", "--no-legend", "--state=active", ENGINE_UNITS],
        capture_output=True,
        text=True,
    ).stdout
    return {"running": sum(1 for line in listing.splitlines() if line.strip()), "expected": engine_count(facts)}


def node_record(facts: dict, identity: dict, phase: str, error: dict | None = None, reason: str | None = None) -> str:
    record = {
        "format": RECORD_FORMAT,
        "role": facts["role"],
        **identity,
        "phase": phase,
        "engines": engines_now(facts),
        "error": error,
        "reason": reason,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(record)
    while len(text) > RECORD_LIMIT and error and error.get("log"):
        error["log"] = error["log"][1:]
        text = json.dumps(record)
    return text


def failure_file(facts: dict) -> Path:
    """Where a failed bootstrap leaves its error, so later reports keep saying it: root's
    own folder, which the service user cannot write."""
    return node_path(facts, "node_state_dir") / "bootstrap-failure.json"


def read_failure(facts: dict) -> dict | None:
    """The recorded failure; one that cannot be read as one still means failed."""
    try:
        error = json.loads(failure_file(facts).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        error = None
    return error if isinstance(error, dict) else {"step": "unknown (unreadable failure file)"}


# The collector took a drained node's record, but Auto Scaling does not hold the node in
# its drain hook yet: the node says it again a little later (collector.py).
NOT_HELD_YET = 202


def put_record(facts: dict, identity: dict, text: str) -> int:
    """Best effort: a node that cannot report keeps working (and says so in its journal).
    The controller writes its own record; an engine node sends its record to the
    controller's collector, which writes it (collector.py). Returns 0 if it could not,
    else the answer's status (200 for the controller's own)."""
    if facts["role"] == "controller":
        name = parameter(facts, "controller_record_parameter")
        try:
            ssm_client(facts, patient=True).put_parameter(Name=name, Value=text, Type="String", Overwrite=True)
            return 200
        except Exception as e:
            log(f"could not report to {name}: {type(e).__name__}: {e}")
            return 0
    return send_to_collector(facts, "PUT", identity, text.encode())


# Where the collector takes reports from: a port only root can bind (below 1024).
REPORT_SOURCE_PORTS = (600, 1023)
_collector_at: dict[str, str] = {}


def records_port(facts: dict) -> int:
    """The collector's port (the wire's; a facts file may move it, as the tests' do)."""
    return int(facts.get("records_port") or wire.RECORDS_PORT)


def collector_address(facts: dict, fresh: bool = False) -> str | None:
    """The controller's address: from root's copy of the connection document (read at
    boot), else from the document itself (read here, by root, never from the engine file
    the service user writes). A document without an IP address there is refused, in a
    line: root does not crash on it. FRESH: ask the rendezvous (the controller may have
    been replaced)."""
    name = parameter(facts, "rendezvous_parameter")
    if not fresh and name not in _collector_at:
        copy = read_root_copy(facts)
        if copy is not None:
            _collector_at[name] = copy["controller"]
    if fresh or name not in _collector_at:
        try:
            document = read_published(ssm_client(facts), name)
            if document is None:
                return None
            _collector_at[name] = str(ipaddress.ip_address(document["controller"]["address"]))
        except Exception as e:  # unreadable, or no address where the controller's should be
            log(f"cannot read the controller's address from {name}: {type(e).__name__}")
            return None
    return _collector_at[name]


def send_to_collector(facts: dict, method: str, identity: dict, body: bytes = b"") -> int:
    """One report to the collector, from this node's address and a root-only port; a
    second try asks where the controller is now (it may have been replaced). Returns the
    collector's status when it took the report, else 0."""
    import http.client

    port = records_port(facts)
    for fresh in (False, True):
        address = collector_address(facts, fresh)
        if address is None:
            log("could not report: the controller has not published yet")
            return 0
        for _ in range(5):  # a source port still in use: take another
            source = random.randint(*REPORT_SOURCE_PORTS)
            connection = http.client.HTTPConnection(
                address, port, timeout=10, source_address=(identity.get("address") or "", source)
            )
            try:
                connection.request(
                    method, f"/nodes/{identity['instanceId']}", body=body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                answer = response.read(500).decode(errors="replace")
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                log(f"could not report to the controller at {address}:{port}: {type(e).__name__}: {e}")
                break
            finally:
                connection.close()
            if response.status < 300:
                return response.status
            log(f"the controller at {address}:{port} refused the record: {response.status} {answer}")
            return 0
    return 0


def report(phase: str, step: str | None = None, exit_code: int | None = None, unit: str | None = None) -> None:
    """Publish this node's phase; with --step, its failure and the log lines that say why."""
    facts = load_facts()
    error = None
    if step is not None:
        error = {"step": step, "exitCode": exit_code, "log": log_tail(unit)}
        _write_private(failure_file(facts), json.dumps(error))
    identity = node_identity()
    if put_record(facts, identity, node_record(facts, identity, phase, error)):
        log(f"reported phase {phase}" + (f" (failed at {step})" if step else ""))


def forget() -> None:
    """At shutdown: the node's record goes with it (the controller's, which the stack
    owns, goes back to its placeholder; an engine's, the collector deletes)."""
    facts = load_facts()
    identity = node_identity()
    if facts["role"] != "controller":
        if send_to_collector(facts, "DELETE", identity):
            log("the controller forgot this node's record")
        return
    name = parameter(facts, "controller_record_parameter")
    try:
        ssm_client(facts).put_parameter(Name=name, Value=PENDING, Type="String", Overwrite=True)
        log(f"forgot {name}")
    except Exception as e:  # AWS unreachable while shutting down
        log(f"could not reset {name}: {type(e).__name__}")


def interruption() -> str | None:
    """Why this node is about to go, if it is: a spot interruption notice, or Auto
    Scaling taking it out of service. None while it stays."""
    notice = instance_metadata("spot/instance-action")
    if notice:
        try:
            action = json.loads(notice)
            return f"spot interruption: {action.get('action')} at {action.get('time')}"
        except ValueError:
            return f"spot interruption: {notice}"
    target = instance_metadata("autoscaling/target-lifecycle-state")
    if target and target != "InService":
        return f"auto scaling: {target}"
    return None


def drain(facts: dict, reason: str) -> None:
    """Stop taking work: stop this node's engines. The controller sees them go at once
    and retries their running tasks elsewhere (ipfleet.client()'s views retry by
    default); an explicit stop is not undone by Restart=always."""
    log(f"draining: {reason}")
    subprocess.run(["systemctl", "stop", ENGINE_UNITS, "ipfleet-connection.service"], check=False)
    log("drained: engines stopped")


def watch(interval: float, heartbeat: float = 600.0, stop: threading.Event | None = None) -> None:
    """Every node, for its life: report when its phase or engines change, and on an
    engine node, drain as soon as an interruption notice appears (two minutes on spot).
    A drained node reports again once Auto Scaling is taking it out, and the controller's
    collector then lets it go (it completes the drain hook; engines hold no such right)."""
    facts = load_facts()
    identity = node_identity()
    booted = node_path(facts, "boot_finished")
    last, last_sent, drained_for = None, 0.0, None
    retry_at, backoff = 0.0, interval
    say_again_at, say_again = 0.0, 5.0
    # An engine node's first report needs the controller's address, which root's look
    # at the rendezvous (taken in turn by a big fleet) is about to write: it waits for
    # that, within a bound, rather than ask AWS a second time. A notice meanwhile is
    # acted on at once.
    awaiting_copy = facts["role"] == "engine" and read_root_copy(facts) is None
    first_look_by = time.monotonic() + rendezvous_spread(facts) + 30
    stop = stop or threading.Event()
    while not stop.is_set():
        reason = interruption() if facts["role"] == "engine" and drained_for is None else None
        if reason:
            # Stop first, record after: the engines' two minutes are not spent waiting on AWS.
            drain(facts, reason)
            drained_for = reason
        error = read_failure(facts)
        if drained_for:
            phase = "drained"
        elif error:
            phase = "failed"
        else:
            phase = "running" if booted.exists() else "booting"
        # A drained node held in the drain hook (a spot node's group marks it Terminated
        # too, once EC2 has told it): its next record is what lets it go.
        leaving = bool(drained_for) and instance_metadata("autoscaling/target-lifecycle-state") == "Terminated"
        state = (phase, json.dumps(engines_now(facts)), leaving)
        due = state != last or time.monotonic() - last_sent > heartbeat
        if awaiting_copy and (read_root_copy(facts) is not None or time.monotonic() >= first_look_by):
            awaiting_copy = False
        now = time.monotonic()
        # A draining node does not wait out the backoff: it has two minutes.
        if drained_for:
            may_send = now >= say_again_at
        else:
            may_send = not awaiting_copy and now >= retry_at
        if due and may_send and facts["role"] == "engine" and not wire.is_instance_id(identity["instanceId"]):
            # The metadata service did not say who this node is when the watch started:
            # the collector takes records only under the node's instance id, so ask again.
            identity = node_identity()
            if not wire.is_instance_id(identity["instanceId"]):
                log("the instance metadata service did not give this node's instance id; the record waits")
                may_send = False
                backoff = min(backoff * 2, 60.0)
                retry_at = now + backoff * random.uniform(0.5, 1.0)
        if due and may_send:
            status = put_record(facts, identity, node_record(facts, identity, phase, error, drained_for))
            if status == NOT_HELD_YET and leaving:
                # Its metadata says Auto Scaling holds it, the group did not say so yet to
                # the collector: said again shortly (a few times in the two minutes).
                say_again_at = now + say_again
                say_again = min(say_again * 2, 30.0)
            elif status:
                last, last_sent, backoff = state, time.monotonic(), interval
            else:
                # Not reachable yet (no controller published, AWS throttling): try again
                # later, jittered, so that a big fleet does not ask all at once.
                backoff = min(backoff * 2, 60.0)
                retry_at = time.monotonic() + backoff * random.uniform(0.5, 1.0)
        stop.wait(interval)


def collect() -> None:
    """Controller: serve the collector on this node's private address, for good."""
    from .collector import Collector, RecordStore, serve

    facts = load_facts()
    # The records document lives in the stack's bucket, beside the runtime's wheel.
    store = RecordStore(aws_client(facts, "s3", patient=True), facts["runtime"]["bucket"], wire.RECORDS_KEY)
    collector = Collector(
        facts["stack"],
        store,
        aws_client(facts, "ec2", patient=True),
        aws_client(facts, "autoscaling", patient=True),
        log=log,
    )
    serve(
        collector,
        facts.get("records_address") or private_address(),
        records_port(facts),
        flush_every=float(facts.get("records_flush_seconds") or 2),
        reap_every=float(facts.get("records_reap_seconds") or 60),
    )


SSHD_FORWARDING = Path("/etc/ssh/sshd_config.d/10-ipfleet-forwarding.conf")


def sshd_forwarding() -> None:
    """Root, at boot: let tunnels reach this node's own client ports, and nothing else.

    The client file names the controller by its private address, so that is
    where ipyparallel's tunnels forward to; sshd compares PermitOpen literally.
    """
    facts = load_facts()
    address = private_address()
    first, last = CLIENT_FACING_PORTS
    destinations = [f"{address}:{port}" for port in range(first, last + 1)]
    destinations += [f"127.0.0.1:{port}" for port in facts.get("loopback_forward_ports", [])]
    SSHD_FORWARDING.write_text(
        "# ipfleet: where the ipfleet-admin login's tunnels may go (written at boot).\n"
        f"PermitOpen {' '.join(destinations) or 'none'}\n"
    )
    log(f"sshd: tunnels may reach {len(destinations)} destinations on this node")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ipfleet-node", description="ipfleet's node agent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("address", help="print this node's private IPv4 address")
    sub.add_parser("engine-count", help="print how many engines this node runs")
    sub.add_parser("keys", help="controller: keep, restore or make the cluster's keys")
    sub.add_parser("notebook", help="controller: run JupyterLab on loopback")
    for name in ("publish", "wait-connection"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--fresh-within", type=float, default=0.0)  # see wait_connection
    p.add_argument("--root", action="store_true", help="root, at boot: write root's copy (see wait_connection)")
    p = sub.add_parser("mount", help="root: start a mount unit, waiting for its server (bounded)")
    p.add_argument("unit")
    p.add_argument("--timeout", type=float, default=600.0)
    sub.add_parser("sshd-forwarding", help="root: limit the login's tunnels to this node's client ports")
    p = sub.add_parser("report", help="publish this node's phase (and failure) for `ipfleet status`")
    p.add_argument("phase")
    p.add_argument("--step", help="the bootstrap step that failed")
    p.add_argument("--exit-code", type=int)
    p.add_argument("--unit", help="take the log lines from this unit's journal")
    p = sub.add_parser("watch", help="root: report changes, drain on an interruption notice")
    p.add_argument("--interval", type=float, default=5.0)
    sub.add_parser("forget", help="delete this node's record (at shutdown)")
    sub.add_parser("collect", help="controller: take engine nodes' records and write them (collector.py)")
    args = parser.parse_args(argv)
    if args.command == "address":
        print(private_address())
    elif args.command == "engine-count":
        print(engine_count(load_facts()))
    elif args.command == "keys":
        ensure_keys()
    elif args.command == "notebook":
        run_notebook()
    elif args.command == "publish":
        publish(args.timeout)
    elif args.command == "mount":
        mount(args.unit, args.timeout)
    elif args.command == "sshd-forwarding":
        sshd_forwarding()
    elif args.command == "report":
        report(args.phase, args.step, args.exit_code, args.unit)
    elif args.command == "watch":
        watch(args.interval)
    elif args.command == "forget":
        forget()
    elif args.command == "collect":
        collect()
    else:
        wait_connection(args.timeout, args.fresh_within, args.root)


if __name__ == "__main__":
    main()
