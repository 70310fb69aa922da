"""Runs with the multi-class label query (unit: multiclass): clicks within budget, answers from
ground truth, rows that carry clicks, and resumes that repeat the uninterrupted run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from halo_ray.config import ConfigError, build_config
from halo_ray.data import open_dataset
from halo_ray.data.superpixels import CachedSuperpixels
from halo_ray.multiclass import region_labels
from halo_ray.run import ActiveLearningRun, load_checkpoint, run_experiment


def _quiet(_: str) -> None:
    pass


def _values(tiny_config_values, tmp_path, **extra):
    return {
        **tiny_config_values, "unit": "multiclass", "strategy": "pixbal", "clicks_per_round": 40,
        "superpixels": "grid", "num_superpixels": 32, "geometry": "cosine", "log_images": 0,
        "superpixel_cache": str(tmp_path / "spx"), **extra,
    }


@pytest.mark.parametrize("strategy", ["pixbal", "classbal", "halo_radius", "random"])
def test_a_multiclass_run_spends_its_clicks_and_records_them(tiny_config_values, tmp_path, strategy):
    geometry = "hyperbolic" if strategy == "halo_radius" else "cosine"
    cfg = build_config(_values(tiny_config_values, tmp_path, strategy=strategy, geometry=geometry))
    out = tmp_path / "run"
    rows = run_experiment(cfg, out, log=_quiet, tensorboard=False)
    assert rows["round"].tolist() == [0, 1, 2, 3]
    assert rows["unit"].tolist() == ["multiclass"] * 4
    assert rows["click_budget"].tolist() == [0, 40, 80, 120]
    clicks = rows["clicks"].tolist()
    assert clicks[0] == 0 and all(c <= b for c, b in zip(clicks, rows["click_budget"], strict=True))
    assert all(b - a > 0 for a, b in zip(clicks, clicks[1:], strict=False))  # every round spent some
    # the pool's answers are the ground truth's, one click per class named (void billed)
    pool = load_checkpoint(out / "checkpoints" / "round_003.pt")["pool"]
    target = open_dataset("cityscapes", cfg.target_path, split="train")
    source = CachedSuperpixels(target, cfg.superpixel_cache, method="grid", num_superpixels=32)
    counts = pool["counts"].tolist()
    regions = np.split(pool["regions"].numpy(), np.cumsum(counts)[:-1])
    answers = np.split(np.unpackbits(pool["answers"].numpy(), axis=1, count=20), np.cumsum(counts)[:-1])
    spent = 0
    for i, (ids, got) in enumerate(zip(regions, answers, strict=True)):
        want, _ = region_labels(target.load_label(i), source(i), num_classes=19, trim=cfg.trim)
        np.testing.assert_array_equal(got, want[ids])
        assert np.unique(ids).size == ids.size  # never answered twice
        spent += int(got.sum())
    assert spent == clicks[-1]
    # pseudo labels: every pixel of an answered region with a class gets one, some beyond
    coverage, precision = rows["pseudo_coverage"].tolist(), rows["pseudo_precision"].tolist()
    assert coverage[0] == 0.0 and (precision[0] is None or np.isnan(precision[0]))
    inside = sum(int(np.isin(source(i), ids[got[:, :19].any(1)]).sum()) for i, (ids, got) in enumerate(zip(regions, answers, strict=True)))
    assert coverage[-1] >= inside / (8 * 64 * 128) > 0
    assert 0 < precision[-1] <= 1


def test_reference_keeps_the_released_overshoot(tiny_config_values, tmp_path):
    per_round = {}
    for reference in (False, True):
        cfg = build_config(_values(tiny_config_values, tmp_path, reference=reference, rounds=1,
                                   source_cache=str(tmp_path / "cache")))
        rows = run_experiment(cfg, tmp_path / f"run{reference}", log=_quiet, tensorboard=False)
        per_round[reference] = int(rows["clicks"].iloc[-1])
    assert per_round[False] <= 40 < per_round[True]


def test_a_killed_multiclass_run_resumes_to_the_same_state(tiny_config_values, tmp_path):
    cfg = build_config(_values(tiny_config_values, tmp_path))
    full = run_experiment(cfg, tmp_path / "full", log=_quiet, tensorboard=False)
    part = ActiveLearningRun(cfg, tmp_path / "part", log=_quiet, tensorboard=False)
    part.start_or_resume(False)
    part.run_round(1)  # then the process "dies"
    resumed = ActiveLearningRun(cfg, tmp_path / "part", log=_quiet, tensorboard=False).execute(resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "round_003.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "round_003.pt")
    for key, value in a["pool"].items():
        assert torch.equal(value, b["pool"][key]) if isinstance(value, torch.Tensor) else value == b["pool"][key], key
    for name, tensor in a["learner"]["trainer"]["model"].items():
        assert torch.equal(tensor, b["learner"]["trainer"]["model"][name]), name
    cols = ["round", "clicks", "click_budget", "labelled_pct", "miou"]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"clicks_per_round": None}, "unit multiclass needs clicks_per_round"),
        ({"clicks_per_round": 0}, "unit multiclass needs clicks_per_round"),
        ({"strategy": "margins"}, "unit multiclass: strategy must be one of"),
        ({"trim": -1}, "trim must be an integer >= 0"),
        ({"num_superpixels": 0}, "num_superpixels must be an integer >= 1"),
        ({"stage1_weights": [16, 8]}, r"stage1_weights are the weights .* but got stage1_weights=\[16.0, 8.0\]"),
        ({"stage1_weights": [0, 0, 0]}, "not all 0"),
        ({"stage1_weights": [1, -1, 1]}, "three finite numbers >= 0"),
    ],
)
def test_bad_multiclass_settings_are_named(tiny_config_values, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        build_config(_values(tiny_config_values, tmp_path, **extra))
    with pytest.raises(ConfigError, match="pixbal, bvsb and classbal score superpixels"):
        build_config({**tiny_config_values, "strategy": "pixbal"})


def test_stage_two_models_are_recorded_and_leave_stage_one_untouched(tiny_config_values, tmp_path):
    """stage2_steps > 0: each round also trains a model anew from the source on the pseudo
    labels and records its mIoU; the stage-1 run (its acquisition, model and rows) is exactly
    the run without stage 2, as released (stage-2 models never acquire)."""
    rows = {}
    for steps in (0, 4):
        cfg = build_config(_values(tiny_config_values, tmp_path, rounds=2, stage2_steps=steps,
                                   source_cache=str(tmp_path / "cache")))
        rows[steps] = run_experiment(cfg, tmp_path / f"run{steps}", log=_quiet, tensorboard=False)
    assert rows[0]["miou_stage2"].isna().all()
    assert rows[4]["miou_stage2"].isna().tolist() == [True, False, False]  # round 0 has no answers
    assert (rows[4]["miou_stage2"].iloc[1:] > 0).all()
    cols = ["round", "clicks", "labelled_pct", "miou", "pixel_acc", "pseudo_coverage", "pseudo_precision"]
    pd.testing.assert_frame_equal(rows[0][cols], rows[4][cols])
    a = load_checkpoint(tmp_path / "run0" / "checkpoints" / "round_002.pt")["learner"]
    b = load_checkpoint(tmp_path / "run4" / "checkpoints" / "round_002.pt")["learner"]
    for name, tensor in a["trainer"]["model"].items():
        assert torch.equal(tensor, b["trainer"]["model"][name]), name
    assert torch.equal(a["generator"], b["generator"])


def test_the_undefined_output_is_learned_banned_and_never_predicted(tiny_config_values, tmp_path):
    """undefined_output: the model has C + 1 outputs, the last one trained from the answers'
    void bit; evaluation's argmax runs over the C classes only, so a model whose "undefined"
    wins every pixel still predicts its best class (closed form: one class everywhere)."""
    cfg = build_config(_values(tiny_config_values, tmp_path, undefined_output=True, rounds=2, stage2_steps=3))
    run = ActiveLearningRun(cfg, tmp_path / "run", log=_quiet, tensorboard=False)
    rows = run.execute()
    assert rows["clicks"].iloc[-1] <= 80 and np.isfinite(rows["miou_stage2"].iloc[-1])
    head = run.learner.trainer.model.head
    assert head.weight.shape[0] == 20
    # the void bit reaches training: answers of void-holding regions keep their 20th column
    targets = run.learner._target_labels
    assert any(targets.entry(i)[0][targets.entry(i)[1]][:, 19].any() for i in targets.labelled_images().tolist())
    # every pixel's feature is one unit vector w; the undefined weight is w, the classes' random
    trainer = run.learner.trainer
    with torch.no_grad():
        w = torch.randn(head.reduce.out_channels, generator=torch.Generator().manual_seed(3))
        head.reduce.weight.zero_()
        head.reduce.bias.copy_(w)
        head.weight[19] = w
    winner = int(torch.nn.functional.normalize(head.weight[:19], dim=1).mv(w).argmax())
    truth = np.concatenate([np.asarray(lab).reshape(-1) for _, lab in run.learner.data.target_val.items(
        list(range(len(run.learner.data.target_val))), image=False)])
    truth = truth[truth != 255]
    present = set(np.unique(truth).tolist()) | {winner}
    want = 100.0 * (truth == winner).sum() / truth.size / len(present)
    assert trainer.evaluate(run.learner.data.target_val).miou == pytest.approx(want, rel=1e-9)
    assert run.learner.snapshot([0])["prediction"].max() == winner


def test_undefined_output_needs_the_multiclass_unit(tiny_config_values):
    with pytest.raises(ConfigError, match="undefined_output=true .* needs unit: multiclass, but got unit='region'"):
        build_config({**tiny_config_values, "undefined_output": True})


def test_round_model_best_goes_on_with_each_rounds_best_validation(tiny_config_values, tmp_path):
    """round_model: best (the released loop): each round reports, checkpoints and acquires with
    the best of its validations; the row's mIoU is that validation's, and the round's
    checkpoint holds that model (a fresh evaluation of it gives the same mIoU)."""
    lines: list[str] = []
    cfg = build_config(_values(tiny_config_values, tmp_path, rounds=2, round_steps=6, eval_every=2,
                               round_model="best", loop="retrain"))
    run = ActiveLearningRun(cfg, tmp_path / "run", log=lines.append, tensorboard=False)
    ends: list[tuple[str, bool]] = []  # per round: which model it went on with; kept weights left?
    round_model = run._round_model

    def spied(ev):
        chosen = round_model(ev)
        ends.append(("last" if chosen is ev else "best", run.learner._kept_model is not None))
        return chosen

    run._round_model = spied
    rows = run.execute()
    # on this data both rounds go on with a validation's model; no copy stays behind in the learner
    assert ends == [("best", False), ("best", False)]
    run.learner.keep_model()  # and when the round's last model beats the kept validation's:
    run._round_best = {"miou": -1.0, "step": 0, "eval": None}
    last = run.learner.evaluate()
    assert run._round_model(last) is last and run.learner._kept_model is None
    seen: dict[int, list[float]] = {1: [], 2: []}
    for line in lines:
        if "validation mIoU" in line:
            seen[int(line.split("round ")[1].split("/")[0])].append(float(line.split("validation mIoU ")[1].split()[0]))
    assert [len(v) for v in seen.values()] == [2, 2]  # steps 2 and 4 of 6; the round's end is the row's
    for r in (1, 2):
        assert rows["miou"].iloc[r] >= max(seen[r]) - 0.005  # logged to 2 decimals
    fresh = ActiveLearningRun(cfg, tmp_path / "run", log=_quiet, tensorboard=False)
    fresh.restore((tmp_path / "run" / "checkpoints" / "round_002.pt").read_bytes(), "round_002.pt")
    assert fresh.learner.evaluate().miou == rows["miou"].iloc[2]
    switched = [line for line in lines if "going on with the validation" in line]
    assert switched  # on this data, round 2's last model is worse than its step-30 validation
    assert f"mIoU {rows['miou'].iloc[2]:.2f};" in switched[-1]


def test_round_model_best_needs_validations(tiny_config_values, tmp_path):
    with pytest.raises(ConfigError, match="round_model='best' .* needs eval_every >= 1, but got eval_every=0"):
        build_config(_values(tiny_config_values, tmp_path, round_model="best"))


def test_stage1_weights_reach_the_answer_loss(tiny_config_values, tmp_path):
    """Zeroing the merged-positive and prototypical terms trains another model than the
    released 16/8/1; the two runs share everything else (source model, first picks)."""
    models = {}
    for weights in ((16.0, 8.0, 1.0), (16.0, 0.0, 0.0)):
        cfg = build_config(_values(tiny_config_values, tmp_path, rounds=1, stage1_weights=list(weights),
                                   source_cache=str(tmp_path / "cache")))
        run = ActiveLearningRun(cfg, tmp_path / f"run{weights[1]}", log=_quiet, tensorboard=False)
        run.execute()
        models[weights] = run.learner.model_state()
        assert cfg.to_dict()["stage1_weights"] == list(weights)
    a, b = models.values()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_the_released_model_settings_are_checked(tiny_config_values, tmp_path):
    with pytest.raises(ConfigError, match="embed_dim=null .* needs geometry='cosine', but got geometry='hyperbolic'"):
        build_config({**tiny_config_values, "embed_dim": None})
    with pytest.raises(ConfigError, match=r"backbone='deeplabv3p_r50_deepstem' trains on at least 2 images per "
                                          r"forward pass .* batch_size=4 over grad_accum=4 gives 1"):
        build_config(_values(tiny_config_values, tmp_path, backbone="deeplabv3p_r50_deepstem", batch_size=4, grad_accum=4))
    cfg = build_config(_values(tiny_config_values, tmp_path, embed_dim=None, rounds=1))
    run = ActiveLearningRun(cfg, tmp_path / "run", log=_quiet, tensorboard=False)
    rows = run.execute()
    assert rows["embed_dim"].isna().all()  # no reduction: the Parquet column is null
    head = run.learner.trainer.model.head
    assert isinstance(head.reduce, torch.nn.Identity) and head.weight.shape[1] == run.learner.trainer.model.backbone.out_channels


def test_a_run_handed_its_pool_trusts_the_filled_superpixel_cache(tiny_config_values, tmp_path, monkeypatch):
    """A search trial fills the superpixel cache before its pool opens and hands the pool over:
    the run does not read every target header and check every cached file a second time."""
    import halo_ray.run.loop as loop
    from halo_ray.learner import Learner
    from halo_ray.splits import ensure_superpixels, open_pool

    cfg = build_config(_values(tiny_config_values, tmp_path, rounds=1))
    ensure_superpixels(cfg, log=_quiet)

    learner = Learner(cfg, log=_quiet)
    pool = open_pool(cfg, [(int(h), int(w)) for h, w in learner.target_shapes()])

    def refuse(*_, **__):
        raise AssertionError("the superpixel cache was checked again")

    monkeypatch.setattr(loop, "ensure_superpixels", refuse)
    rows = ActiveLearningRun(cfg, tmp_path / "run", learner=learner, pool=pool, log=_quiet, tensorboard=False).execute()
    assert rows["clicks"].tolist()[0] == 0 and 0 < rows["clicks"].tolist()[1] <= 40
    with pytest.raises(AssertionError, match="checked again"):  # without a pool the run fills the cache itself
        ActiveLearningRun(cfg, tmp_path / "run2", learner=learner, log=_quiet, tensorboard=False)
