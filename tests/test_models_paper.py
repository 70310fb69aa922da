"""Paper-scale backbones (ResNet-101 DeepLab-v2 / v3+, SegFormer MiT) and weight loading.

Full-size models are only run forward (eval, no grad) at a tiny input; backward passes use
small variants built from the same classes (``width`` / ``layers`` / custom MiT sizes).
"""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from halo_ray.models import (
    BACKBONES,
    CosineHead,
    DeepLabV2,
    DeepLabV3Plus,
    EuclideanHead,
    HyperbolicHead,
    MiTSize,
    ResNet,
    SegFormer,
    Segmenter,
    SegmenterSpec,
    SeparableDeepLabV3Plus,
    WeightsError,
    build_segmenter,
    find_encoder,
    freeze_batchnorm,
    load_backbone_weights,
    load_pretrained,
    resnet101,
)
from halo_ray.models.deeplab import MulticlassDeepLabV3Plus
from halo_ray.models.resnet import resnet50_deepstem

PAPER_BACKBONES = ("deeplabv2_r101", "deeplabv3p_r101", "deeplabv3p_r101_sep", "mit_b2", "mit_b0")
STRIDES = {"deeplabv2_r101": 8, "deeplabv3p_r101": 4, "deeplabv3p_r101_sep": 4, "mit_b2": 4, "mit_b0": 4}
GEOMS = ("hyperbolic", "euclidean")
H, W = 37, 45  # not divisible by 4 or 8: checks the ⌈H/s⌉ rule
TINY_MIT = MiTSize((8, 16, 24, 32), (1, 1, 1, 1), (1, 2, 3, 4), (8, 4, 2, 1), decoder_dim=16)
RESNET101_WITH_FC = 44_549_160  # the published ResNet-101 (ImageNet, 1000 classes) size
FC_1000 = 2048 * 1000 + 1000


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run this file on one intra-op thread (restored afterwards): with these small tensors a
    second thread mostly spins, and on a shared 2-core machine it costs ~3× the CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small_backbone(name: str) -> nn.Module:
    """Same classes as the registered paper models, a few thousand times cheaper."""
    if name == "deeplabv2_r101":
        return DeepLabV2(width=8, layers=(1, 1, 1, 1), aspp_channels=16)
    if name == "deeplabv3p_r101":
        return DeepLabV3Plus(
            width=8, layers=(1, 1, 2, 1), aspp_channels=16, low_proj_channels=8, out_channels=16
        )
    if name == "deeplabv3p_r101_sep":
        return SeparableDeepLabV3Plus(width=8, layers=(1, 1, 2, 1), channels=16, low_proj_channels=8)
    return SegFormer(TINY_MIT, drop_path_rate=0.0)


def _small_segmenter(name: str, geometry: str, seed: int = 0, num_classes: int = 5) -> Segmenter:
    torch.manual_seed(seed)
    backbone = _small_backbone(name)
    if geometry == "hyperbolic":
        head: nn.Module = HyperbolicHead(backbone.out_channels, num_classes, embed_dim=8)
    else:
        head = EuclideanHead(backbone.out_channels, num_classes, embed_dim=8)
    spec = SegmenterSpec(backbone=name, geometry=geometry, num_classes=num_classes, embed_dim=8)
    return Segmenter(backbone, head, spec)


# ---------------------------------------------------------------- registry and paper sizes


@pytest.fixture(scope="module")
def paper_models() -> dict[str, tuple[Segmenter, torch.Tensor]]:
    """Each registered paper backbone (hyperbolic head) and its backbone features for one
    ``[1, 3, H, W]`` image, built and run once for this file (the ResNet-101 ones take ~1 s
    each to build and to run)."""
    models = {}
    images = torch.randn(1, 3, H, W)
    for name in PAPER_BACKBONES:
        torch.manual_seed(0)
        model = build_segmenter(backbone=name, geometry="hyperbolic").eval()
        with torch.no_grad():
            models[name] = (model, model.backbone(images))
    return models


def test_paper_backbones_are_registered():
    assert set(PAPER_BACKBONES) <= set(BACKBONES)


@pytest.mark.parametrize("geometry", GEOMS)
@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_paper_backbone_output_shapes_with_both_heads(paper_models, name, geometry):
    model, features = paper_models[name]
    s = STRIDES[name]
    assert model.output_stride == s == model.backbone.output_stride
    h, w = math.ceil(H / s), math.ceil(W / s)
    assert features.shape == (1, model.backbone.out_channels, h, w)
    torch.manual_seed(0)
    if geometry == "hyperbolic":
        head = model.head
    else:
        head = EuclideanHead(model.backbone.out_channels, 19, embed_dim=64).eval()
    with torch.no_grad():
        out = head(features)
    assert out.logits.shape == (1, 19, h, w)
    assert out.embeddings.shape == (1, 64, h, w)
    assert torch.isfinite(out.logits).all()


