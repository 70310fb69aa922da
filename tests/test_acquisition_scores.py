"""Score maps: closed-form values, constant inputs, validation, and the reference setting.

The reference re-implementation at the bottom follows the released HALO code
(``core/active/floating_region.py``): one-hot K-channel box-filter convs, ``log 19``,
``+1e-6`` inside the logs, epsilon-free min-max. ``score_map(..., reference=True)`` must give
the same maps (within 1e-5; in practice bitwise) and the same greedy selections.
"""

from __future__ import annotations

import itertools
import math

import geoopt
import geoopt.manifolds.stereographic.math as pmath
import pytest
import torch
import torch.nn.functional as F

from halo_ray.acquisition import (
    HYPERBOLIC_STRATEGIES,
    STRATEGIES,
    minmax,
    picks_per_round,
    pixel_entropy,
    radius_map,
    score_map,
    select,
)
from halo_ray.acquisition._windows import (
    sorting_network,
    window_impurity,
    window_impurity_reference,
)

BINS = 100


def _ball_points(tangent: torch.Tensor, curvature: float = 1.0) -> torch.Tensor:
    """``expmap0`` of tangent vectors ``[D, H, W]`` onto the ball, ``[D, H, W]``."""
    ball = geoopt.PoincareBall(c=curvature)
    return ball.expmap0(tangent.permute(1, 2, 0)).permute(2, 0, 1).contiguous()


def _radial_embeddings(radius: torch.Tensor, dim: int = 4, curvature: float = 1.0) -> torch.Tensor:
    """Ball points whose hyperbolic radius is exactly the given ``[H, W]`` map (up to rounding)."""
    # d(0, z) = 2/sqrt(c) artanh(sqrt(c)|z|)  =>  |z| = tanh(sqrt(c) R / 2) / sqrt(c)
    norm = torch.tanh(math.sqrt(curvature) * radius.double() / 2) / math.sqrt(curvature)
    direction = torch.zeros((dim, *radius.shape), dtype=torch.float64)
    direction[0] = 1.0
    return (direction * norm).to(torch.float32)


def _smooth_inputs(height: int, width: int, seed: int, classes: int = 19, dim: int = 16):
    """Softmax and ball embeddings like upsampled network outputs, plus pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    low = (height // 6 + 2, width // 6 + 2)
    logits = F.interpolate(
        torch.randn((1, classes, *low), generator=gen) * 3,
        (height, width),
        mode="bilinear",
        align_corners=True,
    )[0]
    probs = torch.softmax(
        logits + 0.3 * torch.randn((classes, height, width), generator=gen), dim=0
    )
    tangent = F.interpolate(
        torch.randn((1, dim, *low), generator=gen) * 0.4,
        (height, width),
        mode="bilinear",
        align_corners=True,
    )[0]
    return probs, _ball_points(tangent + 0.03 * torch.randn((dim, height, width), generator=gen))


def _uniform_probs(classes: int, height: int, width: int) -> torch.Tensor:
    return torch.full((classes, height, width), 1.0 / classes)


# ----------------------------------------------------------------------------- public constants


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_scores_and_exactly_the_radius_ones_need_embeddings(strategy):
    """Each listed name is a working strategy; the hyperbolic list is exactly those that read z."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 12, 16, generator=g).softmax(dim=0)
    emb = torch.rand(4, 12, 16, generator=g) * 0.1
    score = score_map(strategy, probs, emb, generator=torch.Generator().manual_seed(1))
    assert score.shape == (12, 16) and torch.isfinite(score).all()
    if strategy in HYPERBOLIC_STRATEGIES:
        with pytest.raises(ValueError, match="embeddings"):
            score_map(strategy, probs, None)
    else:
        torch.testing.assert_close(score_map(strategy, probs, None, generator=torch.Generator().manual_seed(1)), score)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "entropyy"}, "strategy must be one of"),
        ({"region_size": 4}, "region_size must be an odd integer >= 1, but got region_size=4"),
        ({"region_size": -3}, "region_size=-3"),
        ({"region_size": 0}, "region_size=0"),
        ({"boundary_window": 2}, "boundary_window=2"),
        ({"bins": 1}, "bins must be an integer >= 2, but got bins=1"),
        ({"curvature": 0.0}, "curvature must be a finite number > 0, but got curvature=0.0"),
        ({"curvature": -1.0}, "curvature=-1.0"),
        ({"curvature": float("nan")}, "curvature=nan"),
        ({"unit": "square"}, "unit must be one of"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, match):
    probs, emb = _smooth_inputs(8, 10, seed=0)
    args = {"strategy": "halo", **kwargs}
    strategy = args.pop("strategy")
    with pytest.raises(ValueError, match=match):
        score_map(strategy, probs, emb, **args)


