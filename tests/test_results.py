"""Result rows: fixed schema, atomic one-file-per-round writes, read back with pandas."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from halo_ray.results import (
    IOU_COLUMNS,
    RADIUS_COLUMNS,
    RESULT_COLUMNS,
    read_results,
    write_round_row,
)


def _row(trial: str, round_index: int, miou: float, radius=None) -> dict:
    row = {c: None for c in RESULT_COLUMNS}
    row.update(
        search="s", trial_id=trial, seed=0, experiment="e", source="gtav", target="cityscapes",
        strategy="halo", unit="region", budget=5.0, rounds=5, round=round_index, step=10 * round_index,
        labelled_pct=float(round_index), labelled_pixels=100 * round_index, void_pixels=0,
        curvature=1.0, curvature_learned=1.0, bins=8, region_size=3, suppression=11, hfr=True,
        geometry="hyperbolic", embed_dim=64, backbone="tiny", loop="continuous", reference=False,
        miou=miou, pixel_acc=90.0, radius_mean=radius, radius_acc_spearman=None, wall_s=1.0,
        halo_ray_version="0", config_json="{}",
    )
    for c in IOU_COLUMNS + RADIUS_COLUMNS:
        row[c] = None
    return row


def test_rows_round_trip_and_repeated_round_replaces(tmp_path):
    # an all-null column in one file must not break reading the dataset
    write_round_row(tmp_path, _row("a", 0, 10.0, radius=None))
    write_round_row(tmp_path, _row("a", 1, 20.0, radius=1.5))
    write_round_row(tmp_path, _row("b", 0, 30.0))
    write_round_row(tmp_path, _row("a", 1, 21.0, radius=1.5))  # a repeated round
    frame = pd.read_parquet(tmp_path)
    assert len(frame) == 3
    assert sorted(zip(frame.trial_id, frame["round"], strict=False)) == [("a", 0), ("a", 1), ("b", 0)]
    ours = read_results(tmp_path)
    assert ours.loc[(ours.trial_id == "a") & (ours["round"] == 1), "miou"].item() == 21.0
    assert math.isnan(ours.loc[0, "radius_mean"])
    assert not list(tmp_path.glob("*.tmp"))


def test_row_with_wrong_keys_is_refused(tmp_path):
    row = _row("a", 0, 1.0)
    row["surprise"] = 1
    del row["miou"]
    with pytest.raises(ValueError, match=r"missing=\['miou'\], unexpected=\['surprise'\]"):
        write_round_row(tmp_path, row)
    assert not list(tmp_path.iterdir())
