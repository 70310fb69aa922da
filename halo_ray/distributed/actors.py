"""The run's learner and label pool as Ray actors — the same classes, wrapped, not rewritten.

Each trial reserves a placement group: bundle 0 holds the trial's own process (the run
loop) and the label pool actor, bundle 1 the learner actor with the trial's GPU when it
has one, and bundles 2… one scorer actor each when scoring fans out. Every actor is pinned
to its bundle: without pinning some layouts hang silently (docs/architecture.md §3).

This module imports no torch: a trial's driver creates its actors first, and each actor
builds its object (:class:`~halo_ray.learner.Learner`, the label pool) in its own process,
so the actors import torch and load their data while the driver imports the run loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from halo_ray.config import ExperimentConfig
from halo_ray.distributed.warm import learner_runtime_env
from halo_ray.splits import ensure_superpixels, open_pool, open_split

if TYPE_CHECKING:
    import numpy as np
    import torch
    from ray.tune import PlacementGroupFactory

#: Seconds the first call to a fresh actor may take (it loads data and builds the model).
FIRST_CALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TrialResources:
    """What one trial reserves: its driver bundle, the learner's bundle and one per scorer."""

    driver_cpus: float = 0.1  # the run loop and the label pool: light, mostly waiting
    learner_cpus: float = 0.9  # training, scoring, evaluation
    learner_gpus: float = 0.0  # 1 on a GPU worker: the learner then trains on CUDA
    scorers: int = 0  # scorer actors the target set's scoring fans out over (0: the learner scores)

    def __post_init__(self) -> None:
        if self.driver_cpus <= 0 or self.learner_cpus <= 0 or self.learner_gpus < 0:
            raise ValueError(f"trial resources must be positive, but got {self}")
        if isinstance(self.scorers, bool) or not isinstance(self.scorers, int) or self.scorers < 0:
            raise ValueError(f"scorers must be an integer >= 0, but got scorers={self.scorers!r}")

    @classmethod
    def per_trial(cls, cpus: float = 1.0, gpus: float = 0.0, scorers: int = 0) -> TrialResources:
        """Split ``cpus`` between the light driver bundle (a tenth) and the learner.

        Each scorer reserves as much as the learner (its CPUs and GPUs), so a trial with
        ``scorers=n`` holds ``cpus + n·0.9·cpus`` CPUs and ``(1 + n)·gpus`` GPUs.
        """
        if cpus <= 0 or gpus < 0:
            raise ValueError(f"cpus per trial must be > 0 and gpus >= 0, but got cpus={cpus}, gpus={gpus}")
        return cls(
            driver_cpus=round(cpus * 0.1, 3), learner_cpus=round(cpus * 0.9, 3), learner_gpus=gpus, scorers=scorers
        )

    def worker_bundle(self) -> dict[str, float]:
        """The bundle of the learner and of each scorer."""
        bundle: dict[str, float] = {"CPU": self.learner_cpus}
        if self.learner_gpus:
            bundle["GPU"] = self.learner_gpus
        return bundle

    def bundles(self) -> list[dict[str, float]]:
        """The trial's placement-group bundles: the driver's, the learner's, one per scorer."""
        return [{"CPU": self.driver_cpus}] + [self.worker_bundle()] * (1 + self.scorers)

    def unmet(self, nodes: Sequence[Mapping[str, float]]) -> str | None:
        """Why one trial's bundles cannot be placed on ``nodes`` (each node's total resources,
        e.g. ``ray.nodes()[k]["Resources"]``), or None when they can: the biggest bundles go
        first, each onto the first node with room (first-fit decreasing; Ray may split a
        trial's bundles over nodes)."""
        capacity = [{"CPU": float(n.get("CPU", 0.0)), "GPU": float(n.get("GPU", 0.0))} for n in nodes]
        free = [dict(c) for c in capacity]
        for bundle in sorted(self.bundles(), key=lambda b: (b.get("GPU", 0.0), b["CPU"]), reverse=True):
            need = {"CPU": bundle["CPU"], "GPU": bundle.get("GPU", 0.0)}
            home = next((f for f in free if all(f[k] + 1e-9 >= v for k, v in need.items())), None)
            if home is None:
                total = {k: sum(b.get(k, 0.0) for b in self.bundles()) for k in ("CPU", "GPU")}
                have = ", ".join(f"{c['CPU']:g} CPU/{c['GPU']:g} GPU" for c in capacity) or "none"
                return (
                    f"one trial needs {len(self.bundles())} bundles ({total['CPU']:g} CPUs, {total['GPU']:g} GPUs: a "
                    f"driver bundle, the learner and {self.scorers} scorer(s) of {self.learner_cpus:g} CPU/"
                    f"{self.learner_gpus:g} GPU each), but the cluster's nodes have {have}"
                )
            for k, v in need.items():
                home[k] -= v
        return None

    def placement_group_factory(self) -> PlacementGroupFactory:
        # imported here, not at the top: the label-pool actor's process needs no Tune
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory(self.bundles())


