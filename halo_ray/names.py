"""The names a configuration is checked against, in a module that imports nothing.

Strategies, annotation units and backbones are defined beside their code (the acquisition
package, :mod:`halo_ray.multiclass`, :mod:`halo_ray.models`), which imports torch; their
names live here so that validating a configuration — in the CLI, or in a search trial's
driver before it starts its actors — costs no torch import. The modules that implement
them re-export these names, and a test keeps the registries and these names equal.
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = (
    "random",
    "entropy",
    "sconf",
    "margin",
    "ripu",
    "halo",
    "halo_radius",
    "boundaries",
    "radius",
    "radius_inv",
)
"""Every acquisition strategy ``score_map`` knows, in the order the docs list them."""

HYPERBOLIC_STRATEGIES: tuple[str, ...] = ("halo", "halo_radius", "boundaries", "radius", "radius_inv")
"""Strategies that read the hyperbolic radius, so ``embeddings`` must be given."""

REGION_STRATEGIES: tuple[str, ...] = ("pixbal", "bvsb", "classbal")
"""Strategies that score superpixels from class probabilities (unit ``multiclass`` only)."""

BACKBONE_NAMES: tuple[str, ...] = (
    "tiny",
    "deeplabv2_r101",
    "deeplabv3p_r101",
    "deeplabv3p_r101_sep",
    "deeplabv3p_r50_deepstem",
    *(f"mit_{size}" for size in ("b0", "b1", "b2", "b3", "b4", "b5")),
)
"""The ``backbone`` key's values: the keys of :data:`halo_ray.models.BACKBONES`."""

MIN_TRAIN_MICRO_BATCH: dict[str, int] = {"deeplabv3p_r50_deepstem": 2}
"""Backbones that cannot train on fewer images per forward pass (their image-pooling branch has
a BatchNorm, which sees a 1×1 map per image) → that least number; others train on one."""

__all__ = ["BACKBONE_NAMES", "HYPERBOLIC_STRATEGIES", "MIN_TRAIN_MICRO_BATCH", "REGION_STRATEGIES", "STRATEGIES"]
