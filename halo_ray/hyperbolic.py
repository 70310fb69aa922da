"""Poincaré-ball geometry for halo_ray: pure functions on tensors plus three small modules.

Conventions
-----------
* ``c`` is the *positive* curvature magnitude everywhere in this API (``c > 0``, keyword-only).
  The ball is ``{x : ‖x‖ < 1/√c}`` with sectional curvature ``-c``. geoopt's stereographic
  maths takes the *signed* curvature ``k = -c``; the conversion happens in one place,
  :func:`_signed_k`.
* Channel dimension: functions take ``dim`` (default ``-1``); the segmentation maps of this
  project are channel-first (``[B, D, H, W]``), so the modules use ``dim=1`` / ``dim=-3``.

Numerical-stability policy (the only epsilons in this file)
-----------------------------------------------------------
One policy, chosen by dtype, following geoopt's defaults:

* **projection eps** ``ε``: points are kept at norm ``≤ (1 - ε)/√c``; ``ε = 4e-3`` for float32
  (and lower precisions), ``1e-5`` for float64.
* **tangent clipping** before ``expmap0``: a tangent vector's norm is clipped to
  ``artanh(1 - ε)/√c`` (≈ 3.11/√c in float32, ≈ 6.10/√c in float64), the largest norm whose
  image is still inside the projection radius. Larger norms would only be pushed back by the
  projection, and their gradient vanishes through a saturated ``tanh`` anyway; clipping first
  keeps ``expmap0`` finite for any finite input and makes ``expmap0``, ``project``, ``dist0``
  and the MLR agree on one boundary. An optional, tighter ``max_norm`` implements the "feature clipping" of
  Guo et al. (CVPR 2022); the HALO reference code has no feature clipping (it relies on HFR,
  float64 and geoopt's projection), Khrulkov et al.'s original ``ToPoincare`` neither.
* **clamped artanh**: ``dist0`` clamps ``√c‖x‖`` at ``1 - 1e-7`` (geoopt's ``artanh`` clamp,
  so radii equal geoopt's and the released HALO code's for every input), which keeps the radius
  and its gradient finite for points on or past the rim. Points of this module (``expmap0``,
  ``project``) stay within ``1 - ε``, so their largest radius is :func:`max_radius`,
  ``2/√c · artanh(1 - ε)``: ≈ 6.21/√c in float32, ≈ 12.21/√c in float64 (the released head's).
* **MLR conformal factors** ``1 - c‖p‖²`` and ``1 - c‖x‖²`` are clamped at their value on the
  projection boundary, ``1 - (1 - ε)²``, so logits stay finite even for inputs on the rim.
* **minimum norm / denominator** ``1e-15`` against division by zero.

References: Ganea, Bécigneul & Hofmann, "Hyperbolic Neural Networks" (NeurIPS 2018) for the
Möbius operations and the hyperbolic MLR; Khrulkov et al., "Hyperbolic Image Embeddings"
(CVPR 2020) for ``expmap0`` on CNN features and the origin-transported MLR normals;
Franco et al., "Hyperbolic Active Learning for Semantic Segmentation under Domain Shift"
(HALO, ICML 2024) for HFR and the radius map.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import geoopt
import geoopt.manifolds.stereographic.math as gmath
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MIN_NORM",
    "Curvature",
    "CurvatureLike",
    "HFR",
    "HFR_CLAMP_MIN",
    "HFR_NORMS",
    "HFR_POSITIVITY",
    "HyperbolicMLR",
    "MLR_FORMS",
    "dist0",
    "expmap0",
    "hyperbolic_mlr",
    "max_radius",
    "max_tangent_norm",
    "poincare_ball",
    "proj_eps",
    "project",
    "radius_map",
]

# --------------------------------------------------------------------------------------------
# Numerical-stability policy
# --------------------------------------------------------------------------------------------
_PROJ_EPS_FLOAT64 = 1e-5  # geoopt's float64 default
_PROJ_EPS_DEFAULT = 4e-3  # geoopt's float32 default; also used for float16/bfloat16
_ARTANH_CLAMP = 1.0 - 1e-7  # geoopt's artanh clamp (every dtype)
MIN_NORM = 1e-15  # floor for norms and denominators (same as geoopt)
_REFERENCE_MLR_PROJ_EPS = 1e-3  # the released HyperMLR projects (-p) ⊕ x at (1 - 1e-3)/√c
_REFERENCE_FLOOR = 1e-12  # the released HyperMLR's floor of denominators

CurvatureLike = float | Tensor


def proj_eps(dtype: torch.dtype) -> float:
    """Projection margin ``ε`` for ``dtype``: points live at norm ``≤ (1 - ε)/√c``."""
    return _PROJ_EPS_FLOAT64 if dtype == torch.float64 else _PROJ_EPS_DEFAULT


def max_tangent_norm(dtype: torch.dtype, *, c: float) -> float:
    """Largest tangent norm ``artanh(1 - ε)/√c`` that ``expmap0`` keeps (norms are clipped to it)."""
    c = _check_curvature_value(c, "c")
    return math.atanh(1.0 - proj_eps(dtype)) / math.sqrt(c)


def max_radius(dtype: torch.dtype, *, c: float) -> float:
    """Largest hyperbolic radius ``2/√c · artanh(1 - ε)`` of a point of this module (inside the
    projection radius); :func:`dist0` of points past it reaches up to geoopt's clamp."""
    return 2.0 * max_tangent_norm(dtype, c=c)


