"""Acquisition score maps for one target image (pure functions on tensors).

``score_map(strategy, probs, embeddings, ...)`` turns the model's softmax ``probs [C, H, W]``
(and, for the hyperbolic strategies, its Poincaré-ball embeddings ``[D, H, W]``) into a
float32 ``[H, W]`` map; higher means "label this pixel/region first". The formulas are the
contract of docs/acquisition.md and are tabulated there, with every difference of the ``reference=True``
compatibility setting, in ``docs/acquisition.md``.

Notation: ``e = -sum_c p_c ln p_c / ln C`` (pixel entropy in [0, 1]), ``R = d_c(0, z)`` the
hyperbolic radius, ``box(x)`` the zero-padded mean over the ``region_size²`` window,
``mm(x)`` per-image min-max normalisation that maps a constant map to 0 (never NaN).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from halo_ray.names import HYPERBOLIC_STRATEGIES, STRATEGIES

from ._checks import check_odd
from ._reference import reference_entropy, reference_radius
from ._windows import (
    box_mean,
    box_sum_conv,
    in_image_count,
    window_impurity,
    window_impurity_reference,
)

__all__ = [
    "DEFAULT_BINS",
    "HYPERBOLIC_STRATEGIES",
    "STRATEGIES",
    "UNITS",
    "minmax",
    "pixel_entropy",
    "radius_map",
    "score_map",
]

UNITS: tuple[str, ...] = ("region", "pixel")
"""Annotation units: ``region`` (RA, a square per pick) and ``pixel`` (PA, the centre only)."""

DEFAULT_BINS = 100
"""Radius quantisation levels K of the HALO boundary term (the reference's ``ACTIVE.K``)."""

# Clamp of the reference's radius quantiser (``quantize_uncert_map``).
_REFERENCE_QUANT_EPS = 1e-5
# geoopt's artanh clamp: the radius of points at the ball's edge stays finite.
_ARTANH_CLAMP = 1 - 1e-7
# A map whose spread is below this many float32 ulps of its magnitude counts as constant.
_CONSTANT_ULPS = 8


@dataclass(frozen=True)
class _Request:
    """Validated arguments of one ``score_map`` call."""

    probs: torch.Tensor  # [C, H, W] float32
    embeddings: torch.Tensor | None  # [D, H, W]
    curvature: float
    bins: int
    region_size: int
    boundary_window: int
    reference: bool
    unit: str
    generator: torch.Generator | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.probs.shape[1]), int(self.probs.shape[2])


# ----------------------------------------------------------------------------- building blocks


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation to [0, 1]; a constant map becomes all zeros.

    "Constant" includes spreads of a few float32 ulps of the map's magnitude, so rounding
    noise on a conceptually flat map is not blown up to the full [0, 1] range.
    """
    lo, hi = torch.aminmax(x)
    lo_v, hi_v = float(lo), float(hi)
    spread = hi_v - lo_v
    scale = max(abs(lo_v), abs(hi_v))
    flat = not spread > _CONSTANT_ULPS * torch.finfo(torch.float32).eps * scale
    if flat or not math.isfinite(spread):
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def _minmax_reference(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``normalize_map``: no epsilon, so a constant map gives NaN."""
    return (x - x.min().item()) / (x.max().item() - x.min().item())


def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``e = -sum_c p_c ln p_c / ln C`` per pixel (``0 ln 0 = 0``), float32 ``[H, W]``.

    Accumulates class by class in one reused buffer (no ``[C, H, W]`` temporary). The log
    argument is clamped at the smallest normal float, which makes ``p = 0`` contribute
    exactly 0 and changes nothing for any ``p`` that matters.
    """
    num_classes = probs.shape[0]
    tiny = torch.finfo(probs.dtype).tiny
    acc = torch.zeros(probs.shape[1:], dtype=probs.dtype, device=probs.device)
    term = torch.empty_like(acc)
    for c in range(num_classes):
        torch.clamp(probs[c], min=tiny, out=term)
        term.log_().mul_(probs[c])
        acc.sub_(term)
    return acc.div_(math.log(num_classes))


def _top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and second-largest class probability per pixel, ``[H, W]`` each."""
    first = probs[0].clone()
    second = torch.full_like(first, -math.inf)
    for c in range(1, probs.shape[0]):
        torch.maximum(second, torch.minimum(first, probs[c]), out=second)
        torch.maximum(first, probs[c], out=first)
    return first, second


