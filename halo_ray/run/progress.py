"""Progress lines and the cutting of a training phase into validation chunks."""

from __future__ import annotations

import time

from halo_ray.splits import LogFn

__all__ = ["ProgressLine", "format_duration", "validation_chunks"]


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


def validation_chunks(step: int, steps: int, every: int) -> list[tuple[int, int]]:
    """``(offset, length)`` pieces of a phase of ``steps`` steps that begins after global step
    ``step``, cut after each global step that is a multiple of ``every`` (0: one piece)."""
    if every <= 0 or steps == 0:
        return [(0, steps)]
    cuts = [k - step for k in range((step // every + 1) * every, step + steps, every)]
    bounds = [0, *cuts, steps]
    return [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