class Hosted:
    """An actor that holds one object built in its own process and calls its methods by name.

    ``handle.call.remote("f", x)`` runs ``target.f(x)`` in the actor. Creating such an actor
    needs only this light class, not the target's module, so the creating process does not
    import torch first (docs/architecture.md §3).
    """

    target: Any

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``target.<method>(*args, **kwargs)``; object-store references among ``args`` arrive resolved."""
        return getattr(self.target, method)(*args, **kwargs)


class LearnerActor(Hosted):
    """A trial's :class:`~halo_ray.learner.Learner` (or a scorer: the same class, never trained)."""

    def __init__(self, cfg: ExperimentConfig):
        # torch, geoopt and the model code are imported here, in the actor's process only
        # (or before, by the process's set-up hook: halo_ray.distributed.warm)
        from halo_ray.learner import Learner

        self.target = Learner(cfg)

    def process_started_at(self) -> float | None:
        """``time.time()`` when this actor's process started (None off Linux): before the
        actor was asked for when the process was started ahead (halo_ray.distributed.warm)."""
        from halo_ray.distributed.warm import process_started_at

        return process_started_at()


class ScorerActor(LearnerActor):
    """A trial's scorer: a :class:`LearnerActor` that never trains (:class:`FanOutScorer`).

    A class of its own so that its process is titled ``ray::ScorerActor`` (``ps``, ``ray
    list actors``), told apart from the learner it takes its weights from."""


class PoolActor(Hosted):
    """A trial's label pool (:func:`~halo_ray.splits.open_pool`), over images of the given shapes."""

    def __init__(self, cfg: ExperimentConfig, shapes: Sequence[tuple[int, int]]):
        self.target = open_pool(cfg, shapes)


class ActorProxy:
    """Synchronous view of a :class:`Hosted` actor: ``proxy.f(x)`` is ``ray.get(actor.call.remote("f", x))``
    (:meth:`handover` the reference without the ``ray.get``, :meth:`begin` the ``ray.get`` later).

    The run calls its learner and pool through plain method calls; this proxy lets it do
    so unchanged when they are actors.
    """

    def __init__(self, handle: Any, timeout_s: float | None = None):
        self._handle = handle
        self._timeout_s = timeout_s

    def handover(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``target.<method>(...)``'s result left in Ray's object store, as a reference for another
        actor's call (Ray resolves a top-level reference argument in the callee): the pool's
        state goes to the learner that writes the checkpoint without passing through the trial."""
        return self._handle.call.remote(method, *args, **kwargs)

    def handover_parts(self, method: str, *args: Any) -> list[Any]:
        """:meth:`handover` as the one part of a scorer that does not fan out
        (:meth:`FanOutScorer.handover_parts`)."""
        return [self.handover(method, *args)]

    def begin(self, method: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
        """Start ``target.<method>(...)`` and return a function that waits for its result (and
        raises its error): the run goes on while the actor works, e.g. the pool reveals a
        chunk's picks while the learner scores the next chunk. The actor runs its calls in
        the order they were made."""
        ref = self._handle.call.remote(method, *args, **kwargs)
        return lambda: ray.get(ref, timeout=self._timeout_s)

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle protocol probes: not the target's methods
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return ray.get(self._handle.call.remote(name, *args, **kwargs), timeout=self._timeout_s)

        call.__name__ = name
        return call


def _pinned(bundle: int) -> PlacementGroupSchedulingStrategy:
    """Schedule on ``bundle`` of the calling trial's placement group."""
    group = ray.util.get_current_placement_group()
    if group is None:
        raise RuntimeError("trial actors must be created inside a Tune trial with a placement group")
    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=bundle)


