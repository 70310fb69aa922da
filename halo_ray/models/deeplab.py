"""DeepLab-v2 and DeepLab-v3+ feature extractors on a ResNet encoder (the paper-scale backbones).

Both end in a *feature map*, not in class logits: our heads (``heads.py``) do the 1×1 reduction
to ``embed_dim`` and classify from the embeddings, for the Euclidean and hyperbolic geometry
alike.

* :class:`DeepLabV2` (Chen et al. 2017, TPAMI) — ResNet at output stride 8 and ASPP-v2: four
  parallel 3×3 convs with dilations 6, 12, 18, 24 (with bias, no BatchNorm / ReLU), summed.
  In the original (and in RIPU's / HALO's GTAV→Cityscapes models) each branch outputs class
  logits directly (HALO's hyperbolic variant: each branch outputs its 64-d embedding, which
  goes straight to ``expmap0``). Here each branch outputs ``aspp_channels`` (256) and the head's
  1×1 reduction follows; as the sum has no non-linearity, "ASPP-v2 → 1×1 reduce" spans exactly
  the same functions as HALO's "ASPP-v2 → embed_dim" whenever ``aspp_channels >= embed_dim``.
  Branch weights are initialised N(0, 0.01²) as in the original classifier.
* :class:`DeepLabV3Plus` (Chen et al. 2018, ECCV) — ResNet at output stride 8, ASPP-v3
  (1×1 branch, 3×3 branches at dilations 12, 24, 36 — the paper's 6, 12, 18 doubled for
  output stride 8 — and image pooling; each 256 channels with BatchNorm + ReLU, fused by a 1×1
  conv), decoder: ``layer1`` features (stride 4) → 1×1 conv → 48 channels, concatenated with
  the ASPP output upsampled to stride 4, two 3×3 conv-BN-ReLU → ``out_channels`` (256) at
  stride 4, where the head puts its 64-d embedding as HALO does. Differences from the paper:
  no dropout; the image-pooling branch has no BatchNorm (its 1×1 map has no batch statistics
  at batch size 1, see :class:`~halo_ray.models.backbones.ASPP`); plain (not depthwise-
  separable) 3×3 convs.
* :class:`SeparableDeepLabV3Plus` — the DeepLab-v3+ of HALO's (and RIPU's) released code, the
  model HALO's GTAV/SYNTHIA→Cityscapes numbers come from: ResNet at output stride 8; ASPP of a
  1×1 branch, depthwise-separable 3×3 branches at dilations 6, 12, 18 (*not* doubled for stride
  8) and image pooling, 512 channels each, fused by a **3×3** conv-BN-ReLU; layer1 shortcut of
  48 channels; decoder of two depthwise-separable 3×3 blocks (depthwise conv-BN-ReLU,
  pointwise conv-BN-ReLU) to 512 channels at stride 4; bilinear resizing with
  ``align_corners=True``. One difference: the image-pooling branch has no BatchNorm (as in
  :class:`~halo_ray.models.backbones.ASPP`). With ``freeze_bn`` every fresh BatchNorm is an
  identity, which is what the reference's frozen head BatchNorm layers are, so the two agree
  there. The reference's dropout before its Euclidean classifier is not modelled (our heads
  start with the 1×1 reduction to ``embed_dim``).
* :class:`MulticlassDeepLabV3Plus` — the DeepLab-v3+ of the multi-class label query's released
  code (Hwang et al. 2023, MulActSeg: ``deeplabv3pluswn_resnet50deepstem`` with
  ``--separable_conv``, output stride 16), the DeepLab-v3+ PyTorch port's head with its 3×3
  convs made atrous-separable: deep-stem ResNet-50 at output stride 16 (``layer4`` dilated);
  ASPP of a 1×1 branch, atrous-separable 3×3 branches at 6/12/18 (depthwise 3×3 → pointwise
  1×1 with nothing between, then BN → ReLU, see
  :func:`~halo_ray.models.backbones.atrous_separable_conv`) and image pooling *with*
  BatchNorm, 256 channels each, fused by a 1×1 conv-BN-ReLU and ``Dropout(0.1)``; the ASPP
  output upsampled (``align_corners=False``) to stride 4 and concatenated *after* the 48-channel
  layer1 projection (``[low, aspp]``, the reverse of :class:`DeepLabV3Plus`); two
  atrous-separable 3×3 blocks (304 → 256 → 256). Its classifier (``DeepLabHeadV3PlusWN``: cosine
  on the unit 256-d features, no reduction) is :class:`~halo_ray.models.heads.CosineHead` with
  ``embed_dim=None``. Head convs are initialised Kaiming-normal fan-in as in that code (the
  encoder fan-out, as torchvision). Training needs batches of 2 or more (the pooling branch's
  BatchNorm sees a 1×1 map), as the released model does.

Each model exposes its ResNet as ``encoder`` (the part ImageNet weights load into, see
:func:`~halo_ray.models.weights.load_backbone_weights`). ``width`` / ``layers`` build small
variants for tests; the registered names (``deeplabv2_r101``, ``deeplabv3p_r101``,
``deeplabv3p_r101_sep``, ``deeplabv3p_r50_deepstem``) are the paper sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import (
    ASPP,
    FeatureExtractor,
    _conv_bn_relu,
    atrous_separable_conv,
    init_conv_bn,
    separable_conv,
)
from .resnet import RESNET50_LAYERS, RESNET101_LAYERS, ResNet

__all__ = [
    "ASPPv2",
    "DeepLabV2",
    "DeepLabV3Plus",
    "MulticlassDeepLabV3Plus",
    "SeparableDeepLabV3Plus",
    "deeplabv2_r101",
    "deeplabv3p_r101",
    "deeplabv3p_r101_sep",
    "deeplabv3p_r50_deepstem",
]

ASPP_V2_RATES: tuple[int, ...] = (6, 12, 18, 24)
"""DeepLab-v2's ASPP dilations (at output stride 8)."""

