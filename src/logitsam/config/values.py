"""Reading config values: YAML without duplicate keys, and checking a value against a field's type.

- :func:`parse_yaml` is ``yaml.safe_load`` with a loader that refuses a key repeated in one mapping
  (at any depth): PyYAML otherwise keeps the last one silently.
- :func:`command_line_value` reads a value typed on the command line for a field's type: where the
  field takes text (a name or path, also inside a mapping), a plain value YAML would read as text or
  as a number is kept exactly as typed (YAML would cut ``runs/my run #2`` at its comment); other
  values (numbers, booleans, lists, mappings, ``null``, a quoted string) are read as YAML.
- :func:`check_value` checks a value against a field's type annotation, with light coercions:
  an int where a float is expected; a YAML 1.1 number-as-string (``1e-4``, an exponent without a
  dot, which PyYAML reads as text) where a float is expected, and inside mappings (``train.extra``,
  ``loss.params``); a finite number where a name or path (``str``) is expected becomes its text
  (``--train.output_dir=2024``); one value where a list is expected is a one-item list. NaN and
  infinities are refused anywhere.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

import yaml

from logitsam.errors import ConfigError

# YAML 1.1 (PyYAML) reads 1e-4 — an exponent without a dot — as a string.
YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key; the message names the key and its line."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(None, None, f"duplicate key {key!r} (line {line})")
        self.key, self.line = key, line

    def __str__(self) -> str:
        return str(self.problem)


class _NoDuplicatesLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key given twice (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _NoDuplicatesLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged in (<<: *anchor) may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: SafeLoader reports it below
            break
        if duplicate:
            raise DuplicateKeyError(key, key_node.start_mark.line + 1)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_NoDuplicatesLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key repeated in a mapping."""
    return yaml.load(text, Loader=_NoDuplicatesLoader)  # a SafeLoader subclass: safe


def _numeric(tp: Any) -> bool:
    return bool({int, float} & set(typing.get_args(tp) or (tp,)))


def command_line_value(text: str, tp: Any) -> Any:
    """``text`` (as typed after ``--section.key=``) for a field of type ``tp``; see the module docstring.
    Raises :class:`DuplicateKeyError` for a mapping with a key twice."""
    if text == "":
        return ""
    try:
        loader = _NoDuplicatesLoader(text)  # its reader refuses control characters: the text itself then
    except yaml.YAMLError:
        return text
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except DuplicateKeyError:
        raise
    except (yaml.YAMLError, RecursionError):
        return text  # not YAML at all: the text itself
    finally:
        loader.dispose()
    plain = isinstance(node, yaml.ScalarNode) and node.style is None  # quoted text is meant as YAML
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if plain and isinstance(value, str) and (tp is Any or accepts_text(tp)):
        return text
    if plain and number and accepts_text(tp) and not _numeric(tp):
        return text  # --train.output_dir=2024.10: the name as typed, not 2024.1
    return value


def _finite(value: Any, where: str) -> Any:
    """``value`` unless a float anywhere in it (nested lists/mappings too) is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")
    return value


def numbers_from_text(value: Any) -> Any:
    """YAML 1.1 numbers-as-strings (``1e-8``) read as floats, inside lists and mappings too."""
    if isinstance(value, str) and YAML11_FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: numbers_from_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_from_text(v) for v in value]
    return value


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Value checked (and lightly coerced, see the module docstring) against a field type."""
    return _finite(_typed(value, tp, where), where)


def _typed(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            try:
                return _typed(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if value is not None and not isinstance(value, (list, dict)):
            value = [value]  # one value where a list is expected: train_files: x.jsonl
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_typed(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where}: keys must be strings, got {bad[0]!r}")
        return numbers_from_text(dict(value))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float and number:
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-4' as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and number and math.isfinite(value):
        return str(value)  # a name or path that YAML read as a number: output_dir: 2024
    if value is None and tp in (int, float, str, bool):  # `key:` / `--key= ` read as YAML null
        raise ConfigError(f"{where}: needs a {tp.__name__} value, got an empty one (null)")
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def accepts_text(tp: Any) -> bool:
    """Whether a field of type ``tp`` takes a str (or a list of them): numbers there become their text."""
    if tp is str:
        return True
    if typing.get_origin(tp) is dict:
        return False
    return any(accepts_text(arm) for arm in typing.get_args(tp) if arm is not type(None))
