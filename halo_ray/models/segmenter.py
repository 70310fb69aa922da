"""The segmenter (backbone + head) and its builder, the one entry point the rest of halo_ray uses."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from torch import Tensor, nn

from ..hyperbolic import HFR_NORMS, HFR_POSITIVITY, MLR_FORMS
from .backbones import BACKBONES, FeatureExtractor, build_backbone
from .heads import HEAD_DTYPES, CosineHead, EuclideanHead, HyperbolicHead, SegOutput

__all__ = ["GEOMETRIES", "SegOutput", "Segmenter", "SegmenterSpec", "build_segmenter"]

GEOMETRIES: tuple[str, ...] = ("hyperbolic", "euclidean", "cosine")
"""Values of the ``geometry`` config key."""


@dataclass(frozen=True)
class SegmenterSpec:
    """The arguments a segmenter was built from; stored in checkpoints to rebuild it."""

    backbone: str = "tiny"  # key of BACKBONES: encoder + ASPP + decoder
    geometry: str = "hyperbolic"  # "hyperbolic" (ball + MLR), "euclidean" (1×1 classifier) or "cosine"
    num_classes: int = 19  # Cityscapes' 19 train classes by default
    embed_dim: int | None = 64  # channels of the embeddings (HALO's REDUCED_CHANNELS); None (cosine only): no reduction
    curvature: float = 1.0  # initial ball curvature c > 0 (hyperbolic only)
    learnable_curvature: bool = False  # train c (kept > 0 by a softplus parametrisation)
    hfr: bool = True  # Hyperbolic Feature Reweighting before expmap0 (hyperbolic only)
    hfr_norm: str = "rms"  # HFR's spatial normalisation: "rms" (default) or "l2" (HALO reference)
    hfr_positivity: str = "softplus"  # HFR's channel-weight positivity: "softplus" or "clamp" (HALO reference)
    head_dtype: str = "float32"  # dtype of expmap0, the MLR and the radius: "float64" = HALO reference
    mlr: str = "ball"  # MLR form: "ball" (offsets inside the ball) or "released" (HALO's HyperMLR)
    temperature: float = 0.1  # cosine head: logits = cosine / temperature (cosine only)

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or self.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone={self.backbone!r}; known backbones: {', '.join(sorted(BACKBONES))}"
            )
        if self.geometry not in GEOMETRIES:
            raise ValueError(
                f"unknown geometry={self.geometry!r}; expected one of: {', '.join(GEOMETRIES)}"
            )
        _check_int("num_classes", self.num_classes, low=2)
        if self.embed_dim is None:
            if self.geometry != "cosine":
                raise ValueError(
                    f"embed_dim=None (no reduction: classify the backbone features directly) needs "
                    f"geometry='cosine', but got geometry={self.geometry!r}"
                )
        else:
            _check_int("embed_dim", self.embed_dim, low=1)
        if (
            isinstance(self.curvature, bool)
            or not isinstance(self.curvature, Real)
            or not math.isfinite(self.curvature)
            or self.curvature <= 0
        ):
            raise ValueError(
                f"curvature must be a finite number > 0 (the magnitude c of the ball's "
                f"curvature -c), but got curvature={self.curvature!r}"
            )
        object.__setattr__(self, "curvature", float(self.curvature))  # e.g. numpy floats -> float
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, Real) or not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number > 0, but got temperature={self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        for name, allowed in (
            ("hfr_norm", HFR_NORMS), ("hfr_positivity", HFR_POSITIVITY), ("head_dtype", tuple(HEAD_DTYPES)),
            ("mlr", MLR_FORMS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"unknown {name}={getattr(self, name)!r}; expected one of: {', '.join(allowed)}"
                )
        for name in ("learnable_curvature", "hfr"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, but got {name}={value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints, Parquet ``config_json``)."""
        return dataclasses.asdict(self)


