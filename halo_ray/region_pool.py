"""The label pool of the multi-class label query: answered superpixels, charged in clicks.

Where :class:`halo_ray.pool.LabelPool` reveals pixels in squares and charges pixels, a
:class:`RegionPool` records, per image, the superpixels the annotator was shown, the classes
they named (the multi-hot answer of :func:`halo_ray.region_answers.answer_table`, read from the
region's trimmed interior) and the round, and charges one click per class named — the void
bit included unless ``bill_void=False`` (the released Cityscapes code bills it, docs/multiclass.md).

Same contract as the pixel pool: the oracle is asked at most once per (round, image), a call
is idempotent per (round, image) (a retry with the same regions returns the stored record, one
with other regions is an error), rounds are non-decreasing per image, a region is never
answered twice, and the state round-trips through :meth:`RegionPool.state_dict` bit for bit.
Pure data code: numpy, no torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from halo_ray.pool import Oracle
from halo_ray.region_answers import answer_table

STATE_FORMAT = "halo_ray.RegionPool/1"


@dataclass(frozen=True)
class AnswerRecord:
    """What one :meth:`RegionPool.reveal` call spent: one ledger entry per (round, image)."""

    round: int  # active-learning round (>= 1)
    index: int  # image index in the pool
    regions: int  # superpixels answered in the call
    clicks: int  # classes named (the budget spent)
    void: int  # answers holding void (billed or not, see RegionPool.bill_void)


def _ints(value: Any, name: str) -> np.ndarray:
    """A 1-D int64 array of region ids from a list, numpy array or tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of integer region ids, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


