"""IAM access to exactly the buckets and prefixes the stack mounts; read-only unless asked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from ipfleet.partitions import AWS, Partition
from ipfleet.settings import S3Mount

TYPE = "ipfleet:cluster:S3Mounts"

READ = ["s3:GetObject"]
WRITE = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


@dataclass(frozen=True)
class S3MountsArgs:
    mounts: list[S3Mount]
    roles: Sequence[pulumi.Input[str]]
    partition: Partition = AWS


class S3Mounts(pulumi.ComponentResource):
    def __init__(self, name: str, args: S3MountsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, None, opts)
        policy = json.dumps(policy_document(args.mounts, args.partition))
        # One per role, in the order of args.roles.
        self.policies = [
            aws.iam.RolePolicy(
                f"{name}-access-{index}",
                name="ipfleet-s3-mounts",
                role=role,
                policy=policy,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for index, role in enumerate(args.roles)
        ]
        self.register_outputs({})


def policy_document(mounts: list[S3Mount], partition: Partition = AWS) -> dict:
    """One listing and one object statement per mount, scoped to its prefix."""
    statements = []
    for index, m in enumerate(mounts):
        bucket_arn = partition.arn("s3", "", "", m.bucket)
        objects = f"{bucket_arn}/{m.prefix}/*" if m.prefix else f"{bucket_arn}/*"
        listing: dict[str, Any] = {
            "Sid": f"List{index}",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": bucket_arn,
        }
        if m.prefix:
            listing["Condition"] = {"StringLike": {"s3:prefix": [m.prefix, f"{m.prefix}/*"]}}
        statements.append(listing)
        statements.append(
            {
                "Sid": f"Objects{index}",
                "Effect": "Allow",
                "Action": READ if m.read_only else READ + WRITE,
                "Resource": objects,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
