"""Segmenter, heads and backbone registry (halo_ray.models)."""

from __future__ import annotations

import math

import pytest
import torch

from halo_ray.hyperbolic import proj_eps
from halo_ray.models import (
    GEOMETRIES,
    EuclideanHead,
    HyperbolicHead,
    Segmenter,
    SegOutput,
    build_segmenter,
)

GEOMS = ("hyperbolic", "euclidean", "cosine")


def _build(seed: int = 0, **kwargs) -> Segmenter:
    torch.manual_seed(seed)
    return build_segmenter(**kwargs)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("geometry", GEOMS)
def test_output_shapes_at_64x128(geometry):
    model = _build(geometry=geometry, num_classes=19, embed_dim=64)
    out = model(torch.randn(2, 3, 64, 128))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 19, 16, 32)
    assert out.embeddings.shape == (2, 64, 16, 32)
    assert model.output_stride == 4


def test_output_shapes_follow_num_classes_embed_dim_and_odd_sizes():
    model = _build(geometry="hyperbolic", num_classes=7, embed_dim=16).eval()
    out = model(torch.randn(1, 3, 63, 130))  # batch 1 in eval mode, sizes not divisible by 8
    assert out.logits.shape == (1, 7, 16, 33)
    assert out.embeddings.shape == (1, 16, 16, 33)


@pytest.mark.parametrize("c", (0.1, 1.0, 2.5))
def test_hyperbolic_embeddings_lie_inside_the_ball(c):
    model = _build(geometry="hyperbolic", curvature=c, hfr=False)  # no HFR: norms hit the clip
    z = model(torch.randn(2, 3, 32, 64) * 10).embeddings
    norms = z.norm(dim=1)
    assert (norms < 1 / math.sqrt(c)).all()
    assert norms.max().item() <= (1 - proj_eps(z.dtype)) / math.sqrt(c) * (1 + 1e-5)
    assert model.curvature == pytest.approx(c)


@pytest.mark.parametrize(
    ("geometry", "kwargs"),
    [
        ("hyperbolic", {"hfr": True}),
        ("hyperbolic", {"hfr": False}),
        ("hyperbolic", {"learnable_curvature": True}),
        ("euclidean", {}),
        ("cosine", {}),
    ],
)
def test_forward_backward_gives_finite_gradients_to_every_parameter(geometry, kwargs):
    model = _build(geometry=geometry, **kwargs).train()
    images = torch.randn(2, 3, 64, 128)
    labels = torch.randint(0, 19, (2, 64, 128))
    logits = model(images).logits
    logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    # the classifier's parameters really are trained
    head_grads = [p.grad.abs().sum().item() for p in model.head.parameters()]
    assert all(g > 0 for g in head_grads)


def test_learnable_curvature_changes_after_a_training_step():
    model = _build(geometry="hyperbolic", learnable_curvature=True, curvature=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(torch.randn(2, 3, 32, 64))
    loss = torch.nn.functional.cross_entropy(
        out.logits, torch.randint(0, 19, out.logits.shape[:1] + out.logits.shape[2:])
    )
    loss.backward()
    opt.step()
    assert model.curvature != pytest.approx(1.0, abs=1e-7)
    assert model.curvature > 0


def test_parameter_counts_are_in_the_prototype_range_and_differ_by_the_head():
    hyp = _build(geometry="hyperbolic", hfr=True)
    hyp_no_hfr = _build(geometry="hyperbolic", hfr=False)
    euc = _build(geometry="euclidean")
    for model in (hyp, hyp_no_hfr, euc):
        assert 180_000 <= _n_params(model) <= 300_000
    d, classes = 64, 19
    hfr_params = (d * d + d) + 2 * d + (d * d + d)  # 1×1 conv, BatchNorm affine, linear
    assert _n_params(hyp) - _n_params(hyp_no_hfr) == hfr_params
    # MLR (offsets + normals) vs Euclidean 1×1 classifier (weight + bias)
    assert _n_params(hyp_no_hfr) - _n_params(euc) == 2 * classes * d - (classes * d + classes)
    assert _n_params(_build(geometry="hyperbolic", learnable_curvature=True)) == _n_params(hyp) + 1


@pytest.mark.parametrize("geometry", GEOMS)
def test_initialisation_is_deterministic_under_manual_seed(geometry):
    a, b, c = (
        _build(0, geometry=geometry),
        _build(0, geometry=geometry),
        _build(1, geometry=geometry),
    )
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x).logits, b.eval()(x).logits)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_hfr_on_and_off_change_the_output_of_the_same_head():
    torch.manual_seed(0)
    on = HyperbolicHead(64, 19, hfr=True)
    off = HyperbolicHead(64, 19, hfr=False)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("hfr.")})
    feats = torch.relu(torch.randn(2, 64, 8, 16))
    out_on, out_off = on(feats), off(feats)
    assert on.hfr is not None and off.hfr is None
    assert (out_on.embeddings - out_off.embeddings).abs().max().item() > 1e-2
    assert (out_on.logits - out_off.logits).abs().max().item() > 1e-2


