"""The loop of one multi-round active-learning run (docs/architecture.md §2), no Ray.

    source model (cached) → round 0: evaluate
    for r in 1..R: score → select within budget → reveal → train → evaluate → row + checkpoint

What it leaves for people goes through a :class:`~halo_ray.run.recorder.Recorder` (rows,
TensorBoard, snapshots), its state through a :class:`~halo_ray.run.checkpointer.Checkpointer`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from halo_ray.acquisition import picks_per_round
from halo_ray.config import ConfigError, ExperimentConfig
from halo_ray.metrics import Evaluation
from halo_ray.pool import LabelPool
from halo_ray.results import atomic_write_bytes, read_results
from halo_ray.run.checkpointer import (
    CHECKPOINT_FORMAT,
    Checkpointer,
    improves,
)
from halo_ray.run.progress import ProgressLine, validation_chunks
from halo_ray.run.recorder import Recorder
from halo_ray.rundir import claim_run_directory
from halo_ray.splits import (
    LogFn,
    ensure_data,
    ensure_superpixels,
    log_to_stderr,
    open_pool,
)

if TYPE_CHECKING:
    from halo_ray.learner import Learner

__all__ = ["ActiveLearningRun", "Scorer", "run_experiment"]


class Scorer(Protocol):
    """Anything that scores and selects target-train images like :meth:`Learner.select` (and,
    for the multi-class unit, computes :meth:`Learner.class_means` / :meth:`Learner.region_terms`
    in parts: ``handover_parts``, or the learner's own methods in-process)."""

    def select(
        self, round_index: int, indices: Sequence[int], picks: Sequence[int], prior: Sequence[np.ndarray], *,
        suppression: int, keep: Sequence[int] = (),
    ) -> tuple[list[np.ndarray], dict[int, np.ndarray]]: ...


class ActiveLearningRun:
    """State and steps of one multi-round run; ``execute`` drives it to the end.

    The learner and the label pool are reached only through method calls, so they may be
    the plain objects (built here by default) or Ray actors behind a proxy that turns a
    method call into ``ray.get(actor.method.remote(...))`` — the run does not know which.
    Scoring goes to ``scorer`` (the learner itself by default; a fan-out over scorer actors
    in a search), which must score with the learner's current weights. ``own_checkpoints``
    False: the caller persists :meth:`checkpoint_bytes` (a search trial reports it to Tune)
    and calls :meth:`checkpoint_written`. A ``pool`` handed over (unit multiclass) was opened on
    a filled superpixel cache (:func:`~halo_ray.splits.ensure_superpixels`); without one the
    run fills the cache itself.
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
        self.out_dir = Path(out_dir)
        self.log = log
        self._named_by_caller = trial_id is not None  # a search names its trials; a local run derives it
        self.recorder = Recorder(
            cfg, search=search, trial_id=trial_id or f"{cfg.experiment}-{cfg.strategy}-s{cfg.seed}-{cfg.run_id()}",
            results_dir=Path(results_dir) if results_dir else self.out_dir / "results",
            tensorboard_dir=Path(tensorboard_dir) if tensorboard_dir else self.out_dir / "tensorboard",
            tensorboard=tensorboard,
        )
        self.checkpoints = Checkpointer(cfg, self.out_dir, own=own_checkpoints)
        ensure_data(cfg, log)
        if cfg.unit == "multiclass" and pool is None:  # a pool handed over was opened on a filled cache
            ensure_superpixels(cfg, log)
        if learner is None:  # in-process: a search's trial hands its learner actor over instead
            from halo_ray.learner import Learner

            learner = Learner(cfg, log=log)
        self.learner = learner
        self.shapes = [(int(h), int(w)) for h, w in self.learner.target_shapes()]
        self.multiclass = cfg.unit == "multiclass"
        if not self.multiclass:
            _check_budget_fits(cfg, self.shapes)
        self.names = self.learner.target_names()
        if pool is None:
            pool = open_pool(cfg, self.shapes)
        self.pool = pool
        #: unit multiclass: superpixels per image (read on first use)
        self._regions: list[int] | None = None
        self.scorer = scorer if scorer is not None else self.learner
        self.round = 0
        self.step = 0
        self.wall_s = 0.0
        #: the best validation so far: {"miou", "step", "round"} (None before the first)
        self.best: dict[str, float | int] | None = None
        #: the best validation inside the round being trained (``round_model: best``; its weights
        #: kept by the learner: :meth:`~halo_ray.learner.Learner.keep_model`)
        self._round_best: dict | None = None
        self.last_row: dict | None = None  # the latest round's result row

    @property
    def trial_id(self) -> str:
        """The id that names this run's rows, TensorBoard folder and snapshots."""
        return self.recorder.trial_id

    @property
    def results_dir(self) -> Path:
        return self.recorder.results_dir

    # -- the run ---------------------------------------------------------------------
    def execute(self, resume: bool = False) -> pd.DataFrame:
        """Run (or finish) every round; returns this run's result rows."""
        self.start_or_resume(resume)
        while self.round < self.cfg.rounds:
            self.run_round(self.round + 1)
        self.close()
        frame = read_results(self.results_dir)
        return frame[frame["trial_id"] == self.trial_id].reset_index(drop=True)

    def start_or_resume(self, resume: bool | None) -> None:
        """Begin a fresh run (source model, round 0) or load the last round's checkpoint.

        ``resume``: False only starts; True continues and refuses a run whose rows exist but
        whose checkpoints are gone (starting afresh would mix two runs' rows); None (a search
        trial that Tune restarts) continues when there is a checkpoint and starts otherwise.
        """
        existing = self.checkpoints.latest()
        if existing is not None and resume is False:
            raise ConfigError(
                f"{self.out_dir} already holds a run (last checkpoint {existing.name}); "
                "pass --resume to continue it or choose another --out"
            )
        if existing is not None:
            self.restore(existing.read_bytes(), existing)
            return
        rows = self.recorder.rows_on_disk() if resume is True else []
        if rows:
            raise ConfigError(
                f"--resume: {self.out_dir} holds result rows of this run ({rows[-1].name}) but no checkpoint "
                f"under {self.out_dir / 'checkpoints'} to continue from; restore the checkpoints or start "
                "the run in another --out"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.out_dir / "config.json"
        atomic_write_bytes(config_file, lambda tmp: tmp.write_text(json.dumps(self.cfg.to_dict(), indent=2)))
        self.recorder.open()
        t0 = time.perf_counter()
        self.learner.load_source()
        self._give_learner_every_label()  # none yet
        self.step = self.cfg.source_steps
        self.round = 0
        self._finish_round(self.learner.evaluate(), t0)

    def run_round(self, r: int) -> None:
        """Select, reveal, train and evaluate round ``r``; write its row and checkpoint."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.log(f"round {r}/{cfg.rounds}: scoring {len(self.shapes)} target images ({cfg.strategy})")
        if self.multiclass:
            revealed = self.select_round_multiclass(r)
            summary = self.pool.summary()
            self.log(
                f"round {r}/{cfg.rounds}: {summary['clicks']} clicks of {r * cfg.clicks_per_round} allowed so far; "
                f"answered superpixels cover {summary['labelled_pct']:.3f}% of target pixels"
            )
            self.learner.add_answers(_handed_over(self.pool, "targets_of", revealed, self._region_counts()))
        else:
            self.select_round(r)
            summary = self.pool.summary()
            self.log(
                f"round {r}/{cfg.rounds}: labelled {summary['labelled_pct']:.3f}% of target pixels "
                f"({summary['labelled_pixels']} px)"
            )
            # the round's new labels, sparse, in one call; the learner builds dense maps per batch
            self.learner.add_target_labels(self.pool.revealed_labels(rounds=[r]))
        self._train_round(r)
        self.round = r
        self._finish_round(self._round_model(self.learner.evaluate()), t0)

    def close(self) -> None:
        """Flush TensorBoard (marking a finished run's HParams session as ended)."""
        self.recorder.close(finished=self.round >= self.cfg.rounds)

    # -- one round's parts ------------------------------------------------------------
    def select_round(self, r: int) -> None:
        """Select round ``r`` on every target-train image not yet done this round and reveal
        its picks, a chunk of images at a time.

        Per chunk three calls: the pool's earlier centres of the chunk (the compact
        suppression state), the scorer's :meth:`~halo_ray.learner.Learner.select` (scores and
        greedy picks where the maps are, on the model's device), and the pool's
        ``reveal_many``, which a pool actor works on while the next chunk is scored. Only
        centres travel, never a full-resolution map (except the score maps of the
        ``log_images`` pictures). Scores, picks and the budget are in native label
        pixels (whatever ``target_size``).
        """
        cfg = self.cfg
        picks = {  # per native (H, W): the budget is a share of each image's own pixels
            shape: picks_per_round(
                *shape, budget_pct=cfg.budget, rounds=cfg.rounds, region_size=cfg.region_size, unit=cfg.unit,
                reference=cfg.reference,
            )
            for shape in set(self.shapes)
        }
        todo = self.pool.images_without(r)
        shown = [i for i in range(min(cfg.log_images, len(self.shapes))) if i in todo]
        scores_shown: dict[int, np.ndarray] = {}
        chunk = max(cfg.eval_batch_size, 1) * 4
        batches = [todo[start : start + chunk] for start in range(0, len(todo), chunk)]
        prior = self.pool.centres_of(batches[0]) if batches else []
        revealed: Callable[[], Any] | None = None  # waits for the previous chunk's reveal
        for k, batch in enumerate(batches):
            centres, kept = self.scorer.select(
                r, batch, [picks[self.shapes[i]] for i in batch], prior, suppression=cfg.suppression_size,
                keep=[i for i in batch if i in shown],
            )
            if k + 1 < len(batches):  # the next chunk's images are others: this chunk's reveal changes none of theirs
                prior = self.pool.centres_of(batches[k + 1])
            if revealed is not None:  # the previous chunk's, done while this chunk was scored (its error raised here)
                revealed()
            revealed = _begun(self.pool, "reveal_many", r, batch, centres, region_size=cfg.region_size, unit=cfg.unit)
            scores_shown.update(kept)
        if revealed is not None:
            revealed()
        if shown:
            self.recorder.selection(
                r, self.step, self.learner.snapshot(shown), [scores_shown[i] for i in shown], shown, self.names,
                [self.pool.round_map(i) for i in shown],
            )

    def _region_counts(self) -> list[int]:
        """Unit multiclass: superpixels per image, read once per run; the learner gets every
        region's click cost from the pool then (pool to learner directly, for its ranking)."""
        if self._regions is None:
            self._regions = [int(n) for n in self.learner.region_counts()]
            self.learner.set_region_costs(_handed_over(self.pool, "costs_of", list(range(len(self.shapes)))))
        return self._regions

    def select_round_multiclass(self, r: int) -> list[int]:
        """Unit multiclass: score every region of the pool, pick the best until the round's
        click budget (``clicks_per_round``) is spent, and show them to the annotator.

        The ranking runs over the whole pool at once (PixBal's prior and BvSB's normalisation
        are pool statistics), in the learner (:meth:`~halo_ray.learner.Learner.rank_regions`):
        the scorers' region terms, PixBal's prior and the pool's table of available regions go
        there from actor to actor, and only the picks come back (a search trial imports no
        torch). Regions answered in earlier rounds are out. A resumed round ranks the same
        pool again, so its picks, and the pool's idempotent reveals, repeat. Returns the images
        that got answers this round.
        """
        cfg = self.cfg
        regions = self._region_counts()
        n, width = len(regions), max(regions)
        chunk = max(cfg.eval_batch_size, 1) * 4
        batches = [list(range(s, min(s + chunk, n))) for s in range(0, n, chunk)]
        parts: list = []
        if not (cfg.strategy == "random" or (cfg.reference and r == 1)):  # the released first round is random
            prior = None
            if cfg.strategy == "pixbal":  # the mean of per-batch mean probabilities (released pass 1)
                means = [m for b in batches for m in _handed_over_parts(self.scorer, "class_means", r, b)]
                prior = _handed_over(self.learner, "pixbal_prior", *means)
            parts = [p for b in batches for p in _handed_over_parts(self.scorer, "region_terms", r, b, prior, width)]
        available = _handed_over(self.pool, "available_table", regions, before_round=r)
        order, _ = self.learner.rank_regions(r, available, *parts)
        revealed = sorted(set(order[:, 0].tolist()))
        for i in revealed:
            self.pool.reveal(r, i, order[order[:, 0] == i, 1])
        return revealed

    def _give_learner_every_label(self) -> None:
        """Hand the learner every label revealed so far (a fresh start, or a resume)."""
        if self.multiclass:
            regions = self._region_counts()
            self.learner.set_answers(_handed_over(self.pool, "targets_of", self.pool.answered_images(), regions))
        else:
            self.learner.set_target_labels(self.pool.revealed_labels())  # every round so far, sparse

    def _train_round(self, r: int) -> None:
        """Train round ``r``'s steps on source + every revealed label, in the loop's schedule,
        validating every ``eval_every`` global steps."""
        cfg = self.cfg
        steps = cfg.round_lengths()[r - 1]
        if cfg.loop == "retrain":  # every round anew from the source model
            self.learner.load_source()
            self.learner.reset_optimizer()
            start, total = 0, steps
        elif cfg.loop == "adapt":  # one new schedule over all rounds, begun at round 1 (HALO)
            if r == 1:
                self.learner.reset_optimizer()
            start, total = self.step - cfg.source_steps, cfg.rounds * cfg.round_steps
        else:  # continuous: one schedule over source pre-training and all rounds (RIPU)
            start, total = self.step, cfg.total_steps
        self._round_best = None
        progress = ProgressLine(self.log, cfg.log_every, f"round {r}/{cfg.rounds}", total, start)
        history: list[tuple[int, float, float]] = []
        for offset, length in validation_chunks(self.step, steps, cfg.eval_every):
            history += self.learner.train(
                length, start_step=start + offset, total_steps=total, use_target=True, progress=progress
            )
            if offset + length < steps:  # a validation inside the round (the round's end has its own)
                self._validate(self.learner.evaluate(), self.step + offset + length, r)
        self.recorder.training(history, self.step, start)
        self.step += steps

    def _validate(self, ev: Evaluation, step: int, r: int) -> None:
        """A validation inside round ``r``: TensorBoard scalars and the best-so-far record
        (with ``round_model: best``, also the round's best model, kept by the learner)."""
        self._track_best(ev, step, r)
        if self.cfg.round_model == "best" and improves(ev.miou, self._round_best):
            self._round_best = {"miou": float(ev.miou), "step": int(step), "eval": ev}
            self.learner.keep_model()  # the weights stay in the learner
        self.recorder.validation(ev, step)
        self.log(f"round {r}/{self.cfg.rounds} step {step}: validation mIoU {ev.miou:.2f} "
                 f"(best {self.best['miou']:.2f} at step {self.best['step']})")

    def _round_model(self, ev: Evaluation) -> Evaluation:
        """The model a round ends with: its last, or with ``round_model: best`` the best of its
        validations when the last one does not beat it (the released multi-class query acquires
        with, reports and pseudo-labels from the best checkpoint of each round); its evaluation."""
        best, self._round_best = self._round_best, None
        if best is None:
            return ev
        if improves(ev.miou, best):
            self.learner.drop_kept_model()
            return ev
        self.learner.load_kept_model()
        self.log(f"round {self.round}/{self.cfg.rounds}: going on with the validation at step {best['step']} "
                 f"(mIoU {best['miou']:.2f}; the round's last model {ev.miou:.2f})")
        return best["eval"]

    def _finish_round(self, ev: Evaluation, t0: float) -> None:
        """Write the round's row and TensorBoard scalars, then its checkpoint."""
        summary = self.pool.summary()
        if self.multiclass:
            stage2 = self.cfg.stage2_steps > 0 and self.round > 0
            summary = {
                **summary,
                "click_budget": self.round * self.cfg.clicks_per_round,
                **self.learner.stage_two(self.cfg.stage2_steps if stage2 else 0),
            }
        self.wall_s += time.perf_counter() - t0  # stage 2 included
        self._track_best(ev, self.step, self.round)
        self.last_row = row = self.recorder.row(
            ev, round_index=self.round, step=self.step, pool_summary=summary,
            curvature_learned=self.learner.curvature(), best=self.best, wall_s=self.wall_s,
        )
        self.recorder.write_row(row, self.step)
        self.log(
            f"round {self.round}/{self.cfg.rounds} done: mIoU {ev.miou:.2f} | pixel acc {ev.pixel_acc:.2f} | "
            f"labelled {row['labelled_pct']:.3f}% | wall {self.wall_s:.1f}s"
        )
        self.checkpoints.write_round(self.round, self.checkpoint_bytes(), self.best)

    def _track_best(self, ev: Evaluation, step: int, r: int) -> None:
        """Record a validation that beats the best so far; with ``keep_best`` save its weights."""
        if not improves(ev.miou, self.best):
            return
        self.best = {"miou": float(ev.miou), "step": int(step), "round": int(r)}
        if self.cfg.keep_best:
            self.checkpoints.save_best(self.best, self.learner)

    # -- state -----------------------------------------------------------------------
    def checkpoint_bytes(self) -> bytes:
        """The bytes of a checkpoint file to continue after this round: this run's values and
        the pool's state, with the learner's state and torch RNG added where they are
        (:meth:`~halo_ray.learner.Learner.checkpoint`). A pool actor hands its state to the
        learner actor directly: this process receives only the file's bytes."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "round": self.round,
            "step": self.step,
            "wall_s": self.wall_s,
            "best": self.best,
            "trial_id": self.trial_id,
        }
        return self.learner.checkpoint(state, _handed_over(self.pool, "state_dict"))

    def checkpoint_written(self) -> None:
        """The caller persisted :meth:`checkpoint_bytes` (a search trial: Tune holds it)."""
        self.checkpoints.written(self.best)

    def restore(self, data: bytes, origin: Path | str) -> None:
        """Continue from a checkpoint file's bytes (:meth:`checkpoint_bytes`; ``origin`` names
        it in messages); a checkpoint of another config is refused before anything changes."""
        state = self.learner.restore(data, str(origin))
        self.pool.load_state_dict(state["pool"])
        self._give_learner_every_label()
        self.round = int(state["round"])
        self.step = int(state["step"])
        self.wall_s = float(state["wall_s"])
        self.best = state.get("best")  # absent from checkpoints written before best tracking
        self.checkpoints.prune_best(self.best)  # a file of a lost, later timeline goes
        self._keep_trial_id(state)
        self.last_row = self.recorder.read_row(self.round)
        self.recorder.open(purge_step=self.step + 1)
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
            self.recorder.trial_id = saved


def _handed_over(target: object, method: str, *args: Any, **kwargs: Any) -> object:
    """``target.<method>(...)`` for another call: an actor's result stays in Ray's object store
    (:meth:`~halo_ray.distributed.actors.ActorProxy.handover`), an in-process object's is the value."""
    handover = getattr(target, "handover", None)
    return handover(method, *args, **kwargs) if handover is not None else getattr(target, method)(*args, **kwargs)


def _handed_over_parts(scorer: object, method: str, *args: Any) -> list:
    """:func:`_handed_over` for a scorer, which may fan out: one result (or reference) per
    part of the images, in order (:meth:`~halo_ray.distributed.actors.FanOutScorer.handover_parts`)."""
    parts = getattr(scorer, "handover_parts", None)
    return parts(method, *args) if parts is not None else [getattr(scorer, method)(*args)]


def _begun(target: object, method: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """``target.<method>(...)`` started, and a function that waits for its result: an actor
    works meanwhile (:meth:`~halo_ray.distributed.actors.ActorProxy.begin`), an in-process
    object's call is done before this returns."""
    begin = getattr(target, "begin", None)
    if begin is not None:
        return begin(method, *args, **kwargs)
    out = getattr(target, method)(*args, **kwargs)
    return lambda: out


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