def test_resnet101_parameter_count_is_the_published_one_without_fc(paper_models):
    expected = RESNET101_WITH_FC - FC_1000
    assert expected == 42_500_160
    for name in ("deeplabv2_r101", "deeplabv3p_r101", "deeplabv3p_r101_sep"):
        assert _n_params(paper_models[name][0].backbone.encoder) == expected


def test_deeplab_decoder_parameter_counts_follow_the_architecture(paper_models):
    v2 = paper_models["deeplabv2_r101"][0].backbone
    assert _n_params(v2.aspp) == 4 * (9 * 2048 * 256 + 256)  # 4 dilated 3×3 convs with bias
    v3p = paper_models["deeplabv3p_r101"][0].backbone
    bn = 2 * 256
    aspp = (
        (2048 * 256 + bn)  # 1×1 branch
        + 3 * (9 * 2048 * 256 + bn)  # rates 12, 24, 36
        + 2048 * 256  # image pooling (no BatchNorm)
        + (5 * 256 * 256 + bn)  # 1×1 fuse
    )
    decoder = (256 * 48 + 2 * 48) + (9 * 304 * 256 + bn) + (9 * 256 * 256 + bn)
    assert _n_params(v3p.aspp) == aspp
    assert _n_params(v3p) - _n_params(v3p.encoder) == aspp + decoder


def _separable(c_in: int, c_out: int) -> int:
    """Parameters of a depthwise-separable 3×3 block: depthwise 3×3 + BN, pointwise 1×1 + BN."""
    return (9 * c_in + 2 * c_in) + (c_in * c_out + 2 * c_out)