def test_hfr_norm_reaches_the_head():
    assert _build(geometry="hyperbolic").head.hfr.spatial_norm == "rms"
    assert _build(geometry="hyperbolic", hfr_norm="l2").head.hfr.spatial_norm == "l2"


def test_euclidean_head_embeddings_are_the_reduced_features():
    torch.manual_seed(0)
    head = EuclideanHead(32, 5, embed_dim=8)
    feats = torch.randn(2, 32, 4, 4)
    out = head(feats)
    torch.testing.assert_close(out.embeddings, head.reduce(feats))
    torch.testing.assert_close(out.logits, head.classifier(head.reduce(feats)))
    assert head.curvature is None


def test_curvature_property():
    assert _build(geometry="euclidean").curvature is None
    assert _build(geometry="hyperbolic", curvature=2.5).curvature == pytest.approx(2.5)
    assert isinstance(_build(geometry="hyperbolic").curvature, float)


def test_spec_records_arguments_and_rebuilds_the_same_architecture():
    model = _build(geometry="hyperbolic", num_classes=16, embed_dim=32, curvature=0.1, hfr=False)
    spec = model.spec.to_dict()
    assert spec == {
        "backbone": "tiny",
        "geometry": "hyperbolic",
        "num_classes": 16,
        "embed_dim": 32,
        "curvature": 0.1,
        "learnable_curvature": False,
        "hfr": False,
        "hfr_norm": "rms",
        "hfr_positivity": "softplus",
        "head_dtype": "float32",
        "mlr": "ball",
        "temperature": 0.1,
    }
    rebuilt = _build(**spec)
    rebuilt.load_state_dict(model.state_dict())  # same keys and shapes


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_geometry_builds_its_head(geometry):
    model = _build(geometry=geometry, backbone="tiny")
    assert model.geometry == geometry and model.head.geometry == geometry
    assert (model.curvature is None) == (geometry != "hyperbolic")


def test_unknown_backbone_raises_listing_known_ones():
    with pytest.raises(ValueError, match=r"unknown backbone='resnet9000'; known backbones: .*tiny"):
        build_segmenter(backbone="resnet9000")


def test_unknown_geometry_raises_naming_it():
    with pytest.raises(
        ValueError, match=r"unknown geometry='spherical'; expected one of: hyperbolic, euclidean"
    ):
        build_segmenter(geometry="spherical")


@pytest.mark.parametrize("bad", (0, 0.0, -1.0, float("nan"), float("inf"), "1.0", True))
def test_invalid_curvature_raises_naming_the_value(bad):
    with pytest.raises(
        ValueError, match=r"curvature must be a finite number > 0.*but got curvature="
    ):
        build_segmenter(curvature=bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, r"num_classes must be an integer >= 2, but got num_classes=1"),
        ({"num_classes": 19.0}, r"num_classes=19.0"),
        ({"embed_dim": 0}, r"embed_dim must be an integer >= 1, but got embed_dim=0"),
        ({"hfr": "yes"}, r"hfr must be True or False, but got hfr='yes'"),
        ({"learnable_curvature": 1}, r"learnable_curvature must be True or False"),
        ({"hfr_norm": "l1"}, r"unknown hfr_norm='l1'; expected one of: rms, l2"),
    ],
)
def test_invalid_sizes_and_flags_raise_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_segmenter(**kwargs)