# --------------------------------------------------------------------------------------------
# Curvature validation and conversion
# --------------------------------------------------------------------------------------------
def _check_curvature_value(c: object, name: str) -> float:
    """Return ``c`` as a float after checking it is a finite number > 0 (ValueError otherwise)."""
    if isinstance(c, bool) or not isinstance(c, Real) or not math.isfinite(float(c)) or c <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0 (the curvature magnitude c of the Poincaré "
            f"ball; the sign is implied), but got {name}={c!r}"
        )
    return float(c)


def _curvature_tensor(c: CurvatureLike, like: Tensor) -> Tensor:
    """``c`` as a 0-d tensor with ``like``'s dtype and device, validated to be > 0.

    Numbers are always validated. Tensors are validated on the CPU only: reading a CUDA
    tensor's value would synchronise the device on every call; :class:`Curvature` keeps its
    value positive by construction.
    """
    if isinstance(c, Tensor):
        if c.dim() != 0:
            raise ValueError(
                f"c must be a number or a 0-d tensor, but got a tensor of shape {tuple(c.shape)}"
            )
        if c.device.type == "cpu" and not bool(torch.isfinite(c) & (c > 0)):
            raise ValueError(f"c must be a finite number > 0, but got c={c.item()!r}")
        return c.to(dtype=like.dtype, device=like.device)
    value = _check_curvature_value(c, "c")
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _signed_k(c: Tensor) -> Tensor:
    """geoopt's signed curvature ``k = -c`` (the only place the sign flips)."""
    return -c


def _geoopt_sqrt(c: Tensor) -> Tensor:
    """``√(c + 1e-15)``: geoopt's ``sabs(k).sqrt()``, so float64 maps agree with geoopt's (and
    the released head's) to the last bits; in float32 the ``1e-15`` is below one ulp of ``c``."""
    return (c + MIN_NORM).sqrt()


def poincare_ball(c: float = 1.0) -> geoopt.PoincareBall:
    """A geoopt ``PoincareBall`` of curvature magnitude ``c > 0`` (geoopt stores ``k = -c``).

    For geoopt's Riemannian optimisers and manifold parameters. Note that geoopt keeps ``k``
    as a float32 tensor, so its maps are float32-accurate in ``c`` even on float64 inputs;
    the functions of this module convert ``c`` to the input's dtype.
    """
    return geoopt.PoincareBall(c=_check_curvature_value(c, "c"))


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def _norm(x: Tensor, dim: int, keepdim: bool = True) -> Tensor:
    """Euclidean norm along ``dim``, floored at ``MIN_NORM`` (finite gradient at 0).

    ``sqrt(clamp(Σx², MIN_NORM²))`` rather than ``torch.linalg.vector_norm``: same value, but
    its backward over the channel dim of ``[B, D, H, W]`` maps is several times faster on CPU.
    """
    return x.mul(x).sum(dim=dim, keepdim=keepdim).clamp_min(MIN_NORM * MIN_NORM).sqrt()


def project(x: Tensor, *, c: CurvatureLike, dim: int = -1) -> Tensor:
    """Pull points back inside the ball: norms above ``(1 - ε)/√c`` are scaled down to it."""
    c_t = _curvature_tensor(c, x)
    return gmath.project(x, k=_signed_k(c_t), dim=dim, eps=proj_eps(x.dtype))


