"""AWS's prices for what a stack runs, from AWS itself, cached on disk with their date.

- On-demand instance hours, gp3 volume and EFS storage: the Pricing API (`GetProducts`,
  its endpoint in us-east-1), the offer's own publication date kept with each price.
- Spot hours: EC2's `DescribeSpotPriceHistory` in the stack's region, the newest price
  of each type in each zone, with its timestamp.

Every price fetched goes to `~/.cache/ipfleet/prices.json` (IPFLEET_CACHE_DIR moves it)
with the time it was fetched. Without credentials or network the cache answers, and
says how old it is; a price neither AWS nor the cache has is reported missing, never
guessed. What AWS answers is checked like any remote data: a price that is not a
finite non-negative number is no price.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ipfleet.remote import ZONE_PATTERN, printable

PRICING_REGION = "us-east-1"  # where the Pricing API answers for every region
SPOT_PRODUCT = "Linux/UNIX"
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class Price:
    key: str  # "ondemand:REGION:TYPE", "spot:REGION:TYPE:ZONE", "gp3:REGION", "efs:REGION"
    usd: float
    unit: str  # "hour" or "GB-month"
    source: str
    as_of: str  # the price's own date (offer publication, spot timestamp)
    fetched: str  # when ipfleet asked AWS

    def age_days(self, now: datetime) -> float:
        return (now - datetime.fromisoformat(self.fetched)).total_seconds() / 86400


def cache_path() -> Path:
    base = os.environ.get("IPFLEET_CACHE_DIR") or Path.home() / ".cache" / "ipfleet"
    return Path(base) / "prices.json"


def load_cache(path: Path | None = None) -> dict[str, Price]:
    path = path or cache_path()
    try:
        raw = json.loads(path.read_text())
        return {key: Price(**value) for key, value in raw.items()}
    except (OSError, ValueError, TypeError):
        return {}


def save_cache(prices: Iterable[Price], path: Path | None = None) -> None:
    path = path or cache_path()
    merged = {**load_cache(path), **{p.key: p for p in prices}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in sorted(merged.items())}, indent=1))
    tmp.replace(path)


def _usd(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _on_demand_usd(product_json: str) -> tuple[float, str] | None:
    """The hourly (or monthly) USD price of one GetProducts entry, and its offer's date."""
    try:
        product = json.loads(product_json)
        terms = product["terms"]["OnDemand"]
    except (ValueError, KeyError, TypeError):
        return None
    for term in terms.values():
        for dimension in (term.get("priceDimensions") or {}).values():
            usd = _usd((dimension.get("pricePerUnit") or {}).get("USD"))
            if usd is not None and usd > 0:
                return usd, printable(term.get("effectiveDate") or product.get("publicationDate") or "", 40)
    return None


def _filters(**terms: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in terms.items()]


# What GetProducts is asked for each kind of price (the fields AWS's offer files use).
def on_demand_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    return _filters(
        regionCode=region,
        instanceType=instance_type,
        operatingSystem="Linux",
        tenancy="Shared",
        preInstalledSw="NA",
        capacitystatus="Used",
        licenseModel="No License required",
    )


def gp3_filters(region: str) -> list[dict[str, str]]:
    return _filters(regionCode=region, productFamily="Storage", volumeApiName="gp3")


def efs_filters(region: str) -> list[dict[str, str]]:
    return _filters(regionCode=region, productFamily="Storage", storageClass="General Purpose")


