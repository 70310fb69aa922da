"""Result tables on hand-made searches with known numbers, written to Parquet and read back."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from halo_ray.data.labels import CITYSCAPES_CLASSES
from halo_ray.results import (
    IOU_COLUMNS,
    RADIUS_COLUMNS,
    RESULT_COLUMNS,
    AnalysisError,
    ablation_table,
    class_iou_table,
    curve_auc,
    final_rows,
    learning_curves,
    missing_trials,
    paired_differences,
    radius_analysis,
    read_results,
    strategy_table,
    trial_auc,
    write_round_row,
)


def make_row(trial, round_, *, strategy="halo", seed=0, budget=5.0, rounds=2, miou=50.0, labelled_pct=None,
             iou=None, radius=None, geometry="hyperbolic", config=None, **columns) -> dict:
    """One result row with every schema column; config_json holds the trial's config."""
    cfg = {"seed": seed, "strategy": strategy, "budget": budget, "rounds": rounds, "curvature": 1.0,
           "bins": 100, "boundary_window": 3, "geometry": geometry, "data_root": f"/somewhere/{trial}"}
    cfg.update(config or {})
    row = {c: None for c in RESULT_COLUMNS}
    row.update(
        search="s", trial_id=trial, seed=seed, experiment="e", source="gtav", target="cityscapes",
        strategy=strategy, unit="region", budget=budget, rounds=rounds, round=round_, step=10 * round_,
        labelled_pct=budget * round_ / rounds if labelled_pct is None else labelled_pct,
        labelled_pixels=100 * round_, void_pixels=0, curvature=cfg["curvature"], curvature_learned=None,
        bins=cfg["bins"], region_size=3, suppression=11, hfr=True, geometry=geometry, embed_dim=64,
        backbone="tiny", loop="continuous", reference=False, miou=miou, pixel_acc=90.0, radius_mean=None,
        radius_acc_spearman=None, wall_s=1.0, halo_ray_version="0", config_json=json.dumps(cfg),
    )
    for i, column in enumerate(IOU_COLUMNS):
        row[column] = None if iou is None else (None if np.isnan(iou[i]) else float(iou[i]))
    for i, column in enumerate(RADIUS_COLUMNS):
        row[column] = None if radius is None else (None if np.isnan(radius[i]) else float(radius[i]))
    row.update(columns)
    return row


def write_trial(path, trial, finals, *, rounds=2, upto=None, **kw) -> None:
    """Rounds 0..upto (default: all) of one trial; round r has mIoU finals * (r + 1) / (rounds + 1)."""
    upto = rounds if upto is None else upto
    for r in range(upto + 1):
        miou = finals * (r + 1) / (rounds + 1)
        write_round_row(path, make_row(trial, r, rounds=rounds, miou=miou, **kw))


def read_back(path) -> pd.DataFrame:
    return read_results(path)


@pytest.fixture
def search(tmp_path):
    """halo 50/52/57 and random 48/49/50 at budget 5 (seeds 0-2), halo 30 and random 20 at budget 1
    (seed 0), and one halo trial at budget 5 stopped after round 1."""
    for seed, (h, r) in enumerate([(50.0, 48.0), (52.0, 49.0), (57.0, 50.0)]):
        write_trial(tmp_path, f"h{seed}", h, seed=seed)
        write_trial(tmp_path, f"r{seed}", r, seed=seed, strategy="random")
    write_trial(tmp_path, "h_b1", 30.0, budget=1.0)
    write_trial(tmp_path, "r_b1", 20.0, budget=1.0, strategy="random")
    write_trial(tmp_path, "h_partial", 99.0, seed=7, upto=1)
    return read_back(tmp_path)


def test_final_rows_only_complete_trials(search):
    final = final_rows(search)
    assert sorted(final["trial_id"]) == ["h0", "h1", "h2", "h_b1", "r0", "r1", "r2", "r_b1"]
    assert (final["round"] == 2).all()
    assert final.set_index("trial_id").loc["h2", "miou"] == pytest.approx(57.0)


def test_missing_trials_names_what_is_missing(tmp_path, search):
    missing = missing_trials(search)
    assert missing["trial_id"].tolist() == ["h_partial"]
    assert missing.iloc[0][["last_round", "rounds", "missing_rounds"]].tolist() == [1, 2, "2"]
    write_trial(tmp_path, "long", 10.0, rounds=5, upto=2)
    assert missing_trials(read_back(tmp_path)).set_index("trial_id").loc["long", "missing_rounds"] == "3-5"


def test_strategy_table_exact_mean_std_and_single_seed(search):
    table = strategy_table(search).set_index(["strategy", "budget"])
    halo = table.loc[("halo", 5.0)]
    assert halo["miou_mean"] == pytest.approx(53.0)
    assert halo["miou_std"] == pytest.approx(math.sqrt(13.0))  # deviations -3, -1, 4 → 26 / (3 - 1)
    assert halo["miou_ci95"] == pytest.approx(4.302652729911275 * math.sqrt(13.0 / 3.0))  # t(.975, 2)·s/√n
    assert halo["n_seeds"] == 3  # the partial trial is not counted
    assert table.loc[("random", 5.0), "miou_mean"] == pytest.approx(49.0)
    assert table.loc[("random", 5.0), "miou_std"] == pytest.approx(1.0)
    one = table.loc[("halo", 1.0)]
    assert one["miou_mean"] == pytest.approx(30.0) and math.isnan(one["miou_std"]) and one["n_seeds"] == 1