def _argmax_labels(probs: torch.Tensor) -> torch.Tensor:
    """``argmax_c p_c`` per pixel, first class on ties (as ``torch.argmax``), ``[H, W]``.

    uint8 when C <= 255 (int64 otherwise): the window statistics only compare labels. The
    update ``label += better·(c - label)`` is exact in wrapping uint8 arithmetic and much
    cheaper than a masked fill.
    """
    num_classes = probs.shape[0]
    best = probs[0].clone()
    better = torch.empty(best.shape, dtype=torch.bool, device=probs.device)
    if num_classes > 255:
        label = torch.zeros(best.shape, dtype=torch.int64, device=probs.device)
        for c in range(1, num_classes):
            torch.gt(probs[c], best, out=better)
            label.masked_fill_(better, c)
            torch.maximum(best, probs[c], out=best)
        return label
    label = torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    step = torch.empty_like(label)
    for c in range(1, num_classes):
        torch.gt(probs[c], best, out=better)
        torch.sub(c, label, out=step)  # wraps mod 256
        step.mul_(better.view(torch.uint8))
        label.add_(step)
        torch.maximum(best, probs[c], out=best)
    return label


def radius_map(embeddings: torch.Tensor, *, curvature: float) -> torch.Tensor:
    """Hyperbolic radius ``R = 2/sqrt(c) artanh(sqrt(c) ||z||)`` per pixel, ``[H, W]``.

    ``embeddings`` ``[D, H, W]`` lie in the Poincaré ball of curvature ``c > 0``. This is
    geoopt's ``PoincareBall(c).dist0`` with the same clamp (``artanh`` argument at most
    ``1 - 1e-7``, so points on or past the edge get a large finite radius); the norm is
    accumulated channel by channel, so no ``[D, H, W]`` temporary is allocated. float32, or
    float64 for float64 embeddings (a float64 head: radii up to ≈ 12.2 stay distinct where
    float32 ones would tie at the rim).
    """
    z = embeddings if embeddings.dtype == torch.float64 else embeddings.to(torch.float32)
    sq = z[0] * z[0]
    for d in range(1, z.shape[0]):
        sq.addcmul_(z[d], z[d])
    sqrt_c = math.sqrt(curvature)
    scaled = sq.sqrt_().mul_(sqrt_c).clamp_(max=_ARTANH_CLAMP)  # [H, W]
    return torch.atanh(scaled).mul_(2.0 / sqrt_c)


def _quantise(unit_map: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index ``floor(x·K)`` (the top edge ``x = 1`` goes to bin K-1), int64 ``[H, W]``."""
    return torch.clamp(torch.floor(unit_map * bins), 0, bins - 1).to(torch.int64)


def _quantise_reference(radius: torch.Tensor, bins: int) -> torch.Tensor:
    """The reference's ``quantize_uncert_map``: bins of ``1 - mm(R)``, rounded half to even."""
    x = (radius - radius.min().item()) / (radius.max().item() - radius.min().item())
    x = 1 - x
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo)
    predict = x * bins - 0.5
    predict = torch.clamp(
        predict, min=-0.5 + _REFERENCE_QUANT_EPS, max=bins - 0.5 - _REFERENCE_QUANT_EPS
    )
    return torch.round(predict).long()


# ----------------------------------------------------------------------------- uncertainty terms


