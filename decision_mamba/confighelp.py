"""Every config key with its value and a one-line description, for `--help` and `--show-config`.

The descriptions are the comments of the config dataclasses (config.py, model.py): the
comment at the end of a field's line, or else the comment lines right above it. One home
per description, and the dataclasses stay plain to read; tests/test_confighelp.py checks
that every field has one. A dataclass may add a `field_help()` classmethod for fields whose
choices come from a registry (ModelConfig: the token mixers of mixers.MIXERS).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
from functools import cache
from typing import Any

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:")


@cache
def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} read from the source of dataclass `cls`."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}  # line number -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = _FIELD_LINE.match(line)
        if not match or match[1] not in names or match[1] in out:
            continue
        if number in comments and number in code_lines:  # a trailing comment
            out[match[1]] = comments[number]
            continue
        above = []
        previous = number - 1
        while previous in comments and previous not in code_lines:  # a block of comment lines
            above.insert(0, comments[previous])
            previous -= 1
        out[match[1]] = " ".join(above)
    return out


def config_rows(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, description) for every leaf field of the dataclass instance `cfg`."""
    rows = []
    comments = field_comments(type(cfg))
    if hasattr(type(cfg), "field_help"):  # choices read from a registry (ModelConfig.mixer: mixers.MIXERS)
        comments = {**comments, **type(cfg).field_help()}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(config_rows(value, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", value, comments.get(f.name, "")))
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
