"""Preference data: read files, recognise the format, validate, produce PreferenceExamples.

Files: JSONL, JSON (a list of objects, or {"data": [...]}), CSV, Parquet, a local HF ``datasets``
directory (``save_to_disk``), or a hub name when the user has a network (never in tests).

Formats, as the paper's data sets are published:
- ``explicit``: string fields ``prompt``, ``chosen``, ``rejected`` (TL;DR preference style).
- ``hh``: full transcripts in ``chosen``/``rejected`` (Anthropic HH-RLHF); the prompt is the common
  prefix up to and including its last ``\\n\\nAssistant:``; the responses are what follows.
- ``conversational``: ``chosen``/``rejected`` are message lists ({"role", "content"}); the prompt is
  ``prompt`` when it is a message list, else the shared messages before the last one
  (UltraFeedback binarized). ``score_chosen``/``score_rejected`` are kept when present.
``auto`` recognises each row's format from its fields.

Every problem is a :class:`~logitsam.errors.DataError` naming the file, the 1-based line (rows
for Parquet and dataset directories) and the field.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DataError

FORMATS = ("auto", "explicit", "hh", "conversational")
HH_MARKER = "\n\nAssistant:"
Message = dict[str, str]


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair. ``prompt`` is text or a message list; responses are text or one message."""

    prompt: str | list[Message]
    chosen: str | Message
    rejected: str | Message
    score_chosen: float | None = None
    score_rejected: float | None = None
    source: str = ""

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


def _utf8_error(path: str, raw: bytes, err: UnicodeDecodeError) -> DataError:
    line = raw.count(b"\n", 0, err.start) + 1
    return DataError(path, line, None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x})")


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, raw, e) from None


def _jsonl(path: str) -> Iterator[tuple[int, Any]]:
    for i, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, i, None, f"malformed JSON: {e.msg} (column {e.colno})") from None


