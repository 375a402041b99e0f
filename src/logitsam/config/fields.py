"""Every config key as ``logitsam train --help`` and the README list it: type, default and one-line doc,
read from the dataclasses of schema.py."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from logitsam.config.schema import Config


@dataclass(frozen=True)
class FieldDoc:
    """One config key as ``logitsam train --help`` lists it."""

    key: str  # section.key
    type: str  # e.g. "list[str]", "float | None"
    default: str  # as YAML, e.g. "null", "[none]"
    help: str


def yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def describe_fields() -> list[FieldDoc]:
    """Every config key with its type, default and one-line doc, in section order."""
    rows = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[misc]  # every section is a dataclass factory
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            kind = str(hints[f.name]) if typing.get_origin(hints[f.name]) else hints[f.name].__name__
            key, kind = f"{section.name}.{f.name}", kind.replace("typing.", "")
            rows.append(FieldDoc(key, kind, yaml_text(default), f.metadata["help"]))
    return rows
