"""Where a stack's raw config comes from: the Pulumi engine, or a stack file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

SECRET_PLACEHOLDER = "[secret]"


def from_pulumi() -> dict[str, Any]:
    """Every config key the Pulumi engine handed this program (`ns:key` -> value).

    pulumi.Config reads one known key at a time; to name unknown keys (typos)
    the whole map is needed, which the SDK keeps in pulumi.runtime.config.
    """
    from pulumi.runtime import config as runtime_config

    merged = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return merged


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `config:` map of a stacks/Pulumi.NAME.yaml file, as the Pulumi CLI would pass it.

    Encrypted values (`secure:`) cannot be read offline; they become a placeholder.
    """
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a Pulumi stack file (expected a mapping)")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: `config:` must be a mapping")
    return {key: _decode(value) for key, value in config.items()}


def as_engine_config(config: dict[str, Any]) -> dict[str, str]:
    """Config as the Pulumi engine passes it: strings, with objects and lists as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"secure"}:
        return SECRET_PLACEHOLDER
    return value
