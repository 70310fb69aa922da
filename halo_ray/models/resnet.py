"""ResNet encoder (bottleneck blocks) with dilated last stages, for DeepLab-style segmentation.

Architecture (He et al. 2016, "Deep Residual Learning"; the "v1.5" variant that puts the
stride on the 3×3 conv of a bottleneck, which is the one the common ImageNet checkpoints
were trained with):

* stem: 7×7 conv, stride 2 → BatchNorm → ReLU → 3×3 max-pool, stride 2 (``width`` channels);
  or, with ``deep_stem``, the three-conv stem of "ResNet-C" (He et al. 2019, "Bag of Tricks",
  there with widths 32/32/64) at the stem width 64 of the multi-class label query's released
  ResNet-50: 3×3 convs ``3 → width`` (stride 2) → BatchNorm → ReLU → ``width → width`` →
  BatchNorm → ReLU → ``width → 2·width``, then BatchNorm → ReLU → the max-pool (``2·width``
  channels into ``layer1``, whose first block then projects its shortcut);
* four stages of bottleneck blocks (1×1 reduce → 3×3 → 1×1 expand ×4, identity or
  projection shortcut), ``planes = width·(1, 2, 4, 8)``, ``layers = (3, 4, 23, 3)`` for
  ResNet-101, ``(3, 4, 6, 3)`` for ResNet-50;
* DeepLab's atrous trick (Chen et al. 2017): for ``output_stride`` 8 the strides of
  ``layer3`` and ``layer4`` are replaced by dilations 2 and 4; for 16 only ``layer4``'s
  (dilation 2). As in the torchvision ``replace_stride_with_dilation`` convention that
  RIPU / HALO build on, the first block of a dilated stage keeps the previous stage's
  dilation (it is the block that used to downsample) and the remaining blocks use the new one.

Parameter names follow the widely used ImageNet checkpoint layout (``conv1.weight``,
``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight`` …), so a
standard ResNet-101 ImageNet state dict (minus its ``fc.*`` classifier) loads by name
(see :func:`~halo_ray.models.weights.load_backbone_weights`). With ``width=64`` and
``layers=(3, 4, 23, 3)`` the encoder has exactly 42,500,160 parameters (ResNet-101's
44,549,160 minus the 2,049,000 of its 1000-class ``fc``).

The deep stem's ``conv1`` is a ``Sequential`` whose convs and BatchNorms keep their indices
(``conv1.0.weight``, ``conv1.1.running_mean``, ``conv1.3.weight``, ``conv1.4.*``,
``conv1.6.weight``; then ``bn1.*`` with ``2·width`` channels): the names of MulActSeg's
(Hwang et al. 2023) ImageNet checkpoint ``resnet50_deepstem.pth``. :func:`resnet50_deepstem`
(``width=64``, ``layers=(3, 4, 6, 3)``) has exactly 23,631,808 parameters: torchvision's
ResNet-50 without its ``fc`` (23,508,032) plus 123,776 (the deep stem's 112,832 parameters
against the 7×7 stem's 9,536, and ``layer1.0``'s 128-channel input to ``conv1`` and to the
projection shortcut: 4,096 + 16,384).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from .backbones import init_conv_bn

__all__ = ["OUTPUT_STRIDES", "Bottleneck", "ResNet", "ResNetFeatures", "resnet101", "resnet50_deepstem"]

OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
"""Supported ``output_stride`` values of :class:`ResNet` (32 is the undilated classifier net)."""

RESNET101_LAYERS: tuple[int, int, int, int] = (3, 4, 23, 3)
"""Bottleneck blocks per stage of ResNet-101."""

RESNET50_LAYERS: tuple[int, int, int, int] = (3, 4, 6, 3)
"""Bottleneck blocks per stage of ResNet-50."""


class ResNetFeatures(NamedTuple):
    """What a :class:`ResNet` returns: the features DeepLab decoders need.

    ``low [B, 4·width, ⌈H/4⌉, ⌈W/4⌉]`` (``layer1``, the v3+ decoder's skip input) and
    ``out [B, 32·width, ⌈H/s⌉, ⌈W/s⌉]`` (``layer4``, ``s = output_stride``).
    """

    low: Tensor
    out: Tensor


class Bottleneck(nn.Module):
    """1×1 (``planes``) → 3×3 (``planes``, stride, dilation) → 1×1 (``4·planes``), each with
    BatchNorm, plus a shortcut; ReLU after the sum.

    ``downsample`` (1×1 conv with the block's stride → BatchNorm) projects the shortcut when
    the stride or channel count changes; it is named ``downsample`` with children ``0`` / ``1``
    to match the ImageNet checkpoint layout.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, h, w] -> [B, 4·planes, ⌈h/stride⌉, ⌈w/stride⌉]``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


def _stage_plan(output_stride: int) -> tuple[tuple[int, int, int], ...]:
    """(stride, first-block dilation, other-blocks dilation) of ``layer1`` … ``layer4``.

    Each stage after the first halves the resolution unless the accumulated stride has
    reached ``output_stride``; from then on it dilates by the stride it gave up.
    """
    plan = []
    current_stride, dilation = 4, 1  # after the stem (conv stride 2 + max-pool stride 2)
    for index in range(4):
        stride = 1 if index == 0 else 2
        previous = dilation
        if stride > 1 and current_stride >= output_stride:
            dilation, stride = dilation * stride, 1
        current_stride *= stride
        plan.append((stride, previous, dilation))
    return tuple(plan)


class ResNet(nn.Module):
    """Bottleneck ResNet encoder: ``[B, 3, H, W] -> ResNetFeatures(low, out)``.

    ``layers`` gives the blocks per stage (ResNet-101: ``(3, 4, 23, 3)``), ``width`` the stem
    width and base planes (64 for the ImageNet nets; small values make cheap test variants),
    ``output_stride`` ∈ {8, 16, 32} where ``out`` lives, ``deep_stem`` the three-conv stem
    (``2·width`` channels into ``layer1``, see the module docstring) instead of the 7×7 conv.
    Attributes: ``low_channels`` (``4·width``), ``out_channels`` (``32·width``),
    ``output_stride``, ``deep_stem``.
    """

    def __init__(
        self,
        *,
        layers: tuple[int, int, int, int] = RESNET101_LAYERS,
        width: int = 64,
        output_stride: int = 8,
        in_channels: int = 3,
        deep_stem: bool = False,
    ):
        super().__init__()
        _check_resnet_args(layers, width, output_stride)
        if not isinstance(deep_stem, bool):
            raise ValueError(f"deep_stem must be True or False, but got deep_stem={deep_stem!r}")
        self.output_stride = output_stride
        self.deep_stem = deep_stem
        self.low_channels = 4 * width
        self.out_channels = 32 * width
        if deep_stem:
            self.conv1: nn.Module = _deep_stem(in_channels, width)
            channels = 2 * width
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            channels = width
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        for index, (blocks, plan) in enumerate(
            zip(layers, _stage_plan(output_stride), strict=True)
        ):
            stage, channels = _make_stage(channels, width * 2**index, blocks, *plan)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convs (fan-out, ReLU gain), BatchNorm weight 1 / bias 0."""
        init_conv_bn(self)

    def forward(self, images: Tensor) -> ResNetFeatures:
        """``[B, 3, H, W] -> ResNetFeatures(low [B, 4w, ⌈H/4⌉, ⌈W/4⌉], out [B, 32w, ⌈H/s⌉, ⌈W/s⌉])``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # [B, w (deep stem: 2w), H/4, W/4]
        low = self.layer1(x)  # [B, 4w, H/4, W/4]
        out = self.layer4(self.layer3(self.layer2(low)))  # [B, 32w, H/s, W/s]
        return ResNetFeatures(low, out)


def _deep_stem(in_channels: int, width: int) -> nn.Sequential:
    """The deep stem's convs: 3×3 ``in → width`` (stride 2) → BN → ReLU → 3×3 ``width → width``
    → BN → ReLU → 3×3 ``width → 2·width``; no biases, padding 1. The BatchNorm and ReLU after
    the last conv are the net's ``bn1`` / ``relu``."""

    def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)

    return nn.Sequential(
        conv(in_channels, width, stride=2),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        conv(width, width),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        conv(width, 2 * width),
    )


