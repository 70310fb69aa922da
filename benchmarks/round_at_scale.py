"""Benchmark: one selection round at Cityscapes resolution through real actors, old path vs new.

One round over ``--images`` target images of 1024x2048 with a cheap stand-in model (the tiny
backbone on 256x128 inputs, entropy scores at full label resolution), so that what is measured
is the round's machinery. A learner actor and a label-pool actor on a local Ray; the driver is
this process. Side by side:

* **old path** (before issue 13): the learner ships each image's float32 score map to the
  driver, the driver asks the pool for the image's dense suppression map, runs the greedy
  selection itself and calls ``reveal`` - three blocking calls and ~10 MB per image;
* **new path** (``ActiveLearningRun.select_round``): per chunk of images the pool's earlier
  centres, the learner's ``select`` (scores and picks where the maps are) and the pool's
  ``reveal_many``, done while the learner scores the next chunk - only centres travel;
* **scoring alone**: the learner's ``select`` with no picks (scores computed, nothing selected).

Printed per path: bytes through the object store per image (what the driver receives and
sends), actor calls per round, the driver's CPU seconds and the wall per image. The new path
and scoring alone run ``--repeats`` times, interleaved, each new round on a fresh pool (their
walls are medians). The picks of the two paths are compared (they must be identical). Last line::

    round at scale: bytes P % of the old path, wall X x scoring alone

Run from the repository root::

    python benchmarks/round_at_scale.py              # 16 images, ~2.5 min on 2 cores
    python benchmarks/round_at_scale.py --images 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _nbytes(value) -> int:
    """Bytes of every array or tensor inside ``value`` (lists, tuples, dicts)."""
    import torch

    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class Counted:
    """A view of a trial's actor as :class:`~halo_ray.distributed.actors.ActorProxy` gives it
    (``proxy.f(x)`` = ``ray.get(actor.call.remote("f", x))``, ``begin``) that counts the calls
    and the array bytes sent and received by this process."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.calls = 0
        self.bytes = 0

    def __getattr__(self, name: str):
        import ray

        def call(*args, **kwargs):
            out = ray.get(self.handle.call.remote(name, *args, **kwargs))
            self.calls += 1
            self.bytes += _nbytes(args) + _nbytes(kwargs) + _nbytes(out)
            return out

        return call

    def begin(self, name: str, *args, **kwargs):
        """:meth:`ActorProxy.begin <halo_ray.distributed.actors.ActorProxy.begin>`, counted."""
        import ray

        ref = self.handle.call.remote(name, *args, **kwargs)
        self.calls += 1
        self.bytes += _nbytes(args) + _nbytes(kwargs)

        def wait():
            out = ray.get(ref)
            self.bytes += _nbytes(out)
            return out

        return wait


