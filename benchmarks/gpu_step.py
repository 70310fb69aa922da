"""Benchmark: the paper recipe's cost on one accelerator — training steps, decoding, scoring.

What a user planning a GTAV→Cityscapes run needs to know before booking a GPU, measured side
by side in one process:

* **training step** (``Trainer.train``: source + target forward/backward, SGD) at the HALO
  recipe's sizes (source 1280×720, target 1280×640, batch 8 in ``grad_accum`` micro-batches,
  hyperbolic head) per backbone, float32 vs bfloat16 autocast (``amp``), with the peak GPU
  memory; images come from memory, so this is the model's cost alone;
* **decoding**: the same step's images read from PNG files in the official Cityscapes layout
  (full 2048×1024 images, bicubic resize, ``ImageSet`` with its decode threads) — the part of
  a step that is CPU work — as seconds per step and as a share of the step;
* **scoring**: one target image forward at 1280×640, probabilities and ball embeddings
  upsampled to 2048×1024, the acquisition score and the greedy selection, per strategy; and
  the resulting time of one selection round over Cityscapes' 2,975 training images.

Run from the repository root (on a GPU machine; on a CPU it runs, slowly, in float32)::

    python -m benchmarks.gpu_step
    python -m benchmarks.gpu_step --backbones deeplabv3p_r101 --steps 3 --no-amp
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from halo_ray.acquisition import picks_per_round, score_map, select
from halo_ray.config import build_config
from halo_ray.data.labels import TRAIN_ID_TO_LABEL_ID
from halo_ray.data.layouts import CityscapesDataset, resize_image, resize_label
from halo_ray.imagesets import ImageSet, SparseLabels
from halo_ray.training import Trainer

CITYSCAPES_TRAIN_IMAGES = 2975  # images a selection round scores (Cityscapes train split)
NATIVE = (1024, 2048)  # Cityscapes (H, W)
SOURCE_SIZE = (1280, 720)  # papers' [W, H] network inputs
TARGET_SIZE = (1280, 640)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _photo_like(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` smooth uint8 images ``[n, H, W, 3]`` (blocky colour fields plus noise, which
    compress roughly like photos) and label maps ``[n, H, W]`` of train ids 0..18."""
    h, w = shape
    coarse = rng.integers(0, 256, (n, h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    images = coarse.repeat(64, axis=1).repeat(64, axis=2)[:, :h, :w]
    images = np.clip(images.astype(np.int16) + rng.integers(-12, 13, images.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 19, (n, h // 64 + 1, w // 64 + 1), dtype=np.uint8)
    labels = labels.repeat(64, axis=1).repeat(64, axis=2)[:, :h, :w]
    return images, labels


def _write_cityscapes(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images/labels as a Cityscapes ``train`` split (labelIds: train id k → its label id)."""
    for split_dir in ("leftImg8bit/train/bench", "gtFine/train/bench"):
        (root / split_dir).mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        stem = f"bench_{i:06d}_000019"
        Image.fromarray(img).save(root / "leftImg8bit/train/bench" / f"{stem}_leftImg8bit.png")
        Image.fromarray(TRAIN_ID_TO_LABEL_ID[lab]).save(root / "gtFine/train/bench" / f"{stem}_gtFine_labelIds.png")


def _config(backbone: str, amp: bool, device: str, batch: int, grad_accum: int, prefetch: bool, workers: int):
    return build_config(
        dict(
            backbone=backbone, amp=amp, device=device, batch_size=batch, grad_accum=grad_accum,
            source_size=list(SOURCE_SIZE), target_size=list(TARGET_SIZE), freeze_bn=True,
            target_sampling="all", lr=1e-3, head_lr_mult=10.0, embed_dim=64, prefetch=prefetch,
            decode_workers=workers,
        )
    )


def time_training(
    cfg, device: torch.device, source: ImageSet, target: ImageSet, labels: SparseLabels, *, steps: int
) -> tuple[dict[str, float], Trainer]:
    """Mean seconds per optimizer step over one ``train`` call of ``steps`` steps (after a
    one-step warm-up call) and the peak GPU memory (GiB) of one config, with the trainer."""
    trainer = Trainer(cfg, 19, device)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train(1, source=source, target=target, target_labels=labels, generator=gen, start_step=0,
                  total_steps=10**6)  # warm-up (cudnn autotuning, allocator)
    _sync(device)
    start = time.perf_counter()
    trainer.train(steps, source=source, target=target, target_labels=labels, generator=gen, start_step=1,
                  total_steps=10**6)  # one call: prefetching works across these steps
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"s_per_step": seconds, "peak_gib": peak}, trainer


def time_scoring(trainer: Trainer, images: torch.Tensor, strategies: list[str], budget: float, rounds: int,
                 device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per target image of forward + upsampling + score + selection, per strategy."""
    picks = picks_per_round(*NATIVE, budget_pct=budget, rounds=rounds, region_size=3)
    out = {}
    for strategy in strategies:
        def one(strategy: str = strategy) -> None:
            logits, emb, c = trainer.forward_maps(images)
            probs = trainer.upsample(logits, NATIVE).softmax(dim=1)[0]  # [C, H, W]
            ball = trainer.upsample(emb, NATIVE)[0]
            score = score_map(strategy, probs, ball, curvature=c or 1.0, region_size=3)
            select(score, picks=picks, region_size=3, suppression=11)

        with torch.no_grad():
            out[strategy] = _timed(one, device, repeats=repeats, warmup=1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="deeplabv3p_r101,deeplabv2_r101,mit_b2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="images per step (each domain)")
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--no-amp", action="store_true", help="float32 only")
    parser.add_argument("--decode-workers", type=int, default=8, help="ImageSet decode threads")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    n = args.batch * 2
    images, labels = _photo_like(np.random.default_rng(0), n, NATIVE)
    gt = SparseLabels.from_dense(labels)
    # the model's cost alone: images already at the input sizes, nothing to decode or resize
    ready_src = ImageSet.from_arrays(
        np.stack([resize_image(im, SOURCE_SIZE[::-1]) for im in images]),
        np.stack([resize_label(lab, SOURCE_SIZE[::-1]) for lab in labels]))
    ready_tgt = ImageSet.from_arrays(np.stack([resize_image(im, TARGET_SIZE[::-1]) for im in images]),
                                     np.stack([resize_label(lab, TARGET_SIZE[::-1]) for lab in labels]))
    ready_gt = SparseLabels.from_dense(np.stack([resize_label(lab, TARGET_SIZE[::-1]) for lab in labels]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch} (grad_accum {args.grad_accum}), "
          f"source {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]}, target {TARGET_SIZE[0]}x{TARGET_SIZE[1]}, hyperbolic head")
    precisions = [False] if args.no_amp or device.type != "cuda" else [False, True]
    backbones = args.backbones.split(",")
    best: dict[str, float] = {}
    print("\n== the model alone: training step on images already at the input sizes ==")
    for backbone in backbones:
        fp32 = None
        for amp in precisions:
            cfg = _config(backbone, amp, device.type, args.batch, args.grad_accum, True, args.decode_workers)
            r, trainer = time_training(cfg, device, ready_src, ready_tgt, ready_gt, steps=args.steps)
            speed = "" if fp32 is None else f"  (amp speed-up {fp32 / r['s_per_step']:.2f}x)"
            fp32 = r["s_per_step"] if fp32 is None else fp32
            best[backbone] = r["s_per_step"]
            print(f"{backbone:>16} {'bf16' if amp else 'fp32'}: {r['s_per_step']:.3f} s/step, peak "
                  f"{r['peak_gib']:.1f} GiB, 30k steps = {r['s_per_step'] * 30000 / 3600:.1f} h{speed}")
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    main_backbone, amp = backbones[0], precisions[-1]
    print(f"\n== {main_backbone} {'bf16' if amp else 'fp32'} with its images read from PNG "
          f"(Cityscapes layout, 2048x1024, decode_workers {args.decode_workers}) ==")
    with tempfile.TemporaryDirectory() as tmp:
        _write_cityscapes(Path(tmp), images, labels)
        dataset = CityscapesDataset(tmp, "train")
        sets = {key: ImageSet(dataset, size=hw, cache_bytes=0, workers=args.decode_workers)
                for key, hw in (("source", SOURCE_SIZE[::-1]), ("target", TARGET_SIZE[::-1]))}
        decode = _timed(lambda: (sets["source"].training_batch(range(args.batch)),
                                 sets["target"].images(range(args.batch, n))),
                        torch.device("cpu"), repeats=3, warmup=1)
        print(f"  decoding + resizing one step's {n} images alone: {decode:.3f} s")
        timed = {}
        for prefetch in (False, True):
            cfg = _config(main_backbone, amp, device.type, args.batch, args.grad_accum, prefetch, args.decode_workers)
            r, trainer = time_training(cfg, device, sets["source"], sets["target"], gt, steps=args.steps)
            timed[prefetch] = r["s_per_step"]
            print(f"  prefetch {str(prefetch).lower():>5}: {r['s_per_step']:.3f} s/step "
                  f"({r['s_per_step'] / best[main_backbone]:.2f}x the model alone)")
            if prefetch:
                kept = trainer
            else:
                del trainer
        print(f"  prefetching: {timed[False] / timed[True]:.2f}x faster steps")
    print("\n== scoring + selection per target image (forward at 1280x640, maps at 2048x1024) ==")
    one_image = ready_tgt.images([0])
    per_image = time_scoring(kept, one_image, ["entropy", "ripu", "halo_radius", "halo"], 5.0, 5, device, 3)
    for strategy, seconds in per_image.items():
        print(f"  {strategy:>12}: {seconds * 1000:.0f} ms/image, one round over "
              f"{CITYSCAPES_TRAIN_IMAGES} images = {seconds * CITYSCAPES_TRAIN_IMAGES / 60:.1f} min "
              f"on one device")


if __name__ == "__main__":
    main()