def expmap0(v: Tensor, *, c: CurvatureLike, dim: int = -1, max_norm: float | None = None) -> Tensor:
    """Exponential map at the origin, ``tanh(√c‖v‖) v / (√c‖v‖)``, with tangent clipping.

    ``v`` holds Euclidean (tangent) vectors along ``dim``. Their norms are clipped to
    ``artanh(1 - ε)/√c`` (and to ``max_norm`` if given: Guo et al.'s feature clipping) before
    the map, so every result has norm ``≤ (1 - ε)/√c``, strictly inside the ball, and the map
    is differentiable everywhere (the gradient is the identity at ``v = 0``). Vectors whose
    squared norm overflows (entries beyond ~1e19 in float32) map to the origin, never to NaN.

    Equal to geoopt's ``expmap0`` with ``k = -c`` followed by its ``project`` (the released
    HALO head's ``HyperMapper.expmap``): in float64 (without ``max_norm``) it is computed in
    their order of operations, so the two agree to the last bits; in other dtypes it is written
    out so the clipping costs no extra pass over the ``[B, D, H, W]`` map.
    """
    if max_norm is not None and not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(
            f"max_norm must be a finite number > 0 or None, but got max_norm={max_norm!r}"
        )
    c_t = _curvature_tensor(c, v)
    sqrt_c = _geoopt_sqrt(c_t)
    if v.dtype == torch.float64 and max_norm is None:
        return _expmap0_then_project(v, sqrt_c, dim)
    limit = math.atanh(1.0 - proj_eps(v.dtype)) / sqrt_c  # [] largest kept tangent norm
    if max_norm is not None:
        limit = limit.clamp_max(max_norm)
    norm = _norm(v, dim)  # [.., 1, ..]
    radius = torch.tanh(sqrt_c * torch.minimum(norm, limit)).clamp_max(1.0 - proj_eps(v.dtype))
    scale = radius / (sqrt_c * norm)  # [.., 1, ..]
    return v * scale


def _expmap0_then_project(v: Tensor, sqrt_c: Tensor, dim: int) -> Tensor:
    """geoopt's ``expmap0`` then ``project`` (float64 margin), step by step in geoopt's order.

    The same points as the clipped form of :func:`expmap0` (tangent norms past
    ``artanh(1 - ε)/√c`` land on the projection radius either way), with geoopt's rounding.
    """
    u_norm = torch.linalg.vector_norm(v, dim=dim, keepdim=True).clamp_min(MIN_NORM)
    mapped = sqrt_c.reciprocal() * torch.tanh((u_norm * sqrt_c).clamp(-15, 15)) * (v / u_norm)
    max_norm = (1 - proj_eps(v.dtype)) / sqrt_c
    norm = torch.linalg.vector_norm(mapped, dim=dim, keepdim=True).clamp_min(MIN_NORM)
    return torch.where(norm > max_norm, mapped / norm * max_norm, mapped)


