"""The multi-class label query's arithmetic against step-by-step versions of the released code.

Each ``released_*`` function (tests/released_multiclass.py) follows MulActSeg's released code
statement by statement; the vectorised functions of :mod:`halo_ray.multiclass` must give the same
labels, orders, clicks and pseudo labels exactly, scores to 1e-6 and losses to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from released_multiclass import (
    blocky_labels,
    released_losses,
    released_pseudo_labels,
    released_region_labels,
    released_scores,
    released_select,
    voronoi,
)

from halo_ray.multiclass import (
    batch_class_mean,
    combine_region_scores,
    partial_label_losses,
    pseudo_labels,
    random_scores,
    region_labels,
    region_means,
    region_scores,
    region_terms,
    select_regions,
)

# ---------------------------------------------------------------------------------------------
# the oracle


@pytest.mark.parametrize("trim", [0, 2, 3, 4, 5])
def test_region_labels_are_the_released_ones(trim):
    rng = np.random.default_rng(trim)
    for _ in range(4):
        spx = voronoi(60, 90, 40, rng)
        label = blocky_labels(60, 90, 19, rng)
        got, sizes = region_labels(label, spx, num_classes=19, trim=trim)
        want, want_sizes = released_region_labels(label, spx, 19, trim)
        assert got.dtype == np.uint8 and got.shape == (40, 20)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(sizes, want_sizes)


def test_region_labels_closed_form():
    # two 6x6 regions side by side; region 0 has class 3 only in its column next to region 1
    spx = np.zeros((6, 12), np.int64)
    spx[:, 6:] = 1
    label = np.full((6, 12), 1, np.int64)
    label[:, 5] = 3  # border column of region 0
    label[0, 11] = 255  # a void pixel in region 1's far corner
    mh, sizes = region_labels(label, spx, num_classes=4, trim=0)
    np.testing.assert_array_equal(mh, [[0, 1, 0, 1, 0], [0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(sizes, [36, 36])
    # trim 3: boundary columns 5 and 6, dilated by 3 -> columns 4..7 are cut; class 3 vanishes
    mh, sizes = region_labels(label, spx, num_classes=4, trim=3)
    np.testing.assert_array_equal(mh, [[0, 1, 0, 0, 0], [0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(sizes, [24, 24])
    # a trim that empties both regions falls back to all their pixels
    mh, sizes = region_labels(label, spx, num_classes=4, trim=13)
    np.testing.assert_array_equal(mh, [[0, 1, 0, 1, 0], [0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(sizes, [36, 36])


def test_region_labels_torch_in_torch_out_and_bad_ids():
    spx = torch.tensor([[0, 0, 2], [0, 0, 2]])
    mh, sizes = region_labels(torch.tensor([[1, 1, 0], [1, 255, 0]]), spx, num_classes=2, trim=0)
    assert isinstance(mh, torch.Tensor)
    assert mh.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]  # id 1 has no pixel
    assert sizes.tolist() == [4, 0, 2]
    with pytest.raises(ValueError, match=r"\[7\].*0\.\.1 or 255"):
        region_labels(np.array([[7, 0]]), np.array([[0, 0]]), num_classes=2)


# ---------------------------------------------------------------------------------------------
# acquisition


@pytest.mark.parametrize("strategy", ["pixbal", "bvsb", "classbal"])
@pytest.mark.parametrize("ban,batch", [(True, None), (True, 2), (False, 3)])
def test_region_scores_are_the_released_ones(strategy, ban, batch):
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    n, k, h, w = 5, 6, 16, 20
    spx = torch.from_numpy(np.stack([voronoi(h, w, 12, rng) for _ in range(n)]))
    logits = torch.randn(n, k, h, w) * 0.3
    logits[:, k - 1, :6] += 2.0  # some regions dominated by the undefined channel
    want = released_scores(strategy, logits, spx, T=0.1, nu=6.0, ban=ban, batch=batch, nseg=12)
    got = region_scores(strategy, logits, spx, ban_void=ban, batch_size=batch)
    present = torch.stack([torch.bincount(s.reshape(-1), minlength=12) > 0 for s in spx])
    assert got.dtype == torch.float32 and got.shape == (n, 12)
    torch.testing.assert_close(got[present], want[present], rtol=0, atol=1e-6)
    assert torch.isinf(got[~present]).all()
    if ban:
        assert (got[present] == 0).any()


def test_region_scores_num_regions_and_available():
    rng = np.random.default_rng(2)
    spx = torch.from_numpy(np.stack([voronoi(12, 12, 6, rng) for _ in range(3)]))
    logits = torch.randn(3, 5, 12, 12)
    want = released_scores("classbal", logits, spx, T=0.1, nu=6.0, ban=True, batch=None, nseg=9)
    avail = torch.ones(3, 9, dtype=torch.bool)
    avail[0, 2] = False
    got = region_scores("classbal", logits, spx, available=avail, num_regions=9)
    torch.testing.assert_close(got[avail], want[avail], rtol=0, atol=1e-6)
    assert got[0, 2] == float("-inf")
    with pytest.raises(ValueError, match="strategy must be one of pixbal, bvsb, classbal"):
        region_scores("halo", logits, spx)
    with pytest.raises(ValueError, match="superpixel id 5 does not fit num_regions=4"):
        region_scores("bvsb", logits, spx, num_regions=4)


def test_pixbal_closed_form():
    # one image, two channels, uniform logits per region: u and the prior are closed form
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = 0.1  # T = 0.1 -> softmax of (1, 0): p1 = e/(1+e)
    spx = torch.tensor([[[0, 1]]])
    got = region_scores("pixbal", logits, spx, ban_void=False, nu=6.0)
    e = np.e
    p1 = e / (1 + e)
    prior = np.array([(p1 + 0.5) / 2, (1 - p1 + 0.5) / 2])
    w = (6 * prior + 1) ** -2.0
    u0 = (1 - p1) / p1 + 1e-8
    u1 = 1.0 + 1e-8
    # pixel 1 is a tie: topk's top-1 is channel 0 on CPU
    np.testing.assert_allclose(got.numpy()[0], [u0 * w[0], u1 * w[0]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# selection


def test_select_regions_reference_is_the_released_loop():
    rng = np.random.default_rng(3)
    for trial in range(20):
        scores = rng.random((4, 30)).astype(np.float32)
        scores[rng.random((4, 30)) < 0.3] = 0.0  # frequent ties (banned regions)
        multihot = (rng.random((4, 30, 6)) < 0.35).astype(np.uint8)
        available = rng.random((4, 30)) < 0.8
        budget = int(rng.integers(1, 60))
        order, clicks = select_regions(scores, multihot, budget=budget, available=available, reference=True)
        want, want_clicks = released_select(scores, multihot, budget, available)
        assert [tuple(r) for r in order.tolist()] == want, trial
        assert clicks == want_clicks


def test_select_regions_default_never_overspends():
    rng = np.random.default_rng(4)
    for _ in range(20):
        scores = rng.random((3, 25))
        multihot = (rng.random((3, 25, 5)) < 0.4).astype(np.uint8)
        budget = int(rng.integers(1, 40))
        order, clicks = select_regions(scores, multihot, budget=budget, available=None)
        ref, ref_clicks = select_regions(scores, multihot, budget=budget, available=None, reference=True)
        bits = multihot.sum(2)
        assert clicks == int(bits[order[:, 0], order[:, 1]].sum()) <= budget
        assert len({tuple(r) for r in order.tolist()}) == len(order)
        if ref_clicks > budget:  # the released rule spent over: ours is its prefix without the last pick
            np.testing.assert_array_equal(order, ref[:-1])
        else:
            np.testing.assert_array_equal(order, ref)


def test_select_regions_closed_form_and_bad_budget():
    scores = np.array([[0.9, 0.5, 0.7]])
    multihot = np.array([[[1, 1, 0], [1, 0, 0], [1, 1, 1]]])
    order, clicks = select_regions(scores, multihot, budget=4, available=None)
    assert order.tolist() == [[0, 0]] and clicks == 2  # next (3 clicks) would make 5 > 4
    order, clicks = select_regions(scores, multihot, budget=4, available=None, reference=True)
    assert order.tolist() == [[0, 0], [0, 2]] and clicks == 5
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="budget must be a whole number of clicks >= 1"):
            select_regions(scores, multihot, budget=bad, available=None)
    with pytest.raises(ValueError, match="NaN"):
        select_regions(np.array([[np.nan, 1.0, 0.0]]), multihot, budget=4, available=None)


# ---------------------------------------------------------------------------------------------
# stage 1


def test_partial_label_losses_are_the_released_ones():
    rng = np.random.default_rng(5)
    torch.manual_seed(5)
    n, k, h, w, r = 3, 7, 18, 22, 15
    spx = torch.from_numpy(np.stack([voronoi(h, w, r, rng) for _ in range(n)]))
    multihot = torch.from_numpy((rng.random((n, r, k)) < 0.3).astype(np.uint8))
    multihot[0, :3] = 0
    multihot[0, 0, 2] = 1  # one-class regions
    multihot[0, 1, 4] = 1
    selected = torch.from_numpy(rng.random((n, r)) < 0.5)
    logits = torch.randn(n, k, h, w, requires_grad=True)
    got = partial_label_losses(logits, multihot, spx, selected)
    ce, mp, pp = released_losses(logits.detach(), multihot, spx, selected, 0.1)
    torch.testing.assert_close(got["ce"].detach(), torch.as_tensor(ce, dtype=torch.float32), rtol=1e-5, atol=0)
    torch.testing.assert_close(got["mp"].detach(), torch.as_tensor(mp, dtype=torch.float32), rtol=1e-5, atol=0)
    torch.testing.assert_close(got["pp"].detach(), torch.as_tensor(pp, dtype=torch.float32), rtol=1e-5, atol=0)
    total = 16 * got["ce"] + 8 * got["mp"] + got["pp"]
    torch.testing.assert_close(got["total"], total)
    got["total"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # only pixels of selected regions receive gradient
    inside = torch.stack([selected[i][spx[i]] for i in range(n)])
    assert logits.grad.abs().sum(1)[~inside].max() == 0


def test_partial_label_losses_closed_form():
    # one pixel of a one-class region {1} and one of a two-class region {0, 1}; T = 1
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # uniform: p = 1/3
    multihot = torch.tensor([[[0, 1, 0], [1, 1, 0]]])
    spx = torch.tensor([[[0, 1]]])
    got = partial_label_losses(logits, multihot, spx, torch.tensor([[True, True]]), temperature=1.0)
    third = np.log(1 / 3 + 1e-8)
    assert got["ce"].item() == pytest.approx(-third / 2, rel=1e-6)  # 1 pixel, normaliser 1 + 1
    assert got["mp"].item() == pytest.approx(-np.log(2 / 3 + 1e-8) / 2, rel=1e-6)
    assert got["pp"].item() == pytest.approx(-2 * third / 3, rel=1e-6)  # two (region, class) terms
    nothing = partial_label_losses(logits, multihot, spx, torch.tensor([[False, False]]))
    assert nothing["total"].item() == 0.0


# ---------------------------------------------------------------------------------------------
# stage 2


@pytest.mark.parametrize("seed", range(6))
def test_pseudo_labels_are_the_released_ones(seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    h, w, r, k, d = 24, 30, 20, 6, 8
    spx = torch.from_numpy(voronoi(h, w, r, rng))
    feat = torch.nn.functional.normalize(torch.randn(d, h // 2, w // 2), dim=0)
    feat = torch.nn.functional.interpolate(feat[None], size=(h, w), mode="bilinear")[0]  # ties, unnormalised
    logits = torch.nn.functional.interpolate(torch.randn(1, k, h // 2, w // 2), size=(h, w), mode="bilinear")[0]
    multihot = torch.from_numpy((rng.random((r, k)) < 0.35).astype(np.uint8))
    multihot[0] = 0  # a selected region with an empty answer is skipped
    selected = torch.from_numpy(rng.random(r) < 0.4)
    selected[0] = True
    got = pseudo_labels(feat, logits, multihot, spx, selected)
    want = released_pseudo_labels(feat, logits, multihot.bool(), spx, selected)
    assert got.dtype == torch.int64 and got.shape == (h, w)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # expansion reached beyond the selected regions
    inside = selected[spx] & multihot.bool().any(1)[spx]
    assert (got[~inside] != 255).any()


def test_pseudo_labels_closed_form():
    # regions 0 | 1 | 2 in columns; region 0 selected with {0, 1}; features one-hot per column
    spx = torch.tensor([[0, 0, 1, 1, 2, 2]])
    feat = torch.tensor([[[1.0, 0.9, 0.8, 0.0, 0.0, 0.0]], [[0.0, 0.1, 0.2, 1.0, 1.0, 1.0]]])
    logits = torch.tensor([[[5.0, 0.0, 0, 0, 0, 0]], [[0.0, 5.0, 0, 0, 0, 0]]])
    multihot = torch.tensor([[1, 1], [0, 0], [0, 0]])
    got = pseudo_labels(feat, logits, multihot, spx, torch.tensor([True, False, False]))
    # prototypes: class 0 = pixel 0 (1, 0), class 1 = pixel 1 (0.9, 0.1); pixel 0 -> class 0
    # (sim 1.0 vs 0.9), pixel 1 -> class 0 (0.9 vs 0.82); class 1 wins nothing: threshold 1.0;
    # class 0's threshold is the lower median of (1.0, 0.9) = 0.9. Region 1 is adjacent:
    # pixel 2 (0.8, 0.2): sims 0.8 / 0.74, neither above its threshold -> stays 255.
    assert got.tolist() == [[0, 0, 255, 255, 255, 255]]
    none = pseudo_labels(feat, logits, multihot, spx, torch.tensor([False, False, False]))
    assert (none == 255).all()


def test_region_means_of_any_score_map():
    from halo_ray.acquisition import score_map

    rng = np.random.default_rng(7)
    spx = torch.from_numpy(np.stack([voronoi(20, 24, 9, rng) for _ in range(2)]))
    probs = torch.softmax(torch.randn(2, 5, 20, 24), dim=1)
    score = torch.stack([score_map("entropy", p, region_size=3) for p in probs])
    got = region_means(score, spx)
    for n in range(2):
        for j in range(9):
            pix = score[n][spx[n] == j]
            want = pix.mean() if pix.numel() else torch.tensor(0.0)
            assert got[n, j].item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    with pytest.raises(ValueError, match="NaN or inf"):
        region_means(torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2, 2, dtype=torch.int64))


def test_random_scores_are_seeded():
    a = random_scores((3, 7), torch.Generator().manual_seed(1))
    b = random_scores((3, 7), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 7) and 0 <= a.min() and a.max() < 1


@pytest.mark.parametrize("strategy", ["pixbal", "bvsb", "classbal"])
def test_scoring_a_pool_chunk_by_chunk_equals_scoring_it_at_once(strategy):
    rng = np.random.default_rng(8)
    torch.manual_seed(8)
    n, k, r = 7, 5, 10
    spx = torch.from_numpy(np.stack([voronoi(14, 18, r, rng) for _ in range(n)]))
    logits = torch.randn(n, k, 14, 18)
    whole = region_scores(strategy, logits, spx, batch_size=3, num_regions=r, available=torch.ones(n, r, dtype=torch.bool))
    chunks = [slice(0, 3), slice(3, 6), slice(6, 7)]  # the scorer's batches
    prior = torch.stack([batch_class_mean(logits[c]) for c in chunks]).mean(0)
    parts = [region_terms(strategy, logits[c], spx[c], prior=prior, num_regions=r) for c in chunks]
    means = torch.cat([m for m, _ in parts])
    dominant = torch.cat([d for _, d in parts])
    streamed = combine_region_scores(strategy, means, dominant, num_channels=k)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="pixbal needs the class prior"):
        region_terms("pixbal", logits, spx)
