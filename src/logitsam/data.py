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

Conversations: an optional first ``system`` message, then ``user`` and ``assistant`` turns
alternating from ``user``; the prompt ends with a ``user`` turn and each response is one
``assistant`` message. Text may not contain lone surrogates; scores must be finite numbers.
Files are UTF-8 (a leading BOM, as Excel writes it, is ignored); JSON lines are split on ``\n``
only, so U+2028/U+2029/NEL inside strings stay in the string. A file without rows is an error.

Every problem is a :class:`~logitsam.errors.DataError` naming the file, the 1-based line (rows
for Parquet and dataset directories) and the field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import DataError

FORMATS = ("auto", "explicit", "hh", "conversational")
HH_MARKER = "\n\nAssistant:"
ROLES = ("system", "user", "assistant")
BOM = b"\xef\xbb\xbf"
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
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(path, None, None, f"cannot read: {e.strerror or e}") from None
    raw = raw[len(BOM) :] if raw.startswith(BOM) else raw  # Excel's "CSV UTF-8" starts with a BOM
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, raw, e) from None


def _loads(text: str, path: str, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, line + e.lineno - 1, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer with too many digits, nesting too deep
        raise DataError(path, line, None, f"malformed JSON: {str(e) or type(e).__name__}") from None


def _jsonl(path: str) -> Iterator[tuple[int, Any]]:
    # split on \n only: str.splitlines also splits at U+2028/U+2029/NEL, which JSON strings may hold
    for i, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip():
            yield i, _loads(line, path, i)


def _json(path: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path)
    data = _loads(text, path, 1)
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
    # newline="": quoted fields keep their line breaks, and only \r/\n end a record (not U+2028)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows, start = [], 2
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long responses exceed the default 128 KiB per field
    try:
        for row in reader:
            rows.append((start, dict(row)))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(path, reader.line_num or 1, None, f"malformed CSV: {e}") from None
    finally:
        csv.field_size_limit(limit)
    yield from rows


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
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # network, unknown name, bad split: all reported the same way
            raise DataError(path, None, None, f"cannot load it as a hub data set: {' '.join(str(e).split())}") from None
        yield from _table(ds)
        return
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv}
    if ext in readers:
        yield from readers[ext](path)
    elif ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
            raise DataError(path, None, None, f"not a readable Parquet file ({' '.join(str(e).split())})") from None
        yield from _table(table)
    else:
        raise DataError(path, None, None, f"unsupported file type {ext!r} (use .jsonl, .json, .csv, .parquet)")


def _unicode(value: str, key: str, path: str, line: int) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" in JSON decodes to a lone surrogate no tokenizer takes
        raise DataError(path, line, key, f"not valid Unicode (lone surrogate at character {e.start})") from None
    return value


def _text(row: dict, key: str, path: str, line: int) -> str:
    if key not in row or row[key] is None:
        raise DataError(path, line, key, "missing")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    return _unicode(value, key, path, line)


def _messages(value: Any, key: str, path: str, line: int) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(path, line, key, "expected a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(path, line, f"{key}[{i}]", 'expected {"role": str, "content": str}')
        if m["role"] not in ROLES:
            raise DataError(path, line, f"{key}[{i}].role", f"{m['role']!r} is not one of {', '.join(ROLES)}")
        _unicode(m["content"], f"{key}[{i}].content", path, line)
    return value


def _check_prompt(prompt: list[Message], key: str, path: str, line: int) -> None:
    """Optional system message, then user/assistant alternating from user, ending with user."""
    start = 1 if prompt and prompt[0]["role"] == "system" else 0
    for i, m in enumerate(prompt[start:], start=start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != expected:
            hint = "a system message may only come first" if m["role"] == "system" else "turns alternate"
            raise DataError(path, line, f"{key}[{i}].role", f"expected {expected!r}, got {m['role']!r} ({hint})")
    if not prompt[start:]:
        raise DataError(path, line, key, "the prompt has no user turn")
    if prompt[-1]["role"] != "user":
        raise DataError(path, line, f"{key}[{len(prompt) - 1}].role", "the prompt must end with a user turn")


def _assistant(message: Message, key: str, path: str, line: int) -> None:
    if message["role"] != "assistant":
        problem = f"the response must be an assistant message, got {message['role']!r}"
        raise DataError(path, line, f"{key}.role", problem)


def _score(row: dict, key: str, path: str, line: int) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(path, line, key, f"expected a number, got {value!r}") from None
    if not math.isfinite(score):
        raise DataError(path, line, key, f"expected a finite number, got {value!r}")
    return score


def _common_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def detect_format(row: dict) -> str | None:
    """The format of one raw record (see module docstring); None when it fits none."""
    if isinstance(row.get("chosen"), list):
        return "conversational"
    if "prompt" in row:
        return "explicit"
    if isinstance(row.get("chosen"), str) and HH_MARKER in row["chosen"]:
        return "hh"
    return None


def _nonempty(value: str, key: str, path: str, line: int) -> str:
    if not value.strip():
        raise DataError(path, line, key, "empty response")
    return value


def parse_row(row: Any, fmt: str, path: str, line: int) -> PreferenceExample:
    """Validate one raw record and turn it into a PreferenceExample."""
    if not isinstance(row, dict):
        raise DataError(path, line, None, f"expected an object, got {type(row).__name__}")
    if fmt == "auto":
        detected = detect_format(row)
        if detected is None:  # most likely an explicit row without its prompt
            msg = f"missing (and 'chosen' is neither a message list nor an HH transcript with {HH_MARKER!r})"
            raise DataError(path, line, "prompt", msg)
        fmt = detected
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
            for key, msgs in (("chosen", chosen_m), ("rejected", rejected_m)):
                _assistant(msgs[-1], f"{key}[{len(msgs) - 1}]", path, line)
            prompt = chosen_m[:-1]
            if rejected_m[:-1] != prompt:
                raise DataError(path, line, "rejected", "its conversation before the last message differs from chosen")
            if not prompt:
                raise DataError(path, line, "chosen", "no prompt: give 'prompt' or earlier messages")
            chosen_m, rejected_m = chosen_m[-1:], rejected_m[-1:]
        _check_prompt(prompt, "prompt" if isinstance(row.get("prompt"), list) else "chosen", path, line)
        for key, msgs in (("chosen", chosen_m), ("rejected", rejected_m)):
            if len(msgs) != 1:
                raise DataError(path, line, key, "expected exactly one response message after the prompt")
            _assistant(msgs[0], f"{key}[{len(row[key]) - 1}]", path, line)
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
        before = len(out)
        out.extend(parse_row(row, fmt, path, line) for line, row in read_rows(path))
        if len(out) == before:
            raise DataError(path, None, None, "no rows (the file is empty, blank or only a header)")
    return out
