"""A whole multi-round run: exact budgets, rows, TensorBoard files, bit-identical resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from halo_ray.acquisition import picks_per_round
from halo_ray.config import ConfigError, build_config
from halo_ray.results import RADIUS_COLUMNS
from halo_ray.run import latest_checkpoint, load_checkpoint, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _quiet(_: str) -> None:
    pass


def test_run_writes_one_row_per_round_with_exact_budget(tiny_config_values, tmp_path):
    cfg = build_config(tiny_config_values)
    out = tmp_path / "run"
    frame = run_experiment(cfg, out, log=_quiet)
    assert list(frame["round"]) == [0, 1, 2, 3]
    assert pd.read_parquet(out / "results")["round"].tolist() == [0, 1, 2, 3]
    # exact picks: every image gets picks_per_round centres per round, squares never overlap
    state = load_checkpoint(latest_checkpoint(out))
    assert state["round"] == 3
    H, W = 64, 128
    picks = picks_per_round(H, W, budget_pct=cfg.budget, rounds=cfg.rounds, region_size=3, unit="region")
    ledger = pd.DataFrame(_ledger(state, cfg))
    assert (ledger["picks"] == picks).all() and len(ledger) == 8 * cfg.rounds
    revealed = frame["labelled_pixels"] + frame["void_pixels"]
    # non-overlapping 3x3 squares: at most 9 px per pick, fewer only when clipped at a border
    assert revealed.iloc[-1] <= 8 * cfg.rounds * picks * 9
    assert revealed.iloc[-1] >= 0.8 * 8 * cfg.rounds * picks * 9
    assert frame["labelled_pct"].is_monotonic_increasing and frame["labelled_pct"].iloc[0] == 0.0
    assert math.isclose(frame["labelled_pct"].iloc[-1], 100 * frame["labelled_pixels"].iloc[-1] / (8 * H * W))
    assert frame["miou"].between(0, 100).all()
    assert frame["radius_mean"].notna().all()
    # the pixel-weighted mean radius lies between the per-class means it averages
    per_class = frame[RADIUS_COLUMNS]
    assert (per_class.notna().sum(axis=1) >= 5).all()
    assert (per_class.min(axis=1) <= frame["radius_mean"] + 1e-9).all()
    assert (frame["radius_mean"] <= per_class.max(axis=1) + 1e-9).all()
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("eval/miou")] == pytest.approx(frame["miou"].tolist(), rel=1e-5)
    assert any(tag.endswith("/radius") for tag in acc.Tags()["images"])


def test_run_keeps_pictures_of_each_selection_and_an_hparams_session(tiny_config_values, tmp_path):
    """Snapshots hold exactly what each round selected; TensorBoard gets the HParams records."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from halo_ray.data import open_dataset

    cfg = build_config({**tiny_config_values, "log_images": 2, "rounds": 2})
    out = tmp_path / "run"
    frame = run_experiment(cfg, out, log=_quiet)
    (trial,) = frame["trial_id"].unique()
    truth = open_dataset("cityscapes", cfg.target_path, split="train")
    final = load_checkpoint(latest_checkpoint(out))
    for r in (1, 2):
        snap = np.load(out / "snapshots" / trial / f"round_{r:03d}.npz")
        assert int(snap["round"]) == r and str(snap["strategy"]) == "halo" and str(snap["trial_id"]) == trial
        assert snap["index"].tolist() == [0, 1]
        assert snap["image"].shape == (2, 64, 128, 3) and snap["image"].dtype == np.uint8
        for key in ("label", "prediction", "score", "radius", "labelled_round"):
            assert snap[key].shape == (2, 64, 128), key
        for k in range(2):
            assert np.array_equal(snap["label"][k], truth.load_label(k))
            picked = snap["labelled_round"][k] == r
            assert picked.any() and (snap["labelled_round"][k] <= r).all()
            if r == 1:  # nothing suppressed yet: the first pick is the best-scoring pixel
                y, x = np.unravel_index(np.argmax(snap["score"][k]), snap["score"][k].shape)
                assert picked[y, x]
    # the last round's map agrees with the pool's own record in the final checkpoint
    ledger = pd.DataFrame(_ledger(final, cfg))
    assert snap["labelled_round"][0].astype(bool).sum() == ledger.loc[ledger["index"] == 0, ["pixels", "void"]].to_numpy().sum()

    acc = EventAccumulator(str(out / "tensorboard" / trial), size_guidance={"tensors": 0})
    acc.Reload()
    records = [HParamsPluginData.FromString(v) for v in acc.PluginTagToContent("hparams").values()]
    starts = [r.session_start_info for r in records if r.HasField("session_start_info")]
    ends = [r.session_end_info for r in records if r.HasField("session_end_info")]
    experiments = [r.experiment for r in records if r.HasField("experiment")]
    assert starts and starts[0].hparams["strategy"].string_value == "halo"
    assert starts[0].hparams["budget"].number_value == cfg.budget
    assert starts[0].hparams["suppression"].number_value == 11
    assert len(ends) == 1  # the run reached its last round
    assert {m.name.tag for m in experiments[0].metric_infos} == {"eval/miou", "eval/pixel_acc", "eval/labelled_pct"}


