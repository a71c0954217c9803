"""The node runtime's wheel (bootstrap/runtime_wheel.py) in a bucket of the stack's own.

The bucket is private (all four public-access blocks on) and encrypted; it holds the
wheel under its sha256, and the node roles may read that one object and nothing else
(user data tells the nodes where it is and what its sha256 must be). It holds nothing
of the user's, so `pulumi destroy` empties and deletes it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from bootstrap.runtime_wheel import RuntimeWheel, runtime_wheel
from components.naming import bucket_name_prefix
from ipfleet.partitions import AWS, Partition

TYPE = "ipfleet:cluster:NodeRuntime"
POLICY_NAME = "ipfleet-node-runtime"
READ_ACTIONS = ["s3:GetObject"]


@dataclass(frozen=True)
class NodeRuntimeArgs:
    stack: str
    roles: Sequence[pulumi.Input[str]]
    partition: Partition = AWS
    tags: dict[str, str] | None = None


class NodeRuntime(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeRuntimeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        wheel = runtime_wheel()
        self.bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket_prefix=bucket_name_prefix(args.stack, "runtime"),
            force_destroy=True,
            tags=args.tags,
            opts=child,
        )
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-private",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        self.encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encrypted",
            bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        self.wheel = aws.s3.BucketObjectv2(
            f"{name}-wheel",
            bucket=self.bucket.bucket,
            key=wheel.key,
            content_base64=base64.b64encode(wheel.data).decode(),
            content_type="application/zip",
            server_side_encryption="AES256",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.encryption]),
        )
        policy = self.bucket.bucket.apply(lambda bucket: json.dumps(policy_document(bucket, wheel, args.partition)))
        self.policies = [
            aws.iam.RolePolicy(f"{name}-read-{index}", name=POLICY_NAME, role=role, policy=policy, opts=child)
            for index, role in enumerate(args.roles)
        ]
        self.bucket_name: pulumi.Output[str] = self.bucket.bucket
        self.register_outputs({"bucket": self.bucket_name, "key": wheel.key, "sha256": wheel.sha256})


def policy_document(bucket: str, wheel: RuntimeWheel, partition: Partition = AWS) -> dict:
    """Read the runtime's one object: not list the bucket, not read another key."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": READ_ACTIONS,
                "Resource": partition.arn("s3", "", "", f"{bucket}/{wheel.key}"),
            }
        ],
    }
