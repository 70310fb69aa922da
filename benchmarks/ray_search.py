"""Benchmark: what Ray costs per trial, and how a search's throughput scales with nodes.

Two measurements, side by side in one process (targets, docs/architecture.md §5: overhead ≤ 3 s per trial;
trials/hour scale with cluster CPUs):

1. **Ray overhead per trial.** The same tiny active-learning run, once in-process with
   ``run_experiment`` and once as a one-trial ``halo-ray search`` on a local Ray (Tune
   trial, placement group, learner + pool actors, per-round checkpoints through Tune).
   Overhead = search wall − in-process wall; both include source pre-training. And the
   steady state: each later trial of a search that runs trials one at a time, its learner's
   process started while the trial before it ran, against a later empty Tune trial.
2. **Trials per hour, 1 vs 2 nodes.** A grid of ``--trials`` trials on a simulated cluster
   (``ray.cluster_utils.Cluster``: a head without CPUs plus 1 or 2 one-CPU worker nodes on
   this machine). Each node's workers are confined to their own physical core, as a real
   one-CPU node's are (``--no-pin`` lets them share every core: then one node borrows the
   idle core and the ratio understates scaling). Each trial uses one thread, so 2 nodes
   should approach 2× (on a machine with at least 2 free cores).

Run from the repository root::

    python benchmarks/ray_search.py                  # ~4 min on 2 cores
    python benchmarks/ray_search.py --trials 6 --round-steps 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

NODE = dict(object_store_memory=80 * 1024**2)


def _experiment(folder: Path, data_root: Path, round_steps: int) -> dict:
    """A run of a few seconds: tiny images, 2 rounds, one thread."""
    return dict(
        experiment="bench", seed=0, data_root=str(data_root), generate_data=False, source_steps=20,
        round_steps=round_steps, rounds=2, batch_size=2, eval_batch_size=4, budget=4.0, embed_dim=16,
        log_every=1000, log_images=0, num_threads=1, source_cache=str(folder / "cache"),
    )


def _space(folder: Path, name: str, experiment: dict, seeds: list[int], one_at_a_time: bool = False) -> Path:
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "experiment": "experiment.yaml", "searcher": "grid", "max_failures": 0,
        "parameters": {"seed": {"grid": seeds}}, **({"max_concurrent_trials": 1} if one_at_a_time else {}),
    }))
    return path


def _search(space_file: Path, storage: Path, warm_learners: bool = True) -> float:
    """Wall seconds of one search on the Ray this process is connected to."""
    from halo_ray.distributed.search import run_search
    from halo_ray.distributed.space import load_search_space

    t0 = time.perf_counter()
    run_search(load_search_space(space_file), storage, warm_learners=warm_learners)
    return time.perf_counter() - t0


def overhead(folder: Path, data_root: Path, round_steps: int, repeats: int) -> dict[str, float]:
    """In-process run vs the same run as a one-trial search, with its learner process started
    ahead (the default) and started when the trial asks for it; and the cost of each later
    trial of a search that runs its trials one at a time, its learner process started while the
    previous trial ran: (3-trial search − one-trial search) / 2 (median over ``repeats``)."""
    import statistics

    import ray

    from halo_ray.config import build_config
    from halo_ray.run import run_experiment

    values = _experiment(folder, data_root, round_steps)
    local, searched, cold, three = [], [], [], []
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **NODE)
    ray_init_s = time.perf_counter() - t0
    try:
        for k in range(repeats):  # interleaved, so that background load hits both alike
            run_dir = folder / f"local{k}"
            cfg = build_config({**values, "source_cache": str(run_dir / "cache")})
            t0 = time.perf_counter()
            run_experiment(cfg, run_dir, log=lambda _: None, tensorboard=True)
            local.append(time.perf_counter() - t0)
            (folder / f"s{k}").mkdir()
            space = _space(folder / f"s{k}", "overhead", values, seeds=[0])
            searched.append(_search(space, folder / f"search{k}"))
            (folder / f"c{k}").mkdir()
            space = _space(folder / f"c{k}", "overhead_cold", values, seeds=[0])
            cold.append(_search(space, folder / f"cold{k}", warm_learners=False))
            (folder / f"t{k}").mkdir()
            space = _space(folder / f"t{k}", "later_trials", values, seeds=[0, 1, 2], one_at_a_time=True)
            three.append(_search(space, folder / f"three{k}"))
    finally:
        ray.shutdown()
    loc, sea, col = statistics.median(local), statistics.median(searched), statistics.median(cold)
    later = statistics.median((t - s) / 2 for t, s in zip(three, searched, strict=True))
    return {
        "ray_init_s": ray_init_s, "local_s": loc, "search_s": sea, "overhead_s": sea - loc, "ratio": sea / loc,
        "cold_search_s": col, "cold_overhead_s": col - loc, "later_trial_s": later, "later_overhead_s": later - loc,
    }


def _noop_trial(config: dict) -> None:
    from ray import tune

    tune.report({"done": 1})


_IMPORT_PROFILE = """
import json, time
import ray.tune  # a Tune trial's process has it already
t0 = time.perf_counter()
import halo_ray.distributed.search  # what the trial's process imports to find run_trial
t1 = time.perf_counter()
import halo_ray.run  # what run_trial imports once its actors are starting
t2 = time.perf_counter()
print(json.dumps(dict(trainable_module_s=t1 - t0, run_loop_s=t2 - t1)))
"""


def components(folder: Path, data_root: Path, round_steps: int, repeats: int) -> dict[str, float]:
    """Where the overhead goes: an empty Tune trial with a trial's placement group, alone and as
    later trials (medians over ``repeats``, like the searches they are set against); the imports
    of a trial's process (a fresh interpreter, as a trial's is); the learner and label-pool
    actors started at once, as a trial starts them, each timed to its first answer; and a
    learner actor in a process started ahead (a warm one, idle by then)."""
    import json
    import statistics
    import subprocess
    import sys

    import ray
    from ray import tune

    from halo_ray.config import build_config
    from halo_ray.distributed.actors import LearnerActor, PoolActor, TrialResources
    from halo_ray.distributed.warm import WarmLearners, learner_runtime_env
    from halo_ray.splits import open_split

    cfg = build_config(_experiment(folder, data_root, round_steps))
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROFILE], capture_output=True, text=True, check=True)
    imports = json.loads(out.stdout.strip().splitlines()[-1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **NODE)
    try:
        trainable = tune.with_resources(_noop_trial, TrialResources().placement_group_factory())
        empties, later_empties = [], []
        for k in range(repeats):
            t0 = time.perf_counter()
            tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(folder / f"noop{k}"), verbose=0)).fit()
            empties.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tune.Tuner(  # three, one at a time: each later empty trial costs (3 trials − 1 trial) / 2
                trainable, param_space={"k": tune.grid_search([0, 1, 2])},
                tune_config=tune.TuneConfig(max_concurrent_trials=1),
                run_config=tune.RunConfig(storage_path=str(folder / f"noop3_{k}"), verbose=0),
            ).fit()
            later_empties.append((time.perf_counter() - t0 - empties[-1]) / 2)
        empty_s, later_empty_s = statistics.median(empties), statistics.median(later_empties)
        t1 = time.perf_counter()
        train = open_split(cfg, "train")
        shapes = [tuple(train.image_size(i)) for i in range(len(train))]
        actor = ray.remote(LearnerActor).options(num_cpus=0.9, runtime_env=learner_runtime_env())
        learner = actor.remote(cfg)
        pool = ray.remote(PoolActor).options(num_cpus=0).remote(cfg, shapes)
        first = {learner.call.remote("target_shapes"): "learner", pool.call.remote("summary"): "pool"}
        ready: dict[str, float] = {}
        pending = list(first)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            ready[first[done[0]]] = time.perf_counter() - t1
        ray.kill(learner)
        ray.kill(pool)
        WarmLearners(cpus=0.9, gpus=0.0).ahead(1, for_trials=False)
        time.sleep(20)  # its imports take ~5 s: idle well before the learner comes
        t2 = time.perf_counter()
        ray.get(actor.remote(cfg).call.remote("target_shapes"))
        warm_s = time.perf_counter() - t2
    finally:
        ray.shutdown()
    return {
        "empty_trial_s": empty_s, "later_empty_trial_s": later_empty_s, "learner_actor_s": ready["learner"], "pool_actor_s": ready["pool"],
        "warm_learner_actor_s": warm_s, **imports,
    }


def _pin_to_core(node, core: int) -> None:
    """Confine a simulated node's workers to one physical core, as a real one-CPU node's are:
    its raylet is pinned and the workers it starts inherit the mask."""
    from ray._private import ray_constants

    for info in node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]:
        os.sched_setaffinity(info.process.pid, {core})


def throughput(folder: Path, data_root: Path, round_steps: int, trials: int, nodes: int, pin: bool) -> dict[str, float]:
    """Trials/hour of a ``trials``-trial grid on a head + ``nodes`` one-CPU workers (each on its
    own core when ``pin``; the head, Tune's loop and this process run anywhere)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False, **NODE))
    cores = sorted(os.sched_getaffinity(0))
    for k in range(nodes):
        node = cluster.add_node(num_cpus=1, **NODE)
        if pin:
            _pin_to_core(node, cores[k % len(cores)])
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        sub = folder / f"nodes{nodes}"
        sub.mkdir()
        space = _space(sub, f"nodes{nodes}", _experiment(sub, data_root, round_steps), seeds=list(range(trials)))
        wall = _search(space, sub / "runs")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"nodes": nodes, "wall_s": wall, "trials_per_hour": trials / wall * 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials in the throughput grid (default 4)")
    parser.add_argument("--round-steps", type=int, default=10, help="training steps per round (default 10)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="measurements of each search and empty Tune trial (median; default 2)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let simulated nodes share every core (by default each runs on its own core)")
    args = parser.parse_args()

    from halo_ray.data import generate_benchmark

    with tempfile.TemporaryDirectory(prefix="halo-ray-bench-") as tmp:
        folder = Path(tmp)
        data_root = folder / "data"
        generate_benchmark(data_root, seed=0, height=64, width=128, n_source=16, n_target_train=8,
                           n_target_val=6, n_adverse_train=2, n_adverse_val=2)
        o = overhead(folder, data_root, args.round_steps, args.repeats)
        parts = components(folder, data_root, args.round_steps, args.repeats)
        one = throughput(folder, data_root, args.round_steps, args.trials, nodes=1, pin=args.pin)
        two = throughput(folder, data_root, args.round_steps, args.trials, nodes=2, pin=args.pin)
    print(f"cores on this machine: {os.cpu_count()}")
    print("\n== Ray overhead per trial (same tiny run, 2 rounds) ==")
    print(f"ray.init                  {o['ray_init_s']:7.2f} s (once per search)")
    print(f"in-process run_experiment {o['local_s']:7.2f} s")
    print(f"one-trial search          {o['search_s']:7.2f} s")
    print(f"overhead per trial        {o['overhead_s']:7.2f} s   (search / in-process = {o['ratio']:.2f}×)")
    print(f"  its learner started cold {o['cold_overhead_s']:6.2f} s   (--no-warm-learners: "
          f"{o['cold_search_s']:.2f} s search; warm / cold overhead = {o['overhead_s'] / o['cold_overhead_s']:.2f}×)")
    print(f"where it goes (empty trials: median of {args.repeats}; the parts: one of each, same machine):")
    print(f"empty Tune trial          {parts['empty_trial_s']:7.2f} s   (with the trial's placement group)")
    print(f"overhead above it         {o['overhead_s'] - parts['empty_trial_s']:7.2f} s   (target <= 3 s)")
    print(f"  trial process imports run_trial's module      {parts['trainable_module_s']:5.2f} s (before its actors)")
    print(f"  then the run loop, while its actors start     {parts['run_loop_s']:5.2f} s")
    print(f"  learner actor: start, import, data, model     {parts['learner_actor_s']:5.2f} s (started with the pool)")
    print(f"  the same in a process started ahead: data, model {parts['warm_learner_actor_s']:5.2f} s "
          f"({parts['learner_actor_s'] / parts['warm_learner_actor_s']:.1f}× faster)")
    print(f"  label-pool actor: start, import, headers      {parts['pool_actor_s']:5.2f} s")
    print("  the rest: Tune's per-round checkpoints and experiment-state snapshots, trial teardown")
    print("later trials of a search run one at a time ((3 trials - 1 trial) / 2; each learner started "
          "while the trial before ran):")
    print(f"later trial               {o['later_trial_s']:7.2f} s   (in-process run {o['local_s']:.2f} s)")
    print(f"overhead per later trial  {o['later_overhead_s']:7.2f} s")
    print(f"empty Tune trial, later   {parts['later_empty_trial_s']:7.2f} s")
    print(f"overhead above it         {o['later_overhead_s'] - parts['later_empty_trial_s']:7.2f} s   (target <= 3 s)")
    pinned = "each on its own core" if args.pin else "sharing every core"
    print(f"\n== Trials per hour, {args.trials}-trial grid, head without CPUs + one-CPU workers ({pinned}) ==")
    for r in (one, two):
        print(f"{r['nodes']} node(s): {r['wall_s']:7.1f} s wall, {r['trials_per_hour']:7.0f} trials/hour")
    print(f"scaling 2 nodes / 1 node: {two['trials_per_hour'] / one['trials_per_hour']:.2f}×")


if __name__ == "__main__":
    main()
