"""`ipfleet cost` with spot prices from moto on loopback (the Pricing API's answers
and the offline cases are in tests/fast/test_cost.py)."""

from __future__ import annotations

import json
import os
from datetime import datetime

from botocore.stub import Stubber

from ipfleet import prices
from tests.fast.test_cost import answer, ipfleet, offline_clients


def test_against_aws_then_offline_from_the_cache(aws_env, tmp_path):
    """moto answers the spot prices and has no Pricing API: those prices are named
    missing (exit 1). With on-demand prices in the cache (as an earlier run against AWS
    leaves them), the same command offline answers from it and says how old it is."""
    env = {**os.environ, **aws_env, "IPFLEET_CACHE_DIR": str(tmp_path / "cache"), "NO_COLOR": "1"}
    first = ipfleet("cost", "example", "--json", env=env)
    assert first.returncode == 1, first.stderr
    document = json.loads(first.stdout)
    assert document["fetchedNow"] is True  # the spot prices, from moto's EC2
    assert "ondemand:us-east-1:t3.medium" in document["missing"]
    assert any(p["key"].startswith("spot:us-east-1:c6i.large:") for p in document["prices"])

    # What a run against AWS left in the cache two days ago.
    two_days_ago = "2026-11-28T10:00:00+00:00"
    pricing, ec2 = offline_clients()
    fetcher = prices.PriceFetcher(pricing, ec2, now=datetime.fromisoformat(two_days_ago))
    with Stubber(pricing) as p:
        for name in ("pricing-ec2-t3.medium.json", "pricing-ec2-gp3.json", "pricing-efs-standard.json"):
            p.add_response("get_products", answer(name))
        cached = [fetcher.on_demand("us-east-1", "t3.medium"), fetcher.gp3("us-east-1"), fetcher.efs("us-east-1")]
    prices.save_cache([c for c in cached if c], tmp_path / "cache" / "prices.json")

    offline = ipfleet("cost", "example", "--offline", env=env)
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "ondemand:us-east-1:t3.medium: $0.0416/hour (AWS Pricing API (AmazonEC2)" in offline.stdout
    assert "days old" in offline.stdout
    assert "engineNodes" in offline.stdout and "maxEngineNodes" in offline.stdout and "idle" in offline.stdout
