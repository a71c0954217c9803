"""The controller's scheduler decides exactly as ipyparallel's own.

Both schedulers take the same script of submissions (plain, with time and location
dependencies, targets, retries), replies (success, failure, unmet dependency) and
engines coming and going, in lockstep; after every step each must have sent the same
messages to the same engines, clients and hub. The script is drawn from ipyparallel's
scheduler state, so it keeps going where that scheduler can."""

from __future__ import annotations

import random

import pytest
import zmq
from ipyparallel.controller.task_scheduler import TaskScheduler
from jupyter_client.session import Session
from zmq.eventloop.zmqstream import ZMQStream

from bootstrap.ipfleet_node.scheduler import FlatTaskScheduler

KEY = b"test-key"


class Recorder(ZMQStream):
    """A stream that keeps what it is given (the scheduler's only use of its streams)."""

    def __init__(self):  # no socket: nothing is sent anywhere
        self.sent: list[list[bytes]] = []
        self._more: list[bytes] = []

    def send(self, msg, flags=0, copy=True, **kwargs):
        self._more.append(bytes(msg))
        if not flags & zmq.SNDMORE:
            self.sent.append(self._more)
            self._more = []

    def send_multipart(self, msg, flags=0, copy=True, **kwargs):
        frames = [f.bytes if isinstance(f, zmq.Frame) else bytes(f) for f in msg]
        self.sent.append(self._more + frames)
        self._more = []

    def flush(self, *args, **kwargs):
        return 0

    def on_recv(self, *args, **kwargs):
        pass


def scheduler(cls, hwm: int, scheme: str):
    names = ("client_stream", "engine_stream", "mon_stream", "notifier_stream", "query_stream")
    streams = {name: Recorder() for name in names}
    made = cls(session=Session(key=KEY, session="scheduler"), hwm=hwm, scheme_name=scheme, **streams)
    return made, streams


def frames(parts: list[bytes]) -> list[zmq.Frame]:
    return [zmq.Frame(p) for p in parts]


def sent_fingerprint(streams) -> list:
    """What went out, without the signatures and dates that differ run to run."""
    out = []
    for name in ("engine_stream", "client_stream", "mon_stream"):
        for message in streams[name].sent:
            out.append((name, tuple(p for p in message if b"msg_id" not in p and len(p) != 64)))
        streams[name].sent.clear()
    return out


class Broken(Exception):
    """ipyparallel's scheduler failed a step (and so did ours): the script ends there."""


class Script:
    """Drives ipyparallel's scheduler and the flat one with the same steps."""

    def __init__(self, hwm: int, scheme: str, engines: int, seed: int):
        self.rng = random.Random(seed)
        self.client = Session(key=KEY, session="client")
        self.pairs = [scheduler(TaskScheduler, hwm, scheme), scheduler(FlatTaskScheduler, hwm, scheme)]
        self.engines = [f"engine-{i}".encode() for i in range(engines)]
        self.submitted: list[str] = []
        for engine in self.engines:
            self.each(lambda s, e=engine: s._register_engine(e))

    def each(self, step) -> None:
        raised = []
        for made, _ in self.pairs:
            try:
                step(made)
                raised.append(None)
            except Exception as error:  # ipyparallel's own, on some paths: ours must match
                raised.append(type(error))
        ours, theirs = (sent_fingerprint(streams) for _, streams in self.pairs)
        assert theirs == ours
        assert raised[0] == raised[1]
        if raised[0]:
            raise Broken(raised[0])

    def submit(self) -> None:
        rng = self.rng
        metadata: dict = {"retries": rng.choice([0, 0, 1, 2])}
        earlier = self.submitted[-8:]
        if earlier and rng.random() < 0.25:
            metadata["after"] = rng.sample(earlier, k=min(len(earlier), rng.randint(1, 2)))
        if earlier and rng.random() < 0.15:
            metadata["follow"] = [rng.choice(earlier)]
        if rng.random() < 0.2:
            metadata["targets"] = [e.decode() for e in rng.sample(self.engines, k=rng.randint(1, 2))]
        msg = self.client.msg("apply_request", content={}, metadata=metadata)
        self.submitted.append(msg["header"]["msg_id"])
        raw = self.client.serialize(msg, ident=[b"client"])
        self.each(lambda s: s.dispatch_submission(frames(raw)))

    def reply(self) -> None:
        base, _ = self.pairs[0]
        running = [(engine, job) for engine, jobs in base.pending.items() for job in jobs.values()]
        if not running:
            return
        engine, job = self.rng.choice(running)
        outcome = self.rng.choice(["ok", "ok", "ok", "error", "unmet"])
        metadata = {"status": "ok" if outcome == "ok" else "error", "dependencies_met": outcome != "unmet"}
        content = {"status": metadata["status"]}
        msg = self.client.msg("apply_reply", content=content, parent=job.header, metadata=metadata)
        raw = self.client.serialize(msg, ident=[engine, b"client"])
        self.each(lambda s: s.dispatch_result(frames(raw)))

    def engine_leaves_or_comes(self) -> None:
        base, _ = self.pairs[0]
        if len(base.targets) > 2 and self.rng.random() < 0.5:
            engine = self.rng.choice(base.targets)
            self.each(lambda s: s._unregister_engine(engine))
        else:
            engine = f"engine-{len(self.engines)}".encode()
            self.engines.append(engine)
            self.each(lambda s: s._register_engine(engine))