def test_paired_differences_mean_and_t_interval(search):
    paired = paired_differences(search, "random").set_index(["strategy", "budget"])
    five = paired.loc[("halo", 5.0)]
    # diffs 2, 3, 7: mean 4, sample sd sqrt(7); t(0.975, 2) = 4.302652729911275
    assert five["diff_mean"] == pytest.approx(4.0)
    assert five["n_pairs"] == 3
    assert five["ci_half_width"] == pytest.approx(4.302652729911275 * math.sqrt(7.0 / 3.0))
    reference = stats.ttest_rel([50.0, 52.0, 57.0], [48.0, 49.0, 50.0]).confidence_interval(0.95)
    assert (five["ci_low"], five["ci_high"]) == pytest.approx((reference.low, reference.high))
    assert (five["strategy_mean"], five["baseline_mean"]) == pytest.approx((53.0, 49.0))
    one = paired.loc[("halo", 1.0)]
    assert one["diff_mean"] == pytest.approx(10.0) and one["n_pairs"] == 1 and math.isnan(one["ci_half_width"])


def test_pairing_needs_same_config_but_ignores_paths(tmp_path):
    write_trial(tmp_path, "r0", 40.0, strategy="random", config={"data_root": "/a"})
    write_trial(tmp_path, "h0", 45.0, config={"data_root": "/b", "source_cache": "/c"})  # paths differ: paired
    write_trial(tmp_path, "h0c", 47.0, config={"curvature": 0.5})  # another curvature: no partner
    write_trial(tmp_path, "h1", 47.0, seed=1)  # another seed: no partner
    paired = paired_differences(read_back(tmp_path), "random")
    assert paired["n_pairs"].tolist() == [1]
    assert paired["diff_mean"].tolist() == [pytest.approx(5.0)]


def test_unknown_baseline_names_it_and_the_strategies(search):
    with pytest.raises(ValueError, match=r"'ripu'.*\['halo', 'random'\]"):
        paired_differences(search, "ripu")


def test_class_iou_table_paper_layout(tmp_path):
    iou_a = np.arange(19, dtype=float)
    iou_b = iou_a + 2.0
    iou_b[3] = np.nan  # a class one seed never saw: the mean of the other seed stays
    write_trial(tmp_path, "a", 40.0, iou=iou_a)
    write_trial(tmp_path, "b", 44.0, seed=1, iou=iou_b)
    table = class_iou_table(read_back(tmp_path))
    assert table.columns.tolist() == ["strategy", "budget", *CITYSCAPES_CLASSES, "mIoU"]
    row = table.iloc[0]
    assert row["road"] == pytest.approx(1.0) and row["bicycle"] == pytest.approx(19.0)
    assert row["wall"] == pytest.approx(3.0)  # only seed 0
    assert row["mIoU"] == pytest.approx(42.0)


def test_ablation_table_groups_by_columns_and_config_keys(tmp_path):
    for seed, (c1, c05) in enumerate([(50.0, 40.0), (54.0, 44.0)]):
        write_trial(tmp_path, f"c1s{seed}", c1, seed=seed)
        write_trial(tmp_path, f"c05s{seed}", c05, seed=seed, config={"curvature": 0.5, "boundary_window": 5})
    frame = read_back(tmp_path)
    by_c = ablation_table(frame, "curvature").set_index("curvature")
    assert by_c.loc[1.0, "miou_mean"] == pytest.approx(52.0)
    assert by_c.loc[0.5, "miou_std"] == pytest.approx(math.sqrt(8.0))
    assert by_c["n"].tolist() == [2, 2] and "budget" in by_c.columns
    by_window = ablation_table(frame, ["boundary_window"]).set_index("boundary_window")  # only in config_json
    assert by_window.loc[5, "miou_mean"] == pytest.approx(42.0)
    assert ablation_table(frame, ["hfr", "geometry"])["n"].tolist() == [4]
    with pytest.raises(ValueError, match="'nope'"):
        ablation_table(frame, ["curvature", "nope"])


