"""Distributed layer: search spaces (and, next to them, the Ray Tune trainable and actors)."""

from halo_ray.distributed.space import (
    PARAM_KINDS,
    SEARCHERS,
    AshaSpec,
    ParamSpec,
    SearchSpace,
    SearchSpaceError,
    load_search_space,
)

__all__ = [
    "PARAM_KINDS",
    "SEARCHERS",
    "AshaSpec",
    "ParamSpec",
    "SearchSpace",
    "SearchSpaceError",
    "load_search_space",
]
