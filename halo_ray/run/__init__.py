"""One multi-round active-learning run (docs/architecture.md §2). Nothing here knows Ray.

    source model (cached) → round 0: evaluate
    for r in 1..R: score → select within budget → reveal → train → evaluate → row + checkpoint

Every round ends with a Parquet row and a checkpoint holding the model, optimizer, label
pool, RNG states and config. A killed run resumed from its last checkpoint repeats the
remaining rounds exactly (same labelled set and metrics on CPU). Rounds are idempotent:
the pool refuses to spend twice for one (round, image) and a round's row file is
replaced, never duplicated.

The rooms: ``loop`` (the run itself, :class:`ActiveLearningRun`, :func:`run_experiment`),
``recorder`` (rows, TensorBoard, snapshots), ``checkpointer`` (round and best checkpoints,
the shared source cache, resume checks), ``progress`` (progress lines, validation chunks).
"""

from halo_ray.run.checkpointer import (
    CHECKPOINT_FORMAT,
    Checkpointer,
    best_checkpoint_path,
    check_same_config,
    checkpoint_bytes,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_bytes,
    save_checkpoint,
    source_checkpoint,
)
from halo_ray.run.loop import ActiveLearningRun, Scorer, run_experiment
from halo_ray.run.progress import ProgressLine, format_duration, validation_chunks
from halo_ray.run.recorder import (
    HPARAM_KEYS,
    HPARAM_METRICS,
    Recorder,
    snapshot_path,
    write_snapshot,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "HPARAM_KEYS",
    "HPARAM_METRICS",
    "ActiveLearningRun",
    "Checkpointer",
    "ProgressLine",
    "Recorder",
    "Scorer",
    "best_checkpoint_path",
    "check_same_config",
    "checkpoint_bytes",
    "checkpoint_path",
    "format_duration",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint_bytes",
    "run_experiment",
    "save_checkpoint",
    "snapshot_path",
    "source_checkpoint",
    "validation_chunks",
    "write_snapshot",
]
