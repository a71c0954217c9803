"""The stack's own bucket: the node runtime's wheel (bootstrap/runtime_wheel.py), and the
engine nodes' records.

The bucket is private (all four public-access blocks on) and encrypted. It holds the
wheel under its sha256, which the node roles may read and nothing else (user data tells
the nodes where it is and what its sha256 must be); and the document of every engine
node's record (wire.RECORDS_KEY), which the controller's collector alone reads and
writes (bootstrap/ipfleet_node/collector.py), and laptops read: a parameter of the
stack names the bucket for them. It holds nothing of the user's, so `pulumi destroy`
empties and deletes it, records included.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from bootstrap.ipfleet_node import wire
from bootstrap.runtime_wheel import RuntimeWheel, runtime_wheel
from components.naming import bucket_name_prefix
from ipfleet.partitions import AWS, Partition

TYPE = "ipfleet:cluster:NodeRuntime"
POLICY_NAME = "ipfleet-node-runtime"
READ_ACTIONS = ["s3:GetObject"]
RECORDS_POLICY_NAME = "ipfleet-node-records"


@dataclass(frozen=True)
class NodeRuntimeArgs:
    stack: str
    # The node roles (controller first): each may read the wheel; the controller's
    # collector writes the records.
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
        # Where laptops find the records: a String of the stack's, which no node may change.
        self.records_location = aws.ssm.Parameter(
            f"{name}-records-location",
            name=wire.records_location_parameter(args.stack),
            type="String",
            # Not a secret: a bucket's name, shown in plans and state as it is.
            insecure_value=self.bucket.bucket,
            description="ipfleet: the bucket holding the engine nodes' records (ipfleet status)",
            opts=child,
        )
        self.records_policy = aws.iam.RolePolicy(
            f"{name}-records",
            name=RECORDS_POLICY_NAME,
            role=args.roles[0],
            policy=self.bucket.bucket.apply(lambda bucket: json.dumps(records_document(bucket, args.partition))),
            opts=child,
        )
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


def records_document(bucket: str, partition: Partition = AWS) -> dict:
    """The collector's rights: read and write the records document, and EC2's view of the
    instances (which instance an address is, which are gone; AWS evaluates
    DescribeInstances on "*" only)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": partition.arn("s3", "", "", f"{bucket}/{wire.RECORDS_KEY}"),
            },
            {"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"},
        ],
    }
