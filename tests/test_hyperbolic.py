"""Properties of the Poincaré-ball layer (halo_ray.hyperbolic), stated like theorems.

Parametrised over curvatures (0.1, 1.0, 2.5) and dtypes (float32, float64) where it matters.
References are computed independently: closed forms in float64, geoopt's own maps, and a
per-class, per-pixel loop over geoopt's ``mobius_add`` for the MLR.
"""

from __future__ import annotations

import math

import geoopt
import geoopt.manifolds.stereographic.math as gmath
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from halo_ray.hyperbolic import (
    HFR,
    Curvature,
    HyperbolicMLR,
    dist0,
    expmap0,
    hyperbolic_mlr,
    max_radius,
    max_tangent_norm,
    poincare_ball,
    proj_eps,
    project,
    radius_map,
)

CURVATURES = (0.1, 1.0, 2.5)
DTYPES = (torch.float32, torch.float64)


def _random_ball_points(
    n: int, d: int, *, c: float, dtype: torch.dtype, max_frac: float = 0.95, seed: int = 0
):
    """``n`` points with uniformly random directions and norms uniform in [0, max_frac/√c)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, d, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(n, 1, generator=g, dtype=torch.float64) * max_frac / math.sqrt(c)
    return (direction * radius).to(dtype)


# ------------------------------------------------------------------------------------------
# dist0, expmap0, project, radius_map
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_dist0_equals_closed_form(c, dtype):
    x = _random_ball_points(1000, 7, c=c, dtype=dtype)
    x64 = x.double()
    expected = (
        2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * x64.norm(dim=-1))
    )  # float64 closed form
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(dist0(x, c=c).double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("c", CURVATURES)
def test_dist0_agrees_with_geoopt(c):
    x = _random_ball_points(200, 5, c=c, dtype=torch.float64)
    k = torch.tensor(-c, dtype=torch.float64)  # geoopt's signed curvature
    torch.testing.assert_close(dist0(x, c=c), gmath.dist0(x, k=k), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_expmap0_agrees_with_geoopt_below_the_clip(c, dtype):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(500, 6, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(500, 1, generator=g, dtype=torch.float64)
    v = (v * 0.99 * max_tangent_norm(dtype, c=c)).to(dtype)  # every norm below the clip
    expected = gmath.expmap0(v.double(), k=torch.tensor(-c, dtype=torch.float64))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(expmap0(v, c=c).double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("scale", (1e3, 1e6, 1e15))
def test_expmap0_strictly_inside_ball_for_huge_tangent_norms(c, dtype, scale):
    v = torch.randn(64, 16, dtype=dtype) * scale
    x = expmap0(v, c=c)
    norms = x.double().norm(dim=-1)
    assert torch.isfinite(x).all()
    assert (norms < 1 / math.sqrt(c)).all()
    assert norms.max().item() <= (1 - proj_eps(dtype)) / math.sqrt(c) * (1 + 1e-6)
    # the direction survives the clipping
    cos = torch.nn.functional.cosine_similarity(x.double(), v.double(), dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_clipped_points_sit_at_the_policy_radius(c, dtype):
    v = torch.randn(10, 4, dtype=dtype) * 1e6
    radius = dist0(expmap0(v, c=c), c=c).double()
    expected = 2 / math.sqrt(c) * math.atanh(1 - proj_eps(dtype))
    assert max_radius(dtype, c=c) == pytest.approx(expected)
    torch.testing.assert_close(radius, torch.full_like(radius, expected), rtol=1e-4, atol=0)


def test_expmap0_max_norm_implements_feature_clipping():
    v = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)  # norms 5 and 0.5
    x = expmap0(v, c=1.0, max_norm=1.0)
    expected_norms = torch.tensor([math.tanh(1.0), math.tanh(0.5)], dtype=torch.float64)
    torch.testing.assert_close(x.norm(dim=-1), expected_norms)


def test_expmap0_has_identity_jacobian_at_the_origin():
    v = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda u: expmap0(u, c=2.5), v)
    torch.testing.assert_close(jac, torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("c", CURVATURES)
def test_expmap0_channel_first_matches_last_dim(c):
    v = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    a = expmap0(v, c=c, dim=1)
    b = expmap0(v.movedim(1, -1), c=c).movedim(-1, 1)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", CURVATURES)
def test_project_pulls_outside_points_to_the_margin_and_keeps_inside_points(c, dtype):
    inside = _random_ball_points(50, 3, c=c, dtype=dtype, max_frac=0.9)
    outside = torch.randn(50, 3, dtype=dtype)
    outside = outside / outside.norm(dim=-1, keepdim=True) * (2 / math.sqrt(c))
    torch.testing.assert_close(project(inside, c=c), inside)
    norms = project(outside, c=c).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, (1 - proj_eps(dtype)) / math.sqrt(c)))


@pytest.mark.parametrize("c", CURVATURES)
def test_radius_map_is_dist0_over_channels(c):
    z = expmap0(torch.randn(2, 6, 4, 5, dtype=torch.float64), c=c, dim=1)  # [B, D, H, W]
    r = radius_map(z, c=c)
    assert r.shape == (2, 4, 5)
    expected = 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * z.norm(dim=1))
    torch.testing.assert_close(r, expected)
    assert radius_map(z[0], c=c).shape == (4, 5)  # unbatched [D, H, W]


def test_radius_map_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[D, H, W\] or \[B, D, H, W\].*\(4, 5\)"):
        radius_map(torch.zeros(4, 5), c=1.0)


def test_dist0_at_and_beyond_the_rim_is_finite_with_finite_gradient():
    x = torch.tensor(
        [[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]], requires_grad=True
    )  # rim, origin, outside
    d = dist0(x, c=1.0)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all()
    assert d[1].item() == 0.0
    clamp = torch.tensor(1 - 1e-7, dtype=torch.float32).double()  # geoopt's artanh clamp
    assert d[0].item() == pytest.approx(2 * torch.atanh(clamp).item(), rel=1e-6)
    assert d[2].item() == d[0].item()  # outside the ball: the same clamped radius
    assert max_radius(torch.float32, c=1.0) < d[0].item()  # points of the module stay inside it


@pytest.mark.parametrize("c", CURVATURES)
def test_float64_radius_reaches_the_released_range_and_float32_ties_at_the_rim(c):
    """The released head maps to the ball in float64: radii reach 2/√c·artanh(1 - 1e-5) ≈ 12.2/√c
    and tangent norms of 6 and 8 stay apart; in float32 both sit at the ≈ 6.2/√c rim."""
    direction = torch.nn.functional.normalize(torch.randn(1, 16, 1, 1, dtype=torch.float64), dim=1)
    norms = torch.tensor([1.0, 4.0, 6.0, 8.0, 50.0], dtype=torch.float64).view(1, 1, 1, 5) / math.sqrt(c)
    v = direction * norms  # [1, 16, 1, 5]
    r64 = radius_map(expmap0(v, c=c, dim=1), c=c)[0, 0]
    r32 = radius_map(expmap0(v.float(), c=c, dim=1), c=c)[0, 0]
    top64 = 2 * math.atanh(1 - 1e-5) / math.sqrt(c)
    assert r64.max().item() == pytest.approx(top64, rel=1e-9)
    assert top64 * math.sqrt(c) == pytest.approx(12.206, abs=1e-3)
    assert max_radius(torch.float64, c=c) == pytest.approx(top64, rel=1e-12)
    assert r64[1].item() == pytest.approx(8.0 / math.sqrt(c), rel=1e-9)  # 2·(tangent norm) below the clip
    assert r64[3].item() - r64[2].item() > 0.1  # tangent norms 6 and 8: distinct radii in float64
    assert r64[3].item() == pytest.approx(r64[4].item(), rel=1e-9)  # 8 and 50: both projected
    for k in (2, 3):  # float32: both at the rim, ≈ 6.2/√c, within rounding
        assert r32[k].item() == pytest.approx(max_radius(torch.float32, c=c), rel=1e-4)


# ------------------------------------------------------------------------------------------
# hypothesis: finiteness of values and gradients over 1e5 vectors per example
# ------------------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-8.0, 15.0),
    c=st.sampled_from(CURVATURES) | st.floats(0.01, 10.0),
    dtype=st.sampled_from(DTYPES),
)
@example(seed=497, log_scale=4.0, c=0.1, dtype=torch.float32)  # a clipped point 6 ulps past 1 - ε
def test_dist0_of_expmap0_has_finite_values_and_gradients(seed, log_scale, c, dtype):
    g = torch.Generator().manual_seed(seed)
    n, d = 100_000, 8
    # per-row magnitudes spread over 10^-8 … 10^log_scale, plus zeros and exactly-1e6 rows
    exponents = -8.0 + torch.rand(n, 1, generator=g, dtype=torch.float64) * (log_scale + 8.0)
    v = (torch.randn(n, d, generator=g, dtype=torch.float64) * 10.0**exponents).to(dtype)
    v[:100] = 0.0
    v[100:200] = v[100:200] / v[100:200].norm(dim=-1, keepdim=True).clamp_min(1e-30) * 1e6
    v.requires_grad_(True)
    c_t = torch.tensor(c, dtype=dtype, requires_grad=True)
    r = dist0(expmap0(v, c=c_t), c=c_t)  # [n]
    r.sum().backward()
    assert torch.isfinite(r).all()
    # clipped points lie on the projection radius up to rounding: √c‖x‖ ≤ (1 - ε)(1 + 16 ulp);
    # artanh amplifies that ~40x in float32 at 1 - ε = 0.996 (1e-5 relative was too tight)
    rim = min((1 - proj_eps(dtype)) * (1 + 16 * torch.finfo(dtype).eps), 1 - 1e-7)
    assert (r >= 0).all() and (r <= 2 / math.sqrt(c) * math.atanh(rim)).all()
    assert torch.isfinite(v.grad).all()
    assert torch.isfinite(c_t.grad)


# ------------------------------------------------------------------------------------------
# Hyperbolic MLR
# ------------------------------------------------------------------------------------------
def _reference_mlr(x, p, a, c):
    """Ganea et al.'s formula, one class and one pixel at a time, with geoopt's mobius_add.

    ``a`` is given at the origin and transported to ``p``: ``a_p = (1 - c‖p‖²) a``.
    """
    k = torch.tensor(-c, dtype=x.dtype)
    batch, _, height, width = x.shape
    out = torch.empty(batch, p.shape[0], height, width, dtype=x.dtype)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                for cls in range(p.shape[0]):
                    z = gmath.mobius_add(-p[cls], x[b, :, i, j], k=k)
                    lam_p = 2 / (1 - c * p[cls].dot(p[cls]))
                    a_p = a[cls] * (1 - c * p[cls].dot(p[cls]))
                    a_n = a_p.norm()
                    arg = 2 * math.sqrt(c) * z.dot(a_p) / ((1 - c * z.dot(z)) * a_n)
                    out[b, cls, i, j] = lam_p * a_n / math.sqrt(c) * torch.asinh(arg)
    return out


@pytest.mark.parametrize("c", CURVATURES)
def test_hyperbolic_mlr_equals_per_pixel_reference(c):
    g = torch.Generator().manual_seed(3)
    batch, dim, height, width, classes = 2, 4, 3, 5, 4
    pts = _random_ball_points(
        batch * height * width, dim, c=c, dtype=torch.float64, max_frac=0.97, seed=4
    )
    x = pts.view(batch, height, width, dim).permute(0, 3, 1, 2).contiguous()  # [B, D, H, W]
    p = _random_ball_points(classes, dim, c=c, dtype=torch.float64, max_frac=0.9, seed=5)
    a = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    got = hyperbolic_mlr(x, p, a, c=c)
    assert got.shape == (batch, classes, height, width)
    torch.testing.assert_close(got, _reference_mlr(x, p, a, c), rtol=0, atol=1e-5)


@pytest.mark.parametrize("c", CURVATURES)
def test_hyperbolic_mlr_equals_geoopt_dist2plane_times_conformal_factor(c):
    x = _random_ball_points(300, 6, c=c, dtype=torch.float64, max_frac=0.97, seed=6)
    p = _random_ball_points(5, 6, c=c, dtype=torch.float64, max_frac=0.9, seed=7)
    a = torch.randn(5, 6, dtype=torch.float64)
    beta = 1 - c * p.pow(2).sum(-1, keepdim=True)
    ref = gmath.dist2plane(
        x[:, None], p, a * beta, k=torch.tensor(-c, dtype=torch.float64), signed=True, scaled=True
    )
    ref = ref * 2 / beta.T  # λ_p · signed, scaled distance
    torch.testing.assert_close(hyperbolic_mlr(x, p, a, c=c, dim=-1), ref, rtol=1e-6, atol=1e-6)


def _released_mlr_by_hand(x: torch.Tensor, p: torch.Tensor, a: torch.Tensor, c: float) -> torch.Tensor:
    """HALO's HyperMLR formula, per class and pixel: z = (-p) ⊕ x by geoopt's Möbius addition,
    pulled back to norm (1 - 1e-3)/√c when beyond it, then 2/√c‖a‖ asinh(2√c⟨z, â⟩/(1 - c‖z‖²))."""
    k = torch.tensor(-c, dtype=torch.float64)
    m = (1 - 1e-3) / math.sqrt(c)
    out = torch.empty(x.shape[0], p.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        for cls in range(p.shape[0]):
            z = gmath.mobius_add(-p[cls], x[i], k=k)
            if z.norm() > m:
                z = z / z.norm() * m
            a_n = a[cls].norm()
            arg = 2 * math.sqrt(c) * z.dot(a[cls] / a_n) / (1 - c * z.dot(z))
            out[i, cls] = 2 / math.sqrt(c) * a_n * torch.asinh(arg)
    return out


@pytest.mark.parametrize("c", CURVATURES)
def test_reference_mlr_projects_the_mobius_sum_as_released_and_differs_only_there(c):
    """Near the rim (x at 0.9999/√c) many z_k = (-p_k) ⊕ x pass (1 - 1e-3)/√c; offsets partly
    outside the ball (the released offsets are a plain parameter)."""
    x = _random_ball_points(200, 5, c=c, dtype=torch.float64, max_frac=0.9999, seed=8)
    x[:100] = x[:100] / x[:100].norm(dim=-1, keepdim=True) * 0.9999 / math.sqrt(c)
    p = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 0.3 / math.sqrt(c)
    p[5] = p[5] / p[5].norm() * 1.5 / math.sqrt(c)  # an offset outside the ball
    a = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    expected = _released_mlr_by_hand(x, p, a, c)
    got = hyperbolic_mlr(x, p, a, c=c, dim=-1, reference=True)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    z_norm = torch.stack([gmath.mobius_add(-p[k], x, k=torch.tensor(-c, dtype=torch.float64)).norm(dim=-1) for k in range(5)], 1)
    projected = z_norm > (1 - 1e-3) / math.sqrt(c)  # [200, 5] for the offsets inside the ball
    assert projected.sum() > 20 and (~projected).sum() > 20
    ours = hyperbolic_mlr(x, p[:5], a[:5], c=c, dim=-1)
    torch.testing.assert_close(ours[~projected], got[:, :5][~projected], rtol=1e-9, atol=1e-9)
    assert (ours[projected] - got[:, :5][projected]).abs().max() > 1e-3


def test_released_mlr_module_keeps_plain_offsets_in_float64():
    torch.manual_seed(11)
    mlr = HyperbolicMLR(8, 5, curvature=1.0, form="released", dtype=torch.float64)
    assert mlr.offsets_plain.dtype == mlr.normals.dtype == torch.float64
    assert not hasattr(mlr, "offsets_tangent")
    assert mlr.offsets_plain.abs().max() <= 1 / math.sqrt(8)  # kaiming-uniform ±1/√D
    with torch.no_grad():
        mlr.offsets_plain.mul_(10)  # a step may leave the ball: used as given
    x = expmap0(torch.randn(2, 8, 3, 3, dtype=torch.float64), c=1.0, dim=1)
    torch.testing.assert_close(mlr(x), hyperbolic_mlr(x, mlr.offsets_plain, mlr.normals, c=1.0, reference=True))
    with pytest.raises(ValueError, match=r"form must be one of ball, released, but got form='plain'"):
        HyperbolicMLR(8, 5, form="plain")


def test_hyperbolic_mlr_tends_to_euclidean_logits_as_curvature_vanishes():
    x = torch.randn(20, 3, dtype=torch.float64) * 0.3
    p = torch.randn(4, 3, dtype=torch.float64) * 0.3
    a = torch.randn(4, 3, dtype=torch.float64)
    euclidean = 4 * ((x[:, None, :] - p[None]) * a[None]).sum(-1)  # 4⟨a, x - p⟩
    torch.testing.assert_close(
        hyperbolic_mlr(x, p, a, c=1e-9, dim=-1), euclidean, rtol=1e-6, atol=1e-6
    )


def test_hyperbolic_mlr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="D=4 coordinates along dim=1"):
        hyperbolic_mlr(torch.zeros(2, 3, 5, 5), torch.zeros(6, 4), torch.ones(6, 4), c=1.0)
    with pytest.raises(ValueError, match=r"offsets \(6, 4\) and normals \(5, 4\)"):
        hyperbolic_mlr(torch.zeros(2, 4, 5, 5), torch.zeros(6, 4), torch.ones(5, 4), c=1.0)


@pytest.mark.parametrize("c", CURVATURES)
def test_hyperbolic_mlr_module_matches_function_and_stays_finite_at_the_rim(c):
    torch.manual_seed(0)
    mlr = HyperbolicMLR(8, 5, curvature=c).double()
    x = expmap0(torch.randn(2, 8, 4, 4, dtype=torch.float64) * 1e3, c=c, dim=1)  # all on the rim
    x.requires_grad_(True)
    logits = mlr(x)
    p = expmap0(mlr.offsets_tangent, c=c)
    torch.testing.assert_close(logits, hyperbolic_mlr(x, p, mlr.normals, c=c))
    logits.sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(q.grad).all() for q in mlr.parameters())


def test_hyperbolic_mlr_module_is_seeded_and_float32_close_to_float64():
    torch.manual_seed(7)
    a = HyperbolicMLR(16, 19)
    torch.manual_seed(7)
    b = HyperbolicMLR(16, 19)
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    x = expmap0(torch.randn(2, 16, 8, 8), c=1.0, dim=1)
    torch.testing.assert_close(a(x).double(), a.double()(x.double()), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# Curvature
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CURVATURES)
def test_fixed_curvature_is_a_buffer_with_the_given_value(c):
    curv = Curvature(c)
    assert list(curv.parameters()) == []
    assert curv.value.dim() == 0 and curv.value.item() == pytest.approx(c)
    assert "c" in curv.state_dict()


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("grad_sign", (1.0, -1.0))
def test_learnable_curvature_gets_a_gradient_and_stays_positive_after_a_huge_step(c, grad_sign):
    curv = Curvature(c, learnable=True)
    assert curv.value.item() == pytest.approx(c, rel=1e-6)
    opt = torch.optim.SGD(curv.parameters(), lr=1.0)
    loss = grad_sign * 1e8 * curv.value  # d loss / d c = ±1e8
    loss.backward()
    assert curv.raw.grad is not None and curv.raw.grad.item() != 0.0
    opt.step()
    value = curv.value.item()
    assert math.isfinite(value) and value > 0
    assert value >= curv.min_value
    assert (value < c) if grad_sign > 0 else (value > c)


def test_curvature_flows_through_expmap0_and_mlr():
    curv = Curvature(1.0, learnable=True)
    mlr = HyperbolicMLR(4, 3, curvature=curv)
    x = expmap0(torch.randn(2, 4, 3, 3), c=curv.value, dim=1)
    mlr(x).pow(2).sum().backward()
    assert (
        curv.raw.grad is not None and torch.isfinite(curv.raw.grad) and curv.raw.grad.item() != 0.0
    )


@pytest.mark.parametrize("bad", (0.0, -1.0, float("nan"), float("inf"), True, "1.0", None))
def test_invalid_curvature_values_raise_naming_the_value(bad):
    with pytest.raises(
        ValueError, match=r"curvature must be a finite number > 0.*but got curvature="
    ):
        Curvature(bad)
    with pytest.raises(ValueError, match=r"c must be a finite number > 0.*but got c="):
        poincare_ball(bad)
    with pytest.raises(ValueError, match=r"c must be a finite number > 0"):
        expmap0(torch.ones(3), c=bad)


def test_invalid_curvature_tensor_raises():
    with pytest.raises(ValueError, match=r"c=-2\.0"):
        dist0(torch.zeros(3), c=torch.tensor(-2.0))
    with pytest.raises(ValueError, match="0-d tensor"):
        dist0(torch.zeros(3), c=torch.ones(2))


def test_learnable_curvature_must_start_above_its_floor():
    with pytest.raises(ValueError, match=r"min_value=0.5.*curvature=0.1"):
        Curvature(0.1, learnable=True, min_value=0.5)


@pytest.mark.parametrize("c", CURVATURES)
def test_poincare_ball_has_signed_curvature(c):
    ball = poincare_ball(c)
    assert isinstance(ball, geoopt.PoincareBall)
    assert ball.k.item() == pytest.approx(-c)
    assert ball.c.item() == pytest.approx(c)


# ------------------------------------------------------------------------------------------
# HFR
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_norm", ("l2", "rms"))
def test_hfr_fixes_each_images_squared_norm_by_its_weights(spatial_norm):
    torch.manual_seed(0)
    hfr = HFR(6, spatial_norm=spatial_norm).double()
    f = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    out = hfr(f)
    w = hfr.weights(f)  # [B, D]
    assert (w > 0).all()
    per_channel = out.pow(2).sum(dim=(-2, -1))  # [B, D]  Σ_pixels out_d²
    if spatial_norm == "l2":  # Σ_x ‖out(x)‖² = ‖w‖², channel by channel
        torch.testing.assert_close(per_channel, w.pow(2))
        assert (out.norm(dim=1) <= w.norm(dim=1)[:, None, None] + 1e-12).all()
    else:  # mean_x ‖out(x)‖² = mean_d w_d², channel by channel: Σ_x out_d² = w_d² · P / D
        torch.testing.assert_close(per_channel, w.pow(2) * 35 / 6)
        torch.testing.assert_close(out.pow(2).sum(dim=1).mean(dim=(-2, -1)), w.pow(2).mean(dim=1))
    # direction within each channel map is preserved
    cos = torch.nn.functional.cosine_similarity(out.flatten(2), f.flatten(2), dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_hfr_rms_is_resolution_independent_and_l2_is_not():
    torch.manual_seed(0)
    rms, l2 = HFR(4, spatial_norm="rms").eval(), HFR(4, spatial_norm="l2").eval()
    l2.load_state_dict(rms.state_dict())
    small = torch.randn(1, 4, 8, 8)
    large = small.repeat(1, 1, 4, 4)  # the same image content, 16× the pixels
    for hfr, ratio in ((rms, 1.0), (l2, 1 / 16)):
        mean_sq = [hfr(x).pow(2).sum(dim=1).mean().item() for x in (small, large)]
        assert mean_sq[1] / mean_sq[0] == pytest.approx(ratio, rel=1e-4)


def _hfr_mlp_by_hand(hfr: HFR, f: torch.Tensor, *, train: bool) -> torch.Tensor:
    """The per-pixel MLP of ``hfr`` written out: [B, D, H, W] -> per-image mean [B, D]."""
    lin1, bn, _, lin2 = hfr.mlp
    pixels = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # [B·H·W, D]
    h = pixels @ lin1.weight.T + lin1.bias
    if train:  # batch statistics over all B·H·W pixel vectors (biased variance)
        mean, var = h.mean(dim=0), h.var(dim=0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    out = torch.relu(h) @ lin2.weight.T + lin2.bias  # MLP(f(x)) per pixel
    return out.view(f.shape[0], -1, f.shape[1]).mean(dim=1)


@pytest.mark.parametrize("train", (True, False))
def test_hfr_weights_are_the_image_mean_of_a_per_pixel_mlp_in_train_and_eval_mode(train):
    torch.manual_seed(1)
    hfr = HFR(4).double().train(train)
    with torch.no_grad():
        hfr.mlp[1].running_mean.uniform_(-1, 1)
        hfr.mlp[1].running_var.uniform_(0.5, 2.0)
    f = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    expected = torch.nn.functional.softplus(_hfr_mlp_by_hand(hfr, f, train=train))
    before = hfr.mlp[1].running_mean.clone()
    torch.testing.assert_close(hfr.weights(f), expected)
    assert torch.equal(before, hfr.mlp[1].running_mean) != train  # only training updates the statistics


def test_hfr_is_structured_as_the_released_wn_mlp_and_loads_its_weights_in_order():
    """Linear(D, D) → BatchNorm1d → ReLU → Linear(D, D): a state dict of that Sequential loads as is."""
    torch.manual_seed(3)
    released = torch.nn.Sequential(
        torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 6)
    )
    hfr = HFR(6, spatial_norm="l2", positivity="clamp")
    assert [type(m) for m in hfr.mlp] == [type(m) for m in released]
    hfr.mlp.load_state_dict(released.state_dict())
    shapes = [tuple(p.shape) for p in hfr.parameters()]
    bare = HFR(6)
    bare.load_state_dict(released.state_dict())  # the wn_mlp's own keys ("0.weight", ...) load too
    for mine, theirs in zip(bare.state_dict().values(), released.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert shapes == [(6, 6), (6,), (6,), (6,), (6, 6), (6,)]  # weights in the released order


def test_hfr_clamp_positivity_floors_weights_at_1e5_and_kills_their_gradient():
    torch.manual_seed(4)
    f = torch.randn(2, 8, 5, 5)
    clamp, soft = HFR(8, positivity="clamp"), HFR(8, positivity="softplus")
    soft.load_state_dict(clamp.state_dict())
    raw = _hfr_mlp_by_hand(clamp, f, train=True)
    assert (raw < 0).any() and (raw > 0).any()
    torch.testing.assert_close(clamp.weights(f), raw.clamp(min=1e-5))
    assert clamp.weights(f)[raw < 0].eq(1e-5).all()
    torch.testing.assert_close(soft.weights(f), torch.nn.functional.softplus(raw))
    for hfr in (clamp, soft):
        hfr.zero_grad()
        hfr.weights(f).sum().backward()
    dead = (raw < 0).all(dim=0)  # channels clamped in every image get no gradient at all
    assert dead.any()
    assert clamp.mlp[3].bias.grad[dead].eq(0).all() and (soft.mlp[3].bias.grad[dead] > 0).all()


def test_hfr_reads_checkpoints_of_its_earlier_layout():
    torch.manual_seed(5)
    hfr = HFR(4)
    old = {
        "fc1.weight": hfr.mlp[0].weight.detach()[:, :, None, None] + 1.0,  # a 1x1 conv kernel
        "fc1.bias": hfr.mlp[0].bias.detach() + 1.0,
        **{f"bn.{k}": v + 1 for k, v in hfr.mlp[1].state_dict().items()},
        "fc2.weight": hfr.mlp[3].weight.detach() + 1.0,
        "fc2.bias": hfr.mlp[3].bias.detach() + 1.0,
    }
    fresh = HFR(4)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.mlp[0].weight, old["fc1.weight"].flatten(1))
    torch.testing.assert_close(fresh.mlp[1].running_var, old["bn.running_var"])
    torch.testing.assert_close(fresh.mlp[3].bias, old["fc2.bias"])


def test_hfr_changes_the_embeddings_and_gradients_reach_all_its_parameters():
    torch.manual_seed(2)
    hfr = HFR(8)
    f = torch.randn(2, 8, 6, 6, requires_grad=True)
    with_hfr = expmap0(hfr(f), c=1.0, dim=1)
    without = expmap0(f, c=1.0, dim=1)
    assert (with_hfr - without).abs().max().item() > 1e-2
    with_hfr.pow(2).sum().backward()
    for name, q in hfr.named_parameters():
        assert q.grad is not None and torch.isfinite(q.grad).all(), name
        assert q.grad.abs().sum().item() > 0, name


def test_hfr_rejects_wrong_channels_and_unknown_norms():
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\].*\(2, 4, 3, 3\)"):
        HFR(8)(torch.zeros(2, 4, 3, 3))
    with pytest.raises(
        ValueError, match=r"spatial_norm must be one of rms, l2, but got spatial_norm='l1'"
    ):
        HFR(8, spatial_norm="l1")
    with pytest.raises(
        ValueError, match=r"positivity must be one of softplus, clamp, but got positivity='relu'"
    ):
        HFR(8, positivity="relu")


def test_radius_map_of_the_origin_is_zero_with_a_finite_gradient():
    z = torch.zeros(2, 4, 3, 3, dtype=torch.float64)
    z[0, :, 1, 1] = torch.tensor([0.3, 0.0, -0.4, 0.0], dtype=torch.float64)
    z.requires_grad_(True)
    r = radius_map(z, c=1.0)
    assert r[1].abs().max().item() == 0.0 and r[0, 1, 1].item() == pytest.approx(2 * math.atanh(0.5), rel=1e-12)
    r.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[1].abs().max().item() == 0.0
