"""Benchmark: acquisition score + greedy selection, halo_ray vs the reference algorithm.

For HALO (``PURITY: hyper``, K = 100 bins), HALO as released (``PURITY: radius``) and RIPU,
at each image size, one selection round of a 5 % budget over 5 rounds (3x3 regions,
suppression 11 for the HALO variants, 5 = 2·3-1 for RIPU) is computed twice on the same
inputs (softmax of C = 19 classes, D = 64 ball embeddings, spatially smooth like upsampled
network outputs):

* **reference** - a straightforward implementation, written below, of the released
  reference code's algorithm: a one-hot K-channel box-filter conv for the impurity, and a
  greedy loop that takes ``torch.max`` over the whole map per pick and writes ``-inf`` into
  the suppression window;
* **halo_ray** - ``score_map(..., reference=True)`` + ``select`` (the same numbers, so the
  selections must be identical), and, for information, the default mode.

The selected masks and updated suppression masks must be identical; the score maps are
compared too. ``select`` runs on the inputs' device: on a GPU its greedy pass is the device
path (``_greedy_device``: a tensor fixpoint per candidate chunk), on the CPU the host walk
(``_greedy``). A second table, after the summary line, times the greedy pass alone on each
``reference=True`` score map both ways on the benchmark's device - the host walk (on a GPU:
each candidate chunk copied to the host and walked in Python) and the device path - and
checks that they pick the same centres in the same order. The run exits with status 1 if any
output differs.

    python benchmarks/acquisition.py                       # 640x1280 and 1024x2048
    python benchmarks/acquisition.py --quick               # 640x1280 only (< ~1 min on CPU)
    python benchmarks/acquisition.py --sizes 1024x2048 --device cuda
    python benchmarks/acquisition.py --quick --threads 1   # on a CPU shared with other jobs

Timings are wall-clock seconds of one image (inputs already on the device, CUDA
synchronised); halo_ray's are the median of ``--repeats`` runs after a warm-up, the
reference's a single run (it takes tens of seconds per image on CPU).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import geoopt
import geoopt.manifolds.stereographic.math as pmath
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from halo_ray.acquisition import picks_per_round, score_map, select  # noqa: E402
from halo_ray.acquisition.selection import _greedy, _greedy_device  # noqa: E402

NUM_CLASSES = 19
EMBED_DIM = 64
BINS = 100
REGION_SIZE = 3
BUDGET_PCT = 5.0
ROUNDS = 5
SPEEDUP_TARGET = 30.0  # docs/architecture.md §5, per image at 2048x1024
TARGET_PIXELS = 2048 * 1024


@dataclass(frozen=True)
class Case:
    """One benchmarked strategy: its halo_ray name, the reference's purity type, settings."""

    strategy: str
    purity: str  # the reference's ACTIVE.PURITY
    normalize: bool  # the reference's ACTIVE.NORMALIZE
    suppression: int


CASES = (
    Case("halo", "hyper", True, 11),
    Case("halo_radius", "radius", True, 11),
    Case("ripu", "ripu", False, 2 * REGION_SIZE - 1),
)


# ----------------------------------------------------------------------------- inputs


