"""`halo-ray search` on a real local Ray: trials are whole runs through actors, one row per round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from halo_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray per test session (a short temp dir for its unix sockets, no dashboard)."""
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
    assert main(["search", str(space), "--storage", str(storage), "--set", "budget=4.0"]) == 0
    out = capsys.readouterr().out
    assert "search | trials running" in out and "best miou" in out
    frame = pd.read_parquet(storage / "tiny" / "results")
    assert len(frame) == 2 * 3  # 2 trials × rounds 0–2
    assert (frame["budget"] == 4.0).all()  # --set reaches every trial
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
    # one copy of each trial's state: the checkpoint Tune keeps (the last round's), none of its own
    from halo_ray.distributed.search import trial_checkpoint
    from halo_ray.run import load_checkpoint

    for trial in frame["trial_id"].unique():
        assert not list((storage / "tiny" / "trials" / trial).rglob("round_*.pt"))
        assert len(list((storage / "tiny").glob(f"tune*/run_trial_{trial}_*/checkpoint_*"))) == 1
        assert load_checkpoint(trial_checkpoint(storage / "tiny", trial))["round"] == 2

    # the HParams dashboard lines up every trial of the search
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    strategies = set()
    for trial in frame["trial_id"].unique():
        acc = EventAccumulator(str(storage / "tiny" / "tensorboard" / trial), size_guidance={"tensors": 0})
        acc.Reload()
        for content in acc.PluginTagToContent("hparams").values():
            record = HParamsPluginData.FromString(content)
            if record.HasField("session_start_info"):
                strategies.add(record.session_start_info.hparams["strategy"].string_value)
    assert strategies == {"halo", "random"}

    # `halo-ray analyze` on the search: report, tables and figures from the real rows
    assert main(["analyze", str(storage / "tiny")]) == 0
    summary = capsys.readouterr().out
    report = storage / "tiny" / "analysis"
    table = pd.read_csv(report / "strategy_table.csv")
    final = frame[frame["round"] == 2].set_index("strategy")["miou"]
    for strategy in ("halo", "random"):
        assert table.set_index("strategy").loc[strategy, "miou_mean"] == pytest.approx(final[strategy])
    assert f"{final['halo']:.2f}" in summary and "report:" in summary
    for name in ("report.md", "learning_curves.png", "radius_vs_iou.png", "selection_grid.png"):
        assert (report / name).stat().st_size > 0, name
    assert main(["analyze", str(storage / "tiny"), "--baseline", "entropy"]) == 2
    assert "'entropy'" in capsys.readouterr().err

    # resuming with other settings is refused, naming what differs
    assert main(["search", str(space), "--storage", str(storage), "--resume", "--set", "budget=5.0"]) == 2
    assert "base_config.budget" in capsys.readouterr().err
    # a search.json written before a key existed: the key ran at its default, so it resumes;
    # a key missing there whose value now differs from its default is still named
    saved_file = storage / "tiny" / "search.json"
    saved = json.loads(saved_file.read_text())
    del saved["base_config"]["round_model"], saved["base_config"]["budget"]  # budget=4.0: not the default
    saved_file.write_text(json.dumps(saved))
    assert main(["search", str(space), "--storage", str(storage), "--resume", "--set", "budget=4.0"]) == 2
    err = capsys.readouterr().err
    assert "base_config.budget" in err and "round_model" not in err
    saved["base_config"]["budget"] = 4.0
    saved_file.write_text(json.dumps(saved))
    # resuming a finished search runs nothing again and adds no row
    assert main(["search", str(space), "--storage", str(storage), "--resume", "--set", "budget=4.0"]) == 0
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