ASPP_V3_RATES: dict[int, tuple[int, ...]] = {8: (12, 24, 36), 16: (6, 12, 18)}
"""DeepLab-v3(+)'s 3×3 ASPP dilations per encoder output stride."""


class ASPPv2(nn.Module):
    """DeepLab-v2 ASPP: parallel 3×3 dilated convs (with bias) whose outputs are summed.

    ``[B, in_channels, h, w] -> [B, out_channels, h, w]``; linear (no BatchNorm, no ReLU) as in
    the original, where the sum is the classifier.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = ASPP_V2_RATES):
        super().__init__()
        _check_rates(rates)
        self.branches = nn.ModuleList(
            [nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r) for r in rates]
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, h, w] -> [B, C_out, h, w]``: sum of the dilated branches."""
        out = self.branches[0](x)  # [B, C_out, h, w]
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(FeatureExtractor):
    """ResNet (output stride 8) → ASPP-v2 → ``[B, aspp_channels, ⌈H/8⌉, ⌈W/8⌉]``.

    ``out_channels = aspp_channels`` (256 by default; see the module docstring for why a
    feature map rather than logits).
    """

    output_stride = 8

    def __init__(
        self,
        *,
        layers: tuple[int, int, int, int] = RESNET101_LAYERS,
        width: int = 64,
        aspp_channels: int = 256,
        rates: tuple[int, ...] = ASPP_V2_RATES,
    ):
        super().__init__()
        _check_positive_int("aspp_channels", aspp_channels)
        self.encoder = ResNet(layers=layers, width=width, output_stride=8)
        self.aspp = ASPPv2(self.encoder.out_channels, aspp_channels, rates)
        self.out_channels = aspp_channels

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, aspp_channels, ⌈H/8⌉, ⌈W/8⌉]``."""
        return self.aspp(self.encoder(images).out)


class DeepLabV3Plus(FeatureExtractor):
    """ResNet (output stride 8 or 16) → ASPP-v3 → decoder with the stride-4 skip → stride 4.

    ``aspp_rates=None`` picks the paper's rates for the encoder's output stride
    (8: 12/24/36, 16: 6/12/18). ``separable`` builds the variant of HALO's / RIPU's released
    code: depthwise-separable ASPP branches fused by a 3×3 conv, separable decoder blocks and
    ``align_corners=True`` resizing (see :class:`SeparableDeepLabV3Plus`). Output
    ``[B, out_channels, ⌈H/4⌉, ⌈W/4⌉]``.
    """

    output_stride = 4

    def __init__(
        self,
        *,
        layers: tuple[int, int, int, int] = RESNET101_LAYERS,
        width: int = 64,
        encoder_output_stride: int = 8,
        aspp_channels: int = 256,
        aspp_rates: tuple[int, ...] | None = None,
        low_proj_channels: int = 48,
        out_channels: int = 256,
        separable: bool = False,
    ):
        super().__init__()
        if encoder_output_stride not in ASPP_V3_RATES:
            raise ValueError(
                f"encoder_output_stride must be one of {tuple(ASPP_V3_RATES)}, but got "
                f"encoder_output_stride={encoder_output_stride!r}"
            )
        for name, value in (
            ("aspp_channels", aspp_channels),
            ("low_proj_channels", low_proj_channels),
            ("out_channels", out_channels),
        ):
            _check_positive_int(name, value)
        rates = ASPP_V3_RATES[encoder_output_stride] if aspp_rates is None else aspp_rates
        _check_rates(rates)
        self.encoder = ResNet(layers=layers, width=width, output_stride=encoder_output_stride)
        self.aspp = ASPP(
            self.encoder.out_channels, aspp_channels, aspp_channels, tuple(rates),
            separable=separable, fuse_kernel=3 if separable else 1,
        )
        self.low_proj = _conv_bn_relu(self.encoder.low_channels, low_proj_channels, kernel_size=1)
        block = separable_conv if separable else _conv_bn_relu
        self.decoder = nn.Sequential(
            block(aspp_channels + low_proj_channels, out_channels), block(out_channels, out_channels)
        )
        self.out_channels = out_channels
        self.align_corners = separable  # the released codes resize with align_corners=True
        init_conv_bn(self.aspp, self.low_proj, self.decoder)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, out_channels, ⌈H/4⌉, ⌈W/4⌉]``."""
        low, out = self.encoder(images)  # [B, 4w, H/4, W/4], [B, 32w, H/s, W/s]
        high = self.aspp(out)  # [B, aspp, H/s, W/s]
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.decoder(torch.cat([high, self.low_proj(low)], dim=1))  # [B, out, H/4, W/4]


