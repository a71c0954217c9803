"""Lightweight engines: ipyparallel's engine wire protocol, hundreds to a process.

A real `ipengine` is an IPython kernel in a process of its own (about 60 MB); a
fleet of thousands does not fit on one machine. These engines open the same
sockets a real engine opens, to the same controller ports (registration, shell to
mux/task/broadcast, control, iopub, heart ping and pong), register as a real engine
does, echo the heart's pings, and answer `apply_request` by running the function
they were sent, so the controller does the same work per engine and per task as
for real ones. `benchmarks/scale.py` checks that claim at small N in every run.

    python benchmarks/light_engines.py ENGINE_JSON COUNT READY_FILE [OVER_SECONDS]

runs COUNT engines from the controller's ipcontroller-engine.json until stopped
(SIGTERM), all at once or arriving over OVER_SECONDS, writing READY_FILE (JSON:
registered, registrations given up after a real engine's timeout, the slowest and
p99 registration) whenever it changes.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import threading
import time
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

    def __init__(self, context: zmq.asyncio.Context, info: dict, session: Session, threaded: bool = False):
        # THREADED: run each function in a thread (one at a time, as a kernel does), so
        # that tasks which take time (sleep) run side by side on the engines of a process.
        self.threaded = threaded
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
                if self.threaded:
                    reply = await asyncio.to_thread(self.run_function, request)
                else:
                    reply = self.run_function(request)
                self.session.send(sock, "apply_reply", reply[0], parent=request, ident=idents, **reply[1])
                self.status("idle", request)

    def status(self, state: str, request: dict) -> None:
        topic = f"engine.{self.id}.status".encode("ascii")
        self.session.send(self.iopub, "status", {"execution_state": state}, parent=request, ident=topic)

    def run_function(self, request) -> tuple[dict, dict]:
        """Run the function, as ipyparallel's Kernel.apply_request does: the reply's
        content and its buffers and metadata."""
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
        return content, {"buffers": buffers, "metadata": metadata}

    def run(self) -> list[asyncio.Task]:
        self.tasks = [
            asyncio.ensure_future(self.heart()),
            asyncio.ensure_future(self.serve(self.shell)),
            asyncio.ensure_future(self.serve(self.control)),
        ]
        return self.tasks

    def stop(self) -> None:
        """As a real engine stopped by systemd: its loop ends and its sockets close,
        without a word to the hub (which notices when the heartbeats stop)."""
        for task in getattr(self, "tasks", []):
            task.cancel()
        for sock in self.sockets:
            sock.close(linger=0)


class EngineHost:
    """The engines of many simulated nodes in one process (benchmarks/aws_budget.py):
    an event loop in a thread of its own; `start` and `stop` a node's engines from any
    thread, as systemd starts and stops a node's ipengine units."""

    def __init__(self, threads: int = 1024):
        from concurrent.futures import ThreadPoolExecutor

        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(threads))
        self.context = zmq.asyncio.Context()
        self.context.MAX_SOCKETS = 65536
        self.nodes: dict[str, list[LightEngine]] = {}
        threading.Thread(target=self.loop.run_forever, name="engine-host", daemon=True).start()

    def start(self, node: str, count: int, engine_file: Path, timeout: float = 600.0) -> int:
        """Start NODE's COUNT engines; returns how many registered (each retries as a real one)."""
        info = json.loads(engine_file.read_text())
        return asyncio.run_coroutine_threadsafe(self._start(node, count, info), self.loop).result(timeout)

    async def _start(self, node: str, count: int, info: dict) -> int:
        session = session_for(info)

        async def one() -> LightEngine | None:
            for _ in range(MOST_STARTS):
                engine = LightEngine(self.context, info, session, threaded=True)
                if await engine.register(REGISTRATION_TIMEOUT):
                    engine.run()
                    return engine
                engine.stop()
                await asyncio.sleep(RESTART_SECONDS)
            return None

        started = [e for e in await asyncio.gather(*(one() for _ in range(count))) if e is not None]
        self.nodes.setdefault(node, []).extend(started)
        return len(started)

    def running(self, node: str) -> int:
        return len(self.nodes.get(node, []))

    def stop(self, node: str) -> None:
        async def stop() -> None:
            for engine in self.nodes.pop(node, []):
                engine.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)


# A real engine waits IPEngine.timeout (5 s, ipfleet keeps ipyparallel's default) for
# the registration reply, then exits; systemd starts it again RestartSec (3 s) later,
# as a new engine. These do the same, a bounded number of times.
REGISTRATION_TIMEOUT = 5.0
RESTART_SECONDS = 3.0
MOST_STARTS = 20


async def swarm(engine_file: Path, count: int, ready_file: Path, over: float = 0.0) -> None:
    """COUNT engines, all at once (a storm) or each at a random moment within OVER
    seconds (a fleet's nodes arriving); READY_FILE says how many registered, how many
    registrations were given up, and the slowest and p99 time from an engine's start to
    its registration."""
    info = json.loads(engine_file.read_text())
    context = zmq.asyncio.Context()
    context.MAX_SOCKETS = 8 * count + 64
    session = session_for(info)
    tasks: list[asyncio.Task] = []
    counts: dict[str, float] = {"registered": 0, "gave_up": 0}
    waits: list[float] = []

    async def one() -> None:
        await asyncio.sleep(random.uniform(0, over))
        arrived = time.monotonic()
        for _ in range(MOST_STARTS):
            engine = LightEngine(context, info, session)
            if await engine.register(REGISTRATION_TIMEOUT):
                tasks.extend(engine.run())
                waits.append(time.monotonic() - arrived)
                counts["registered"] += 1
                return
            counts["gave_up"] += 1
            for sock in engine.sockets:
                sock.close(linger=0)
            await asyncio.sleep(RESTART_SECONDS)

    pending = [asyncio.ensure_future(one()) for _ in range(count)]
    last = None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        if counts != last:
            last = dict(counts)
            ordered = sorted(waits)
            if ordered:
                counts["slowest_s"] = round(ordered[-1], 2)
                counts["p99_s"] = round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)
            ready_file.write_text(json.dumps(counts))
            last = dict(counts)
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass
    for task in [*pending, *tasks]:
        task.cancel()
    context.destroy(linger=0)


if __name__ == "__main__":
    over = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    asyncio.run(swarm(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), over))