def _raylet_pid() -> int:
    """PID of this test session's raylet, the parent of all of its worker processes."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _processes_titled(prefix: str) -> list[int]:
    """PIDs of this session's Ray workers whose title starts with ``prefix`` (Ray titles actor
    processes ``ray::Class``); workers of any other Ray on the machine are left alone."""
    raylet = _raylet_pid()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                parent = next(int(ln.split()[1]) for ln in (entry / "status").read_text().splitlines()
                              if ln.startswith("PPid:"))
            except (OSError, StopIteration, ValueError):
                continue
            if title.startswith(prefix) and parent == raylet:
                pids.append(int(entry.name))
    return pids


def _final_state(storage: Path, search: str) -> tuple[pd.DataFrame, dict]:
    from halo_ray.distributed.search import trial_checkpoint
    from halo_ray.run import load_checkpoint

    frame = pd.read_parquet(storage / search / "results").sort_values("round").reset_index(drop=True)
    (trial,) = frame["trial_id"].unique()
    state = load_checkpoint(trial_checkpoint(storage / search, trial))
    return frame, state


def _halo_space(folder: Path, values: dict) -> Path:
    """One halo trial, 3 rounds: long enough to be interrupted mid-run."""
    return _space(folder, values, rounds=3, round_steps=25, parameters={"strategy": {"grid": ["halo"]}})


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tiny_benchmark, tmp_path_factory):
    """The one-trial halo search run without faults: what every fault-injection test must equal."""
    from conftest import tiny_values

    folder = tmp_path_factory.mktemp("uninterrupted")
    space = _halo_space(folder, tiny_values(tiny_benchmark, folder / "cache"))
    assert main(["search", str(space), "--storage", str(folder / "runs")]) == 0
    return space, _final_state(folder / "runs", "tiny")


def _kill_after_round_one(storage: Path, title: str, seen: dict):
    """A thread that SIGKILLs every process titled ``title`` once round 1 has a row."""
    import signal
    import threading

    def killer() -> None:
        results = storage / "tiny" / "results"
        deadline = time.time() + 300
        while time.time() < deadline and not list(results.glob("*-round001.parquet")):
            time.sleep(0.01)
        for pid in _processes_titled(title):
            seen["last_round_done_before_kill"] = bool(list(results.glob("*-round003.parquet")))
            os.kill(pid, signal.SIGKILL)
            seen["killed"] = seen.get("killed", 0) + 1

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def _assert_same_final_state(reference: tuple[pd.DataFrame, dict], storage: Path) -> None:
    """One row per round, and the pool and metrics equal to the uninterrupted trial's."""
    import torch

    frame_a, state_a = reference
    frame_b, state_b = _final_state(storage, "tiny")
    assert list(frame_b["round"]) == [0, 1, 2, 3]  # exactly one row per round
    for key, va in state_a["pool"].items():
        vb = state_b["pool"][key]
        assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, key
    same = ["round", "labelled_pixels", "void_pixels", "labelled_pct", "miou", "pixel_acc", "radius_mean"]
    pd.testing.assert_frame_equal(frame_a[same], frame_b[same])


def test_killed_pool_actor_trial_recovers_without_double_spending(uninterrupted, tmp_path):
    """SIGKILL the label-pool actor mid-run: the trial restarts from its last round checkpoint
    and ends with exactly the labelled set and metrics of an uninterrupted trial."""
    space, reference = uninterrupted
    storage, seen = tmp_path / "killed", {}
    thread = _kill_after_round_one(storage, "ray::PoolActor", seen)
    assert main(["search", str(space), "--storage", str(storage)]) == 0
    thread.join(timeout=60)
    assert seen.get("killed") and not seen["last_round_done_before_kill"]
    _assert_same_final_state(reference, storage)


def test_killed_trial_process_resumes_from_its_last_round(uninterrupted, tmp_path):
    """SIGKILL the trial's own process (the run loop; its actors die with it): Tune restarts the
    trial from its last reported checkpoint and it ends exactly like the uninterrupted trial."""
    space, reference = uninterrupted
    storage, seen = tmp_path / "killed", {}
    thread = _kill_after_round_one(storage, "ray::ImplicitFunc", seen)
    assert main(["search", str(space), "--storage", str(storage)]) == 0
    thread.join(timeout=60)
    assert seen.get("killed", 0) >= 1 and not seen["last_round_done_before_kill"]
    _assert_same_final_state(reference, storage)


def test_killed_scorer_mid_round_trial_recovers_with_the_same_labelled_set(uninterrupted, tmp_path):
    """SIGKILL one of a trial's 2 scorer actors while it works for a later round's selection:
    the trial restarts from its last round checkpoint and ends with exactly the labelled set
    and metrics of the uninterrupted trial (which scored on its learner alone: fanning out
    changes no pick)."""
    import signal
    import threading

    space, reference = uninterrupted
    storage, seen = tmp_path / "killed", {}

    def killer() -> None:
        results = storage / "tiny" / "results"
        deadline = time.time() + 300
        while time.time() < deadline and not list(results.glob("*-round001.parquet")):
            time.sleep(0.01)
        scorers = _processes_titled("ray::ScorerActor")  # idle now: round 1 has selected
        while time.time() < deadline:  # one of them busy with a call: a round's selection has begun
            for pid in scorers:
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if title.startswith(b"ray::ScorerActor.call"):
                    seen["last_round_done_before_kill"] = bool(list(results.glob("*-round003.parquet")))
                    os.kill(pid, signal.SIGKILL)
                    seen["killed"] = 1
                    return
            time.sleep(0.001)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    args = ["search", str(space), "--storage", str(storage), "--scorers-per-trial", "2", "--cpus-per-trial", "0.6"]
    assert main(args) == 0
    thread.join(timeout=60)
    assert seen.get("killed") == 1 and not seen["last_round_done_before_kill"]
    _assert_same_final_state(reference, storage)


