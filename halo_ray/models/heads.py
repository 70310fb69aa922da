"""Segmentation heads: decoder features -> (logits, embeddings), Euclidean or hyperbolic.

Both heads start with the same 1×1 reduction to ``embed_dim`` so the geometry ablation
changes only what follows it (DESIGN §5):

* :class:`HyperbolicHead`: reduce → HFR (optional) → ``expmap0`` → hyperbolic MLR; the
  embeddings are points of the Poincaré ball of curvature ``c``;
* :class:`EuclideanHead`: reduce → 1×1 classifier; the embeddings are the reduced features.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..hyperbolic import HFR, Curvature, HyperbolicMLR, expmap0

__all__ = ["EuclideanHead", "HyperbolicHead", "SegOutput"]


class SegOutput(NamedTuple):
    """Output of a head and of a segmenter.

    ``logits [B, C, h, w]`` (unnormalised class scores at the backbone's output stride) and
    ``embeddings [B, D, h, w]`` (points in the Poincaré ball for the hyperbolic head, the
    reduced Euclidean features for the Euclidean one).
    """

    logits: Tensor
    embeddings: Tensor


def _check_dims(in_channels: int, num_classes: int, embed_dim: int) -> None:
    """Validate head sizes, one check per argument."""
    checks = (
        ("in_channels", in_channels, 1),
        ("num_classes", num_classes, 2),
        ("embed_dim", embed_dim, 1),
    )
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}")


class EuclideanHead(nn.Module):
    """1×1 reduce to ``embed_dim`` → 1×1 linear classifier (the geometry ablation's baseline)."""

    geometry = "euclidean"

    def __init__(self, in_channels: int, num_classes: int, *, embed_dim: int = 64):
        super().__init__()
        _check_dims(in_channels, num_classes, embed_dim)
        self.reduce = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    @property
    def curvature(self) -> None:
        """Euclidean heads have no curvature."""
        return None

    def forward(self, features: Tensor) -> SegOutput:
        """``[B, in, h, w] -> SegOutput(logits [B, C, h, w], embeddings [B, D, h, w])``."""
        embeddings = self.reduce(features)  # [B, D, h, w]
        return SegOutput(self.classifier(embeddings), embeddings)


class HyperbolicHead(nn.Module):
    """1×1 reduce → HFR (if ``hfr``) → ``expmap0`` onto the ball → hyperbolic MLR.

    ``curvature`` is the ball's ``c > 0``; ``learnable_curvature`` makes it a parameter
    (shared by ``expmap0`` and the MLR, owned by ``self.mlr.curvature``). ``hfr_norm`` picks
    HFR's spatial normalisation (``"rms"``, resolution-independent; ``"l2"``, the HALO
    reference's), see :class:`~halo_ray.hyperbolic.HFR`.
    """

    geometry = "hyperbolic"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        embed_dim: int = 64,
        curvature: float = 1.0,
        learnable_curvature: bool = False,
        hfr: bool = True,
        hfr_norm: str = "rms",
    ):
        super().__init__()
        _check_dims(in_channels, num_classes, embed_dim)
        self.reduce = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.hfr = HFR(embed_dim, spatial_norm=hfr_norm) if hfr else None
        curv = Curvature(curvature, learnable=learnable_curvature)
        self.mlr = HyperbolicMLR(embed_dim, num_classes, curvature=curv)

    @property
    def curvature(self) -> Curvature:
        """The ball's :class:`~halo_ray.hyperbolic.Curvature` module (``.value`` is ``c``)."""
        return self.mlr.curvature

    def embed(self, features: Tensor) -> Tensor:
        """Decoder features ``[B, in, h, w]`` → ball embeddings ``[B, D, h, w]``."""
        return self._to_ball(self.reduce(features))

    def _to_ball(self, tangent: Tensor) -> Tensor:
        """Reduced features ``[B, D, h, w]`` → HFR → ``expmap0``, in the head's parameter dtype."""
        with torch.autocast(device_type=tangent.device.type, enabled=False):
            tangent = tangent.to(self.mlr.normals.dtype)  # [B, D, h, w]
            if self.hfr is not None:
                tangent = self.hfr(tangent)
            return expmap0(tangent, c=self.curvature.value, dim=1)

    def forward(self, features: Tensor) -> SegOutput:
        """``[B, in, h, w] -> SegOutput(logits [B, C, h, w], embeddings [B, D, h, w] in the ball)``.

        Under ``torch.autocast`` the backbone and the 1×1 reduction may run in half precision;
        HFR, ``expmap0`` and the MLR run in the head's parameter dtype (float32 by default):
        the stability policy's projection margin (4e-3) is about one half-precision ulp at the
        rim, and HALO's reference even runs this part in float64.
        """
        embeddings = self.embed(features)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return SegOutput(self.mlr(embeddings), embeddings)