def _make_stage(
    in_channels: int, planes: int, blocks: int, stride: int, first_dilation: int, dilation: int
) -> tuple[nn.Sequential, int]:
    """One stage of ``blocks`` bottlenecks; returns it and its output channel count."""
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    first = Bottleneck(
        in_channels, planes, stride=stride, dilation=first_dilation, downsample=downsample
    )
    rest = [Bottleneck(out_channels, planes, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest), out_channels


def _check_resnet_args(layers: tuple[int, ...], width: int, output_stride: int) -> None:
    """Validate :class:`ResNet`'s arguments, one check per argument."""
    if (
        not isinstance(layers, tuple | list)
        or len(layers) != 4
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers)
    ):
        raise ValueError(
            f"layers must be 4 integers >= 1 (blocks per stage), but got layers={layers!r}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1, but got width={width!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {OUTPUT_STRIDES}, but got output_stride={output_stride!r}"
        )


def resnet101(*, output_stride: int = 8) -> ResNet:
    """ResNet-101 encoder (42.5 M parameters) at ``output_stride`` 8 (DeepLab default) or 16."""
    return ResNet(layers=RESNET101_LAYERS, width=64, output_stride=output_stride)


def resnet50_deepstem(*, output_stride: int = 16) -> ResNet:
    """ResNet-50 with the deep stem (23.6 M parameters) at ``output_stride`` 16 (the multi-class
    label query's released model: ``layer4`` dilated) or 8: the encoder that MulActSeg's
    ``resnet50_deepstem.pth`` ImageNet weights load into by name."""
    return ResNet(layers=RESNET50_LAYERS, width=64, output_stride=output_stride, deep_stem=True)
