"""Shared fixtures: a tiny embedded benchmark written once per test session."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
warnings.filterwarnings("ignore", category=DeprecationWarning)

TINY_BENCHMARK = dict(
    height=64, width=128, n_source=16, n_target_train=8, n_target_val=6, n_adverse_train=2, n_adverse_val=2
)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """The embedded benchmark at 64×128 with a handful of images per split."""
    from halo_ray.data import generate_benchmark

    root = tmp_path_factory.mktemp("bench") / "synthetic"
    generate_benchmark(root, seed=0, **TINY_BENCHMARK)
    return root


def tiny_values(data_root, source_cache) -> dict:
    """Config values for a run that finishes in seconds on the tiny benchmark."""
    return dict(
        experiment="tiny", seed=3, data_root=str(data_root), generate_data=False,
        source_steps=20, round_steps=6, rounds=3, batch_size=2, eval_batch_size=4, budget=6.0,
        embed_dim=16, log_every=5, log_images=1, source_cache=str(source_cache), num_threads=1,
        deterministic=_cuda_available(),  # on a GPU, tests that compare two runs need repeatable kernels
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def tiny_config_values(tiny_benchmark, tmp_path):
    """Config values for a run that finishes in seconds on the tiny benchmark."""
    return tiny_values(tiny_benchmark, tmp_path / "cache")
