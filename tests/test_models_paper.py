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
