"""`halo-ray search` on a real local Ray: trials are whole runs through actors, one row per round."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from halo_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray per test session (RAY_NOTES: short temp dir, no dashboard)."""
    import ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


def _space(tmp_path, tiny_config_values, rounds=2, round_steps=3, **extra) -> Path:
    experiment = tmp_path / "tiny.yaml"
    values = {**tiny_config_values, "rounds": rounds, "round_steps": round_steps, "source_steps": 8}
    values.pop("source_cache")  # a search keeps its own cache under its storage
    experiment.write_text(yaml.safe_dump(values))
    space = tmp_path / "tiny_search.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "experiment": "tiny.yaml",
                "searcher": "grid",
                "max_failures": 1,
                "parameters": {"strategy": {"grid": ["halo", "random"]}},
                **extra,
            }
        )
    )
    return space


def test_search_runs_whole_trials_with_one_row_per_round(ray_session, tmp_path, tiny_config_values, capsys):
    space = _space(tmp_path, tiny_config_values)
    storage = tmp_path / "runs"
    assert main(["search", str(space), "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "search | trials running" in out and "best miou" in out
    frame = pd.read_parquet(storage / "tiny" / "results")
    assert len(frame) == 2 * 3  # 2 trials × rounds 0–2
    assert not frame.duplicated(["trial_id", "round"]).any()
    assert sorted(frame["strategy"].unique()) == ["halo", "random"]
    assert (frame["search"] == "tiny").all()
    last = frame[frame["round"] == 2]
    assert (last["labelled_pct"] > 0).all()
    # one shared source pre-training for both trials (the strategy is not in the source key)
    assert len(list((storage / "tiny" / "source_cache").glob("source-*.pt"))) == 1
    assert round(frame.loc[frame["round"] == 0, "miou"].nunique()) == 1
    events = {p.parent.name for p in (storage / "tiny" / "tensorboard").rglob("events.out.tfevents.*")}
    assert events == set(frame["trial_id"])

    # resuming a finished search runs nothing again and adds no row
    assert main(["search", str(space), "--storage", str(storage), "--resume"]) == 0
    again = pd.read_parquet(storage / "tiny" / "results")
    pd.testing.assert_frame_equal(
        frame.sort_values(["trial_id", "round"]).reset_index(drop=True),
        again.sort_values(["trial_id", "round"]).reset_index(drop=True),
    )


def test_bad_search_file_exits_2(tmp_path, tiny_config_values, capsys):
    space = _space(tmp_path, tiny_config_values, surprise=1)
    assert main(["search", str(space), "--storage", str(tmp_path / "runs")]) == 2
    assert "surprise" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cloud_storage_uri_is_refused(tmp_path, tiny_config_values, capsys, ray_session):
    space = _space(tmp_path, tiny_config_values)
    assert main(["search", str(space), "--storage", "s3://bucket/runs"]) == 2
    assert "cloud URIs are not supported" in capsys.readouterr().err


def test_unreachable_address_exits_2_quickly(tmp_path, tiny_config_values):
    space = _space(tmp_path, tiny_config_values)
    proc = subprocess.run(
        [sys.executable, "-m", "halo_ray.cli", "search", str(space), "--address", "127.0.0.1:1",
         "--storage", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in proc.stderr
    assert not (tmp_path / "runs").exists()


def _processes_titled(prefix: str) -> list[int]:
    """PIDs whose process title starts with ``prefix`` (Ray titles actor processes ``ray::Class``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(prefix):
                pids.append(int(entry.name))
    return pids


def _final_state(storage: Path, search: str) -> tuple[pd.DataFrame, dict]:
    from halo_ray.run import latest_checkpoint, load_checkpoint

    frame = pd.read_parquet(storage / search / "results").sort_values("round").reset_index(drop=True)
    (trial,) = frame["trial_id"].unique()
    state = load_checkpoint(latest_checkpoint(storage / search / "trials" / trial))
    return frame, state


def test_killed_pool_actor_trial_recovers_without_double_spending(ray_session, tmp_path, tiny_config_values):
    """SIGKILL the label-pool actor mid-run: the trial restarts from its last round checkpoint
    and ends with exactly the labelled set and metrics of an uninterrupted trial."""
    import signal
    import threading

    import torch

    space = _space(tmp_path, tiny_config_values, rounds=3, round_steps=25, parameters={"strategy": {"grid": ["halo"]}})
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(["search", str(space), "--storage", str(clean)]) == 0

    seen: dict[str, bool] = {}

    def killer() -> None:
        results = killed / "tiny" / "results"
        deadline = time.time() + 300
        while time.time() < deadline and not list(results.glob("*-round001.parquet")):
            time.sleep(0.01)
        for pid in _processes_titled("ray::LabelPool"):
            seen["last_round_done_before_kill"] = bool(list(results.glob("*-round003.parquet")))
            os.kill(pid, signal.SIGKILL)
            seen["killed"] = True

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert main(["search", str(space), "--storage", str(killed)]) == 0
    thread.join(timeout=60)
    assert seen.get("killed") and not seen["last_round_done_before_kill"]

    frame_a, state_a = _final_state(clean, "tiny")
    frame_b, state_b = _final_state(killed, "tiny")
    assert list(frame_b["round"]) == [0, 1, 2, 3]  # exactly one row per round
    for key, va in state_a["pool"].items():
        vb = state_b["pool"][key]
        assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, key
    same = ["round", "labelled_pixels", "void_pixels", "labelled_pct", "miou", "pixel_acc", "radius_mean"]
    pd.testing.assert_frame_equal(frame_a[same], frame_b[same])


def test_killed_driver_then_resume_finishes_with_one_row_per_trial_round(tmp_path, tiny_config_values):
    """SIGKILL `halo-ray search` (and the local Ray it started) mid-search; `--resume` finishes it."""
    import signal

    space = _space(tmp_path, tiny_config_values, rounds=3, round_steps=25)
    storage = tmp_path / "runs"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}
    cmd = [sys.executable, "-m", "halo_ray.cli", "search", str(space), "--storage", str(storage)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results, tune_dir = storage / "tiny" / "results", storage / "tiny" / "tune"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
        list(results.glob("*-round001.parquet")) and list(tune_dir.glob("experiment_state-*.json"))
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    rows_before = len(list(results.glob("*.parquet")))
    assert 0 < rows_before < 2 * 4, "the search was not interrupted mid-way"

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "pass --resume" in again.stderr  # never silently restarted
    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    frame = pd.read_parquet(results)
    assert len(frame) == 2 * 4 and not frame.duplicated(["trial_id", "round"]).any()
    assert sorted(frame.groupby("trial_id")["round"].max()) == [3, 3]
    final = frame[frame["round"] == 3]
    assert (final["labelled_pct"] > 0).all()