def test_killed_driver_then_resume_finishes_with_one_row_per_trial_round(tmp_path, tiny_config_values):
    """SIGKILL `halo-ray search` (and the local Ray it started) mid-search; `--resume` finishes
    it with one row per (trial, round), and every trial's labelled set and metrics equal those
    of the same search run without the kill."""
    import signal

    import torch

    from halo_ray.distributed.search import trial_checkpoint
    from halo_ray.run import load_checkpoint

    space = _space(tmp_path, tiny_config_values, rounds=3, round_steps=25)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}

    def command(storage: Path) -> list[str]:
        return [sys.executable, "-m", "halo_ray.cli", "search", str(space), "--storage", str(storage)]

    clean = subprocess.run(command(tmp_path / "clean"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]
    storage = tmp_path / "runs"
    cmd = command(storage)
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

    def by_strategy(folder: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
        rows = pd.read_parquet(folder / "tiny" / "results").sort_values(["strategy", "round"]).reset_index(drop=True)
        pools = {
            strategy: load_checkpoint(trial_checkpoint(folder / "tiny", trial))["pool"]
            for strategy, trial in rows.groupby("strategy")["trial_id"].first().items()
        }
        return rows, pools

    (rows_a, pools_a), (rows_b, pools_b) = by_strategy(tmp_path / "clean"), by_strategy(storage)
    same = ["strategy", "round", "labelled_pixels", "void_pixels", "labelled_pct", "miou", "pixel_acc"]
    pd.testing.assert_frame_equal(rows_a[same], rows_b[same])
    assert sorted(pools_a) == sorted(pools_b) == ["halo", "random"]
    for strategy, pool in pools_a.items():  # the same labelled sets, pixel for pixel
        for key, va in pool.items():
            vb = pools_b[strategy][key]
            assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, (strategy, key)


def test_fan_out_scorers_score_with_the_learners_current_weights(ray_session, tiny_config_values):
    """Scorer actors take the learner's weights each round; their maps equal the learner's own."""
    import ray
    import torch

    from halo_ray.config import build_config
    from halo_ray.distributed.actors import FanOutScorer, LearnerActor

    cfg = build_config(tiny_config_values)
    actor = ray.remote(LearnerActor).options(num_cpus=0.3)
    learner, scorers = actor.remote(cfg), [actor.remote(cfg) for _ in range(2)]
    ray.get(learner.call.remote("train", 4, start_step=0, total_steps=4))  # the scorers' copies are now stale
    indices = [6, 0, 3, 1, 7, 2, 5]  # any order: maps come back in the order asked for
    own = ray.get(learner.call.remote("score", 1, indices))
    stale = ray.get(scorers[0].call.remote("score", 1, indices[:1]))
    assert not torch.allclose(stale[0], own[0], atol=1e-4)
    fanned = FanOutScorer(learner, scorers).score(1, indices)
    assert len(fanned) == len(indices)
    for a, b in zip(own, fanned, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for handle in [learner, *scorers]:
        ray.kill(handle)


def test_search_with_scorer_actors_spends_exact_budgets(ray_session, tmp_path, tiny_config_values):
    """A trial whose scoring fans out over 2 scorer actors (4 bundles) selects exact budgets."""
    from halo_ray.acquisition import picks_per_round
    from halo_ray.pool import ArrayOracle, LabelPool

    space = _space(tmp_path, tiny_config_values, parameters={"strategy": {"grid": ["halo"]}})
    storage = tmp_path / "runs"
    args = ["search", str(space), "--storage", str(storage), "--scorers-per-trial", "2", "--cpus-per-trial", "0.6"]
    assert main(args) == 0
    frame, state = _final_state(storage, "tiny")
    assert list(frame["round"]) == [0, 1, 2]
    shapes = [(64, 128)] * 8  # tiny benchmark: 8 target-train images
    pool = LabelPool(shapes, ArrayOracle([np.zeros(s, np.uint8) for s in shapes]))
    pool.load_state_dict(state["pool"])
    ledger = pd.DataFrame(pool.ledger())
    picks = picks_per_round(64, 128, budget_pct=6.0, rounds=2, region_size=3, unit="region")
    assert len(ledger) == 8 * 2 and (ledger["picks"] == picks).all()
    assert frame["labelled_pixels"].iloc[-1] + frame["void_pixels"].iloc[-1] == ledger[["pixels", "void"]].to_numpy().sum()


def test_two_node_cluster_search_survives_a_killed_worker_node(tmp_path, tiny_config_values):
    """On a simulated 2-node cluster a tiny search completes with trials on both nodes; with a
    worker node removed mid-search it still completes, with one row per (trial, round) and the
    same final labelled sets and metrics as the undisturbed search."""
    import json

    space = _space(tmp_path, tiny_config_values, rounds=3, round_steps=25)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "two_node_search.py"), str(space), str(clean), str(killed)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {r["search"]: r for r in map(json.loads, [ln for ln in proc.stdout.splitlines() if ln.startswith("{")])}
    assert reports["clean"]["exit"] == 0 and reports["clean"]["nodes"] == 3  # head + 2 workers
    assert reports["killed"]["exit"] == 0 and "killed_at" in reports["killed"]
    assert reports["killed"]["rows_before_kill"] < 2 * 4  # the node went down mid-search

    frames = {name: pd.read_parquet(folder / "tiny" / "results") for name, folder in (("clean", clean), ("killed", killed))}
    # both trials ran at once (each node has 1 CPU, a trial needs 1): every trial's round 0 row
    # was written before any trial's last row
    rows = sorted((clean / "tiny" / "results").glob("*.parquet"))
    first = max(p.stat().st_mtime for p in rows if p.name.endswith("round000.parquet"))
    last = min(p.stat().st_mtime for p in rows if p.name.endswith("round003.parquet"))
    assert first < last
    same = ["strategy", "round", "labelled_pixels", "void_pixels", "miou", "pixel_acc"]
    for frame in frames.values():
        assert len(frame) == 2 * 4 and not frame.duplicated(["trial_id", "round"]).any()
    a, b = (frames[k].sort_values(["strategy", "round"]).reset_index(drop=True)[same] for k in ("clean", "killed"))
    pd.testing.assert_frame_equal(a, b)


def test_multiclass_search_with_scorer_actors_spends_clicks_within_budget(ray_session, tmp_path, tiny_config_values,
                                                                          monkeypatch, capsys):
    """Unit multiclass through Ray: the pool is a RegionPool actor, PixBal's two passes fan out
    over 2 scorer actors, and each round spends at most its clicks. The superpixel cache is a
    path relative to the launching directory, given by a variant: the search fills it (and the
    regions' answers) before its trials, and every trial process (each with its own working
    directory) finds it there."""
    from halo_ray.pool import ArrayOracle
    from halo_ray.region_pool import RegionPool

    monkeypatch.chdir(tmp_path)
    space = _space(
        tmp_path, tiny_config_values, parameters={"strategy": {"grid": ["pixbal"]}},
        set={"unit": "multiclass", "clicks_per_round": 30, "superpixels": "grid", "num_superpixels": 32,
             "log_images": 0},
        variants=[{"superpixel_cache": "spx"}],
    )
    storage = tmp_path / "runs"
    args = ["search", str(space), "--storage", str(storage), "--scorers-per-trial", "2", "--cpus-per-trial", "0.6",
            "--no-warm-learners"]  # every learner process started cold: the same rows
    assert main(args) == 0
    err = capsys.readouterr().err  # the search filled the superpixels and the regions' answers ahead
    assert "superpixels (grid): 8 computed, 0 cached" in err and "region answers (trim 5): 8 computed" in err
    frame, state = _final_state(storage, "tiny")
    assert list(frame["round"]) == [0, 1, 2] and list(frame["click_budget"]) == [0, 30, 60]
    assert all(0 < b - a <= 30 for a, b in zip(frame["clicks"], frame["clicks"].iloc[1:], strict=False))
    pool = RegionPool(8, lambda i: np.zeros((64, 128), np.int64), ArrayOracle([np.zeros((64, 128))] * 8),
                      shapes=[(64, 128)] * 8)
    pool.load_state_dict(state["pool"])
    assert pool.clicks == frame["clicks"].iloc[-1]
    assert len(list((tmp_path / "spx").rglob("*.npz"))) >= 8  # the superpixels and their answers, there


def test_a_multiclass_grid_with_superpixels_too_small_for_trim_is_refused_before_the_search(
    ray_session, tmp_path, tiny_config_values, capsys
):
    """One grid point's superpixels leave no interior inside the trim band: exit 2 naming the
    search, the count and trim, before any trial runs or anything is written to the storage."""
    space = _space(
        tmp_path, tiny_config_values, parameters={"num_superpixels": {"grid": [32, 2000]}},
        set={"unit": "multiclass", "strategy": "pixbal", "clicks_per_round": 30, "superpixels": "grid",
             "superpixel_cache": str(tmp_path / "spx"), "log_images": 0},
    )
    storage = tmp_path / "runs"
    assert main(["search", str(space), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "search tiny: num_superpixels=2000 on 64x128 target images makes regions of about 2.0 px a side" in err
    assert "trim=5" in err and not storage.exists()
    assert not list((tmp_path / "spx").rglob("*.npz"))  # checked before any set was computed


def test_trial_resources_the_cluster_cannot_place_are_refused_before_the_search(ray_session, tmp_path, capsys,
                                                                                 tiny_config_values):
    """3 scorers of 0.9 CPU each beside the learner and the driver need 3.7 CPUs; the test
    cluster has 2: exit 2 naming the settings and the need, nothing written."""
    space = _space(tmp_path, tiny_config_values)
    storage = tmp_path / "runs"
    assert main(["search", str(space), "--storage", str(storage), "--scorers-per-trial", "3"]) == 2
    err = capsys.readouterr().err
    assert "--scorers-per-trial ask for more than this machine has" in err
    assert "one trial needs 5 bundles (3.7 CPUs, 0 GPUs" in err and "nodes have 2 CPU/0 GPU" in err
    assert not storage.exists()


def test_trial_bundles_are_packed_over_the_nodes():
    from halo_ray.distributed.actors import TrialResources

    two_scorers = TrialResources.per_trial(2.0, 1.0, scorers=2)  # bundles: 0.2 CPU, 3 x (1.8 CPU, 1 GPU)
    assert two_scorers.unmet([{"CPU": 4, "GPU": 2}, {"CPU": 2, "GPU": 1}]) is None
    assert "one trial needs 4 bundles (5.6 CPUs, 3 GPUs" in two_scorers.unmet([{"CPU": 8, "GPU": 2}])
    assert "nodes have 1.9 CPU/1 GPU, 1.9 CPU/1 GPU, 1.9 CPU/1 GPU" in two_scorers.unmet([{"CPU": 1.9, "GPU": 1}] * 3)
    assert TrialResources().unmet([{"CPU": 1.0}]) is None
    assert TrialResources().unmet([]) is not None


def test_source_models_are_pretrained_ahead_of_the_trials(ray_session, tmp_path, tiny_config_values):
    """A grid search's missing shared source models (one per seed here: the strategy is not
    in the source key) are trained before its trials, each on its share of the CPUs, and equal the
    model a plain run trains with that many threads."""
    import torch

    from halo_ray.distributed.actors import TrialResources
    from halo_ray.distributed.search import SearchPaths, pretrain_sources, sources_to_pretrain
    from halo_ray.distributed.space import load_search_space
    from halo_ray.learner import Learner
    from halo_ray.run import load_checkpoint
    from halo_ray.run.checkpointer import source_checkpoint

    space = load_search_space(_space(tmp_path, tiny_config_values, parameters={
        "strategy": {"grid": ["halo", "random"]}, "seed": {"grid": [0, 1]}}))
    paths = SearchPaths(tmp_path / "runs" / "tiny")
    configs = sources_to_pretrain(space, paths)
    assert sorted(c.seed for c in configs) == [0, 1]
    assert all(Path(c.source_cache) == paths.source_cache for c in configs)
    pretrain_sources(configs, TrialResources())  # 2 CPUs, 2 models: one thread each
    assert sources_to_pretrain(space, paths) == []
    for cfg in configs:
        plain = cfg.replace(num_threads=1, source_cache=str(tmp_path / f"plain{cfg.seed}"))
        want = source_checkpoint(plain, Learner(plain, log=lambda _: None), lambda _: None)
        got = load_checkpoint(cfg.source_cache_files()[0])
        assert want["trainer"]["model"].keys() == got["trainer"]["model"].keys()
        assert all(torch.equal(want["trainer"]["model"][k], got["trainer"]["model"][k]) for k in got["trainer"]["model"])
    # trials drawn at random are not known ahead: they pre-train as they come
    drawn = load_search_space(_space(tmp_path, tiny_config_values, searcher="random", num_samples=2,
                                     parameters={"curvature": {"uniform": [0.5, 1.5]}}))
    assert sources_to_pretrain(drawn, SearchPaths(tmp_path / "drawn")) == []
    # a source model that one trial needs is trained in that trial, at no idle cost to others
    alone = load_search_space(_space(tmp_path, tiny_config_values, parameters={"seed": {"grid": [0, 1]}}))
    assert sources_to_pretrain(alone, SearchPaths(tmp_path / "alone")) == []


def _quiet_idle_workers(timeout_s: float = 180.0) -> set[int]:
    """Wait until this machine's idle Ray workers (titled ``ray::IDLE``: no actor or task yet)
    have finished starting, their imports included: under 50 ms of CPU in a second (Ray's own
    threads). Their pids."""

    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    deadline = time.time() + timeout_s
    last: dict[int, int] = {}
    while time.time() < deadline:
        now: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::IDLE"):
                    now[int(entry.name)] = cpu(int(entry.name))
            except OSError:
                continue
        if now and now.keys() == last.keys() and all(now[pid] - last[pid] <= 5 for pid in now):
            return set(now)
        last = now
        time.sleep(1.0)
    raise AssertionError(f"Ray's idle workers were still starting after {timeout_s} s: {last}")


def test_a_trials_learners_start_in_processes_started_ahead(ray_session, tmp_path, tiny_config_values):
    """Learner processes asked for before a trial (one per learner and scorer) hold the
    learner's imports when the trial asks: its actors start in them (the raylet matches the
    runtime environment the driver computes for a trial's learners to the one they carry)."""
    import dataclasses

    from ray import tune

    from halo_ray.distributed.actors import TrialResources
    from halo_ray.distributed.warm import WarmLearners

    def _trial_actors_report(config: dict) -> None:
        """Tune trial: create and ready a trial's actors as ``run_trial`` does; report how many of
        its learner processes had begun the learner's imports before the trial asked for them."""
        from halo_ray.config import build_config
        from halo_ray.distributed.actors import start_trial_actors

        actors = start_trial_actors(build_config(config["values"]), TrialResources(**config["resources"])).ready()
        tune.report({"warm": actors.learners_started_ahead, "processes": actors.learner_processes})

    resources = TrialResources.per_trial(1.0, scorers=1)
    assert WarmLearners(cpus=resources.learner_cpus, gpus=0.0).ahead(2) == 2
    _quiet_idle_workers()  # their imports done: the trial's actors do not wait for them
    tuner = tune.Tuner(
        tune.with_resources(_trial_actors_report, resources.placement_group_factory()),
        param_space={"values": tiny_config_values, "resources": dataclasses.asdict(resources)},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )
    [result] = tuner.fit()
    assert result.error is None
    assert result.metrics["processes"] == 2 and result.metrics["warm"] == 2


def test_the_drivers_pretraining_tasks_carry_the_environment_prestarted_for_them(ray_session):
    """The source pre-training runs as tasks of the search's driver (the job's environment):
    such a task carries exactly the runtime environment string the driver prestarts processes
    with (the raylet hands a waiting process only to an equal one), and its process ran the
    hook. (Whether a waiting process is free depends on the raylet's cap of idle workers,
    about one per CPU, which the session's earlier searches may fill.)"""
    import ray

    from halo_ray.distributed.warm import WarmLearners, learner_runtime_env, serialized_learner_env

    def carried() -> tuple[str, float | None]:
        from halo_ray.distributed import warm

        return ray._private.worker.global_worker.core_worker.get_current_runtime_env(), warm.PREIMPORTED_AT

    assert WarmLearners(cpus=1.0, gpus=0.0).ahead(1, for_trials=False) == 1
    env, imported = ray.get(ray.remote(carried).options(runtime_env=learner_runtime_env()).remote())
    assert env == serialized_learner_env(dict(ray.get_runtime_context().runtime_env))
    assert imported is not None


def test_warm_learners_are_spread_over_the_nodes_that_hold_them():
    """Requests go to nodes in proportion to the learners each holds, never beyond; single
    requests rotate; the concurrent trials bound the first wave."""
    import dataclasses

    from halo_ray.distributed.actors import TrialResources
    from halo_ray.distributed.search import concurrent_trials
    from halo_ray.distributed.space import load_search_space
    from halo_ray.distributed.warm import WarmLearners, learner_slots

    nodes = [
        {"NodeID": "head", "Alive": True, "Resources": {"CPU": 0.0}},
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 2.0}},
        {"NodeID": "dead", "Alive": False, "Resources": {"CPU": 8.0}},
    ]
    assert learner_slots(nodes, 0.9, 0.0) == {"a": 4, "b": 2}
    assert learner_slots(nodes, 0.9, 1.0) == {"a": 1}
    warm = WarmLearners(cpus=0.9, gpus=0.0)
    slots = {"a": 4, "b": 2}
    assert warm.spread(3, slots) == {"a": 2, "b": 1}
    assert warm.spread(9, slots) == {"a": 4, "b": 2}
    assert warm.spread(0, slots) == {} and warm.spread(2, {}) == {}
    singles = [warm.spread(1, slots) for _ in range(2)]
    assert sorted(next(iter(s)) for s in singles) == ["a", "b"]  # one each, in turn
    space = load_search_space(ROOT / "search_spaces" / "quickstart.yaml")  # 4 trials, at most 2 at once
    assert concurrent_trials(space, TrialResources(), {"CPU": 64.0}) == 2
    space = dataclasses.replace(space, max_concurrent_trials=None)
    assert concurrent_trials(space, TrialResources(), {"CPU": 2.5}) == 2
    assert concurrent_trials(space, TrialResources(), {"CPU": 64.0}) == 4
    assert concurrent_trials(space, TrialResources.per_trial(1.0, 1.0), {"CPU": 64.0, "GPU": 3.0}) == 3
    assert concurrent_trials(space, TrialResources.per_trial(1.0, scorers=1), {"CPU": 4.0}) == 2  # 1.9 CPUs each


def test_a_learners_runtime_environment_string_is_rays():
    """Without a parent environment a learner's is serialized as given; under a parent's (a
    Tune trial's) Ray merges ``env_vars`` and writes compact JSON with sorted keys."""
    from halo_ray.distributed.warm import HOOK, learner_runtime_env, serialized_learner_env

    [(variable, hook)] = learner_runtime_env()["env_vars"].items()
    assert hook == HOOK
    assert json.loads(serialized_learner_env(None)) == {"env_vars": {variable: HOOK}}
    merged = serialized_learner_env({"env_vars": {"PL_DISABLE_FORK": "1"}, "config": {"setup_timeout_seconds": 9}})
    assert merged == json.dumps(
        {"config": {"setup_timeout_seconds": 9}, "env_vars": {"PL_DISABLE_FORK": "1", variable: HOOK}},
        separators=(",", ":"), sort_keys=True,
    )


def test_warm_learners_that_no_raylet_starts_are_reported_once_and_learners_start_cold(ray_session, monkeypatch):
    """When no node's raylet answers the prestart call, the search is told once and goes on cold."""
    import socket

    import ray

    from halo_ray.distributed.warm import WarmLearners

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    node = {"NodeID": "ab" * 28, "Alive": True, "NodeManagerAddress": "127.0.0.1", "NodeManagerPort": port,
            "Resources": {"CPU": 2.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [node])
    said: list[str] = []
    warm = WarmLearners(cpus=1.0, gpus=0.0, log=said.append)
    assert warm.ahead(2) == 0 and warm.failed
    assert warm.ahead(1) == 0
    assert len(said) == 1
    assert said[0].startswith("learner processes start cold: no raylet prestarted workers (node abababab")


def test_a_begun_actor_call_runs_in_order_and_raises_its_error_when_waited_for(ray_session, tiny_config_values):
    """``ActorProxy.begin`` (the pool reveals a chunk while the learner scores the next): the
    call runs before any later call of the run (the next chunk's centres see it), its result
    comes with the wait, and a failed call raises the pool's own error there."""
    import ray

    from halo_ray.config import build_config
    from halo_ray.distributed.actors import ActorProxy, PoolActor

    cfg = build_config(tiny_config_values)
    shapes = [(64, 128)] * 3
    pool = ActorProxy(ray.remote(PoolActor).options(num_cpus=0).remote(cfg, shapes))
    centres = np.array([[10, 20], [30, 40]], np.int32)
    wait = pool.begin("reveal_many", 1, [1], [centres], region_size=cfg.region_size)
    seen = pool.centres_of([0, 1])  # made after the begun call: runs after it
    np.testing.assert_array_equal(seen[1], centres)
    assert seen[0].shape == (0, 2)
    [record] = wait()
    assert (record.round, record.index, record.picks) == (1, 1, 2)
    failed = pool.begin("reveal_many", 1, [7], [centres], region_size=cfg.region_size)
    with pytest.raises(ValueError, match=r"index must be an integer in \[0, 2\] .* but got index=7"):
        failed()


def test_a_trials_process_runs_checkpoints_and_restores_rounds_without_torch(ray_session, tmp_path, tiny_config_values):
    """The run loop, in a fresh process driving real learner and pool actors as a trial's does,
    runs round 0 and a round with TensorBoard and pictures, makes a checkpoint and continues
    from it in other actors, without importing torch (~1 s of CPU per trial): the tensors stay
    in the learner, which makes and reads the checkpoint's bytes, the pool handing its state to
    the learner directly. The continued round equals
    the uninterrupted one bit for bit, and the files load as before (tensors, weights only)."""
    import torch

    from halo_ray.run import load_checkpoint

    values = {**tiny_config_values, "rounds": 2, "round_steps": 3, "source_steps": 8}
    address = ray_session.get_runtime_context().gcs_address
    code = f"""
import json, shutil, sys
from pathlib import Path
import ray
ray.init(address={address!r}, log_to_driver=False)
fetched = []  # what this process receives from its actors
original_get = ray.get
def spy(refs, *args, **kwargs):
    out = original_get(refs, *args, **kwargs)
    fetched.append(out)
    return out
ray.get = spy
from halo_ray.config import build_config
from halo_ray.distributed.actors import ActorProxy, LearnerActor, PoolActor
from halo_ray.run import ActiveLearningRun
cfg = build_config(json.loads({json.dumps(values)!r}))
root = Path({str(tmp_path)!r})

def run_in(name):
    learner = ray.remote(LearnerActor).options(num_cpus=0).remote(cfg)
    shapes = [tuple(s) for s in ray.get(learner.call.remote("target_shapes"))]
    pool = ray.remote(PoolActor).options(num_cpus=0).remote(cfg, shapes)
    return ActiveLearningRun(cfg, root / name, learner=ActorProxy(learner), pool=ActorProxy(pool), log=lambda _: None)

run = run_in("whole")
run.start_or_resume(resume=False)
run.run_round(1)
data = run.checkpoint_bytes()
shutil.copytree(root / "whole" / "results", root / "continued" / "results")  # the rows a resume finds
run.run_round(2)
run.close()
again = run_in("continued")
again.restore(data, "round 1's bytes")
again.run_round(2)
again.close()
pool_states = sum(1 for v in fetched if isinstance(v, dict) and "mask_bits" in v)
print(json.dumps(dict(torch="torch" in sys.modules, whole=run.last_row["miou"], continued=again.last_row["miou"],
                      rounds=[run.round, again.round], pool_states=pool_states, calls=len(fetched))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False
    assert seen["rounds"] == [2, 2] and seen["continued"] == seen["whole"]
    assert seen["calls"] > 20 and seen["pool_states"] == 0  # the pool's state went to the learner directly

    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "round_002.pt")
    b = load_checkpoint(tmp_path / "continued" / "checkpoints" / "round_002.pt")
    assert isinstance(a["pool"]["pixel_flat"], torch.Tensor) and a["round"] == b["round"] == 2
    for key, va in a["pool"].items():
        assert torch.equal(va, b["pool"][key]) if isinstance(va, torch.Tensor) else va == b["pool"][key], key
    for name, tensor in a["learner"]["trainer"]["model"].items():
        assert torch.equal(tensor, b["learner"]["trainer"]["model"][name]), name
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert list((tmp_path / "whole" / "tensorboard").rglob("events.out.tfevents.*"))
    assert (tmp_path / "whole" / "snapshots").is_dir()


def test_a_multiclass_trials_process_ranks_regions_without_torch(ray_session, tmp_path, tiny_config_values):
    """Unit multiclass through real actors, as a trial drives them (PixBal over 2 scorer actors):
    the scorers' region terms, PixBal's prior, the pool's costs, availability and answers go
    from actor to actor, the learner ranks the pool and only the picks reach the trial's
    process, which imports no torch. The rounds equal an in-process run's."""
    from halo_ray.config import build_config
    from halo_ray.run import ActiveLearningRun

    values = {
        **tiny_config_values, "unit": "multiclass", "strategy": "pixbal", "clicks_per_round": 30,
        "superpixels": "grid", "num_superpixels": 32, "log_images": 0, "superpixel_cache": str(tmp_path / "spx"),
        "rounds": 2, "round_steps": 3, "source_steps": 8,
    }
    cfg = build_config(values)
    local = ActiveLearningRun(cfg, tmp_path / "local", log=lambda _: None, tensorboard=False).execute()
    address = ray_session.get_runtime_context().gcs_address
    code = f"""
import json, sys
from pathlib import Path
import numpy as np
import ray
ray.init(address={address!r}, log_to_driver=False)
largest = []  # the largest array in each answer this process receives
def size(value):
    if isinstance(value, np.ndarray):
        return value.size
    if isinstance(value, (list, tuple)):
        return max((size(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((size(v) for v in value.values()), default=0)
    return 0
original_get = ray.get
def spy(refs, *args, **kwargs):
    out = original_get(refs, *args, **kwargs)
    largest.append(size(out))
    return out
ray.get = spy
from halo_ray.config import build_config
from halo_ray.distributed.actors import ActorProxy, FanOutScorer, LearnerActor, PoolActor, ScorerActor
from halo_ray.run import ActiveLearningRun
cfg = build_config(json.loads({json.dumps(values)!r}))
learner = ray.remote(LearnerActor).options(num_cpus=0).remote(cfg)
scorers = [ray.remote(ScorerActor).options(num_cpus=0).remote(cfg) for _ in range(2)]
shapes = [tuple(s) for s in ray.get(learner.call.remote("target_shapes"))]
pool = ray.remote(PoolActor).options(num_cpus=0).remote(cfg, shapes)
run = ActiveLearningRun(cfg, Path({str(tmp_path / "actors")!r}), learner=ActorProxy(learner), pool=ActorProxy(pool),
                        scorer=FanOutScorer(learner, scorers), log=lambda _: None, tensorboard=False)
run.start_or_resume(resume=False)
rows = []
for r in (1, 2):
    run.run_round(r)
    rows.append(dict(run.last_row))
run.close()
print(json.dumps(dict(torch="torch" in sys.modules, largest=max(largest), calls=len(largest),
                      rows=[{{k: row[k] for k in ("round", "miou", "clicks", "labelled_pct")}} for row in rows])))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False
    images, regions = 8, 32  # the tiny benchmark's target-train images, grid superpixels each
    assert seen["calls"] > 10 and seen["largest"] < images * regions  # no [N, R] table reached the trial
    want = local[local["round"] >= 1][["round", "miou", "clicks", "labelled_pct"]].to_dict("records")
    assert seen["rows"] == want
