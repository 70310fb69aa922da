"""Result rows: one fixed Parquet schema, written atomically, one file per (trial, round).

A fixed, explicit schema matters: a column that is all-null in one file breaks reading
the dataset back, and downstream analysis relies on the same columns everywhere. One
file per (trial, round) with a deterministic name makes a repeated round overwrite its
own row instead of adding a duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from halo_ray.atomic import atomic_write_bytes
from halo_ray.data.labels import CITYSCAPES_CLASSES


def class_column(name: str) -> str:
    """Parquet column of one class's IoU: ``iou_traffic_light`` for "traffic light"."""
    return "iou_" + name.replace(" ", "_")


def radius_column(name: str) -> str:
    """Parquet column of one class's mean hyperbolic radius on target-val: ``radius_car``."""
    return "radius_" + name.replace(" ", "_")


IOU_COLUMNS = [class_column(c) for c in CITYSCAPES_CLASSES]
RADIUS_COLUMNS = [radius_column(c) for c in CITYSCAPES_CLASSES]

_FIELDS: list[tuple[str, pa.DataType]] = [
    ("search", pa.string()),
    ("trial_id", pa.string()),
    ("seed", pa.int64()),
    ("experiment", pa.string()),
    ("source", pa.string()),
    ("target", pa.string()),
    ("strategy", pa.string()),
    ("unit", pa.string()),
    ("budget", pa.float64()),
    ("rounds", pa.int64()),
    ("round", pa.int64()),
    ("step", pa.int64()),
    ("labelled_pct", pa.float64()),
    ("labelled_pixels", pa.int64()),
    ("void_pixels", pa.int64()),
    ("clicks", pa.int64()),
    ("click_budget", pa.int64()),
    ("pseudo_coverage", pa.float64()),
    ("pseudo_precision", pa.float64()),
    ("curvature", pa.float64()),
    ("curvature_learned", pa.float64()),
    ("bins", pa.int64()),
    ("region_size", pa.int64()),
    ("suppression", pa.int64()),
    ("hfr", pa.bool_()),
    ("geometry", pa.string()),
    ("embed_dim", pa.int64()),
    ("backbone", pa.string()),
    ("loop", pa.string()),
    ("reference", pa.bool_()),
    ("miou", pa.float64()),
    ("miou13", pa.float64()),
    ("miou_stage2", pa.float64()),
    ("best_miou", pa.float64()),
    ("best_step", pa.int64()),
    ("pixel_acc", pa.float64()),
    *[(c, pa.float64()) for c in IOU_COLUMNS],
    ("radius_mean", pa.float64()),
    *[(c, pa.float64()) for c in RADIUS_COLUMNS],
    ("radius_acc_spearman", pa.float64()),
    ("wall_s", pa.float64()),
    ("halo_ray_version", pa.string()),
    ("config_json", pa.string()),
]

#: The one schema every results file is written with.
RESULT_SCHEMA = pa.schema(_FIELDS)
RESULT_COLUMNS = [name for name, _ in _FIELDS]


def row_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows → Arrow table with exactly :data:`RESULT_SCHEMA`; missing or extra keys are errors."""
    for row in rows:
        missing = [c for c in RESULT_COLUMNS if c not in row]
        extra = [k for k in row if k not in RESULT_SCHEMA.names]
        if missing or extra:
            raise ValueError(f"result row does not match the schema: missing={missing}, unexpected={extra}")
    columns = {name: [row[name] for row in rows] for name in RESULT_COLUMNS}
    return pa.table(columns, schema=RESULT_SCHEMA)


def round_file(results_dir: Path, trial_id: str, round_index: int) -> Path:
    """The file holding one trial's row for one round (deterministic: rewrites replace it)."""
    return Path(results_dir) / f"{trial_id}-round{round_index:03d}.parquet"


def write_round_row(results_dir: Path, row: Mapping[str, Any]) -> Path:
    """Write one (trial, round) row atomically; a repeated round replaces its own file."""
    path = round_file(results_dir, str(row["trial_id"]), int(row["round"]))
    table = row_table([row])
    atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_round_row(results_dir: Path, trial_id: str, round_index: int) -> dict[str, Any]:
    """The row one (trial, round) wrote. A checkpoint is saved after its row, so it exists."""
    path = round_file(results_dir, trial_id, round_index)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the result row of {trial_id} round {round_index} is missing")
    return pq.read_table(path, schema=RESULT_SCHEMA).to_pylist()[0]


def read_results(results_dir: str | Path) -> pd.DataFrame:
    """All rows under a results folder as one DataFrame, sorted by trial and round."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: not a results folder (expected *.parquet files inside)")
    frame = pd.read_parquet(results_dir, schema=RESULT_SCHEMA)  # columns a file lacks read as nulls
    return frame.sort_values(["trial_id", "round"]).reset_index(drop=True)


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
]
