"""Losses and metrics against closed-form values; loop semantics of a whole run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from halo_ray.config import build_config
from halo_ray.run import run_experiment
from halo_ray.training import (
    confusion_matrix,
    iou_from_confusion,
    local_consistency_loss,
    negative_learning_loss,
    poly_lr,
    radius_iou_spearman,
)


def test_confusion_and_iou_closed_form():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    conf = confusion_matrix(pred, label, 4)
    assert conf.sum() == 6  # ignore pixels dropped
    iou = iou_from_confusion(conf)
    # class 0: tp 1, fp 1 (a 2 predicted as 0), fn 1 → 1/3; class 1: tp 2, fp 1 → 2/3; class 2: tp 1, fn 1 → 1/2
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])  # absent class is NaN, not 0


def test_negative_learning_closed_form():
    # two classes above the threshold, two below: loss = mean over negatives of -log(1-p)
    probs = torch.tensor([0.6, 0.38, 0.01, 0.01])
    logits = probs.log().view(1, 4, 1, 1)
    expected = -math.log(1 - 0.01)
    assert negative_learning_loss(logits).item() == pytest.approx(expected, rel=1e-5)


def test_local_consistency_is_cross_entropy_of_the_window_mean():
    logits = torch.zeros(1, 2, 3, 3)
    logits[0, 0, 1, 1] = math.log(9.0)  # centre pixel: p = (0.9, 0.1); all others 0.5/0.5
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    labels[0, 0, 0] = 255
    loss = local_consistency_loss(logits, labels)
    # mean prob of class 0 in each window (windows clipped at the border, not zero-padded)
    def window_mean(r, c):
        rows = range(max(0, r - 1), min(3, r + 2))
        cols = range(max(0, c - 1), min(3, c + 2))
        vals = [0.9 if (i, j) == (1, 1) else 0.5 for i in rows for j in cols]
        return sum(vals) / len(vals)
    terms = [-math.log(window_mean(r, c)) for r in range(3) for c in range(3) if (r, c) != (0, 0)]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_radius_iou_spearman():
    radius = np.array([1.0, 2.0, 3.0, np.nan, 4.0])
    iou = np.array([90.0, 80.0, 70.0, 50.0, 10.0])
    assert radius_iou_spearman(radius, iou) == pytest.approx(-1.0)
    assert math.isnan(radius_iou_spearman(np.array([1.0, 2.0]), np.array([1.0, 2.0])))


def _quiet(_: str) -> None:
    pass


def test_retrain_restarts_from_the_source_model_each_round(tiny_config_values, tmp_path):
    values = {**tiny_config_values, "rounds": 2, "strategy": "entropy"}
    # no training after selection: a retrain round is exactly the source model again
    frozen = run_experiment(
        build_config({**values, "loop": "retrain", "round_steps": 0}), tmp_path / "a", log=_quiet, tensorboard=False
    )
    assert frozen["miou"].nunique() == 1
    assert frozen["labelled_pct"].is_monotonic_increasing and frozen["labelled_pct"].iloc[-1] > 0
    retrain = run_experiment(build_config({**values, "loop": "retrain"}), tmp_path / "b", log=_quiet, tensorboard=False)
    continuous = run_experiment(build_config(values), tmp_path / "c", log=_quiet, tensorboard=False)
    # retrain's source phase has its own schedule (poly over source_steps), shared with `frozen`
    assert retrain["miou"].iloc[0] == frozen["miou"].iloc[0]
    assert continuous["miou"].iloc[0] != retrain["miou"].iloc[0]  # poly over source + rounds
    assert retrain["miou"].iloc[2] != frozen["miou"].iloc[2]