def _check_int(name: str, value: object, *, low: int) -> None:
    """ValueError unless ``value`` is an int (not bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}")


class Segmenter(nn.Module):
    """Backbone + head: ``images [B, 3, H, W] -> SegOutput(logits, embeddings)`` at the
    backbone's output stride (4 for ``"tiny"``: ``[B, C, ⌈H/4⌉, ⌈W/4⌉]``).

    Upsampling logits to the label resolution is the caller's business (losses and metrics
    live in ``halo_ray.losses``, ``halo_ray.metrics`` and ``halo_ray.training``). Build with :func:`build_segmenter`.
    """

    def __init__(self, backbone: FeatureExtractor, head: nn.Module, spec: SegmenterSpec):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec

    @property
    def geometry(self) -> str:
        """``"hyperbolic"``, ``"euclidean"`` or ``"cosine"``."""
        return self.spec.geometry

    @property
    def output_stride(self) -> int:
        """Input pixels per output pixel."""
        return self.backbone.output_stride

    @property
    def curvature(self) -> float | None:
        """Current ball curvature ``c`` (changes during training if learnable); None if Euclidean."""
        curv = self.head.curvature
        return None if curv is None else float(curv.value.detach())

    def forward(self, images: Tensor) -> SegOutput:
        """``[B, 3, H, W] -> SegOutput(logits [B, C, h, w], embeddings [B, D, h, w])``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], but got {tuple(images.shape)}")
        return self.head(self.backbone(images))


def build_segmenter(
    *,
    backbone: str = "tiny",
    geometry: str = "hyperbolic",
    num_classes: int = 19,
    embed_dim: int | None = 64,
    curvature: float = 1.0,
    learnable_curvature: bool = False,
    hfr: bool = True,
    hfr_norm: str = "rms",
    hfr_positivity: str = "softplus",
    head_dtype: str = "float32",
    mlr: str = "ball",
    temperature: float = 0.1,
) -> Segmenter:
    """Build a segmenter; deterministic under ``torch.manual_seed``, on CPU (move it with ``.to``).

    ``curvature``, ``learnable_curvature``, ``hfr``, ``hfr_norm``, ``hfr_positivity``,
    ``head_dtype`` and ``mlr`` only shape the hyperbolic head; they are validated for both
    geometries and recorded in ``segmenter.spec``.
    ``embed_dim=None`` (geometry ``"cosine"`` only) classifies the backbone features without a
    1×1 reduction, as the multi-class label query's released head does.
    ``hfr_norm="l2"`` reproduces the HALO reference's HFR scaling, which learns much more slowly
    at this benchmark's resolution (see :class:`~halo_ray.hyperbolic.HFR`).
    """
    spec = SegmenterSpec(
        backbone=backbone,
        geometry=geometry,
        num_classes=num_classes,
        embed_dim=embed_dim,
        curvature=curvature,
        learnable_curvature=learnable_curvature,
        hfr=hfr,
        hfr_norm=hfr_norm,
        hfr_positivity=hfr_positivity,
        head_dtype=head_dtype,
        mlr=mlr,
        temperature=temperature,
    )
    features = build_backbone(spec.backbone)
    if spec.geometry == "hyperbolic":
        head: nn.Module = HyperbolicHead(
            features.out_channels,
            spec.num_classes,
            embed_dim=spec.embed_dim,
            curvature=spec.curvature,
            learnable_curvature=spec.learnable_curvature,
            hfr=spec.hfr,
            hfr_norm=spec.hfr_norm,
            hfr_positivity=spec.hfr_positivity,
            head_dtype=spec.head_dtype,
            mlr=spec.mlr,
        )
    elif spec.geometry == "cosine":
        head = CosineHead(features.out_channels, spec.num_classes, embed_dim=spec.embed_dim, temperature=spec.temperature)
    else:
        head = EuclideanHead(features.out_channels, spec.num_classes, embed_dim=spec.embed_dim)
    return Segmenter(features, head, spec)