def _region_average(
    req: _Request, pixel_map: torch.Tensor, *, window: int | None = None
) -> torch.Tensor:
    """Uncertainty of each candidate: the region mean (RA) or the pixel's own value (PA).

    Default: zero-padded mean over ``region_size²``. Reference: the reference's
    ``entropy_conv`` sum over ``region_size²`` divided by the in-image count of a
    ``window²`` window (its ``count``; ``window`` defaults to ``region_size``).
    """
    if req.unit == "pixel":
        return pixel_map
    if not req.reference:
        return box_mean(pixel_map, req.region_size)
    height, width = req.shape
    count = in_image_count(
        height, width, window or req.region_size, device=pixel_map.device, dtype=torch.float32
    )
    return box_sum_conv(pixel_map, req.region_size) / count


def _entropy_term(req: _Request) -> torch.Tensor:
    """Pixel entropy under the request's conventions (``ln C`` or the reference's ``log 19``)."""
    return reference_entropy(req.probs) if req.reference else pixel_entropy(req.probs)


def _boundary_term(req: _Request) -> torch.Tensor:
    """HALO's hyperbolic boundaries: impurity of the quantised radius over the boundary window.

    Default: bins of ``mm(R)``, exact entropy / ln K, then ``mm``. Reference: the reference's
    quantiser and impurity, then its epsilon-free normalisation.
    """
    assert req.embeddings is not None
    if req.reference:
        bins = _quantise_reference(reference_radius(req.embeddings, req.curvature), req.bins)
        impurity = window_impurity_reference(bins, req.bins, req.boundary_window)
        return _minmax_reference(impurity)
    bins = _quantise(minmax(radius_map(req.embeddings, curvature=req.curvature)), req.bins)
    return minmax(window_impurity(bins, req.bins, req.boundary_window))


def _radius_term(req: _Request) -> torch.Tensor:
    """``mm(R)`` (reference: its epsilon-free ``normalize_map``)."""
    assert req.embeddings is not None
    if req.reference:
        return _minmax_reference(reference_radius(req.embeddings, req.curvature))
    return minmax(radius_map(req.embeddings, curvature=req.curvature))


