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


def _ledger(state, cfg):
    from halo_ray.pool import ArrayOracle, LabelPool

    shapes = [(64, 128)] * 8
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
    values = {**tiny_config_values, "rounds": 4, "round_steps": 30, "strategy": "halo"}
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