@pytest.mark.parametrize("strategy", HYPERBOLIC_STRATEGIES)
def test_hyperbolic_strategies_require_embeddings(strategy):
    probs, _ = _smooth_inputs(8, 10, seed=0)
    with pytest.raises(ValueError, match=f"strategy '{strategy}' scores the hyperbolic radius"):
        score_map(strategy, probs)


def test_shape_mismatches_raise():
    probs, emb = _smooth_inputs(8, 10, seed=0)
    with pytest.raises(ValueError, match="embeddings must share the image size"):
        score_map("halo", probs, emb[:, :, :9])
    with pytest.raises(ValueError, match=r"probs must be a \[C, H, W\]"):
        score_map("entropy", probs[0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        score_map("entropy", probs[:1])
    with pytest.raises(ValueError, match=r"embeddings must be a \[D, H, W\]"):
        score_map("radius", probs, emb[0])


def test_non_hyperbolic_strategies_ignore_missing_embeddings():
    probs, _ = _smooth_inputs(8, 10, seed=0)
    for strategy in set(STRATEGIES) - set(HYPERBOLIC_STRATEGIES):
        out = score_map(strategy, probs, generator=torch.Generator().manual_seed(0))
        assert out.shape == (8, 10) and out.dtype == torch.float32


# ----------------------------------------------------------------------------- closed forms


def test_entropy_of_uniform_distribution_is_one():
    for classes in (2, 7, 19):
        assert torch.allclose(
            pixel_entropy(_uniform_probs(classes, 4, 5)), torch.ones(4, 5), atol=1e-6
        )


def test_entropy_score_is_zero_padded_region_mean():
    score = score_map("entropy", _uniform_probs(5, 6, 7), region_size=3)
    assert torch.allclose(score[1:-1, 1:-1], torch.ones(4, 5), atol=1e-6)  # interior: 9/9
    assert torch.allclose(
        score[0, 1:-1], torch.full((5,), 6 / 9), atol=1e-6
    )  # edge: 6 in-image pixels
    assert abs(float(score[0, 0]) - 4 / 9) < 1e-6  # corner: 4 in-image pixels


def test_pixel_unit_uses_the_pixels_own_uncertainty():
    probs, _ = _smooth_inputs(9, 11, seed=3)
    assert torch.allclose(
        score_map("entropy", probs, unit="pixel"), pixel_entropy(probs), atol=1e-7
    )


def test_sconf_and_margin_closed_form():
    probs = torch.tensor([0.5, 0.3, 0.2])[:, None, None].expand(3, 5, 6).contiguous()
    sconf = score_map("sconf", probs, region_size=1)
    margin = score_map("margin", probs, region_size=1)
    assert torch.allclose(sconf, torch.full((5, 6), 0.5), atol=1e-7)
    assert torch.allclose(margin, torch.full((5, 6), 0.8), atol=1e-7)


def test_ripu_impurity_on_two_class_checkerboard_matches_closed_form():
    height, width, classes = 6, 7, 3
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    first = ((rows + cols) % 2 == 0).float()
    probs = torch.stack(
        [
            0.7 * first + 0.2 * (1 - first),
            0.2 * first + 0.7 * (1 - first),
            torch.full((height, width), 0.1),
        ]
    )
    e = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)

    def h(*fractions):
        return -sum(f * math.log(f) for f in fractions) / math.log(classes)

    score = score_map("ripu", probs, region_size=3)
    # interior 3x3 windows hold 5 of one class and 4 of the other; mean entropy = e
    assert abs(float(score[2, 3]) - h(5 / 9, 4 / 9) * e) < 1e-6
    # a non-corner border window holds 3 + 3 in-image pixels; zero-padded mean = e * 6/9
    assert abs(float(score[0, 3]) - h(0.5, 0.5) * e * 6 / 9) < 1e-6
    # a corner window holds 2 + 2 pixels; mean = e * 4/9
    assert abs(float(score[0, 0]) - h(0.5, 0.5) * e * 4 / 9) < 1e-6
    assert abs(float(score[-1, -1]) - h(0.5, 0.5) * e * 4 / 9) < 1e-6


def test_window_split_evenly_between_two_bins_has_impurity_log2_over_logk():
    # labels: column 0 in bin 3, the rest in bin 7 -> the window at (r, 0) spans columns 0-1:
    # 3 + 3 pixels, an even split
    labels = torch.full((5, 6), 7)
    labels[:, 0] = 3
    impurity = window_impurity(labels, BINS, 3)
    assert abs(float(impurity[2, 0]) - math.log(2) / math.log(BINS)) < 1e-6
    h13 = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)) / math.log(BINS)
    assert abs(float(impurity[2, 1]) - h13) < 1e-6  # columns 0-2: 3 vs 6 pixels
    assert float(impurity[2, 3]) == 0.0  # pure window: exactly 0


