"""One multi-round active-learning run (docs/architecture.md §2). This module knows nothing of Ray.

    source pre-train (cached) → round 0 eval
    for r in 1..R: score → select within budget → reveal → train → eval → row + checkpoint

Every round ends with a Parquet row and a checkpoint holding the model, optimizer, label
pool, RNG states and config. A killed run resumed from its last checkpoint repeats the
remaining rounds exactly (same labelled set and metrics on CPU). Rounds are idempotent:
the pool refuses to spend twice for one (round, image) and a round's row file is
replaced, never duplicated.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

import halo_ray
from halo_ray.acquisition import picks_per_round, select_centres
from halo_ray.config import RUNTIME_KEYS, ConfigError, ExperimentConfig, keys_where
from halo_ray.learner import Learner, LogFn, ensure_data, log_to_stderr, open_split
from halo_ray.pool import DatasetOracle, LabelPool
from halo_ray.results import (
    IOU_COLUMNS,
    RADIUS_COLUMNS,
    atomic_write_bytes,
    read_results,
    read_round_row,
    write_round_row,
)
from halo_ray.rundir import claim_run_directory
from halo_ray.training import Evaluation

CHECKPOINT_FORMAT = 1


class Scorer(Protocol):
    """Anything that scores target-train images like :meth:`Learner.score`."""

    def score(self, round_index: int, indices: Sequence[int]) -> list[torch.Tensor]: ...

#: Config keys shown as hyper-parameters in TensorBoard's HParams dashboard (one set for
#: every run, so the dashboard lines up all trials of a search).
HPARAM_KEYS = keys_where(hparam=True)
HPARAM_METRICS = ("eval/miou", "eval/pixel_acc", "eval/labelled_pct")


# ----------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` atomically (temp file + rename)."""
    atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_path(out_dir: Path, round_index: int) -> Path:
    return out_dir / "checkpoints" / f"round_{round_index:03d}.pt"


def best_checkpoint_path(out_dir: Path, step: int) -> Path:
    """Where ``keep_best`` keeps the weights of the best validation (at global ``step``):
    ``{format, config, miou, step, round, model}``; the model loads with
    ``model.load_state_dict(state["model"])``."""
    return out_dir / "checkpoints" / f"best_step_{step:07d}.pt"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / "checkpoints").glob("round_*.pt"))
    return found[-1] if found else None


def snapshot_path(snapshots_dir: Path, trial_id: str, round_index: int) -> Path:
    """``<snapshots>/<trial_id>/round_NNN.npz``: pictures of what one round selected."""
    return Path(snapshots_dir) / trial_id / f"round_{round_index:03d}.npz"


