"""Argument checks shared by the acquisition modules: ValueErrors that name the argument."""

from __future__ import annotations

import numbers


def check_odd(name: str, value: object) -> int:
    """An odd integer >= 1 (a window side), or ValueError naming the argument and value."""
    valid = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not valid or value < 1 or value % 2 == 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be an odd integer >= 1, but got {name}={value!r}")
    return int(value)  # type: ignore[arg-type]


def check_count(name: str, value: object) -> int:
    """A non-negative integer, or ValueError naming the argument and value."""
    valid = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not valid or value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be an integer >= 0, but got {name}={value!r}")
    return int(value)  # type: ignore[arg-type]
