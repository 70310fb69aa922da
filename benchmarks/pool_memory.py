"""Label-pool memory per target pixel (target, docs/architecture.md §5: <= 1.1 bit per pixel plus O(labelled)).

For a pool of N images of H×W pixels labelled at 0 %, 1 % and 5 % with disjoint 3×3 squares
(one round), measures

* ``nbytes``: the pool's own account of its stored state (:meth:`LabelPool.nbytes`);
* ``traced``: bytes still allocated after building and filling the pool (tracemalloc: numpy
  buffers and Python objects, oracle maps already freed), a check on ``nbytes``;
* ``checkpoint``: bytes of ``torch.save(pool.state_dict())``;

each as bits per target pixel, against a dense uint8 label map per image (8 bits/pixel, what
per-image label files or a dense tensor cost) — the ratio is ``dense / pool``.

Run from the repository root (after ``pip install -e .``, or with ``PYTHONPATH=.``):
``python benchmarks/pool_memory.py [--images 20] [--height 1024] [--width 2048]``.
"""

from __future__ import annotations

import argparse
import gc
import io
import math
import time
import tracemalloc

import numpy as np
import torch

from halo_ray.pool import LabelPool

REGION_SIZE = 3
VOID = 255


class SyntheticOracle:
    """Label maps made on demand from the image index (19 classes, ~5 % void), never stored."""

    def __init__(self, height: int, width: int) -> None:
        self.shape = (height, width)

    def labels(self, index: int) -> np.ndarray:
        rng = np.random.default_rng(index)
        labels = rng.integers(0, 20, self.shape, dtype=np.uint8)  # [H, W]
        labels[labels == 19] = VOID
        return labels


def disjoint_square_centres(
    height: int, width: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Centres ``[n, 2]`` of disjoint 3×3 squares covering ``fraction`` of the image."""
    rows = np.arange(1, height - 1, REGION_SIZE)
    cols = np.arange(1, width - 1, REGION_SIZE)
    picks = round(fraction * height * width / REGION_SIZE**2)
    cells = rng.choice(len(rows) * len(cols), size=picks, replace=False)
    return np.stack([rows[cells // len(cols)], cols[cells % len(cols)]], axis=1)


def measure(images: int, height: int, width: int, fraction: float, seed: int = 0) -> dict:
    """Build a pool, label ``fraction`` of every image in round 1, and measure its memory."""
    rng = np.random.default_rng(seed)
    centres = [disjoint_square_centres(height, width, fraction, rng) for _ in range(images)]
    oracle = SyntheticOracle(height, width)
    warm_up = LabelPool([(8, 8)], SyntheticOracle(8, 8))  # lazy imports must not count
    warm_up.reveal(1, 0, np.array([[4, 4]]), region_size=REGION_SIZE)
    del warm_up
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    pool = LabelPool([(height, width)] * images, oracle)
    for i, c in enumerate(centres):
        if len(c):
            pool.reveal(1, i, c, region_size=REGION_SIZE)
    elapsed = time.perf_counter() - start
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    mask_bytes = sum(math.ceil(h * w / 8) for h, w in pool.shapes)  # the packed masks
    buf = io.BytesIO()
    torch.save(pool.state_dict(), buf)
    pixels = pool.total_pixels
    revealed = pool.labelled_pixels + pool.void_pixels
    return {
        "target_pct": 100 * fraction,
        "labelled_pct": pool.labelled_pct,
        "revealed_pixels": revealed,
        "nbytes": pool.nbytes(),
        "bits_per_pixel": 8 * pool.nbytes() / pixels,
        "traced_bits_per_pixel": 8 * traced / pixels,
        "checkpoint_bits_per_pixel": 8 * buf.getbuffer().nbytes / pixels,
        "dense_uint8_bits_per_pixel": 8.0,
        "ratio_dense_over_pool": 8.0 / (8 * pool.nbytes() / pixels),
        "fixed_bits_per_pixel": 8 * mask_bytes / pixels,
        "bytes_per_revealed_pixel": ((pool.nbytes() - mask_bytes) / revealed if revealed else 0.0),
        "fill_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()
    print(
        f"label pool memory: {args.images} images of {args.height}x{args.width} "
        f"({args.images * args.height * args.width / 1e6:.1f} M target pixels), "
        f"{REGION_SIZE}x{REGION_SIZE} squares, dense baseline = uint8 label map (8 bit/pixel)"
    )
    header = (
        f"{'target':>7} {'labelled':>9} {'bit/px':>7} {'traced':>7} {'ckpt':>7} "
        f"{'fixed':>6} {'B/revealed':>10} {'dense/pool':>10} {'fill s':>7}"
    )
    print(header)
    for fraction in (0.0, 0.01, 0.05):
        r = measure(args.images, args.height, args.width, fraction)
        print(
            f"{r['target_pct']:>6.0f}% {r['labelled_pct']:>8.3f}% {r['bits_per_pixel']:>7.3f} "
            f"{r['traced_bits_per_pixel']:>7.3f} {r['checkpoint_bits_per_pixel']:>7.3f} "
            f"{r['fixed_bits_per_pixel']:>6.3f} {r['bytes_per_revealed_pixel']:>10.2f} "
            f"{r['ratio_dense_over_pool']:>9.1f}x {r['fill_s']:>7.2f}"
        )


if __name__ == "__main__":
    main()
