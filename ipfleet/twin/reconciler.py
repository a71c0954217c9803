"""The twin playing EC2 for the engine group: `python -m ipfleet.twin.reconciler STACK`.

moto keeps the group's books (desired capacity, which instances belong to it,
their lifecycle states; ipfleet/twin/moto_server.py adds the drain hook's wait).
This process makes those books real, once a second:

- an instance the group launched (InService) gets a node: a namespace, the
  address EC2 gave the instance, the launch template's user data, booted as EC2 would boot it, with
  the group's instance id in its instance metadata;
- an instance waiting in Terminating:Wait is told so through its metadata
  (`autoscaling/target-lifecycle-state` = Terminated); its agent drains and
  completes the hook. If it does not within the hook's timeout, the twin
  completes it, as AWS goes on with the hook's default result;
- an instance the group no longer lists is terminated: powered off (its agent
  deletes its record on the way down), its namespace deleted.

`ipfleet twin up` starts it; `ipfleet twin down` stops it first. It stops by
itself when the twin's state is gone.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from ipfleet.twin import cluster
from ipfleet.twin.autoscaling import TwinGroup
from ipfleet.twin.cluster import TwinNetwork
from ipfleet.twin.instances import Node
from ipfleet.twin.state import TwinState
from ipfleet.twin.vpc import ENDPOINT

INTERVAL = 1.0
TERMINATED = "Terminated"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Reconciler:
    def __init__(self, stack: str):
        self.state = TwinState.load(stack)
        self.group = TwinGroup(self.state.namespaces[0], ENDPOINT, self.state.region, self.state.group_name)
        self.hook = self.group.hook()
        self.user_data = self.group.launch_user_data()
        self.waiting_since: dict[str, float] = {}
        self.stopping = False

    def step(self) -> None:
        instances = self.group.describe().instances
        nodes = {n.instance_id: n for n in self.state.refresh().engine_nodes}
        # Gone first: EC2 may give a new instance the address of one that just went.
        for instance_id, node in nodes.items():
            if instance_id not in instances:
                self.terminate(node)
        for instance_id, lifecycle in instances.items():
            if instance_id not in nodes and lifecycle in ("Pending", "InService"):
                self.launch(instance_id)
            elif lifecycle == "Terminating:Wait" and instance_id in nodes:
                self.hold(nodes[instance_id])

    def launch(self, instance_id: str) -> None:
        state = self.state
        net = TwinNetwork(state.tag)
        controller = state.controller
        # The node has the address EC2 gave its instance in the cluster's subnet.
        number = int(self.group.address_of(instance_id).rsplit(".", 1)[1])
        with state.locked():
            state.launched += 1
            host = net.host(f"engine{number}", number)
            name = cluster.host_name(state.stack, f"engine-{state.launched}")
            node = cluster.node_on(state, host, name, "engine", controller.image, instance_id)
            # Recorded before anything exists, so that `down` removes whatever does.
            state.namespaces.append(host.namespace)
            state.nodes.append(node)
            cluster.write_metadata(state)  # before it boots: cloud-init asks at once
        net.attach(host)
        node.prepare(Path(node.image), self.user_data)
        node.boot(state.shared_dir, Path(controller.wheelhouse))
        with state.locked():
            state.nodes = [node if n.name == node.name else n for n in state.nodes]
        log(f"launched {instance_id} as {name} ({host.address})")

    def hold(self, node: Node) -> None:
        """Terminating:Wait: tell the node; past the hook's timeout, go on without it."""
        if node.instance_id not in self.waiting_since:
            self.waiting_since[node.instance_id] = time.monotonic()
            with self.state.locked():
                cluster.write_metadata(
                    self.state, extra={node.address: {"autoscaling/target-lifecycle-state": TERMINATED}}
                )
            log(f"{node.instance_id} ({node.name}) is leaving the group: Terminating:Wait")
        hook = self.hook or {}
        timeout = hook.get("HeartbeatTimeout", 0)
        if time.monotonic() - self.waiting_since[node.instance_id] > timeout:
            log(f"{node.instance_id}: the drain hook timed out after {timeout} s; going on")
            self.group.complete(node.instance_id, hook["LifecycleHookName"])

    def terminate(self, node: Node) -> None:
        node.stop()
        TwinNetwork(self.state.tag).destroy([node.namespace])
        with self.state.locked():
            state = self.state
            state.nodes = [n for n in state.nodes if n.name != node.name]
            if node.namespace in state.namespaces:
                state.namespaces.remove(node.namespace)
            state.metadata_extra.pop(node.address, None)
            cluster.write_metadata(state)
        waited = self.waiting_since.pop(node.instance_id, None)
        log(
            f"terminated {node.instance_id} ({node.name})"
            + (f" {time.monotonic() - waited:.1f} s after it began to leave" if waited else "")
        )

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        log(f"playing group {self.state.group_name}: {json.dumps(self.group.describe().as_json())}")
        while not self.stopping and (self.state.state_dir / "state.json").exists():
            try:
                self.step()
            except Exception as e:  # moto busy, a node slow to stop: look again
                log(f"step failed: {type(e).__name__}: {e}")
            time.sleep(INTERVAL)
        self.group.close()
        log("stopped")


if __name__ == "__main__":
    Reconciler(sys.argv[1]).run()
