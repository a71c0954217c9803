"""The laptop's AWS calls under throttling (ipfleet/aws.py), against moto behind a proxy
that answers as AWS does past an account's quota (ipfleet/twin/throttling.py). A call retries,
backing off, and goes through; one throttled every time gives up after its bound and
says so."""

from __future__ import annotations

import json

import pytest

from bootstrap.ipfleet_node import wire
from ipfleet import aws
from ipfleet.node_status import read_all_records
from ipfleet.twin.throttling import Quota, ThrottlingProxy, api_of


@pytest.fixture
def throttled(aws_env, monkeypatch):
    """A stack's controller record in moto; returns a function that puts a proxy throttling
    N requests in front of it (for the laptop's clients) and gives the proxy back."""
    ssm = aws.client("ssm", "us-east-1")
    record = {"format": 1, "role": "controller", "instanceId": "i-0123456789abcdef0", "phase": "running"}
    ssm.put_parameter(Name=wire.controller_record_parameter("thr"), Value=json.dumps(record), Type="String")
    proxies = []

    def behind(throttle: int | None) -> ThrottlingProxy:
        proxy = ThrottlingProxy(aws_env["AWS_ENDPOINT_URL"], throttle_first=throttle)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield behind
    for proxy in proxies:
        proxy.close()


def test_a_throttled_call_backs_off_and_goes_through(throttled):
    proxy = throttled(2)
    found = read_all_records(aws.client("ssm", "us-east-1"), aws.client("s3", "us-east-1"), "thr")
    assert [r.instance_id for r in found.valid] == ["i-0123456789abcdef0"]
    assert proxy.throttled == 2 and proxy.forwarded >= 1


def test_a_call_throttled_every_time_gives_up_after_its_bound_and_says_so(throttled, monkeypatch):
    import botocore.exceptions

    monkeypatch.setattr(aws, "MAX_ATTEMPTS", 3)  # the bound, made short for the test
    proxy = throttled(None)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        read_all_records(aws.client("ssm", "us-east-1"), aws.client("s3", "us-east-1"), "thr")
    assert proxy.throttled == 3 and proxy.forwarded == 0
    assert "ThrottlingException" in str(refused.value) and "reached max retries: 2" in str(refused.value)


def test_each_service_is_refused_as_aws_spells_it_and_botocore_retries_it(aws_env):
    """Past its bucket, every API the nodes and the laptop call is refused in its own
    protocol's words, which botocore takes for throttling: it retries, then gives up."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    s3 = aws.client("s3", "us-east-1")
    s3.create_bucket(Bucket="thr-bucket")
    s3.put_object(Bucket="thr-bucket", Key="records.json", Body=b"{}")
    quotas = [
        Quota(("ssm:GetParameter", "ssm:GetParameters"), rate=0.001, burst=1),
        Quota(("ec2:DescribeInstances",), rate=0.001, burst=1),
        Quota(("autoscaling:DescribeAutoScalingGroups",), rate=0.001, burst=1),
        Quota(("s3:GetObject",), rate=0.001, burst=1),
    ]
    proxy = ThrottlingProxy(aws_env["AWS_ENDPOINT_URL"], quotas)
    try:
        config = Config(retries={"mode": "standard", "total_max_attempts": 2})

        def client(service):
            return boto3.client(service, region_name="us-east-1", endpoint_url=proxy.url, config=config)

        calls = {
            "ThrottlingException": lambda: client("ssm").get_parameters(Names=["a"]),
            "RequestLimitExceeded": lambda: client("ec2").describe_instances(),
            "Throttling": lambda: client("autoscaling").describe_auto_scaling_groups(),
            "SlowDown": lambda: client("s3").get_object(Bucket="thr-bucket", Key="records.json"),
        }
        for code, call in calls.items():
            call()  # the bucket's one token
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                call()
            assert refused.value.response["Error"]["Code"] == code
            assert "reached max retries: 1" in str(refused.value)
        # ssm:GetParameter shares the reads' bucket: GetParameters took its token.
        with pytest.raises(botocore.exceptions.ClientError):
            client("ssm").get_parameter(Name="a")
        apis = [c.api for c in proxy.calls]
        assert apis[:3] == ["ssm:GetParameters"] * 3
        assert {"ec2:DescribeInstances", "autoscaling:DescribeAutoScalingGroups", "s3:GetObject"} <= set(apis)
        assert sum(c.throttled for c in proxy.calls) == 2 * 4 + 2
        # Calls the quotas do not name are never refused.
        client("ssm").put_parameter(Name="free", Value="x", Type="String")
        last = proxy.calls[-1]
        assert (last.api, last.throttled, last.instance, last.source) == ("ssm:PutParameter", False, None, "127.0.0.1")
    finally:
        proxy.close()


def test_the_nodes_clients_retry_throttling_with_a_bound(aws_env):
    """The agent's clients (bootstrap/ipfleet_node/agent.py): 5 attempts, 10 for the
    patient ones (a fleet booting at once shares a few writes a second), then the error."""
    import botocore.exceptions

    from bootstrap.ipfleet_node import agent

    proxy = ThrottlingProxy(aws_env["AWS_ENDPOINT_URL"], throttle_first=None)
    try:
        facts = {"region": "us-east-1", "aws_endpoint_url": proxy.url}
        with pytest.raises(botocore.exceptions.ClientError, match="reached max retries: 4"):
            agent.ssm_client(facts).get_parameter(Name="anything")
        assert proxy.throttled == 5
        # The patient ones wait up to a minute in all before saying so: their bound is read here.
        patient = agent.ssm_client(facts, patient=True).meta.config.retries
        assert patient == {"mode": "adaptive", "total_max_attempts": 10}
    finally:
        proxy.close()


def test_api_names():
    class Headers(dict):
        def get(self, key, default=None):
            return super().get(key, default)

    scope = "AWS4-HMAC-SHA256 Credential=AKID/20261130/us-east-1/{}/aws4_request, SignedHeaders=host"
    ssm = Headers({"Authorization": scope.format("ssm"), "X-Amz-Target": "AmazonSSM.PutParameter"})
    assert api_of("POST", "/", ssm, b"{}") == "ssm:PutParameter"
    ec2 = Headers({"Authorization": scope.format("ec2")})
    assert api_of("POST", "/", ec2, b"Action=DescribeInstances&Version=2016-11-15") == "ec2:DescribeInstances"
    s3 = Headers({"Authorization": scope.format("s3")})
    assert api_of("PUT", "/bucket/ipfleet/records.json", s3, b"") == "s3:PutObject"
    assert api_of("GET", "/bucket?list-type=2", s3, b"") == "s3:GetBucket"
