"""Run records of the experiments, written with a checksum and verified when read; and the atomic JSON
writers every study uses.

A finished run's ``record.json`` is what every report is computed from, so it is never trusted
blindly: :func:`write_record` adds ``checksum`` (SHA-256 of the record's canonical JSON without it),
and :func:`verify_record` refuses — with one line naming the file and the remedy — a record whose
checksum does not match (edited or corrupted since it was written), or whose per-prompt values are
out of range: win outcomes must be probabilities in [0, 1] (NaN: a judge failure), rewards and KL values finite.
A record without a checksum is refused too (the records committed before checksums existed were
signed once, after checking they were unchanged since committed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

from logitsam.errors import UserError

OUTCOME_KEYS = ("outcomes_vs_sft", "outcomes_vs_chosen")
FINITE_KEYS = ("rewards", "kl_values")


def checksum(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temporary file + rename): a killed run leaves the old file or none."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(rows: list[dict[str, Any]], path: str) -> str:
    """Write rows as JSON lines atomically; returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)
    return path


def write_record(path: str, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` with its checksum atomically (temporary file + rename); returns what was written."""
    stored = {**record, "checksum": checksum(record)}
    write_json(path, stored)
    return stored


def _flat(values: Any) -> list[Any]:
    """The numbers of a per-prompt list or a seeds × prompts grid."""
    if isinstance(values, list) and values and isinstance(values[0], list):
        return [x for row in values for x in row]
    return values if isinstance(values, list) else [values]


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be used (None: it can)."""
    if "checksum" not in record:
        return "it has no checksum (every record is written with one; a missing one was removed)"
    if record["checksum"] != checksum(record):
        return "its checksum does not match: edited or corrupted since it was written"
    for key in OUTCOME_KEYS:
        if key in record:
            bad = [x for x in _flat(record[key]) if not (isinstance(x, (int, float)) and (x != x or 0 <= x <= 1))]
            if bad:
                return f"{key} holds {bad[0]!r} (win outcomes are probabilities in [0, 1], NaN for a judge failure)"
    for key in FINITE_KEYS:
        if key in record:
            bad = [x for x in _flat(record[key]) if not (isinstance(x, (int, float)) and math.isfinite(x))]
            if bad:
                return f"{key} holds {bad[0]!r} (must be finite numbers)"
    if "log" in record and not (isinstance(record["log"], list) and record["log"]):
        return "its training log is empty or not a list"
    return None


def verify_record(path: str, record: dict[str, Any], remedy: str = "delete it to run that run again") -> dict[str, Any]:
    """``record`` if usable, else UserError naming ``path``, the problem and ``remedy``."""
    problem = record_problem(record)
    if problem:
        raise UserError(f"{path}: {problem}; {remedy}")
    return record
