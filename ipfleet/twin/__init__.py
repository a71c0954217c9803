"""The twin: a local, faithful stand-in for a deployed ipfleet stack.

It boots the exact user data the Pulumi program produces on real Debian nodes
(systemd-nspawn, real systemd, real cloud-init) in network namespaces, with moto
server standing in for the AWS APIs the nodes call. Linux and root only.
"""