class SeparableDeepLabV3Plus(DeepLabV3Plus):
    """HALO's released DeepLab-v3+: ResNet (output stride 8) → separable ASPP (rates 6/12/18,
    ``channels`` wide, 3×3 fuse) → decoder of two depthwise-separable 3×3 blocks on the ASPP
    output (upsampled, ``align_corners=True``) concatenated with the 48-channel layer1 shortcut
    → ``[B, channels, ⌈H/4⌉, ⌈W/4⌉]``: :class:`DeepLabV3Plus` with ``separable`` and these sizes."""

    def __init__(
        self,
        *,
        layers: tuple[int, int, int, int] = RESNET101_LAYERS,
        width: int = 64,
        channels: int = 512,
        rates: tuple[int, ...] = (6, 12, 18),
        low_proj_channels: int = 48,
    ):
        super().__init__(
            layers=layers, width=width, encoder_output_stride=8, aspp_channels=channels, aspp_rates=rates,
            low_proj_channels=low_proj_channels, out_channels=channels, separable=True,
        )


class MulticlassDeepLabV3Plus(FeatureExtractor):
    """The multi-class label query's released DeepLab-v3+ (module docstring): deep-stem ResNet
    (output stride 16) → ASPP (1×1, atrous-separable 3×3 at ``rates``, pooling with BatchNorm;
    ``channels`` wide; 1×1 fuse, ``Dropout(dropout)``) → upsampled, concatenated after the
    ``low_proj_channels`` layer1 projection → two atrous-separable 3×3 blocks →
    ``[B, channels, ⌈H/4⌉, ⌈W/4⌉]``.

    Submodules: ``encoder`` (ResNet), ``aspp``
    (:class:`~halo_ray.models.backbones.ASPP`: ``branches`` 1×1 + 3 dilated, ``pool``,
    ``fuse``), ``low_proj`` (the reference's ``project``), ``decoder`` (its ``classifier``
    before the final conv). ``width`` / ``layers`` shrink the encoder for tests.
    """

    output_stride = 4

    def __init__(
        self,
        *,
        layers: tuple[int, int, int, int] = RESNET50_LAYERS,
        width: int = 64,
        channels: int = 256,
        rates: tuple[int, ...] = (6, 12, 18),
        low_proj_channels: int = 48,
        dropout: float = 0.1,
    ):
        super().__init__()
        for name, value in (("channels", channels), ("low_proj_channels", low_proj_channels)):
            _check_positive_int(name, value)
        _check_rates(rates)
        self.encoder = ResNet(layers=layers, width=width, output_stride=16, deep_stem=True)
        self.aspp = ASPP(
            self.encoder.out_channels, channels, channels, tuple(rates),
            dilated_block=atrous_separable_conv, pool_norm=True, dropout=dropout,
        )
        self.low_proj = _conv_bn_relu(self.encoder.low_channels, low_proj_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            atrous_separable_conv(low_proj_channels + channels, channels),
            atrous_separable_conv(channels, channels),
        )
        self.out_channels = channels
        init_conv_bn(self.aspp, self.low_proj, self.decoder, mode="fan_in")

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, channels, ⌈H/4⌉, ⌈W/4⌉]``."""
        low, out = self.encoder(images)  # [B, 4w, H/4, W/4], [B, 32w, H/16, W/16]
        high = self.aspp(out)  # [B, channels, H/16, W/16]
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([self.low_proj(low), high], dim=1))  # [B, channels, H/4, W/4]


def _check_positive_int(name: str, value: object) -> None:
    """ValueError unless ``value`` is an int (not bool) >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, but got {name}={value!r}")


