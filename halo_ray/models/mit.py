"""SegFormer: Mix Transformer (MiT) encoder + all-MLP decoder, an attention-based backbone.

Written from the SegFormer paper (Xie et al. 2021, "SegFormer: Simple and Efficient Design
for Semantic Segmentation with Transformers"):

* **Overlapping patch embedding**: a strided conv (7×7 stride 4 padding 3 for stage 1,
  3×3 stride 2 padding 1 afterwards) + LayerNorm; stage ``i`` lives at stride 4, 8, 16, 32,
  i.e. ``⌈H/s_i⌉ × ⌈W/s_i⌉`` tokens. No positional encoding (Mix-FFN's conv leaks position).
* **Efficient self-attention**: queries from all tokens; keys / values from the sequence
  shrunk by a ``sr × sr``-strided ``sr × sr`` conv + LayerNorm (``sr`` = 8, 4, 2, 1), cost
  ``N²/sr²``. Attention is :func:`torch.nn.functional.scaled_dot_product_attention`.
* **Mix-FFN**: Linear(C → 4C) → depthwise 3×3 conv → GELU → Linear(4C → C).
* Pre-norm blocks ``x + attn(LN(x))``, ``x + ffn(LN(x))`` with stochastic depth (drop path)
  growing linearly to ``drop_path_rate`` over all blocks; LayerNorm after each stage.
* **All-MLP decoder**: each stage → per-pixel linear map to ``decoder_dim`` → bilinear
  upsampling to stride 4 → concatenation (deepest first) → 1×1 conv + BatchNorm + ReLU
  (fuse) → dropout → ``[B, decoder_dim, ⌈H/4⌉, ⌈W/4⌉]``. The paper's final linear
  classifier is our head (1×1 reduce to ``embed_dim`` → Euclidean or hyperbolic classifier).

Encoder parameter names follow the layout of the public MiT ImageNet checkpoints
(``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``block1.0.attn.kv.weight``,
``block1.0.attn.sr.weight``, ``block1.0.mlp.dwconv.dwconv.weight``, ``norm1.weight`` …;
their classifier is ``head.*``) so such a file loads by name into ``SegFormer.encoder``.
Files in the Hugging Face ``transformers`` layout (``encoder.block.0.0.attention.self.query``,
separate key / value) are converted on load, see :func:`~halo_ray.models.weights.convert_hf_mit`.

The smallest input is 29×29: stage 1's key/value reduction needs ``⌈H/4⌉ >= sr_1 = 8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import FeatureExtractor

__all__ = [
    "MIT_SIZES",
    "MiTSize",
    "MixTransformer",
    "SegFormer",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
]


@dataclass(frozen=True)
class MiTSize:
    """Hyper-parameters of one Mix Transformer size (paper Table 6)."""

    embed_dims: tuple[int, int, int, int]  # channels C_i of stages 1..4
    depths: tuple[int, int, int, int]  # transformer blocks per stage
    num_heads: tuple[int, int, int, int]  # attention heads per stage (head dim C_i / heads)
    sr_ratios: tuple[int, int, int, int]  # key/value spatial reduction per stage
    decoder_dim: int  # all-MLP decoder width (256 for B0/B1, 768 for B2..B5)
    mlp_ratio: int = 4  # Mix-FFN hidden width / C_i


_HEADS = (1, 2, 5, 8)  # attention heads per stage, the same for every paper size
_SR = (8, 4, 2, 1)  # key/value reduction per stage, the same for every paper size
_WIDE = (64, 128, 320, 512)  # stage channels of MiT-B1..B5 (B0 is narrower)

MIT_SIZES: dict[str, MiTSize] = {
    "b0": MiTSize((32, 64, 160, 256), (2, 2, 2, 2), _HEADS, _SR, 256),
    "b1": MiTSize(_WIDE, (2, 2, 2, 2), _HEADS, _SR, 256),
    "b2": MiTSize(_WIDE, (3, 4, 6, 3), _HEADS, _SR, 768),
    "b3": MiTSize(_WIDE, (3, 4, 18, 3), _HEADS, _SR, 768),
    "b4": MiTSize(_WIDE, (3, 8, 27, 3), _HEADS, _SR, 768),
    "b5": MiTSize(_WIDE, (3, 6, 40, 3), _HEADS, _SR, 768),
}
"""The six paper sizes by name (SegFormer paper Table 6; the public NVlabs ``mit_b*`` backbones
and their ``decoder_params.embed_dim``): ``b0`` for cheap tests, ``b2`` the common paper size,
``b4`` HALO's Cityscapes → ACDC model. They differ only in the stage-1 width (B0) and depths."""

_PATCH = ((7, 4), (3, 2), (3, 2), (3, 2))  # (kernel, stride) of each stage's patch embedding


