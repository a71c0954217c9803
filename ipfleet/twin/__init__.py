"""The twin: a local, faithful stand-in for a deployed ipfleet stack.

It boots the exact user data the Pulumi program produces on real Debian nodes
(systemd-nspawn, real systemd, real cloud-init) in network namespaces, with moto
server standing in for the AWS APIs the nodes call. Linux and root only.

What plays which part of AWS:

- `amis`: the images (a debootstrap root file system per release, and a baked one).
- `instances`: EC2 instances (an overlay of the image booted by systemd-nspawn).
- `autoscaling`, `reconciler`: the engine group (moto's group, and the process that
  boots and stops nodes as its desired capacity says).
- `instance_metadata`: the instance metadata service (IMDSv2 only).
- `vpc`: the network (a bridge, namespaces, the security group in nftables).
- `session_manager`: Session Manager's transport for ssh.
- `moto_server`, `moto_deploy`: the AWS APIs, and what `pulumi up` leaves in them.
- `package_index`: the package index the nodes install from.

Around them: `plan_deploy` reads the plan (its user data and resources), `state`
keeps a twin's state, `cluster` brings a twin up and down, `laptop` (with
`client_env`, `client_demo`, `fault_client`) is the user's side, `faults` injects
what spot clusters meet.
"""