def make_inputs(
    height: int, width: int, *, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax ``[C, H, W]`` and ball embeddings ``[D, H, W]``, smooth like network outputs.

    Low-resolution random logits / tangent vectors upsampled bilinearly (as the reference
    upsamples its stride-8 outputs), plus a little per-pixel noise.
    """
    gen = torch.Generator().manual_seed(seed)
    low = (height // 8 + 2, width // 8 + 2)
    logits = torch.randn((1, NUM_CLASSES, *low), generator=gen) * 3.0
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)[0]
    logits += 0.3 * torch.randn((NUM_CLASSES, height, width), generator=gen)
    probs = torch.softmax(logits, dim=0)
    tangent = torch.randn((1, EMBED_DIM, *low), generator=gen) * 0.25
    tangent = F.interpolate(tangent, size=(height, width), mode="bilinear", align_corners=True)[0]
    tangent += 0.02 * torch.randn((EMBED_DIM, height, width), generator=gen)
    ball = geoopt.PoincareBall(c=1.0)
    embeddings = ball.expmap0(tangent.permute(1, 2, 0)).permute(2, 0, 1).contiguous()
    return probs.to(device), embeddings.to(device)


# ----------------------------------------------------------------------------- reference algorithm


def _normalize_map(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation as in the reference (no epsilon)."""
    return (x - x.min().item()) / (x.max().item() - x.min().item())


def _ones_conv(
    channels: int, size: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A bias-free grouped conv with all-ones ``size x size`` kernels and zero padding."""
    weight = torch.ones((channels, 1, size, size), dtype=torch.float32, device=device)
    return lambda x: F.conv2d(x, weight, None, 1, (size // 2, size // 2), 1, channels)


def reference_score(
    probs: torch.Tensor, embeddings: torch.Tensor, case: Case, *, curvature: float = 1.0
) -> torch.Tensor:
    """The reference's ``FloatingRegionScore`` algorithm (entropy uncertainty), ``[H, W]``."""
    num_classes, height, width = probs.shape
    device = probs.device
    k = torch.tensor(-curvature, dtype=torch.float64)
    # pixel entropy, normalised by log(19) whatever C is, summed over the region window
    entropy = torch.sum(-probs * torch.log(probs + 1e-6), dim=0)[None, None] / math.log(19)
    region_uncertainty = _ones_conv(1, REGION_SIZE, device)(entropy)  # [1, 1, H, W]
    if case.purity in ("ripu", "hyper"):
        if case.purity == "ripu":
            predict = torch.argmax(probs, dim=0)
            num_labels, window = num_classes, REGION_SIZE
        else:  # quantise 1 - mm(radius) into K bins
            radius = pmath.dist0(embeddings.unsqueeze(0), k=k, dim=1).squeeze(0)
            x = (radius - radius.min().item()) / (radius.max().item() - radius.min().item())
            x = 1 - x
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo)
            x = torch.clamp(x * BINS - 0.5, min=-0.5 + 1e-5, max=BINS - 0.5 - 1e-5)
            predict = torch.round(x).long()
            num_labels, window = BINS, 3
        one_hot = F.one_hot(predict, num_classes=num_labels).float().permute(2, 0, 1).unsqueeze(0)
        summary = _ones_conv(num_labels, window, device)(one_hot)  # [1, K, H, W]
        count = torch.sum(summary, dim=1, keepdim=True)
        dist = summary / count
        impurity = torch.sum(-dist * torch.log(dist + 1e-6), dim=1, keepdim=True) / math.log(
            num_labels
        )
    else:  # radius
        impurity = pmath.dist0(embeddings.unsqueeze(0), k=k, dim=1).unsqueeze(0)
        count = torch.ones((1, 1, height, width), dtype=torch.float32, device=device)
    uncertainty = region_uncertainty / count
    if case.normalize:
        uncertainty = _normalize_map(uncertainty)
        impurity = _normalize_map(impurity)
    return (impurity * uncertainty)[0, 0]


def reference_select(
    score: torch.Tensor, active: torch.Tensor, picks: int, suppression: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's greedy loop: ``torch.max`` over the whole map per pick."""
    score = score.clone()
    active = active.clone()
    selected = torch.zeros_like(active)
    score[active] = -float("inf")
    rk, mk = REGION_SIZE // 2, suppression // 2
    for _ in range(picks):
        values, rows = torch.max(score, dim=0)
        best, col = torch.max(values, dim=0)
        if best == -float("inf"):
            break
        w = col.item()
        h = rows[w].item()
        score[max(h - mk, 0) : h + mk + 1, max(w - mk, 0) : w + mk + 1] = -float("inf")
        active[max(h - mk, 0) : h + mk + 1, max(w - mk, 0) : w + mk + 1] = True
        selected[max(h - rk, 0) : h + rk + 1, max(w - rk, 0) : w + rk + 1] = True
    return selected, active


# ----------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def run_ours(probs, embeddings, case: Case, picks: int, reference: bool):
    """halo_ray: score map + one round of selection."""
    score = score_map(
        case.strategy, probs, embeddings, bins=BINS, region_size=REGION_SIZE, reference=reference
    )
    selected, active = select(
        score, picks=picks, region_size=REGION_SIZE, suppression=case.suppression
    )
    return score, selected, active


def run_reference(probs, embeddings, case: Case, picks: int):
    """The reference algorithm: score map + greedy argmax selection."""
    score = reference_score(probs, embeddings, case)
    active = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    selected, active = reference_select(score, active, picks, case.suppression)
    return score, selected, active


def benchmark(
    sizes: list[tuple[int, int]], *, device: torch.device, repeats: int, seed: int
) -> bool:
    """Run every case at every size, print the table; True when all outputs are identical."""
    warm_p, warm_z = make_inputs(48, 64, seed=seed, device=device)
    for case in CASES:  # warm-up: kernels, lookup tables, allocator
        run_reference(warm_p, warm_z, case, 5)
        run_ours(warm_p, warm_z, case, 5, True)
        run_ours(warm_p, warm_z, case, 5, False)
    header = (
        f"{'size':>10} {'strategy':>12} {'picks':>6} {'reference s':>12} {'halo_ray s':>11} "
        f"{'speed-up':>9} {'default s':>10} {'identical':>10} {'max|dscore|':>12}"
    )
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(header)
    print("-" * len(header))
    all_identical = True
    ratios = []  # (pixels, ratio)
    greedy_inputs = []  # (size, case, picks, score): the greedy-pass table's inputs
    for height, width in sizes:
        probs, embeddings = make_inputs(height, width, seed=seed, device=device)
        picks = picks_per_round(
            height,
            width,
            budget_pct=BUDGET_PCT,
            rounds=ROUNDS,
            region_size=REGION_SIZE,
            reference=True,
        )
        for case in CASES:
            inputs = (probs, embeddings, case, picks)
            ref_s, (ref_score, ref_sel, ref_act) = _timed(partial(run_reference, *inputs), device)
            ours_times, default_times = [], []
            for _ in range(repeats):
                t, (score, sel, act) = _timed(partial(run_ours, *inputs, True), device)
                ours_times.append(t)
                t, _ = _timed(partial(run_ours, *inputs, False), device)
                default_times.append(t)
            ours_s = statistics.median(ours_times)
            default_s = statistics.median(default_times)
            identical = bool(torch.equal(sel, ref_sel) and torch.equal(act, ref_act))
            diff = float((score - ref_score).abs().max())
            all_identical &= identical and diff <= 1e-5
            ratios.append((height * width, ref_s / ours_s))
            greedy_inputs.append((f"{height}x{width}", case, picks, score))
            print(
                f"{f'{height}x{width}':>10} {case.strategy:>12} {picks:>6} {ref_s:>12.3f} {ours_s:>11.3f} "
                f"{ref_s / ours_s:>8.1f}x {default_s:>10.3f} {str(identical):>10} {diff:>12.2e}",
                flush=True,
            )
    lowest = min(r for _, r in ratios)
    at_target = [r for pixels, r in ratios if pixels >= TARGET_PIXELS]
    if at_target:
        verdict = "met" if min(at_target) >= SPEEDUP_TARGET else "NOT met"
        target = (
            f"at 2048x1024: min {min(at_target):.1f}x, target >= {SPEEDUP_TARGET:.0f}x {verdict}"
        )
    else:
        target = "target is defined at 2048x1024, not run"
    print(f"\nminimum speed-up {lowest:.1f}x ({target}); all outputs identical: {all_identical}")
    same_picks = benchmark_greedy(greedy_inputs, device=device, repeats=repeats)
    return all_identical and same_picks


def benchmark_greedy(
    inputs: list[tuple[str, Case, int, torch.Tensor]], *, device: torch.device, repeats: int
) -> bool:
    """The greedy pass alone, host walk vs device path; True when their picks are identical.

    Times (median of ``repeats`` after one warm-up call each) are of ``_greedy`` and
    ``_greedy_device`` on the same score map, no earlier rounds.
    """
    header = (
        f"{'size':>10} {'strategy':>12} {'picks':>6} {'host walk s':>12} {'device s':>9} "
        f"{'walk/device':>12} {'identical':>10}"
    )
    print(f"\ngreedy pass alone on {device}: host walk (_greedy) vs device path (_greedy_device)")
    print(header)
    print("-" * len(header))
    all_identical = True
    for size, case, picks, score in inputs:
        walk = partial(_greedy, score, picks, case.suppression, None)
        on_device = partial(_greedy_device, score, picks, case.suppression, None)
        walk(), on_device()  # warm-up
        walk_times, device_times = [], []
        for _ in range(repeats):
            t, walked = _timed(walk, device)
            walk_times.append(t)
            t, centres = _timed(on_device, device)
            device_times.append(t)
        walk_s = statistics.median(walk_times)
        device_s = statistics.median(device_times)
        identical = [tuple(c) for c in centres.tolist()] == walked
        all_identical &= identical
        print(
            f"{size:>10} {case.strategy:>12} {picks:>6} {walk_s:>12.4f} {device_s:>9.4f} "
            f"{walk_s / device_s:>11.2f}x {str(identical):>10}",
            flush=True,
        )
    print(f"\ngreedy picks identical: {all_identical}")
    return all_identical


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"sizes must look like 640x1280,1024x2048, but got {item!r}"
            ) from None
        sizes.append((height, width))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=_parse_sizes, default=None, help="HxW list (default 640x1280,1024x2048)"
    )
    parser.add_argument("--quick", action="store_true", help="640x1280 only (under ~1 min on CPU)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of halo_ray per case (median)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([(640, 1280)] if args.quick else [(640, 1280), (1024, 2048)])
    ok = benchmark(sizes, device=torch.device(args.device), repeats=args.repeats, seed=args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