def test_halo_separable_deeplab_matches_the_released_head(paper_models):
    """HALO's released v3+ (``classifier.py: DepthwiseSeparableASPP``): 512 channels, a 1×1
    branch, separable branches at 6/12/18, image pooling (ours without its BatchNorm), a 3×3
    fuse, the 48-channel shortcut and two separable decoder blocks (560 → 512 → 512)."""
    sep = paper_models["deeplabv3p_r101_sep"][0].backbone
    bn = 2 * 512
    aspp = (2048 * 512 + bn) + 3 * _separable(2048, 512) + 2048 * 512 + (9 * 5 * 512 * 512 + bn)
    decoder = (256 * 48 + 2 * 48) + _separable(560, 512) + _separable(512, 512)
    assert _n_params(sep.aspp) == aspp
    assert _n_params(sep) - _n_params(sep.encoder) == aspp + decoder
    depthwise = [m for m in sep.aspp.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [(m.groups, m.dilation[0], m.padding[0]) for m in depthwise] == [(2048, r, r) for r in (6, 12, 18)]
    assert sep.out_channels == 512


@pytest.mark.parametrize(
    ("name", "encoder_m", "total_150_m"), [("mit_b2", 24.2, 27.5), ("mit_b0", 3.3, 3.8)]
)
def test_segformer_sizes_match_the_paper(paper_models, name, encoder_m, total_150_m):
    """SegFormer paper (Table 1, ADE20K: 150 classes): MiT-B2 encoder 24.2 M, SegFormer-B2 27.5 M,
    SegFormer-B0 3.8 M. (MiT-B0's 3.3 M is this implementation's count, rounded.)"""
    backbone = paper_models[name][0].backbone
    dims, d = backbone.encoder.embed_dims, backbone.out_channels
    decoder = sum(dims) * d + 4 * d + 4 * d * d + 2 * d  # 4 linear maps, 1×1 fuse (no bias), BN
    assert _n_params(backbone) - _n_params(backbone.encoder) == decoder
    assert round(_n_params(backbone.encoder) / 1e6, 1) == encoder_m
    classifier_150 = d * 150 + 150
    assert round((_n_params(backbone) + classifier_150) / 1e6, 1) == total_150_m


def test_resnet_parameter_names_follow_the_imagenet_checkpoint_layout(paper_models):
    state = paper_models["deeplabv2_r101"][0].backbone.encoder.state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_var": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.22.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.bn3.bias": (2048,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    # 104 convs (stem, 33 blocks × 3, 4 projections) and 104 BatchNorms × 4 tensors
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 104 + 104 * 4
    assert "layer3.23.conv1.weight" not in state and "layer4.3.conv1.weight" not in state


def test_mit_parameter_names_follow_the_checkpoint_layout(paper_models):
    state = paper_models["mit_b2"][0].backbone.encoder.state_dict()
    expected_shapes = {
        "patch_embed1.proj.weight": (64, 3, 7, 7),
        "patch_embed2.proj.weight": (128, 64, 3, 3),
        "block1.0.attn.q.weight": (64, 64),
        "block1.0.attn.kv.weight": (128, 64),
        "block1.0.attn.sr.weight": (64, 64, 8, 8),
        "block3.5.attn.sr.weight": (320, 320, 2, 2),
        "block2.3.mlp.dwconv.dwconv.weight": (512, 1, 3, 3),
        "block4.2.mlp.fc2.weight": (512, 2048),
        "norm4.weight": (512,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "block4.0.attn.sr.weight" not in state  # sr ratio 1: no reduction
    assert "block3.6.norm1.weight" not in state  # depths 3/4/6/3


# ---------------------------------------------------------------- architecture details


def test_resnet_dilation_plan_for_output_stride_8_and_16():
    net8 = ResNet(layers=(1, 1, 2, 2), width=4, output_stride=8)
    conv2 = {name: m for name, m in net8.named_modules() if name.endswith("conv2")}
    assert conv2["layer2.0.conv2"].stride == (2, 2)
    assert (conv2["layer3.0.conv2"].stride, conv2["layer3.0.conv2"].dilation) == ((1, 1), (1, 1))
    assert conv2["layer3.1.conv2"].dilation == (2, 2)
    assert conv2["layer4.0.conv2"].dilation == (2, 2)
    assert conv2["layer4.1.conv2"].dilation == (4, 4)
    assert conv2["layer4.1.conv2"].padding == (4, 4)
    net16 = ResNet(layers=(1, 1, 2, 2), width=4, output_stride=16)
    conv2 = {name: m for name, m in net16.named_modules() if name.endswith("conv2")}
    assert conv2["layer3.0.conv2"].stride == (2, 2)
    assert conv2["layer4.0.conv2"].dilation == (1, 1) and conv2["layer4.1.conv2"].dilation == (2, 2)


@pytest.mark.parametrize("output_stride", (8, 16, 32))
def test_resnet_features_have_ceil_sizes(output_stride):
    net = ResNet(layers=(1, 1, 1, 1), width=4, output_stride=output_stride).eval()
    with torch.no_grad():
        low, out = net(torch.randn(1, 3, 65, 70))
    assert low.shape == (1, 16, math.ceil(65 / 4), math.ceil(70 / 4))
    s = output_stride
    assert out.shape == (1, 128, math.ceil(65 / s), math.ceil(70 / s))


def test_resnet101_factory_builds_the_paper_net():
    net = resnet101(output_stride=16)
    assert net.output_stride == 16 and net.out_channels == 2048 and net.low_channels == 256
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ResNet(output_stride=4), r"output_stride must be one of \(8, 16, 32\)"),
        (lambda: ResNet(width=0), r"width must be an integer >= 1, but got width=0"),
        (lambda: ResNet(layers=(3, 4, 23)), r"layers must be 4 integers >= 1"),
        (lambda: DeepLabV2(width=4, layers=(1, 1, 1, 1), rates=()), r"ASPP rates"),
        (lambda: DeepLabV3Plus(encoder_output_stride=32), r"encoder_output_stride must be one of"),
        (lambda: SegFormer("b9"), r"unknown size='b9'; known sizes: b0, b1, b2, b3, b4, b5"),
        (lambda: SegFormer(TINY_MIT, dropout=1.0), r"dropout must be in \[0, 1\)"),
    ],
)
def test_invalid_arguments_raise_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_aspp_v2_is_the_sum_of_its_dilated_branches():
    aspp = DeepLabV2(width=4, layers=(1, 1, 1, 1), aspp_channels=6).aspp
    x = torch.randn(1, 128, 7, 9)
    expected = sum(branch(x) for branch in aspp.branches)
    torch.testing.assert_close(aspp(x), expected)
    assert [b.dilation[0] for b in aspp.branches] == [6, 12, 18, 24]


# ---------------------------------------------------------------- backward (small variants)


@pytest.mark.parametrize("geometry", GEOMS)
@pytest.mark.parametrize("name", ("deeplabv2_r101", "deeplabv3p_r101", "deeplabv3p_r101_sep", "mit_b0"))
def test_small_variants_train_every_parameter(name, geometry):
    model = _small_segmenter(name, geometry).train()
    images = torch.randn(2, 3, 49, 49)
    out = model(images)
    s = model.output_stride
    assert out.logits.shape == (2, 5, math.ceil(49 / s), math.ceil(49 / s))
    labels = torch.randint(0, 5, out.logits.shape[:1] + out.logits.shape[2:])
    torch.nn.functional.cross_entropy(out.logits, labels).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("geometry", GEOMS)
def test_registered_mit_b0_backward_reaches_the_head_and_the_first_conv(geometry):
    """The full path build_segmenter → Segmenter.forward → backward, for both geometries."""
    torch.manual_seed(0)
    model = build_segmenter(backbone="mit_b0", geometry=geometry, num_classes=5).train()
    logits = model(torch.randn(1, 3, 64, 96)).logits
    assert logits.shape == (1, 5, 16, 24)
    logits.logsumexp(dim=1).mean().backward()
    first = model.backbone.encoder.patch_embed1.proj.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_hyperbolic_part_stays_float32_under_autocast_on_a_resnet_backbone():
    model = _small_segmenter("deeplabv3p_r101", "hyperbolic").eval()
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 48, 48))
    assert out.embeddings.dtype == torch.float32 and torch.isfinite(out.logits).all()


