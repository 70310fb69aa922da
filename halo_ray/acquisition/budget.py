"""Picks per image and round: the label budget as a count of picks (no torch, so a search
trial's run loop computes it without importing torch)."""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

from ._checks import check_count, check_odd

__all__ = ["picks_per_round"]

_UNITS = ("region", "pixel")


def _check_unit(unit: object) -> str:
    """One of ``region``/``pixel``, or ValueError naming the value."""
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {_UNITS}, but got unit={unit!r}")
    return str(unit)


def picks_per_round(
    height: int,
    width: int,
    *,
    budget_pct: float,
    rounds: int,
    region_size: int,
    unit: str = "region",
    reference: bool = False,
) -> int:
    """Picks per image and round that spend ``budget_pct`` % of the pixels over ``rounds``.

    Region unit (RA): ``ceil(H·W·budget/100 / rounds / region_size²)`` - each pick labels a
    ``region_size²`` square (fewer pixels where it is clipped at the border).
    Pixel unit (PA): the budget counts labelled centre pixels, ``ceil(H·W·budget/100 /
    rounds)``; ``region_size`` is ignored. RIPU's "40 pixels per image" at 1280x640 is
    ``budget_pct = 40 / (1280·640) · 100 = 0.0048828125``.

    The default computes with exact rationals (``budget_pct`` read as the decimal it prints
    as), so exact multiples never round up by one. ``reference=True`` uses the reference's
    float expression ``ceil(H·W·(budget/100/rounds) / region_size²)``.
    """
    height = check_count("height", height)
    width = check_count("width", width)
    rounds = check_count("rounds", rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, but got rounds={rounds}")
    region_size = check_odd("region_size", region_size)
    unit = _check_unit(unit)
    if isinstance(budget_pct, bool) or not isinstance(budget_pct, numbers.Real):
        raise ValueError(
            f"budget_pct must be a number in (0, 100], but got budget_pct={budget_pct!r}"
        )
    if not (0 < float(budget_pct) <= 100):
        raise ValueError(f"budget_pct must be in (0, 100], but got budget_pct={budget_pct!r}")
    area = region_size * region_size if unit == "region" else 1
    if reference:
        return math.ceil(height * width * (float(budget_pct) / 100 / rounds) / area)
    exact = (
        Fraction(repr(float(budget_pct)))
        if not isinstance(budget_pct, numbers.Rational)
        else Fraction(budget_pct)
    )
    value = Fraction(height * width) * exact / 100 / rounds / area
    return math.ceil(value)
