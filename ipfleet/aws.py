"""The laptop's AWS clients: one way to make them, so that every call retries throttling.

AWS throttles per account (Parameter Store's reads are about 40 a second, shared by every
node and laptop): botocore's adaptive mode backs off with jitter and paces the client,
up to MAX_ATTEMPTS in all, and a call that still fails says so in its error ("reached max
retries"), which the CLI prints.
"""

from __future__ import annotations

MAX_ATTEMPTS = 8


def client(service: str, region: str):
    import boto3
    from botocore.config import Config

    retries = {"mode": "adaptive", "total_max_attempts": MAX_ATTEMPTS}
    config = Config(retries=retries, connect_timeout=10, read_timeout=30)
    return boto3.client(service, region_name=region, config=config)
