"""How a Plan reads: a resource tree for people, and the user data it carries."""

from __future__ import annotations

import json

from bootstrap.render import decode_user_data
from ipfleet.plan import Plan, PlannedResource

INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"


def ordered(plan: Plan) -> list[tuple[int, PlannedResource]]:
    """Depth-first, children sorted by name: stable output for diffs in review."""
    children: dict[str | None, list[PlannedResource]] = {}
    for r in plan.resources:
        children.setdefault(r.parent, []).append(r)
    out: list[tuple[int, PlannedResource]] = []

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(children.get(parent, []), key=lambda r: (r.name, r.type)):
            out.append((depth, r))
            if not r.custom:  # components parent other resources
                walk(r.name, depth + 1)

    walk(None, 0)
    return out


def render_text(plan: Plan) -> str:
    lines = [
        f"Stack {plan.stack}: {sum(r.custom for r in plan.resources)} resources in "
        f"{sum(not r.custom for r in plan.resources)} components.",
        "Planned offline: <name.attribute> values are assigned by AWS at deploy time.",
        "",
    ]
    for depth, r in ordered(plan):
        pad = "  " * depth
        lines.append(f"{pad}{r.name}  ({r.type})")
        for key in sorted(r.inputs):
            value = r.inputs[key]
            if key in ("userData", "userDataBase64"):
                value = f"<{len(value)} characters of base64; see `ipfleet render`>"
            lines.append(f"{pad}    {key}: {_compact(value)}")
    lines += ["", "Outputs:"]
    lines += [f"    {k}: {_compact(v)}" for k, v in sorted(plan.outputs.items())]
    return "\n".join(lines)


def encoded_user_data(plan: Plan, role: str) -> str:
    """`role`'s user data, base64, as the plan sends it to EC2: the controller
    instance's, or the engines' launch template's."""
    if role == "controller":
        return plan.one(INSTANCE).inputs["userDataBase64"]
    return plan.one(LAUNCH_TEMPLATE).inputs["userData"]


def user_data(plan: Plan, role: str) -> str:
    """The decoded cloud-config of `role` exactly as the plan sends it to EC2."""
    return decode_user_data(encoded_user_data(plan, role))


def _compact(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
