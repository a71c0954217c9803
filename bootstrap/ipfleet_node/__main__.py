"""`python -m ipfleet_node COMMAND`: the node agent (agent.py has the commands)."""

from .agent import main

main()
