"""Argument checks for configurables, made when the experiment is built (before any statistics,
data or training): a bad value is one line naming the gin setting, the value and what it must be.

    steps = positive_int("experiment.steps", steps)
"""

from __future__ import annotations

import math
from typing import Iterable

from precondlab.errors import UserInputError


class SettingError(UserInputError, ValueError):
    """A configurable got a value it cannot use; the message names the setting."""


def _fail(setting: str, value, must: str):
    raise SettingError(f"{setting} = {value!r}: must be {must}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(setting: str, value) -> int:
    if not (_is_int(value) and value > 0):
        _fail(setting, value, "a positive integer")
    return value


def nonnegative_int(setting: str, value) -> int:
    if not (_is_int(value) and value >= 0):
        _fail(setting, value, "an integer >= 0")
    return value


def positive_float(setting: str, value) -> float:
    if not (_is_real(value) and value > 0):
        _fail(setting, value, "a positive number")
    return float(value)


def nonnegative_float(setting: str, value) -> float:
    if not (_is_real(value) and value >= 0):
        _fail(setting, value, "a number >= 0")
    return float(value)


def in_range(setting: str, value, low: float, high: float, *, high_open: bool = False) -> float:
    """low <= value <= high (or < high with high_open)."""
    ok = _is_real(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        _fail(setting, value, f"a number in [{low}, {high}{')' if high_open else ']'}")
    return float(value)


def one_of(setting: str, value, choices: Iterable):
    choices = tuple(choices)
    if value not in choices:
        _fail(setting, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def positive_ints(setting: str, values) -> tuple[int, ...]:
    """A non-empty sequence of positive integers, e.g. the evaluated NFEs."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        _fail(setting, values, "a list of positive integers, e.g. (1, 2)")
    values = tuple(values)
    if not values or not all(_is_int(v) and v > 0 for v in values):
        _fail(setting, values, "a non-empty list of positive integers, e.g. (1, 2)")
    return values


__all__ = ["SettingError", "in_range", "nonnegative_float", "nonnegative_int", "one_of", "positive_float",
           "positive_int", "positive_ints"]