def test_forward_rejects_non_rgb_input():
    model = _build(geometry="euclidean")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))


def test_double_precision_model_runs():
    model = _build(geometry="hyperbolic").double()
    out = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert out.logits.dtype == torch.float64 and out.embeddings.dtype == torch.float64


def test_hyperbolic_part_runs_in_float32_under_autocast():
    model = _build(geometry="hyperbolic").eval()
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 32, 64))
    assert out.embeddings.dtype == torch.float32 and out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()


def test_float64_head_runs_expmap0_and_the_mlr_in_float64_and_hfr_in_float32():
    """The released head: HFR on float32 features, then expmap0 and HyperMLR in float64 with
    float32 logits out; embeddings keep float64, so rim radii reach ≈ 12.2 (float32: ≈ 6.2)."""
    from halo_ray.hyperbolic import hyperbolic_mlr, max_radius, radius_map

    torch.manual_seed(0)
    head = HyperbolicHead(16, 5, embed_dim=8, head_dtype="float64", mlr="released").eval()
    assert head.hfr.mlp[0].weight.dtype == torch.float32 and head.mlr.normals.dtype == torch.float64
    feats = torch.randn(2, 16, 6, 7) * 50.0  # big features: many pixels on the rim
    out = head(feats)
    assert out.embeddings.dtype == torch.float64 and out.logits.dtype == torch.float32
    expected = hyperbolic_mlr(out.embeddings, head.mlr.offsets_plain, head.mlr.normals, c=1.0, reference=True)
    torch.testing.assert_close(out.logits, expected.float())
    rim = HyperbolicHead(16, 5, embed_dim=8, head_dtype="float64", hfr=False).eval()  # HFR would tame them
    with torch.no_grad():
        rim.reduce.bias.zero_()
        tangent = rim.reduce(feats).norm(dim=1, keepdim=True)  # [2, 1, 6, 7]
    feats = feats * (3.5 + 2.5 * torch.rand(2, 1, 6, 7)) / tangent  # tangent norms in (3.5, 6): past float32's clip
    radius = radius_map(rim(feats).embeddings, c=1.0)
    assert radius.max().item() <= max_radius(torch.float64, c=1.0) + 1e-9
    assert radius.min().item() > 6.9 and radius.max().item() > 11.0
    assert radius.unique().numel() == radius.numel()  # no ties in float64
    rim32 = HyperbolicHead(16, 5, embed_dim=8, hfr=False).eval()
    rim32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in rim.state_dict().items()})
    radius32 = radius_map(rim32(feats).embeddings, c=1.0)
    assert radius32.max().item() == pytest.approx(max_radius(torch.float32, c=1.0), rel=1e-4)
    assert radius32.unique().numel() <= 8  # float32: all 84 pixels at the rim, a few rounding values
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # the head keeps its dtypes
        assert head(feats).embeddings.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hfr_positivity": "relu"}, r"unknown hfr_positivity='relu'; expected one of: softplus, clamp"),
        ({"head_dtype": "float16"}, r"unknown head_dtype='float16'; expected one of: float32, float64"),
        ({"mlr": "plain"}, r"unknown mlr='plain'; expected one of: ball, released"),
    ],
)
def test_head_options_outside_their_sets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_segmenter(**kwargs)


def test_cosine_head_logits_are_cosines_over_the_temperature():
    model = _build(geometry="cosine", temperature=0.25).eval()
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    features = model.backbone(x)
    reduced = model.head.reduce(features)
    unit = reduced / reduced.norm(dim=1, keepdim=True)
    weights = model.head.weight / model.head.weight.norm(dim=1, keepdim=True)
    cosine = torch.einsum("bdhw,cd->bchw", unit, weights)
    torch.testing.assert_close(out.logits, cosine / 0.25)
    torch.testing.assert_close(out.embeddings, unit)
    assert out.logits.abs().max() <= 1 / 0.25 + 1e-5
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(2, 8, 12))
    # no bias; the classifier is the weight matrix alone
    assert sorted(n for n, _ in model.head.named_parameters()) == ["reduce.bias", "reduce.weight", "weight"]
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        _build(geometry="cosine", temperature=0.0)
