"""Runs inside a twin namespace: readies the AWS stand-in as `pulumi up` would leave it.

Usage: python -m ipfleet.twin.aws SPEC_JSON
SPEC_JSON: {"region", "parameters": [{"name", "type", "value"}], "buckets": [...],
            "objects": [{"bucket", "key", "body"}]}
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request


def wait_ready(endpoint: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the AWS stand-in at {endpoint} did not answer in {timeout:.0f} s")
            time.sleep(0.2)


def main() -> None:
    import os

    spec = json.loads(sys.argv[1])
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
        s3.put_object(Bucket=o["bucket"], Key=o["key"], Body=o["body"].encode())


if __name__ == "__main__":
    main()