def _ledger(state, cfg, shapes=None):
    from halo_ray.pool import ArrayOracle, LabelPool

    shapes = shapes or [(64, 128)] * 8  # default: the tiny benchmark's 8 target-train images
    pool = LabelPool(shapes, ArrayOracle([np.zeros(s, np.uint8) for s in shapes]))
    pool.load_state_dict(state["pool"])
    return pool.ledger()


def test_existing_run_is_not_overwritten_without_resume(tiny_config_values, tmp_path):
    cfg = build_config({**tiny_config_values, "rounds": 1})
    out = tmp_path / "run"
    run_experiment(cfg, out, log=_quiet, tensorboard=False)
    with pytest.raises(ConfigError, match="pass --resume"):
        run_experiment(cfg, out, log=_quiet, tensorboard=False)
    with pytest.raises(ConfigError, match="cannot resume with a different config.*budget"):
        run_experiment(cfg.replace(budget=2.0), out, resume=True, log=_quiet, tensorboard=False)


def _cli(args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "halo_ray.cli", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def _sets(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={v}"]
    return out


def test_killed_run_resumes_bit_identical(tiny_config_values, tmp_path):
    """SIGKILL mid-run, resume: the final state equals the uninterrupted run's. On a GPU this
    needs deterministic kernels (without them two CUDA runs already differ)."""
    values = {**tiny_config_values, "rounds": 4, "round_steps": 30, "strategy": "halo",
              "deterministic": torch.cuda.is_available()}
    exp = tmp_path / "exp.yaml"
    exp.write_text("experiment: tiny\n")
    full, killed = tmp_path / "full", tmp_path / "killed"

    ref = _cli(["run", str(exp), "--out", str(full), *_sets(values)])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    proc = _cli(["run", str(exp), "--out", str(killed), *_sets(values)])
    target = killed / "checkpoints" / "round_002.pt"
    deadline = time.time() + 600
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists()
    assert not (killed / "checkpoints" / "round_004.pt").exists(), "the run ended before it was killed"

    resumed = _cli(["run", str(exp), "--out", str(killed), "--resume", *_sets(values)])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    a = load_checkpoint(full / "checkpoints" / "round_004.pt")
    b = load_checkpoint(killed / "checkpoints" / "round_004.pt")
    for key in a["pool"]:
        va, vb = a["pool"][key], b["pool"][key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key
    for name, tensor in a["learner"]["trainer"]["model"].items():
        assert torch.equal(tensor, b["learner"]["trainer"]["model"][name]), name
    ra = pd.read_parquet(full / "results").sort_values("round").drop(columns=["wall_s"])
    rb = pd.read_parquet(killed / "results").sort_values("round").drop(columns=["wall_s"])
    assert list(rb["round"]) == [0, 1, 2, 3, 4]  # exactly one row per round
    pd.testing.assert_frame_equal(ra.reset_index(drop=True), rb.reset_index(drop=True))


def test_reference_mode_spends_the_reference_budget(tmp_path, tiny_config_values):
    """`reference: true` counts picks with the reference's float formula, which at 80×160 with
    6.75 % over 3 rounds gives one pick more per image and round than the exact count."""
    from halo_ray.data import generate_benchmark

    root = tmp_path / "bench80"
    generate_benchmark(root, seed=1, height=80, width=160, n_source=6, n_target_train=3, n_target_val=2,
                       n_adverse_train=1, n_adverse_val=1)
    exact = picks_per_round(80, 160, budget_pct=6.75, rounds=3, region_size=3)
    assert (exact, picks_per_round(80, 160, budget_pct=6.75, rounds=3, region_size=3, reference=True)) == (32, 33)
    for reference, picks in ((False, 32), (True, 33)):
        values = {**tiny_config_values, "data_root": str(root), "budget": 6.75, "rounds": 3, "strategy": "entropy",
                  "reference": reference, "source_cache": str(tmp_path / f"cache{reference}")}
        cfg = build_config(values)
        out = tmp_path / f"run{reference}"
        run_experiment(cfg, out, log=_quiet, tensorboard=False)
        ledger = pd.DataFrame(_ledger(load_checkpoint(latest_checkpoint(out)), cfg, shapes=[(80, 160)] * 3))
        assert (ledger["picks"] == picks).all() and len(ledger) == 3 * 3


def test_a_reference_run_trains_the_released_head_and_selects_on_float64_maps(tiny_config_values, tmp_path):
    """reference: true end to end: HFR clamp + l2, float64 HyperMLR head, align_corners, the
    papers' losses; the halo_radius maps are float64 and the budget is exact."""
    from halo_ray.learner import Learner

    values = {
        **tiny_config_values, "reference": True, "strategy": "halo_radius", "rounds": 2,
        "negative_learning": True, "local_consistency": 0.1, "target_sampling": "all",
    }
    cfg = build_config(values)
    out = tmp_path / "run"
    frame = run_experiment(cfg, out, log=_quiet)
    assert list(frame["round"]) == [0, 1, 2] and frame["miou"].notna().all()
    assert frame["radius_mean"].notna().all()
    model = load_checkpoint(latest_checkpoint(out))["learner"]["trainer"]["model"]
    assert model["head.mlr.offsets_plain"].dtype == torch.float64 and "head.mlr.offsets_tangent" not in model
    assert "head.hfr.mlp.1.running_mean" in model
    learner = Learner(cfg, log=_quiet)
    learner.trainer.model.load_state_dict(model)
    maps = learner.score(3, [0, 1])
    assert all(m.dtype == torch.float64 and m.shape == (64, 128) for m in maps)
    picks = picks_per_round(64, 128, budget_pct=cfg.budget, rounds=cfg.rounds, region_size=3, unit="region", reference=True)
    state = load_checkpoint(latest_checkpoint(out))
    assert (pd.DataFrame(_ledger(state, cfg))["picks"] == picks).all()


@pytest.mark.parametrize("keep", [1, 2])
def test_a_run_keeps_its_last_round_checkpoints_only(tiny_config_values, tmp_path, keep):
    """keep_checkpoints bounds the disk a run holds; a resume needs only the last one."""
    out = tmp_path / "run"
    run_experiment(build_config({**tiny_config_values, "keep_checkpoints": keep}), out, log=_quiet, tensorboard=False)
    kept = sorted(p.name for p in (out / "checkpoints").glob("round_*.pt"))
    assert kept == [f"round_{r:03d}.pt" for r in range(4 - keep, 4)]
    with pytest.raises(ConfigError, match="keep_checkpoints must be an integer >= 1"):
        build_config({**tiny_config_values, "keep_checkpoints": 0})


class _Recording:
    """Passes method calls through to ``target`` and keeps (name, returned value) of each."""

    def __init__(self, target) -> None:
        self.target = target
        self.returned: list[tuple[str, object]] = []

    def __getattr__(self, name):
        method = getattr(self.target, name)

        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            self.returned.append((name, out))
            return out

        return call


def _sizes(value) -> list[int]:
    """Element counts of every array or tensor inside ``value`` (lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        return [int(value.size if isinstance(value, np.ndarray) else value.numel())]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _sizes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _sizes(v)]
    return []


def test_selection_happens_where_the_maps_are(tiny_config_values, tmp_path):
    """The driver gets centres back, never a full-resolution map: per chunk of images one
    scorer call and two pool calls. The picks are the dense path's (score map → the pool's
    suppression map → greedy walk), round 1 and round 2 (earlier centres suppress)."""
    from halo_ray.acquisition import select_centres
    from halo_ray.learner import Learner, open_split
    from halo_ray.pool import DatasetOracle, LabelPool
    from halo_ray.run import ActiveLearningRun

    cfg = build_config({**tiny_config_values, "log_images": 0, "eval_batch_size": 2})
    learner = Learner(cfg, log=_quiet)
    shapes = [tuple(s) for s in learner.target_shapes()]
    scorer = _Recording(learner)
    pool = _Recording(LabelPool(shapes, DatasetOracle(open_split(cfg, "train"))))
    run = ActiveLearningRun(cfg, tmp_path / "run", learner=learner, scorer=scorer, pool=pool, log=_quiet,
                            tensorboard=False)
    run.start_or_resume(False)
    picks = picks_per_round(*shapes[0], budget_pct=cfg.budget, rounds=cfg.rounds, region_size=cfg.region_size)
    for r in (1, 2):
        want = [
            select_centres(learner.score(r, [i])[0], picks=picks, suppression=cfg.suppression_size,
                           active=torch.from_numpy(pool.target.suppressed(i, cfg.suppression_size))).numpy()
            for i in range(len(shapes))
        ]
        scorer.returned.clear()
        pool.returned.clear()
        run.select_round(r)
        for i in range(len(shapes)):
            np.testing.assert_array_equal(pool.target.centres(i, round=r), want[i])
        chunks = -(-len(shapes) // (4 * cfg.eval_batch_size))
        assert [name for name, _ in scorer.returned] == ["select"] * chunks
        calls = [name for name, _ in pool.returned]
        assert calls == ["images_without"] + ["centres_of", "reveal_many"] * chunks
        biggest = max(n for _, out in scorer.returned + pool.returned for n in _sizes(out))
        assert biggest <= 2 * r * picks < shapes[0][0] * shapes[0][1] // 50
