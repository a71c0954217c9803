"""ipfleet's node runtime: the agent, the keeper and the wire contract.

Runs on every node with the venv's Python (`python -m ipfleet_node COMMAND`,
`python -m ipfleet_node.keeper`), installed from a wheel the stack stores in S3
(bootstrap/runtime_wheel.py); in ipfleet's source it is `bootstrap.ipfleet_node`.
Standard library and boto3 only, and nothing of the laptop or the Pulumi program:
its modules import one another relatively, so both names work.
"""
