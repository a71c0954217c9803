"""The twin's engine group in moto, asked from the twin's own processes.

The twin's processes run in the root network namespace (they create namespaces
and boot nodes), and nothing may go from there to a namespace address. Their
Auto Scaling calls therefore run on one thread that has entered the router's
namespace (setns applies to the calling thread only): its sockets live there,
next to moto, and every other thread stays where it was.
"""

from __future__ import annotations

import base64
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

from ipfleet.scaling import EngineGroup

CLONE_NEWNET = 0x40000000
CALL_TIMEOUT = 30.0


def _enter(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class TwinGroup:
    """The engine group GROUP_NAME, through moto at ENDPOINT, from inside NAMESPACE."""

    def __init__(self, namespace: str, endpoint: str, region: str, group_name: str):
        self.name = group_name
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=_enter, initargs=(namespace,))

        def client(service: str):
            import boto3

            return boto3.client(
                service,
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id="twin",
                aws_secret_access_key="twin",
            )

        self._client = self._call(lambda: client("autoscaling"))
        self._ec2 = self._call(lambda: client("ec2"))

    def _call(self, fn):
        return self._pool.submit(fn).result(timeout=CALL_TIMEOUT)

    def describe(self) -> EngineGroup:
        """The group: its size, bounds and instances (id -> lifecycle state)."""
        return EngineGroup.parse(
            self._call(
                lambda: self._client.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])[
                    "AutoScalingGroups"
                ][0]
            )
        )

    def launch_user_data(self) -> bytes:
        """What the group launches with: its launch template's user data, read as EC2 reads it."""
        versions = self._call(
            lambda: self._ec2.describe_launch_template_versions(
                LaunchTemplateName=f"{self.name}-template", Versions=["$Latest"]
            )
        )
        return base64.b64decode(versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"])

    def address_of(self, instance_id: str) -> str:
        """The private address EC2 gave an instance the group launched (its node's address)."""
        found = self._call(lambda: self._ec2.describe_instances(InstanceIds=[instance_id]))
        return found["Reservations"][0]["Instances"][0]["PrivateIpAddress"]

    def hook(self) -> dict | None:
        hooks = self._call(
            lambda: self._client.describe_lifecycle_hooks(AutoScalingGroupName=self.name)["LifecycleHooks"]
        )
        return next((h for h in hooks if h["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"), None)

    def complete(self, instance_id: str, hook: str) -> None:
        """The hook's timeout, played by the twin: AWS goes on with the default result."""
        self._call(
            lambda: self._client.complete_lifecycle_action(
                AutoScalingGroupName=self.name,
                LifecycleHookName=hook,
                InstanceId=instance_id,
                LifecycleActionResult="CONTINUE",
            )
        )

    def lose(self, instance_id: str) -> None:
        """A node lost (or interrupted) leaves the group, which keeps its desired capacity
        and so launches a replacement, as EC2 Auto Scaling does for an instance that
        terminated or failed its health check."""
        self._call(
            lambda: self._client.detach_instances(
                AutoScalingGroupName=self.name, InstanceIds=[instance_id], ShouldDecrementDesiredCapacity=False
            )
        )
        # ... and the instance is gone in EC2 too (terminated, or replaced after its check).
        self._call(lambda: self._ec2.terminate_instances(InstanceIds=[instance_id]))

    def close(self) -> None:
        self._pool.shutdown(wait=False)
