"""Distributed layer: search spaces, the Ray Tune trainable and the trial's actors.

Names are loaded on first use: a label-pool actor's process imports
:mod:`halo_ray.distributed.actors` and must not pay for pandas and Ray Tune that the search
space's module brings (docs/architecture.md §3).
"""

from __future__ import annotations

import importlib
from typing import Any

_SPACE_NAMES = (
    "PARAM_KINDS",
    "SEARCHERS",
    "AshaSpec",
    "ParamSpec",
    "SearchSpace",
    "SearchSpaceError",
    "load_search_space",
)

__all__ = list(_SPACE_NAMES)


def __getattr__(name: str) -> Any:
    """The search-space names, imported from :mod:`halo_ray.distributed.space` when asked for."""
    if name in _SPACE_NAMES:
        return getattr(importlib.import_module("halo_ray.distributed.space"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
