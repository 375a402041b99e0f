"""Reading preference data files into raw records: (1-based line or row number, record) pairs.

JSONL, JSON (a list of objects, or {"data": [...]}), CSV, Parquet, a local HF ``datasets``
directory (``save_to_disk``), or a hub name when the user has a network (never in tests). Files are
UTF-8 (a leading BOM, as Excel writes it, is ignored); JSON lines are split on ``\\n`` only, so
U+2028/U+2029/NEL inside strings stay in the string.

Records are read strictly, because a silently "repaired" record trains on the wrong text:
a JSON object that repeats a key; a CSV header that repeats a column name; a CSV row with more
fields than the header (an unquoted comma); a CSV quote that is never closed — each is a
:class:`~logitsam.errors.DataError` naming the file, the line and, where there is one, the field.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any

from logitsam.errors import DataError

BOM = b"\xef\xbb\xbf"


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _utf8_error(path: str, raw: bytes, err: UnicodeDecodeError) -> DataError:
    line = raw.count(b"\n", 0, err.start) + 1
    return DataError(path, line, None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x})")


def read_text(path: str) -> str:
    """A text file's content as UTF-8 (a leading BOM dropped); DataError naming the line of a bad byte."""
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
        return _DECODER.decode(text)
    except _DuplicateKey as e:
        raise DataError(path, line, e.key, "the object gives this key twice (which one is meant?)") from None
    except json.JSONDecodeError as e:
        raise DataError(path, line + e.lineno - 1, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer with too many digits, nesting too deep
        raise DataError(path, line, None, f"malformed JSON: {str(e) or type(e).__name__}") from None


def _jsonl(path: str) -> Iterator[tuple[int, Any]]:
    # split on \n only: str.splitlines also splits at U+2028/U+2029/NEL, which JSON strings may hold
    for i, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            yield i, _loads(line, path, i)


def _looks_like_jsonl(text: str) -> bool:
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def _json(path: str) -> Iterator[tuple[int, Any]]:
    text = read_text(path)
    try:
        data = _loads(text, path, 1)
    except DataError as e:
        if e.problem.startswith("the object gives this key twice"):  # name the element that repeats it
            _locate_duplicate(text, path)
        elif e.problem.startswith("malformed JSON: Extra data") and _looks_like_jsonl(text):
            hint = "; the file looks like JSON Lines (one object per line): name it .jsonl"
            raise DataError(path, e.line, None, e.problem + hint) from None
        raise
    wrapped = isinstance(data, dict) and isinstance(data.get("data"), list)
    items = data["data"] if wrapped else data
    if not isinstance(items, list):
        raise DataError(path, 1, None, 'expected a list of objects (or {"data": [...]})')
    yield from zip(_element_lines(text, len(items), wrapped), items, strict=True)


def _element_starts(text: str, wrapped: bool) -> Iterator[tuple[int, int]]:
    """(line, offset) of each element of the top-level (or "data") array, in order."""
    pos = text.index("[", text.index('"data"') if wrapped else 0) + 1
    plain = json.JSONDecoder()
    while True:
        while text[pos] in " \t\r\n,":
            pos += 1
        if text[pos] == "]":
            return
        yield text.count("\n", 0, pos) + 1, pos
        pos = plain.raw_decode(text, pos)[1]


def _element_lines(text: str, count: int, wrapped: bool) -> list[int]:
    """1-based line where each element of the (top-level or "data") array starts."""
    try:
        lines = [line for line, _ in _element_starts(text, wrapped)]
    except (ValueError, IndexError):  # unusual layout: fall back to element numbers
        return list(range(1, count + 1))
    return lines if len(lines) == count else list(range(1, count + 1))


def _locate_duplicate(text: str, path: str) -> None:
    """Raise the duplicate-key DataError at the line of the array element that holds it (if found)."""
    for wrapped in (False, True):
        try:
            for line, pos in _element_starts(text, wrapped):
                try:
                    _DECODER.raw_decode(text, pos)
                except _DuplicateKey as e:
                    problem = "the object gives this key twice (which one is meant?)"
                    raise DataError(path, line, e.key, problem) from None
        except (ValueError, IndexError, RecursionError):
            continue


def _csv(path: str) -> Iterator[tuple[int, Any]]:
    # newline="": quoted fields keep their line breaks, and only \r/\n end a record (not U+2028).
    # strict: a quote that is never closed is an error, not the rest of the file read as one field
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), strict=True)
    rows, start = [], 1
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long responses exceed the default 128 KiB per field
    try:
        header = reader.fieldnames or []
        start = reader.line_num + 1
        dup = next((name for i, name in enumerate(header) if name in header[:i]), None)
        if dup is not None:
            raise DataError(path, 1, dup, "the header names this column twice")
        for row in reader:
            if None in row:  # DictReader keeps fields beyond the header under the key None
                n = len(header) + len(row[None])
                problem = f"{n} fields, but the header has {len(header)} (an unquoted comma? quote such fields)"
                raise DataError(path, start, None, problem)
            rows.append((start, dict(row)))
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(path, start, None, 'unterminated quote: a field opened with " is never closed') from None
        # line_num has not counted the line being parsed when the csv module raises
        raise DataError(path, reader.line_num + 1, None, f"malformed CSV: {e}") from None
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
        except (FileNotFoundError, ValueError) as e:  # what load_from_disk raises for a folder it cannot read
            raise DataError(path, None, None, f"not a datasets directory ({e})") from e
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:  # never guess which split is meant
                splits = ", ".join(ds)
                raise DataError(
                    path,
                    None,
                    None,
                    f"a DatasetDict without a 'train' split (splits: {splits}); give the split's "
                    f"own folder, e.g. {os.path.join(path, next(iter(ds)))}",
                )
            ds = ds["train"]
        yield from _table(ds)
        return
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        if ext:
            raise DataError(path, None, None, "file not found")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            problem = "not a local file; as a hub data set name it needs a network, but HF_HUB_OFFLINE=1 is set"
            raise DataError(path, None, None, problem)
        import datasets  # a hub name, e.g. trl-lib/ultrafeedback_binarized[:train]

        name, _, split = path.partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # network, unknown name, bad split: all reported the same way (cause chained)
            raise DataError(path, None, None, f"cannot load it as a hub data set: {' '.join(str(e).split())}") from e
        yield from _table(ds)
        return
    if not os.path.isfile(path):  # a named pipe or a device would block or never end
        raise DataError(path, None, None, "not a regular file (a pipe, socket or device)")
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv}
    if ext in readers:
        yield from readers[ext](path)
    elif ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path).to_pylist()
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid (a ValueError) / OSError for non-Parquet bytes
            raise DataError(path, None, None, f"not a readable Parquet file ({' '.join(str(e).split())})") from e
        yield from _table(table)
    else:
        raise DataError(path, None, None, f"unsupported file type {ext!r} (use .jsonl, .json, .csv, .parquet)")
