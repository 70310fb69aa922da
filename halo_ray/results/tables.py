"""Result tables: a results frame (one row per trial × round) → summary DataFrames.

Every function takes the frame :func:`halo_ray.results.read_results` returns and gives back
a DataFrame; none prints. "Final" means a trial's row of round ``rounds``: a trial that
stopped earlier (interrupted, or stopped by ASHA) is left out of final-mIoU tables and
listed by :func:`missing_trials` instead, so a partial search never silently mixes
round-3 numbers into a round-5 table.

Pairing (:func:`paired_differences`) compares a strategy with the baseline on two trials
with the same seed whose configs (each trial's ``config_json``) agree on every other key.
Keys in :data:`PAIRING_IGNORED_KEYS` do not count: they name places or runtime settings,
not the experiment (a search launched from two folders still pairs).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from halo_ray.data.labels import CITYSCAPES_CLASSES
from halo_ray.results.store import IOU_COLUMNS, RADIUS_COLUMNS


class AnalysisError(ValueError):
    """Results that cannot be analysed: no rows, missing columns, an unknown value or path."""


#: config keys that do not make two trials different experiments when pairing them:
#: the pairing varies these itself (seed, strategy), or they are names, paths and runtime
#: settings that do not change the numbers (evaluation batch size, threads, logging).
PAIRING_IGNORED_KEYS: frozenset[str] = frozenset(
    {
        "seed", "strategy",  # what a pair varies / matches explicitly
        "experiment",  # a label; two experiment files with one config still pair
        "data_root", "source_root", "target_root", "source_cache", "generate_data",  # paths
        "device", "num_threads", "decode_workers", "prefetch", "deterministic",  # config.RUNTIME_KEYS
        "eval_batch_size", "log_every", "log_images",  # evaluation batching, logging
    }
)

#: columns every analysis needs (the trial, where it stands, and its score)
BASE_COLUMNS: tuple[str, ...] = ("trial_id", "strategy", "budget", "rounds", "round", "miou")

_GROUP = ["strategy", "budget"]


# --- validation -------------------------------------------------------------------------


def check_frame(frame: pd.DataFrame, columns: Sequence[str] = BASE_COLUMNS) -> None:
    """Refuse a frame without rows or without ``columns`` (e.g. an older results schema)."""
    if not isinstance(frame, pd.DataFrame):
        raise AnalysisError(f"expected a results DataFrame, but got {type(frame).__name__}")
    missing = [c for c in dict.fromkeys([*BASE_COLUMNS, *columns]) if c not in frame.columns]
    if missing:
        raise AnalysisError(
            f"results frame is missing required columns {missing} "
            "(written by an older halo_ray? read it with halo_ray.results.read_results)"
        )
    if frame.empty:
        raise AnalysisError("results frame has no rows: there is nothing to analyse")
    duplicated = frame.duplicated(["trial_id", "round"], keep=False)
    if duplicated.any():
        pairs = sorted(set(zip(frame.loc[duplicated, "trial_id"], frame.loc[duplicated, "round"], strict=True)))
        raise AnalysisError(
            f"results frame holds more than one row for (trial_id, round) {pairs[:5]}: "
            "were two searches with the same trial ids concatenated?"
        )


def _mean_std_n(grouped: pd.api.typing.SeriesGroupBy, prefix: str) -> pd.DataFrame:
    """mean, sample std (ddof=1, NaN for one value), the half-width of the mean's 95 % Student-t
    interval (``<prefix>_ci95``: mean ± ci95; NaN for one value) and count of one grouped column."""
    out = grouped.agg(["mean", "std", "count"])  # pandas' std is the sample std (ddof=1)
    out.columns = [f"{prefix}_mean", f"{prefix}_std", "n"]
    ci = grouped.agg(lambda v: t_half_width(v.dropna().to_numpy()))
    out.insert(2, f"{prefix}_ci95", ci)
    return out


# --- trials -------------------------------------------------------------------------------


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each trial's row of its last round, for trials that reached ``round == rounds`` only.

    Trials that stopped earlier are not final: see :func:`missing_trials`.
    """
    check_frame(frame)
    last = frame.sort_values(["trial_id", "round"]).groupby("trial_id", sort=True).tail(1)
    return last[last["round"] == last["rounds"]].reset_index(drop=True)


