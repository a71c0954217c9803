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


def create_network(ec2, network: dict) -> str:
    """The VPC and the one subnet the twin's nodes live on, so that EC2 gives each
    instance the address its node has. NETWORK: {"vpc_cidr", "subnet_cidr", "zone"}.
    Returns the subnet's id."""
    vpc = ec2.create_vpc(CidrBlock=network["vpc_cidr"])["Vpc"]["VpcId"]
    return ec2.create_subnet(VpcId=vpc, CidrBlock=network["subnet_cidr"], AvailabilityZone=network["zone"])["Subnet"][
        "SubnetId"
    ]


def run_instance(ec2, instance: dict) -> str:
    """One instance at a given address (or the next EC2 gives), tagged as the stack tags
    its nodes (the controller, which the stack makes itself). INSTANCE: {"address", "subnet",
    "instance_type", "tags": {...}, "public_address" (or None)}. Returns its id."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance["instance_type"],
        SubnetId=instance["subnet"],
        **({"PrivateIpAddress": instance["address"]} if instance.get("address") else {}),
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in instance["tags"].items()]}
        ],
    )["Instances"][0]["InstanceId"]
    if instance.get("public_address"):
        # The address the twin routes to the controller, as an Elastic IP of its own.
        allocation = ec2.allocate_address(Domain="vpc", Address=instance["public_address"])["AllocationId"]
        ec2.associate_address(InstanceId=made, AllocationId=allocation)
    return made


def create_engine_group(autoscaling, ec2, group: dict) -> str:
    """The engine group as the plan declares it: its launch template (the engine user
    data), bounds, size, tags and drain hook. GROUP: {"name", "min", "max", "desired",
    "user_data" (base64), "instance_type", "zone", "subnet" (optional), "tags": {...},
    "hook": {"name", "transition", "timeout", "result"}}. Returns the group's name."""
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
        # In a subnet, EC2 gives each instance its address there (the twin boots it at that address).
        **({"VPCZoneIdentifier": group["subnet"]} if group.get("subnet") else {}),
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
    made: dict = {}
    ec2 = boto3.client("ec2", region_name=spec["region"])
    if spec.get("network"):
        made["subnet"] = create_network(ec2, spec["network"])
    made["instances"] = [
        run_instance(ec2, {"subnet": made.get("subnet"), **instance}) for instance in spec.get("instances", [])
    ]
    if spec.get("terminate"):
        ec2.terminate_instances(InstanceIds=spec["terminate"])
    if spec.get("group"):
        made["group"] = create_engine_group(
            boto3.client("autoscaling", region_name=spec["region"]),
            ec2,
            {"subnet": made.get("subnet"), **spec["group"]},
        )
    print(json.dumps(made))


if __name__ == "__main__":
    main()
