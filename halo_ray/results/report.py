"""One analysis folder for a search: every table as CSV and Markdown, figures, ``report.md``.

:func:`write_report` computes every table and renders every figure in memory first and
writes only then, each file atomically, so bad input leaves ``out_dir`` untouched and a
reader never sees half a file. ``halo-ray analyze`` calls it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from halo_ray.results.plots import (
    figure_png,
    plot_learning_curves,
    plot_radius_vs_iou,
    plot_selection_grid,
    snapshot_indices,
    snapshot_trials,
)
from halo_ray.results.store import IOU_COLUMNS, RADIUS_COLUMNS, atomic_write_bytes, read_results
from halo_ray.results.tables import (
    BASE_COLUMNS,
    PAIRING_IGNORED_KEYS,
    AnalysisError,
    ablation_table,
    check_frame,
    class_iou_table,
    configuration_differences,
    curve_auc,
    final_rows,
    learning_curves,
    missing_trials,
    paired_differences,
    radius_analysis,
    strategy_table,
    trial_config,
)

#: columns a results file must hold for the report (older files without them are refused)
REPORT_COLUMNS: tuple[str, ...] = (
    *BASE_COLUMNS, "seed", "labelled_pct", "geometry", "config_json", *IOU_COLUMNS, *RADIUS_COLUMNS,
)
#: axes that get an ablation table when the complete trials take more than one value on them
ABLATION_CANDIDATES: tuple[str, ...] = ("hfr", "geometry", "curvature", "bins", "region_size", "unit", "loop")
DEFAULT_BASELINE = "random"
SELECTION_ROUND = 1  # the selection grid shows the first selection round


# --- Markdown -------------------------------------------------------------------------------


#: number formats of columns that are not measurements (budget 2.2, not 2.20)
COLUMN_FORMATS: Mapping[str, str] = {"budget": "g", "curvature": "g", "seed": "g"}


def _cell(value: object, floatfmt: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f", formats: Mapping[str, str] | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, NaN as an empty cell).

    ``floatfmt`` formats float cells; ``formats`` overrides it per column name. Written here
    because ``DataFrame.to_markdown`` needs the optional ``tabulate`` package.
    """
    if frame.columns.empty:
        return "_(no columns)_\n"
    formats = formats or {}
    header = "| " + " | ".join(_cell(c, floatfmt) for c in frame.columns) + " |"
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    fmts = [formats.get(str(c), floatfmt) for c in frame.columns]
    body = [
        "| " + " | ".join(_cell(v, f) for v, f in zip(row, fmts, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


# --- input ----------------------------------------------------------------------------------


def locate_results(path: str | Path) -> tuple[Path, Path | None]:
    """(results folder, search folder) for ``runs/<name>`` or ``runs/<name>/results``.

    The search folder (holding ``search.json`` and ``snapshots/``) is None for a results
    folder with another name: its parent is then not assumed to belong to the search.
    """
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"{path}: no such results folder")
    if not path.is_dir():
        raise AnalysisError(f"{path}: not a results folder (a directory of *.parquet files), but a file")
    if (path / "results").is_dir():
        results, root = path / "results", path
    else:
        results, root = path, (path.parent if path.name == "results" else None)
    if not any(results.rglob("*.parquet")):
        raise AnalysisError(f"{path}: not a results dataset: no *.parquet files under {results}")
    return results, root


def read_report_frame(results: Path) -> pd.DataFrame:
    """All rows, after checking that every file holds the columns the report needs."""
    for file in sorted(results.rglob("*.parquet")):
        try:
            names = set(pq.read_schema(file).names)
        except Exception as err:  # pyarrow raises several types for a corrupt footer
            raise AnalysisError(f"{file}: not a readable Parquet file ({err})") from err
        missing = [c for c in REPORT_COLUMNS if c not in names]
        if missing:
            raise AnalysisError(f"{file}: results file is missing required columns {missing} (an older halo_ray?)")
    frame = read_results(results)
    if frame.empty:
        raise AnalysisError(f"{results}: results dataset has no rows: there is nothing to analyse")
    check_frame(frame, REPORT_COLUMNS)
    return frame


def _search_config(root: Path | None, frame: pd.DataFrame) -> tuple[str, str]:
    """(where it came from, JSON text) of the search's config: search.json, else the first trial's."""
    search_json = root / "search.json" if root is not None else None
    if search_json is not None and search_json.is_file():
        try:
            return str(search_json), json.dumps(json.loads(search_json.read_text()), indent=2, sort_keys=True)
        except json.JSONDecodeError as err:
            raise AnalysisError(f"{search_json}: not valid JSON ({err})") from err
    first = frame.sort_values(["trial_id", "round"]).iloc[0]
    try:
        text = json.dumps(json.loads(first["config_json"]), indent=2, sort_keys=True)
    except (TypeError, json.JSONDecodeError):
        text = str(first["config_json"])
    return f"config_json of trial {first['trial_id']}", text


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote, and the tables behind its summary."""

    out_dir: Path  # the folder holding report.md, tables and figures
    files: tuple[Path, ...]  # every file written (TensorBoard events excluded), report.md last
    n_trials: int  # trials with at least one row
    n_complete: int  # trials that reached round == rounds
    baseline: str | None  # strategy the paired differences are taken against, if any
    notes: tuple[str, ...] = ()  # figures or tables left out, and why
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def report_md(self) -> Path:
        return self.out_dir / "report.md"

    def summary(self) -> str:
        """A few lines: trial counts, best strategy per budget (mean ± std), paired difference."""
        missing = self.n_trials - self.n_complete
        lines = [
            f"{self.n_trials} trials, {self.n_complete} complete"
            + (f" ({missing} not at their last round: see 'Missing')" if missing else "")
            + f" | report {self.report_md}"
        ]
        table = self.tables.get("strategy_table", pd.DataFrame())
        paired = self.tables.get("paired_differences", pd.DataFrame())
        configurations = self.tables.get("configurations", pd.DataFrame())
        if table.empty:
            lines.append("no trial reached its last round: no final mIoU yet")
        elif not configurations.empty and "strategy" not in configurations.columns:
            # one strategy, other keys varied (an ablation): name whole configurations
            keys = [c for c in configurations.columns if c not in ("budget", "miou_mean", "miou_std", "miou_ci95", "n")]
            for budget, group in configurations.groupby("budget", sort=True):
                best = group.loc[group["miou_mean"].idxmax()]
                spread = f" ± {best['miou_ci95']:.2f} (95 % CI)" if math.isfinite(best["miou_ci95"]) else ""
                named = ", ".join(f"{k}={best[k]}" for k in keys)
                lines.append(
                    f"budget {budget:g} %: best configuration {named}: {best['miou_mean']:.2f}{spread} mIoU "
                    f"({int(best['n'])} seed{'s' if best['n'] != 1 else ''})"
                )
            return "\n".join(lines)
        for budget, group in table.groupby("budget", sort=True) if not table.empty else ():
            best = group.loc[group["miou_mean"].idxmax()]
            spread = f" ± {best['miou_std']:.2f}" if math.isfinite(best["miou_std"]) else ""
            line = (
                f"budget {budget:g} %: best {best['strategy']} {best['miou_mean']:.2f}{spread} mIoU "
                f"({int(best['n_seeds'])} seed{'s' if best['n_seeds'] != 1 else ''})"
            )
            if self.baseline is not None and best["strategy"] == self.baseline:
                line += " (the baseline)"
            elif self.baseline is not None and not paired.empty:
                match = paired[(paired["strategy"] == best["strategy"]) & (paired["budget"] == budget)]
                if not match.empty and match["n_pairs"].iloc[0] > 0:
                    diff, half, n = match["diff_mean"].iloc[0], match["ci_half_width"].iloc[0], int(match["n_pairs"].iloc[0])
                    ci = f" ± {half:.2f} (95 % CI)" if math.isfinite(half) else ""
                    line += f"; vs {self.baseline} {diff:+.2f}{ci} over {n} pair{'s' if n != 1 else ''}"
                else:
                    line += f"; no pair with {self.baseline}"
            lines.append(line)
        return "\n".join(lines)


def _ablation_axes(frame: pd.DataFrame) -> list[str]:
    """Axes on which the complete trials take more than one value."""
    final = final_rows(frame)
    return [a for a in ABLATION_CANDIDATES if a in final.columns and final[a].nunique(dropna=False) > 1]


def _first_variant(root: Path | None, varied: list[str]) -> dict | None:
    """The first of the search's ``variants`` (its baseline) on every varied key, when
    ``search.json`` lists them and they set only varied keys: the keys it leaves alone take
    the search's base values (keys that follow ``reference`` follow the variant's), so a
    baseline like ``{reference: false}`` is not matched by ``{hfr_positivity: clamp}`` too."""
    path = root / "search.json" if root is not None else None
    if path is None or not path.is_file():
        return None
    try:
        search = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    variants = search.get("variants") or []
    first = variants[0] if variants and isinstance(variants[0], dict) else None
    if not first or not set(first) <= set(varied):
        return None
    base = search.get("base_config") or {}
    full = {k: base[k] for k in varied if k in base}
    reference = first.get("reference", base.get("reference"))
    if "reference" in base and reference != base["reference"]:
        from halo_ray.config import REFERENCE_DEFAULTS

        explicit = set(search.get("set") or {})
        for key, (ours, released) in REFERENCE_DEFAULTS.items():
            if key in full and key not in explicit:
                full[key] = released if reference else ours
    return {**full, **first}


def varied_keys(frame: pd.DataFrame) -> list[str]:
    """Config keys (from ``config_json``) on which the complete trials differ, in key order;
    seeds, budgets, places and runtime settings aside (:data:`PAIRING_IGNORED_KEYS`), the
    strategy kept. A search over variants (e.g. ``ablation_hfr``) varies several together."""
    final = final_rows(frame)
    configs = []
    for text in final["config_json"]:
        try:
            configs.append(trial_config(text))
        except AnalysisError:
            return []
    keys = sorted({k for c in configs for k in c} - (PAIRING_IGNORED_KEYS - {"strategy"}) - {"budget"})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _selection_grid(snapshots: Path, round_index: int) -> tuple[dict[str, bytes], str]:
    """({name: PNG}, note): one grid per target image that every strategy's round snapshot holds.

    One trial per strategy (the first by id), images in index order, named
    ``selection_round{r}_image{i}``.
    """
    trials = snapshot_trials(snapshots, round_index)
    if not trials:
        return {}, f"selection grid of round {round_index} left out: {snapshots} has no round {round_index} snapshot"
    try:
        by_strategy: dict[str, tuple[str, np.ndarray]] = {}
        for trial_id in trials:  # first trial (by id) of each strategy
            strategy, index = snapshot_indices(snapshots, trial_id, round_index)
            by_strategy.setdefault(strategy, (trial_id, index))
        chosen = [by_strategy[s] for s in sorted(by_strategy)]
        common = set(chosen[0][1].tolist()).intersection(*(set(i.tolist()) for _, i in chosen[1:]))
        if not common:
            return {}, f"selection grid of round {round_index} left out: the strategies' snapshots share no target image"
        return {
            f"selection_round{round_index}_image{i}": figure_png(
                plot_selection_grid(snapshots, round_index, i, trials=[t for t, _ in chosen])
            )
            for i in sorted(common)
        }, ""
    except AnalysisError as err:  # snapshots are diagnostics: a broken one does not stop the report
        return {}, f"selection grid of round {round_index} left out: {err}"


def _selection_grids(root: Path | None) -> tuple[dict[str, bytes], list[str]]:
    """Selection grids of every round that has snapshots, and notes on what was left out.

    The first grid (round 1, lowest common image) is also ``selection_grid``, the headline figure.
    """
    snapshots = root / "snapshots" if root is not None else None
    if snapshots is None or not snapshots.is_dir():
        return {}, []
    rounds = sorted({int(p.stem.removeprefix("round_")) for p in snapshots.glob("*/round_*.npz")}) or [SELECTION_ROUND]
    grids: dict[str, bytes] = {}
    notes: list[str] = []
    for r in rounds:
        found, note = _selection_grid(snapshots, r)
        if r == SELECTION_ROUND and found:
            grids["selection_grid"] = next(iter(found.values()))
        grids.update(found)
        if note:
            notes.append(note)
    return grids, notes


def _section(title: str, frame: pd.DataFrame, empty: str, floatfmt: str = ".2f", intro: str = "") -> str:
    table = markdown_table(frame, floatfmt, COLUMN_FORMATS) if not frame.empty else f"{empty}\n"
    return f"## {title}\n\n" + (f"{intro}\n\n" if intro else "") + table + "\n"


def write_report(results_dir: str | Path, out_dir: str | Path, baseline: str | None = None) -> Report:
    """Analyse the results under ``results_dir`` (``runs/<name>`` or its ``results/``) into ``out_dir``.

    Writes every table as ``<name>.csv`` and ``<name>.md``, the figures as PNG, a
    ``report.md`` that puts them together with the search's config and the trials still
    missing rounds, and the figures to TensorBoard (``out_dir/tensorboard``). ``baseline``
    defaults to "random" when present (else no paired table). Raises :class:`AnalysisError`
    naming the path, column or value for bad input, before writing anything.
    """
    results, root = locate_results(results_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AnalysisError(f"{out_dir}: the report folder exists and is not a directory")
    frame = read_report_frame(results)
    strategies = sorted(frame["strategy"].unique().tolist())
    if baseline is not None and baseline not in strategies:
        raise AnalysisError(f"baseline strategy {baseline!r} is not in {results}; strategies present: {strategies}")
    if baseline is None and DEFAULT_BASELINE in strategies:
        baseline = DEFAULT_BASELINE

    # --- compute everything -------------------------------------------------------------------
    tables: dict[str, pd.DataFrame] = {
        "strategy_table": strategy_table(frame),
        "class_iou": class_iou_table(frame),
        "learning_curves": learning_curves(frame),
        "curve_auc": curve_auc(frame),
        "radius_analysis": radius_analysis(frame),
        "missing": missing_trials(frame),
    }
    if baseline is not None:
        tables["paired_differences"] = paired_differences(frame, baseline)
    varied = varied_keys(frame)
    if varied and varied != ["strategy"]:  # several keys vary: one row per configuration
        tables["configurations"] = ablation_table(frame, varied)
        first = _first_variant(root, varied)
        if first is not None:  # a search over variants: each against the first, paired by seed
            tables["configuration_differences"] = configuration_differences(frame, first, varied)
    for axis in _ablation_axes(frame):
        tables[f"ablation_{axis}"] = ablation_table(frame, axis)

    notes: list[str] = []
    figures: dict[str, Figure] = {"learning_curves": plot_learning_curves(frame)}
    try:
        figures["radius_vs_iou"] = plot_radius_vs_iou(frame)
    except AnalysisError as err:
        notes.append(f"radius vs IoU left out: {err}")
    pngs = {name: figure_png(fig) for name, fig in figures.items()}
    grids, grid_notes = _selection_grids(root)
    pngs.update(grids)
    notes.extend(grid_notes)
    config_source, config_text = _search_config(root, frame)
    n_trials = int(frame["trial_id"].nunique())
    n_complete = len(final_rows(frame))
    searches = sorted(str(s) for s in frame["search"].dropna().unique()) if "search" in frame.columns else []
    markdown = _render(
        title=", ".join(searches) or results.name, results=results, tables=tables, pngs=pngs, notes=notes, baseline=baseline,
        config_source=config_source, config_text=config_text, n_trials=n_trials, n_complete=n_complete,
    )

    # --- write ----------------------------------------------------------------------------------
    written: list[Path] = []

    def put(name: str, write: Callable[[Path], object]) -> None:
        path = out_dir / name
        atomic_write_bytes(path, write)
        written.append(path)

    for name, table in tables.items():
        put(f"{name}.csv", lambda tmp, t=table: t.to_csv(tmp, index=False))
        put(f"{name}.md", lambda tmp, t=table: tmp.write_text(markdown_table(t, formats=COLUMN_FORMATS)))
    for name, png in pngs.items():
        put(f"{name}.png", lambda tmp, data=png: tmp.write_bytes(data))
    put("report.md", lambda tmp: tmp.write_text(markdown))
    _log_tensorboard(out_dir / "tensorboard", figures, pngs.get("selection_grid"))
    return Report(
        out_dir=out_dir, files=tuple(written), n_trials=n_trials, n_complete=n_complete, baseline=baseline,
        notes=tuple(notes), tables=tables,
    )


def _log_tensorboard(log_dir: Path, figures: Mapping[str, Figure], grid_png: bytes | None) -> None:
    """The report's figures under ``analysis/<name>`` in TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter  # heavy import: only when a report is written

    writer = SummaryWriter(str(log_dir))
    try:
        for name, fig in figures.items():
            writer.add_figure(f"analysis/{name}", fig, close=False)
        if grid_png is not None:
            import io

            from PIL import Image

            image = np.asarray(Image.open(io.BytesIO(grid_png)).convert("RGB"))  # [H, W, 3]
            writer.add_image("analysis/selection_grid", image, dataformats="HWC")
    finally:
        writer.close()


def _render(
    *,
    title: str,
    results: Path,
    tables: Mapping[str, pd.DataFrame],
    pngs: Mapping[str, bytes],
    notes: list[str],
    baseline: str | None,
    config_source: str,
    config_text: str,
    n_trials: int,
    n_complete: int,
) -> str:
    """report.md: tables, figures (linked PNGs), missing trials and the config."""
    parts = [
        f"# halo_ray analysis: {title}\n",
        f"Results: `{results}`: {n_trials} trials, {n_complete} reached their last round. "
        "Final-round tables use complete trials only; means over seeds, std with ddof=1.\n",
    ]
    parts.append(_section("Final mIoU per strategy and budget", tables["strategy_table"], "No trial is complete yet."))
    if "configurations" in tables:
        parts.append(
            _section(
                "Final mIoU per configuration", tables["configurations"], "No trial is complete yet.",
                intro="Every config key the complete trials vary; mean ± `miou_ci95` is the 95 % t-interval "
                "of the mean over seeds.",
            )
        )
    if "configuration_differences" in tables:
        parts.append(
            _section(
                "Each configuration minus the search's first variant (paired by seed; 95 % t-interval)",
                tables["configuration_differences"], "No pair yet.",
            )
        )
    if baseline is not None:
        parts.append(
            _section(
                f"Paired difference to `{baseline}` (same seed, budget and config; 95 % t-interval)",
                tables["paired_differences"],
                "No strategy other than the baseline.",
            )
        )
    else:
        parts.append("## Paired difference\n\nNo baseline: pass one (e.g. `--baseline random`).\n\n")
    parts.append(_section("Per-class IoU (final round, mean over seeds)", tables["class_iou"], "No trial is complete yet."))
    parts.append("## Learning curves\n\n![learning curves](learning_curves.png)\n\n")
    parts.append(_section("Learning-curve data", tables["learning_curves"], "No rows."))
    parts.append(_section("Area under mIoU vs labelled %", tables["curve_auc"], "No trial is complete yet."))
    for name, table in tables.items():
        if name.startswith("ablation_"):
            parts.append(_section(f"Ablation: {name.removeprefix('ablation_')}", table, "No trial is complete yet."))
    if "radius_vs_iou" in pngs:
        parts.append("## Radius vs IoU\n\n![radius vs IoU](radius_vs_iou.png)\n\n")
    parts.append(_section("Radius–IoU correlation per trial", tables["radius_analysis"], "No rows.", ".3f"))
    grids = [name for name in pngs if name.startswith("selection_round")]
    if grids:
        parts.append(
            "## What was selected\n\nPer round and target image, one row per strategy: image, ground truth, "
            "the prediction and radius of the model that scored the round, its score map and the labelled "
            "pixels.\n\n"
        )
        parts.extend(f"![{name.replace('_', ' ')}]({name}.png)\n\n" for name in grids)
    if notes:
        parts.append("## Notes\n\n" + "".join(f"- {n}\n" for n in notes) + "\n")
    parts.append(
        _section(
            "Missing",
            tables["missing"],
            "None: every trial reached its last round.",
            intro="Trials that stopped before their last round (still running, interrupted, failed, or "
            "stopped early by the scheduler). They are left out of the final-round tables; their rounds "
            "count in the learning curves (see `n_trials`).",
        )
    )
    parts.append(f"## Configuration\n\nFrom {config_source}:\n\n```json\n{config_text}\n```\n")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


__all__ = ["Report", "locate_results", "markdown_table", "read_report_frame", "write_report"]
