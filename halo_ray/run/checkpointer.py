"""Where a run's state goes and comes back from: round checkpoints, best-model files, the
shared source cache, and the checks a resume makes (same config, same trial id).

A checkpoint file is ``torch.save`` of tensors and plain values. The process that holds the
model (the learner: :meth:`halo_ray.learner.Learner.checkpoint`) makes its bytes, and the run
loop writes and reads them as bytes, so a search trial's process, which drives a learner
actor, never imports torch (~1 s of CPU per trial). torch is imported here only by the
functions that need it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from halo_ray.config import RUNTIME_KEYS, ConfigError, ExperimentConfig
from halo_ray.results import atomic_write_bytes
from halo_ray.run.progress import ProgressLine, validation_chunks
from halo_ray.splits import LogFn

if TYPE_CHECKING:  # a search trial's process drives its learner actor and never imports the model code
    from halo_ray.learner import Learner

__all__ = [
    "CHECKPOINT_FORMAT",
    "as_arrays",
    "as_tensors",
    "Checkpointer",
    "best_checkpoint_path",
    "check_same_config",
    "checkpoint_bytes",
    "checkpoint_path",
    "improves",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint_bytes",
    "save_checkpoint",
    "source_checkpoint",
    "write_checkpoint_bytes",
]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` atomically (temp file + rename), numpy arrays (the label pool's state,
    which its process builds without torch) stored as tensors, so that the file loads with
    ``weights_only=True``."""
    write_checkpoint_bytes(path, checkpoint_bytes(state))


def write_checkpoint_bytes(path: Path, data: bytes) -> None:
    """Write a checkpoint file's ``data`` (:func:`checkpoint_bytes`, or a learner's) atomically."""
    atomic_write_bytes(path, lambda tmp: tmp.write_bytes(data))


def checkpoint_bytes(state: dict) -> bytes:
    """The bytes of the file :func:`save_checkpoint` writes for ``state``."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(as_tensors(state), buffer)
    return buffer.getvalue()


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    return read_checkpoint_bytes(Path(path).read_bytes())


def read_checkpoint_bytes(data: bytes) -> dict:
    """:func:`load_checkpoint` of a file's bytes."""
    import io

    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def as_tensors(value: Any) -> Any:
    """``value`` with every numpy array in it, through dicts, lists and tuples, as a tensor of
    the same dtype and values (sharing the array's memory; a read-only array from Ray's object
    store is copied, which ``torch.from_numpy`` needs)."""
    if isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(value if value.flags.writeable else value.copy())
    if isinstance(value, dict):
        return {k: as_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_tensors(v) for v in value)
    return value


def as_arrays(value: Any) -> Any:
    """The inverse of :func:`as_tensors`: every tensor in ``value`` as a numpy array, so that
    a process without torch can unpickle it."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: as_arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_arrays(v) for v in value)
    return value


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


def improves(miou: float, best: Mapping[str, Any] | None) -> bool:
    """Whether a validation's ``miou`` replaces the ``best`` record so far (the first always;
    later ones only when strictly higher, so ties keep the earlier model and a NaN never
    replaces a record)."""
    return best is None or miou > best["miou"]


class Checkpointer:
    """A run's checkpoints under ``out_dir/checkpoints``.

    ``own``: whether round checkpoints are written here; a search trial reports its state to
    Tune instead (:meth:`halo_ray.run.ActiveLearningRun.checkpoint_bytes`), whose copy is the
    one kept. After a checkpoint is safe, :meth:`written` keeps the last ``keep_checkpoints``
    round files and the best-model file the record names, nothing else.
    """

    def __init__(self, cfg: ExperimentConfig, out_dir: Path, *, own: bool = True):
        self.cfg, self.out_dir, self.own = cfg, Path(out_dir), own

    def latest(self) -> Path | None:
        """The last round checkpoint on disk, or None."""
        return latest_checkpoint(self.out_dir)

    def write_round(self, round_index: int, data: bytes, best: Mapping[str, Any] | None) -> None:
        """Write round ``round_index``'s checkpoint file (``data``, its bytes: when the run owns
        its checkpoints), then prune."""
        if self.own:
            write_checkpoint_bytes(checkpoint_path(self.out_dir, round_index), data)
            self.written(best)

    def written(self, best: Mapping[str, Any] | None) -> None:
        """The latest round's checkpoint is safe (on disk, or reported to Tune): drop round
        checkpoints beyond ``keep_checkpoints`` and best-model files ``best`` no longer names."""
        rounds = sorted((self.out_dir / "checkpoints").glob("round_*.pt"))
        for path in rounds[: max(0, len(rounds) - self.cfg.keep_checkpoints)]:
            path.unlink(missing_ok=True)
        self.prune_best(best)

    def save_best(self, best: Mapping[str, Any], learner: Learner) -> None:
        """Keep the best validation's weights (``keep_best``): :func:`best_checkpoint_path`,
        its bytes made by the learner (:meth:`~halo_ray.learner.Learner.model_file`)."""
        data = learner.model_file({"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), **best})
        write_checkpoint_bytes(best_checkpoint_path(self.out_dir, int(best["step"])), data)

    def prune_best(self, best: Mapping[str, Any] | None) -> None:
        """Delete every best-model file but the recorded best's. Runs once a round checkpoint
        (or a resume) fixes the record, so a crash never leaves the record without its file;
        files of a lost timeline (written after the checkpoint resumed from) go too."""
        keep = None if best is None else best_checkpoint_path(self.out_dir, int(best["step"]))
        for path in (self.out_dir / "checkpoints").glob("best_step_*.pt"):
            if path != keep:
                path.unlink(missing_ok=True)


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
    path, best_path = cfg.source_cache_files()
    want_best = cfg.source_select == "best"
    with _file_lock(path.with_suffix(".lock")):
        if not cfg.source_cached():
            log(f"source pre-training: {cfg.source_steps} steps (cache {path})")
            total = cfg.total_steps if cfg.loop == "continuous" else cfg.source_steps  # adapt/retrain: own schedule
            progress = ProgressLine(log, cfg.log_every, "source", total)
            every = cfg.eval_every if want_best else 0
            best: dict | None = None
            for offset, length in validation_chunks(0, cfg.source_steps, every):
                learner.train(length, start_step=offset, total_steps=total, progress=progress)
                if want_best:  # after each chunk: every eval_every steps and at the phase's end
                    miou, step = learner.evaluate().miou, offset + length
                    log(f"source step {step}: validation mIoU {miou:.2f}")
                    if improves(miou, best):
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


def check_same_config(cfg: ExperimentConfig, saved: dict, path: Path | str) -> None:
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