class RegionPool:
    """Answered superpixels per image, their multi-hot answers and rounds; a ledger in clicks.

    Args:
        num_images: images in the pool (target-train).
        superpixels: ``superpixels(index)`` → that image's ``[H, W]`` region ids (the
            superpixel cache); asked when an image is revealed.
        oracle: ground truth, ``oracle.labels(index)`` → ``[H, W]`` train ids, 255 = void.
        num_classes: C; answers have C + 1 columns (the last: the region holds void).
        trim: border band excluded when reading an answer (released: 5).
        bill_void: charge the void bit as a click (released Cityscapes: yes).
        shapes: the images' ``(H, W)``, for the labelled share in :meth:`summary`.
        answers: ``answers(index)`` → (every region's multi-hot answer ``[R, C + 1]``, its
            pixel count ``[R]``), e.g. a :class:`~halo_ray.region_answers.RegionAnswers` that
            keeps them on disk; None = read from ``superpixels`` and ``oracle`` each time.
    """

    def __init__(
        self,
        num_images: int,
        superpixels: Callable[[int], Any],
        oracle: Oracle,
        *,
        num_classes: int = 19,
        trim: int = 5,
        bill_void: bool = True,
        shapes: Sequence[tuple[int, int]] | None = None,
        answers: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
        if not 1 <= num_classes <= 254:
            raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
        self._superpixels = superpixels
        self._oracle = oracle
        self._answer_source = answers
        self.num_classes = int(num_classes)
        self.trim = int(trim)
        self.bill_void = bool(bill_void)
        n = num_images
        width = (self.num_classes + 1 + 7) // 8
        self._width = width
        self._regions = [np.zeros(0, np.int32) for _ in range(n)]
        self._answers = [np.zeros((0, width), np.uint8) for _ in range(n)]  # packed bits
        self._round = [np.zeros(0, np.uint8) for _ in range(n)]
        self._size = [np.zeros(0, np.int32) for _ in range(n)]  # pixels of each answered region
        self._shapes = None if shapes is None else [(int(h), int(w)) for h, w in shapes]
        if self._shapes is not None and len(self._shapes) != n:
            raise ValueError(f"shapes holds {len(self._shapes)} images, but num_images={n}")
        self._calls: list[dict[int, AnswerRecord]] = [{} for _ in range(n)]

    # ---- labelling --------------------------------------------------------------------------

    def reveal(self, round: int, index: int, regions: Any) -> AnswerRecord:
        """Show the annotator ``regions`` (ids, pick order) of image ``index`` at ``round``.

        Each region's answer is read from ground truth and charged its set bits. Repeating a
        stored (round, image) call with the same regions returns its record and spends nothing.
        """
        round, index = self._check_round(round), self._check_index(index)
        ids = _ints(regions, "regions")
        stored = self._calls[index].get(round)
        if stored is not None:
            previous = self._regions[index][self._round[index] == round]
            if not np.array_equal(previous, ids):
                raise ValueError(
                    f"reveal(round={round}, index={index}) was already made with {previous.size} regions, "
                    f"and the {ids.size} given now differ; a retried call must pass the same regions in the same order"
                )
            return stored
        done = sorted(self._calls[index])
        if done and round < done[-1]:
            raise ValueError(
                f"image index={index} already has round {done[-1]}, so round={round} is too early: "
                "rounds must be revealed in non-decreasing order per image"
            )
        if np.unique(ids).size != ids.size:
            raise ValueError(f"regions of image {index} at round {round} repeat an id")
        again = np.intersect1d(ids, self._regions[index])
        if again.size:
            raise ValueError(f"image {index}: regions {again[:5].tolist()} were answered in an earlier round")
        answers = np.zeros((0, self.num_classes + 1), np.uint8)
        sizes = np.zeros(0, np.int32)
        if ids.size:
            multihot, pixels = self._answers_of(index)
            num = multihot.shape[0]
            if ids.min() < 0 or ids.max() >= num:
                raise ValueError(f"image {index} has superpixel ids 0..{num - 1}, but regions hold {int(ids.min())}..{int(ids.max())}")
            answers = multihot[ids]
            sizes = pixels[ids].astype(np.int32)
        record = self._charge(round, index, answers)
        self._regions[index] = np.concatenate([self._regions[index], ids.astype(np.int32)])
        self._answers[index] = np.concatenate([self._answers[index], np.packbits(answers, axis=1)])
        self._round[index] = np.concatenate([self._round[index], np.full(ids.size, round, np.uint8)])
        self._size[index] = np.concatenate([self._size[index], sizes])
        self._calls[index][round] = record
        return record

    def _answers_of(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Every region's answer in image ``index`` ``[R, C + 1]`` and its pixel count ``[R]``:
        from ``answers`` when given, else from the oracle and the superpixel map."""
        if self._answer_source is not None:
            multihot, pixels = self._answer_source(index)
            return np.asarray(multihot, np.uint8), np.asarray(pixels)
        spx = np.asarray(self._to_numpy(self._superpixels(index))).astype(np.int64)
        label = np.asarray(self._to_numpy(self._oracle.labels(index)))
        if spx.shape != label.shape:
            raise ValueError(f"image {index}: superpixels {spx.shape} and labels {label.shape} differ in size")
        multihot, _ = answer_table(label, spx, num_classes=self.num_classes, trim=self.trim)
        return multihot, np.bincount(spx.reshape(-1), minlength=multihot.shape[0])

    def costs(self, index: int) -> np.ndarray:
        """What answering each region of image ``index`` would cost, in clicks: int64 ``[R]``.

        The simulation's knowledge, not the annotator's: selection under a click budget uses it
        to stop before the region that would overspend (the released loop stops after it)."""
        multihot, _ = self._answers_of(self._check_index(index))
        billed = multihot if self.bill_void else multihot[:, : self.num_classes]
        return billed.sum(axis=1, dtype=np.int64)

    def _charge(self, round: int, index: int, answers: np.ndarray) -> AnswerRecord:
        """The record of a call: clicks = set bits (the void bit only when billed)."""
        billed = answers if self.bill_void else answers[:, : self.num_classes]
        return AnswerRecord(
            round=round,
            index=index,
            regions=int(answers.shape[0]),
            clicks=int(billed.sum(dtype=np.int64)),
            void=int(answers[:, self.num_classes].sum(dtype=np.int64)) if answers.size else 0,
        )

    @staticmethod
    def _to_numpy(value: Any) -> Any:
        return value.detach().cpu().numpy() if hasattr(value, "detach") else value

    def _check_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self._calls):
            raise ValueError(f"index must be an image index in 0..{len(self._calls) - 1}, got {index!r}")
        return int(index)

    @staticmethod
    def _check_round(round: Any) -> int:
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or not 1 <= round <= 255:
            raise ValueError(f"round must be an integer in 1..255, got {round!r}")
        return int(round)

    # ---- what is known ----------------------------------------------------------------------

    def answered(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``index``'s answered regions: ids ``[M]``, answers uint8 ``[M, C+1]``, rounds ``[M]``."""
        index = self._check_index(index)
        answers = np.unpackbits(self._answers[index], axis=1, count=self.num_classes + 1)
        return self._regions[index].astype(np.int64), answers, self._round[index].copy()

    def targets(self, index: int, num_regions: int) -> tuple[np.ndarray, np.ndarray]:
        """Training targets of image ``index``: answers ``[R, C+1]`` (zero where unanswered) and
        the selected mask ``[R]`` — the ``multihot`` and ``selected`` of the stage-1 losses."""
        ids, answers, _ = self.answered(index)
        if ids.size and ids.max() >= num_regions:
            raise ValueError(f"image {index} has answered region {int(ids.max())}, beyond num_regions={num_regions}")
        table = np.zeros((num_regions, self.num_classes + 1), np.uint8)
        table[ids] = answers
        selected = np.zeros(num_regions, bool)
        selected[ids] = True
        return table, selected

    def available(self, index: int, num_regions: int, *, before_round: int | None = None) -> np.ndarray:
        """Regions of image ``index`` still to be shown: bool ``[num_regions]``. With
        ``before_round``, regions answered in that round or later count as still to be shown
        (a resumed round selects again from the pool it started with)."""
        ids, _, rounds = self.answered(index)
        if before_round is not None:
            ids = ids[rounds < before_round]
        out = np.ones(num_regions, bool)
        out[ids[ids < num_regions]] = False
        return out

    def costs_of(self, indices: Sequence[int]) -> list[np.ndarray]:
        """:meth:`costs` of several images in one call (one actor call per chunk in a search)."""
        return [self.costs(i) for i in indices]

    def available_table(self, counts: Sequence[int], *, before_round: int | None = None) -> np.ndarray:
        """:meth:`available` of every image at once: bool ``[N, max(counts)]``, False past an
        image's own ``counts[i]`` regions."""
        if len(counts) != self.num_images:
            raise ValueError(f"counts holds {len(counts)} images, but the pool has {self.num_images}")
        out = np.zeros((self.num_images, max(counts, default=0)), bool)
        for i, n in enumerate(counts):
            out[i, :n] = self.available(i, int(n), before_round=before_round)
        return out

    def targets_of(self, indices: Sequence[int], counts: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`targets` of several images in one call: ``{index: (answers, selected)}``."""
        return {int(i): self.targets(int(i), int(counts[int(i)])) for i in indices}

    def answered_images(self) -> list[int]:
        """Images with at least one reveal call, ascending."""
        return [i for i, calls in enumerate(self._calls) if calls]

    def rounds_done(self, index: int) -> list[int]:
        """Rounds, ascending, for which image ``index`` has a reveal record."""
        return sorted(self._calls[self._check_index(index)])

    def summary(self) -> dict[str, float | int]:
        """Totals as one plain dict: ``labelled_pixels`` (pixels of answered regions),
        ``void_pixels`` (0: a region's void is part of its answer), ``total_pixels``,
        ``labelled_pct`` and ``clicks``."""
        labelled = int(sum(int(s.sum(dtype=np.int64)) for s in self._size))
        total = sum(h * w for h, w in self._shapes) if self._shapes is not None else 0
        return {
            "labelled_pixels": labelled,
            "void_pixels": 0,
            "total_pixels": total,
            "labelled_pct": 100.0 * labelled / total if total else float("nan"),
            "clicks": self.clicks,
        }

    @property
    def num_images(self) -> int:
        return len(self._calls)

    @property
    def clicks(self) -> int:
        """Clicks spent over all rounds."""
        return sum(r.clicks for per_image in self._calls for r in per_image.values())

    def ledger(self) -> list[dict[str, int]]:
        """One row per (round, image), sorted: round, index, regions, clicks, void."""
        records = sorted((r for c in self._calls for r in c.values()), key=lambda r: (r.round, r.index))
        return [dict(round=r.round, index=r.index, regions=r.regions, clicks=r.clicks, void=r.void) for r in records]

    def round_totals(self) -> dict[int, dict[str, int]]:
        """Per round: ``{"images", "regions", "clicks", "void"}`` summed over the images."""
        totals: dict[int, dict[str, int]] = {}
        for row in self.ledger():
            t = totals.setdefault(row["round"], {"images": 0, "regions": 0, "clicks": 0, "void": 0})
            t["images"] += 1
            for key in ("regions", "clicks", "void"):
                t[key] += row[key]
        return totals

    def nbytes(self) -> int:
        """Bytes of the stored arrays: 4 (id) + ⌈(C+1)/8⌉ (answer) + 1 (round) + 4 (pixels) per
        answered region."""
        return sum(a.nbytes for a in self._regions + self._answers + self._round + self._size)

    # ---- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The pool as numpy arrays and primitives (a run checkpoint stores the arrays as
        tensors: ``weights_only``-loadable); the oracle is not in it."""
        return {
            "format": STATE_FORMAT,
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "trim": self.trim,
            "bill_void": self.bill_void,
            "counts": np.array([a.size for a in self._regions], np.int64),
            "regions": np.concatenate(self._regions),
            "answers": np.concatenate(self._answers),
            "rounds": np.concatenate(self._round),
            "sizes": np.concatenate(self._size),
            "calls": [[r["round"], r["index"]] for r in self.ledger()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` exactly (arrays or tensors); checked before anything is replaced."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"state['format'] must be {STATE_FORMAT!r}, got {state.get('format')!r}")
        for key in ("num_images", "num_classes", "trim", "bill_void"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state {key}={state[key]!r} differs from this pool's {key}={getattr(self, key)!r}")
        counts = [int(c) for c in self._to_numpy(state["counts"])]
        regions = np.asarray(self._to_numpy(state["regions"]), np.int32)
        answers = np.asarray(self._to_numpy(state["answers"]), np.uint8).reshape(-1, self._width)
        rounds = np.asarray(self._to_numpy(state["rounds"]), np.uint8)
        sizes = np.asarray(self._to_numpy(state["sizes"]), np.int32)
        if len(counts) != self.num_images or not sum(counts) == len(regions) == len(answers) == len(rounds) == len(sizes):
            raise ValueError("state is inconsistent: per-image counts do not match the stored regions")
        cut = np.cumsum(counts)[:-1]
        split = [np.split(a, cut) for a in (regions, answers, rounds, sizes)]
        made: list[set[int]] = [set() for _ in range(self.num_images)]
        for r, i in state["calls"]:
            made[self._check_index(int(i))].add(self._check_round(int(r)))
        calls: list[dict[int, AnswerRecord]] = [{} for _ in range(self.num_images)]
        for i, (ids, packed, rnd, _) in enumerate(zip(*split, strict=True)):
            if np.unique(ids).size != ids.size or np.any(np.diff(rnd.astype(int)) < 0):
                raise ValueError(f"state is inconsistent: image {i} repeats a region or its rounds decrease")
            if not set(np.unique(rnd).tolist()) <= made[i]:
                raise ValueError(f"state is inconsistent: image {i} has regions of a round without a call")
            unpacked = np.unpackbits(packed, axis=1, count=self.num_classes + 1)
            for r in sorted(made[i]):
                calls[i][r] = self._charge(r, i, unpacked[rnd == r])
        self._regions = [a.copy() for a in split[0]]
        self._answers = [a.copy() for a in split[1]]
        self._round = [a.copy() for a in split[2]]
        self._size = [a.copy() for a in split[3]]
        self._calls = calls

    def __repr__(self) -> str:
        answered = sum(a.size for a in self._regions)
        return f"RegionPool(images={self.num_images}, regions={answered}, clicks={self.clicks})"
