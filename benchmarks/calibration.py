"""Calibrate the embedded benchmark: is there a real domain gap?

Trains the experiment file's model and recipe (default ``experiments/synthetic.yaml``) three
ways for the same number of steps as one of its active-learning runs (``source_steps +
rounds × round_steps``, one poly schedule) and evaluates each on target-val, side by side:

* source-only            — trained on the game-like source (what active learning starts from);
* target-supervised      — trained on every target-train label (the upper bound);
* source + target-sup.   — both at once (the "full supervision" DA papers compare with).

It also prints the class frequencies of the source and target sets. The README quotes
its output. Usage::

    python benchmarks/calibration.py [--experiment experiments/synthetic.yaml] [--steps N]
        [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from halo_ray.config import load_config
from halo_ray.data import CITYSCAPES_CLASSES, class_frequencies
from halo_ray.imagesets import ImageSet, SparseLabels
from halo_ray.learner import prepare_data
from halo_ray.training import Trainer

warnings.filterwarnings("ignore")


def all_labels(data: ImageSet) -> np.ndarray:
    """Every native label map of a set, uint8 ``[N, H, W]`` (fine for the small embedded benchmark)."""
    return np.stack([data.dataset.load_label(i) for i in range(len(data))])


def train_and_eval(cfg, train_sets: list[ImageSet], val: ImageSet, steps: int) -> float:
    """Train a fresh model on the given sets (one batch from each per step); return val mIoU."""
    trainer = Trainer(cfg, len(CITYSCAPES_CLASSES))
    gen = torch.Generator().manual_seed(cfg.seed)
    if len(train_sets) == 1:
        trainer.train(steps, source=train_sets[0], generator=gen, start_step=0, total_steps=steps)
    else:
        source, target = train_sets
        trainer.train(
            steps, source=source, generator=gen, start_step=0, total_steps=steps,
            target=target, target_labels=SparseLabels.from_dense(all_labels(target)),
        )
    return trainer.evaluate(val).miou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/synthetic.yaml", help="model, recipe and data")
    parser.add_argument("--steps", type=int, default=None, help="default: the experiment's AL run length")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.experiment, args.set)
    args.steps = args.steps or cfg.total_steps
    print(f"{args.experiment}: {cfg.optimizer} lr {cfg.lr:g}, {args.steps} steps of batch {cfg.batch_size}, "
          f"{cfg.geometry} head")
    data = prepare_data(cfg, log=print)
    print(f"source {len(data.source)} | target-train {len(data.target_train)} | target-val {len(data.target_val)} "
          f"images at {data.source.label_shape(0)}")

    rows = {"source-only": [], "target-supervised": [], "source+target-supervised": []}
    for seed in args.seeds:
        seeded = cfg.replace(seed=seed)
        t0 = time.perf_counter()
        rows["source-only"].append(train_and_eval(seeded, [data.source], data.target_val, args.steps))
        rows["target-supervised"].append(train_and_eval(seeded, [data.target_train], data.target_val, args.steps))
        rows["source+target-supervised"].append(
            train_and_eval(seeded, [data.source, data.target_train], data.target_val, args.steps)
        )
        print(f"seed {seed}: {time.perf_counter() - t0:.0f}s")
    print(f"\ntarget-val mIoU after {args.steps} steps (mean ± sample std over seeds {args.seeds}):")
    for name, values in rows.items():
        spread = np.std(values, ddof=1) if len(values) > 1 else float("nan")
        print(f"  {name:26s} {np.mean(values):6.2f} ± {spread:4.2f}   ({', '.join(f'{v:.1f}' for v in values)})")
    gap = np.mean(rows["target-supervised"]) - np.mean(rows["source-only"])
    print(f"  gap target-supervised − source-only: {gap:.1f} points (target ≥ 20)")

    src, tgt = (100.0 * class_frequencies(all_labels(d)) for d in (data.source, data.target_train))
    print("\nclass frequencies (% of labelled pixels):")
    print(f"  {'class':15s} {'source':>7s} {'target':>7s}")
    for name, s, t in zip(CITYSCAPES_CLASSES, src, tgt, strict=True):
        print(f"  {name:15s} {s:7.2f} {t:7.2f}")


if __name__ == "__main__":
    main()
