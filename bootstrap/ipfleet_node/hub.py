"""The controller's hub: ipyparallel's, sized for a fleet, and answering a client's
queries only from where clients are.

`FleetHub`, always:
- writes its engine state file (log/engines.json, read back by a restarted controller)
  at most every STATE_DELAY seconds, not once per registration: ipyparallel rewrites
  the whole file for every engine, which makes a registration storm quadratic (19 ms
  a write at 10,000 engines);
- answers wire.TASK_STATUS_REQUEST: which of any number of tasks it knows, in one
  round trip (ipyparallel's result request stops at the first unknown one).

`ClientNetworksHub`, unless ipfleet:enginesAsClients: ipyparallel's registration socket
serves engines (registration) and clients (queue status, stored results, purge,
resubmit, shutdown) alike, and every engine must reach it. The security group keeps
engines off the client ports, which takes task submission from them, but not this
socket: without a check, user code on any engine node could read every stored result
or shut the controller down. This hub checks the address a request came from (ZMQ's
Peer-Address) and answers anything but an engine's own registration only from the
client networks: the controller itself (tunnels end here: sshd, notebook kernels and
the keeper connect from this node) and, in `direct` mode, the stack's adminCidrs.

Installed by the controller's ipcontroller_config.py (ipyparallel has no setting for
the hub's class; its app builds `Hub` by name).
"""

from __future__ import annotations

import atexit
import inspect
import ipaddress

from ipyparallel.controller import app
from ipyparallel.controller.hub import Hub
from tornado import ioloop
from traitlets import Float, Integer, List, Unicode

from . import wire

# What an engine sends on the registration socket: everything else is a client's.
ENGINE_REQUESTS = frozenset({"registration_request", "unregistration_request"})


# How stale the engine state file may be: engines that registered in the last moment
# before a crash are taken back by their next registration, not from the file.
STATE_DELAY = 0.5
# The most task ids one status request may name (about 4 MB of ids).
MOST_TASKS_ASKED = 100_000


class FleetHub(Hub):
    keep_tasks = Integer(
        100_000,
        config=True,
        help="Finished tasks kept (task database and memory), the newest; 0 keeps all (ipfleet:ipyparallel.keepTasks).",
    )

    cull_seconds = Float(60.0, config=True, help="How often finished tasks beyond keep_tasks are culled.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.query_handlers[wire.TASK_STATUS_REQUEST] = self.task_status
        self._state_due = None
        atexit.register(self._write_engine_state)
        self._culling = ioloop.PeriodicCallback(self._cull_now, self.cull_seconds * 1000)
        self._culling.start()

    def _cull_now(self) -> None:
        self.cull()

    def cull(self) -> int:
        """Forget the oldest finished tasks beyond keep_tasks, in the task database and
        in memory; how many. In batches of a tenth of what is kept, so that a busy
        controller culls once in a while, not on every look."""
        finished = len(self.all_completed)
        if not self.keep_tasks or finished - self.keep_tasks < max(1, self.keep_tasks // 10):
            return 0
        oldest = getattr(self.db, "oldest_finished", None)
        if oldest is None:  # a database without it (another db_class): kept as it is
            return 0
        gone = set(oldest(finished - self.keep_tasks))
        self.db.drop_records(sorted(gone))
        self.all_completed.difference_update(gone)
        for eid, done in self.completed.items():
            self.completed[eid] = [m for m in done if m not in gone]
        self.log.info(
            "culled the %d oldest finished tasks (ipfleet:ipyparallel.keepTasks %d)", len(gone), self.keep_tasks
        )
        return len(gone)

    def _save_engine_state(self) -> None:
        if self._state_due is None:
            self._state_due = self.loop.call_later(STATE_DELAY, self._write_engine_state)

    def _write_engine_state(self) -> None:
        if self._state_due is not None:
            self.loop.remove_timeout(self._state_due)
        self._state_due = None
        super()._save_engine_state()

    def task_status(self, client_id, msg) -> None:
        """The tasks of msg_ids this hub has neither pending nor done (a restarted
        controller knows none of those its previous scheduler held)."""
        asked = msg["content"].get("msg_ids")
        if not isinstance(asked, list) or len(asked) > MOST_TASKS_ASKED or not all(isinstance(m, str) for m in asked):
            content = {
                "status": "error",
                "ename": "ValueError",
                "traceback": [],
                "evalue": f"msg_ids must be a list of at most {MOST_TASKS_ASKED} strings",
            }
        else:
            known = self.pending, self.all_completed
            content = {"status": "ok", "unknown": [m for m in asked if not any(m in k for k in known)]}
        self.session.send(self.query, wire.TASK_STATUS_REPLY, content=content, parent=msg, ident=client_id)


class ClientNetworksHub(FleetHub):
    client_networks = List(
        Unicode(),
        config=True,
        help="Networks (CIDR) whose clients may query the hub; engines register from anywhere.",
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._networks = [ipaddress.ip_network(n, strict=False) for n in self.client_networks]
        # Frames, not bytes: only a frame carries the address it came from.
        self.query.stop_on_recv()
        self.query.on_recv(self.dispatch_checked_query, copy=False)

    def is_client_address(self, address: str | None) -> bool:
        try:
            found = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(found in network for network in self._networks)

    async def dispatch_checked_query(self, frames) -> None:
        peer = frames[0].get("Peer-Address")
        message = [frame.bytes for frame in frames]
        if not self.is_client_address(peer):
            try:
                idents, rest = self.session.feed_identities(message)
                parsed = self.session.deserialize(rest, content=False)
            except Exception:
                self.log.warning("refused an unreadable query from %s", peer)
                return
            msg_type = parsed["header"]["msg_type"]
            if msg_type not in ENGINE_REQUESTS:
                self.log.warning("refused %s from %s: not a client network", msg_type, peer)
                self.session.send(
                    self.query,
                    "hub_error",
                    ident=idents[0],
                    parent=parsed,
                    content={
                        "status": "error",
                        "ename": "PermissionError",
                        "evalue": f"{msg_type} is answered to clients only, not to {peer}",
                        "traceback": [],
                    },
                )
                return
        handled = self.dispatch_query(message)
        if inspect.isawaitable(handled):  # a coroutine in some ipyparallel releases, not all
            await handled


def install(config, networks: list[str]) -> None:
    """From ipcontroller_config.py, after the controller's location is set: the app builds
    the fleet's hub, checking clients' addresses when NETWORKS are given (with the
    controller's own address, where tunnels end); none: ipfleet:enginesAsClients."""
    if not networks:
        app.Hub = FleetHub
        return
    app.Hub = ClientNetworksHub
    config.ClientNetworksHub.client_networks = [*networks, f"{config.IPController.location}/32"]
