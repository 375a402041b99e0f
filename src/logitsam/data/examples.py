"""Preference data: read files, recognise the format, validate, produce PreferenceExamples.

Files: JSONL, JSON (a list of objects, or {"data": [...]}), CSV, Parquet, a local HF ``datasets``
directory (``save_to_disk``), or a hub name when the user has a network (never in tests); reading
them is datafiles.py's part.

Formats, as the paper's data sets are published:
- ``explicit``: string fields ``prompt``, ``chosen``, ``rejected`` (TL;DR preference style).
- ``hh``: full transcripts in ``chosen``/``rejected`` (Anthropic HH-RLHF); the prompt is the common
  prefix up to and including its last ``\\n\\nAssistant:``; the responses are what follows.
- ``conversational``: ``chosen``/``rejected`` are message lists ({"role", "content"}); the prompt is
  ``prompt`` when it is a message list, else the shared messages before the last one
  (UltraFeedback binarized: a string ``prompt`` beside full conversations is ignored; without the
  user turn in ``chosen``/``rejected`` it must be a message list).
``auto`` recognises each row's format from its fields.

Scores (``score_chosen``/``score_rejected``, explicit and conversational rows) come in pairs: a row
gives both or neither, and the rows of one :func:`load_examples` call all give them or all do not
(a batch mixing the two would silently lose its scores).

Conversations: an optional first ``system`` message, then ``user`` and ``assistant`` turns
alternating from ``user``; the prompt ends with a ``user`` turn and each response is one
``assistant`` message. Text may not contain lone surrogates; scores must be finite numbers.
A file without rows is an error. A missing field's error lists the fields the row has.

Every problem is a :class:`~logitsam.errors.DataError` naming the file, the 1-based line (rows
for Parquet and dataset directories) and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from logitsam.data.files import read_rows
from logitsam.errors import DataError

FORMATS = ("auto", "explicit", "hh", "conversational")
HH_MARKER = "\n\nAssistant:"
ROLES = ("system", "user", "assistant")
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

    def __post_init__(self) -> None:  # built in code, too: name the field instead of failing while tokenizing
        if not isinstance(self.prompt, (str, list)):
            got = type(self.prompt).__name__
            raise ValueError(f"PreferenceExample.prompt must be text or a message list, got {got}")
        for key in ("chosen", "rejected"):
            value = getattr(self, key)
            if not isinstance(value, (str, dict)):
                raise ValueError(f"PreferenceExample.{key} must be text or one message, got {type(value).__name__}")

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


def _unicode(value: str, key: str, path: str, line: int) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" in JSON decodes to a lone surrogate no tokenizer takes
        raise DataError(path, line, key, f"not valid Unicode (lone surrogate at character {e.start})") from None
    return value


def _found(row: dict) -> str:
    keys = [repr(k) for k in row]
    return f"fields found: {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" if keys else "no fields"


def _text(row: dict, key: str, path: str, line: int) -> str:
    if key not in row:
        raise DataError(path, line, key, f"missing ({_found(row)})")
    if row[key] is None:  # a JSON null, an empty Parquet or datasets cell
        raise DataError(path, line, key, "is null; expected a string")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    return _unicode(value, key, path, line)


def check_messages(value: Any, key: str, path: str, line: int) -> list[Message]:
    """``value`` as a non-empty message list with known roles and text content; DataError naming the entry."""
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


def _scores(row: dict, path: str, line: int) -> tuple[float | None, float | None]:
    chosen, rejected = _score(row, "score_chosen", path, line), _score(row, "score_rejected", path, line)
    if (chosen is None) != (rejected is None):
        given, absent = ("score_chosen", "score_rejected") if rejected is None else ("score_rejected", "score_chosen")
        raise DataError(path, line, absent, f"missing, but {given} is given (give both scores or neither)")
    return chosen, rejected


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
        if detected is None and "prompt" in row and row["prompt"] is None:
            raise DataError(path, line, "prompt", "is null; expected a string")
        if detected is None:  # most likely an explicit row without its prompt
            msg = (
                f"missing (and 'chosen' is neither a message list nor an HH transcript with {HH_MARKER!r}; "
                f"{_found(row)})"
            )
            raise DataError(path, line, "prompt", msg)
        fmt = detected
    src = f"{path}:{line}"
    if fmt == "explicit":
        prompt = _text(row, "prompt", path, line)
        chosen = _nonempty(_text(row, "chosen", path, line), "chosen", path, line)
        rejected = _nonempty(_text(row, "rejected", path, line), "rejected", path, line)
        return PreferenceExample(prompt, chosen, rejected, *_scores(row, path, line), source=src)
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
        chosen_m = check_messages(row.get("chosen"), "chosen", path, line)
        rejected_m = check_messages(row.get("rejected"), "rejected", path, line)
        if isinstance(row.get("prompt"), list):
            prompt = check_messages(row["prompt"], "prompt", path, line)
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
            if not prompt and isinstance(row.get("prompt"), str):
                raise DataError(
                    path,
                    line,
                    "prompt",
                    'must be a message list ([{"role": "user", "content": ...}]) when '
                    "chosen/rejected are message lists without the user turn",
                )
            if not prompt:
                raise DataError(path, line, "chosen", "no prompt: give 'prompt' or earlier messages")
            chosen_m, rejected_m = chosen_m[-1:], rejected_m[-1:]
        _check_prompt(prompt, "prompt" if isinstance(row.get("prompt"), list) else "chosen", path, line)
        for key, msgs in (("chosen", chosen_m), ("rejected", rejected_m)):
            if len(msgs) != 1:
                raise DataError(path, line, key, "expected exactly one response message after the prompt")
            _assistant(msgs[0], f"{key}[{len(row[key]) - 1}]", path, line)
            _nonempty(msgs[0]["content"], f"{key}.content", path, line)
        return PreferenceExample(prompt, chosen_m[0], rejected_m[0], *_scores(row, path, line), src)
    raise DataError(path, line, None, f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def load_examples(paths: list[str], fmt: str = "auto") -> list[PreferenceExample]:
    """All examples of ``paths``, in order. Raises DataError on the first bad record."""
    if fmt not in FORMATS:
        raise DataError(paths[0] if paths else "<data>", None, "format", f"unknown format {fmt!r}")
    out: list[PreferenceExample] = []
    for path in paths:
        before = len(out)
        out.extend(parse_row(row, fmt, path, line) for line, row in read_rows(path))
        if len(out) == before:
            raise DataError(path, None, None, "no rows (the file is empty, blank or only a header)")
    _same_scores(out)
    return out


def _same_scores(examples: list[PreferenceExample]) -> None:
    """DataError at the first example that has scores when the first has none, or the reverse."""
    if not examples:
        return
    first = examples[0].score_chosen is not None
    odd = next((ex for ex in examples if (ex.score_chosen is not None) != first), None)
    if odd is None:
        return
    path, _, line = odd.source.rpartition(":")
    where = (path, int(line)) if path and line.isdigit() else (odd.source, None)
    has, other = ("no scores", "has them") if first else ("scores", "has none")
    problem = f"has {has}, but the first row ({examples[0].source}) {other}: give scores on every row or on none"
    raise DataError(*where, "score_chosen", problem)
