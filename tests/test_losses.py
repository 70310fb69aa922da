"""RIPU's and HALO's auxiliary losses (halo_ray.losses) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from halo_ray.losses import label_boundary, local_consistency_loss, negative_learning_loss


def _logits_from_probs(probs: list[list[float]]) -> torch.Tensor:
    """``[C][P]`` probabilities of P pixels in a row -> logits ``[1, C, 1, P]`` with that softmax."""
    return torch.tensor(probs, dtype=torch.float64).log().view(1, len(probs), 1, len(probs[0]))


# ------------------------------------------------------------------------------------------
# negative learning: Σ −m·log(1 − p + 1e-6) / Σ m over the whole batch
# ------------------------------------------------------------------------------------------
def test_negative_learning_sums_over_pairs_then_divides_by_the_count_of_negatives():
    # pixel 0: two classes below 0.05 (0.01, 0.02); pixel 1: one (0.03); batch of 2 images
    p0 = [0.6, 0.37, 0.01, 0.02]
    p1 = [0.5, 0.4, 0.07, 0.03]
    logits = _logits_from_probs([[p0[c], p1[c]] for c in range(4)])
    batch = torch.cat([logits, logits.flip(-1)])  # [2, 4, 1, 2]
    terms = [-math.log(1 - q + 1e-6) for q in (0.01, 0.02, 0.03)]
    expected = 2 * sum(terms) / 6  # 6 negative pairs in the batch
    assert negative_learning_loss(batch).item() == pytest.approx(expected, rel=1e-12)
    # not the per-pixel mean averaged over pixels, which weighs pixel 1's single negative twice as much
    per_pixel = ((terms[0] + terms[1]) / 2 + terms[2]) / 2
    assert abs(expected - per_pixel) > 1e-4


def test_negative_learning_threshold_and_classes():
    logits = _logits_from_probs([[0.9], [0.06], [0.04]])
    assert negative_learning_loss(logits).item() == pytest.approx(-math.log(1 - 0.04 + 1e-6), rel=1e-12)
    both = (-math.log(1 - 0.06 + 1e-6) - math.log(1 - 0.04 + 1e-6)) / 2
    assert negative_learning_loss(logits, threshold=0.1).item() == pytest.approx(both, rel=1e-12)
    only_1 = torch.tensor([True, True, False])
    assert negative_learning_loss(logits, threshold=0.1, classes=only_1).item() == pytest.approx(
        -math.log(1 - 0.06 + 1e-6), rel=1e-12
    )
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], but got threshold=0"):
        negative_learning_loss(logits, threshold=0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\], but got shape \(3, 4\)"):
        negative_learning_loss(torch.zeros(3, 4))


def test_negative_learning_without_negatives_is_zero_not_nan_and_differentiable():
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)  # uniform: every p = 1/3 > 0.05
    loss = negative_learning_loss(logits)
    assert loss.item() == 0.0 and loss.dim() == 0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_negative_learning_gradient_pushes_negatives_down_through_a_detached_mask():
    logits = torch.log(torch.tensor([0.9, 0.08, 0.02], dtype=torch.float64)).view(1, 3, 1, 1)
    logits.requires_grad_(True)
    negative_learning_loss(logits).backward()
    # d/dz_j of -log(1 - p_2 + 1e-6) = p_2 (δ_2j - p_j) / (1 - p_2 + 1e-6); the mask has no gradient
    p = torch.tensor([0.9, 0.08, 0.02], dtype=torch.float64)
    expected = p[2] * ((torch.arange(3) == 2).double() - p) / (1 - p[2] + 1e-6)
    torch.testing.assert_close(logits.grad.view(3), expected, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: negative_learning_loss(z), (logits.detach().requires_grad_(),))


# ------------------------------------------------------------------------------------------
# label boundaries: non-zero 8-neighbour Laplacian, zero padding, void centres excluded
# ------------------------------------------------------------------------------------------
def test_boundary_rule_at_image_borders_and_for_class_zero():
    # a class-0 image has no boundary at all (its zero padding is class 0 too) ...
    assert not label_boundary(torch.zeros(1, 4, 5, dtype=torch.long)).any()
    # ... while every border pixel of a class-2 image is one (the zero padding differs) and no
    # interior pixel is
    two = label_boundary(torch.full((1, 4, 5), 2, dtype=torch.long))[0]
    border = torch.ones(4, 5, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(two, border)


def test_boundary_rule_between_classes_with_void_and_a_balanced_neighbourhood():
    labels = torch.tensor(
        [[
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 255],
            [0, 0, 0, 0, 0],
        ]]
    )
    got = label_boundary(labels)[0]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:4, 1:4] = True  # the class-1 pixel and its 8 class-0 neighbours
    expected[2:5, 3:5] = True  # the 8 class-0 neighbours of the void pixel ...
    expected[3, 4] = False  # ... but not the void pixel itself
    assert torch.equal(got, expected)
    # a pixel whose neighbours sum to 8 times its own id is no boundary (the released rule)
    balanced = torch.tensor([[[1, 1, 1], [3, 2, 3], [1, 3, 3]]])  # centre: 8·2 = 1+1+1+3+3+1+3+3
    expected = torch.ones(3, 3, dtype=torch.bool)
    expected[1, 1] = False
    expected[2, 0] = False  # 8·1 = 3 + 2 + 3 (in-image neighbours) + 0 (padding): balanced too
    assert torch.equal(label_boundary(balanced)[0], expected)


# ------------------------------------------------------------------------------------------
# local consistency: mean over boundary pixels of Σ_c |p_c − mean_3x3(p)_c|, replicate padding
# ------------------------------------------------------------------------------------------
def test_local_consistency_closed_form_on_a_row_with_replicate_padding():
    # one image, 1 x 3 pixels, two classes; p(class 0) = a, b, d along the row
    a, b, d = 0.9, 0.3, 0.6
    logits = _logits_from_probs([[a, b, d], [1 - a, 1 - b, 1 - d]])
    labels = torch.tensor([[[0, 1, 1]]])  # every pixel is a boundary pixel (see the boundary rule)
    assert label_boundary(labels).all()
    # replicate padding: the 3x3 window of a 1-row image repeats the row thrice and the end columns
    means = [(2 * a + b) / 3, (a + b + d) / 3, (b + 2 * d) / 3]
    # two classes: |p0 - m0| + |p1 - m1| = 2 |p0 - m0|
    expected = sum(2 * abs(q - m) for q, m in zip((a, b, d), means, strict=True)) / 3
    assert local_consistency_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)


def test_local_consistency_averages_over_boundary_pixels_only_and_skips_void():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    labels = torch.zeros(2, 6, 7, dtype=torch.long)
    labels[0, 2:4, 2:5] = 3
    labels[1, :, 4:] = 255  # void half: only the class-0 pixels next to it count
    probs = logits.softmax(dim=1)
    padded = torch.nn.functional.pad(probs, (1, 1, 1, 1), mode="replicate")
    window = sum(padded[:, :, i : i + 6, j : j + 7] for i in range(3) for j in range(3)) / 9
    discrepancy = (probs - window).abs().sum(dim=1)
    mask = label_boundary(labels)
    assert mask[1, :, 4:].sum() == 0 and mask[1, :, 3].all() and mask[1, :, :3].sum() == 0
    expected = discrepancy[mask].mean()
    torch.testing.assert_close(local_consistency_loss(logits, labels), expected, rtol=1e-12, atol=0)


def test_local_consistency_without_boundary_is_zero_not_nan_and_is_differentiable():
    logits = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss = local_consistency_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long))  # class 0: no boundary
    assert loss.item() == 0.0 and loss.dim() == 0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    labels = torch.randint(0, 3, (1, 4, 4))
    assert torch.autograd.gradcheck(
        lambda z: local_consistency_loss(z, labels), (torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True),)
    )


def test_local_consistency_rejects_mismatched_labels():
    with pytest.raises(ValueError, match=r"labels must have shape \[B, H, W\] = \[1, 4, 4\].*\[1, 4, 5\]"):
        local_consistency_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