def missing_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Trials that have not reached their last round, and which rounds they lack.

    Columns: trial_id, strategy, budget, seed, rounds, last_round, missing_rounds (e.g.
    "4-5"). Empty when every trial is complete.
    """
    check_frame(frame)
    columns = ["trial_id", "strategy", "budget", "seed", "rounds", "last_round", "missing_rounds"]
    present = frame.groupby("trial_id", sort=True)["round"].agg(lambda s: set(s.tolist()))
    last = frame.sort_values(["trial_id", "round"]).groupby("trial_id", sort=True).tail(1).set_index("trial_id")
    rows = []
    for trial_id, rounds_seen in present.items():  # a loop over trials, not over data
        row = last.loc[trial_id]
        if int(row["round"]) >= int(row["rounds"]):
            continue
        lacking = sorted(set(range(int(row["rounds"]) + 1)) - rounds_seen)
        rows.append(
            {
                "trial_id": trial_id,
                "strategy": row["strategy"],
                "budget": row["budget"],
                "seed": row["seed"] if "seed" in last.columns else None,
                "rounds": int(row["rounds"]),
                "last_round": int(row["round"]),
                "missing_rounds": _ranges(lacking),
            }
        )
    return pd.DataFrame(rows, columns=columns).astype({"seed": "Int64"})


def _ranges(values: list[int]) -> str:
    """[3, 4, 5, 7] → "3-5, 7"."""
    parts: list[str] = []
    start = prev = None
    for v in [*values, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    return ", ".join(parts)


# --- final mIoU tables ----------------------------------------------------------------------


def strategy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Final mIoU per strategy × budget: ``miou_mean``, ``miou_std`` (ddof=1), ``n_seeds``.

    ``n_seeds`` counts complete trials (one per seed in a strategy × budget × seed search);
    when a search also varies other keys use :func:`ablation_table` to keep them apart.
    When every final row has a best validation (``best_miou``; results written before that
    column lack it), ``best_miou_mean`` / ``best_miou_std`` follow: the papers' protocol
    reports the best validated checkpoint, ``miou`` is the last model's.
    """
    final = final_rows(frame)
    grouped = final.groupby(_GROUP, sort=True)
    out = _mean_std_n(grouped["miou"], "miou").rename(columns={"n": "n_seeds"})
    if "best_miou" in final and len(final) and final["best_miou"].notna().all():
        best = _mean_std_n(grouped["best_miou"], "best_miou").drop(columns="n")
        out = out.join(best)
    return out.reset_index()


