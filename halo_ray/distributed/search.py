"""Ray Tune searches whose trials are whole multi-round active-learning runs.

Layout of a search under ``<storage>/<name>/``:

| path | what |
|---|---|
| ``results/`` | one Parquet file per (trial, round), one fixed schema: ``pd.read_parquet`` it |
| ``tensorboard/<trial_id>/`` | per-trial scalars and selection images |
| ``trials/<trial_id>/`` | the run's own checkpoints and config |
| ``source_cache/`` | source pre-trained models shared by trials with one source config |
| ``search.json`` | the validated search space |
| ``tune/`` | Tune's experiment state and per-trial Tune checkpoints (``tune-point<i>/`` per Optuna grid point) |

A trial reports one result per round with a checkpoint; a restarted trial continues from
``tune.get_checkpoint()``. Rounds are idempotent (the pool never spends twice for one
(round, image); a round's row file is replaced), so a round repeated after a crash or a
driver restart leaves exactly one row per (trial, round).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from halo_ray.atomic import atomic_write_bytes
from halo_ray.config import ConfigError, ExperimentConfig, build_config, default_values
from halo_ray.distributed.actors import TrialResources, start_trial_actors
from halo_ray.distributed.space import VARIANT_KEY, SearchSpace, SearchSpaceError
from halo_ray.distributed.warm import WarmLearners, learner_runtime_env
from halo_ray.rundir import claim_run_directory
from halo_ray.splits import (
    check_regions_fit_trim,
    ensure_data,
    ensure_superpixels,
    open_split,
    region_answers,
    superpixel_source,
)

# A trial's process imports this module to find ``run_trial``: nothing imported above loads
# torch, so the trial creates its actors first and imports the run loop (torch) while they
# start (docs/architecture.md §3).

STATE_FILE = "state.pt"


#: config keys holding paths: a trial runs with another working directory, so the launching
#: process makes them absolute (the source cache is the search's own, under its storage)
PATH_KEYS: tuple[str, ...] = ("data_root", "source_root", "target_root", "pretrained", "superpixel_cache")


def _absolute(cfg_values: dict[str, Any], keys: tuple[str, ...] = PATH_KEYS) -> dict[str, Any]:
    """Paths made absolute against the launching directory: trials run elsewhere (docs/architecture.md §3)."""
    out = dict(cfg_values)
    for key in keys:
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


@dataclass(frozen=True)
class SearchPaths:
    """Where a search writes; ``root`` must be shared storage on a multi-node cluster."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def source_cache(self) -> Path:
        return self.root / "source_cache"


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one whole active-learning run, one report per round."""
    meta = config["halo_ray"]
    params = {k: _plain(v) for k, v in config.items() if k != "halo_ray"}
    variant = meta["variants"][params.pop(VARIANT_KEY)] if meta["variants"] else {}
    values = {**meta["base"], **variant, **params}
    paths = SearchPaths(Path(meta["root"]))
    values["source_cache"] = str(paths.source_cache)
    cfg = build_config(values, origin=f"search {meta['name']}")
    trial_id = tune.get_context().get_trial_id()
    actors = start_trial_actors(cfg, TrialResources(**meta["resources"]))
    # while the actors start in their own processes: the run loop's imports (no torch) here
    from halo_ray.run import ActiveLearningRun

    actors.ready()

    def log(message: str) -> None:
        print(f"[{trial_id}] {message}", file=sys.stderr, flush=True)

    ahead = actors.learners_started_ahead
    log(f"actors ready: {ahead} of {actors.learner_processes} learner process(es) started ahead")

    with claim_run_directory(paths.trials / trial_id, resume=None, flag="trial directory"):
        run = ActiveLearningRun(
            cfg, paths.trials / trial_id, search=meta["name"], trial_id=trial_id, log=log,
            learner=actors.learner, pool=actors.pool, scorer=actors.scorer,
            results_dir=paths.results, tensorboard_dir=paths.tensorboard, own_checkpoints=False,
        )
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                run.restore((Path(folder) / STATE_FILE).read_bytes(), f"Tune checkpoint of {trial_id}")
        else:
            run.start_or_resume(resume=None)
            _report(run)
        while run.round < cfg.rounds:
            run.run_round(run.round + 1)
            _report(run)
        run.close()


def _report(run: Any) -> None:
    """Report the latest round's row with a checkpoint of the ``ActiveLearningRun``'s whole state
    (its file's bytes made by the learner: this process never imports torch)."""
    from halo_ray.run.checkpointer import write_checkpoint_bytes

    row = run.last_row
    metrics = {k: v for k, v in row.items() if k != "config_json" and v is not None}
    data = run.checkpoint_bytes()
    with tempfile.TemporaryDirectory() as folder:
        write_checkpoint_bytes(Path(folder) / STATE_FILE, data)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    run.checkpoint_written()  # Tune holds it now: best-model files the record left behind can go


def trial_checkpoint(search_root: str | Path, trial_id: str) -> Path | None:
    """The state file of a search trial's latest checkpoint, or None.

    A trial keeps no round checkpoints of its own: the one it reports to Tune each round is
    its checkpoint (``<search>/tune*/run_trial_<id>_*/checkpoint_NNNNNN/state.pt``, the last
    ``keep_checkpoints`` of them), loadable with :func:`halo_ray.run.load_checkpoint`.
    """
    found = sorted(Path(search_root).glob(f"tune*/run_trial_{trial_id}_*/checkpoint_*/{STATE_FILE}"))
    return found[-1] if found else None


def _plain(value: Any) -> Any:
    """Numpy scalars from Tune's samplers → Python values."""
    return value.item() if hasattr(value, "item") else value


class ProgressView(tune.Callback):
    """One line per reported round: trials running/done, best metric so far, ETA."""

    def __init__(self, total_trials: int, rounds: int, metric: str, mode: str):
        self.total_trials, self.rounds, self.metric, self.mode = total_trials, rounds, metric, mode
        self.t0 = time.perf_counter()
        self.rounds_done: dict[str, int] = {}
        self.finished: set[str] = set()
        self.best: float | None = None
        self._rate_start: tuple[float, int] | None = None  # (time, rounds done) at the first round ≥ 1

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: D401 - Tune hook
        self.rounds_done[trial.trial_id] = int(result.get("round", 0))
        value = result.get(self.metric)
        if value is not None and int(result.get("round", 0)) > 0:
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            self.best = value if better else self.best
        self._print(trials, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished.add(trial.trial_id)

    def _print(self, trials, trial, result) -> None:
        from halo_ray.run.progress import format_duration

        done_rounds = sum(self.rounds_done.values())
        total_rounds = self.total_trials * self.rounds
        now = time.perf_counter()
        elapsed = now - self.t0
        eta = float("nan")
        if self._rate_start is None and done_rounds:
            self._rate_start = (now, done_rounds)
        elif self._rate_start is not None and done_rounds > self._rate_start[1]:
            # the rate of rounds since the first one: source pre-training and start-up excluded
            t_start, n_start = self._rate_start
            eta = (now - t_start) / (done_rounds - n_start) * (total_rounds - done_rounds)
        running = sum(1 for t in trials if t.status == "RUNNING")
        best = f"{self.best:.2f}" if self.best is not None else "-"
        print(
            f"search | trials running {running}, done {len(self.finished)}/{self.total_trials} | "
            f"{trial.trial_id} round {result.get('round')}/{self.rounds} {self.metric} "
            f"{result.get(self.metric, float('nan')):.2f} | best {self.metric} {best} | "
            f"elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}",
            flush=True,
        )


class KeepLearnersWarm(tune.Callback):
    """Once a trial has started (its first round reported, its start-up over), ask for one more
    trial's warm learner processes while trials are still to come (halo_ray.distributed.warm).

    Asking at the result rather than at the trial's start keeps the new processes' imports
    off the start-up of the trials starting with it."""

    def __init__(self, warm: WarmLearners, total_trials: int, per_trial: int):
        self.warm, self.total_trials, self.per_trial = warm, total_trials, per_trial
        self.started: set[str] = set()
        self.settled: set[str] = set()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id in self.settled:
            return
        self.settled.add(trial.trial_id)
        if len(self.started) < self.total_trials:
            self.warm.ahead(self.per_trial)


def concurrent_trials(space: SearchSpace, resources: TrialResources, cluster: dict[str, float]) -> int:
    """How many of the search's trials run at once on a cluster with ``cluster`` resources."""
    bundles = resources.bundles()
    fits = [int(cluster.get("CPU", 0.0) // sum(b["CPU"] for b in bundles) + 1e-9)]
    if resources.learner_gpus:
        fits.append(int(cluster.get("GPU", 0.0) // sum(b.get("GPU", 0.0) for b in bundles) + 1e-9))
    if space.max_concurrent_trials:
        fits.append(space.max_concurrent_trials)
    return max(0, min([space.total_trials(), *fits]))


def sources_to_pretrain(space: SearchSpace, paths: SearchPaths) -> list[ExperimentConfig]:
    """One trial config per source model that two or more of the search's trials share and
    its cache lacks, when every trial is known before the search starts (every parameter a
    grid axis). Trials pre-train the others as they come: a model one trial needs costs it
    nothing extra, and drawn trials are not known ahead (the first trial of a source config
    trains it, the others wait for it)."""
    if any(not p.is_grid_axis(space.searcher) for p in space.parameters):
        return []
    needed: dict[tuple[Path, Path], ExperimentConfig] = {}
    trials: dict[tuple[Path, Path], int] = {}
    for point in space.grid_points():
        values = _absolute(space.trial_config(point).to_values())
        cfg = build_config({**values, "source_cache": str(paths.source_cache)}, origin=f"search {space.name}")
        if not cfg.source_cached():
            files = cfg.source_cache_files()
            needed.setdefault(files, cfg)
            trials[files] = trials.get(files, 0) + space.num_samples
    return [cfg for files, cfg in needed.items() if trials[files] >= 2]


def superpixels_to_fill(space: SearchSpace) -> list[ExperimentConfig]:
    """One trial config per superpixel set (target-train images, method, count, cache folder)
    and answer ``trim`` the search's multi-class trials read, when every trial is known before
    the search starts (every parameter a grid axis). The search fills the superpixels and the
    regions' answers before its trials, on the driver's CPUs, instead of the first trial's
    processes on their small bundles (the answers in its label pool, at round 1) while the
    trial's other bundles, and the trials that share the set, wait; a config whose
    superpixels are too small for its ``trim`` is refused there, before anything runs."""
    if any(not p.is_grid_axis(space.searcher) for p in space.parameters):
        return []
    sets: dict[tuple, ExperimentConfig] = {}
    for point in space.grid_points():
        cfg = build_config(_absolute(space.trial_config(point).to_values()), origin=f"search {space.name}")
        if cfg.unit != "multiclass":
            continue
        conditions = tuple(cfg.target_conditions) if cfg.target == "acdc" else ()
        key = (cfg.target, str(cfg.target_path), conditions, str(cfg.superpixel_cache), cfg.superpixels,
               cfg.num_superpixels, cfg.trim)
        sets.setdefault(key, cfg)
    return list(sets.values())


def _fill_superpixels(space: SearchSpace) -> None:
    """Fill every superpixel set of :func:`superpixels_to_fill` and its regions' answers, after
    checking them all (a set too small for its ``trim`` is refused before any is computed)."""
    sets = [(cfg, open_split(cfg, "train")) for cfg in superpixels_to_fill(space)]  # headers read once per set
    try:
        for cfg, train in sets:
            check_regions_fit_trim(cfg, sorted(set(superpixel_source(cfg, train).shapes)))
    except ConfigError as err:
        raise ConfigError(f"search {space.name}: {err}") from None
    for cfg, train in sets:
        ensure_superpixels(cfg, log=lambda message: print(message, file=sys.stderr, flush=True), train=train)
        answers = region_answers(cfg, train)
        t0 = time.perf_counter()
        computed = answers.fill()
        if computed:
            print(f"region answers (trim {cfg.trim}): {computed} computed in {time.perf_counter() - t0:.1f}s | "
                  f"{answers.folder}", file=sys.stderr, flush=True)


def _pretrain_source(values: dict[str, Any]) -> None:
    """Ray task: train and cache one source model (the trials then read it)."""
    from halo_ray.learner import Learner
    from halo_ray.run.checkpointer import source_checkpoint

    cfg = build_config(values, origin="search source pre-training")

    def log(message: str) -> None:
        print(f"[source {cfg.source_key()}] {message}", file=sys.stderr, flush=True)

    source_checkpoint(cfg, Learner(cfg, log=log), log)


def pretrain_sources(configs: list[ExperimentConfig], resources: TrialResources) -> None:
    """Train the search's missing source models before its trials start, side by side, each
    on an equal share of the cluster's CPUs (at least a learner's, at most one node's) with
    as many torch threads, and a learner's GPUs.

    Otherwise the first trial of a source config trains it on its one learner bundle while
    the trials that share it hold their bundles idle. The thread count is a runtime key: on
    CPU it changes float sums in their last bits, so the cached model equals a ``halo-ray
    run`` of that config with ``num_threads`` set to it.
    """
    if not configs:
        return
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("CPU", 0.0) for n in nodes), default=1.0)
    share = float(ray.cluster_resources().get("CPU", 1.0)) // len(configs)
    cpus = max(resources.learner_cpus, min(largest, share))
    threads = max(1, int(cpus))
    device = "cuda" if resources.learner_gpus else None
    print(f"source pre-training ahead of the trials: {len(configs)} model(s), {threads} thread(s) each",
          file=sys.stderr, flush=True)
    task = ray.remote(_pretrain_source).options(
        num_cpus=cpus, num_gpus=resources.learner_gpus, max_retries=2, runtime_env=learner_runtime_env()
    )
    ray.get([
        task.remote({**cfg.to_values(), "num_threads": threads, **({"device": device} if device else {})})
        for cfg in configs
    ])


def _tuner(
    space: SearchSpace, paths: SearchPaths, resources: TrialResources, name: str, param_space: dict, search_alg=None,
    callbacks: list | None = None,
):
    from ray.tune.schedulers import ASHAScheduler

    base = _absolute(space.base_config().to_values())
    meta = {
        "name": space.name, "root": str(paths.root), "base": base, "variants": [_absolute(v) for v in space.variants],
        "resources": dataclasses.asdict(resources),
    }
    scheduler = None
    if space.scheduler is not None:
        scheduler = ASHAScheduler(
            time_attr="round", max_t=space.base_config().rounds,
            grace_period=space.scheduler.grace_period, reduction_factor=space.scheduler.reduction_factor,
        )
    trainable = tune.with_resources(run_trial, resources.placement_group_factory())
    return tune.Tuner(
        trainable,
        param_space={**param_space, "halo_ray": meta},
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=space.num_samples, search_alg=search_alg,
            scheduler=scheduler, max_concurrent_trials=space.max_concurrent_trials, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(paths.root),
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            # the trial's checkpoint is the run's one copy; older rounds are not needed to resume
            checkpoint_config=tune.CheckpointConfig(num_to_keep=space.base_config().keep_checkpoints),
            callbacks=[
                ProgressView(space.total_trials(), space.base_config().rounds, space.metric, space.mode),
                *(callbacks or []),
            ],
            verbose=0,
        ),
    )


def _check_same_search(space: SearchSpace, saved_file: Path) -> None:
    """``--resume`` must continue the search that was started: name every key that differs."""
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text())
    now = json.loads(json.dumps(space.to_dict()))
    keys = ("parameters", "variants", "searcher", "num_samples", "metric", "mode", "scheduler")
    saved.setdefault("variants", [])  # written before variants existed: none
    differ = [k for k in keys if saved.get(k) != now.get(k)]
    # a key a later halo_ray added ran at its default in the saved search (as ``run_id`` holds)
    old_base, new_base = {**default_values(), **saved.get("base_config", {})}, now["base_config"]
    differ += [f"base_config.{k}" for k in sorted(set(old_base) | set(new_base)) if old_base.get(k) != new_base.get(k)]
    if differ:
        raise SearchSpaceError(
            f"--resume: the search in {saved_file.parent} was started with different settings "
            f"({', '.join(differ)} differ from {saved_file}); resume with the same file and --set values, "
            "or start a new search under another --storage or name"
        )


def run_search(
    space: SearchSpace, storage: str | Path, *, resume: bool = False, resources: TrialResources | None = None,
    warm_learners: bool = True,
) -> Path:
    """Run (or with ``resume`` continue) a search; returns its results folder.

    With ``warm_learners`` the learners' processes are started ahead of the trials that use
    them, their imports done (:mod:`halo_ray.distributed.warm`); results are the same either way.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if "://" in str(storage):
        raise SearchSpaceError(
            f"--storage {storage}: trials write their rows and checkpoints to a filesystem path "
            "shared by all nodes (e.g. an NFS/EFS mount); cloud URIs are not supported yet"
        )
    resources = resources or TrialResources()
    paths = SearchPaths(Path(storage).expanduser().resolve() / space.name)
    if space.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        runs = [
            (f"tune-point{i}", {**point, **space.optuna_space()}, OptunaSearch(metric=space.metric, mode=space.mode))
            for i, point in enumerate(space.grid_points())
        ]
    else:
        runs = [("tune", space.param_space(), None)]
    if not resume and any(paths.results.glob("*.parquet")):
        raise SearchSpaceError(
            f"{paths.root} already holds results of a search named {space.name!r}; pass --resume to "
            "continue it, or choose another --storage or name"
        )
    if resume and not any(tune.Tuner.can_restore(str(paths.root / name)) for name, _, _ in runs):
        raise SearchSpaceError(
            f"--resume: {paths.root} holds no Tune experiment state of {space.name!r} to continue; "
            "run without --resume to start the search"
        )
    if resume:
        _check_same_search(space, paths.root / "search.json")
    ensure_data(space.base_config().replace(data_root=str(Path(space.base_config().data_root).resolve())))
    _fill_superpixels(space)
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths.root / "search.json", lambda tmp: tmp.write_text(json.dumps(space.to_dict(), indent=2)))
    sources = sources_to_pretrain(space, paths)
    callbacks: list = []
    if warm_learners:
        import ray

        warm = WarmLearners(
            cpus=resources.learner_cpus, gpus=resources.learner_gpus,
            log=lambda message: print(message, file=sys.stderr, flush=True),
        )
        per_trial = 1 + resources.scorers
        wave = concurrent_trials(space, resources, ray.cluster_resources()) * per_trial
        warm.ahead(len(sources), for_trials=False)  # the pre-training's tasks, then the first wave's learners
        warm.ahead(wave)
        callbacks.append(KeepLearnersWarm(warm, space.total_trials(), per_trial))
    pretrain_sources(sources, resources)
    if warm_learners and sources:
        # measured on 2 CPUs: the raylet started two of the three processes asked for at the
        # start, so one first-wave learner started cold; asked again here, all were warm
        warm.ahead(wave)
    for name, param_space, search_alg in runs:
        tune_dir = paths.root / name
        if resume and tune.Tuner.can_restore(str(tune_dir)):
            tuner = tune.Tuner.restore(
                str(tune_dir), trainable=tune.with_resources(run_trial, resources.placement_group_factory()),
                resume_errored=True,
            )
        else:
            tuner = _tuner(space, paths, resources, name, param_space, search_alg, callbacks)
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} trial(s) of {name} failed; first error: {errors[0]}")
    return paths.results


__all__ = [
    "KeepLearnersWarm", "ProgressView", "SearchPaths", "concurrent_trials", "pretrain_sources", "run_search",
    "run_trial", "sources_to_pretrain", "superpixels_to_fill", "trial_checkpoint",
]

