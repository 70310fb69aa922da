"""The reference code's pixel entropy and hyperbolic radius, bitwise, without its big temporaries.

Private helpers of :mod:`halo_ray.acquisition.scores` for ``reference=True``. The reference
computes ``torch.sum(-p * torch.log(p + 1e-6), dim=0)`` over a ``[C, H, W]`` tensor and the
radius with geoopt's ``dist0`` (``x.norm(dim=1)``), both costly on CPU (four ``[C, H, W]``
temporaries; a strided norm reduction). Their float32 results depend on the order in which
ATen's CPU kernels add things up, which is reproduced here channel by channel:

* ``torch.sum`` over C rows: sequential inside blocks of 16 rows, block sums added
  sequentially, the ``C mod 16`` trailing rows summed on their own and added last - for
  every output column except the last ``columns mod (4·SIMD width)``, which take another
  order; those few are recomputed with the dense call on just their columns
  (:func:`tail_columns`);
* ``x.norm(dim=d, p=2)``: sequential float32 ``acc + x*x`` (multiply and add rounded
  separately), then the square root taken in double precision and rounded to float32.

Each emulation checks itself once per process against the dense torch call on a small
input; if a torch release changes its kernels (or off the CPU) the dense call runs instead,
so the result is always the reference's.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["reference_entropy", "reference_radius"]

# The reference normalises pixel entropy by ln 19 (Cityscapes' class count) whatever C is.
REFERENCE_ENTROPY_CLASSES = 19
# Added inside the logarithm by the reference code.
REFERENCE_LOG_EPS = 1e-6
_BLOCK = 16
_MAX_EMULATED_ROWS = 256
# Columns are reduced in SIMD chunks of 4 vectors (32 floats with AVX2, 64 with AVX-512);
# taking the last ``n mod 128`` columns covers the scalar tail for any such chunk size.
_TAIL_PERIOD = 128


def tail_columns(columns: int) -> int:
    """How many trailing output columns to recompute with the dense reduction.

    ATen's CPU sum over a leading dimension reduces the output columns in SIMD chunks and
    the leftover columns one by one, in a different order. A dense call on the last
    ``columns mod 128`` columns alone puts exactly those columns in its own leftover, so
    it reproduces them (128 is a multiple of every chunk size).
    """
    return columns % _TAIL_PERIOD


def _dense_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``sum_c -p log(p + 1e-6)`` exactly as the reference writes it (not normalised)."""
    return torch.sum(-probs * torch.log(probs + REFERENCE_LOG_EPS), dim=0)


def _emulated_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``_dense_entropy`` channel by channel, in ATen's CPU summation order."""
    num_classes = probs.shape[0]
    full_end = (num_classes // _BLOCK) * _BLOCK
    term = torch.empty(probs.shape[1:], dtype=probs.dtype)
    blocks: torch.Tensor | None = None  # sum of finished 16-row blocks
    acc = torch.zeros(probs.shape[1:], dtype=probs.dtype)

    def add_term(target: torch.Tensor, c: int) -> None:
        torch.add(probs[c], REFERENCE_LOG_EPS, out=term)
        torch.log(term, out=term)
        term.mul_(probs[c])
        target.sub_(term)  # target + (-p)·log(p + eps), bitwise

    for c in range(full_end):
        add_term(acc, c)
        if (c + 1) % _BLOCK == 0:
            blocks = acc if blocks is None else blocks.add_(acc)
            acc = torch.zeros(probs.shape[1:], dtype=probs.dtype)
    tail = acc  # zero here: the last full block was just flushed
    for c in range(full_end, num_classes):
        add_term(tail, c)
    out = tail if blocks is None else tail.add_(blocks)
    leftover = tail_columns(out.numel())
    if leftover:
        flat = probs.reshape(num_classes, -1)[:, -leftover:].contiguous()
        out.view(-1)[-leftover:] = _dense_entropy(flat)
    return out


@functools.cache
def _entropy_emulation_ok(num_classes: int, dtype: torch.dtype) -> bool:
    """Self-check of ``_emulated_entropy`` against the dense call, once per (C, dtype)."""
    if num_classes > _MAX_EMULATED_ROWS:
        return False
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((num_classes, 12, 59), generator=gen, dtype=torch.float64) * 3
    probs = torch.softmax(logits, dim=0).to(dtype)
    probs[:, 0, :5] = 0.0
    probs[0, 0, :5] = 1.0
    return bool(torch.equal(_emulated_entropy(probs), _dense_entropy(probs)))


def reference_entropy(probs: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
    """The reference's pixel entropy ``sum_c -p log(p + 1e-6)``, divided by ``log 19``.

    ``probs`` ``[C, H, W]``; ``normalise=False`` skips the division (RIPU's pixel unit).
    """
    if probs.device.type == "cpu" and _entropy_emulation_ok(probs.shape[0], probs.dtype):
        raw = _emulated_entropy(probs.contiguous())
    else:
        raw = _dense_entropy(probs)
    return raw / math.log(REFERENCE_ENTROPY_CLASSES) if normalise else raw


def _dense_radius(embeddings: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The reference's call as written: geoopt ``dist0`` over dim 1 of ``[1, D, H, W]``."""
    import geoopt.manifolds.stereographic.math as pmath  # not at import: a trial's process never scores

    return pmath.dist0(embeddings.unsqueeze(0), k=k, dim=1).squeeze(0)


def _emulated_radius(embeddings: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``_dense_radius`` with the norm accumulated channel by channel.

    ATen's CPU ``norm(p=2)`` over a non-innermost dim adds ``x*x`` (multiply and add rounded
    separately) sequentially in float32 and takes the square root in double; geoopt then
    applies ``2 artan_k`` element-wise, which is called here unchanged.
    """
    import geoopt.manifolds.stereographic.math as pmath  # not at import, as in _dense_radius

    acc = embeddings[0] * embeddings[0]
    square = torch.empty_like(acc)
    for d in range(1, embeddings.shape[0]):
        torch.mul(embeddings[d], embeddings[d], out=square)
        acc.add_(square)
    norm = acc.to(torch.float64).sqrt_().to(embeddings.dtype)
    return 2.0 * pmath.artan_k(norm, k)


def _curvature_tensor(curvature: float) -> torch.Tensor:
    """``k = -c`` as the reference's ``HyperMapper`` builds it: a float64 0-dim tensor."""
    return torch.tensor(-curvature, dtype=torch.float64)


@functools.cache
def _radius_emulation_ok(dtype: torch.dtype) -> bool:
    """Self-check of ``_emulated_radius`` against the dense call, once per dtype."""
    if dtype != torch.float32:
        return False
    gen = torch.Generator().manual_seed(0)
    for dim, curvature in ((1, 1.0), (3, 0.5), (64, 2.0)):
        z = torch.randn((dim, 9, 61), generator=gen).to(dtype) * (0.5 / math.sqrt(dim * curvature))
        k = _curvature_tensor(curvature)
        if not torch.equal(_emulated_radius(z, k), _dense_radius(z, k)):
            return False
    return True


def reference_radius(embeddings: torch.Tensor, curvature: float) -> torch.Tensor:
    """The reference's ``poincare_distance_origin``: geoopt ``dist0`` with ``k = -c`` in float64.

    ``embeddings`` ``[D, H, W]`` in their own dtype (the reference's are float64 after its
    ``expmap``; float32 inputs give float32 radii as the reference would).
    """
    k = _curvature_tensor(curvature)
    if embeddings.device.type == "cpu" and _radius_emulation_ok(embeddings.dtype):
        return _emulated_radius(embeddings.contiguous(), k)
    return _dense_radius(embeddings, k)
