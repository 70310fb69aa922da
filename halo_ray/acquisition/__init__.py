"""Acquisition: per-image score maps and greedy region (RA) / pixel (PA) selection.

Pure functions on tensors, no training or Ray here. One round for one image::

    score = score_map("halo", probs, embeddings, curvature=1.0)          # [H, W]
    picks = picks_per_round(H, W, budget_pct=5, rounds=5, region_size=3, unit="region")
    selected, active = select(score, picks=picks, region_size=3, suppression=11, active=active)

Formulas and the differences of the ``reference=True`` compatibility setting are in
``docs/acquisition.md``.
"""

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
from .selection import picks_per_round, select, select_centres, square_mask

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
