"""The twin's instance metadata service on loopback: IMDSv2's rules, as EC2 enforces them
with http_tokens required (a real HTTP server, real requests)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def call(url, method="GET", headers=None):
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method=method, headers=headers or {}), timeout=5
        ) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def token(base, ttl="60"):
    return call(f"{base}/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": ttl})


def test_imdsv1_is_refused_and_v2_answers(imds):
    base, _ = imds
    assert call(f"{base}/meta-data/instance-id") == (401, "")
    status, value = token(base)
    assert status == 200 and len(value) > 20
    assert call(f"{base}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": value}) == (
        200,
        "i-0123456789abcdef0",
    )
    assert call(f"{base}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": "forged"})[0] == 401


def test_token_rules(imds):
    base, _ = imds
    assert call(f"{base}/api/token", "PUT")[0] == 400  # no TTL header
    assert token(base, "0")[0] == 400 and token(base, "21601")[0] == 400
    assert (
        call(f"{base}/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.9"})[
            0
        ]
        == 403
    )


def test_role_credentials_and_listings_as_sdks_read_them(imds):
    base, nodes = imds
    headers = {"X-aws-ec2-metadata-token": token(base)[1]}
    assert call(f"{base}/meta-data/iam/security-credentials/", headers=headers) == (200, "demo-engine")
    status, body = call(f"{base}/meta-data/iam/security-credentials/demo-engine", headers=headers)
    credentials = json.loads(body)
    assert status == 200 and credentials["Code"] == "Success" and credentials["Expiration"].endswith("Z")
    assert {"AccessKeyId", "SecretAccessKey", "Token"} <= set(credentials)
    assert call(f"{base}/meta-data/public-ipv4", headers=headers)[0] == 404  # no public address
    # The twin changes a node's metadata while it runs (a spot notice, say): served at once.
    values = json.loads(nodes.read_text())
    values["127.0.0.1"]["spot/instance-action"] = '{"action": "terminate"}'
    nodes.write_text(json.dumps(values))
    time.sleep(0.01)
    assert call(f"{base}/meta-data/spot/instance-action", headers=headers) == (200, '{"action": "terminate"}')


def test_boto3_gets_credentials_from_it(imds, monkeypatch):
    """botocore's own IMDSv2 client (what the nodes' agent and tasks use) works against it."""
    from botocore.utils import InstanceMetadataFetcher

    base, _ = imds
    fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=base.rsplit("/latest", 1)[0])
    credentials = fetcher.retrieve_iam_role_credentials()
    assert credentials["role_name"] == "demo-engine" and credentials["token"] == "twin-session-token"
