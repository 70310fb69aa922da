"""The run's learner and label pool as Ray actors — the same classes, wrapped, not rewritten.

Each trial reserves a placement group of two bundles: bundle 0 holds the trial's own
process (the run loop) and the label pool actor, bundle 1 the learner actor with the
trial's GPU when it has one. Every actor is pinned to its bundle: without pinning some
layouts hang silently (RAY_NOTES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from halo_ray.config import ExperimentConfig
from halo_ray.learner import Learner, open_split
from halo_ray.pool import DatasetOracle, LabelPool

#: Seconds the first call to a fresh actor may take (it loads data and builds the model).
FIRST_CALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TrialResources:
    """What one trial reserves: its driver bundle and the learner's bundle."""

    driver_cpus: float = 0.1  # the run loop and the label pool: light, mostly waiting
    learner_cpus: float = 0.9  # training, scoring, evaluation
    learner_gpus: float = 0.0  # 1 on a GPU worker: the learner then trains on CUDA

    @classmethod
    def per_trial(cls, cpus: float = 1.0, gpus: float = 0.0) -> TrialResources:
        """Split ``cpus`` between the light driver bundle (a tenth) and the learner."""
        if cpus <= 0 or gpus < 0:
            raise ValueError(f"cpus per trial must be > 0 and gpus >= 0, but got cpus={cpus}, gpus={gpus}")
        return cls(driver_cpus=round(cpus * 0.1, 3), learner_cpus=round(cpus * 0.9, 3), learner_gpus=gpus)

    def placement_group_factory(self) -> tune.PlacementGroupFactory:
        learner: dict[str, float] = {"CPU": self.learner_cpus}
        if self.learner_gpus:
            learner["GPU"] = self.learner_gpus
        return tune.PlacementGroupFactory([{"CPU": self.driver_cpus}, learner])


class ActorProxy:
    """Synchronous view of an actor: ``proxy.f(x)`` is ``ray.get(actor.f.remote(x))``.

    The run calls its learner and pool through plain method calls; this proxy lets it do
    so unchanged when they are actors.
    """

    def __init__(self, handle: Any, timeout_s: float | None = None):
        self._handle = handle
        self._timeout_s = timeout_s

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return ray.get(method.remote(*args, **kwargs), timeout=self._timeout_s)

        call.__name__ = name
        return call


def _pinned(bundle: int) -> PlacementGroupSchedulingStrategy:
    """Schedule on ``bundle`` of the calling trial's placement group."""
    group = ray.util.get_current_placement_group()
    if group is None:
        raise RuntimeError("trial actors must be created inside a Tune trial with a placement group")
    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=bundle)


def start_trial_actors(cfg: ExperimentConfig, resources: TrialResources) -> tuple[ActorProxy, ActorProxy]:
    """Create and warm up the learner and label-pool actors of one trial.

    The learner loads the data and builds the model in its own process (on its GPU when
    the bundle has one); the pool's oracle reads ground-truth labels from disk lazily.
    """
    device = "cuda" if resources.learner_gpus else cfg.device
    learner_cfg = cfg.replace(device=device) if device != cfg.device else cfg
    learner = (
        ray.remote(Learner)
        .options(num_cpus=resources.learner_cpus, num_gpus=resources.learner_gpus, scheduling_strategy=_pinned(1))
        .remote(learner_cfg)
    )
    learner_proxy = ActorProxy(learner)
    shapes = ray.get(learner.target_shapes.remote(), timeout=FIRST_CALL_TIMEOUT_S)
    pool = (
        ray.remote(LabelPool)
        .options(num_cpus=0, scheduling_strategy=_pinned(0))
        .remote(shapes, DatasetOracle(open_split(cfg, "train")))
    )
    pool_proxy = ActorProxy(pool)
    ray.get(pool.summary.remote(), timeout=FIRST_CALL_TIMEOUT_S)
    return learner_proxy, pool_proxy


__all__ = ["ActorProxy", "TrialResources", "start_trial_actors"]