@pytest.mark.parametrize("scheme", ["leastload", "lru"])
@pytest.mark.parametrize("hwm", [0, 1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_the_flat_scheduler_sends_what_ipyparallels_sends(hwm, scheme, seed):
    script = Script(hwm, scheme, engines=4, seed=seed)
    steps = 0
    try:
        while steps < 150:
            steps += 1
            roll = script.rng.random()
            if roll < 0.5:
                script.submit()
            elif roll < 0.97:
                script.reply()
            else:
                script.engine_leaves_or_comes()
    except Broken:
        pass
    assert steps >= 60
    base, flat = (made for made, _ in script.pairs)
    assert (base.targets, base.loads, len(base.queue)) == (flat.targets, flat.loads, len(flat.queue))
    assert base.all_completed == flat.all_completed and base.all_failed == flat.all_failed
    # The script reached the paths it is about.
    assert base.all_completed and base.all_failed


def test_the_controller_config_installs_the_flat_scheduler():
    from ipyparallel.controller import app

    from bootstrap.ipfleet_node import scheduler as module

    before = app.TaskScheduler
    try:
        module.install()
        assert app.TaskScheduler is FlatTaskScheduler
    finally:
        app.TaskScheduler = before


def test_the_flat_scheduler_remembers_the_newest_finished_tasks_only():
    """ipfleet:ipyparallel.keepTasks at 10: after 200 tasks it remembers 10 to 11 of them
    (for dependencies), and a task that depends on one forgotten fails as one naming a
    task never sent, while one depending on a remembered task runs after it."""
    made, streams = scheduler(FlatTaskScheduler, hwm=1, scheme="leastload")
    made.keep_tasks = 10
    client = Session(key=KEY, session="client")
    engine = b"engine-0"
    made._register_engine(engine)
    sent = []
    for _ in range(200):
        msg = client.msg("apply_request", content={}, metadata={})
        sent.append(msg["header"]["msg_id"])
        made.dispatch_submission(frames(client.serialize(msg, ident=[b"client"])))
        reply = client.msg("apply_reply", content={"status": "ok"}, parent=msg["header"], metadata={"status": "ok"})
        made.dispatch_result(frames(client.serialize(reply, ident=[engine, b"client"])))
    assert 10 <= len(made.all_done) <= 11 and made.all_done <= set(sent[-11:])
    assert len(made.all_ids) == len(made.destinations) == len(made.completed[engine]) == len(made.all_done)
    streams["client_stream"].sent.clear()

    def after(msg_id: str) -> bytes:
        msg = client.msg("apply_request", content={}, metadata={"after": [msg_id]})
        made.dispatch_submission(frames(client.serialize(msg, ident=[b"client"])))
        return b"".join(b"".join(m) for m in streams["client_stream"].sent)

    assert b"InvalidDependency" in after(sent[0])
    streams["client_stream"].sent.clear()
    assert b"InvalidDependency" not in after(sent[-1])
    assert made.pending[engine]  # it ran: its dependency is remembered as done
