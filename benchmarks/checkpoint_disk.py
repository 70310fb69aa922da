"""Benchmark: bytes on disk per trial for a 5-round run, against one checkpoint's size.

A run keeps its last ``keep_checkpoints`` round checkpoints (default 1); a search trial keeps
none of its own: the checkpoint it reports to Tune each round is its one copy, and Tune keeps
the last ``keep_checkpoints``. Both are measured side by side in one process on a small
embedded benchmark: a local ``halo-ray run`` and a one-trial search on a local Ray. Target:
disk per trial ≤ 2.2× one checkpoint (the last round's; plus the best validation's when kept).

    python benchmarks/checkpoint_disk.py [--rounds 5] [--keep 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

TARGET = 2.2


def _bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for root in paths for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=int, default=1, help="keep_checkpoints")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray
    import yaml

    from halo_ray.config import build_config
    from halo_ray.data import generate_benchmark
    from halo_ray.distributed.actors import TrialResources
    from halo_ray.distributed.search import run_search, trial_checkpoint
    from halo_ray.distributed.space import load_search_space
    from halo_ray.run import latest_checkpoint, run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        generate_benchmark(data, seed=0, height=64, width=128, n_source=16, n_target_train=8, n_target_val=6,
                           n_adverse_train=2, n_adverse_val=2)
        values = dict(experiment="disk", data_root=str(data), generate_data=False, source_steps=10, round_steps=4,
                      rounds=args.rounds, batch_size=2, eval_batch_size=4, budget=6.0, log_images=0,
                      num_threads=1, keep_checkpoints=args.keep)

        out = tmp / "run"
        run_experiment(build_config({**values, "source_cache": str(tmp / "cache")}), out, log=lambda _: None,
                       tensorboard=False)
        one = latest_checkpoint(out).stat().st_size
        local = _bytes([out / "checkpoints"])
        print(f"local run, {args.rounds} rounds, keep_checkpoints {args.keep}: checkpoints {local / 1e6:.2f} MB "
              f"= {local / one:.2f}x one checkpoint ({one / 1e6:.2f} MB)")

        (tmp / "disk.yaml").write_text(yaml.safe_dump(values))
        (tmp / "space.yaml").write_text(yaml.safe_dump(
            {"name": "disk", "experiment": "disk.yaml", "parameters": {"seed": {"grid": [0]}}}))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        results = run_search(load_search_space(tmp / "space.yaml"), tmp / "runs", resources=TrialResources.per_trial(1.0))
        root = results.parent
        (trial,) = [p.name for p in (root / "trials").iterdir()]
        state = trial_checkpoint(root, trial)
        one = state.stat().st_size
        held = _bytes([root / "trials" / trial, *root.glob(f"tune*/run_trial_{trial}_*/checkpoint_*")])
        ratio = held / one
        verdict = "OK" if ratio <= TARGET else "ABOVE TARGET"
        print(f"search trial, {args.rounds} rounds: trial folder + Tune checkpoints {held / 1e6:.2f} MB "
              f"= {ratio:.2f}x one checkpoint ({one / 1e6:.2f} MB)")
        print(f"disk per trial: {ratio:.2f}x one checkpoint (target <= {TARGET}: {verdict})")
        ray.shutdown()


if __name__ == "__main__":
    main()
