"""Acquisition: per-image score maps and greedy region (RA) / pixel (PA) selection.

Pure functions on tensors, no training or Ray here. One round for one image::

    score = score_map("halo", probs, embeddings, curvature=1.0)          # [H, W]
    picks = picks_per_round(H, W, budget_pct=5, rounds=5, region_size=3, unit="region")
    selected, active = select(score, picks=picks, region_size=3, suppression=11, active=active)

Formulas and the differences of the ``reference=True`` compatibility setting are in
``docs/acquisition.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Each public name and the submodule that defines it. Submodules load on first use, so that
#: ``picks_per_round`` (``.budget``, no torch) does not import torch with the rest: a search
#: trial's run loop computes budgets and never imports torch.
_HOMES = {
    "DEFAULT_BINS": "scores",
    "HYPERBOLIC_STRATEGIES": "scores",
    "STRATEGIES": "scores",
    "UNITS": "scores",
    "minmax": "scores",
    "pixel_entropy": "scores",
    "radius_map": "scores",
    "score_map": "scores",
    "picks_per_round": "budget",
    "select": "selection",
    "select_centres": "selection",
    "square_mask": "selection",
}

if TYPE_CHECKING:
    from .budget import picks_per_round
    from .scores import (
        DEFAULT_BINS,
        HYPERBOLIC_STRATEGIES,
        STRATEGIES,
        UNITS,
        minmax,
        pixel_entropy,
        radius_map,
        score_map,
    )
    from .selection import select, select_centres, square_mask

__all__ = [
    "DEFAULT_BINS",
    "HYPERBOLIC_STRATEGIES",
    "STRATEGIES",
    "UNITS",
    "minmax",
    "picks_per_round",
    "pixel_entropy",
    "radius_map",
    "score_map",
    "select",
    "select_centres",
    "square_mask",
]


def __getattr__(name: str) -> Any:
    """``halo_ray.acquisition.<name>``: the name from its submodule, loaded on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
