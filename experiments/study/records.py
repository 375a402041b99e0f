"""The study directory's files: JSON read with one-line errors naming the file, written atomically."""

from __future__ import annotations

import json
import os
from typing import Any

from experiments.records import verify_record
from logitsam.errors import UserError

RECORD_KEYS = ("key", "spec", "method", "rewards", "outcomes_vs_sft", "outcomes_vs_chosen", "kl_values", "log")


def record_path(out: str, name: str) -> str:
    return os.path.join(out, "runs", name.replace("/", "_"), "record.json")


def read_json(path: str, keys: tuple[str, ...], what: str, remedy: str) -> dict[str, Any]:
    """A study file: a JSON object with ``keys``, or a one-line UserError naming ``path`` and ``remedy``."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); {remedy}") from None
    if not isinstance(obj, dict) or not all(k in obj for k in keys):
        raise UserError(f"{path}: not {what}; {remedy}")
    return obj


def read_shared(out: str) -> dict[str, Any]:
    """DIR/shared.json, or UserError saying what is wrong with it (one line, the file named)."""
    path = os.path.join(out, "shared.json")
    if not os.path.isfile(path):
        raise UserError(
            f"{out}: not a study directory (no shared.json); `python -m experiments.study.command --out {out}` "
            "starts one"
        )
    keys = ("key", "settings", "prompts")
    return read_json(path, keys, "a study's shared.json", "delete it (it is rebuilt, runs are kept)")


def read_record(path: str) -> dict[str, Any]:
    """A finished run's record.json, verified (experiments/records.py), or UserError naming it."""
    return verify_record(path, read_json(path, RECORD_KEYS, "a study run's record", "delete it to run that run again"))
