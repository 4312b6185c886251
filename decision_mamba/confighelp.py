"""Every config key with its value and a one-line description, for `--help` and `--show-config`.

The descriptions are the fields' own: `config.setting(default, help)` stores each in the
field's metadata, so there is one home per description; tests/test_confighelp.py checks
that every field has one.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def field_help(cls: type) -> dict[str, str]:
    """{field name: its description} of the config dataclass `cls`."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def config_rows(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, description) for every leaf field of the dataclass instance `cfg`."""
    rows = []
    descriptions = field_help(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(config_rows(value, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", value, descriptions[f.name]))
    return rows


def show_value(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)


def describe_config(cfg: Any, title: str) -> str:
    """The rows as aligned text: `key = value   description`."""
    rows = [(key, show_value(value), text) for key, value, text in config_rows(cfg)]
    width = max(len(f"{k} = {v}") for k, v, _ in rows)
    lines = [title]
    for key, value, text in rows:
        setting = f"{key} = {value}"
        lines.append(f"  {setting:<{width}}  {text}".rstrip())
    return "\n".join(lines)
