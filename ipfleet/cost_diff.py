"""The cost side of a review: what a change does to a stack's cost per hour and per
month at its bounds (engineNodes, maxEngineNodes, idle), the way Infracost comments
on a Terraform pull request. Prices are the ones cached on this machine (`ipfleet
cost` fills the cache from AWS): a review needs no credentials, and says which
prices it lacks rather than guess."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipfleet.cost import estimate
from ipfleet.prices import Price
from ipfleet.settings import Settings

SIZES = ("engineNodes", "maxEngineNodes", "idle")


@dataclass(frozen=True)
class CostRow:
    size: str
    old_hour: float | None
    new_hour: float | None

    @property
    def change_hour(self) -> float | None:
        if self.old_hour is None or self.new_hour is None:
            return None
        return self.new_hour - self.old_hour


@dataclass(frozen=True)
class CostChange:
    rows: list[CostRow]
    missing: list[str] = field(default_factory=list)
    oldest_price: str | None = None

    def as_json(self) -> dict:
        def money(value: float | None, hours: int = 1) -> float | None:
            return None if value is None else round(value * hours, 4)

        return {
            "sizes": [
                {
                    "size": r.size,
                    "perHour": {"old": money(r.old_hour), "new": money(r.new_hour), "change": money(r.change_hour)},
                    "perMonth": {
                        "old": money(r.old_hour, 730),
                        "new": money(r.new_hour, 730),
                        "change": money(r.change_hour, 730),
                    },
                }
                for r in self.rows
            ],
            "missing": self.missing,
            "oldestPrice": self.oldest_price,
        }


def cost_change(old: Settings | None, new: Settings | None, prices: dict[str, Price]) -> CostChange:
    """OLD or NEW is None for a stack the change adds or deletes (it costs nothing there)."""
    missing: list[str] = []
    used: list[Price] = []
    per_size: dict[str, list[float | None]] = {size: [] for size in SIZES}
    for settings in (old, new):
        if settings is None:
            for size in SIZES:
                per_size[size].append(0.0)
            continue
        result = estimate(settings, prices)
        missing += [key for key in result.missing if key not in missing]
        used += result.prices
        for size in SIZES:
            per_size[size].append(result.size(size).per_hour)
    oldest = min((p.fetched for p in used), default=None)
    return CostChange([CostRow(size, *per_size[size]) for size in SIZES], missing, oldest)


def render(change: CostChange) -> list[str]:
    def usd(value: float | None, hours: int = 1, sign: bool = False) -> str:
        if value is None:
            return "?"
        amount = value * hours
        return f"{'+' if sign and amount >= 0 else ''}{'-' if amount < 0 else ''}${abs(amount):,.2f}"

    lines = ["", "Cost (USD; spot at the mean of the stack's pools, EFS by use not included):"]
    for r in change.rows:
        lines.append(
            f"    {r.size:<15} per hour {usd(r.old_hour)} -> {usd(r.new_hour)} ({usd(r.change_hour, sign=True)}), "
            f"per month {usd(r.old_hour, 730)} -> {usd(r.new_hour, 730)} ({usd(r.change_hour, 730, sign=True)})"
        )
    if change.oldest_price:
        lines.append(f"    prices cached by `ipfleet cost`, the oldest fetched {change.oldest_price}")
    if change.missing:
        lines.append(
            "    prices missing (run `ipfleet cost STACK` with AWS credentials to cache them): "
            + ", ".join(change.missing)
        )
    return lines