def _check_rates(rates: tuple[int, ...]) -> None:
    """ValueError unless ``rates`` is a non-empty sequence of integers >= 1."""
    if (
        not isinstance(rates, tuple | list)
        or not rates
        or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates)
    ):
        raise ValueError(f"ASPP rates must be integers >= 1, but got rates={rates!r}")


def deeplabv2_r101() -> DeepLabV2:
    """DeepLab-v2 on ResNet-101 (output stride 8, ASPP-v2 rates 6/12/18/24 → 256 channels)."""
    return DeepLabV2()


def deeplabv3p_r101() -> DeepLabV3Plus:
    """DeepLab-v3+ on ResNet-101 (encoder output stride 8, ASPP rates 12/24/36, output stride 4)."""
    return DeepLabV3Plus()


def deeplabv3p_r101_sep() -> SeparableDeepLabV3Plus:
    """HALO's released DeepLab-v3+ on ResNet-101 (separable ASPP 6/12/18 and decoder, 512 channels)."""
    return SeparableDeepLabV3Plus()


def deeplabv3p_r50_deepstem() -> MulticlassDeepLabV3Plus:
    """The multi-class label query's released DeepLab-v3+ on the deep-stem ResNet-50 (output
    stride 16, atrous-separable ASPP 6/12/18 and decoder, 256 channels at stride 4)."""
    return MulticlassDeepLabV3Plus()