# ---------------------------------------------------------------- weights


def test_saved_state_dict_loads_back_with_identical_outputs(tmp_path):
    source = _small_segmenter("deeplabv3p_r101", "hyperbolic", seed=0).eval()
    target = _small_segmenter("deeplabv3p_r101", "hyperbolic", seed=1).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert not torch.equal(source(x).logits, target(x).logits)
    path = tmp_path / "seg.pt"
    torch.save(source.state_dict(), path)
    report = load_pretrained(target, path)
    assert report.loaded == tuple(source.state_dict()) and report.missing == ()
    with torch.no_grad():
        assert torch.equal(source(x).logits, target(x).logits)
        assert torch.equal(source(x).embeddings, target(x).embeddings)


def test_nested_checkpoint_with_module_prefix_loads(tmp_path):
    source = _small_segmenter("mit_b0", "euclidean", seed=0)
    target = _small_segmenter("mit_b0", "euclidean", seed=1)
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, tmp_path / "ckpt.pth")
    load_pretrained(target, tmp_path / "ckpt.pth")
    torch.testing.assert_close(target.state_dict(), source.state_dict(), rtol=0, atol=0)


def _saved(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "w.pt") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_key_is_named_and_nothing_is_loaded(tmp_path):
    source = _small_segmenter("deeplabv2_r101", "euclidean", seed=0)
    target = _small_segmenter("deeplabv2_r101", "euclidean", seed=1)
    before = copy.deepcopy(target.state_dict())
    state = source.state_dict()
    del state["backbone.encoder.layer2.0.conv2.weight"]
    path = _saved(tmp_path, state)
    with pytest.raises(WeightsError) as info:
        load_pretrained(target, path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys" in message and "backbone.encoder.layer2.0.conv2.weight" in message
    assert "(1 key)" in message
    torch.testing.assert_close(target.state_dict(), before, rtol=0, atol=0)  # untouched


def test_unexpected_key_is_named(tmp_path):
    model = _small_segmenter("deeplabv2_r101", "euclidean")
    state = model.state_dict()
    state["backbone.extra.weight"] = torch.zeros(3)
    with pytest.raises(
        WeightsError, match=r"unexpected keys .*'backbone\.extra\.weight'.*\(1 key\)"
    ):
        load_pretrained(model, _saved(tmp_path, state))


def test_shape_mismatch_is_named_with_both_shapes(tmp_path):
    model = _small_segmenter("deeplabv2_r101", "euclidean")
    state = model.state_dict()
    state["head.classifier.weight"] = torch.zeros(7, 8, 1, 1)  # 7 classes instead of 5
    with pytest.raises(
        WeightsError,
        match=r"1 shape mismatch: head\.classifier\.weight: module expects \(5, 8, 1, 1\), "
        r"file has \(7, 8, 1, 1\)",
    ):
        load_pretrained(model, _saved(tmp_path, state), strict=False)


def _leave_marker(path: str) -> dict:
    Path(path).write_text("unpickled!")
    return {}


class _Sneaky:
    """Unpickling this would run ``_leave_marker``: weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_arbitrary_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump(_Sneaky(marker), f, protocol=2)
    model = _small_segmenter("mit_b0", "euclidean")
    with pytest.raises(WeightsError, match=r"evil\.pkl' is not a plain tensor state dict.*refused"):
        load_pretrained(model, path)
    assert not marker.exists()


def test_torch_saved_custom_object_is_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Sneaky(tmp_path / "m")}, path)
    with pytest.raises(WeightsError, match=r"not a plain tensor state dict"):
        load_pretrained(_small_segmenter("mit_b0", "euclidean"), path)
    assert not (tmp_path / "m").exists()


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "r101.pth"
    with pytest.raises(WeightsError, match=r"not found: '.*nope/r101\.pth'"):
        load_pretrained(_small_segmenter("mit_b0", "euclidean"), missing)


def test_dict_without_tensors_is_rejected(tmp_path):
    path = _saved(tmp_path, {"epoch": torch.tensor(3), "optimizer": {"lr": 0.1}})
    with pytest.raises(WeightsError, match=r"non-tensor entries \['optimizer'\]"):
        load_pretrained(_small_segmenter("mit_b0", "euclidean"), path)


def test_strict_false_tolerates_missing_keys_and_reports_them(tmp_path):
    source = _small_segmenter("deeplabv3p_r101", "euclidean", seed=0)
    target = _small_segmenter("deeplabv3p_r101", "euclidean", seed=1)
    encoder_only = source.backbone.encoder.state_dict()
    path = _saved(tmp_path, encoder_only)
    prefix_map = {"": "backbone.encoder."}
    with pytest.raises(WeightsError, match=r"missing keys .*'backbone\.aspp\."):
        load_pretrained(target, path, prefix_map=prefix_map)
    report = load_pretrained(target, path, prefix_map=prefix_map, strict=False)
    outside = [k for k in target.state_dict() if not k.startswith("backbone.encoder.")]
    assert report.missing == tuple(k for k in outside if not k.endswith("num_batches_tracked"))
    assert len(report.loaded) == len(encoder_only)
    torch.testing.assert_close(target.backbone.encoder.state_dict(), encoder_only, rtol=0, atol=0)


def _imagenet_like(encoder: nn.Module, classifier: str, features: int) -> dict:
    """An ImageNet-style checkpoint: encoder tensors (no BN counters) plus a 1000-class head."""
    state = {k: v for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    state[f"{classifier}.weight"] = torch.zeros(1000, features)
    state[f"{classifier}.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize(
    ("name", "classifier"),
    [("deeplabv3p_r101", "fc"), ("deeplabv2_r101", "fc"), ("mit_b0", "head")],
)
def test_load_backbone_weights_fills_the_encoder_and_names_the_rest(tmp_path, name, classifier):
    torch.manual_seed(5)
    imagenet = _small_backbone(name).encoder
    features = getattr(imagenet, "out_channels", None) or imagenet.embed_dims[-1]
    path = _saved(tmp_path, _imagenet_like(imagenet, classifier, features))
    model = _small_segmenter(name, "hyperbolic", seed=1)
    head_before = copy.deepcopy(model.head.state_dict())
    report = load_backbone_weights(model, path)
    assert report.ignored == (f"{classifier}.weight", f"{classifier}.bias")
    for key, value in imagenet.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(model.backbone.encoder.state_dict()[key], value), key
    assert report.missing == tuple(
        k for k in model.state_dict() if not k.startswith("backbone.encoder.")
    )
    assert any(k.startswith("head.") for k in report.missing)
    assert all(k.startswith("backbone.encoder.") for k in report.loaded)
    torch.testing.assert_close(model.head.state_dict(), head_before, rtol=0, atol=0)
    assert "ignored file keys" in report.summary()


def test_load_backbone_weights_needs_the_right_prefix(tmp_path):
    imagenet = _small_backbone("deeplabv2_r101").encoder
    state = {f"backbone.{k}": v for k, v in imagenet.state_dict().items()}
    path = _saved(tmp_path, state)
    model = _small_segmenter("deeplabv2_r101", "euclidean")
    with pytest.raises(
        WeightsError, match=r"unexpected keys .*'backbone\.conv1\.weight'.*prefix_map"
    ):
        load_backbone_weights(model, path)
    report = load_backbone_weights(model, path, prefix_map={"backbone.": ""})
    assert len(report.loaded) == len(imagenet.state_dict())


def test_load_backbone_weights_refuses_a_partly_covered_encoder(tmp_path):
    state = _small_backbone("mit_b0").encoder.state_dict()
    del state["block3.0.attn.kv.bias"]
    model = _small_segmenter("mit_b0", "euclidean")
    with pytest.raises(
        WeightsError, match=r"missing keys .*'block3\.0\.attn\.kv\.bias'.*\(1 key\)"
    ):
        load_backbone_weights(model, _saved(tmp_path, state))


def test_load_backbone_weights_rejects_a_backbone_without_encoder(tmp_path):
    model = build_segmenter(backbone="tiny")
    with pytest.raises(WeightsError, match=r"TinyDeepLab has no pretrainable encoder"):
        load_backbone_weights(model, tmp_path / "x.pth")


def test_find_encoder_prefixes():
    seg = _small_segmenter("mit_b0", "euclidean")
    assert find_encoder(seg)[0] == "backbone.encoder."
    assert find_encoder(seg.backbone) == ("encoder.", seg.backbone.encoder)
    assert find_encoder(seg.backbone.encoder) == ("", seg.backbone.encoder)


# ---------------------------------------------------------------- frozen BatchNorm


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k
    }


def test_unfrozen_batchnorm_statistics_do_change():  # control for the test below
    model = _small_segmenter("deeplabv3p_r101", "hyperbolic").train()
    before = _bn_state(model)
    model(torch.randn(2, 3, 40, 40))
    after = _bn_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_freeze_batchnorm_survives_train_and_keeps_statistics():
    model = _small_segmenter("deeplabv3p_r101", "hyperbolic")
    hfr_bn = model.head.hfr.mlp[1]
    frozen = [bn for bn in _bn_layers(model) if bn is not hfr_bn]
    # ResNet (1,1,2,1): stem + 5 blocks × 3 + 4 projections; ASPP: 1×1 + 3 rates + fuse;
    # low-level projection; decoder × 2. HFR's BatchNorm in the hyperbolic head keeps training,
    # as HALO's (its wn_mlp BatchNorm1d is an ordinary one under FREEZE_BN)
    assert freeze_batchnorm(model) == len(frozen) == len(_bn_layers(model)) - 1 == (1 + 15 + 4) + 5 + 1 + 2
    model.train()
    assert model.training and model.head.training and hfr_bn.training and hfr_bn.weight.requires_grad
    assert not any(bn.training for bn in frozen)
    before = _bn_state(model)
    x = torch.randn(2, 3, 40, 40)
    out = model(x)
    out.logits.logsumexp(dim=1).mean().backward()
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head.hfr."))
    assert not torch.equal(before["head.hfr.mlp.1.running_mean"], after["head.hfr.mlp.1.running_mean"])
    for bn in frozen:
        assert not bn.weight.requires_grad and bn.weight.grad is None and bn.bias.grad is None
    assert model.backbone.encoder.conv1.weight.grad.abs().sum() > 0  # the rest still trains
    with torch.no_grad():  # frozen BN normalises with running statistics, as in eval mode
        hfr_bn.eval()
        torch.testing.assert_close(model(x).logits, model.eval()(x).logits)


def test_frozen_batchnorm_stays_frozen_after_deepcopy_and_pickle_and_keeps_state_dict_keys():
    model = _small_segmenter("deeplabv2_r101", "euclidean")
    keys = list(model.state_dict())
    freeze_batchnorm(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert clone.training
        assert not any(bn.training for bn in _bn_layers(clone))
        assert not any(bn.weight.requires_grad for bn in _bn_layers(clone))
        assert list(clone.state_dict()) == keys


# ---------------------------------------------------------------- the multi-class query's released model

R50_DEEPSTEM = 23_631_808  # torchvision ResNet-50 without fc (23,508,032) + the deep stem's 123,776


@pytest.fixture(scope="module")
def released_multiclass() -> Segmenter:
    """The registered ``deeplabv3p_r50_deepstem`` with the released cosine classifier (no reduction)."""
    torch.manual_seed(0)
    return build_segmenter(backbone="deeplabv3p_r50_deepstem", geometry="cosine", embed_dim=None).eval()


def _small_multiclass(**kwargs) -> MulticlassDeepLabV3Plus:
    return MulticlassDeepLabV3Plus(width=8, layers=(1, 1, 1, 1), channels=16, low_proj_channels=8, **kwargs)


def test_deep_stem_resnet50_keeps_the_released_checkpoint_names_and_shapes():
    net = resnet50_deepstem()
    state = net.state_dict()
    expected_shapes = {
        "conv1.0.weight": (64, 3, 3, 3),
        "conv1.1.running_mean": (64,),
        "conv1.3.weight": (64, 64, 3, 3),
        "conv1.4.weight": (64,),
        "conv1.6.weight": (128, 64, 3, 3),
        "bn1.weight": (128,),
        "bn1.running_var": (128,),
        "layer1.0.conv1.weight": (64, 128, 1, 1),
        "layer1.0.downsample.0.weight": (256, 128, 1, 1),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.bn3.bias": (2048,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    stem = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("conv1.")})
    assert stem == ["conv1.0", "conv1.1", "conv1.3", "conv1.4", "conv1.6"]  # ReLUs hold nothing
    assert "conv1.weight" not in state and "layer3.6.conv1.weight" not in state
    # 3 stem convs + 16 blocks × 3 + 4 projections; 2 stem BatchNorms + bn1 + 52 more, × 4 tensors
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 55 + 55 * 4
    assert _n_params(net) == R50_DEEPSTEM
    assert (net.output_stride, net.out_channels, net.low_channels, net.deep_stem) == (16, 2048, 256, True)
    conv2 = {name: m for name, m in net.named_modules() if name.endswith("conv2")}
    assert conv2["layer3.0.conv2"].stride == (2, 2)  # stride 16: only layer4 dilates
    assert (conv2["layer4.0.conv2"].stride, conv2["layer4.0.conv2"].dilation) == ((1, 1), (1, 1))
    assert conv2["layer4.2.conv2"].dilation == (2, 2)
    with pytest.raises(ValueError, match=r"deep_stem must be True or False, but got deep_stem=1"):
        ResNet(deep_stem=1)


def test_small_deep_stem_resnet_features_have_ceil_sizes():
    net = ResNet(layers=(1, 1, 1, 1), width=4, output_stride=16, deep_stem=True).eval()
    assert net.conv1[6].out_channels == net.bn1.num_features == 8
    with torch.no_grad():
        low, out = net(torch.randn(1, 3, 65, 97))
    assert low.shape == (1, 16, 17, 25) and out.shape == (1, 128, 5, 7)


def test_released_multiclass_model_shapes_strides_and_sizes(released_multiclass):
    model = released_multiclass
    backbone = model.backbone
    assert isinstance(backbone, MulticlassDeepLabV3Plus) and model.output_stride == 4
    assert (backbone.out_channels, backbone.encoder.output_stride) == (256, 16)
    images = torch.randn(1, 3, 33, 49)
    with torch.no_grad():
        low, out = backbone.encoder(images)
        result = model(images)
    assert low.shape == (1, 256, 9, 13) and out.shape == (1, 2048, 3, 4)
    assert result.logits.shape == (1, 19, 9, 13) and result.embeddings.shape == (1, 256, 9, 13)
    assert _n_params(backbone.encoder) == R50_DEEPSTEM
    bn = 2 * 256
    aspp = (2048 * 256 + bn) + 3 * (9 * 2048 + 2048 * 256 + bn) + (2048 * 256 + bn) + (5 * 256 * 256 + bn)
    decoder = (256 * 48 + 2 * 48) + (9 * 304 + 304 * 256 + bn) + (9 * 256 + 256 * 256 + bn)
    assert _n_params(backbone.aspp) == aspp == 3_007_488
    assert _n_params(backbone) - R50_DEEPSTEM == aspp + decoder == 3_169_296
    assert _n_params(model.head) == 19 * 256  # the released classifier: weight only, no reduction


@pytest.mark.parametrize("geometry", ("cosine", "euclidean"))
def test_small_multiclass_deeplab_trains_every_parameter(geometry):
    torch.manual_seed(0)
    backbone = _small_multiclass()
    head = (
        CosineHead(16, 5, embed_dim=None) if geometry == "cosine" else EuclideanHead(16, 5, embed_dim=8)
    )
    spec = SegmenterSpec(
        backbone="deeplabv3p_r50_deepstem", geometry=geometry, num_classes=5,
        embed_dim=None if geometry == "cosine" else 8,
    )
    model = Segmenter(backbone, head, spec).train()
    out = model(torch.randn(2, 3, 65, 97))
    assert out.logits.shape == (2, 5, 17, 25)
    labels = torch.randint(0, 5, (2, 17, 25))
    torch.nn.functional.cross_entropy(out.logits, labels).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


def test_released_separable_block_has_nothing_between_depthwise_and_pointwise():
    backbone = _small_multiclass()
    blocks = [*backbone.aspp.branches[1:], *backbone.decoder]
    for block, (c_in, c_out, d) in zip(
        blocks, [(256, 16, 6), (256, 16, 12), (256, 16, 18), (24, 16, 1), (16, 16, 1)], strict=True
    ):
        assert [type(m) for m in block] == [nn.Conv2d, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        depthwise, pointwise, norm, _ = block
        assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (c_in, c_in, c_in)
        assert (depthwise.kernel_size, depthwise.dilation, depthwise.padding) == ((3, 3), (d, d), (d, d))
        assert (pointwise.in_channels, pointwise.out_channels, pointwise.kernel_size) == (c_in, c_out, (1, 1))
        assert depthwise.bias is None and pointwise.bias is None and norm.num_features == c_out
    pool, fuse = backbone.aspp.pool, backbone.aspp.fuse
    assert [type(m) for m in pool] == [nn.AdaptiveAvgPool2d, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in fuse] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout]
    assert fuse[0].in_channels == 5 * 16 and fuse[0].kernel_size == (1, 1) and fuse[3].p == 0.1
    # HALO's layout and the plain ASPP are unchanged: BN + ReLU after the depthwise conv, no
    # pooling BatchNorm, no dropout
    halo = _small_backbone("deeplabv3p_r101_sep").aspp
    assert [type(m) for m in halo.branches[1]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
    assert [type(m) for m in halo.pool] == [nn.AdaptiveAvgPool2d, nn.Conv2d, nn.ReLU]
    assert [type(m) for m in halo.fuse] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_released_decoder_concatenates_the_low_level_projection_first():
    backbone = _small_multiclass().eval()
    seen = {}
    backbone.low_proj.register_forward_hook(lambda m, i, o: seen.update(low=o.clone()))
    backbone.aspp.register_forward_hook(lambda m, i, o: seen.update(aspp=o.clone()))
    backbone.decoder.register_forward_pre_hook(lambda m, i: seen.update(cat=i[0].clone()))
    with torch.no_grad():
        backbone(torch.randn(1, 3, 65, 97))
    assert seen["cat"].shape == (1, 8 + 16, 17, 25)
    assert torch.equal(seen["cat"][:, :8], seen["low"])
    upsampled = nn.functional.interpolate(seen["aspp"], size=(17, 25), mode="bilinear", align_corners=False)
    assert torch.equal(seen["cat"][:, 8:], upsampled)


def test_released_deepstem_checkpoint_loads_into_the_registered_backbone(tmp_path):
    """An ImageNet file in the released names (``conv1.0.weight`` …, an ``fc``), nested under
    ``'model'`` as ``resnet50_deepstem.pth`` is read by the released code."""
    torch.manual_seed(7)
    imagenet = resnet50_deepstem()
    state = _imagenet_like(imagenet, "fc", 2048)
    assert {"conv1.0.weight", "conv1.4.running_var", "conv1.6.weight", "bn1.weight"} <= set(state)
    path = _saved(tmp_path, {"model": state}, "resnet50_deepstem.pth")
    torch.manual_seed(0)
    model = build_segmenter(backbone="deeplabv3p_r50_deepstem", geometry="cosine", embed_dim=None)
    report = load_backbone_weights(model, path)
    encoder_keys = [k for k in model.backbone.encoder.state_dict() if not k.endswith("num_batches_tracked")]
    assert report.loaded == tuple(f"backbone.encoder.{k}" for k in encoder_keys)
    assert len(report.loaded) == len(state) - 2 and report.ignored == ("fc.weight", "fc.bias")
    assert report.missing == tuple(k for k in model.state_dict() if not k.startswith("backbone.encoder."))
    loaded = model.backbone.encoder.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in encoder_keys)


def test_cosine_head_without_reduction_is_the_released_weight_normalised_classifier():
    torch.manual_seed(0)
    head = CosineHead(16, 5, embed_dim=None, temperature=0.1)
    assert isinstance(head.reduce, nn.Identity) and head.embed_dim == 16
    assert [(n, tuple(p.shape)) for n, p in head.named_parameters()] == [("weight", (5, 16))]
    features = torch.randn(2, 16, 7, 9)
    out = head(features)
    unit = features / features.norm(dim=1, keepdim=True)
    weight = head.weight / head.weight.norm(dim=1, keepdim=True)
    expected = torch.einsum("bdhw,cd->bchw", unit, weight) / 0.1
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.embeddings, unit, rtol=0, atol=1e-6)
    released = nn.functional.conv2d(unit, weight[:, :, None, None]) / 0.1  # DeepLabHeadV3PlusWN
    torch.testing.assert_close(out.logits, released, rtol=0, atol=1e-6)
    model = build_segmenter(backbone="tiny", geometry="cosine", embed_dim=None, num_classes=5)
    assert model.spec.embed_dim is None and tuple(model.head.weight.shape) == (5, 64)
    assert SegmenterSpec(**model.spec.to_dict()) == model.spec


@pytest.mark.parametrize("geometry", ("euclidean", "hyperbolic"))
def test_embed_dim_none_needs_the_cosine_geometry(geometry):
    with pytest.raises(
        ValueError, match=rf"embed_dim=None .* needs geometry='cosine', but got geometry='{geometry}'"
    ):
        build_segmenter(geometry=geometry, embed_dim=None)