def test_learning_curves_and_auc(tmp_path):
    for seed, mious in enumerate([[10.0, 20.0, 40.0], [12.0, 22.0, 44.0]]):
        for r, m in enumerate(mious):
            write_round_row(tmp_path, make_row(f"t{seed}", r, seed=seed, miou=m, labelled_pct=float(r)))
    frame = read_back(tmp_path)
    curves = learning_curves(frame)
    assert curves["round"].tolist() == [0, 1, 2]
    assert curves["miou_mean"].tolist() == pytest.approx([11.0, 21.0, 42.0])
    assert curves["miou_std"].tolist() == pytest.approx([math.sqrt(2.0)] * 2 + [math.sqrt(8.0)])
    assert curves["labelled_pct_mean"].tolist() == pytest.approx([0.0, 1.0, 2.0])
    per_trial = trial_auc(frame).set_index("trial_id")["auc"]
    assert per_trial["t0"] == pytest.approx(15.0 + 30.0)  # (10 + 20) / 2 + (20 + 40) / 2
    assert per_trial["t1"] == pytest.approx(float(np.trapezoid([12.0, 22.0, 44.0], [0.0, 1.0, 2.0])))
    auc = curve_auc(frame).iloc[0]
    assert auc["auc_mean"] == pytest.approx(47.5) and auc["n_trials"] == 2  # (45 + 50) / 2
    assert auc["auc_std"] == pytest.approx(math.sqrt(12.5))


def test_radius_analysis_planted_relations_known_example_and_euclidean(tmp_path):
    x = np.arange(19, dtype=float)
    write_trial(tmp_path, "up", 50.0, radius=x, iou=np.exp(x / 4))  # monotone, not linear
    write_trial(tmp_path, "down", 50.0, seed=1, radius=x, iou=-(x**3))
    small_r = np.full(19, np.nan)
    small_i = np.full(19, np.nan)
    small_r[:4], small_i[:4] = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    small_i[5] = 9.0  # IoU without a radius: not a point
    write_trial(tmp_path, "small", 50.0, seed=2, radius=small_r, iou=small_i)
    write_trial(tmp_path, "eu", 50.0, seed=3, geometry="euclidean", iou=x)
    out = radius_analysis(read_back(tmp_path)).set_index("trial_id")
    assert out.loc["up", "spearman"] == pytest.approx(1.0) and out.loc["up", "pearson"] < 0.99
    assert out.loc["down", "spearman"] == pytest.approx(-1.0)
    # d = 0, -1, 1, 0 → 1 - 6 * 2 / (4 * 15) = 0.8
    assert out.loc["small", "spearman"] == pytest.approx(0.8)
    assert out.loc["small", "n_points"] == 4
    assert out.loc["small", "pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 4])[0, 1])
    assert math.isnan(out.loc["eu", "spearman"]) and "euclidean" in out.loc["eu", "note"]
    pooled_r = np.concatenate([x, x, small_r])
    pooled_i = np.concatenate([np.exp(x / 4), -(x**3), small_i])
    ok = np.isfinite(pooled_r) & np.isfinite(pooled_i)
    assert out.loc["pooled", "n_points"] == 19 + 19 + 4
    assert out.loc["pooled", "spearman"] == pytest.approx(stats.spearmanr(pooled_r[ok], pooled_i[ok]).statistic)


def test_radius_analysis_all_euclidean_says_why(tmp_path):
    write_trial(tmp_path, "eu", 50.0, geometry="euclidean", iou=np.arange(19.0))
    out = radius_analysis(read_back(tmp_path))
    assert out["trial_id"].tolist() == ["eu", "pooled"]
    assert out["spearman"].isna().all() and "euclidean" in out.iloc[1]["note"]


ALL_TABLES = [
    final_rows, strategy_table, class_iou_table, learning_curves, curve_auc, radius_analysis, missing_trials,
    lambda f: paired_differences(f, "halo"), lambda f: ablation_table(f, "curvature"),
]


@pytest.mark.parametrize("table", ALL_TABLES)
def test_empty_frame_is_refused(table, search):
    with pytest.raises(ValueError, match="no rows"):
        table(search.iloc[0:0])


@pytest.mark.parametrize(
    ("table", "dropped"),
    [
        (strategy_table, "miou"),
        (lambda f: paired_differences(f, "random"), "config_json"),
        (class_iou_table, "iou_road"),
        (radius_analysis, "radius_car"),
        (learning_curves, "labelled_pct"),
    ],
)
def test_missing_column_is_named(table, dropped, search):
    with pytest.raises(ValueError, match=rf"missing required columns \['{dropped}'\]"):
        table(search.drop(columns=[dropped]))


def test_duplicate_trial_rounds_are_refused(search):
    with pytest.raises(AnalysisError, match="more than one row"):
        strategy_table(pd.concat([search, search.iloc[:1]]))


def test_strategy_table_adds_the_best_validation_when_every_trial_has_one(tmp_path, search):
    assert "best_miou_mean" not in strategy_table(search)  # results without the column
    for seed, best in enumerate([55.0, 56.0, 60.0]):
        write_round_row(tmp_path / "b", make_row(f"h{seed}", 0, rounds=0, miou=50.0, best_miou=best, seed=seed,
                                                    labelled_pct=0.0))
    table = strategy_table(read_back(tmp_path / "b")).set_index(["strategy", "budget"])
    halo = table.loc[("halo", 5.0)]
    assert halo["best_miou_mean"] == pytest.approx(57.0) and halo["best_miou_std"] == pytest.approx(math.sqrt(7.0))
    assert halo["miou_mean"] == pytest.approx(50.0) and halo["n_seeds"] == 3
