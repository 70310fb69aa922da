"""RIPU's class-balanced source sampling: rare classes are drawn more often (resumable)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["CLASS_BALANCE_SUB_EPOCH", "ClassBalancedSampler", "class_weights", "image_seed"]


def image_seed(seed: int, round_index: int, image_index: int) -> int:
    """Independent stream per (seed, round, image): a repeated round draws the same scores."""
    return (seed * 1_000_003 + round_index * 10_007 + image_index) % (2**63 - 1)


#: RIPU builds its class-balanced source list in sub-epochs of this many draws; the class
#: shares that steer the draws restart at each sub-epoch.
CLASS_BALANCE_SUB_EPOCH = 3000


def class_weights(counts: np.ndarray, present: np.ndarray) -> np.ndarray:
    """RIPU's class weights ``1 / log(1.01 + share)`` normalised to sum 1, 0 for absent classes.

    ``share`` is each class's part of the class occurrences drawn so far in the sub-epoch
    (all 0 before the first draw), so classes drawn rarely get weights up to ``1/log 1.01 ≈ 100``.
    """
    total = counts.sum()
    share = counts / total if total > 0 else np.zeros(len(counts))
    w = np.where(present, 1.0 / np.log(1.01 + share), 0.0)
    return w / w.sum()


class ClassBalancedSampler:
    """RIPU's class-balanced source sampling as a resumable stream of image indices.

    Each draw picks a class ``c`` with :func:`class_weights` (one uniform number from the
    caller's generator, the learner's checkpointed one) and takes the next image of ``c``'s
    list; every class present in that image then counts once more towards the shares, which
    restart every :data:`CLASS_BALANCE_SUB_EPOCH` draws. ``c``'s list is a permutation of the
    images that contain ``c``, drawn anew on each pass by ``numpy.random.default_rng([seed, c,
    pass])``, so the state is a handful of counters (``state_dict``) and a resumed run draws
    the same sequence. Unlike the reference, which reads a class's list in file order on the
    first pass, every pass is shuffled; classes present in no image are never chosen.

    ``presence`` is a callable giving the bool ``[N, C]`` class-presence matrix; it is called
    on the first draw only (the scan of the source labels is deferred until training).
    """

    def __init__(self, presence: Callable[[], np.ndarray], num_classes: int, seed: int):
        self._presence_fn = presence
        self._presence: np.ndarray | None = None
        self.num_classes = num_classes
        self.seed = seed
        self.counts = np.zeros(num_classes, np.int64)  # class occurrences in this sub-epoch
        self.drawn = 0  # draws in this sub-epoch
        self.pointer = np.zeros(num_classes, np.int64)  # next position in each class's list
        self.passes = np.zeros(num_classes, np.int64)  # completed passes over each class's list
        self._orders: dict[int, tuple[int, np.ndarray]] = {}  # class -> (pass, permutation)

    @property
    def presence(self) -> np.ndarray:
        if self._presence is None:
            presence = np.asarray(self._presence_fn(), bool)
            if presence.ndim != 2 or presence.shape[1] != self.num_classes or not presence.any():
                raise ValueError(
                    f"class presence must be a bool [N, {self.num_classes}] matrix with at least one "
                    f"class present, but got shape {presence.shape}"
                )
            self._presence = presence
        return self._presence

    def _order(self, c: int) -> np.ndarray:
        """The images of class ``c`` in the order of its current pass."""
        k = int(self.passes[c])
        cached = self._orders.get(c)
        if cached is None or cached[0] != k:
            members = np.flatnonzero(self.presence[:, c])
            cached = (k, members[np.random.default_rng([self.seed, c, k]).permutation(len(members))])
            self._orders[c] = cached
        return cached[1]

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` source image indices (int64 ``[n]``), one class draw each."""
        present = self.presence.any(axis=0)  # [C]
        out = []
        for _ in range(n):
            cdf = np.cumsum(class_weights(self.counts, present))
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            c = int(min(np.searchsorted(cdf, u, side="right"), np.flatnonzero(present)[-1]))
            if self.pointer[c] >= len(self._order(c)):
                self.passes[c] += 1
                self.pointer[c] = 0
            image = int(self._order(c)[self.pointer[c]])
            self.pointer[c] += 1
            self.counts += self.presence[image]
            self.drawn += 1
            if self.drawn == CLASS_BALANCE_SUB_EPOCH:
                self.counts[:] = 0
                self.drawn = 0
            out.append(image)
        return torch.tensor(out, dtype=torch.int64)

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": torch.from_numpy(self.counts.copy()),
            "drawn": self.drawn,
            "pointer": torch.from_numpy(self.pointer.copy()),
            "passes": torch.from_numpy(self.passes.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], np.int64).copy()
        self.drawn = int(state["drawn"])
        self.pointer = np.asarray(state["pointer"], np.int64).copy()
        self.passes = np.asarray(state["passes"], np.int64).copy()