def _mm(req: _Request, x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation under the request's conventions."""
    return _minmax_reference(x) if req.reference else minmax(x)


# ----------------------------------------------------------------------------- strategies


def _score_random(req: _Request) -> torch.Tensor:
    """I.i.d. uniform [0, 1) scores drawn from ``generator`` (seeded, reproducible)."""
    height, width = req.shape
    device = req.generator.device if req.generator is not None else req.probs.device
    draw = torch.rand((height, width), generator=req.generator, device=device, dtype=torch.float32)
    return draw.to(req.probs.device)


def _score_entropy(req: _Request) -> torch.Tensor:
    """Mean pixel entropy over the region."""
    return _region_average(req, _entropy_term(req))


def _score_sconf(req: _Request) -> torch.Tensor:
    """Mean of ``1 - max_c p_c`` over the region (least confidence)."""
    first, _ = _top_two(req.probs)
    return _region_average(req, 1.0 - first)


def _score_margin(req: _Request) -> torch.Tensor:
    """Mean of ``1 - (p_top1 - p_top2)`` over the region (smallest margin first)."""
    first, second = _top_two(req.probs)
    return _region_average(req, 1.0 - (first - second))


def _score_ripu(req: _Request) -> torch.Tensor:
    """RIPU: impurity of ``argmax p`` over the region times the region's mean entropy.

    Reference (region unit): HALO's ``PURITY: ripu`` with ``NORMALIZE: False`` -
    impurity ``/ log C`` with ``+1e-6`` in the log, entropy ``/ log 19``, mean over the
    in-image pixels. Reference pixel unit: RIPU's ``PixelSelection`` - raw entropy times raw
    impurity, neither normalised.
    """
    num_classes = req.probs.shape[0]
    if req.reference:
        labels = _argmax_labels(req.probs)  # equals torch.argmax (first class on ties)
        if req.unit == "pixel":
            purity = window_impurity_reference(
                labels, num_classes, req.region_size, normalise=False
            )
            return reference_entropy(req.probs, normalise=False) * purity
        impurity = window_impurity_reference(labels, num_classes, req.region_size)
        return impurity * _region_average(req, _entropy_term(req))
    impurity = window_impurity(_argmax_labels(req.probs), num_classes, req.region_size)
    return impurity * _region_average(req, _entropy_term(req))


def _score_halo(req: _Request) -> torch.Tensor:
    """HALO: ``mm(hyperbolic boundaries) x mm(mean entropy over the region)``."""
    uncertainty = _region_average(req, _entropy_term(req), window=req.boundary_window)
    return _boundary_term(req) * _mm(req, uncertainty)


def _score_halo_radius(req: _Request) -> torch.Tensor:
    """HALO as released (``PURITY: radius``): ``mm(R) x mm(region entropy)``.

    Reference: the entropy is the reference's ``region_size²`` box *sum* (it divides by a
    count of ones); default: the zero-padded box mean - equal after ``mm``.
    """
    if req.reference and req.unit == "region":
        uncertainty = box_sum_conv(_entropy_term(req), req.region_size)
    else:
        uncertainty = _region_average(req, _entropy_term(req))
    return _radius_term(req) * _mm(req, uncertainty)


def _score_boundaries(req: _Request) -> torch.Tensor:
    """Ablation: HALO's hyperbolic boundaries alone (no entropy factor)."""
    return _boundary_term(req)


def _score_radius(req: _Request) -> torch.Tensor:
    """Ablation: ``mm(R)`` - far from the origin first."""
    return _radius_term(req)


def _score_radius_inv(req: _Request) -> torch.Tensor:
    """Ablation: ``1 - mm(R)`` - near the origin first (Khrulkov et al.: "uncertain")."""
    radius = _radius_term(req)
    if req.reference:
        return 1 - radius
    return minmax(-radius)


_SCORERS: dict[str, Callable[[_Request], torch.Tensor]] = {
    "random": _score_random,
    "entropy": _score_entropy,
    "sconf": _score_sconf,
    "margin": _score_margin,
    "ripu": _score_ripu,
    "halo": _score_halo,
    "halo_radius": _score_halo_radius,
    "boundaries": _score_boundaries,
    "radius": _score_radius,
    "radius_inv": _score_radius_inv,
}
assert tuple(_SCORERS) == STRATEGIES


# ----------------------------------------------------------------------------- validation


def _validate(
    strategy: str,
    probs: torch.Tensor,
    embeddings: torch.Tensor | None,
    *,
    curvature: float,
    bins: int,
    region_size: int,
    boundary_window: int,
    reference: bool,
    unit: str,
    generator: torch.Generator | None,
) -> _Request:
    """Check every argument of ``score_map`` and bundle them; ValueError names the culprit."""
    if strategy not in _SCORERS:
        raise ValueError(f"strategy must be one of {STRATEGIES}, but got strategy={strategy!r}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, but got unit={unit!r}")
    if not isinstance(probs, torch.Tensor) or probs.dim() != 3:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(
            f"probs must be a [C, H, W] tensor of softmax probabilities, but got {shape}"
        )
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor, but got dtype={probs.dtype}")
    num_classes, height, width = probs.shape
    if num_classes < 2:
        raise ValueError(f"probs must have at least 2 classes (C >= 2), but got C={num_classes}")
    if height < 1 or width < 1:
        raise ValueError(f"probs must have a non-empty image, but got H={height}, W={width}")
    region_size = check_odd("region_size", region_size)
    boundary_window = check_odd("boundary_window", boundary_window)
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, but got bins={bins!r}")
    if isinstance(curvature, bool) or not isinstance(curvature, numbers.Real):
        raise ValueError(f"curvature must be a positive number, but got curvature={curvature!r}")
    if not (math.isfinite(curvature) and curvature > 0):
        raise ValueError(f"curvature must be a finite number > 0, but got curvature={curvature!r}")
    if strategy in HYPERBOLIC_STRATEGIES:
        if embeddings is None:
            raise ValueError(
                f"strategy {strategy!r} scores the hyperbolic radius, so embeddings [D, H, W] "
                "must be given, but got embeddings=None"
            )
    if embeddings is not None:
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 3:
            shape = (
                tuple(embeddings.shape)
                if isinstance(embeddings, torch.Tensor)
                else type(embeddings).__name__
            )
            raise ValueError(f"embeddings must be a [D, H, W] tensor, but got {shape}")
        if not embeddings.is_floating_point():
            raise ValueError(
                f"embeddings must be a floating-point tensor, but got dtype={embeddings.dtype}"
            )
        if tuple(embeddings.shape[1:]) != (height, width):
            raise ValueError(
                "embeddings must share the image size of probs, but got embeddings "
                f"{tuple(embeddings.shape)} for probs {tuple(probs.shape)}"
            )
        if embeddings.device != probs.device:
            raise ValueError(
                f"embeddings and probs must be on the same device, but got {embeddings.device} "
                f"and {probs.device}"
            )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, but got {type(generator).__name__}"
        )
    probs32 = probs.detach().to(torch.float32).contiguous()
    emb = None
    if embeddings is not None and strategy in HYPERBOLIC_STRATEGIES:
        emb = embeddings.detach().contiguous()
        if not reference:
            emb = emb.to(torch.float32)
    return _Request(
        probs=probs32,
        embeddings=emb,
        curvature=float(curvature),
        bins=int(bins),
        region_size=region_size,
        boundary_window=boundary_window,
        reference=bool(reference),
        unit=unit,
        generator=generator,
    )


