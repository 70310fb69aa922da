"""Segmentation heads: decoder features -> (logits, embeddings), Euclidean, hyperbolic or cosine.

The heads start with the same 1×1 reduction to ``embed_dim`` so the geometry ablation
changes only what follows it:

* :class:`HyperbolicHead`: reduce → HFR (optional) → ``expmap0`` → hyperbolic MLR; the
  embeddings are points of the Poincaré ball of curvature ``c``;
* :class:`EuclideanHead`: reduce → 1×1 classifier; the embeddings are the reduced features;
* :class:`CosineHead`: reduce → L2-normalise → cosine with L2-normalised class weights, over a
  temperature (the multi-class label query's classifier); the embeddings are the unit features.
  With ``embed_dim=None`` it has no reduction and classifies the backbone features themselves,
  as the released model does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..hyperbolic import HFR, Curvature, HyperbolicMLR, expmap0

__all__ = ["HEAD_DTYPES", "CosineHead", "EuclideanHead", "HyperbolicHead", "SegOutput"]


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


class CosineHead(nn.Module):
    """1×1 reduce → unit features → cosine similarity to unit class weights, divided by ``temperature``.

    The released multi-class query model's classifier (``z = <f/|f|, w_c/|w_c|>``, no bias) with
    its training temperature folded in: the logits are ``z / temperature``, so cross-entropy,
    the acquisition scores and :func:`halo_ray.multiclass.partial_label_losses` (with
    ``temperature=1``) see the released ``softmax(z / 0.1)``; ``logits * temperature`` gives
    back ``z`` (what stage-2 prototypes use). The embeddings are the unit features.

    ``embed_dim=None`` drops the reduction (``reduce`` is an identity): the backbone features
    themselves are normalised and classified, as the released ``DeepLabHeadV3PlusWN`` does
    (class weights ``[num_classes, in_channels]``, embeddings of dimension ``in_channels``).
    """

    geometry = "cosine"

    def __init__(
        self, in_channels: int, num_classes: int, *, embed_dim: int | None = 64, temperature: float = 0.1
    ):
        super().__init__()
        _check_dims(in_channels, num_classes, in_channels if embed_dim is None else embed_dim)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, but got temperature={temperature!r}")
        self.temperature = float(temperature)
        if embed_dim is None:
            self.reduce: nn.Module = nn.Identity()
            embed_dim = in_channels
        else:
            self.reduce = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.embed_dim = embed_dim
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    @property
    def curvature(self) -> None:
        """Cosine heads have no curvature."""
        return None

    def forward(self, features: Tensor) -> SegOutput:
        """``[B, in, h, w] -> SegOutput(logits = cosine / T [B, C, h, w], unit embeddings [B, D, h, w])``."""
        unit = nn.functional.normalize(self.reduce(features), dim=1)
        classes = nn.functional.normalize(self.weight, dim=1)
        cosine = torch.einsum("bdhw,cd->bchw", unit, classes)
        return SegOutput(cosine / self.temperature, unit)


HEAD_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
"""Values of the ``head_dtype`` config key: the dtype of ``expmap0``, the MLR and the radius."""


class HyperbolicHead(nn.Module):
    """1×1 reduce → HFR (if ``hfr``) → ``expmap0`` onto the ball → hyperbolic MLR.

    ``curvature`` is the ball's ``c > 0``; ``learnable_curvature`` makes it a parameter
    (shared by ``expmap0`` and the MLR, owned by ``self.mlr.curvature``). ``hfr_norm`` and
    ``hfr_positivity`` pick HFR's spatial normalisation and positivity, see
    :class:`~halo_ray.hyperbolic.HFR`. ``head_dtype`` (``"float32"`` | ``"float64"``) is the
    dtype of ``expmap0``, the MLR's parameters and arithmetic, and so of the embeddings and
    their radius: the released head runs them in float64 (HFR stays in float32 there too).
    ``mlr`` is the MLR's form (``"ball"`` | ``"released"``, see
    :class:`~halo_ray.hyperbolic.HyperbolicMLR`).
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
        hfr_positivity: str = "softplus",
        head_dtype: str = "float32",
        mlr: str = "ball",
    ):
        super().__init__()
        _check_dims(in_channels, num_classes, embed_dim)
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(
                f"head_dtype must be one of {', '.join(HEAD_DTYPES)}, but got head_dtype={head_dtype!r}"
            )
        self.head_dtype = HEAD_DTYPES[head_dtype]
        self.reduce = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.hfr = HFR(embed_dim, spatial_norm=hfr_norm, positivity=hfr_positivity) if hfr else None
        curv = Curvature(curvature, learnable=learnable_curvature)
        self.mlr = HyperbolicMLR(embed_dim, num_classes, curvature=curv, form=mlr, dtype=self.head_dtype)

    @property
    def curvature(self) -> Curvature:
        """The ball's :class:`~halo_ray.hyperbolic.Curvature` module (``.value`` is ``c``)."""
        return self.mlr.curvature

    def embed(self, features: Tensor) -> Tensor:
        """Decoder features ``[B, in, h, w]`` → ball embeddings ``[B, D, h, w]`` in ``head_dtype``."""
        return self._to_ball(self.reduce(features))

    def _to_ball(self, tangent: Tensor) -> Tensor:
        """Reduced features ``[B, D, h, w]`` → HFR in the features' parameter dtype (float32
        under autocast too) → ``expmap0`` in the MLR's parameter dtype (``head_dtype``)."""
        with torch.autocast(device_type=tangent.device.type, enabled=False):
            tangent = tangent.to(self.reduce.weight.dtype)  # [B, D, h, w]
            if self.hfr is not None:
                tangent = self.hfr(tangent)
            return expmap0(tangent.to(self.mlr.normals.dtype), c=self.curvature.value, dim=1)

    def forward(self, features: Tensor) -> SegOutput:
        """``[B, in, h, w] -> SegOutput(logits [B, C, h, w] float32, embeddings [B, D, h, w] in the ball)``.

        Under ``torch.autocast`` the backbone and the 1×1 reduction may run in half precision;
        HFR runs in float32, ``expmap0`` and the MLR in ``head_dtype``: the stability policy's
        projection margin (4e-3) is about one half-precision ulp at the rim. The logits come
        back in the features' parameter dtype (float32, as the released head's ``.float()``),
        the embeddings in ``head_dtype``.
        """
        embeddings = self.embed(features)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return SegOutput(self.mlr(embeddings).to(self.reduce.weight.dtype), embeddings)