def test_boundaries_score_closed_form_through_the_radius():
    radius = torch.full((5, 6), 2.0)
    radius[:, 0] = 0.5  # two radius levels -> mm(R) in {0, 1} -> bins {0, K-1}
    emb = _radial_embeddings(radius)
    probs = _uniform_probs(3, 5, 6)
    score = score_map("boundaries", probs, emb, bins=BINS)
    h13 = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert torch.allclose(score[:, 0], torch.ones(5))  # ln2/lnK is the maximum -> mm = 1
    assert torch.allclose(score[:, 1], torch.full((5,), h13 / math.log(2)), atol=1e-6)
    assert torch.all(score[:, 2:] == 0)


def test_uniform_radius_gives_zero_boundary_score_everywhere():
    probs, _ = _smooth_inputs(10, 12, seed=1)
    emb = _radial_embeddings(torch.full((10, 12), 1.3))
    for strategy in ("boundaries", "halo"):
        score = score_map(strategy, probs, emb)
        assert torch.all(score == 0), strategy


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "random"])
def test_constant_inputs_score_zero_without_nan(strategy):
    # one-hot everywhere (no uncertainty, one predicted class) and one embedding everywhere
    probs = torch.zeros((4, 7, 9))
    probs[2] = 1.0
    emb = _radial_embeddings(torch.full((7, 9), 0.8))
    score = score_map(strategy, probs, emb)
    assert not torch.isnan(score).any()
    assert torch.all(score == 0)


@pytest.mark.parametrize(
    "strategy", ["ripu", "halo", "halo_radius", "boundaries", "radius", "radius_inv"]
)
def test_constant_maps_under_minmax_score_zero_even_with_maximal_uncertainty(strategy):
    emb = _radial_embeddings(torch.full((7, 9), 0.8))
    score = score_map(strategy, _uniform_probs(4, 7, 9), emb)
    assert not torch.isnan(score).any()
    assert torch.all(score == 0)


def test_reference_setting_keeps_the_reference_nan_on_constant_maps():
    emb = _radial_embeddings(torch.full((7, 9), 0.8))
    score = score_map("radius", _uniform_probs(4, 7, 9), emb, reference=True)
    assert torch.isnan(score).all()


