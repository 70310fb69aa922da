"""What a run leaves for people: a Parquet row per round, TensorBoard scalars, images and
HParams, and snapshots of what each round selected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import halo_ray
from halo_ray.config import ExperimentConfig, keys_where
from halo_ray.metrics import Evaluation
from halo_ray.results import (
    IOU_COLUMNS,
    RADIUS_COLUMNS,
    atomic_write_bytes,
    read_round_row,
    write_round_row,
)
from halo_ray.run.tensorboard import EventLog

__all__ = ["HPARAM_KEYS", "HPARAM_METRICS", "Recorder", "snapshot_path", "write_snapshot"]

#: Config keys shown as hyper-parameters in TensorBoard's HParams dashboard (one set for
#: every run, so the dashboard lines up all trials of a search).
HPARAM_KEYS = keys_where(hparam=True)
HPARAM_METRICS = ("eval/miou", "eval/pixel_acc", "eval/labelled_pct")
#: Row values that also go to TensorBoard as ``eval/<name>`` at each round's end.
ROUND_SCALARS = ("miou", "miou13", "pixel_acc", "labelled_pct", "radius_mean", "radius_acc_spearman")


def snapshot_path(snapshots_dir: Path, trial_id: str, round_index: int) -> Path:
    """``<snapshots>/<trial_id>/round_NNN.npz``: pictures of what one round selected."""
    return Path(snapshots_dir) / trial_id / f"round_{round_index:03d}.npz"


def write_snapshot(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` atomically; a repeated round replaces its file."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write_bytes(path, write)


class Recorder:
    """Rows under ``results_dir``, TensorBoard under ``tensorboard_dir/<trial_id>``, snapshots
    beside the results; ``trial_id`` names all three (a resume may keep an older id)."""

    def __init__(
        self, cfg: ExperimentConfig, *, search: str, trial_id: str, results_dir: Path, tensorboard_dir: Path,
        tensorboard: bool = True,
    ):
        self.cfg, self.search, self.trial_id = cfg, search, trial_id
        self.results_dir, self.tensorboard_dir = Path(results_dir), Path(tensorboard_dir)
        self.snapshots_dir = self.results_dir.parent / "snapshots"
        self.tensorboard = tensorboard
        self._writer = None

    # -- rows ------------------------------------------------------------------------
    def row(
        self, ev: Evaluation, *, round_index: int, step: int, pool_summary: Mapping[str, Any],
        curvature_learned: float | None, best: Mapping[str, Any] | None, wall_s: float,
    ) -> dict:
        """The row of one round (the fixed Parquet schema)."""
        cfg = self.cfg
        row = {
            "search": self.search,
            "trial_id": self.trial_id,
            **{name: getattr(cfg, name) for name in keys_where(column=True)},  # the config's own columns
            "suppression": cfg.suppression_size,  # the window used
            "round": round_index,
            "step": step,
            "labelled_pct": float(pool_summary["labelled_pct"]),
            "labelled_pixels": int(pool_summary["labelled_pixels"]),
            "void_pixels": int(pool_summary["void_pixels"]),
            # unit multiclass: clicks spent so far and allowed so far (null for the pixel units)
            "clicks": pool_summary.get("clicks"),
            "click_budget": pool_summary.get("click_budget"),
            "pseudo_coverage": pool_summary.get("pseudo_coverage"),
            "pseudo_precision": pool_summary.get("pseudo_precision"),
            "curvature_learned": float(curvature_learned) if curvature_learned is not None else None,
            "miou": ev.miou,
            "miou13": finite_or_none(ev.miou13),
            "miou_stage2": pool_summary.get("miou_stage2"),  # unit multiclass with stage2_steps
            "best_miou": finite_or_none(best["miou"]) if best is not None else None,
            "best_step": int(best["step"]) if best is not None else None,
            "pixel_acc": ev.pixel_acc,
            "radius_mean": finite_or_none(ev.radius_mean),
            "radius_acc_spearman": finite_or_none(ev.radius_acc_spearman),
            "wall_s": wall_s,
            "halo_ray_version": halo_ray.__version__,
            "config_json": cfg.to_json(),
        }
        for column, value in zip(IOU_COLUMNS, ev.iou, strict=True):
            row[column] = finite_or_none(float(value))
        for column, value in zip(RADIUS_COLUMNS, ev.radius_per_class, strict=True):
            row[column] = finite_or_none(float(value))
        return row

    def write_row(self, row: dict, step: int) -> None:
        """Write a round's row (replacing a repeated round's) and its TensorBoard scalars."""
        write_round_row(self.results_dir, row)
        writer = self.writer()
        if writer is not None:
            for key in ROUND_SCALARS:
                if row[key] is not None and np.isfinite(row[key]):
                    writer.scalar(f"eval/{key}", row[key], step)
            writer.flush()

    def read_row(self, round_index: int) -> dict | None:
        """This trial's row of ``round_index`` as written, or None."""
        return read_round_row(self.results_dir, self.trial_id, round_index)

    def rows_on_disk(self) -> list[Path]:
        """This trial's row files."""
        return sorted(self.results_dir.glob(f"{self.trial_id}-round*.parquet"))

    # -- TensorBoard ---------------------------------------------------------------------
    def open(self, purge_step: int | None = None) -> None:
        """Start the TensorBoard log (a resume purges events after ``purge_step``)."""
        if self.tensorboard and self._writer is None:
            self._writer = EventLog(self.tensorboard_dir / self.trial_id, purge_step=purge_step)
            self._write_hparams(end=False)

    def writer(self) -> EventLog | None:
        """The open TensorBoard log (opened on first use), or None without TensorBoard."""
        self.open()
        return self._writer

    def training(self, history: Sequence[tuple[int, float, float]], first_step: int, start: int) -> None:
        """``train/loss`` and ``train/lr`` every ``log_every`` steps of a round's ``history``
        of ``(schedule step, loss, lr)``; the round began after global step ``first_step`` at
        schedule step ``start``."""
        writer = self.writer()
        if writer is None:
            return
        for step, loss, lr in history:
            if step % self.cfg.log_every == 0:
                global_step = first_step + (step - start)  # step is 1-based
                writer.scalar("train/loss", loss, global_step)
                writer.scalar("train/lr", lr, global_step)

    def validation(self, ev: Evaluation, step: int) -> None:
        """A validation inside a round: ``eval/miou`` and ``eval/pixel_acc`` at ``step``."""
        writer = self.writer()
        if writer is not None:
            writer.scalar("eval/miou", ev.miou, step)
            writer.scalar("eval/pixel_acc", ev.pixel_acc, step)

    def _write_hparams(self, *, end: bool) -> None:
        """TensorBoard HParams: this run's hyper-parameters beside its ``eval/*`` scalars.

        Every run of a search writes the same hparam and metric names, so TensorBoard's
        HParams dashboard over ``tensorboard/`` compares all trials of the search. The
        session-end record marks a run that reached its last round.
        """
        values = {key: getattr(self.cfg, key) for key in HPARAM_KEYS}
        values["suppression"] = self.cfg.suppression_size  # the window used, as in the Parquet column
        values = {k: ",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else v for k, v in values.items()}  # "16,8,1"
        if end:
            self._writer.hparams_end()
        else:
            self._writer.hparams_start(values, HPARAM_METRICS)

    def close(self, *, finished: bool) -> None:
        """Flush TensorBoard (marking a finished run's HParams session as ended)."""
        if self._writer is not None:
            if finished:
                self._write_hparams(end=True)
            self._writer.close()
            self._writer = None

    # -- selections ---------------------------------------------------------------------
    def selection(
        self, round_index: int, step: int, snap: dict[str, np.ndarray], scores: Sequence[np.ndarray],
        indices: Sequence[int], names: Sequence[str], labelled_rounds: Sequence[np.ndarray],
    ) -> None:
        """Keep pictures of what a round selected: a snapshot file and TensorBoard images.

        ``snap`` is :meth:`halo_ray.learner.Learner.snapshot` of ``indices`` by the model that
        scored the round (selection precedes training), so the prediction and radius shown are
        the ones the strategy saw; ``labelled_rounds`` the pool's round-of-labelling maps.
        """
        r = round_index
        snap["score"] = np.stack([np.asarray(m, dtype=np.float32) for m in scores])  # [K, H, W]
        snap["labelled_round"] = np.stack([np.asarray(m) for m in labelled_rounds]).astype(np.uint8)
        snap["index"] = np.asarray(indices, dtype=np.int64)
        snap["name"] = np.asarray([names[i] for i in indices])
        snap["round"] = np.asarray(r)
        snap["strategy"] = np.asarray(self.cfg.strategy)
        snap["trial_id"] = np.asarray(self.trial_id)
        write_snapshot(snapshot_path(self.snapshots_dir, self.trial_id, r), snap)
        writer = self.writer()
        if writer is None:
            return
        for k, i in enumerate(indices):
            overlay = snap["image"][k].copy()  # [H, W, 3] uint8
            mask = snap["labelled_round"][k]  # [H, W] round of labelling
            overlay[mask == r] = (255, 0, 0)
            overlay[(mask > 0) & (mask < r), 1] = 255
            tag = f"selection/{names[i]}"
            writer.image(f"{tag}/labelled", overlay, step)
            writer.image(f"{tag}/score", unit_range(snap["score"][k]), step)
            if "radius" in snap:
                writer.image(f"{tag}/radius", unit_range(snap["radius"][k]), step)


def finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def unit_range(x: np.ndarray) -> np.ndarray:
    """``x`` min-max scaled to [0, 1] for an image (a constant map is all zeros)."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
