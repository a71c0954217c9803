"""Lightweight engines: ipyparallel's engine wire protocol, hundreds to a process.

A real `ipengine` is an IPython kernel in a process of its own (about 60 MB); a
fleet of thousands does not fit on one machine. These engines open the same
sockets a real engine opens, to the same controller ports (registration, shell to
mux/task/broadcast, control, iopub, heart ping and pong), register as a real engine
does, echo the heart's pings, and answer `apply_request` by running the function
they were sent, so the controller does the same work per engine and per task as
for real ones. `benchmarks/scale.py` checks that claim at small N in every run.

    python benchmarks/light_engines.py ENGINE_JSON COUNT READY_FILE

runs COUNT engines from the controller's ipcontroller-engine.json until stopped
(SIGTERM), writing READY_FILE (JSON: registered, and registrations given up after
a real engine's timeout) whenever it changes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from pathlib import Path

import zmq
import zmq.asyncio
from ipyparallel.serialize import serialize_object, unpack_apply_message
from jupyter_client.session import Session


def session_for(info: dict) -> Session:
    """The Session a real engine builds from the controller's engine file."""
    return Session(
        key=info["key"].encode("ascii"),
        signature_scheme=info["signature_scheme"],
        packer=info.get("pack", "json"),
        unpacker=info.get("unpack", "json"),
    )


class LightEngine:
    """One engine: its sockets and the three loops a registered engine keeps."""

    def __init__(self, context: zmq.asyncio.Context, info: dict, session: Session):
        self.context = context
        self.info = info
        self.session = session
        self.ident = str(uuid.uuid4())
        self.bident = self.ident.encode("ascii")
        self.id: int | None = None
        self.sockets: list[zmq.asyncio.Socket] = []

    def socket(self, kind: int, *urls: str, identity: bool = True) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        if identity:
            sock.IDENTITY = self.bident
        for url in urls:
            sock.connect(url)
        self.sockets.append(sock)
        return sock

    def url(self, port) -> str:
        return f"{self.info['interface']}:{port}"

    async def register(self, timeout: float) -> bool:
        """registration_request, then the sockets a real engine connects once accepted."""
        registrar = self.socket(zmq.DEALER, self.url(self.info["registration"]))
        self.session.send(registrar, "registration_request", content={"uuid": self.ident})
        if not await registrar.poll(int(timeout * 1000)):
            return False
        _, msg = self.session.feed_identities(await registrar.recv_multipart())
        reply = self.session.deserialize(msg)["content"]
        if reply["status"] != "ok":
            return False
        self.id = reply["id"]
        ports = reply["connection_info"]
        broadcast = ports["broadcast"][self.id % len(ports["broadcast"])]
        self.shell = self.socket(zmq.ROUTER, self.url(ports["mux"]), self.url(ports["task"]), self.url(broadcast))
        self.control = self.socket(zmq.ROUTER, self.url(ports["control"]))
        self.iopub = self.socket(zmq.PUB, self.url(ports["iopub"]))
        self.ping = self.socket(zmq.SUB, self.url(ports["hb_ping"]), identity=False)
        self.ping.subscribe(b"")
        self.pong = self.socket(zmq.DEALER, self.url(ports["hb_pong"]))
        return True

    async def heart(self) -> None:
        """A real engine's Heart forwards each ping, as it came, out of its DEALER."""
        while True:
            await self.pong.send_multipart(await self.ping.recv_multipart())

    async def serve(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            idents, msg = self.session.feed_identities(await sock.recv_multipart())
            request = self.session.deserialize(msg)
            if request["header"]["msg_type"] == "apply_request":
                # A kernel says busy, then idle, on iopub around every request it
                # handles; the hub reads each of them.
                self.status("busy", request)
                self.apply(sock, idents, request)
                self.status("idle", request)

    def status(self, state: str, request: dict) -> None:
        topic = f"engine.{self.id}.status".encode("ascii")
        self.session.send(self.iopub, "status", {"execution_state": state}, parent=request, ident=topic)

    def apply(self, sock, idents, request) -> None:
        """Run the function, as ipyparallel's Kernel.apply_request does, and reply."""
        content: dict[str, object]
        metadata: dict[str, object] = {"dependencies_met": True, "engine": self.ident, "status": "ok"}
        try:
            function, args, kwargs = unpack_apply_message(request["buffers"], copy=False)
            buffers = serialize_object(function(*args, **kwargs))
            content = {"status": "ok"}
        except Exception as error:  # the task's own failure, as a real engine reports it
            buffers = []
            content = {"status": "error", "ename": type(error).__name__, "evalue": str(error), "traceback": []}
            metadata["status"] = "error"
        self.session.send(
            sock, "apply_reply", content, parent=request, ident=idents, buffers=buffers, metadata=metadata
        )

    def run(self) -> list[asyncio.Task]:
        return [
            asyncio.ensure_future(self.heart()),
            asyncio.ensure_future(self.serve(self.shell)),
            asyncio.ensure_future(self.serve(self.control)),
        ]


# A real engine waits IPEngine.timeout (5 s, ipfleet keeps ipyparallel's default) for
# the registration reply, then exits; systemd starts it again RestartSec (3 s) later,
# as a new engine. These do the same, a bounded number of times.
REGISTRATION_TIMEOUT = 5.0
RESTART_SECONDS = 3.0
MOST_STARTS = 20


async def swarm(engine_file: Path, count: int, ready_file: Path) -> None:
    info = json.loads(engine_file.read_text())
    context = zmq.asyncio.Context()
    context.MAX_SOCKETS = 8 * count + 64
    session = session_for(info)
    tasks: list[asyncio.Task] = []
    counts = {"registered": 0, "gave_up": 0}

    async def one() -> None:
        for _ in range(MOST_STARTS):
            engine = LightEngine(context, info, session)
            if await engine.register(REGISTRATION_TIMEOUT):
                tasks.extend(engine.run())
                counts["registered"] += 1
                return
            counts["gave_up"] += 1
            for sock in engine.sockets:
                sock.close(linger=0)
            await asyncio.sleep(RESTART_SECONDS)

    # All at once, as a fleet's engines start: the storm the controller must take.
    pending = [asyncio.ensure_future(one()) for _ in range(count)]
    last = None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        if counts != last:
            last = dict(counts)
            ready_file.write_text(json.dumps(counts))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass
    for task in [*pending, *tasks]:
        task.cancel()
    context.destroy(linger=0)


if __name__ == "__main__":
    asyncio.run(swarm(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
