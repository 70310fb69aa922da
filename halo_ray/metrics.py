"""Segmentation metrics: confusion matrices, per-class IoU and mIoU, the radius–IoU correlation.

torch is imported by the two functions that count on tensors only: a search trial's process
receives :class:`Evaluation` records from its learner and never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from halo_ray.data.labels import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_UPSAMPLED_VALUES", "Evaluation", "average_ranks", "confusion_matrix", "iou_from_confusion",
    "radius_iou_spearman",
    "upsample_chunks",
]



def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts (rows = ground truth), ignoring pixels labelled ``IGNORE_INDEX``."""
    import torch

    keep = label != IGNORE_INDEX
    idx = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> np.ndarray:
    """Per-class IoU; NaN for a class absent from both prediction and ground truth."""
    import torch

    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return iou.cpu().numpy()


@dataclass
class Evaluation:
    """Target-val metrics of one model state."""

    miou: float  # mean over classes present in ground truth or prediction, in percent
    pixel_acc: float  # percent
    iou: np.ndarray  # [C] per-class IoU in percent (NaN = class absent)
    radius_per_class: np.ndarray  # [C] mean hyperbolic radius of ground-truth pixels (NaN if none)
    radius_mean: float  # mean radius over all labelled val pixels (NaN for euclidean)
    radius_acc_spearman: float  # Spearman ρ between per-class mean radius and per-class IoU
    pixels: int = 0  # labelled (non-void) val pixels counted, at native label resolution
    miou13: float = float("nan")  # SYNTHIA source: the papers' mIoU* over 13 classes (else NaN)


def radius_iou_spearman(radius_per_class: np.ndarray, iou: np.ndarray) -> float:
    """Spearman ρ over the classes where both values exist (NaN if fewer than 3 or constant)."""
    ok = np.isfinite(radius_per_class) & np.isfinite(iou)
    if ok.sum() < 3:
        return float("nan")
    x, y = radius_per_class[ok], iou[ok]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their mean rank (``scipy.stats.rankdata``'s
    ``average``): Spearman's ρ is Pearson's r of these. In numpy, because importing
    ``scipy.stats`` costs a fresh process ~1 s, once per trial on its first evaluation."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first position of each tie group
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


#: Most float values of upsampled maps (probabilities + embeddings) held at once while
#: evaluating: a batch of small images goes in one piece, full-resolution Cityscapes
#: images (2048×1024 × 83 channels ≈ 1.7e8) one at a time.
MAX_UPSAMPLED_VALUES = 2**26


def upsample_chunks(shapes: Sequence[tuple[int, int]], channels: int) -> list[list[int]]:
    """Split batch positions into runs of consecutive images of one label shape holding at
    most :data:`MAX_UPSAMPLED_VALUES` upsampled values (at least one image per run)."""
    chunks: list[list[int]] = []
    held = 0
    for k, shape in enumerate(shapes):
        values = channels * shape[0] * shape[1]
        if chunks and shape == shapes[chunks[-1][0]] and held + values <= MAX_UPSAMPLED_VALUES:
            chunks[-1].append(k)
            held += values
        else:
            chunks.append([k])
            held = values
    return chunks
