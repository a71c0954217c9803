"""What a stack costs per hour and per month, at the sizes it can take: a pure function
of its settings and a set of prices (ipfleet/prices.py), so that `ipfleet cost`, the
plan diff and `ipfleet run` agree.

The model, as AWS bills it:
- the controller: an on-demand instance hour of its type, and its gp3 root volume;
- each engine node: the group's on-demand base first (the first engine type, which
  Auto Scaling prefers for on-demand), then spot; a spot hour is the mean of the
  newest spot prices over the stack's types and the region's zones (capacity-optimized
  allocation picks pools by spare capacity, not by price), plus its gp3 root volume;
- EFS: per GB-month stored, billed by use, so shown as a rate and left out of totals.
Sizes: engineNodes (as deployed), maxEngineNodes (the most it can scale to), and the
idle guard's floor (minEngineNodes: what an idle cluster keeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean

from components.hardening import ROOT_VOLUME_GB
from ipfleet.prices import HOURS_PER_MONTH, Price
from ipfleet.settings import Settings


@dataclass(frozen=True)
class SizeCost:
    label: str
    engine_nodes: int
    spot_nodes: int
    on_demand_nodes: int
    # USD per hour, by part; None where a price is missing.
    controller: float | None
    engines_spot: float | None
    engines_on_demand: float | None
    volumes: float | None

    @property
    def per_hour(self) -> float | None:
        parts = (self.controller, self.engines_spot, self.engines_on_demand, self.volumes)
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    @property
    def per_month(self) -> float | None:
        hourly = self.per_hour
        return None if hourly is None else hourly * HOURS_PER_MONTH

    def as_json(self) -> dict:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "size": self.label,
            "engineNodes": self.engine_nodes,
            "spotNodes": self.spot_nodes,
            "onDemandNodes": self.on_demand_nodes,
            "perHour": {
                "controller": rounded(self.controller),
                "enginesSpot": rounded(self.engines_spot),
                "enginesOnDemand": rounded(self.engines_on_demand),
                "rootVolumes": rounded(self.volumes),
                "total": rounded(self.per_hour),
            },
            "perMonth": rounded(self.per_month),
        }


@dataclass(frozen=True)
class CostEstimate:
    stack: str
    region: str
    sizes: list[SizeCost]
    efs_per_gb_month: float | None
    prices: list[Price]
    missing: list[str] = field(default_factory=list)

    def size(self, label: str) -> SizeCost:
        return next(s for s in self.sizes if s.label == label)

    def as_json(self) -> dict:
        return {
            "stack": self.stack,
            "region": self.region,
            "hoursPerMonth": HOURS_PER_MONTH,
            "sizes": [s.as_json() for s in self.sizes],
            "efsPerGbMonth": self.efs_per_gb_month,
            "prices": [
                {"key": p.key, "usd": p.usd, "unit": p.unit, "source": p.source, "asOf": p.as_of, "fetched": p.fetched}
                for p in self.prices
            ],
            "missing": self.missing,
        }


def estimate(settings: Settings, prices: dict[str, Price]) -> CostEstimate:
    region = settings.region
    used: list[Price] = []
    missing: list[str] = []

    def one(key: str) -> float | None:
        price = prices.get(key)
        if price is None:
            missing.append(key)
            return None
        used.append(price)
        return price.usd

    controller = one(f"ondemand:{region}:{settings.controller_instance_type}")
    gp3 = one(f"gp3:{region}")
    on_demand = one(f"ondemand:{region}:{settings.engine_instance_types[0]}") if settings.on_demand_base else 0.0
    spot_prices = []
    for instance_type in settings.engine_instance_types:
        pools = [p for key, p in prices.items() if key.startswith(f"spot:{region}:{instance_type}:")]
        if not pools:
            missing.append(f"spot:{region}:{instance_type}")
        spot_prices += pools
    used += spot_prices
    spot = mean(p.usd for p in spot_prices) if spot_prices else None
    efs = one(f"efs:{region}") if settings.shared_storage.creates_efs else None
    volume_hour = None if gp3 is None else gp3 * ROOT_VOLUME_GB / HOURS_PER_MONTH

    def at(label: str, nodes: int) -> SizeCost:
        on_demand_nodes = min(settings.on_demand_base, nodes)
        spot_nodes = nodes - on_demand_nodes
        return SizeCost(
            label=label,
            engine_nodes=nodes,
            spot_nodes=spot_nodes,
            on_demand_nodes=on_demand_nodes,
            controller=controller,
            engines_spot=None if spot is None and spot_nodes else (spot or 0.0) * spot_nodes,
            engines_on_demand=None if on_demand is None else on_demand * on_demand_nodes,
            volumes=None if volume_hour is None else volume_hour * (nodes + 1),
        )

    sizes = [
        at("engineNodes", settings.engine_nodes),
        at("maxEngineNodes", settings.fleet_max),
        at("idle", settings.min_engine_nodes),
    ]
    unique = {p.key: p for p in used}
    return CostEstimate(settings.stack, region, sizes, efs, sorted(unique.values(), key=lambda p: p.key), missing)


def engine_node_hour(settings: Settings, prices: dict[str, Price], nodes: int) -> float | None:
    """What NODES engine nodes cost per hour (spot, on-demand base, root volumes), or None
    when a price is missing: what `ipfleet run` prices its node-hours at."""
    result = estimate(settings.model_copy(update={"engine_nodes": nodes}), prices)
    size = result.size("engineNodes")
    if result.missing or size.volumes is None:
        return None
    volumes_engines = size.volumes * nodes / (nodes + 1)  # the controller's volume is not the run's
    return ((size.engines_spot or 0.0) + (size.engines_on_demand or 0.0) + volumes_engines) / nodes