def dist0(x: Tensor, *, c: CurvatureLike, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Geodesic distance to the origin (the hyperbolic radius), ``2/√c · artanh(√c‖x‖)``.

    geoopt's ``dist0`` (``k = -c``): ``√c‖x‖`` is clamped at ``1 - 1e-7``, so points on or
    beyond the rim get a large finite radius and a finite gradient. Computed in ``x``'s dtype:
    float64 embeddings (the released head's) resolve radii up to ≈ 12.2 without ties.
    """
    c_t = _curvature_tensor(c, x)
    sqrt_c = _geoopt_sqrt(c_t)
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim)  # exact 0 (and gradient 0) at 0
    return _radius_of_norm(norm, sqrt_c)


def _radius_of_norm(norm: Tensor, sqrt_c: Tensor) -> Tensor:
    """``2/√c · artanh(min(√c‖x‖, 1 - 1e-7))`` in geoopt's form (``dist0``), to its last bits."""
    scaled = (norm * sqrt_c).clamp_max(_ARTANH_CLAMP)
    artanh = (torch.log(1 + scaled) - torch.log(1 - scaled)) * 0.5
    return 2.0 * (sqrt_c.reciprocal() * artanh)


def radius_map(z: Tensor, *, c: CurvatureLike) -> Tensor:
    """Per-pixel hyperbolic radius of channel-first ball embeddings: ``[B?, D, H, W] -> [B?, H, W]``.

    :func:`dist0` over the channels, with the squared norm accumulated channel by channel:
    a norm over the strided channel dimension of a full-resolution map is several times
    slower on CPU. Differs from ``dist0`` only in the rounding of that sum (float64: ~1e-16
    relative in the norm).
    """
    if z.dim() not in (3, 4):
        raise ValueError(
            f"z must be channel-first ball embeddings of shape [D, H, W] or [B, D, H, W], "
            f"but got shape {tuple(z.shape)}"
        )
    sqrt_c = _geoopt_sqrt(_curvature_tensor(c, z))
    channels = z.unbind(dim=-3)  # D maps [B?, H, W]
    sq = channels[0] * channels[0]
    for channel in channels[1:]:
        sq = sq.addcmul(channel, channel)
    positive = sq > 0  # sqrt's gradient at 0 is infinite: the origin gets norm 0 with gradient 0
    norm = torch.where(positive, sq, torch.ones_like(sq)).sqrt() * positive
    return _radius_of_norm(norm, sqrt_c)


def hyperbolic_mlr(
    x: Tensor,
    offsets: Tensor,
    normals: Tensor,
    *,
    c: CurvatureLike,
    dim: int = 1,
    reference: bool = False,
) -> Tensor:
    """Hyperbolic multinomial logistic regression logits (Ganea et al. 2018, eq. 25).

    For class ``k`` with offset ``p_k`` in the ball and normal ``a_k``::

        z_k      = (-p_k) ⊕_c x                                    (Möbius addition)
        logit_k  = 2‖a_k‖/√c · asinh( 2√c ⟨z_k, â_k⟩ / (1 - c‖z_k‖²) ),   â_k = a_k/‖a_k‖

    The normals are given in the tangent space at the origin and parallel-transported to
    ``p_k`` (Khrulkov et al. 2020, and the HALO code), which turns Ganea's factor
    ``λ_{p_k}‖a_{p_k}‖`` into ``2‖a_k‖``; the result equals geoopt's signed, scaled
    ``dist2plane(x, p_k, a_{p_k})`` times ``λ_{p_k}``. For ``c → 0`` it tends to the Euclidean
    ``4⟨a_k, x - p_k⟩``.

    Args:
        x: points in the ball, coordinates along ``dim`` (``[B, D, H, W]`` with ``dim=1``,
            ``[N, D]`` with ``dim=1`` or ``-1``).
        offsets: ``[C, D]`` points ``p_k`` in the ball.
        normals: ``[C, D]`` tangent vectors ``a_k`` at the origin.
        c: curvature magnitude > 0.
        dim: the coordinate dimension of ``x``; the classes take its place in the output.
        reference: compute as the released HALO code's ``HyperMLR`` (see
            :func:`_hyperbolic_mlr_reference`): offsets used as given, even outside the ball,
            the constant 2 for ``λ_{p_k}``, and ``z_k`` projected to norm ``(1 - 1e-3)/√c``
            before the inner product, with its ``1e-12`` floors. Equal to the default for
            points whose ``z_k`` lie within that radius and offsets inside the ball.

    Returns:
        logits shaped like ``x`` with ``D`` replaced by ``C`` (``[B, C, H, W]``, contiguous for
        ``dim=1``).

    How it is computed (memory ``O(B·C·H·W)``, never the ``[B, C, D, H, W]`` of the ``z_k``):
    Möbius addition (geoopt's ``mobius_add`` with ``k = -c``) is, for fixed inner products,
    linear in its arguments, ``(-p) ⊕ x = (A·(-p) + β·x)/δ`` with ``A = 1 + 2c⟨-p,x⟩ + c‖x‖²``,
    ``β = 1 - c‖p‖²``, ``δ = 1 + 2c⟨-p,x⟩ + c²‖p‖²‖x‖²``, and the gyro-identity
    ``1 - c‖(-p) ⊕ x‖² = β(1 - c‖x‖²)/δ`` cancels ``δ``::

        2√c⟨z, â⟩/(1 - c‖z‖²) = 2√c/(1 - c‖x‖²) · ( ⟨x, â + 2c·r·(-p)⟩ + (1 + c‖x‖²)·r ),
        r = ⟨-p, â⟩/β

    i.e. one ``[C, D]`` matrix product per pixel (like a Euclidean 1×1 classifier) and four
    element-wise operations on the logits. Both conformal factors ``β`` and ``1 - c‖x‖²`` are
    clamped at their value on the projection boundary, ``1 - (1 - ε)²``.
    """
    if offsets.dim() != 2 or offsets.shape != normals.shape:
        raise ValueError(
            f"offsets and normals must both have shape [C, D], but got offsets "
            f"{tuple(offsets.shape)} and normals {tuple(normals.shape)}"
        )
    if x.dim() < 2 or x.shape[dim] != offsets.shape[1]:
        raise ValueError(
            f"x must have D={offsets.shape[1]} coordinates along dim={dim}, "
            f"but got shape {tuple(x.shape)}"
        )
    c_t = _curvature_tensor(c, x)
    if reference:
        return _hyperbolic_mlr_reference(x, offsets.to(x.dtype), normals.to(x.dtype), c_t, dim)
    sqrt_c = c_t.sqrt()
    min_conformal = 1.0 - (1.0 - proj_eps(x.dtype)) ** 2

    y = -offsets.to(x.dtype)  # [C, D]  left operand -p_k
    a = normals.to(x.dtype)  # [C, D]
    a_norm = a.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)  # [C, 1]
    a_hat = a / a_norm  # [C, D]
    beta = (1 - c_t * y.pow(2).sum(dim=-1, keepdim=True)).clamp_min(min_conformal)  # [C, 1]
    r = (y * a_hat).sum(dim=-1, keepdim=True) / beta  # [C, 1]
    weight = a_hat + (2 * c_t) * r * y  # [C, D]

    xc = x.movedim(dim, 1)  # [N, D, *S]  coordinates on dim 1
    xf = xc.reshape(xc.shape[0], xc.shape[1], -1)  # [N, D, P]
    x2 = xf.mul(xf).sum(dim=1, keepdim=True)  # [N, 1, P]
    gain = (2 * sqrt_c) / (1 - c_t * x2).clamp_min(min_conformal)  # [N, 1, P]
    inner = torch.einsum("kd,ndp->nkp", weight, xf) + (1 + c_t * x2) * r  # [N, C, P]
    logits = (2 / sqrt_c) * a_norm * torch.asinh(gain * inner)  # [N, C, P]
    return logits.reshape(xc.shape[0], offsets.shape[0], *xc.shape[2:]).movedim(1, dim)


def _hyperbolic_mlr_reference(x: Tensor, offsets: Tensor, normals: Tensor, c: Tensor, dim: int) -> Tensor:
    """The released HALO ``HyperMLR._hyper_logits`` arithmetic, for any ``dim`` (same formulas).

    With ``y = -p``, ``⟨·,·⟩`` per class and pixel::

        α = (1 + 2c⟨y,x⟩ + c‖x‖²)/δ,  β = (1 - c‖y‖²)/δ,  δ = max(1 + 2c⟨y,x⟩ + c²‖x‖²‖y‖², 1e-12)
        n² = ‖α y + β x‖²;  m = (1 - 1e-3)/√c
        s  = m / max(n, 1e-12) if n > m else 1;   n̂² = n² if n < m else m²
        logit = 2/√c · ‖a‖ · asinh( √c · s·(β⟨x,â⟩ + α⟨y,â⟩) · 2/max(1 - c·n̂², 1e-12) )
    """
    y = -offsets  # [C, D]
    a_norm = torch.linalg.vector_norm(normals, dim=-1)  # [C]
    a_hat = F.normalize(normals, dim=-1)  # [C, D]
    sqrt_c = c.sqrt()
    floor = torch.tensor(_REFERENCE_FLOOR, dtype=x.dtype, device=x.device)

    xc = x.movedim(dim, 1)  # [N, D, *S]
    xf = xc.reshape(xc.shape[0], xc.shape[1], -1)  # [N, D, P]
    xx = torch.linalg.vector_norm(xf, dim=1, keepdim=True) ** 2  # [N, 1, P]
    yy = (torch.linalg.vector_norm(y, dim=-1) ** 2)[None, :, None]  # [1, C, 1]
    yx = torch.einsum("kd,ndp->nkp", y, xf)  # [N, C, P]
    numerator_a = 1 + 2 * c * yx + c * xx
    numerator_b = 1 - c * yy
    denominator = torch.maximum(1 + 2 * c * yx + c * xx * c * yy, floor)
    alpha = numerator_a / denominator  # [N, C, P]
    beta = numerator_b / denominator  # [N, C, P]
    sum_sq = alpha**2 * yy + beta**2 * xx + 2 * alpha * beta * yx  # ‖(-p) ⊕ x‖²
    max_norm = (1.0 - _REFERENCE_MLR_PROJ_EPS) / sqrt_c
    norm = torch.sqrt(sum_sq)
    shrink = torch.where(norm > max_norm, max_norm / torch.maximum(norm, floor), torch.ones_like(sum_sq))
    sum_sq_projected = torch.where(norm < max_norm, sum_sq, torch.ones_like(sum_sq) * max_norm**2)
    x_dot_a = beta * torch.einsum("kd,ndp->nkp", a_hat, xf)
    y_dot_a = alpha * (y * a_hat).sum(dim=-1)[None, :, None]
    z_dot_a = (x_dot_a + y_dot_a) * shrink
    lambda_z = 2.0 / torch.maximum(1 - c * sum_sq_projected, floor)
    logits = 2.0 / sqrt_c * a_norm[None, :, None] * torch.asinh(sqrt_c * z_dot_a * lambda_z)  # [N, C, P]
    return logits.reshape(xc.shape[0], offsets.shape[0], *xc.shape[2:]).movedim(1, dim)


# --------------------------------------------------------------------------------------------
# Modules (they only hold parameters; the maths is above)
# --------------------------------------------------------------------------------------------
def _inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` for ``y > 0`` (stable for large ``y``)."""
    return y + math.log(-math.expm1(-y))


class Curvature(nn.Module):
    """The curvature magnitude ``c > 0`` of a Poincaré ball, fixed or learnable.

    Fixed: ``c`` is a buffer (saved in checkpoints, moved with ``.to()``), no gradient.
    Learnable: ``c = min_value + softplus(raw)`` with an unconstrained parameter ``raw``, so any
    optimiser step, however large, leaves ``c ≥ min_value > 0`` (an ``exp`` parametrisation
    would underflow to exactly 0 in float32 after a large step). ``min_value`` keeps the ball
    from flattening into an unbounded, numerically Euclidean one.

    ``value`` returns ``c`` as a 0-d tensor (differentiable when learnable).
    """

    def __init__(self, c: float = 1.0, *, learnable: bool = False, min_value: float = 1e-3):
        super().__init__()
        c = _check_curvature_value(c, "curvature")
        min_value = _check_curvature_value(min_value, "min_value")
        self.learnable = bool(learnable)
        self.min_value = min_value
        if self.learnable:
            if c <= min_value:
                raise ValueError(
                    f"a learnable curvature must start above min_value={min_value}, "
                    f"but got curvature={c}"
                )
            self.raw = nn.Parameter(torch.tensor(_inverse_softplus(c - min_value)))
        else:
            self.register_buffer("c", torch.tensor(c))

    @property
    def value(self) -> Tensor:
        """The current ``c`` as a 0-d tensor."""
        if self.learnable:
            return self.min_value + F.softplus(self.raw)
        return self.c

    def forward(self) -> Tensor:
        """Same as :attr:`value` (lets the module be called like a function)."""
        return self.value

    def extra_repr(self) -> str:
        return f"c={float(self.value.detach()):.4g}, learnable={self.learnable}"


HFR_NORMS = ("rms", "l2")
"""Spatial normalisations of :class:`HFR`: ``"rms"`` (resolution-independent, default) or
``"l2"`` (the HALO reference code's)."""

HFR_POSITIVITY = ("softplus", "clamp")
"""How :class:`HFR` keeps its channel weights positive: ``"softplus"`` (default, every channel
trainable) or ``"clamp"`` (the HALO reference code's ``clamp(min=1e-5)``)."""

#: The released HFR's floor of the channel weights (``torch.clamp(norm_weights, min=1e-5)``).
HFR_CLAMP_MIN = 1e-5


class HFR(nn.Module):
    """Hyperbolic Feature Reweighting (HALO): per-image, per-channel rescaling before ``expmap0``.

    What it computes, for features ``f`` of shape ``[B, D, H, W]`` (``P = H·W`` pixels):

    1. channel weights ``w = pos( mean_{pixels} MLP(f(x)) )`` of shape ``[B, D]``, where the MLP
       is ``self.mlp`` = Linear(D, D) → BatchNorm1d(D) → ReLU → Linear(D, D) applied to every
       pixel vector (the released ``wn_mlp``, in that order, so its state dict loads as is).
       ``pos`` is ``softplus`` (default) or
       ``clamp(min=1e-5)`` (``positivity="clamp"``, the reference);
    2. each channel map normalised over the image's pixels: ``f̂_d = f_d / ‖f_d‖₂`` (``"l2"``,
       as the reference) or ``f̂_d = f_d / ‖f_d‖₂ · √(P/D)`` (``"rms"``, the default);
    3. output ``f̂_d(x) · w_d``.

    The BatchNorm is an ordinary one: batch statistics of all ``B·H·W`` pixel vectors in
    training, running statistics in eval mode, trained affine parameters. HALO's code keeps
    it so even when the backbone's BatchNorms are frozen (``freeze_bn``), and so does
    ``halo_ray.models.freeze_batchnorm``.

    Why it keeps embeddings away from the boundary: after step 2 the image's total squared
    tangent norm is fixed by the weights, ``Σ_x ‖out(x)‖² = ‖w‖²`` (``"l2"``) or
    ``mean_x ‖out(x)‖² = mean_d w_d²`` (``"rms"``), so an image's embeddings cannot all drift to
    the rim where ``tanh`` saturates and gradients vanish; the learned weights decide, per
    channel and per image, how far out the embeddings go.

    Why the defaults differ from the reference (measured numbers in the README):

    * positivity: ``clamp(min=1e-5)`` zeroes the gradient of every channel whose mean weight is
      negative (about half of them at initialisation), so they stay dead; ``softplus`` has the
      same range and keeps every channel trainable;
    * scale (``"rms"``): with the reference's unit L2 norm over all pixels, a typical pixel's
      tangent norm is ``‖w‖/√P``: it shrinks as the image grows (≈ 0.1 at 2048 pixels with
      initial weights, ≈ 0.02 at the reference's 51 200), so embeddings start near the origin
      with tiny MLR logits, learning is slow, and scoring at another resolution than training
      moves every radius. ``"rms"`` multiplies by ``√(P/D)`` so that the mean squared norm per
      pixel is the mean squared weight, whatever the resolution.
    """

    def __init__(self, channels: int, *, spatial_norm: str = "rms", positivity: str = "softplus"):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, but got channels={channels!r}")
        if spatial_norm not in HFR_NORMS:
            raise ValueError(
                f"spatial_norm must be one of {', '.join(HFR_NORMS)}, but got spatial_norm={spatial_norm!r}"
            )
        if positivity not in HFR_POSITIVITY:
            raise ValueError(
                f"positivity must be one of {', '.join(HFR_POSITIVITY)}, but got positivity={positivity!r}"
            )
        self.channels = channels
        self.spatial_norm = spatial_norm
        self.positivity = positivity
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels),  # per-pixel D×D linear
            nn.BatchNorm1d(channels),  # over the B·H·W pixel vectors
            nn.ReLU(),
            nn.Linear(channels, channels),
        )

    def weights(self, f: Tensor) -> Tensor:
        """Positive channel weights ``[B, D]`` for features ``f`` ``[B, D, H, W]``."""
        batch, channels = f.shape[:2]
        pixels = f.permute(0, 2, 3, 1).reshape(-1, channels)  # [B·H·W, D]
        raw = self.mlp(pixels).view(batch, -1, channels).mean(dim=1)  # [B, D]
        if self.positivity == "clamp":
            return raw.clamp(min=HFR_CLAMP_MIN)
        return F.softplus(raw)

    def forward(self, f: Tensor) -> Tensor:
        """Reweighted features ``[B, D, H, W]`` (still Euclidean; ``expmap0`` comes next)."""
        if f.dim() != 4 or f.shape[1] != self.channels:
            raise ValueError(
                f"HFR expects features of shape [B, {self.channels}, H, W], "
                f"but got {tuple(f.shape)}"
            )
        w = self.weights(f)  # [B, D]
        if self.spatial_norm == "rms":
            w = w * math.sqrt(f.shape[-2] * f.shape[-1] / self.channels)
        unit = F.normalize(f.flatten(2), dim=-1).view_as(f)  # f_d / ‖f_d‖₂ over H×W
        return unit * w[:, :, None, None]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Also read the released ``wn_mlp``'s own keys (``0.weight`` … ``3.bias``) and
        checkpoints of halo_ray ≤ 0.1 (``fc1`` a 1×1 conv, ``bn``, ``fc2``)."""
        renames = {"fc1.": "mlp.0.", "bn.": "mlp.1.", "fc2.": "mlp.3.", "0.": "mlp.0.", "1.": "mlp.1.", "3.": "mlp.3."}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            for old, new in renames.items():
                if rest.startswith(old):
                    value = state_dict.pop(key)
                    if old == "fc1." and rest.endswith("weight") and value.dim() == 4:
                        value = value.flatten(1)  # [D, D, 1, 1] conv kernel -> [D, D]
                    state_dict[prefix + new + rest[len(old) :]] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial_norm={self.spatial_norm!r}, positivity={self.positivity!r}"


MLR_FORMS = ("ball", "released")
"""Forms of :class:`HyperbolicMLR`: ``"ball"`` (default: offsets kept inside the ball as
``expmap0`` of a tangent parameter, :func:`hyperbolic_mlr`'s closed form) or ``"released"``
(HALO's ``HyperMLR``: offsets a plain parameter used as given, its arithmetic)."""


class HyperbolicMLR(nn.Module):
    """Hyperbolic MLR classifier for channel-first ball embeddings ``[B, D, H, W] -> [B, C, H, W]``.

    Parameters, by ``form``:

    * ``"ball"`` (default; Khrulkov et al.'s parametrisation, which plain SGD/Adam can train):
      ``offsets_tangent`` ``[C, D]``, the class offsets as tangent vectors at the origin;
      ``p_k = expmap0(offsets_tangent_k)`` is always inside the ball, whatever the step.
    * ``"released"`` (HALO's ``HyperMLR``): ``offsets_plain`` ``[C, D]``, the offsets ``p_k``
      themselves, used as given (an optimiser step may take them out of the ball), with the
      released arithmetic (:func:`hyperbolic_mlr` with ``reference=True``).
    * both: ``normals`` ``[C, D]``, ``a_k`` in the tangent space at the origin, transported to
      ``p_k``. Both parameters start uniform in ``±1/√D`` (kaiming-uniform, as the released code).

    ``curvature`` is a number (a fixed :class:`Curvature` is made) or a :class:`Curvature`
    module, which the classifier then owns (a head shares it through ``mlr.curvature``).
    ``dtype`` is the parameters' dtype (the released head's are float64). Logits come from
    :func:`hyperbolic_mlr`, computed in the input's dtype.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        curvature: float | Curvature = 1.0,
        form: str = "ball",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(
                f"in_channels must be an integer >= 1, but got in_channels={in_channels!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"num_classes must be an integer >= 1, but got num_classes={num_classes!r}"
            )
        if form not in MLR_FORMS:
            raise ValueError(f"form must be one of {', '.join(MLR_FORMS)}, but got form={form!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.form = form
        self.curvature = curvature if isinstance(curvature, Curvature) else Curvature(curvature)
        offsets = nn.Parameter(torch.empty(num_classes, in_channels, dtype=dtype))
        if form == "released":
            self.offsets_plain = offsets
        else:
            self.offsets_tangent = offsets
        self.normals = nn.Parameter(torch.empty(num_classes, in_channels, dtype=dtype))
        self.reset_parameters()

    @property
    def _offset_parameter(self) -> nn.Parameter:
        return self.offsets_plain if self.form == "released" else self.offsets_tangent

    def reset_parameters(self) -> None:
        """Uniform ``±1/√D`` init for both (as the HALO and Khrulkov code); seeded by torch's RNG."""
        nn.init.kaiming_uniform_(self._offset_parameter, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.normals, a=math.sqrt(5))

    def offsets(self, dtype: torch.dtype | None = None) -> Tensor:
        """The class offsets ``p_k``, ``[C, D]`` (in the ball for the ``"ball"`` form)."""
        p = self._offset_parameter
        p = p if dtype is None else p.to(dtype)
        if self.form == "released":
            return p
        return expmap0(p, c=self.curvature.value, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits with classes on dim 1 (``[B, D, H, W] -> [B, C, H, W]``, ``[N, D] -> [N, C]``)."""
        c = self.curvature.value
        released = self.form == "released"
        return hyperbolic_mlr(x, self.offsets(x.dtype), self.normals, c=c, dim=1, reference=released)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, num_classes={self.num_classes}, form={self.form!r}"
