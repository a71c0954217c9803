"""Runs inside a twin namespace: readies the AWS stand-in as `pulumi up` would leave it.

Usage: python -m ipfleet.twin.moto_deploy SPEC_JSON|@SPEC_FILE
SPEC_JSON: {"region", "parameters": [{"name", "type", "value"}], "buckets": [...],
            "objects": [{"bucket", "key", "body" or "body_base64"}], "group": {see create_engine_group}}
Prints what it made: {"group": NAME} with a group.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.request
from pathlib import Path


def wait_ready(endpoint: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the AWS stand-in at {endpoint} did not answer in {timeout:.0f} s") from None
            time.sleep(0.2)


def create_engine_group(autoscaling, ec2, group: dict) -> str:
    """The engine group as the plan declares it: its launch template (the engine user
    data), bounds, size, tags and drain hook. GROUP: {"name", "min", "max", "desired",
    "user_data" (base64), "instance_type", "zone", "tags": {...}, "hook": {"name",
    "transition", "timeout", "result"}}. Returns the group's name."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]  # one of moto's own
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{group['name']}-template",
        LaunchTemplateData={
            "ImageId": image,
            "InstanceType": group["instance_type"],
            "UserData": group["user_data"],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        },
    )["LaunchTemplate"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group["name"],
        MinSize=group["min"],
        MaxSize=group["max"],
        DesiredCapacity=0,
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"},
        AvailabilityZones=[group["zone"]],
        Tags=[
            {
                "Key": k,
                "Value": v,
                "PropagateAtLaunch": True,
                "ResourceId": group["name"],
                "ResourceType": "auto-scaling-group",
            }
            for k, v in group["tags"].items()
        ],
    )
    hook = group.get("hook")
    if hook:
        autoscaling.put_lifecycle_hook(
            AutoScalingGroupName=group["name"],
            LifecycleHookName=hook["name"],
            LifecycleTransition=hook["transition"],
            HeartbeatTimeout=hook["timeout"],
            DefaultResult=hook["result"],
        )
    # Sized once the hook is there, as AWS creates a group with its initial hooks.
    autoscaling.set_desired_capacity(AutoScalingGroupName=group["name"], DesiredCapacity=group["desired"])
    return group["name"]


def main() -> None:
    import os

    # A spec too long for one argument (a wheel inside) comes as @FILE.
    argument = sys.argv[1]
    spec = json.loads(Path(argument[1:]).read_text() if argument.startswith("@") else argument)
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    wait_ready(endpoint)
    import boto3

    ssm = boto3.client("ssm", region_name=spec["region"])
    for p in spec.get("parameters", []):
        ssm.put_parameter(Name=p["name"], Type=p["type"], Value=p["value"], Overwrite=True)
    s3 = boto3.client("s3", region_name=spec["region"])
    for bucket in spec.get("buckets", []):
        if spec["region"] == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": spec["region"]})
    for o in spec.get("objects", []):
        body = base64.b64decode(o["body_base64"]) if "body_base64" in o else o["body"].encode()
        s3.put_object(Bucket=o["bucket"], Key=o["key"], Body=body)
    made = {}
    if spec.get("group"):
        made["group"] = create_engine_group(
            boto3.client("autoscaling", region_name=spec["region"]),
            boto3.client("ec2", region_name=spec["region"]),
            spec["group"],
        )
    print(json.dumps(made))


if __name__ == "__main__":
    main()
