"""Benchmark: training-step time of the hyperbolic vs the Euclidean segmenter, side by side.

One step = forward + cross-entropy on logits upsampled to the label size + backward + SGD step.
Four models are built from the same seed and timed in one process, interleaved step by step
(hyperbolic, mlr_released, released, euclidean, hyperbolic, …) so that load from other
processes hits all alike; the reported time per step is the median. ``hyperbolic`` is our
default head (float32, offsets in the ball, HFR softplus + rms), ``mlr_released`` the same
with HALO's HyperMLR arithmetic (``mlr: released``), ``released`` the released HALO head that
``reference: true`` builds (float64 expmap0 and HyperMLR, HFR clamp + l2).
Target (docs/architecture.md §5): ratio hyperbolic/euclidean ≤ 1.3.

Run from the repository root::

    python -m benchmarks.heads                      # batch 8, 128×256, CPU
    python -m benchmarks.heads --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from halo_ray.models import Segmenter, build_segmenter


def _step(
    model: Segmenter, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """One timed training step; returns wall seconds."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    logits = model(images).logits  # [B, C, H/4, W/4]
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def run(
    *, steps: int, warmup: int, batch: int, height: int, width: int, num_classes: int
) -> dict[str, float]:
    """Time both geometries; returns seconds/step per geometry, parameter counts and the ratio."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, height, width)
    labels = torch.randint(0, num_classes, (batch, height, width))
    models: dict[str, Segmenter] = {}
    opts: dict[str, torch.optim.Optimizer] = {}
    released = dict(geometry="hyperbolic", hfr_norm="l2", hfr_positivity="clamp", head_dtype="float64", mlr="released")
    for name, kwargs in (
        ("hyperbolic", {"geometry": "hyperbolic"}), ("mlr_released", {"geometry": "hyperbolic", "mlr": "released"}),
        ("released", released), ("euclidean", {"geometry": "euclidean"}),
    ):
        torch.manual_seed(0)
        models[name] = build_segmenter(num_classes=num_classes, **kwargs).train()
        opts[name] = torch.optim.SGD(models[name].parameters(), lr=0.01, momentum=0.9)
    times: dict[str, list[float]] = {g: [] for g in models}
    for i in range(warmup + steps):
        for geometry, model in models.items():
            t = _step(model, opts[geometry], images, labels)
            if i >= warmup:
                times[geometry].append(t)
    result = {f"{g}_s_per_step": statistics.median(ts) for g, ts in times.items()}
    result.update(
        {f"{g}_params": float(sum(p.numel() for p in m.parameters())) for g, m in models.items()}
    )
    result["ratio"] = result["hyperbolic_s_per_step"] / result["euclidean_s_per_step"]
    result["released_ratio"] = result["released_s_per_step"] / result["hyperbolic_s_per_step"]
    result["mlr_released_ratio"] = result["mlr_released_s_per_step"] / result["hyperbolic_s_per_step"]
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print one line per geometry and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per geometry")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per geometry")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    r = run(
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        height=args.height,
        width=args.width,
        num_classes=args.num_classes,
    )
    print(
        f"training step, batch {args.batch}, {args.height}x{args.width}, CPU, "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps"
    )
    for g in ("hyperbolic", "mlr_released", "released", "euclidean"):
        print(f"  {g:<12}  params {int(r[g + '_params']):>7,d}   {r[g + '_s_per_step']:.3f} s/step")
    verdict = "OK" if r["ratio"] <= 1.3 else "ABOVE TARGET"
    print(f"  ratio hyperbolic/euclidean = {r['ratio']:.3f}  (target <= 1.3: {verdict})")
    print(f"  ratio mlr_released/hyperbolic = {r['mlr_released_ratio']:.3f}  (HALO's HyperMLR arithmetic, float32)")
    print(f"  ratio released/hyperbolic = {r['released_ratio']:.3f}  (the released head: float64, HyperMLR, HFR clamp + l2)")


if __name__ == "__main__":
    main()
