"""`ipfleet cost`: prices from AWS's answers (the Pricing API in responses of its own
shape, fed through botocore's Stubber; spot prices from moto's EC2 where it serves
them), the estimate at each size, the cache and its age offline, and missing prices
named rather than guessed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from ipfleet import cost, prices
from tests.conftest import ROOT, settings_of

ANSWERS = Path(__file__).resolve().parent / "data" / "aws_responses"
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
VOLUME_HOUR = 0.08 * 20 / 730  # a node's 20 GB gp3 root volume, per hour


def answer(name: str) -> dict:
    return json.loads((ANSWERS / name).read_text())


def offline_clients():
    pricing = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return pricing, ec2


def fetch_all(settings, stub_pricing: list[str], spot: dict | None) -> prices.PriceFetcher:
    pricing, ec2 = offline_clients()
    fetcher = prices.PriceFetcher(pricing, ec2, now=NOW)
    with Stubber(pricing) as p, Stubber(ec2) as e:
        for name in stub_pricing:
            p.add_response("get_products", answer(name))
        if spot is not None:
            e.add_response("describe_spot_price_history", spot)
        found = [fetcher.on_demand("us-east-1", settings.controller_instance_type)]
        if settings.on_demand_base:
            found.append(fetcher.on_demand("us-east-1", settings.engine_instance_types[0]))
        found += [fetcher.gp3("us-east-1"), fetcher.efs("us-east-1")]
        found += fetcher.spot("us-east-1", settings.engine_instance_types)
    fetcher.found = {f.key: f for f in found if f}  # type: ignore[attr-defined]
    return fetcher


def test_the_estimate_at_each_size_from_aws_answers():
    settings = settings_of()  # t3.medium controller, 2 engine nodes (max 2, idle 0), EFS
    fetcher = fetch_all(
        settings,
        ["pricing-ec2-t3.medium.json", "pricing-ec2-gp3.json", "pricing-efs-standard.json"],
        answer("ec2-spot-price-history.json"),
    )
    found = fetcher.found  # type: ignore[attr-defined]
    # The newest spot price of each type in each zone (c6i.large in 1a: 0.0363, not 0.0351).
    assert {k: p.usd for k, p in found.items() if k.startswith("spot:")} == {
        "spot:us-east-1:c6i.large:us-east-1a": 0.0363,
        "spot:us-east-1:c6i.large:us-east-1b": 0.0407,
        "spot:us-east-1:c5.large:us-east-1a": 0.0382,
        "spot:us-east-1:m6i.large:us-east-1b": 0.0418,
    }
    assert found["ondemand:us-east-1:t3.medium"].as_of == "2025-11-01T00:00:00Z"
    result = cost.estimate(settings, found)
    assert result.missing == []
    spot = (0.0363 + 0.0407 + 0.0382 + 0.0418) / 4
    at_two = result.size("engineNodes")
    assert at_two.per_hour == pytest.approx(0.0416 + 2 * spot + 3 * VOLUME_HOUR)
    assert at_two.per_month == pytest.approx(at_two.per_hour * 730)
    assert result.size("idle").per_hour == pytest.approx(0.0416 + VOLUME_HOUR)
    assert result.efs_per_gb_month == 0.30


def test_the_on_demand_base_is_billed_at_the_first_engine_type():
    settings = settings_of(onDemandBase=1, engineNodes=3)
    fetcher = fetch_all(
        settings,
        [
            "pricing-ec2-t3.medium.json",
            "pricing-ec2-c6i.large.json",
            "pricing-ec2-gp3.json",
            "pricing-efs-standard.json",
        ],
        answer("ec2-spot-price-history.json"),
    )
    size = cost.estimate(settings, fetcher.found).size("engineNodes")  # type: ignore[attr-defined]
    assert (size.on_demand_nodes, size.spot_nodes) == (1, 2)
    assert size.engines_on_demand == pytest.approx(0.085)


def test_an_answer_that_is_not_a_price_is_no_price():
    settings = settings_of()
    bad = answer("pricing-ec2-t3.medium.json")
    entry = json.loads(bad["PriceList"][0])
    dimension = next(iter(next(iter(entry["terms"]["OnDemand"].values()))["priceDimensions"].values()))
    dimension["pricePerUnit"]["USD"] = "NaN"
    bad["PriceList"] = [json.dumps(entry), "not json"]
    pricing, ec2 = offline_clients()
    fetcher = prices.PriceFetcher(pricing, ec2, now=NOW)
    with Stubber(pricing) as p:
        p.add_response("get_products", bad)
        assert fetcher.on_demand("us-east-1", settings.controller_instance_type) is None
    assert "no AmazonEC2 price" in fetcher.problems["ondemand:us-east-1:t3.medium"]


def ipfleet(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ipfleet.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


def test_no_price_at_all_names_every_missing_one(tmp_path):
    env = {**os.environ, "IPFLEET_CACHE_DIR": str(tmp_path), "NO_COLOR": "1"}
    result = ipfleet("cost", "example", "--offline", env=env)
    assert result.returncode == 1
    assert "MISSING ondemand:us-east-1:t3.medium" in result.stdout
    assert "MISSING spot:us-east-1:c6i.large" in result.stdout
    assert "$" not in result.stdout.split("Prices:")[0].replace("$0.000", "")  # no total guessed


def test_a_run_prices_its_node_hours_at_the_engines_rate():
    settings = settings_of()
    fetcher = fetch_all(
        settings,
        ["pricing-ec2-t3.medium.json", "pricing-ec2-gp3.json", "pricing-efs-standard.json"],
        answer("ec2-spot-price-history.json"),
    )
    spot = (0.0363 + 0.0407 + 0.0382 + 0.0418) / 4
    assert cost.engine_node_hour(settings, fetcher.found, 3) == pytest.approx(spot + VOLUME_HOUR)  # type: ignore[attr-defined]
    assert cost.engine_node_hour(settings, {}, 3) is None


def test_what_aws_says_reaches_the_terminal_and_the_cache_as_inert_text():
    """Zones and dates are AWS's text: a zone of another shape is no price, a date with
    escape sequences is cleaned."""
    settings = settings_of()
    spot = answer("ec2-spot-price-history.json")
    spot["SpotPriceHistory"].append(
        {
            "AvailabilityZone": "us-east-1a\x1b]52;c;cm0gLXJmIH4=\x07",
            "InstanceType": "c6i.large",
            "ProductDescription": "Linux/UNIX",
            "SpotPrice": "0.0001",
            "Timestamp": "2026-11-30T09:59:00+00:00",
        }
    )
    priced = answer("pricing-ec2-t3.medium.json")
    entry = json.loads(priced["PriceList"][0])
    next(iter(entry["terms"]["OnDemand"].values()))["effectiveDate"] = "2025-11-01\x1b[2J"
    priced["PriceList"] = [json.dumps(entry)]
    pricing, ec2 = offline_clients()
    fetcher = prices.PriceFetcher(pricing, ec2, now=NOW)
    with Stubber(pricing) as p, Stubber(ec2) as e:
        p.add_response("get_products", priced)
        e.add_response("describe_spot_price_history", spot)
        on_demand = fetcher.on_demand("us-east-1", settings.controller_instance_type)
        found = fetcher.spot("us-east-1", settings.engine_instance_types)
    assert on_demand is not None and "\x1b" not in on_demand.as_of
    assert all("\x1b" not in p.key for p in found) and len(found) == 4