def write_snapshot(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` atomically; a repeated round replaces its file."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write_bytes(path, write)


@contextmanager
def _file_lock(path: Path):
    """Exclusive lock so two runs asking for one source checkpoint compute it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def source_checkpoint(cfg: ExperimentConfig, learner: Learner, log: LogFn) -> dict:
    """The source pre-trained learner state for this config: from the cache, or trained and cached.

    The cached state holds the model, optimizer and the sampling generator, so a run that
    reads the cache continues exactly like the run that wrote it. ``learner`` must be fresh
    (just constructed); the lock makes concurrent runs with one source config train it once.

    With ``source_select: best`` the phase is validated on the target every ``eval_every``
    steps and at its end; the returned state carries the best validation's model (and its
    record under ``"best"``) with the last step's optimizer and generator. That record
    depends on the target, so it is cached apart (:meth:`ExperimentConfig.validation_key`).
    """
    path = Path(cfg.source_cache) / f"source-{cfg.source_key()}.pt"
    best_path = Path(cfg.source_cache) / f"source-{cfg.source_key()}-best-{cfg.validation_key()}.pt"
    want_best = cfg.source_select == "best"
    with _file_lock(path.with_suffix(".lock")):
        if not path.exists() or (want_best and not best_path.exists()):
            log(f"source pre-training: {cfg.source_steps} steps (cache {path})")
            total = cfg.total_steps if cfg.loop == "continuous" else cfg.source_steps  # adapt/retrain: own schedule
            progress = ProgressLine(log, cfg.log_every, "source", total)
            every = cfg.eval_every if want_best else 0
            best: dict | None = None
            for offset, length in _validation_chunks(0, cfg.source_steps, every):
                learner.train(length, start_step=offset, total_steps=total, progress=progress)
                if want_best:  # after each chunk: every eval_every steps and at the phase's end
                    miou, step = learner.evaluate().miou, offset + length
                    log(f"source step {step}: validation mIoU {miou:.2f}")
                    if _improves(miou, best):
                        best = {"miou": float(miou), "step": step, "model": learner.model_state()}
            if not path.exists():
                save_checkpoint(path, learner.state_dict())
            if best is not None:
                save_checkpoint(best_path, best)
        else:
            log(f"source pre-training: reusing {path}")
    state = load_checkpoint(path)
    if want_best:
        best = load_checkpoint(best_path)
        log(f"source model: the validation at source step {best['step']} (mIoU {best['miou']:.2f})")
        state["trainer"]["model"] = best["model"]
        state["best"] = {"miou": best["miou"], "step": best["step"]}
    return state


# ----------------------------------------------------------------------------------
# progress


class ProgressLine:
    """Prints ``phase | step s/total | loss | lr | elapsed | ETA`` every ``every`` steps."""

    def __init__(self, log: LogFn, every: int, phase: str, total: int, start_step: int = 0):
        self.log, self.every, self.phase, self.total = log, every, phase, total
        self.t0 = time.perf_counter()
        self.first = start_step

    def __call__(self, step: int, total: int, loss: float, lr: float) -> None:
        if step % self.every and step != total:
            return
        elapsed = time.perf_counter() - self.t0
        done = max(step - self.first, 1)
        eta = elapsed / done * max(self.total - step, 0)
        self.log(
            f"{self.phase} | step {step}/{self.total} | loss {loss:.4f} | lr {lr:.5f} | "
            f"elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}"
        )


def format_duration(seconds: float) -> str:
    """``125.4`` → ``2m05s``; ``?`` when unknown (NaN)."""
    if seconds != seconds:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------------
# one run


class ActiveLearningRun:
    """State and steps of one multi-round run; ``execute`` drives it to the end.

    The learner and the label pool are reached only through method calls, so they may be
    the plain objects (built here by default) or Ray actors behind a proxy that turns a
    method call into ``ray.get(actor.method.remote(...))`` — the run does not know which.
    Scoring goes to ``scorer`` (the learner itself by default; a fan-out over scorer actors
    in a search), which must score with the learner's current weights.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: Path,
        *,
        search: str = "local",
        trial_id: str | None = None,
        log: LogFn = log_to_stderr,
        tensorboard: bool = True,
        learner: Learner | None = None,
        pool: LabelPool | None = None,
        scorer: Scorer | None = None,
        results_dir: Path | None = None,
        tensorboard_dir: Path | None = None,
        own_checkpoints: bool = True,
    ):
        self.cfg = cfg
        #: whether the run writes its round checkpoints itself (``checkpoints/round_NNN.pt``);
        #: a search trial does not: the checkpoint it reports to Tune is its one copy
        self.own_checkpoints = own_checkpoints
        self.out_dir = Path(out_dir)
        self.search = search
        self.trial_id = trial_id or f"{cfg.experiment}-{cfg.strategy}-s{cfg.seed}-{cfg.run_id()}"
        self._named_by_caller = trial_id is not None  # a search names its trials; a local run derives it
        self.log = log
        self.tensorboard = tensorboard
        self.results_dir = Path(results_dir) if results_dir else self.out_dir / "results"
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir else self.out_dir / "tensorboard"
        self.snapshots_dir = self.results_dir.parent / "snapshots"
        ensure_data(cfg, log)
        self.learner = learner if learner is not None else Learner(cfg, log=log)
        self.shapes = [(int(h), int(w)) for h, w in self.learner.target_shapes()]
        _check_budget_fits(cfg, self.shapes)
        self.names = self.learner.target_names()
        self.pool = pool if pool is not None else LabelPool(self.shapes, DatasetOracle(open_split(cfg, "train")))
        self.scorer = scorer if scorer is not None else self.learner
        self.round = 0
        self.step = 0
        self.wall_s = 0.0
        #: the best validation so far: {"miou", "step", "round"} (None before the first)
        self.best: dict[str, float | int] | None = None
        self._source_state: dict | None = None
        self._writer = None
        self.last_row: dict | None = None  # the latest round's result row

    # -- tensorboard ---------------------------------------------------------------
    def _writer_at(self, purge_step: int | None):
        if not self.tensorboard:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir / self.trial_id), purge_step=purge_step)
            self._write_hparams(end=False)
        return self._writer

    def _write_hparams(self, *, end: bool) -> None:
        """TensorBoard HParams: this run's hyper-parameters beside its ``eval/*`` scalars.

        Every run of a search writes the same hparam and metric names, so TensorBoard's
        HParams dashboard over ``tensorboard/`` compares all trials of the search. The
        session-end record marks a run that reached its last round.
        """
        from torch.utils.tensorboard.summary import hparams

        values = {key: getattr(self.cfg, key) for key in HPARAM_KEYS}
        values["suppression"] = self.cfg.suppression_size  # the window used, as in the Parquet column
        exp, ssi, sei = hparams({k: v for k, v in values.items() if v is not None}, {m: 0.0 for m in HPARAM_METRICS})
        sink = self._writer.file_writer
        if end:
            sink.add_summary(sei)
        else:
            sink.add_summary(exp)
            sink.add_summary(ssi)

    # -- lifecycle -----------------------------------------------------------------
    def start_or_resume(self, resume: bool | None) -> None:
        """Begin a fresh run (source model, round 0) or load the last round's checkpoint.

        ``resume``: False only starts; True continues and refuses a run whose rows exist but
        whose checkpoints are gone (starting afresh would mix two runs' rows); None (a search
        trial that Tune restarts) continues when there is a checkpoint and starts otherwise.
        """
        existing = latest_checkpoint(self.out_dir)
        if existing is not None and resume is False:
            raise ConfigError(
                f"{self.out_dir} already holds a run (last checkpoint {existing.name}); "
                "pass --resume to continue it or choose another --out"
            )
        if existing is not None:
            self.restore(load_checkpoint(existing), existing)
            return
        rows = sorted(self.results_dir.glob(f"{self.trial_id}-round*.parquet")) if resume else []
        if resume is True and rows:
            raise ConfigError(
                f"--resume: {self.out_dir} holds result rows of this run ({rows[-1].name}) but no checkpoint "
                f"under {self.out_dir / 'checkpoints'} to continue from; restore the checkpoints or start "
                "the run in another --out"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.out_dir / "config.json"
        atomic_write_bytes(config_file, lambda tmp: tmp.write_text(json.dumps(self.cfg.to_dict(), indent=2)))
        self._writer_at(purge_step=None)
        t0 = time.perf_counter()
        self.learner.load_state_dict(self._source_state_for_run())
        self.learner.set_target_labels(self.pool.revealed_labels())  # none yet
        self.step = self.cfg.source_steps
        self.round = 0
        self._finish_round(self.learner.evaluate(), t0)

    def _source_state_for_run(self) -> dict:
        if self._source_state is None:
            self._source_state = source_checkpoint(self.cfg, self.learner, self.log)
        return self._source_state

    def restore(self, state: dict, origin: Path | str) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint_state`."""
        _check_same_config(self.cfg, state["config"], origin)
        self.learner.load_state_dict(state["learner"])
        self.pool.load_state_dict(state["pool"])
        self.learner.set_target_labels(self.pool.revealed_labels())  # every round so far, sparse
        torch.set_rng_state(state["torch_rng"])
        self.round = int(state["round"])
        self.step = int(state["step"])
        self.wall_s = float(state["wall_s"])
        self.best = state.get("best")  # absent from checkpoints written before best tracking
        self._prune_best_checkpoints()  # a file of a lost, later timeline goes
        self._keep_trial_id(state)
        self.last_row = read_round_row(self.results_dir, self.trial_id, self.round)
        self._writer_at(purge_step=self.step + 1)
        self.log(f"resumed from {origin} (round {self.round}, step {self.step})")

    def _keep_trial_id(self, state: dict) -> None:
        """A local run continues under the id it started with, even when this halo_ray derives
        another from the same config (an older version hashed other keys): the checkpoint's id,
        or for checkpoints that predate it, the one trial whose row of this round is in results."""
        if self._named_by_caller:
            return
        saved = state.get("trial_id")
        if saved is None:
            suffix = f"-round{self.round:03d}.parquet"
            found = {p.name[: -len(suffix)] for p in self.results_dir.glob(f"*{suffix}")}
            saved = found.pop() if len(found) == 1 else None
        if saved is not None and saved != self.trial_id:
            self.log(f"continuing trial {saved} (this halo_ray would name the config {self.trial_id})")
            self.trial_id = saved

    def execute(self, resume: bool = False) -> pd.DataFrame:
        """Run (or finish) every round; returns this run's result rows."""
        self.start_or_resume(resume)
        while self.round < self.cfg.rounds:
            self.run_round(self.round + 1)
        self.close()
        frame = read_results(self.results_dir)
        return frame[frame["trial_id"] == self.trial_id].reset_index(drop=True)

    def close(self) -> None:
        """Flush TensorBoard (marking a finished run's HParams session as ended)."""
        if self._writer is not None:
            if self.round >= self.cfg.rounds:
                self._write_hparams(end=True)
            self._writer.close()
            self._writer = None

    # -- one round -----------------------------------------------------------------
    def run_round(self, r: int) -> None:
        """Select, reveal, train and evaluate round ``r``; write its row and checkpoint."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.log(f"round {r}/{cfg.rounds}: scoring {len(self.shapes)} target images ({cfg.strategy})")
        self.select_round(r)
        summary = self.pool.summary()
        self.log(
            f"round {r}/{cfg.rounds}: labelled {summary['labelled_pct']:.3f}% of target pixels "
            f"({summary['labelled_pixels']} px)"
        )
        # the round's new labels, sparse, in one call; the learner builds dense maps per batch
        self.learner.add_target_labels(self.pool.revealed_labels(rounds=[r]))
        steps = cfg.round_lengths()[r - 1]
        if cfg.loop == "retrain":  # every round anew from the source model
            self.learner.load_state_dict(self._source_state_for_run())
            self.learner.reset_optimizer()
            start, total = 0, steps
        elif cfg.loop == "adapt":  # one new schedule over all rounds, begun at round 1 (HALO)
            if r == 1:
                self.learner.reset_optimizer()
            start, total = self.step - cfg.source_steps, cfg.rounds * cfg.round_steps
        else:  # continuous: one schedule over source pre-training and all rounds (RIPU)
            start, total = self.step, cfg.total_steps
        progress = ProgressLine(self.log, cfg.log_every, f"round {r}/{cfg.rounds}", total, start)
        history: list[tuple[int, float, float]] = []
        for offset, length in _validation_chunks(self.step, steps, cfg.eval_every):
            history += self.learner.train(
                length, start_step=start + offset, total_steps=total, use_target=True, progress=progress
            )
            if offset + length < steps:  # a validation inside the round (the round's end has its own)
                self._validate(self.learner.evaluate(), self.step + offset + length, r)
        writer = self._writer_at(None)
        if writer is not None:
            for step, loss, lr in history:
                if step % cfg.log_every == 0:
                    global_step = self.step + (step - start)  # step is 1-based
                    writer.add_scalar("train/loss", loss, global_step)
                    writer.add_scalar("train/lr", lr, global_step)
        self.step += steps
        self.round = r
        self._finish_round(self.learner.evaluate(), t0)

    def select_round(self, r: int) -> None:
        """Score every target-train image not yet done this round and reveal its picks.

        Scores, picks and the budget are in native label pixels (whatever ``target_size``).
        """
        cfg = self.cfg
        picks = {  # per native (H, W): the budget is a share of each image's own pixels
            shape: picks_per_round(
                *shape, budget_pct=cfg.budget, rounds=cfg.rounds, region_size=cfg.region_size, unit=cfg.unit,
                reference=cfg.reference,
            )
            for shape in set(self.shapes)
        }
        todo = [i for i in range(len(self.shapes)) if r not in self.pool.rounds_done(i)]
        shown = [i for i in range(min(cfg.log_images, len(self.shapes))) if i in todo]
        scores_shown: dict[int, torch.Tensor] = {}
        chunk = max(cfg.eval_batch_size, 1) * 4
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            for i, score in zip(batch, self.scorer.score(r, batch), strict=True):
                active = torch.tensor(self.pool.suppressed(i, cfg.suppression_size))  # a copy: actor results are read-only
                centres = select_centres(
                    score, picks=picks[self.shapes[i]], suppression=cfg.suppression_size, active=active
                )
                self.pool.reveal(r, i, centres.numpy(), region_size=cfg.region_size, unit=cfg.unit)
                if i in shown:
                    scores_shown[i] = score
        if shown:
            self._record_selection(r, shown, [scores_shown[i] for i in shown])

    def _record_selection(self, r: int, indices: list[int], scores: list[torch.Tensor]) -> None:
        """Keep pictures of what round ``r`` selected: a snapshot file and TensorBoard images.

        The model is the one that scored the round (selection precedes training), so the
        prediction and radius shown are the ones the strategy saw.
        """
        snap = self.learner.snapshot(indices)
        snap["score"] = torch.stack(scores).float().numpy()  # [K, H, W]
        snap["labelled_round"] = np.stack([np.asarray(self.pool.round_map(i)) for i in indices]).astype(np.uint8)
        snap["index"] = np.asarray(indices, dtype=np.int64)
        snap["name"] = np.asarray([self.names[i] for i in indices])
        snap["round"] = np.asarray(r)
        snap["strategy"] = np.asarray(self.cfg.strategy)
        snap["trial_id"] = np.asarray(self.trial_id)
        write_snapshot(snapshot_path(self.snapshots_dir, self.trial_id, r), snap)
        writer = self._writer_at(None)
        if writer is None:
            return
        for k, i in enumerate(indices):
            image = torch.from_numpy(snap["image"][k]).permute(2, 0, 1).float() / 255.0  # [3, H, W]
            mask = torch.from_numpy(snap["labelled_round"][k])  # [H, W] round of labelling
            overlay = image.clone()
            now, before = mask == r, (mask > 0) & (mask < r)
            overlay[0][now], overlay[1][now], overlay[2][now] = 1.0, 0.0, 0.0
            overlay[1][before] = 1.0
            tag = f"selection/{self.names[i]}"
            writer.add_image(f"{tag}/labelled", overlay, self.step)
            writer.add_image(f"{tag}/score", _unit_range(scores[k]).unsqueeze(0), self.step)
            if "radius" in snap:
                writer.add_image(f"{tag}/radius", _unit_range(torch.from_numpy(snap["radius"][k])).unsqueeze(0), self.step)

    # -- bookkeeping -----------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Everything needed to continue after this round, as tensors and plain values."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "round": self.round,
            "step": self.step,
            "learner": self.learner.state_dict(),
            "pool": self.pool.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "wall_s": self.wall_s,
            "best": self.best,
            "trial_id": self.trial_id,
        }

    def _validate(self, ev: Evaluation, step: int, r: int) -> None:
        """A validation inside round ``r``: TensorBoard scalars and the best-so-far record."""
        self._track_best(ev, step, r)
        writer = self._writer_at(None)
        if writer is not None:
            writer.add_scalar("eval/miou", ev.miou, step)
            writer.add_scalar("eval/pixel_acc", ev.pixel_acc, step)
        self.log(f"round {r}/{self.cfg.rounds} step {step}: validation mIoU {ev.miou:.2f} "
                 f"(best {self.best['miou']:.2f} at step {self.best['step']})")

    def _track_best(self, ev: Evaluation, step: int, r: int) -> None:
        """Record a validation that beats the best so far; with ``keep_best`` save its weights
        (``checkpoints/best_step_NNNNNNN.pt``, see :func:`best_checkpoint_path`)."""
        if not _improves(ev.miou, self.best):
            return
        self.best = {"miou": float(ev.miou), "step": int(step), "round": int(r)}
        if self.cfg.keep_best:
            state = {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), **self.best,
                     "model": self.learner.model_state()}
            save_checkpoint(best_checkpoint_path(self.out_dir, step), state)

    def _prune_best_checkpoints(self) -> None:
        """Delete every best-model file but the recorded best's. Runs once a round checkpoint
        (or a resume) fixes the record, so a crash never leaves the record without its file;
        files of a lost timeline (written after the checkpoint resumed from) go too."""
        keep = None if self.best is None else best_checkpoint_path(self.out_dir, int(self.best["step"]))
        for path in (self.out_dir / "checkpoints").glob("best_step_*.pt"):
            if path != keep:
                path.unlink(missing_ok=True)

    def _finish_round(self, ev: Evaluation, t0: float) -> None:
        """Write the round's row and TensorBoard scalars, then its checkpoint."""
        self.wall_s += time.perf_counter() - t0
        self._track_best(ev, self.step, self.round)
        self.last_row = row = self._row(ev)
        write_round_row(self.results_dir, row)
        writer = self._writer_at(None)
        if writer is not None:
            for key in ("miou", "miou13", "pixel_acc", "labelled_pct", "radius_mean", "radius_acc_spearman"):
                if row[key] is not None and np.isfinite(row[key]):
                    writer.add_scalar(f"eval/{key}", row[key], self.step)
            writer.flush()
        self.log(
            f"round {self.round}/{self.cfg.rounds} done: mIoU {ev.miou:.2f} | pixel acc {ev.pixel_acc:.2f} | "
            f"labelled {row['labelled_pct']:.3f}% | wall {self.wall_s:.1f}s"
        )
        if self.own_checkpoints:
            save_checkpoint(checkpoint_path(self.out_dir, self.round), self.checkpoint_state())
            self.checkpoint_written()

    def checkpoint_written(self) -> None:
        """The latest round's checkpoint is safe (on disk, or reported to Tune): prune round
        checkpoints beyond ``keep_checkpoints`` and best-model files the record no longer names."""
        rounds = sorted((self.out_dir / "checkpoints").glob("round_*.pt"))
        for path in rounds[: max(0, len(rounds) - self.cfg.keep_checkpoints)]:
            path.unlink(missing_ok=True)
        self._prune_best_checkpoints()

    def _row(self, ev: Evaluation) -> dict:
        cfg = self.cfg
        learned = self.learner.curvature()
        summary = self.pool.summary()
        row = {
            "search": self.search,
            "trial_id": self.trial_id,
            **{name: getattr(cfg, name) for name in keys_where(column=True)},  # the config's own columns
            "suppression": cfg.suppression_size,  # the window used
            "round": self.round,
            "step": self.step,
            "labelled_pct": float(summary["labelled_pct"]),
            "labelled_pixels": int(summary["labelled_pixels"]),
            "void_pixels": int(summary["void_pixels"]),
            "curvature_learned": float(learned) if learned is not None else None,
            "miou": ev.miou,
            "miou13": _finite_or_none(ev.miou13),
            "best_miou": _finite_or_none(self.best["miou"]) if self.best is not None else None,
            "best_step": int(self.best["step"]) if self.best is not None else None,
            "pixel_acc": ev.pixel_acc,
            "radius_mean": _finite_or_none(ev.radius_mean),
            "radius_acc_spearman": _finite_or_none(ev.radius_acc_spearman),
            "wall_s": self.wall_s,
            "halo_ray_version": halo_ray.__version__,
            "config_json": cfg.to_json(),
        }
        for column, value in zip(IOU_COLUMNS, ev.iou, strict=True):
            row[column] = _finite_or_none(float(value))
        for column, value in zip(RADIUS_COLUMNS, ev.radius_per_class, strict=True):
            row[column] = _finite_or_none(float(value))
        return row


def _improves(miou: float, best: Mapping[str, Any] | None) -> bool:
    """Whether a validation's ``miou`` replaces the ``best`` record so far (the first always;
    later ones only when strictly higher, so ties keep the earlier model and a NaN never
    replaces a record)."""
    return best is None or miou > best["miou"]


def _validation_chunks(step: int, steps: int, every: int) -> list[tuple[int, int]]:
    """``(offset, length)`` pieces of a round of ``steps`` steps that begins after global step
    ``step``, cut after each global step that is a multiple of ``every`` (0: one piece)."""
    if every <= 0 or steps == 0:
        return [(0, steps)]
    cuts = [k - step for k in range((step // every + 1) * every, step + steps, every)]
    bounds = [0, *cuts, steps]
    return [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _unit_range(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _check_budget_fits(cfg: ExperimentConfig, shapes: Sequence[tuple[int, int]]) -> None:
    """Refuse a config whose single pick exceeds an image's budget for one round.

    Every image gets at least one pick per round, so a square (or a pixel) larger than
    ``H·W·budget/rounds`` would label more than the budget allows (``region_size: 201`` on the
    embedded benchmark would label 77 % for a 5 % budget).
    """
    if cfg.rounds == 0 or not shapes:
        return
    height, width = min(shapes, key=lambda hw: hw[0] * hw[1])
    allowed = height * width * cfg.budget / 100 / cfg.rounds  # pixels per image and round
    unit_pixels = min(cfg.region_size, height) * min(cfg.region_size, width) if cfg.unit == "region" else 1
    if unit_pixels > allowed:
        raise ConfigError(
            f"budget={cfg.budget:g} % over rounds={cfg.rounds} allows {allowed:.1f} pixels per {height}x{width} target "
            f"image and round, but one pick labels {unit_pixels} (unit={cfg.unit}, region_size={cfg.region_size}): "
            "the budget would be exceeded; use a smaller region_size or fewer rounds, or a larger budget"
        )


def _check_same_config(cfg: ExperimentConfig, saved: dict, path: Path | str) -> None:
    """A resumed run must continue the same config; name every key that differs.

    A key the checkpoint lacks was added to halo_ray after it was written; the run then
    behaved as that key's default does, so the default stands in for it. Runtime keys
    (:data:`~halo_ray.config.RUNTIME_KEYS`: device, threads, prefetching) may change.
    """
    current = cfg.to_dict()
    defaults = ExperimentConfig().to_dict()
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    differ = sorted(
        k for k in set(current) | set(saved) if k not in RUNTIME_KEYS and current.get(k) != saved.get(k)
    )
    if differ:
        detail = ", ".join(f"{k}: checkpoint={saved.get(k)!r} now={current.get(k)!r}" for k in differ)
        raise ConfigError(f"{path}: cannot resume with a different config ({detail})")


def run_experiment(
    cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, log: LogFn = log_to_stderr,
    tensorboard: bool = True,
) -> pd.DataFrame:
    """Run one experiment to the end (or finish it with ``resume``); returns its rows.

    The run owns ``out_dir`` (:func:`~halo_ray.rundir.claim_run_directory`): a folder that is
    not a halo_ray run, or one another process is running in, is refused untouched.
    """
    with claim_run_directory(out_dir, resume=resume):
        run = ActiveLearningRun(cfg, Path(out_dir), log=log, tensorboard=tensorboard)
        return run.execute(resume=resume)


__all__ = [
    "ActiveLearningRun",
    "best_checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "run_experiment",
    "save_checkpoint",
    "snapshot_path",
    "write_snapshot",
]
