"""write_report: files with the expected numbers, the missing trials, and refusals that name the problem."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from halo_ray.results import (
    IOU_COLUMNS,
    RADIUS_COLUMNS,
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    AnalysisError,
    markdown_table,
    write_report,
    write_round_row,
)


def make_row(trial, round_, *, strategy="halo", seed=0, budget=5.0, rounds=2, miou=50.0, curvature=1.0,
             geometry="hyperbolic") -> dict:
    """One result row with every schema column; per-class IoU and radius are planted monotone."""
    config = {"seed": seed, "strategy": strategy, "budget": budget, "rounds": rounds, "curvature": curvature,
              "data_root": "/data"}
    row = {c: None for c in RESULT_COLUMNS}
    row.update(
        search="demo", trial_id=trial, seed=seed, experiment="e", strategy=strategy, unit="region", budget=budget,
        rounds=rounds, round=round_, labelled_pct=budget * round_ / rounds, curvature=curvature, bins=100,
        region_size=3, hfr=True, geometry=geometry, loop="continuous", miou=miou, config_json=json.dumps(config),
    )
    for i, column in enumerate(IOU_COLUMNS):
        row[column] = float(i)
    for i, column in enumerate(RADIUS_COLUMNS):
        row[column] = float(i) / 10 if geometry == "hyperbolic" else None
    return row


def write_trial(results, trial, final, *, rounds=2, upto=None, **kw) -> None:
    for r in range((rounds if upto is None else upto) + 1):
        write_round_row(results, make_row(trial, r, rounds=rounds, miou=final - 10.0 * (rounds - r), **kw))


@pytest.fixture
def search_dir(tmp_path):
    """runs/demo: halo 50/52/57 vs random 48/49/50 (seeds 0-2), a halo trial stopped at round 1,
    search.json, and round-1 snapshots of one halo and one random trial."""
    root = tmp_path / "runs" / "demo"
    results = root / "results"
    for seed, (h, r) in enumerate([(50.0, 48.0), (52.0, 49.0), (57.0, 50.0)]):
        write_trial(results, f"halo_{seed}", h, seed=seed)
        write_trial(results, f"random_{seed}", r, seed=seed, strategy="random")
    write_trial(results, "halo_stopped", 90.0, seed=5, rounds=4, upto=1)
    (root / "search.json").write_text(json.dumps({"name": "demo", "parameters": {"seed": {"grid": [0, 1, 2]}}}))
    rng = np.random.default_rng(0)
    for trial, strategy, index in [("halo_0", "halo", [3, 8]), ("random_0", "random", [8, 11])]:
        folder = root / "snapshots" / trial
        folder.mkdir(parents=True)
        labelled = np.zeros((2, 8, 16), np.uint8)
        labelled[:, 1:4, 1:4] = 1
        np.savez(
            folder / "round_001.npz", image=rng.integers(0, 256, (2, 8, 16, 3), dtype=np.uint8),
            label=np.zeros((2, 8, 16), np.uint8), prediction=np.ones((2, 8, 16), np.uint8),
            score=rng.random((2, 8, 16), dtype=np.float32), radius=rng.random((2, 8, 16), dtype=np.float32),
            labelled_round=labelled, index=np.array(index), name=np.array(["x", "y"]), round=np.int64(1),
            strategy=np.str_(strategy), trial_id=np.str_(trial),
        )
    return root


def test_report_files_hold_the_numbers(search_dir, tmp_path):
    out = tmp_path / "analysis"
    report = write_report(search_dir, out)
    assert (report.n_trials, report.n_complete, report.baseline) == (7, 6, "random")
    for name in ["strategy_table", "paired_differences", "class_iou", "learning_curves", "curve_auc",
                 "radius_analysis", "missing"]:
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    for name in ["learning_curves.png", "radius_vs_iou.png", "selection_grid.png", "report.md"]:
        assert (out / name).stat().st_size > 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert report.files[-1] == out / "report.md" and all(p.is_file() for p in report.files)
    assert not list(out.rglob("*.tmp"))

    table = pd.read_csv(out / "strategy_table.csv").set_index("strategy")
    assert table.loc["halo", "miou_mean"] == pytest.approx(53.0)
    assert table.loc["halo", "miou_std"] == pytest.approx(math.sqrt(13.0))
    assert table.loc["random", "n_seeds"] == 3
    paired = pd.read_csv(out / "paired_differences.csv").iloc[0]
    assert paired["diff_mean"] == pytest.approx(4.0) and paired["n_pairs"] == 3
    assert paired["ci_half_width"] == pytest.approx(4.302652729911275 * math.sqrt(7.0 / 3.0))
    assert pd.read_csv(out / "radius_analysis.csv").set_index("trial_id").loc["pooled", "spearman"] == pytest.approx(1.0)

    text = (out / "report.md").read_text()
    assert "| halo | 5 | 53.00 | 3.61 | 8.96 | 3 |" in text  # sqrt(13) = 3.61; t(.975, 2)·sqrt(13/3) = 8.96
    assert "| halo | random | 5 | 4.00 | 3 |" in text
    missing = text.split("## Missing")[1].split("##")[0]
    assert "| halo_stopped | halo | 5 | 5 | 4 | 1 | 2-4 |" in missing
    # one grid per round and per target image both strategies' snapshots hold (only image 8)
    assert "![selection round1 image8](selection_round1_image8.png)" in text
    assert "![learning curves](learning_curves.png)" in text
    assert (out / "selection_round1_image8.png").read_bytes() == (out / "selection_grid.png").read_bytes()
    assert not list(out.glob("selection_round1_image3*"))
    assert '"grid": [' in text.split("## Configuration")[1]  # search.json, pretty-printed

    summary = report.summary()
    assert "7 trials, 6 complete" in summary
    assert "best halo 53.00 ± 3.61 mIoU (3 seeds); vs random +4.00 ± 6.57 (95 % CI) over 3 pairs" in summary
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "report.md").stat().st_mode & 0o777 == 0o666 & ~umask  # shareable, unlike mkstemp's 0600


def test_results_subfolder_finds_search_json_and_snapshots(search_dir, tmp_path):
    report = write_report(search_dir / "results", tmp_path / "out")
    assert (tmp_path / "out" / "selection_grid.png").is_file() and not report.notes
    assert "search.json" in (tmp_path / "out" / "report.md").read_text()


def test_results_folder_accepted_without_snapshots_or_random(tmp_path):
    results = tmp_path / "res"
    for seed in range(2):
        write_trial(results, f"h{seed}", 40.0 + seed, seed=seed)
        write_trial(results, f"e{seed}", 30.0 + seed, seed=seed, strategy="entropy", curvature=0.5)
    report = write_report(results, tmp_path / "out")
    assert report.baseline is None and not (tmp_path / "out" / "paired_differences.csv").exists()
    assert not (tmp_path / "out" / "selection_grid.png").exists()
    ablation = pd.read_csv(tmp_path / "out" / "ablation_curvature.csv").set_index("curvature")
    assert ablation.loc[0.5, "miou_mean"] == pytest.approx(30.5)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "None: every trial reached its last round." in text
    assert "config_json of trial e0" in text and '"curvature": 0.5' in text
    explicit = write_report(results, tmp_path / "out2", baseline="entropy")
    paired = pd.read_csv(tmp_path / "out2" / "paired_differences.csv")
    assert paired["n_pairs"].tolist() == [0]  # curvature differs: no pair, said rather than guessed
    assert "no pair with entropy" in explicit.summary()


def test_euclidean_only_report_notes_the_missing_radius_figure(tmp_path):
    results = tmp_path / "res"
    write_trial(results, "eu", 40.0, geometry="euclidean")
    report = write_report(results, tmp_path / "out")
    assert not (tmp_path / "out" / "radius_vs_iou.png").exists()
    assert any("radius vs IoU left out" in n for n in report.notes)
    assert "radius vs IoU left out" in (tmp_path / "out" / "report.md").read_text()


def test_markdown_table_format():
    frame = pd.DataFrame({"name": ["a|b", "c"], "x": [1.234, float("nan")], "n": [3, 4], "ok": [True, False]})
    assert markdown_table(frame) == (
        "| name | x | n | ok |\n|---|---:|---:|---|\n| a\\|b | 1.23 | 3 | True |\n| c |  | 4 | False |\n"
    )


def _old_schema(results):
    results.mkdir(parents=True)
    table = pa.table({"trial_id": ["a"], "round": [0], "miou": [1.0]})
    pq.write_table(table, results / "a-round000.parquet")


def _empty(results):
    results.mkdir(parents=True)
    pq.write_table(RESULT_SCHEMA.empty_table(), results / "empty.parquet")


def _file(results):
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("not a folder")


@pytest.mark.parametrize(
    ("make", "baseline", "message"),
    [
        (lambda r: None, None, "no such results folder"),
        (_file, None, "not a results folder"),
        (lambda r: r.mkdir(parents=True), None, r"not a results dataset: no \*.parquet"),
        (_old_schema, None, r"missing required columns \['strategy', 'budget'"),
        (_empty, None, "no rows"),
        (lambda r: write_trial(r, "h", 40.0), "ripu", r"'ripu'.*\['halo'\]"),
    ],
)
def test_bad_input_raises_and_writes_nothing(tmp_path, make, baseline, message):
    results = tmp_path / "results_here"
    make(results)
    out = tmp_path / "out"
    with pytest.raises(AnalysisError, match=message) as err:
        write_report(results, out, baseline=baseline)
    assert isinstance(err.value, ValueError)
    assert "ripu" in str(err.value) or "results_here" in str(err.value)  # names the value or the path
    assert not out.exists()


def test_a_search_over_variants_gets_one_row_per_configuration_with_its_interval(tmp_path):
    """Three HFR variants x 3 seeds: the report's configuration table groups by every varied
    key, with the 95 % t-interval of each mean."""
    results = tmp_path / "runs" / "hfr" / "results"
    variants = [{"hfr": False}, {"hfr": True, "hfr_norm": "rms"}, {"hfr": True, "hfr_norm": "l2"}]
    finals = {0: [40.0, 42.0, 44.0], 1: [50.0, 51.0, 55.0], 2: [45.0, 45.0, 48.0]}
    for v, variant in enumerate(variants):
        for seed, final in enumerate(finals[v]):
            for r in range(3):
                row = make_row(f"t{v}_{seed}", r, seed=seed, miou=final - 10.0 * (2 - r))
                config = {**json.loads(row["config_json"]), "hfr_norm": "rms", **variant}
                row.update(hfr=config["hfr"], config_json=json.dumps(config))
                write_round_row(results, row)
    (results.parent / "search.json").write_text(json.dumps({"name": "hfr", "variants": variants}))
    report = write_report(results.parent, tmp_path / "analysis")
    table = report.tables["configurations"].set_index(["hfr", "hfr_norm"])
    assert list(report.tables["configurations"].columns) == [
        "hfr", "hfr_norm", "budget", "miou_mean", "miou_std", "miou_ci95", "n"
    ]
    rms = table.loc[(True, "rms")]
    assert rms["miou_mean"] == pytest.approx(52.0) and rms["n"] == 3
    assert rms["miou_ci95"] == pytest.approx(4.302652729911275 * math.sqrt(7.0 / 3.0))  # t(.975, 2)·s/√3, s² = 7
    assert table.loc[(False, "rms"), "miou_mean"] == pytest.approx(42.0)
    assert "## Final mIoU per configuration" in report.report_md.read_text()
    # each variant against the first (HFR off), seed by seed: rms 50-40, 51-42, 55-44 -> 10, 9, 11
    diffs = report.tables["configuration_differences"].set_index(["hfr", "hfr_norm"])
    rms_diff = diffs.loc[(True, "rms")]
    assert rms_diff["diff_mean"] == pytest.approx(10.0) and rms_diff["n_pairs"] == 3
    assert rms_diff["ci_half_width"] == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3.0))  # s = 1
    assert diffs.loc[(True, "l2"), "diff_mean"] == pytest.approx((5 + 3 + 4) / 3)
    assert report.summary().splitlines()[1].startswith("budget 5 %: best configuration hfr=True, hfr_norm=rms: 52.00")


def test_variants_that_leave_the_first_ones_key_alone_and_trials_of_two_versions(tmp_path):
    """ablation_reference's shape: the first variant sets only ``reference``, the others one
    released key each (also reference false). The baseline is the first variant's whole
    configuration (the others do not match it), and a trial written before a key existed
    (no ``round_model`` in its config_json) compares as that key's default."""
    results = tmp_path / "runs" / "ref" / "results"
    variants = [{"reference": False}, {"hfr_positivity": "clamp"}, {"reference": True}]
    full = [{"reference": False, "hfr_positivity": "softplus"}, {"reference": False, "hfr_positivity": "clamp"},
            {"reference": True, "hfr_positivity": "clamp"}]
    finals = {0: [50.0, 52.0, 54.0], 1: [49.0, 50.0, 51.0], 2: [47.0, 47.0, 50.0]}
    for v, config_v in enumerate(full):
        for seed, final in enumerate(finals[v]):
            for r in range(3):
                row = make_row(f"t{v}_{seed}", r, seed=seed, miou=final - 10.0 * (2 - r))
                config = {**json.loads(row["config_json"]), **config_v}
                if seed != 1:  # seed 1's trials were written by an older halo_ray
                    config["round_model"] = "last"
                row.update(config_json=json.dumps(config))
                write_round_row(results, row)
    base = {"reference": False, "hfr_positivity": "softplus", "round_model": "last"}
    (results.parent / "search.json").write_text(json.dumps(
        {"name": "ref", "variants": variants, "set": {}, "base_config": base}))
    report = write_report(results.parent, tmp_path / "analysis")
    assert list(report.tables["configurations"].columns[:2]) == ["hfr_positivity", "reference"]
    diffs = report.tables["configuration_differences"].set_index(["hfr_positivity", "reference"])
    assert diffs.loc[("clamp", False), "diff_mean"] == pytest.approx(-2.0) and diffs.loc[("clamp", False), "n_pairs"] == 3
    assert diffs.loc[("clamp", True), "diff_mean"] == pytest.approx((-3 - 5 - 4) / 3)