class FanOutScorer:
    """Scores target-train images on several scorer actors at once, with the learner's weights.

    A scorer is a :class:`ScorerActor` (a learner actor that never trains): before scoring a
    round it takes the learner's current weights (passed between actors through the object
    store, not through this process). Images are split into contiguous chunks, one per
    scorer, and the maps come back in the order asked for.
    """

    def __init__(self, learner: Any, scorers: Sequence[Any], timeout_s: float | None = None):
        if not scorers:
            raise ValueError("FanOutScorer needs at least one scorer actor")
        self._learner = learner
        self._scorers = list(scorers)
        self._timeout_s = timeout_s
        self._synced_round: int | None = None  # the round whose weights the scorers hold

    def sync(self, round_index: int) -> None:
        """Give every scorer the learner's current weights, once per round.

        The learner does not train while a round selects, so one copy serves the round.
        """
        if self._synced_round == round_index:
            return
        weights = self._learner.call.remote("model_state")
        ray.get([s.call.remote("load_model_state", weights) for s in self._scorers], timeout=self._timeout_s)
        self._synced_round = round_index

    def _parts(self, count: int) -> list[slice]:
        """Contiguous, near-equal parts of ``count`` items, one per scorer (fewer if fewer items)."""
        n = min(len(self._scorers), count)
        bounds = [round(k * count / n) for k in range(n + 1)] if n else [0]
        return [slice(bounds[k], bounds[k + 1]) for k in range(n)]

    def _fan_out(self, method: str, round_index: int, indices: Sequence[int], *args: Any) -> list[Any]:
        """``scorer.<method>(round_index, chunk, *args)`` on contiguous chunks, results in order."""
        return ray.get(self.handover_parts(method, round_index, indices, *args), timeout=self._timeout_s)

    def handover_parts(self, method: str, round_index: int, indices: Sequence[int], *args: Any) -> list[Any]:
        """``scorer.<method>(round_index, chunk, *args)`` on contiguous chunks, as references
        in order for another actor's call (:meth:`ActorProxy.handover`): the unit multiclass's
        region terms go from the scorers to the learner that ranks them, not through the trial."""
        self.sync(round_index)
        indices = list(indices)
        return [
            scorer.call.remote(method, round_index, indices[part], *args)
            for part, scorer in zip(self._parts(len(indices)), self._scorers, strict=False)
        ]

    def score(self, round_index: int, indices: Sequence[int]) -> list[torch.Tensor]:
        """Score maps ``[H, W]`` in the order of ``indices``, computed in parallel."""
        return [score for chunk in self._fan_out("score", round_index, indices) for score in chunk]

    def select(
        self,
        round_index: int,
        indices: Sequence[int],
        picks: Sequence[int],
        prior: Sequence[Any],
        *,
        suppression: int,
        keep: Sequence[int] = (),
    ) -> tuple[list[Any], dict[int, np.ndarray]]:
        """:meth:`Learner.select <halo_ray.learner.Learner.select>` over the scorers, each on a
        contiguous part of ``indices`` with its images' picks and earlier centres; centres in
        the order of ``indices`` (only centres and the ``keep`` maps come back)."""
        self.sync(round_index)
        indices, picks, prior = list(indices), list(picks), list(prior)
        refs = [
            scorer.call.remote(
                "select", round_index, indices[part], picks[part], prior[part], suppression=suppression, keep=list(keep)
            )
            for part, scorer in zip(self._parts(len(indices)), self._scorers, strict=False)
        ]
        centres: list[Any] = []
        kept: dict[int, np.ndarray] = {}
        for part, maps in ray.get(refs, timeout=self._timeout_s):
            centres += part
            kept.update(maps)
        return centres, kept


