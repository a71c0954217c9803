"""Where ipfleet puts its own files on a node: one list for the templates, the
agent and the settings check that keeps mounts from hiding them.

Part of the node runtime (the agent reads it on the node); no imports.
"""

VENV = "/opt/ipfleet/venv"
AGENT_DIR = "/usr/local/lib/ipfleet"
# The node runtime (bootstrap/ipfleet_node/) is installed in the venv: the agent's and
# the keeper's commands. -I: no current directory and no PYTHON* variables on the path.
AGENT = f"{VENV}/bin/python -I -m ipfleet_node"
KEEPER = f"{VENV}/bin/python -I -m ipfleet_node.keeper"
BOOTSTRAP_SCRIPT = f"{AGENT_DIR}/bootstrap.sh"
# Makes the venv with uv (system python3, before the venv exists).
PYENV = f"{AGENT_DIR}/ipfleet_pyenv.py"
# Where that uv lives when the image has none of its own (ipfleet_pyenv.UV_HOME).
UV_HOME = "/opt/ipfleet/uv"
UV_BINARY = f"{UV_HOME}/uv"
STATE_DIR = "/var/lib/ipfleet"
IPYTHON_DIR = f"{STATE_DIR}/ipython"
PROFILE_DIR = f"{IPYTHON_DIR}/profile_default"
CONFIG_DIR = "/etc/ipfleet"
FACTS_FILE = f"{CONFIG_DIR}/node.json"
# What the venv holds: pinned requirements, and constraints for all they pull in
# (ipfleet_pyenv.py has its own copy: it runs before anything else is there).
PYTHON_REQUIREMENTS = f"{CONFIG_DIR}/python-requirements.txt"
PYTHON_CONSTRAINTS = f"{CONFIG_DIR}/python-constraints.txt"
# Root's own state on a node: the service user (and so user code) may read it, never
# write it. Root services read only what lies here and in CONFIG_DIR.
NODE_STATE_DIR = "/var/lib/ipfleet-node"
# The cluster's keys on the controller (0640 root:ipfleet: ipcontroller reads them); see the agent.
KEYS_FILE = f"{NODE_STATE_DIR}/keys.json"
# cloud-init writes this when the node's boot has finished (its last module ran).
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
# The controller's login for tunnels: its home holds the authorized key.
LOGIN_HOME = "/home/ipfleet-admin"

# Every folder of ipfleet's own that the bootstrap writes or runs from: a mount
# at, above or below any of them would hide what the node needs. (Its other
# files, units and sshd settings, lie in system trees no mount may touch.)
NODE_PATHS = (VENV, AGENT_DIR, STATE_DIR, NODE_STATE_DIR, CONFIG_DIR, LOGIN_HOME, UV_HOME)
