"""Results: the Parquet store (one row per trial × round) and its analysis.

``store`` writes and reads the rows (imported by every run, so it stays light);
``tables`` turns a results frame into DataFrames (mIoU ± std per strategy and budget,
paired differences, per-class IoU, ablations, learning curves, radius analysis);
``plots`` draws figures; ``report`` puts tables and figures into one folder.
``plots`` and ``report`` load matplotlib/TensorBoard, so they are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from halo_ray.results.store import (
    IOU_COLUMNS,
    RADIUS_COLUMNS,
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    atomic_write_bytes,
    class_column,
    radius_column,
    read_results,
    read_round_row,
    round_file,
    row_table,
    write_round_row,
)

# public name -> submodule that defines it, loaded on first attribute access (PEP 562)
_LAZY: dict[str, str] = {
    "AnalysisError": "tables",
    "BASE_COLUMNS": "tables",
    "FIGURE_DPI": "plots",
    "GRID_COLUMNS": "plots",
    "PAIRING_IGNORED_KEYS": "tables",
    "Report": "report",
    "SNAPSHOT_KEYS": "plots",
    "SnapshotImage": "plots",
    "ablation_table": "tables",
    "check_frame": "tables",
    "class_iou_table": "tables",
    "class_radius_means": "tables",
    "configuration_differences": "tables",
    "colour_train_ids": "plots",
    "curve_auc": "tables",
    "figure_png": "plots",
    "final_rows": "tables",
    "learning_curves": "tables",
    "load_snapshot_image": "plots",
    "locate_results": "report",
    "markdown_table": "report",
    "missing_trials": "tables",
    "paired_differences": "tables",
    "pairing_key": "tables",
    "plot_learning_curves": "plots",
    "plot_radius_vs_iou": "plots",
    "plot_selection_grid": "plots",
    "radius_analysis": "tables",
    "read_report_frame": "report",
    "save_figure": "plots",
    "selection_overlay": "plots",
    "snapshot_file": "plots",
    "snapshot_indices": "plots",
    "snapshot_trials": "plots",
    "strategy_table": "tables",
    "t_half_width": "tables",
    "trial_auc": "tables",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'halo_ray.results' has no attribute {name!r}")
    return getattr(importlib.import_module(f"halo_ray.results.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "IOU_COLUMNS",
    "RADIUS_COLUMNS",
    "RESULT_COLUMNS",
    "RESULT_SCHEMA",
    "atomic_write_bytes",
    "class_column",
    "radius_column",
    "read_results",
    "read_round_row",
    "round_file",
    "row_table",
    "write_round_row",
    *_LAZY,
]
