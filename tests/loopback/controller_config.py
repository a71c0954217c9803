"""ipfleet's controller configuration off a node: the ipcontroller_config.py the user data
writes, its node paths pointed at this machine and its sockets kept on loopback. The
loopback tests and the throughput benchmark run the very same configuration this way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bootstrap.ipfleet_node import paths
from bootstrap.render import render_user_data
from bootstrap.spec import node_spec
from ipfleet.settings import Settings
from ipfleet.twin.plan_deploy import written, written_files

# The controller's config reads no EFS name: any will do for rendering it.
PLACEHOLDER_EFS = "fs-0.efs.example.invalid"


def loopback_controller_config(settings: Settings, keys_file: Path, state_dir: Path) -> str:
    """SETTINGS' controller config with the keys in KEYS_FILE, the task database in
    STATE_DIR, this Python and this checkout's node package, listening on 127.0.0.1 only."""
    files = written_files(render_user_data(node_spec(settings, "controller", PLACEHOLDER_EFS)).encode())
    text = written(files, f"{paths.PROFILE_DIR}/ipcontroller_config.py")
    # The keys file lies in the state folder: replaced first, then the folder as a whole string.
    for node_path, here in (
        (paths.KEYS_FILE, str(keys_file)),
        # The agent's command, as a list in the config: this Python and this checkout's package.
        (json.dumps(paths.AGENT.split())[1:-1], json.dumps([sys.executable, "-m", "bootstrap.ipfleet_node"])[1:-1]),
        (json.dumps(paths.STATE_DIR), json.dumps(str(state_dir))),
    ):
        if node_path not in text:
            raise ValueError(f"the controller's config no longer mentions {node_path}")
        text = text.replace(node_path, here)
    # The node runtime's modules (scheduler, task database, hub), from this checkout.
    text = text.replace("from ipfleet_node import ", "from bootstrap.ipfleet_node import ")
    return text + '\nc.IPController.ip = "127.0.0.1"\nc.IPController.location = "127.0.0.1"\n'
