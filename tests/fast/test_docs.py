"""The documents say what the code does: the wire contract's table against the module."""

from __future__ import annotations

import re
from pathlib import Path

from bootstrap.ipfleet_node import wire

ROOT = Path(__file__).resolve().parents[2]


def test_the_architecture_documents_every_fact_of_the_wire_with_its_value():
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## The wire contract", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Za-z_]+)(?:\(\))?` \| ([^|]*) \|", table, re.M)}
    public = {name for name in vars(wire) if not name.startswith("_") and name != "annotations"}
    assert set(rows) == public
    for name, shown in rows.items():
        value = getattr(wire, name)
        if callable(value):
            if "STACK" in shown:
                assert value("STACK") == shown.strip().strip("`"), name
        else:
            assert shown.strip() == f"`{value!r}`", name