def trial_config(config_json: str, *, trial_id: str = "?") -> dict[str, Any]:
    """A trial's config from its ``config_json``, with the keys a later halo_ray added at their
    defaults: a trial written before a key existed ran as that default does (the rule
    ``run_id`` follows too), so trials of one search written by two versions still compare."""
    try:
        config = json.loads(config_json) if config_json else {}
    except (TypeError, json.JSONDecodeError) as err:
        raise AnalysisError(f"trial {trial_id}: config_json is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise AnalysisError(f"trial {trial_id}: config_json must hold a JSON object, but got {config_json[:60]!r}")
    from halo_ray.config import default_values

    return {**default_values(), **config} if config else {}


def pairing_key(config_json: str, *, trial_id: str = "?") -> str:
    """The part of a trial's config that must match for two trials to be paired."""
    config = trial_config(config_json, trial_id=trial_id)
    kept = {k: v for k, v in config.items() if k not in PAIRING_IGNORED_KEYS}
    return json.dumps(kept, sort_keys=True)


def _check_baseline(frame: pd.DataFrame, baseline: str) -> None:
    present = sorted(frame["strategy"].unique().tolist())
    if baseline not in present:
        raise AnalysisError(f"baseline strategy {baseline!r} is not in the results; strategies present: {present}")


def t_half_width(diffs: np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the two-sided Student-t interval of the mean; NaN for fewer than 2 values."""
    n = len(diffs)
    if n < 2:
        return math.nan
    sem = float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem


def paired_differences(frame: pd.DataFrame, baseline: str, confidence: float = 0.95) -> pd.DataFrame:
    """Final mIoU of each strategy minus ``baseline`` on pairs with one seed, budget and config.

    A pair is two complete trials whose configs agree on every key except ``strategy``,
    ``seed`` and :data:`PAIRING_IGNORED_KEYS`, with the same ``seed`` and ``budget``.
    Columns: strategy, baseline, budget, diff_mean, n_pairs, ci_low, ci_high,
    ci_half_width (Student t, NaN for one pair), strategy_mean, baseline_mean (over pairs).
    """
    check_frame(frame, ["seed", "config_json"])
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence must be in (0, 1), but got confidence={confidence}")
    _check_baseline(frame, baseline)
    final = final_rows(frame)
    final = final.assign(
        _key=[pairing_key(c, trial_id=t) for c, t in zip(final["config_json"], final["trial_id"], strict=True)]
    )
    match = ["seed", "budget", "_key"]
    clash = final[final.duplicated(["strategy", *match], keep=False)]
    if not clash.empty:
        raise AnalysisError(
            f"trials {sorted(clash['trial_id'].tolist())[:6]} share strategy, seed, budget and config: "
            "pairing them with the baseline is ambiguous (the same run repeated?)"
        )
    base = final[final["strategy"] == baseline][[*match, "miou"]].rename(columns={"miou": "_base"})
    others = final[final["strategy"] != baseline]
    pairs = others.merge(base, on=match, how="left")
    pairs["_diff"] = pairs["miou"] - pairs["_base"]
    rows = []
    for (strategy, budget), group in pairs.groupby(_GROUP, sort=True):  # per strategy × budget
        matched = group.dropna(subset=["_base"])
        diffs = matched["_diff"].to_numpy(dtype=float)
        half = t_half_width(diffs, confidence)
        mean = float(diffs.mean()) if len(diffs) else math.nan
        rows.append(
            {
                "strategy": strategy,
                "baseline": baseline,
                "budget": budget,
                "diff_mean": mean,
                "n_pairs": len(diffs),
                "ci_low": mean - half,
                "ci_high": mean + half,
                "ci_half_width": half,
                "strategy_mean": float(matched["miou"].mean()) if len(diffs) else math.nan,
                "baseline_mean": float(matched["_base"].mean()) if len(diffs) else math.nan,
            }
        )
    columns = [
        "strategy", "baseline", "budget", "diff_mean", "n_pairs", "ci_low", "ci_high", "ci_half_width",
        "strategy_mean", "baseline_mean",
    ]
    return pd.DataFrame(rows, columns=columns)


def configuration_differences(
    frame: pd.DataFrame, baseline: Mapping[str, Any], keys: Sequence[str], confidence: float = 0.95
) -> pd.DataFrame:
    """Final mIoU of each configuration minus the ``baseline`` configuration's, paired by seed.

    A configuration is a combination of values of ``keys`` (config keys the trials vary, e.g.
    a search's variants: ``hfr``, ``hfr_norm``, ``hfr_positivity``); the baseline is every
    trial whose config has ``baseline``'s values (``{"hfr": False}``). A pair is a trial and
    a baseline trial with the same seed, budget, strategy and every other key. Columns: the
    ``keys``, budget, diff_mean, n_pairs, ci_low, ci_high, ci_half_width (Student t, NaN for
    one pair), config_mean, baseline_mean (over pairs). The baseline's own rows are left out.
    """
    check_frame(frame, ["seed", "config_json"])
    keys = list(keys)
    unknown = sorted(set(baseline) - set(keys))
    if not keys or unknown:
        raise AnalysisError(f"baseline keys {unknown} are not among the compared keys {keys}")
    final = final_rows(frame)
    configs = []
    for text, trial in zip(final["config_json"], final["trial_id"], strict=True):
        config = json.loads(pairing_key(text, trial_id=trial))
        configs.append(config)
    missing = sorted({k for c in configs for k in keys if k not in c})
    if missing:
        raise AnalysisError(f"compared keys {missing} are not in every trial's config_json")
    final = final.assign(
        _cfg=[json.dumps([c[k] for k in keys]) for c in configs],
        _rest=[json.dumps({k: v for k, v in c.items() if k not in keys}, sort_keys=True) for c in configs],
        _is_base=[all(c[k] == v for k, v in baseline.items()) for c in configs],
    )
    match = ["seed", "budget", "strategy", "_rest"]
    base = final[final["_is_base"]]
    if base.duplicated(match).any():
        raise AnalysisError(f"more than one trial matches the baseline {dict(baseline)} for one seed, budget and config")
    pairs = final[~final["_is_base"]].merge(base[[*match, "miou"]].rename(columns={"miou": "_base"}), on=match, how="left")
    rows = []
    for (cfg, budget), group in pairs.groupby(["_cfg", "budget"], sort=True):
        matched = group.dropna(subset=["_base"])
        diffs = (matched["miou"] - matched["_base"]).to_numpy(dtype=float)
        half = t_half_width(diffs, confidence)
        mean = float(diffs.mean()) if len(diffs) else math.nan
        rows.append({
            **dict(zip(keys, json.loads(cfg), strict=True)), "budget": budget, "diff_mean": mean, "n_pairs": len(diffs),
            "ci_low": mean - half, "ci_high": mean + half, "ci_half_width": half,
            "config_mean": float(matched["miou"].mean()) if len(diffs) else math.nan,
            "baseline_mean": float(matched["_base"].mean()) if len(diffs) else math.nan,
        })
    columns = [*keys, "budget", "diff_mean", "n_pairs", "ci_low", "ci_high", "ci_half_width", "config_mean", "baseline_mean"]
    return pd.DataFrame(rows, columns=columns)


def class_iou_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Paper layout: one row per strategy/budget, one column per class (Cityscapes order), mIoU last.

    Values are means over seeds of the final rows; a class no trial could score stays NaN.
    """
    check_frame(frame, IOU_COLUMNS)
    final = final_rows(frame)
    means = final.groupby(_GROUP, sort=True)[[*IOU_COLUMNS, "miou"]].mean()
    means = means.rename(columns={**dict(zip(IOU_COLUMNS, CITYSCAPES_CLASSES, strict=True)), "miou": "mIoU"})
    return means.reset_index()


def _config_value_column(frame: pd.DataFrame, key: str) -> pd.Series | None:
    """``key`` read from each row's config_json, or None when some trial's config lacks it."""
    if "config_json" not in frame.columns:
        return None
    values = []
    for text in frame["config_json"]:
        try:
            config = trial_config(text)
        except AnalysisError:
            return None
        if key not in config:
            return None
        value = config[key]
        values.append(json.dumps(value) if isinstance(value, (list, dict)) else value)
    return pd.Series(values, index=frame.index, name=key)


def ablation_table(frame: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Final mIoU mean/std/n grouped by ``by`` (and ``budget``, so budgets never mix).

    ``by`` names columns (``hfr``, ``geometry``, ``curvature``, ``bins``, ``region_size``,
    ``strategy`` for scoring-term ablations, ...) or config keys that only ``config_json``
    holds (``boundary_window``, ``hfr_norm``, ...).
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise AnalysisError("by must name at least one column, but got an empty list")
    check_frame(frame)
    for key in keys:  # checked on every row, so a search with no complete trial still says why
        if key in frame.columns:
            continue
        from_config = _config_value_column(frame, key)
        if from_config is None:
            available = sorted(c for c in frame.columns if not c.startswith(("iou_", "radius_")))
            raise AnalysisError(
                f"ablation column {key!r} is neither a results column nor a config key of every trial; "
                f"columns: {available}"
            )
        frame = frame.assign(**{key: from_config})
    final = final_rows(frame)
    group = keys if "budget" in keys else [*keys, "budget"]
    out = _mean_std_n(final.groupby(group, sort=True, dropna=False)["miou"], "miou")
    return out.reset_index()


# --- curves -------------------------------------------------------------------------------


def learning_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """mIoU and labelled % per strategy, budget and round: mean/std over trials, and n_trials.

    Uses every row, complete or not: ``n_trials`` shows where a partial search thins out.
    """
    check_frame(frame, ["labelled_pct"])
    grouped = frame.groupby([*_GROUP, "round"], sort=True)
    miou = _mean_std_n(grouped["miou"], "miou")
    pct = _mean_std_n(grouped["labelled_pct"], "labelled_pct").drop(columns="n")
    out = miou.join(pct).rename(columns={"n": "n_trials"})
    return out[["labelled_pct_mean", "labelled_pct_std", "miou_mean", "miou_std", "n_trials"]].reset_index()


def trial_auc(frame: pd.DataFrame) -> pd.DataFrame:
    """Area under mIoU vs labelled % of each complete trial (trapezoid rule, rounds in order).

    Units: mIoU points × labelled percentage points. Columns: trial_id, strategy, budget,
    seed (if present), auc.
    """
    check_frame(frame, ["labelled_pct"])
    complete = final_rows(frame)["trial_id"]
    rows = frame[frame["trial_id"].isin(complete)].sort_values(["trial_id", "round"])
    x, y = rows["labelled_pct"], rows["miou"]
    trial = rows.groupby("trial_id", sort=False)
    dx = x - trial["labelled_pct"].shift(1)  # NaN at each trial's first round
    ybar = (y + trial["miou"].shift(1)) / 2
    area = (dx * ybar).groupby(rows["trial_id"]).sum(min_count=1).fillna(0.0).rename("auc")
    keep = [c for c in ("trial_id", "strategy", "budget", "seed") if c in rows.columns]
    meta = rows.drop_duplicates("trial_id")[keep].set_index("trial_id")
    return meta.join(area).reset_index()


def curve_auc(frame: pd.DataFrame) -> pd.DataFrame:
    """Learning-curve area per strategy × budget: ``auc_mean``, ``auc_std`` (ddof=1), ``n_trials``."""
    per_trial = trial_auc(frame)
    out = _mean_std_n(per_trial.groupby(_GROUP, sort=True)["auc"], "auc")
    return out.rename(columns={"n": "n_trials"}).reset_index()


# --- radius -------------------------------------------------------------------------------

MIN_RANK_POINTS = 3  # a correlation over fewer classes says nothing


def _correlations(radius: np.ndarray, iou: np.ndarray) -> tuple[float, float, str]:
    """Spearman and Pearson ρ of finite (radius, IoU) pairs, and why they are NaN if they are."""
    ok = np.isfinite(radius) & np.isfinite(iou)
    r, v = radius[ok], iou[ok]
    if ok.sum() < MIN_RANK_POINTS:
        return math.nan, math.nan, f"fewer than {MIN_RANK_POINTS} classes with both radius and IoU"
    if np.ptp(r) == 0 or np.ptp(v) == 0:
        return math.nan, math.nan, "radius or IoU is constant over classes"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        spearman = float(stats.spearmanr(r, v).statistic)
        pearson = float(stats.pearsonr(r, v).statistic)
    return spearman, pearson, ""


def radius_analysis(frame: pd.DataFrame) -> pd.DataFrame:
    """Per complete trial: Spearman and Pearson ρ between ``radius_<class>`` and ``iou_<class>``.

    Over the classes where both are finite (final round). Trials without radii (Euclidean
    head) keep a row with NaN ρ and the reason in ``note``. The last row, ``trial_id ==
    "pooled"``, correlates all (class, trial) points of the trials that have radii.
    Columns: trial_id, strategy, budget, seed, geometry, n_points, spearman, pearson, note.
    """
    check_frame(frame, [*IOU_COLUMNS, *RADIUS_COLUMNS])
    final = final_rows(frame)
    radius = final[RADIUS_COLUMNS].to_numpy(dtype=float)  # [T, 19]
    iou = final[IOU_COLUMNS].to_numpy(dtype=float)  # [T, 19]
    geometry = final["geometry"] if "geometry" in final.columns else pd.Series([None] * len(final))
    rows = []
    pooled_r, pooled_v = [], []
    for t in range(len(final)):  # a loop over trials; each holds 19 numbers
        has_radius = np.isfinite(radius[t]).any()
        if not has_radius:
            spearman, pearson, note = math.nan, math.nan, "skipped: no per-class radius (euclidean head)"
            n_points = 0
        else:
            spearman, pearson, note = _correlations(radius[t], iou[t])
            n_points = int((np.isfinite(radius[t]) & np.isfinite(iou[t])).sum())
            pooled_r.append(radius[t])
            pooled_v.append(iou[t])
        rows.append(
            {
                "trial_id": final["trial_id"].iloc[t],
                "strategy": final["strategy"].iloc[t],
                "budget": final["budget"].iloc[t],
                "seed": final["seed"].iloc[t] if "seed" in final.columns else None,
                "geometry": geometry.iloc[t],
                "n_points": n_points,
                "spearman": spearman,
                "pearson": pearson,
                "note": note,
            }
        )
    if pooled_r:
        all_r, all_v = np.concatenate(pooled_r), np.concatenate(pooled_v)
        spearman, pearson, note = _correlations(all_r, all_v)
        n_points = int((np.isfinite(all_r) & np.isfinite(all_v)).sum())
    else:
        spearman, pearson, n_points = math.nan, math.nan, 0
        note = "no complete trial has per-class radii (all euclidean, or none complete)"
    rows.append(
        {
            "trial_id": "pooled", "strategy": "all", "budget": math.nan, "seed": None, "geometry": None,
            "n_points": n_points, "spearman": spearman, "pearson": pearson, "note": note,
        }
    )
    columns = ["trial_id", "strategy", "budget", "seed", "geometry", "n_points", "spearman", "pearson", "note"]
    return pd.DataFrame(rows, columns=columns).astype({"seed": "Int64"})


def class_radius_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class: mean radius and mean IoU over the complete trials that have radii.

    Columns: class, radius, iou, n_trials. The points of :func:`plot_radius_vs_iou`.
    """
    check_frame(frame, [*IOU_COLUMNS, *RADIUS_COLUMNS])
    final = final_rows(frame)
    radius = final[RADIUS_COLUMNS].to_numpy(dtype=float)  # [T, 19]
    with_radius = np.isfinite(radius).any(axis=1)  # [T]
    radius, iou = radius[with_radius], final[IOU_COLUMNS].to_numpy(dtype=float)[with_radius]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN class → NaN mean, on purpose
        return pd.DataFrame(
            {
                "class": list(CITYSCAPES_CLASSES),
                "radius": np.nanmean(radius, axis=0) if len(radius) else np.full(len(RADIUS_COLUMNS), np.nan),
                "iou": np.nanmean(iou, axis=0) if len(iou) else np.full(len(IOU_COLUMNS), np.nan),
                "n_trials": np.isfinite(radius).sum(axis=0) if len(radius) else 0,
            }
        )


__all__ = [
    "AnalysisError",
    "BASE_COLUMNS",
    "PAIRING_IGNORED_KEYS",
    "ablation_table",
    "configuration_differences",
    "check_frame",
    "class_iou_table",
    "class_radius_means",
    "curve_auc",
    "final_rows",
    "learning_curves",
    "missing_trials",
    "paired_differences",
    "pairing_key",
    "radius_analysis",
    "strategy_table",
    "t_half_width",
    "trial_auc",
]
