"""The papers' auxiliary losses, exactly as RIPU's and HALO's released code compute them.

Both take logits ``[B, C, H, W]`` at the resolution where the labels live (the network input
size: the released code upsamples the logits before every loss) and return a differentiable
0-d tensor in the logits' dtype.

* :func:`negative_learning_loss` — RIPU eq. 11 ("negative learning"): classes the model
  already deems unlikely (softmax below ``threshold``) are pushed further down on every target
  pixel, labelled or not. RIPU's and HALO's ``NegativeLearningLoss``.
* :func:`local_consistency_loss` — RIPU eq. 9 ("local consistency regularisation",
  ``LCR_TYPE: l1``): on source pixels at a label boundary, the L1 distance between a pixel's
  probability vector and the mean over its 3×3 neighbourhood. RIPU's ``LocalConsistentLoss``.

Where the released code divides by zero (no negative class in the batch, no boundary pixel in
the batch) it returns NaN, which would poison the step; these functions return an exact 0
there instead (with a gradient of 0), and agree with the released code everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "NEGATIVE_THRESHOLD",
    "label_boundary",
    "local_consistency_loss",
    "negative_learning_loss",
]

#: RIPU's and HALO's negative-learning threshold: classes below this probability are "surely not".
NEGATIVE_THRESHOLD = 0.05

#: The label value that means void (Cityscapes' ignore index), never a boundary pixel itself.
VOID = 255

#: The released code's ``log(1 - p + 1e-6)`` guard.
_LOG_EPS = 1e-6

# 8-neighbour Laplacian of the released ``DetectSPBoundary`` and the 3×3 mean of its
# ``LocalDiscrepancy`` (RIPU/HALO ``core/loss/boundary.py``).
_LAPLACIAN = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape [B, C, H, W], but got shape {tuple(logits.shape)}")


def negative_learning_loss(
    logits: torch.Tensor, *, threshold: float = NEGATIVE_THRESHOLD, classes: torch.Tensor | None = None
) -> torch.Tensor:
    """RIPU's negative learning over a whole batch: ``Σ −m·log(1 − p + 1e-6) / Σ m``.

    ``p = softmax(logits)`` over the classes; ``m`` (detached) marks every (pixel, class) pair
    of the batch with ``p < threshold``. The sum runs over all pairs of the batch and is
    divided by the batch's total count of such pairs (not averaged per pixel first).

    Args:
        logits: ``[B, C, H, W]`` unnormalised class scores.
        threshold: probability below which a class is a complementary ("surely not") label.
        classes: optional bool ``[C]``: only these classes can be complementary labels. A run
            whose source lacks classes (SYNTHIA: 16 of 19) passes the trained ones, as the
            released SYNTHIA code, whose network has only those outputs.

    Returns:
        0-d tensor; exactly 0 when no pair is below the threshold (the released code: NaN).
    """
    _check_logits(logits)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], but got threshold={threshold!r}")
    probs = logits.softmax(dim=1)  # [B, C, H, W]
    mask = (probs < threshold).detach()
    if classes is not None:
        mask = mask & classes.view(1, -1, 1, 1).to(mask.device)
    total = -(mask * torch.log(1 - probs + _LOG_EPS)).sum()
    return total / mask.sum().clamp_min(1)


def label_boundary(labels: torch.Tensor) -> torch.Tensor:
    """Source label-boundary pixels as RIPU's code finds them, bool ``[B, H, W]``.

    A pixel is a boundary pixel when the 8-neighbour Laplacian ``8·l(x) − Σ l(neighbours)`` of
    the label-id map is non-zero, with zero padding outside the image (so a border pixel of any
    class but 0 counts, and one of class 0 only next to another class), and the pixel itself is
    not void. Void neighbours (255) take part with their value, so pixels next to void count.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must have shape [B, H, W], but got shape {tuple(labels.shape)}")
    kernel = torch.tensor(_LAPLACIAN, dtype=torch.float32, device=labels.device).view(1, 1, 3, 3)
    lap = F.conv2d(labels.unsqueeze(1).float(), kernel, padding=1)[:, 0]  # [B, H, W], exact integers
    return (lap.long() != 0) & (labels != VOID)


def local_consistency_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RIPU's local consistency (L1): mean over label-boundary pixels of ``Σ_c |p_c − p̄_c|``.

    ``p = softmax(logits)``, ``p̄`` its 3×3 mean with replicate padding (the image's edge
    pixels repeat outwards), and the mean runs over the pixels of :func:`label_boundary` of
    the whole batch.

    Args:
        logits: ``[B, C, H, W]`` source logits at the label resolution.
        labels: ``[B, H, W]`` source train ids, 255 = void.

    Returns:
        0-d tensor; exactly 0 when the batch has no boundary pixel (the released code: NaN).
    """
    _check_logits(logits)
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"labels must have shape [B, H, W] = {[logits.shape[0], *logits.shape[2:]]} to match the "
            f"logits, but got shape {list(labels.shape)}"
        )
    probs = logits.softmax(dim=1)  # [B, C, H, W]
    channels = probs.shape[1]
    kernel = torch.full((channels, 1, 3, 3), 1.0 / 9.0, dtype=probs.dtype, device=probs.device)
    mean = F.conv2d(F.pad(probs, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)  # [B, C, H, W]
    discrepancy = (probs - mean).abs().sum(dim=1)  # [B, H, W]
    selected = discrepancy[label_boundary(labels)]  # [N] boundary pixels of the batch
    if selected.numel() == 0:
        return discrepancy.sum() * 0.0  # 0, with a (zero) gradient path to the logits
    return selected.mean()