# ----------------------------------------------------------------------------- public entry point


def score_map(
    strategy: str,
    probs: torch.Tensor,
    embeddings: torch.Tensor | None = None,
    *,
    curvature: float = 1.0,
    bins: int = DEFAULT_BINS,
    region_size: int = 3,
    boundary_window: int = 3,
    reference: bool = False,
    generator: torch.Generator | None = None,
    unit: str = "region",
) -> torch.Tensor:
    """Acquisition score of every pixel of one image, ``[H, W]``; higher = pick first.

    Args:
        strategy: one of :data:`STRATEGIES` (formulas in ``docs/acquisition.md``).
        probs: softmax probabilities ``[C, H, W]`` (C >= 2).
        embeddings: ``[D, H, W]`` points of the Poincaré ball of curvature ``curvature``;
            required by :data:`HYPERBOLIC_STRATEGIES`, ignored by the others.
        curvature: ``c > 0`` of the ball (the radius is ``2/sqrt(c) artanh(sqrt(c)||z||)``).
        bins: radius quantisation levels K of the HALO boundary term (>= 2).
        region_size: odd side of the labelled square; the window of the region means and of
            the RIPU impurity.
        boundary_window: odd side of the window of the HALO boundary impurity (reference 3).
        reference: reproduce the released HALO/RIPU code's numerics (``log 19``, ``+1e-6``,
            in-image-count means, epsilon-free min-max that gives NaN on constant maps);
            see ``docs/acquisition.md``.
        generator: seeds ``random``; unused by the other strategies.
        unit: ``"region"`` (RA: uncertainty is the region mean) or ``"pixel"`` (PA: the
            pixel's own value, RIPU's PA definition).

    Returns:
        ``[H, W]`` on the inputs' device: float32, or float64 where the score carries a float64
        radius (float64 embeddings, as the released head's), so that radii that differ only
        beyond float32 precision still rank apart (as in the released code).

    Raises:
        ValueError: unknown strategy/unit, missing or mismatched embeddings, even or
            non-positive window sizes, ``bins < 2``, ``curvature <= 0``, bad shapes.
    """
    req = _validate(
        strategy,
        probs,
        embeddings,
        curvature=curvature,
        bins=bins,
        region_size=region_size,
        boundary_window=boundary_window,
        reference=reference,
        unit=unit,
        generator=generator,
    )
    with torch.no_grad():
        score = _SCORERS[strategy](req)
    dtype = torch.float64 if score.dtype == torch.float64 else torch.float32
    return score.to(dtype).contiguous()
