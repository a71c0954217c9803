"""The controller's hub answers a client's queries only from client networks: a real
ipcontroller, configured by the file user data writes (bootstrap/ipfleet_node/hub.py
installed), asked from 127.0.0.1 (the controller itself, where tunnels end) and from
127.0.0.2 (an address outside them, as an engine node's is)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import zmq
from jupyter_client.session import Session

from bootstrap.ipfleet_node import wire
from tests.loopback.test_rendezvous import (
    agent,
    controller_config_from_user_data,
    create_pending_parameter,
    facts_file,
    start,
    stop,
)


def ask(info: dict, source: str, msg_type: str, content: dict) -> tuple[str, dict]:
    """MSG_TYPE on the registration socket from SOURCE; the reply's type and content."""
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"], packer=info["pack"])
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    try:
        socket.connect(f"tcp://{source}:0;127.0.0.1:{info['registration']}")
        session.send(socket, msg_type, content=content)
        assert socket.poll(15_000), f"no reply to {msg_type} from {source}"
        _, message = session.feed_identities(socket.recv_multipart())
        reply = session.deserialize(message)
        return reply["header"]["msg_type"], reply["content"]
    finally:
        socket.close()


def test_queries_are_answered_to_client_networks_and_registration_to_anyone(aws_env, tmp_path):
    create_pending_parameter(aws_env)
    profile = tmp_path / "controller" / "profile_default"
    controller_config_from_user_data(profile, tmp_path / "keys.json")
    keys = agent(facts_file(tmp_path, "controller", profile, aws_env), "keys")
    assert keys.returncode == 0, keys.stderr
    controller = start(
        [str(Path(sys.executable).parent / "ipcontroller"), f"--profile-dir={profile}"], tmp_path / "log"
    )
    try:
        client_file = profile / "security" / "ipcontroller-client.json"
        deadline = time.monotonic() + 60
        while not client_file.exists():
            assert time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.2)
        time.sleep(1)  # the hub starts listening as it writes the file
        info = json.loads(client_file.read_text())
        query = {"targets": None, "verbose": False}
        assert ask(info, "127.0.0.1", "queue_request", query)[0] == "queue_reply"
        refused, content = ask(info, "127.0.0.2", "queue_request", query)
        assert refused == "hub_error" and "answered to clients only, not to 127.0.0.2" in content["evalue"]
        assert ask(info, "127.0.0.2", "shutdown_request", {})[0] == "hub_error"
        assert controller.poll() is None  # the shutdown was refused
        # Which tasks it knows, in bulk: to clients only, and only for a list of ids.
        status = ask(info, "127.0.0.1", wire.TASK_STATUS_REQUEST, {"msg_ids": ["never-sent", "nor-this"]})
        assert status == (wire.TASK_STATUS_REPLY, {"status": "ok", "unknown": ["never-sent", "nor-this"]})
        for hostile in ({"msg_ids": "never-sent"}, {"msg_ids": [1]}, {"msg_ids": ["x"] * 100_001}, {}):
            kind, content = ask(info, "127.0.0.1", wire.TASK_STATUS_REQUEST, hostile)
            assert kind == wire.TASK_STATUS_REPLY and content["status"] == "error", content
        assert ask(info, "127.0.0.2", wire.TASK_STATUS_REQUEST, {"msg_ids": []})[0] == "hub_error"
        # An engine registers from anywhere.
        registered, content = ask(info, "127.0.0.2", "registration_request", {"uuid": "engine-on-127.0.0.2"})
        assert registered == "registration_reply" and content["status"] == "ok", content
    finally:
        stop(controller)
    log = (tmp_path / "log").read_text()
    assert "refused queue_request from 127.0.0.2" in log and "Uncaught exception" not in log, log[-3000:]