def _old_round(cfg, learner: Counted, pool: Counted, shapes, picks: int) -> None:
    """The driver-side round of before: maps and suppression maps come to the driver."""
    import torch

    from halo_ray.acquisition import select_centres

    chunk = cfg.eval_batch_size * 4
    for start in range(0, len(shapes), chunk):
        batch = list(range(start, min(start + chunk, len(shapes))))
        for i, score in zip(batch, learner.score(1, batch), strict=True):
            active = torch.tensor(pool.suppressed(i, cfg.suppression_size))
            centres = select_centres(score, picks=picks, suppression=cfg.suppression_size, active=active)
            pool.reveal(1, i, centres.numpy(), region_size=cfg.region_size, unit=cfg.unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="target images of 1024x2048 in the round")
    parser.add_argument("--chunk", type=int, default=2, help="eval_batch_size (a chunk is 4 batches)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of the new path and of scoring alone, interleaved (medians; default 3)")
    args = parser.parse_args()

    import ray

    from halo_ray.acquisition import picks_per_round
    from halo_ray.config import build_config
    from halo_ray.data import generate_benchmark
    from halo_ray.distributed.actors import LearnerActor, PoolActor
    from halo_ray.run import ActiveLearningRun

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate_benchmark(root / "data", height=1024, width=2048, n_source=2, n_target_train=args.images,
                           n_target_val=2, n_adverse_train=1, n_adverse_val=1, conditions=("fog",))
        print(f"data: {args.images} target images of 1024x2048 written in {time.perf_counter() - t0:.0f}s")
        cfg = build_config(dict(
            experiment="round_at_scale", data_root=str(root / "data"), generate_data=False, strategy="entropy",
            target_size=[256, 128], source_size=[256, 128], source_steps=0, rounds=5, budget=5.0, log_images=0,
            eval_batch_size=args.chunk, num_threads=1, source_cache=str(root / "cache"),
        ))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            learner = Counted(ray.remote(LearnerActor).options(num_cpus=1).remote(cfg))
            shapes = [tuple(s) for s in learner.target_shapes()]
            pools = {name: Counted(ray.remote(PoolActor).options(num_cpus=0).remote(cfg, shapes))
                     for name in ("old", "new")}
            picks = picks_per_round(*shapes[0], budget_pct=cfg.budget, rounds=cfg.rounds, region_size=cfg.region_size)
            learner.select(1, [0], [picks], [np.zeros((0, 2), np.int32)], suppression=cfg.suppression_size)  # warm-up

            results = {}
            learner.calls = learner.bytes = 0
            wall, cpu = time.perf_counter(), time.process_time()
            _old_round(cfg, learner, pools["old"], shapes, picks)
            results["old"] = (time.perf_counter() - wall, time.process_time() - cpu, learner.calls + pools["old"].calls,
                              learner.bytes + pools["old"].bytes)

            chunk = cfg.eval_batch_size * 4
            new_walls, scoring_walls = [], []
            for k in range(args.repeats):  # interleaved: a slow spell of the machine hits both alike
                pool = pools["new"] if k == 0 else Counted(ray.remote(PoolActor).options(num_cpus=0).remote(cfg, shapes))
                run = ActiveLearningRun(cfg, root / f"run{k}", learner=learner, pool=pool, log=lambda _: None,
                                        tensorboard=False)
                learner.calls = learner.bytes = 0
                wall, cpu = time.perf_counter(), time.process_time()
                run.select_round(1)
                new_walls.append(time.perf_counter() - wall)
                if k == 0:
                    results["new"] = (new_walls[0], time.process_time() - cpu, learner.calls + pool.calls,
                                      learner.bytes + pool.bytes)
                wall = time.perf_counter()
                for start in range(0, len(shapes), chunk):
                    batch = list(range(start, min(start + chunk, len(shapes))))
                    learner.select(1, batch, [0] * len(batch), [np.zeros((0, 2), np.int32)] * len(batch),
                                   suppression=cfg.suppression_size)
                scoring_walls.append(time.perf_counter() - wall)
            results["new"] = (statistics.median(new_walls), *results["new"][1:])
            scoring = statistics.median(scoring_walls)

            same = all(np.array_equal(pools["old"].centres(i, round=1), pools["new"].centres(i, round=1))
                       for i in range(len(shapes)))
        finally:
            ray.shutdown()

    n = len(shapes)
    print(f"round of {n} images at {shapes[0][0]}x{shapes[0][1]}, {picks} picks each; identical picks: {same}")
    for name, (wall, cpu, calls, nbytes) in results.items():
        print(f"{name} path: {nbytes / n / 1e6:.3f} MB per image through the object store, {calls} actor calls, "
              f"driver CPU {cpu:.2f}s, wall {wall / n:.3f}s per image")
    print(f"scoring alone: wall {scoring / n:.3f}s per image (new path and scoring alone: medians of {args.repeats})")
    print(f"round at scale: bytes {100 * results['new'][3] / results['old'][3]:.3f} % of the old path, "
          f"wall {results['new'][0] / scoring:.2f} x scoring alone")
    if not same:
        raise SystemExit("the two paths picked different centres")


if __name__ == "__main__":
    main()
