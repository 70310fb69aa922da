"""Measure: how close a trained run's embeddings come to the float32 rim of the ball.

A float32 head clips points at norm ``(1 - 4e-3)/√c`` (radius ≈ 6.21/√c); points there tie
under the radius strategies, which is why the released head runs in float64 (radius up to
≈ 12.2/√c). This loads a run's last checkpoint, embeds its target-val images and counts the
pixels whose radius lies within ``--margin`` of the float32 rim.

    python benchmarks/radius_rim.py RUN_DIR [--margin 1e-3]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    from halo_ray.config import build_config
    from halo_ray.hyperbolic import max_radius, radius_map
    from halo_ray.learner import Learner
    from halo_ray.run import latest_checkpoint, load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (halo-ray run --out)")
    parser.add_argument("--margin", type=float, default=1e-3)
    args = parser.parse_args()
    run = Path(args.run)
    cfg = build_config(json.loads((run / "config.json").read_text()))
    learner = Learner(cfg, log=lambda _: None)
    learner.trainer.model.load_state_dict(load_checkpoint(latest_checkpoint(run))["learner"]["trainer"]["model"])
    data = learner.data.target_val
    c = cfg.curvature
    rim = max_radius(torch.float32, c=c)
    pixels = near = 0
    largest = 0.0
    for start in range(0, len(data), cfg.eval_batch_size):
        images, labels = data.evaluation_batch(range(start, min(start + cfg.eval_batch_size, len(data))))
        _, emb, curvature = learner.trainer.forward_maps(images)
        radius = radius_map(learner.trainer.upsample(emb, labels[0].shape), c=curvature)
        pixels += radius.numel()
        near += int((radius > rim - args.margin).sum())
        largest = max(largest, float(radius.max()))
    print(f"{run}: largest target-val radius {largest:.3f} (float32 rim {rim:.3f}); "
          f"{near} of {pixels} pixels within {args.margin:g} of the rim")


if __name__ == "__main__":
    main()