def _json(path: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
    wrapped = isinstance(data, dict) and isinstance(data.get("data"), list)
    items = data["data"] if wrapped else data
    if not isinstance(items, list):
        raise DataError(path, 1, None, 'expected a list of objects (or {"data": [...]})')
    yield from zip(_element_lines(text, len(items), wrapped), items, strict=True)


def _element_lines(text: str, count: int, wrapped: bool) -> list[int]:
    """1-based line where each element of the (top-level or "data") array starts."""
    try:
        pos = text.index("[", text.index('"data"') if wrapped else 0) + 1
        dec, lines = json.JSONDecoder(), []
        for _ in range(count):
            while text[pos] in " \t\r\n,":
                pos += 1
            lines.append(text.count("\n", 0, pos) + 1)
            pos = dec.raw_decode(text, pos)[1]
        return lines
    except (ValueError, IndexError):  # unusual layout: fall back to element numbers
        return list(range(1, count + 1))


def _csv(path: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    start = 2
    for row in reader:
        yield start, dict(row)
        start = reader.line_num + 1


def _table(rows: Any) -> Iterator[tuple[int, Any]]:
    for i, row in enumerate(rows, start=1):
        yield i, dict(row)


def read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line or row number, raw record) for every record of a data file, directory or hub name."""
    if os.path.isdir(path):
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:
            raise DataError(path, None, None, f"not a datasets directory ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        yield from _table(ds)
        return
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        if ext or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise DataError(path, None, None, "file not found")
        import datasets  # a hub name, e.g. trl-lib/ultrafeedback_binarized[:train]

        name, _, split = path.partition(":")
        yield from _table(datasets.load_dataset(name, split=split or "train"))
        return
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv}
    if ext in readers:
        yield from readers[ext](path)
    elif ext == ".parquet":
        import pyarrow.parquet as pq

        yield from _table(pq.read_table(path).to_pylist())
    else:
        raise DataError(path, None, None, f"unsupported file type {ext!r} (use .jsonl, .json, .csv, .parquet)")


def _text(row: dict, key: str, path: str, line: int) -> str:
    if key not in row or row[key] is None:
        raise DataError(path, line, key, "missing")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    return value


def _messages(value: Any, key: str, path: str, line: int) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(path, line, key, "expected a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(path, line, f"{key}[{i}]", 'expected {"role": str, "content": str}')
    return value


def _score(row: dict, key: str, path: str, line: int) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(path, line, key, f"expected a number, got {value!r}") from None


def _common_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def detect_format(row: dict) -> str:
    """The format of one raw record (see module docstring)."""
    if isinstance(row.get("chosen"), list):
        return "conversational"
    if "prompt" in row:
        return "explicit"
    return "hh"


def _nonempty(value: str, key: str, path: str, line: int) -> str:
    if not value.strip():
        raise DataError(path, line, key, "empty response")
    return value


def parse_row(row: Any, fmt: str, path: str, line: int) -> PreferenceExample:
    """Validate one raw record and turn it into a PreferenceExample."""
    if not isinstance(row, dict):
        raise DataError(path, line, None, f"expected an object, got {type(row).__name__}")
    fmt = detect_format(row) if fmt == "auto" else fmt
    src = f"{path}:{line}"
    if fmt == "explicit":
        prompt = _text(row, "prompt", path, line)
        chosen = _nonempty(_text(row, "chosen", path, line), "chosen", path, line)
        rejected = _nonempty(_text(row, "rejected", path, line), "rejected", path, line)
        scores = _score(row, "score_chosen", path, line), _score(row, "score_rejected", path, line)
        return PreferenceExample(prompt, chosen, rejected, *scores, source=src)
    if fmt == "hh":
        chosen, rejected = _text(row, "chosen", path, line), _text(row, "rejected", path, line)
        common = chosen[: _common_length(chosen, rejected)]
        cut = common.rfind(HH_MARKER)
        if cut < 0:
            raise DataError(path, line, "chosen", f"no shared {HH_MARKER.strip()!r} turn to split the prompt at")
        cut += len(HH_MARKER)
        prompt = chosen[:cut]
        return PreferenceExample(
            prompt,
            _nonempty(chosen[cut:], "chosen", path, line),
            _nonempty(rejected[cut:], "rejected", path, line),
            source=src,
        )
    if fmt == "conversational":
        chosen_m = _messages(row.get("chosen"), "chosen", path, line)
        rejected_m = _messages(row.get("rejected"), "rejected", path, line)
        if isinstance(row.get("prompt"), list):
            prompt = _messages(row["prompt"], "prompt", path, line)
            if len(chosen_m) == len(prompt) + 1 and chosen_m[:-1] == prompt:
                chosen_m = chosen_m[-1:]
            if len(rejected_m) == len(prompt) + 1 and rejected_m[:-1] == prompt:
                rejected_m = rejected_m[-1:]
        else:
            prompt = chosen_m[:-1]
            if rejected_m[:-1] != prompt:
                raise DataError(path, line, "rejected", "its conversation before the last message differs from chosen")
            if not prompt:
                raise DataError(path, line, "chosen", "no prompt: give 'prompt' or earlier messages")
            chosen_m, rejected_m = chosen_m[-1:], rejected_m[-1:]
        for key, msgs in (("chosen", chosen_m), ("rejected", rejected_m)):
            if len(msgs) != 1:
                raise DataError(path, line, key, "expected exactly one response message after the prompt")
            _nonempty(msgs[0]["content"], f"{key}.content", path, line)
        return PreferenceExample(
            prompt,
            chosen_m[0],
            rejected_m[0],
            _score(row, "score_chosen", path, line),
            _score(row, "score_rejected", path, line),
            src,
        )
    raise DataError(path, line, None, f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def load_examples(paths: list[str], fmt: str = "auto") -> list[PreferenceExample]:
    """All examples of ``paths``, in order. Raises DataError on the first bad record."""
    if fmt not in FORMATS:
        raise DataError(paths[0] if paths else "<data>", None, "format", f"unknown format {fmt!r}")
    out = []
    for path in paths:
        out.extend(parse_row(row, fmt, path, line) for line, row in read_rows(path))
    return out