class OverlapPatchEmbed(nn.Module):
    """Strided conv with ``kernel > stride`` (overlapping patches) + LayerNorm.

    ``[B, C_in, h, w] -> ([B, h'·w', C], h', w')`` with ``h' = ⌈h/stride⌉``.
    """

    def __init__(self, in_channels: int, dim: int, *, kernel_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(
            in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Feature map → (tokens ``[B, N, C]``, height, width)."""
        x = self.proj(x)  # [B, C, h', w']
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys / values come from a spatially reduced sequence."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """Tokens ``[B, N, C]`` of an ``h × w`` map → attended tokens ``[B, N, C]``."""
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)  # [B, heads, N, d]
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, h, w)  # [B, C, h, w]
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))  # [B, N/sr², C]
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [B, heads, N, d]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DepthwiseConv(nn.Module):
    """Depthwise 3×3 conv on tokens (Mix-FFN's position-leaking conv); the conv is named
    ``dwconv`` to match the checkpoint layout (``mlp.dwconv.dwconv.weight``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """``[B, N, C] -> [B, N, C]``."""
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, h, w)  # [B, C, h, w]
        return self.dwconv(grid).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear(C → hidden) → depthwise 3×3 → GELU → Linear(hidden → C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """``[B, N, C] -> [B, N, C]``."""
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``p``, rescale by
    ``1/(1-p)`` so the expectation is unchanged; identity in eval mode or for ``p = 0``."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)  # [B, 1, 1]
    return x * keep / (1.0 - p)


class MiTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + ffn(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = drop_path

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """``[B, N, C] -> [B, N, C]``."""
        x = x + drop_path(self.attn(self.norm1(x), h, w), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), h, w), self.drop_path, self.training)


class MixTransformer(nn.Module):
    """MiT encoder: ``[B, 3, H, W]`` → 4 maps ``[B, C_i, ⌈H/s_i⌉, ⌈W/s_i⌉]``, ``s = 4, 8, 16, 32``.

    Submodules ``patch_embed{i}``, ``block{i}`` (a ModuleList), ``norm{i}`` for ``i = 1..4``,
    named after the public checkpoints' layout. ``embed_dims`` gives the channels (the
    decoder's inputs); ``strides`` the stride of each map.
    """

    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(self, size: MiTSize, *, in_channels: int = 3, drop_path_rate: float = 0.1):
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(
                f"drop_path_rate must be in [0, 1), but got drop_path_rate={drop_path_rate!r}"
            )
        self.embed_dims = size.embed_dims
        total = sum(size.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        previous, start = in_channels, 0
        for i, (dim, depth, heads, sr) in enumerate(
            zip(size.embed_dims, size.depths, size.num_heads, size.sr_ratios, strict=True), start=1
        ):
            kernel, stride = _PATCH[i - 1]
            setattr(
                self,
                f"patch_embed{i}",
                OverlapPatchEmbed(previous, dim, kernel_size=kernel, stride=stride),
            )
            blocks = [
                MiTBlock(dim, heads, sr, size.mlp_ratio, rates[start + j]) for j in range(depth)
            ]
            setattr(self, f"block{i}", nn.ModuleList(blocks))
            setattr(self, f"norm{i}", nn.LayerNorm(dim))
            previous, start = dim, start + depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear: truncated normal (std 0.02), bias 0; LayerNorm 1 / 0; conv: N(0, 2/fan_out)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, mean=0.0, std=(2.0 / fan_out) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` → ``[c1 [B, C_1, ⌈H/4⌉, ⌈W/4⌉], …, c4 [B, C_4, ⌈H/32⌉, ⌈W/32⌉]]``."""
        x, maps = images, []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)  # [B, h·w, C_i]
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # [B, C_i, h, w]
            maps.append(x)
        return maps


class SegFormer(FeatureExtractor):
    """MiT encoder + SegFormer all-MLP decoder: ``[B, 3, H, W] -> [B, decoder_dim, ⌈H/4⌉, ⌈W/4⌉]``.

    ``size`` is a key of :data:`MIT_SIZES` or a :class:`MiTSize` (small custom sizes for tests);
    ``dropout`` is the decoder's dropout before the classifier (0.1 in the paper).
    """

    output_stride = 4

    def __init__(
        self, size: str | MiTSize = "b2", *, drop_path_rate: float = 0.1, dropout: float = 0.1
    ):
        super().__init__()
        if isinstance(size, str):
            if size not in MIT_SIZES:
                raise ValueError(f"unknown size={size!r}; known sizes: {', '.join(MIT_SIZES)}")
            size = MIT_SIZES[size]
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout!r}")
        dim = size.decoder_dim
        self.encoder = MixTransformer(size, drop_path_rate=drop_path_rate)
        self.linear_c = nn.ModuleList([nn.Conv2d(c, dim, 1) for c in size.embed_dims])
        self.fuse = nn.Sequential(
            nn.Conv2d(4 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = dim
        for m in self.linear_c:
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.fuse[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, decoder_dim, ⌈H/4⌉, ⌈W/4⌉]``."""
        maps = self.encoder(images)  # 4 × [B, C_i, H/s_i, W/s_i]
        size = maps[0].shape[-2:]
        unified = [_resize(proj(m), size) for proj, m in zip(self.linear_c, maps, strict=True)]
        return self.dropout(self.fuse(torch.cat(unified[::-1], dim=1)))  # [B, D, H/4, W/4]


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to ``size`` (a no-op when already that size)."""
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def mit_b0() -> SegFormer:
    """SegFormer-B0: MiT-B0 (dims 32/64/160/256, depths 2/2/2/2) + 256-wide decoder."""
    return SegFormer("b0")


def mit_b1() -> SegFormer:
    """SegFormer-B1: MiT-B1 (dims 64/128/320/512, depths 2/2/2/2) + 256-wide decoder."""
    return SegFormer("b1")


def mit_b2() -> SegFormer:
    """SegFormer-B2: MiT-B2 (dims 64/128/320/512, depths 3/4/6/3) + 768-wide decoder."""
    return SegFormer("b2")


def mit_b3() -> SegFormer:
    """SegFormer-B3: MiT-B3 (dims 64/128/320/512, depths 3/4/18/3) + 768-wide decoder."""
    return SegFormer("b3")


def mit_b4() -> SegFormer:
    """SegFormer-B4: MiT-B4 (dims 64/128/320/512, depths 3/8/27/3) + 768-wide decoder; the
    SegFormer of HALO's Cityscapes → ACDC runs."""
    return SegFormer("b4")


def mit_b5() -> SegFormer:
    """SegFormer-B5: MiT-B5 (dims 64/128/320/512, depths 3/6/40/3) + 768-wide decoder."""
    return SegFormer("b5")
