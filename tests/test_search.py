"""`halo-ray search` on a real local Ray: trials are whole runs through actors, one row per round."""

from __future__ import annotations

import os
import subprocess
import sys
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


def _space(tmp_path, tiny_config_values, **extra) -> Path:
    experiment = tmp_path / "tiny.yaml"
    values = {**tiny_config_values, "rounds": 2, "round_steps": 3, "source_steps": 8}
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
