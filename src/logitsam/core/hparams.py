"""Valid ranges of loss hyperparameters, declared next to each loss in the registry.

A :class:`Range` is either a real interval (finite values only: NaN/inf never pass) or a set of
string choices. ``check`` returns the value in canonical form (ints become floats) or raises a
ValueError saying what is allowed and why; the caller adds the loss name and the key.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Allowed values of one hyperparameter; ``why`` says what goes wrong outside them."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: ``low`` itself is excluded
    high_open: bool = False
    choices: tuple[str, ...] = ()
    why: str = ""
    boolean: bool = False  # True: the value is a switch, True or False (never 0/1)

    def describe(self) -> str:
        """Human-readable range, e.g. ``(0, inf)``, ``[0, 0.5)``, ``one of sum, mean``, ``true or false``."""
        if self.boolean:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "(" if self.low_open or math.isinf(self.low) else "["
        hi = ")" if self.high_open or math.isinf(self.high) else "]"
        return f"{lo}{_num(self.low)}, {_num(self.high)}{hi}"

    def check(self, value: Any) -> Any:
        """``value`` if allowed (numbers as float), else ValueError naming the range."""
        if self.boolean:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {type(value).__name__} {value!r}")
            return value
        if self.choices:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{value!r} is not {self.describe()}{self._why()}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"{value!r} is not a finite number")
        below = x < self.low or (self.low_open and x == self.low)
        above = x > self.high or (self.high_open and x == self.high)
        if below or above:
            raise ValueError(f"{x!r} is outside {self.describe()}{self._why()}")
        return x

    def _why(self) -> str:
        return f" ({self.why})" if self.why else ""


def _num(x: float) -> str:
    return ("-inf" if x < 0 else "inf") if math.isinf(x) else f"{x:g}"


def positive(why: str = "") -> Range:
    """(0, inf)."""
    return Range(low=0.0, low_open=True, why=why)


def nonnegative(why: str = "") -> Range:
    """[0, inf)."""
    return Range(low=0.0, why=why)


def one_of(*choices: str, why: str = "") -> Range:
    return Range(choices=tuple(choices), why=why)


def switch(why: str = "") -> Range:
    """True or False."""
    return Range(boolean=True, why=why)


def inferred(default: Any) -> Range | None:
    """Range for a hyperparameter declared without one: any finite number / string / bool, by default's type."""
    if isinstance(default, bool):
        return None
    if isinstance(default, numbers.Real):
        return Range()
    return None


def check_like_default(value: Any, default: Any) -> Any:
    """Type check for hyperparameters without a declared range (e.g. a loss registered by a test)."""
    rng = inferred(default)
    if rng is not None:
        return rng.check(value)
    if default is not None and not isinstance(value, type(default)):
        raise ValueError(f"expected {type(default).__name__}, got {type(value).__name__} {value!r}")
    return value
