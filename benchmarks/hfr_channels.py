"""Measure: how many HFR channels the released positivity (``clamp`` at 1e-5) leaves without gradient.

HFR's channel weights are the image mean of a per-pixel MLP; the released code clamps them at
1e-5, so a channel whose mean weight is negative gets no gradient through its weight. This
builds the default model of ``experiments/synthetic.yaml`` with ``hfr_positivity: clamp``
(untrained, per seed) and counts, on a batch of 8 source images of the embedded benchmark,
the weights that are clamped and the channels clamped in every image of the batch.

    python benchmarks/hfr_channels.py [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> None:
    from halo_ray.config import load_config
    from halo_ray.learner import Learner
    from halo_ray.training import normalize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    for seed in args.seeds:
        cfg = load_config("experiments/synthetic.yaml", [*args.set, f"seed={seed}", "hfr_positivity=clamp"])
        learner = Learner(cfg, log=lambda _: None)
        model = learner.trainer.model.train()
        images = learner.data.source.images(list(range(8)))
        with torch.no_grad():
            tangent = model.head.reduce(model.backbone(normalize(images)))  # [8, D, h, w]
            pixels = tangent.permute(0, 2, 3, 1).reshape(-1, tangent.shape[1])
            raw = model.head.hfr.mlp(pixels).view(8, -1, tangent.shape[1]).mean(dim=1)  # [8, D]
        clamped = raw < 1e-5
        print(f"seed {seed}: {clamped.float().mean().item():.0%} of (image, channel) weights clamped; "
              f"{int(clamped.all(dim=0).sum())} of {tangent.shape[1]} channels clamped in every image")


if __name__ == "__main__":
    main()
