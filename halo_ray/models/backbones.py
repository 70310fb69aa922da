"""Feature extractors ("backbones"): image -> dense decoder features for a segmentation head.

A backbone here is everything between the image and the head: encoder, ASPP and decoder.
It maps ``[B, 3, H, W]`` to ``[B, out_channels, ⌈H/s⌉, ⌈W/s⌉]`` with ``s = output_stride``.
New backbones register a factory in :data:`BACKBONES` (the paper-scale ones live in
``deeplab.py`` and ``mit.py``); the heads and :func:`~halo_ray.models.build_segmenter` need
nothing else.
Nothing here downloads weights, and nothing pins a device: modules follow their input.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from halo_ray.names import MIN_TRAIN_MICRO_BATCH

__all__ = [
    "ASPP", "BACKBONES", "MIN_TRAIN_MICRO_BATCH", "FeatureExtractor", "TinyDeepLab", "atrous_separable_conv",
    "build_backbone",
]


class FeatureExtractor(nn.Module):
    """Base class of registered backbones.

    Subclasses set ``out_channels`` (channels of the features given to the head) and
    ``output_stride`` (input pixels per feature pixel), and implement ``forward(images)``.
    """

    out_channels: int
    output_stride: int


def init_conv_bn(*modules: nn.Module, mode: str = "fan_out") -> None:
    """Kaiming-normal convs (ReLU gain; ``mode`` ``"fan_out"`` or ``"fan_in"``), BatchNorm weight 1
    / bias 0, in module order."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _conv_bn_relu(
    in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1, kernel_size: int = 3
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → ReLU, 'same' padding for odd kernels."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def separable_conv(in_channels: int, out_channels: int, *, dilation: int = 1) -> nn.Sequential:
    """Depthwise-separable 3×3 block: depthwise 3×3 conv (dilated) → BN → ReLU, then
    pointwise 1×1 conv → BN → ReLU; 'same' padding, no biases."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        *_conv_bn_relu(in_channels, out_channels, kernel_size=1),
    )


def atrous_separable_conv(in_channels: int, out_channels: int, *, dilation: int = 1) -> nn.Sequential:
    """Atrous separable 3×3 conv-BN-ReLU as DeepLab-v3+'s reference PyTorch port builds it
    (``convert_to_separable_conv``, used by the multi-class label query's released model):
    depthwise 3×3 conv (dilated) → pointwise 1×1 conv, with *nothing* between them, then BN →
    ReLU; 'same' padding, no biases. Unlike :func:`separable_conv` (HALO's layout) the depthwise
    conv has no BatchNorm or ReLU of its own."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab-v3 style).

    Parallel branches on the encoder features: a 1×1 conv, 3×3 convs at the given dilations
    (depthwise-separable with ``separable``, as in HALO's / RIPU's released DeepLab-v3+), and
    global average pooling; concatenated and fused by a ``fuse_kernel``² conv (1 in the paper,
    3 in those codes).

    ``dilated_block`` replaces the builder of the dilated branches (``(in, out, *, dilation)``,
    e.g. :func:`atrous_separable_conv`; not together with ``separable``); ``pool_norm`` puts a
    BatchNorm between the pooling branch's conv and its ReLU (the paper's and the reference
    port's; without it, as by default, training also works at batch size 1, where a 1×1 map has
    no batch statistics); ``dropout > 0`` follows the fuse with ``nn.Dropout(dropout)``. The
    pooled branch is broadcast over the map, which is what bilinear upsampling of a 1×1 map is.
    """

    def __init__(
        self,
        in_channels: int,
        branch_channels: int,
        out_channels: int,
        dilations: tuple[int, ...],
        *,
        separable: bool = False,
        fuse_kernel: int = 1,
        dilated_block: Callable[..., nn.Module] | None = None,
        pool_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if separable and dilated_block is not None:
            raise ValueError("give separable=True or a dilated_block, not both")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout!r}")
        dilated = dilated_block or (separable_conv if separable else _conv_bn_relu)
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, branch_channels, kernel_size=1)]
            + [dilated(in_channels, branch_channels, dilation=d) for d in dilations]
        )
        if pool_norm:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, branch_channels, kernel_size=1))
        else:
            self.pool = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.ReLU(inplace=True),  # no BatchNorm: a 1×1 map with batch 1 has no statistics
            )
        n = len(self.branches) + 1
        self.fuse = _conv_bn_relu(n * branch_channels, out_channels, kernel_size=fuse_kernel)
        if dropout > 0:
            self.fuse.append(nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, h, w] -> [B, out_channels, h, w]``."""
        pooled = self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1])  # [B, branch, h, w]
        return self.fuse(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class TinyDeepLab(FeatureExtractor):
    """CPU-friendly DeepLab-v3+-like extractor (~200 k parameters), output stride 4.

    * encoder: five 3×3 conv-BN-ReLU layers, strides 2, 2, 1, 2, 1 → low-level features at
      stride 4 (``low_channels``) and high-level features at stride 8 (``high_channels``);
    * ASPP on the stride-8 features (dilations 2 and 4 plus image pooling);
    * decoder: ASPP output upsampled to stride 4, concatenated with 1×1-projected low-level
      features, fused by two 3×3 conv-BN-ReLU layers → ``out_channels`` at stride 4.

    Sized after a prototype of the embedded benchmark (a ~215 k-parameter stride-8 CNN with small ASPP
    and stride-4 decoder, ~0.17 s per batch-8 step at 256×128 on 2 cores).
    """

    output_stride = 4

    def __init__(
        self,
        *,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (24, 32, 64),
        aspp_channels: int = 32,
        low_proj_channels: int = 16,
        out_channels: int = 64,
        dilations: tuple[int, ...] = (2, 4),
    ):
        super().__init__()
        w1, w2, w3 = widths
        self.low_channels = w2
        self.high_channels = w3
        self.out_channels = out_channels
        self.stem = _conv_bn_relu(in_channels, w1, stride=2)  # stride 2
        self.layer1 = nn.Sequential(_conv_bn_relu(w1, w2, stride=2), _conv_bn_relu(w2, w2))  # 4
        self.layer2 = nn.Sequential(_conv_bn_relu(w2, w3, stride=2), _conv_bn_relu(w3, w3))  # 8
        self.aspp = ASPP(w3, aspp_channels, out_channels, dilations)
        self.low_proj = _conv_bn_relu(w2, low_proj_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(out_channels + low_proj_channels, out_channels),
            _conv_bn_relu(out_channels, out_channels),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convs (ReLU gain), BatchNorm weight 1 / bias 0; seeded by torch's RNG."""
        init_conv_bn(self)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, out_channels, ⌈H/4⌉, ⌈W/4⌉]``."""
        low = self.layer1(self.stem(images))  # [B, w2, H/4, W/4]
        high = self.aspp(self.layer2(low))  # [B, out, H/8, W/8]
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([high, self.low_proj(low)], dim=1))  # [B, out, H/4, W/4]


def _lazy(module: str, name: str) -> Callable[[], FeatureExtractor]:
    """The factory ``halo_ray.models.<module>.<name>``, imported when called: those modules
    import this one, and the paper-size models cost nothing until a run asks for one."""

    def factory() -> FeatureExtractor:
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)()

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Build {module}.{name}() (imported on first use)."
    return factory


BACKBONES: dict[str, Callable[[], FeatureExtractor]] = {
    "tiny": TinyDeepLab,
    "deeplabv2_r101": _lazy("deeplab", "deeplabv2_r101"),
    "deeplabv3p_r101": _lazy("deeplab", "deeplabv3p_r101"),
    "deeplabv3p_r101_sep": _lazy("deeplab", "deeplabv3p_r101_sep"),
    "deeplabv3p_r50_deepstem": _lazy("deeplab", "deeplabv3p_r50_deepstem"),
    **{f"mit_{size}": _lazy("mit", f"mit_{size}") for size in ("b0", "b1", "b2", "b3", "b4", "b5")},
}
"""Backbone name → zero-argument factory. Names are the ``backbone`` config key's values.

``tiny``: CPU-friendly stand-in (stride 4). Paper scale (issue 5): ``deeplabv2_r101``
(RIPU's GTAV→Cityscapes model, stride 8), ``deeplabv3p_r101`` (the paper's DeepLab-v3+,
stride 4), ``deeplabv3p_r101_sep`` (the separable 512-channel DeepLab-v3+ of HALO's released
code, stride 4), ``deeplabv3p_r50_deepstem`` (the multi-class label query's released
DeepLab-v3+: deep-stem ResNet-50 at encoder stride 16, separable 256-channel head, stride 4;
its cosine classifier is ``geometry="cosine"`` with ``embed_dim=None``), and the
SegFormer sizes ``mit_b0`` … ``mit_b5`` (stride 4): ``mit_b4`` is HALO's Cityscapes→ACDC
model, ``mit_b2`` the common paper size, ``mit_b0`` the cheap one. Their encoders take
ImageNet weights from a local file via :func:`~halo_ray.models.weights.load_backbone_weights`
(MiT files in our, the mmseg or the Hugging Face key layout).
"""


def build_backbone(name: str) -> FeatureExtractor:
    """Instantiate the registered backbone ``name`` (ValueError listing the known names)."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(
            f"unknown backbone={name!r}; known backbones: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name]()
