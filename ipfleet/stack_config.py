"""Where a stack's raw config comes from: the Pulumi engine, or a stack file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ipfleet.settings import SettingsError

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


# A stack file is a few kilobytes; anything this big is not one.
STACK_FILE_LIMIT = 1024 * 1024


def _read_small(path: Path) -> str:
    """The file's text, refusing what is not a regular file (a link to /dev/zero, a FIFO)
    and what is larger than any stack file, before reading it."""
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    with path.open("rb") as f:
        data = f.read(STACK_FILE_LIMIT + 1)
    if len(data) > STACK_FILE_LIMIT:
        raise ValueError(f"{path}: larger than {STACK_FILE_LIMIT // 1024} KiB, which no stack file is")
    return data.decode("utf-8", errors="replace")


def read_stack_file(path: Path) -> dict[str, Any]:
    """The `config:` map of a stacks/Pulumi.NAME.yaml file, as the Pulumi CLI would pass it.

    Encrypted values (`secure:`) cannot be read offline; they become a placeholder.
    A key set twice is a SettingsError: YAML keeps the last one silently, while the
    Pulumi CLI refuses the file, so `ipfleet plan` and `pulumi up` would disagree.
    """
    return read_stack_text(_read_small(path), str(path), path.name)


def read_stack_text(text: str, where: str, name: str | None = None) -> dict[str, Any]:
    """The same, from a stack file's TEXT (WHERE names it in errors: a path, a git blob)."""
    name = name or Path(where).name
    try:
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML ({e})") from None
    if duplicates:
        raise SettingsError(
            [
                f"{key}: set twice in {name} ({line}); the Pulumi CLI refuses a "
                "stack file with a key twice, so keep one"
                for key, line in duplicates
            ]
        )
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{where}: not a Pulumi stack file (expected a mapping)")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{where}: `config:` must be a mapping")
    return {key: _decode(value) for key, value in config.items()}


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[str, str]]:
    """(setting, "line A: …, line B: …") for every key a mapping holds twice, at any depth."""
    found: list[tuple[str, str]] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            # The top-level `config:` map's keys are the settings themselves (ipfleet:engineNodes).
            full = key if path in ("", "config") else f"{path}.{key}"
            line = key_node.start_mark.line + 1
            if key in first_line:
                found.append((full, f"lines {first_line[key]} and {line}"))
            else:
                first_line[key] = line
            found += _duplicate_keys(value_node, full)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path}[{index}]")
    return found


def as_engine_config(config: dict[str, Any]) -> dict[str, str]:
    """Config as the Pulumi engine passes it: strings, with objects and lists as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"secure"}:
        return SECRET_PLACEHOLDER
    return value
