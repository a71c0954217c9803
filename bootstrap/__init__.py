"""The node side: cloud-init user data that makes a plain Debian or Ubuntu image
an ipfleet controller or engine node, with no SSH orchestration.

`ipfleet_node/` is what runs on the nodes (shipped as a wheel: runtime_wheel.py);
`spec.py` decides what a role's nodes get, `render.py` writes it as user data.
Nothing is imported here, so that the node package imports alone."""