def test_minmax_maps_to_unit_interval_and_constant_to_zero():
    x = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    assert torch.equal(minmax(x), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(minmax(torch.full((3, 3), 7.0)), torch.zeros(3, 3))
    noisy = torch.full((3, 3), 1.0) + torch.tensor(1e-8)  # sub-ulp "noise" on a flat map
    assert torch.equal(minmax(noisy), torch.zeros(3, 3))


def test_radius_and_radius_inv_are_mirror_images():
    probs, emb = _smooth_inputs(9, 13, seed=2)
    radius = score_map("radius", probs, emb)
    inverse = score_map("radius_inv", probs, emb)
    assert torch.allclose(radius + inverse, torch.ones_like(radius), atol=1e-6)
    assert float(radius.min()) == 0.0 and float(radius.max()) == 1.0


def test_halo_radius_is_product_of_normalised_radius_and_region_entropy():
    probs, emb = _smooth_inputs(9, 13, seed=4)
    expected = minmax(radius_map(emb, curvature=1.0)) * minmax(score_map("entropy", probs))
    assert torch.allclose(score_map("halo_radius", probs, emb), expected, atol=1e-6)


@pytest.mark.parametrize("curvature", [0.1, 1.0, 2.5])
def test_radius_map_equals_geoopt_dist0(curvature):
    gen = torch.Generator().manual_seed(0)
    emb = _ball_points(torch.randn((6, 11, 13), generator=gen) * 0.7, curvature)
    expected = geoopt.PoincareBall(c=curvature).dist0(emb.permute(1, 2, 0))
    assert torch.allclose(radius_map(emb, curvature=curvature), expected, rtol=1e-5, atol=1e-6)


def test_random_strategy_is_seeded_by_the_generator():
    probs, _ = _smooth_inputs(6, 8, seed=0)
    a = score_map("random", probs, generator=torch.Generator().manual_seed(5))
    b = score_map("random", probs, generator=torch.Generator().manual_seed(5))
    c = score_map("random", probs, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0


# ----------------------------------------------------------------------------- window statistics


def _slow_impurity(labels: torch.Tensor, num_labels: int, side: int) -> torch.Tensor:
    """Histogram entropy / ln K of each window's in-image pixels, by plain loops."""
    height, width = labels.shape
    k = side // 2
    out = torch.zeros((height, width), dtype=torch.float64)
    for r, c in itertools.product(range(height), range(width)):
        window = labels[max(r - k, 0) : r + k + 1, max(c - k, 0) : c + k + 1].reshape(-1)
        counts = torch.bincount(window, minlength=num_labels).double()
        frac = counts[counts > 0] / window.numel()
        out[r, c] = -(frac * frac.log()).sum() / math.log(num_labels)
    return out.float()


@pytest.mark.parametrize(
    ("side", "num_labels"), [(1, 4), (3, 2), (3, 100), (5, 3), (5, 300), (7, 40)]
)
def test_window_impurity_matches_plain_histogram_entropy(side, num_labels):
    gen = torch.Generator().manual_seed(side * 1000 + num_labels)
    labels = torch.randint(0, min(num_labels, 6), (9, 11), generator=gen)
    assert torch.allclose(
        window_impurity(labels, num_labels, side),
        _slow_impurity(labels, num_labels, side),
        atol=1e-6,
    )


@pytest.mark.parametrize("n", [2, 4, 5, 9, 12, 16])
def test_sorting_network_sorts_every_zero_one_input(n):
    network = sorting_network(n)
    for bits in itertools.product((0, 1), repeat=n):
        values = list(bits)
        for a, b in network:
            if values[a] > values[b]:
                values[a], values[b] = values[b], values[a]
        assert values == sorted(bits)


# ----------------------------------------------------------------------------- reference setting


def _ref_normalize(x):
    return (x - x.min().item()) / (x.max().item() - x.min().item())


def _ref_ones_conv(x, channels, size):
    weight = torch.ones((channels, 1, size, size), dtype=torch.float32, device=x.device)
    return F.conv2d(x, weight, None, 1, (size // 2, size // 2), 1, channels)


def _ref_impurity(predict, num_labels, size):
    one_hot = F.one_hot(predict, num_classes=num_labels).float().permute(2, 0, 1).unsqueeze(0)
    summary = _ref_ones_conv(one_hot, num_labels, size)
    count = torch.sum(summary, dim=1, keepdim=True)
    dist = summary / count
    return torch.sum(-dist * torch.log(dist + 1e-6), dim=1, keepdim=True) / math.log(
        num_labels
    ), count


def reference_score(probs, emb, purity, *, region_size=3, bins=BINS, curvature=1.0):
    """HALO's FloatingRegionScore with entropy uncertainty (its released configs' settings)."""
    k = torch.tensor(-curvature, dtype=torch.float64)
    entropy = torch.sum(-probs * torch.log(probs + 1e-6), dim=0)[None, None] / math.log(19)
    region_uncertainty = _ref_ones_conv(entropy, 1, region_size)
    normalize = purity != "ripu"  # ripu.yaml: NORMALIZE False; hyper/radius: True
    if purity == "ripu":
        impurity, count = _ref_impurity(torch.argmax(probs, dim=0), probs.shape[0], region_size)
    elif purity == "hyper":
        radius = pmath.dist0(emb.unsqueeze(0), k=k, dim=1).squeeze(0)
        x = 1 - (radius - radius.min().item()) / (radius.max().item() - radius.min().item())
        x = (x - x.min()) / (x.max() - x.min())
        predict = torch.round(
            torch.clamp(x * bins - 0.5, min=-0.5 + 1e-5, max=bins - 0.5 - 1e-5)
        ).long()
        impurity, count = _ref_impurity(predict, bins, 3)
    else:  # radius
        impurity = pmath.dist0(emb.unsqueeze(0), k=k, dim=1).unsqueeze(0)
        count = torch.ones_like(region_uncertainty)
    uncertainty = region_uncertainty / count
    if normalize:
        uncertainty, impurity = _ref_normalize(uncertainty), _ref_normalize(impurity)
    return (impurity * uncertainty)[0, 0]


def reference_greedy(score, active, picks, region_size, suppression):
    """HALO/RIPU's select_pixels_to_label: torch.max over the whole map per pick."""
    score, active = score.clone(), active.clone()
    selected = torch.zeros_like(active)
    score[active] = -float("inf")
    rk, mk = region_size // 2, suppression // 2
    for _ in range(picks):
        values, rows = torch.max(score, dim=0)
        best, col = torch.max(values, dim=0)
        if best == -float("inf"):
            break
        w = col.item()
        h = rows[w].item()
        score[max(h - mk, 0) : h + mk + 1, max(w - mk, 0) : w + mk + 1] = -float("inf")
        active[max(h - mk, 0) : h + mk + 1, max(w - mk, 0) : w + mk + 1] = True
        selected[max(h - rk, 0) : h + rk + 1, max(w - rk, 0) : w + rk + 1] = True
    return selected, active


_REFERENCE_CASES = [("ripu", "ripu", 5), ("halo", "hyper", 11), ("halo_radius", "radius", 11)]


@pytest.mark.parametrize(("strategy", "purity", "suppression"), _REFERENCE_CASES)
@pytest.mark.parametrize(("height", "width", "seed"), [(48, 64, 0), (37, 53, 1), (61, 40, 2)])
def test_reference_setting_reproduces_reference_scores_and_two_rounds_of_selection(
    strategy, purity, suppression, height, width, seed
):
    probs, emb = _smooth_inputs(height, width, seed)
    expected = reference_score(probs, emb, purity)
    score = score_map(strategy, probs, emb, bins=BINS, reference=True)
    assert torch.allclose(score, expected, rtol=0, atol=1e-5)
    picks = picks_per_round(height, width, budget_pct=5, rounds=5, region_size=3, reference=True)
    ref_active = torch.zeros((height, width), dtype=torch.bool)
    active = None
    for _ in range(2):  # the second round must respect the first round's suppression
        ref_selected, ref_active = reference_greedy(expected, ref_active, picks, 3, suppression)
        selected, active = select(
            score, picks=picks, region_size=3, suppression=suppression, active=active
        )
        assert torch.equal(selected, ref_selected)
        assert torch.equal(active, ref_active)


def test_reference_setting_matches_on_random_unsmoothed_inputs():
    gen = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn((19, 33, 47), generator=gen) * 2, dim=0)
    emb = _ball_points(torch.randn((8, 33, 47), generator=gen) * 0.5)
    for strategy, purity, suppression in _REFERENCE_CASES:
        expected = reference_score(probs, emb, purity)
        score = score_map(strategy, probs, emb, reference=True)
        assert torch.allclose(score, expected, rtol=0, atol=1e-5)
        active = torch.zeros((33, 47), dtype=torch.bool)
        ref_selected, _ = reference_greedy(expected, active, 20, 3, suppression)
        selected, _ = select(score, picks=20, region_size=3, suppression=suppression)
        assert torch.equal(selected, ref_selected)


@pytest.mark.parametrize(("side", "num_labels"), [(3, 19), (3, 100), (5, 19), (3, 300), (9, 5)])
def test_reference_impurity_is_bitwise_the_dense_one_hot_computation(side, num_labels):
    gen = torch.Generator().manual_seed(side + num_labels)
    labels = torch.randint(0, num_labels, (29, 45), generator=gen)
    expected, _ = _ref_impurity(labels, num_labels, side)
    assert torch.equal(window_impurity_reference(labels, num_labels, side), expected[0, 0])


def test_reference_ripu_pixel_unit_is_ripus_pixel_selection_score():
    probs, _ = _smooth_inputs(20, 24, seed=5)
    entropy = torch.sum(-probs * torch.log(probs + 1e-6), dim=0)
    one_hot = F.one_hot(torch.argmax(probs, dim=0), num_classes=19).float().permute(2, 0, 1)[None]
    summary = _ref_ones_conv(one_hot, 19, 3)
    dist = summary / torch.sum(summary, dim=1, keepdim=True)
    purity = torch.sum(-dist * torch.log(dist + 1e-6), dim=1)[0]
    score = score_map("ripu", probs, reference=True, unit="pixel")
    assert torch.equal(score, entropy * purity)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_match_cpu():
    probs, emb = _smooth_inputs(40, 56, seed=3)
    for strategy in STRATEGIES:
        if strategy == "random":
            continue
        for reference in (False, True):
            cpu = score_map(strategy, probs, emb, reference=reference)
            gpu = score_map(strategy, probs.to("cuda"), emb.to("cuda"), reference=reference)
            assert gpu.device.type == "cuda"
            assert torch.allclose(gpu.cpu(), cpu, atol=1e-5), (strategy, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reference_setting_reproduces_reference_on_cuda():
    probs, emb = _smooth_inputs(48, 64, seed=0)
    probs, emb = probs.to("cuda"), emb.to("cuda")
    for strategy, purity, suppression in _REFERENCE_CASES:
        expected = reference_score(probs, emb, purity)
        score = score_map(strategy, probs, emb, reference=True)
        assert torch.allclose(score, expected, rtol=0, atol=1e-5)
        active = torch.zeros((48, 64), dtype=torch.bool, device="cuda")
        ref_selected, ref_active = reference_greedy(expected, active, 30, 3, suppression)
        selected, new_active = select(score, picks=30, region_size=3, suppression=suppression)
        assert torch.equal(selected, ref_selected) and torch.equal(new_active, ref_active)


def test_fast_reference_emulations_are_active_on_this_torch():
    """The bitwise CPU emulations pass their self-checks here (else a slow dense path runs).

    A failure means a torch release changed its CPU reduction order: results stay exact
    (the dense fallback), but ``reference=True`` loses most of its speed.
    """
    from halo_ray.acquisition._reference import _entropy_emulation_ok, _radius_emulation_ok
    from halo_ray.acquisition._windows import _cpu_table_matches

    assert _entropy_emulation_ok(19, torch.float32)
    assert _radius_emulation_ok(torch.float32)
    assert _cpu_table_matches(19) and _cpu_table_matches(100)