class PriceFetcher:
    """Asks AWS; every failure is kept, by price, for the report."""

    def __init__(self, pricing, ec2, now: datetime | None = None):
        self.pricing = pricing
        self.ec2 = ec2
        self.now = now or datetime.now(UTC)
        self.problems: dict[str, str] = {}

    def _fetched(self) -> str:
        return self.now.isoformat(timespec="seconds")

    def _products(self, key: str, service: str, filters: list[dict[str, str]], unit: str) -> Price | None:
        try:
            answer = self.pricing.get_products(ServiceCode=service, Filters=filters, MaxResults=10)
        except Exception as e:  # no credentials, no network, throttled: the cache may answer
            self.problems[key] = printable(f"{type(e).__name__}: {e}", 200)
            return None
        for entry in answer.get("PriceList") or []:
            found = _on_demand_usd(entry)
            if found is not None:
                usd, as_of = found
                source = f"AWS Pricing API ({service})"
                return Price(key, usd, unit, source, as_of, self._fetched())
        self.problems[key] = f"the Pricing API has no {service} price for it"
        return None

    def on_demand(self, region: str, instance_type: str) -> Price | None:
        key = f"ondemand:{region}:{instance_type}"
        return self._products(key, "AmazonEC2", on_demand_filters(region, instance_type), "hour")

    def gp3(self, region: str) -> Price | None:
        return self._products(f"gp3:{region}", "AmazonEC2", gp3_filters(region), "GB-month")

    def efs(self, region: str) -> Price | None:
        return self._products(f"efs:{region}", "AmazonEFS", efs_filters(region), "GB-month")

    def spot(self, region: str, instance_types: list[str]) -> list[Price]:
        """The newest spot price of each type in each zone that offers it."""
        key = f"spot:{region}:{','.join(instance_types)}"
        try:
            pages = self.ec2.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=instance_types,
                ProductDescriptions=[SPOT_PRODUCT],
                StartTime=self.now - timedelta(hours=6),
            )
            history = [h for page in pages for h in page.get("SpotPriceHistory", [])]
        except Exception as e:
            self.problems[key] = printable(f"{type(e).__name__}: {e}", 200)
            return []
        newest: dict[tuple[str, str], dict] = {}
        for h in history:
            pair = (str(h.get("InstanceType")), str(h.get("AvailabilityZone")))
            # Only the types asked for, in zones that look like zones: keys and text from AWS.
            if (
                pair[0] in instance_types
                and re.fullmatch(ZONE_PATTERN, pair[1])
                and (pair not in newest or str(h["Timestamp"]) > str(newest[pair]["Timestamp"]))
            ):
                newest[pair] = h
        prices = []
        for (instance_type, zone), h in sorted(newest.items()):
            usd = _usd(h.get("SpotPrice"))
            if usd is not None:
                stamp = h["Timestamp"]
                as_of = stamp.isoformat(timespec="seconds") if isinstance(stamp, datetime) else printable(stamp, 40)
                prices.append(
                    Price(
                        f"spot:{region}:{instance_type}:{zone}",
                        usd,
                        "hour",
                        "EC2 DescribeSpotPriceHistory",
                        as_of,
                        self._fetched(),
                    )
                )
        if not prices:
            self.problems[key] = "EC2 reported no spot price for these types"
        return prices


@dataclass(frozen=True)
class Gathered:
    prices: dict[str, Price]
    fetched: bool  # AWS answered at least one price now
    problems: dict[str, str]  # what AWS could not answer, by price
    cache: Path


def gather(region: str, controller_type: str, engine_types: list[str], efs: bool, offline: bool = False) -> Gathered:
    """Every price a stack needs: asked of AWS (unless OFFLINE), the cache for the rest."""
    cache_file = cache_path()
    cached = load_cache(cache_file)
    if offline:
        return Gathered(cached, False, {}, cache_file)
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=15)
    fetcher = PriceFetcher(
        boto3.client("pricing", region_name=PRICING_REGION, config=config),
        boto3.client("ec2", region_name=region, config=config),
    )
    found: list[Price] = []
    for instance_type in dict.fromkeys([controller_type, engine_types[0]]):
        found += [p for p in [fetcher.on_demand(region, instance_type)] if p]
    found += [p for p in [fetcher.gp3(region)] if p]
    if efs:
        found += [p for p in [fetcher.efs(region)] if p]
    found += fetcher.spot(region, engine_types)
    if found:
        save_cache(found, cache_file)
    # A type's spot prices just fetched replace all its cached ones (zones come and go).
    fresh = {p.key.rsplit(":", 1)[0] for p in found if p.key.startswith("spot:")}
    kept = {k: v for k, v in cached.items() if not (k.startswith("spot:") and k.rsplit(":", 1)[0] in fresh)}
    return Gathered({**kept, **{p.key: p for p in found}}, bool(found), fetcher.problems, cache_file)