@dataclass
class TrialActors:
    """One trial's actors, behind the plain-call interfaces the run expects."""

    learner: ActorProxy
    pool: ActorProxy
    scorer: FanOutScorer | None  # None: the learner scores
    shapes: list[tuple[int, int]]  # native (H, W) of the target-train images, from their file headers
    _handles: list[Any]  # learner, pool, scorers: for the first call
    asked_at: float = 0.0  # time.time() when the learners were asked for
    learners_started_ahead: int = 0  # learner and scorer processes started before the ask (known after ready())

    @property
    def learner_processes(self) -> int:
        """The learner and its scorers."""
        return len(self._handles) - 1

    def ready(self, timeout_s: float = FIRST_CALL_TIMEOUT_S) -> TrialActors:
        """Wait until every actor has built its object; the learner must see the pool's image shapes.

        Raises the actor's own error (a missing file, a bad weights file) when its construction failed.
        """
        workers = [self._handles[0], *self._handles[2:]]
        answers = ray.get(
            [self._handles[0].call.remote("target_shapes"), self._handles[1].call.remote("summary"),
             *(h.call.remote("target_shapes") for h in self._handles[2:]),
             *(h.process_started_at.remote() for h in workers)],
            timeout=timeout_s,
        )
        learner_shapes = answers[0]
        started = answers[len(self._handles):]
        self.learners_started_ahead = sum(1 for t in started if t is not None and t < self.asked_at)
        if [tuple(s) for s in learner_shapes] != self.shapes:
            raise RuntimeError(
                f"the learner sees other target shapes than the files' headers: {learner_shapes[:3]} vs {self.shapes[:3]}"
            )
        return self


def _learner_actor(cfg: ExperimentConfig, resources: TrialResources, bundle: int) -> Any:
    """The trial's learner in bundle 1, a scorer in a later bundle."""
    return (
        ray.remote(LearnerActor if bundle == 1 else ScorerActor)
        .options(
            num_cpus=resources.learner_cpus, num_gpus=resources.learner_gpus, scheduling_strategy=_pinned(bundle),
            runtime_env=learner_runtime_env(),  # a warm process when one waits (halo_ray.distributed.warm)
        )
        .remote(cfg)
    )


def start_trial_actors(cfg: ExperimentConfig, resources: TrialResources) -> TrialActors:
    """Create the learner, label-pool and scorer actors of one trial, all at once, without waiting.

    Each builds its object in its own process: the learner loads the data and builds the
    model (on its GPU when the bundle has one), the pool's oracle reads ground-truth labels
    from disk lazily. The learners are created first; the pool is sized from the
    target-train file headers read here meanwhile (no torch needed); :meth:`TrialActors.ready`
    waits for all of them and checks that the learner's shapes agree.
    """
    device = "cuda" if resources.learner_gpus else cfg.device
    learner_cfg = cfg.replace(device=device) if device != cfg.device else cfg
    # the learners first: they import the most, and read no superpixel before ready() returns
    asked_at = time.time()
    learner = _learner_actor(learner_cfg, resources, 1)
    scorers = [_learner_actor(learner_cfg, resources, 2 + k) for k in range(resources.scorers)]
    target_train = open_split(cfg, "train")
    shapes = [(int(h), int(w)) for h, w in (target_train.image_size(i) for i in range(len(target_train)))]
    if cfg.unit == "multiclass":  # the superpixel cache is filled before any actor reads a superpixel
        ensure_superpixels(cfg, log=lambda _: None, train=target_train)
    pool = ray.remote(PoolActor).options(num_cpus=0, scheduling_strategy=_pinned(0)).remote(cfg, shapes)
    return TrialActors(
        learner=ActorProxy(learner), pool=ActorProxy(pool), scorer=FanOutScorer(learner, scorers) if scorers else None,
        shapes=shapes, _handles=[learner, pool, *scorers], asked_at=asked_at,
    )


__all__ = [
    "ActorProxy", "FanOutScorer", "Hosted", "LearnerActor", "PoolActor", "ScorerActor", "TrialActors", "TrialResources",
    "start_trial_actors",
]
