"""Where ipfleet puts its own files on a node: one list for the templates, the
agent's facts and the settings check that keeps mounts from hiding them.

No imports: `ipfleet.settings` reads this module, and `bootstrap.spec` reads
the settings.
"""

VENV = "/opt/ipfleet/venv"
AGENT_DIR = "/usr/local/lib/ipfleet"
AGENT = f"{AGENT_DIR}/ipfleet_node.py"
# The controller's keeper: idle guard and autoscaler (imports the agent beside it).
KEEPER = f"{AGENT_DIR}/ipfleet_keeper.py"
BOOTSTRAP_SCRIPT = f"{AGENT_DIR}/bootstrap.sh"
STATE_DIR = "/var/lib/ipfleet"
IPYTHON_DIR = f"{STATE_DIR}/ipython"
PROFILE_DIR = f"{IPYTHON_DIR}/profile_default"
CONFIG_DIR = "/etc/ipfleet"
FACTS_FILE = f"{CONFIG_DIR}/node.json"
# The cluster's keys on the controller (0600, the service user's); see the agent.
KEYS_FILE = f"{STATE_DIR}/keys.json"
# The controller's login for tunnels: its home holds the authorized key.
LOGIN_HOME = "/home/ipfleet-admin"

# Every folder of ipfleet's own that the bootstrap writes or runs from: a mount
# at, above or below any of them would hide what the node needs. (Its other
# files, units and sshd settings, lie in system trees no mount may touch.)
NODE_PATHS = (VENV, AGENT_DIR, STATE_DIR, CONFIG_DIR, LOGIN_HOME)
