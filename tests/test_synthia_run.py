"""SYNTHIA → Cityscapes: a run on the 16 shared classes with the papers' mIoU and mIoU*."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from png_writer import write_png

from halo_ray.config import build_config
from halo_ray.data import GTAVDataset, open_dataset, synthia_miou
from halo_ray.data.synthia import SYNTHIA_ABSENT_TRAIN_IDS, SYNTHIA_LABELS
from halo_ray.results import IOU_COLUMNS
from halo_ray.run import run_experiment


@pytest.fixture(scope="module")
def synthia_root(tiny_benchmark, tmp_path_factory):
    """The tiny benchmark's source re-written as SYNTHIA RAND_CITYSCAPES: RGB copies and 16-bit
    labels of SYNTHIA ids (pixels of terrain, truck and train, which SYNTHIA lacks, are void)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("synthia") / "RAND_CITYSCAPES"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    to_synthia = np.zeros(256, np.uint16)  # trainId → SYNTHIA id; void (0) for the rest
    for entry in SYNTHIA_LABELS:
        if entry.train_id != 255:
            to_synthia[entry.train_id] = entry.synthia_id
    gtav = GTAVDataset(tiny_benchmark / "gtav")
    for i in range(len(gtav)):
        sample = gtav[i]
        name = f"{i:07d}.png"
        Image.fromarray(sample.image).save(root / "RGB" / name)
        ids = to_synthia[sample.label]  # [H, W] uint16
        write_png(root / "GT" / "LABELS" / name, np.stack([ids, np.zeros_like(ids), np.zeros_like(ids)], axis=-1))
    return root


def test_synthia_source_run_trains_and_scores_16_classes(synthia_root, tiny_config_values, tmp_path):
    values = {**tiny_config_values, "source": "synthia", "source_root": str(synthia_root), "rounds": 2,
              "log_images": 2}
    cfg = build_config(values)
    out = tmp_path / "run"
    frame = run_experiment(cfg, out, log=lambda _: None, tensorboard=False)
    absent = [IOU_COLUMNS[t] for t in SYNTHIA_ABSENT_TRAIN_IDS]  # iou_terrain, iou_truck, iou_train
    assert frame[absent].isna().all().all()  # never in the ground truth, never predicted
    present = frame[[c for c in IOU_COLUMNS if c not in absent]]
    # mIoU is the papers' 16-class mean, mIoU* the 13-class one (without wall, fence, pole)
    for (_, row), (_, ious) in zip(frame.iterrows(), present.iterrows(), strict=True):
        vec = np.full(19, np.nan)
        vec[[IOU_COLUMNS.index(c) for c in present.columns]] = ious.to_numpy(dtype=float)
        assert row["miou"] == pytest.approx(synthia_miou(vec, classes=16))
        assert row["miou13"] == pytest.approx(synthia_miou(vec, classes=13))
        assert not math.isclose(row["miou"], row["miou13"])
    # the oracle reveals no pixel of the three classes, and predictions never use them
    (trial,) = frame["trial_id"].unique()
    truth = open_dataset("cityscapes", cfg.target_path, split="train")
    for r in (1, 2):
        snap = np.load(out / "snapshots" / trial / f"round_{r:03d}.npz")
        assert not np.isin(snap["prediction"], SYNTHIA_ABSENT_TRAIN_IDS).any()
        assert not np.isin(snap["label"], SYNTHIA_ABSENT_TRAIN_IDS).any()  # the run's view of the target
        raw = np.stack([truth.load_label(int(i)) for i in snap["index"]])
        assert np.isin(raw, SYNTHIA_ABSENT_TRAIN_IDS).any()  # …while the files do hold them
    assert pd.read_parquet(out / "results")["miou13"].notna().all()


def test_other_sources_leave_miou13_empty(tiny_config_values, tmp_path):
    frame = run_experiment(build_config({**tiny_config_values, "rounds": 1}), tmp_path / "run", log=lambda _: None,
                           tensorboard=False)
    assert frame["miou13"].isna().all()


def test_a_synthia_run_never_predicts_the_classes_synthia_lacks():
    """Even a model biased towards terrain predicts and scores only the 16 shared classes."""
    import torch

    from halo_ray.losses import negative_learning_loss
    from halo_ray.training import Trainer

    probe = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8)
    for source, expect_absent in (("gtav", True), ("synthia", False)):
        cfg = build_config(dict(source=source, geometry="euclidean", strategy="entropy", embed_dim=8, device="cpu"))
        trainer = Trainer(cfg, 19, torch.device("cpu"))
        with torch.no_grad():
            trainer.model.head.classifier.bias[9] = 100.0  # terrain everywhere, unless masked
        probs, _, _ = trainer.predict(probe)
        assert (probs.argmax(dim=1) == 9).all() == expect_absent
        if not expect_absent:
            assert (probs[:, list(SYNTHIA_ABSENT_TRAIN_IDS)] == 0).all()
            torch.testing.assert_close(probs.sum(dim=1), torch.ones_like(probs[:, 0]))
    # negative learning counts only the trained classes as complementary labels
    logits = torch.zeros(1, 19, 1, 1)
    logits[0, list(SYNTHIA_ABSENT_TRAIN_IDS)] = -1.0e4
    classes = torch.ones(19, dtype=torch.bool)
    classes[list(SYNTHIA_ABSENT_TRAIN_IDS)] = False
    logits[0, 0] = -3.0  # road: the one trained class below the 0.05 threshold
    p_road = logits.softmax(dim=1)[0, 0, 0, 0].item()
    assert p_road < 0.05 < logits.softmax(dim=1)[0, 1, 0, 0].item()
    expected = -math.log(1.0 - p_road + 1e-6)  # road alone, not diluted by the 3 absent classes
    assert negative_learning_loss(logits, classes=classes).item() == pytest.approx(expected, rel=1e-5)
    absent = -torch.log(torch.tensor(1.0) + 1e-6).item()  # p = 0: -log(1 + 1e-6), in float32 as computed
    diluted = (expected + 3 * absent) / 4
    assert negative_learning_loss(logits).item() == pytest.approx(diluted, rel=1e-5)
