"""Benchmark: the multi-class label query's vectorised functions against the released loops.

At Cityscapes size (1024×2048, 2048 superpixels of 32×32 px), side by side in one run:
region answers (``region_labels`` against the released per-region ``np.unique`` loop),
PixBal scoring + selection (against per-region means and Python's ``sorted`` with the
released budget loop), stage-2 pseudo labels (against the released per-region loops), and
the label pool's memory per image after 5 released Cityscapes rounds (100k clicks each over
2975 images) against the released dense answer tables.
The "released" versions are tests/released_multiclass.py, which the tests check ours against.

    python benchmarks/multiclass.py [--images 2] [--selected 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from released_multiclass import (  # noqa: E402
    blocky_labels,
    released_pseudo_labels,
    released_region_labels,
    released_scores,
    released_select,
)

from halo_ray.data.superpixels import seeds_initial_grid  # noqa: E402
from halo_ray.multiclass import (  # noqa: E402
    pseudo_labels,
    region_labels,
    region_scores,
    select_regions,
)

H, W, K = 1024, 2048, 20


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="pool images scored")
    parser.add_argument("--selected", type=int, default=40, help="labelled regions in the pseudo-label image")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spx = seeds_initial_grid(H, W).astype(np.int64)
    r = int(spx.max()) + 1
    label = blocky_labels(H, W, 19, rng)

    (ours, _), t_ours = _timed(lambda: region_labels(label, spx, num_classes=19, trim=5))
    (ref, _), t_ref = _timed(lambda: released_region_labels(label, spx, 19, 5))
    assert np.array_equal(ours, ref)
    print(f"region answers, one image: ours {t_ours:.3f} s, released loop {t_ref:.2f} s: {t_ref / t_ours:.0f}x")

    logits = torch.randn(args.images, K, H, W) * 0.5
    spx_n = torch.from_numpy(spx).expand(args.images, H, W).contiguous()
    multihot = (rng.random((args.images, r, K)) < 0.15).astype(np.uint8)
    budget = 50 * args.images

    def ours_select():
        scores = region_scores("pixbal", logits, spx_n)
        return select_regions(scores, multihot, budget=budget, available=None, reference=True)

    def released_select_all():
        scores = released_scores("pixbal", logits, spx_n, T=0.1, nu=6.0, ban=True, batch=None, nseg=r)
        return released_select(scores, multihot, budget, np.ones((args.images, r), bool))

    (order, clicks), t_ours = _timed(ours_select)
    (ref_order, ref_clicks), t_ref = _timed(released_select_all)
    assert clicks == ref_clicks and [tuple(x) for x in order.tolist()] == ref_order
    print(
        f"PixBal scoring + selection per image: ours {t_ours / args.images:.3f} s, "
        f"released loops {t_ref / args.images:.2f} s: {t_ref / t_ours:.0f}x"
    )

    feat = torch.nn.functional.normalize(torch.randn(32, H // 4, W // 4), dim=0)
    feat = torch.nn.functional.interpolate(feat[None], size=(H, W), mode="bilinear")[0]
    small = torch.nn.functional.interpolate(torch.randn(1, K, H // 4, W // 4), size=(H, W), mode="bilinear")[0]
    answer = torch.from_numpy(multihot[0])
    selected = torch.zeros(r, dtype=torch.bool)
    selected[torch.randperm(r)[: args.selected]] = True
    spx_t = torch.from_numpy(spx)
    got, t_ours = _timed(lambda: pseudo_labels(feat, small, answer, spx_t, selected))
    want, t_ref = _timed(lambda: released_pseudo_labels(feat, small, answer.bool(), spx_t, selected))
    assert torch.equal(got, want)
    print(
        f"pseudo labels, one image, {args.selected} labelled regions: ours {t_ours:.3f} s, "
        f"released loops {t_ref:.2f} s: {t_ref / t_ours:.0f}x"
    )
    pool_memory()


def pool_memory(rounds: int = 5, clicks_per_round: int = 100_000, images: int = 2975) -> None:
    """Bytes per image of a RegionPool after ``rounds`` released rounds, against the released
    dense ``multi_hot_cls`` uint8 ``[nseg, C+1]`` + ``sp_size`` int32 ``[nseg]`` per image."""
    from halo_ray.pool import ArrayOracle
    from halo_ray.region_pool import RegionPool

    rng = np.random.default_rng(0)
    spx = seeds_initial_grid(H, W).astype(np.int64)
    r = int(spx.max()) + 1
    coarse = rng.integers(0, 19, size=(H // 48 + 1, W // 48 + 1))  # 48-px class blocks: 1-4 classes a region
    label = np.kron(coarse, np.ones((48, 48), np.int64))[:H, :W].astype(np.uint8)
    answers, _ = region_labels(label, spx, num_classes=19, trim=5)
    per_region = float(answers.sum(1).mean())
    regions = round(rounds * clicks_per_round / per_region / images)  # answered regions per image
    pool = RegionPool(1, lambda i: spx, ArrayOracle([label]), num_classes=19)
    order = rng.permutation(r)
    for k in range(rounds):
        pool.reveal(k + 1, 0, order[k * regions // rounds : (k + 1) * regions // rounds])
    ours = pool.nbytes()
    released = r * 20 + r * 4
    print(f"pool memory per image after {rounds} rounds ({regions} answered regions, {per_region:.1f} clicks each): "
          f"ours {ours} B, released tables {released} B: {released / ours:.0f}x less")


if __name__ == "__main__":
    main()
