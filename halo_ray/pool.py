"""The label pool: which target pixels have been revealed, by whom, in which round, at what cost.

The active-learning loop (docs/architecture.md §2) asks the selection for pick centres per image and round,
then calls :meth:`LabelPool.reveal`, which asks the :class:`Oracle` for the ground truth of
that image once and records the newly revealed pixels. Budgets are counted in *distinct*
revealed pixels: squares clipped at the border or overlapping earlier picks are charged only
for the pixels that were not labelled before; void (ignore) pixels are counted separately.

Storage (target, docs/architecture.md §5: at most 1.1 bit per target pixel plus O(labelled)):

* per image, a bit-packed labelled mask (``np.packbits``, 1 bit per pixel; void pixels that
  were revealed are set too, so the annotator is not asked again);
* per image, for revealed pixels only, three sparse arrays in reveal order: flat index
  (int32), round of labelling (uint8) and label value (uint8; ``ignore_index`` = void);
* per image, the pick centres (int32 ``[n, 2]``, row/col, pick order) with their round
  (uint8), from which :meth:`LabelPool.suppressed` rebuilds the persistent suppression mask;
* one ledger entry per (round, image).

Dense views (:meth:`LabelPool.labelled_mask`, :meth:`LabelPool.labels`,
:meth:`LabelPool.round_map`) are built on demand and never kept. Trainers get the labels
sparse, for all images in one call (:meth:`LabelPool.revealed_labels`).

:meth:`LabelPool.reveal` is idempotent per (round, image), so a retried call (a restarted
Ray actor, a resumed trial) never spends budget twice; :meth:`LabelPool.state_dict` holds only
numpy arrays and Python primitives, which a run checkpoint stores as tensors
(:func:`halo_ray.run.save_checkpoint`), so it loads with ``torch.load(..., weights_only=True)``.

This module uses numpy only, never torch: a pool actor's process does not pay torch's import
(~1 s of CPU on a trial's start-up path). :meth:`LabelPool.load_state_dict` takes the arrays as
numpy arrays or as the tensors a checkpoint holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ArrayOracle",
    "DatasetOracle",
    "LabelPool",
    "Oracle",
    "RevealRecord",
    "Unit",
]

Unit = Literal["region", "pixel"]

#: Largest round number: rounds are stored per pixel as uint8 (``round_map`` is uint8 too).
MAX_ROUND = 255
#: Largest image: flat pixel indices are stored as int32.
MAX_PIXELS_PER_IMAGE = 2**31 - 1
#: Identifies the layout of :meth:`LabelPool.state_dict`.
STATE_FORMAT = "halo_ray.LabelPool/1"
#: Bytes counted per ledger entry by :meth:`LabelPool.nbytes` (7 fields of 8 bytes).
LEDGER_ENTRY_BYTES = 56


# --------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Oracle(Protocol):
    """Source of ground truth. :meth:`LabelPool.reveal` calls :meth:`labels` at most once per
    (round, image) and only when that call reveals at least one new pixel."""

    def labels(self, index: int) -> np.ndarray:
        """Return the full label map of image ``index``: integer ``[H, W]`` train ids in
        ``[0, 255]``, the pool's ``ignore_index`` (255 by default) marking void pixels."""
        ...


class ArrayOracle:
    """Oracle over label maps held in memory (tests, small synthetic sets)."""

    def __init__(self, label_maps: Sequence[np.ndarray]) -> None:
        maps = [np.asarray(m) for m in label_maps]
        for i, m in enumerate(maps):
            if m.ndim != 2:
                raise ValueError(
                    f"label_maps[{i}] must be a 2-D [H, W] array, but got shape {m.shape}"
                )
        self._maps = maps

    def __len__(self) -> int:
        return len(self._maps)

    def labels(self, index: int) -> np.ndarray:
        """Return the stored label map of image ``index``."""
        return self._maps[index]


class DatasetOracle:
    """Oracle over a dataset whose items carry a ``label`` attribute (or ``"label"`` key).

    Duck-typed so the pool does not depend on the data package: ``dataset[index].label`` may
    be a numpy array or a CPU tensor of shape ``[H, W]``.
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__"):
            raise ValueError(
                f"dataset must support dataset[index], but got {type(dataset).__name__}"
            )
        self._dataset = dataset

    def labels(self, index: int) -> np.ndarray:
        """Return ``dataset[index].label`` as a numpy array.

        Datasets that can decode the label alone (``load_label(index)``, as the layout
        readers do) are asked for just that, so the oracle never decodes images.
        """
        if hasattr(self._dataset, "load_label"):
            return np.asarray(self._dataset.load_label(index))
        item = self._dataset[index]
        if hasattr(item, "label"):
            label = item.label
        elif isinstance(item, Mapping) and "label" in item:
            label = item["label"]
        else:
            raise ValueError(
                f"dataset[{index}] has no 'label' attribute or key "
                f"(got {type(item).__name__}); DatasetOracle needs items with a label map"
            )
        if hasattr(label, "detach"):  # a torch tensor: go through CPU without importing torch
            label = label.detach().cpu().numpy()
        return np.asarray(label)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevealRecord:
    """What one :meth:`LabelPool.reveal` call spent: one ledger entry per (round, image)."""

    round: int  # active-learning round (>= 1) the picks belong to
    index: int  # image index in the pool
    picks: int  # number of pick centres (regions or pixels) in the call
    pixels: int  # distinct newly revealed non-void pixels: the budget spent
    void: int  # newly revealed void (ignore) pixels: free for the budget, reported apart


@dataclass(frozen=True)
class _Call:
    """A stored reveal call: its record plus the arguments that a retry must repeat."""

    record: RevealRecord
    region_size: int
    unit: str


# --------------------------------------------------------------------------------------------
# Pure helpers on flat pixel indices
# --------------------------------------------------------------------------------------------


def _square_flat(centres: np.ndarray, shape: tuple[int, int], side: int) -> np.ndarray:
    """Sorted distinct flat indices of the ``side × side`` squares around ``centres``
    (``[n, 2]`` row/col), clipped at the border. O(n·side²), never touches the whole map."""
    h, w = shape
    k = side // 2
    offsets = np.arange(-k, k + 1, dtype=np.int64)  # [s]
    rows = centres[:, 0, None, None] + offsets[None, :, None]  # [n, s, 1]
    cols = centres[:, 1, None, None] + offsets[None, None, :]  # [n, 1, s]
    rows, cols = np.broadcast_arrays(rows, cols)  # [n, s, s]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return np.unique(rows[inside] * w + cols[inside])


def _centre_flat(centres: np.ndarray, shape: tuple[int, int], side: int) -> np.ndarray:
    """Sorted distinct flat indices of the centre pixels themselves (pixel-based "PA")."""
    del side  # the pixel unit labels only the centre
    return np.unique(centres[:, 0] * shape[1] + centres[:, 1])


#: Annotation unit -> the pixels a pick reveals. A new unit (e.g. the multi-class label
#: query, issue 12) registers its own pixel rule here.
_UNIT_PIXELS: dict[str, Callable[[np.ndarray, tuple[int, int], int], np.ndarray]] = {
    "region": _square_flat,
    "pixel": _centre_flat,
}


#: Number of set bits of every byte value.
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], np.uint8)


def _bits_at(packed: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Bits of a ``np.packbits`` (big-endian) mask at ``flat`` indices, as bool ``[len(flat)]``."""
    shift = (7 - (flat & 7)).astype(np.uint8)
    return ((packed[flat >> 3] >> shift) & 1).astype(bool)


def _set_bits(packed: np.ndarray, flat: np.ndarray) -> None:
    """Set the bits at ``flat`` indices of a packed mask in place (indices may share a byte)."""
    np.bitwise_or.at(packed, flat >> 3, (1 << (7 - (flat & 7))).astype(np.uint8))


def _box_sum_rows(counts: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``counts`` over a ``2k+1`` window along axis 0 (zero padding), via a cumsum."""
    csum = np.cumsum(np.pad(counts, ((k + 1, k), (0, 0))), axis=0)  # [H + 2k + 1, W]
    return csum[2 * k + 1 :] - csum[: -(2 * k + 1)]  # [H, W]


def _box_any(points: np.ndarray, side: int) -> np.ndarray:
    """True where the ``side × side`` window (odd side, zero padding) around a pixel holds a
    True point: separable box sums, O(H·W) whatever the number of points."""
    k = side // 2
    counts = _box_sum_rows(points.astype(np.int32), k)  # [H, W] window sums along rows
    return _box_sum_rows(counts.T, k).T > 0  # [H, W]


def _is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools (``True`` is not an index)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_odd_side(name: str, value: Any) -> int:
    """Validate an odd window side length >= 1 and return it as int."""
    if not _is_int(value) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1, but got {name}={value!r}")
    return int(value)


def _to_numpy(value: Any) -> np.ndarray:
    """A tensor (via ``.numpy()``) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


class LabelPool:
    """Revealed target labels, per image and round, with the budget ledger.

    Who calls what: the run (or the pool actor wrapping this class) calls :meth:`reveal` once
    per (round, image) with the selected centres, :meth:`suppressed` to build the next round's
    ``active`` mask for selection, :meth:`revealed_labels` once per round to hand the
    trainer the labelled pixels (:meth:`labels` is the dense view of one image), and
    :meth:`state_dict` / :meth:`load_state_dict` at each round checkpoint.

    Args:
        shapes: ``(H, W)`` of every target-train image, in dataset order.
        oracle: source of ground truth (:class:`Oracle`).
        ignore_index: label value of void pixels in the oracle's maps, and the fill value of
            :meth:`labels` for unlabelled pixels.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        oracle: Oracle,
        *,
        ignore_index: int = 255,
    ) -> None:
        self._shapes = self._check_shapes(shapes)
        if not callable(getattr(oracle, "labels", None)):
            raise ValueError(
                f"oracle must have a labels(index) method, but got {type(oracle).__name__}"
            )
        if not _is_int(ignore_index) or not 0 <= ignore_index <= 255:
            raise ValueError(
                f"ignore_index must be an integer in [0, 255] (labels are uint8), "
                f"but got ignore_index={ignore_index!r}"
            )
        self._oracle = oracle
        self._ignore = int(ignore_index)
        self._reset()

    # ---- construction helpers ---------------------------------------------------------------

    @staticmethod
    def _check_shapes(shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Validate ``shapes`` (a non-empty list of positive ``(H, W)``) and normalise it."""
        out: list[tuple[int, int]] = []
        for i, shape in enumerate(shapes):
            try:
                h, w = (int(v) for v in shape)
            except (TypeError, ValueError):
                raise ValueError(
                    f"shapes[{i}] must be a pair (H, W) of positive integers, but got {shape!r}"
                ) from None
            if h < 1 or w < 1:
                raise ValueError(
                    f"shapes[{i}] must be a pair (H, W) of positive integers, but got {shape!r}"
                )
            if h * w > MAX_PIXELS_PER_IMAGE:
                raise ValueError(
                    f"shapes[{i}]={shape!r} has {h * w} pixels; the pool stores int32 pixel "
                    f"indices, so at most {MAX_PIXELS_PER_IMAGE} per image"
                )
            out.append((h, w))
        if not out:
            raise ValueError("shapes must list at least one (H, W) image shape, but got []")
        return out

    def _reset(self) -> None:
        """Empty state: nothing labelled, nothing picked, empty ledger."""
        n = len(self._shapes)
        self._mask = [np.zeros(math.ceil(h * w / 8), np.uint8) for h, w in self._shapes]
        self._flat = [np.zeros(0, np.int32) for _ in range(n)]  # revealed pixels, reveal order
        self._pix_round = [np.zeros(0, np.uint8) for _ in range(n)]
        self._pix_label = [np.zeros(0, np.uint8) for _ in range(n)]
        self._centres = [np.zeros((0, 2), np.int32) for _ in range(n)]  # [n_picks, 2]
        self._pick_round = [np.zeros(0, np.uint8) for _ in range(n)]
        self._calls: list[dict[int, _Call]] = [{} for _ in range(n)]  # per image: round -> call
        self._labelled = 0
        self._void = 0

    # ---- validation -------------------------------------------------------------------------

    def _check_index(self, index: Any) -> int:
        if not _is_int(index) or not 0 <= index < len(self._shapes):
            raise ValueError(
                f"index must be an integer in [0, {len(self._shapes) - 1}] "
                f"(the pool has {len(self._shapes)} images), but got index={index!r}"
            )
        return int(index)

    @staticmethod
    def _check_round(round: Any) -> int:
        if not _is_int(round) or not 1 <= round <= MAX_ROUND:
            raise ValueError(
                f"round must be an integer in [1, {MAX_ROUND}] (round 0 is the source model, "
                f"which labels nothing), but got round={round!r}"
            )
        return int(round)

    def _check_centres(self, centres: Any, index: int) -> np.ndarray:
        h, w = self._shapes[index]
        arr = _to_numpy(centres)
        if arr.size == 0:
            return np.zeros((0, 2), np.int64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(
                f"centres must be an integer array of shape [n, 2] (row, col), "
                f"but got shape {tuple(arr.shape)}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"centres must hold integers (row, col), but got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        outside = (arr[:, 0] < 0) | (arr[:, 0] >= h) | (arr[:, 1] < 0) | (arr[:, 1] >= w)
        if outside.any():
            bad = arr[np.flatnonzero(outside)[0]]
            raise ValueError(
                f"centres must lie inside image {index} of shape (H, W)=({h}, {w}), "
                f"but got centre (row, col)=({bad[0]}, {bad[1]})"
            )
        return arr

    # ---- labelling --------------------------------------------------------------------------

    def reveal(
        self,
        round: int,
        index: int,
        centres: np.ndarray,
        *,
        region_size: int,
        unit: Unit = "region",
    ) -> RevealRecord:
        """Label the picks of image ``index`` at ``round`` and charge the budget.

        ``unit="region"`` reveals the ``region_size × region_size`` square around each centre
        (clipped at the border); ``unit="pixel"`` reveals the centres only. Pixels labelled
        earlier are not charged again. The oracle is asked at most once per call.

        Idempotent per (round, image): repeating a stored call returns its record and spends
        nothing; a repeat with other centres, ``region_size`` or ``unit`` is an error.

        Args:
            round: active-learning round, ``1..255``; non-decreasing per image.
            index: image index in the pool.
            centres: integer ``[n, 2]`` (row, col) pick centres in pick order (a tensor works).
            region_size: odd side of the labelled square (ignored by the pixel unit, still
                validated and recorded).
            unit: ``"region"`` or ``"pixel"``.

        Returns:
            The :class:`RevealRecord` of this (round, image).
        """
        round = self._check_round(round)
        index = self._check_index(index)
        region_size = _check_odd_side("region_size", region_size)
        if unit not in _UNIT_PIXELS:
            raise ValueError(f"unit must be one of {sorted(_UNIT_PIXELS)}, but got unit={unit!r}")
        picks = self._check_centres(centres, index)  # [n, 2] int64

        stored = self._calls[index].get(round)
        if stored is not None:
            return self._replay(stored, picks, region_size, unit)
        last = self.rounds_done(index)
        if last and round < last[-1]:
            raise ValueError(
                f"image index={index} already has round {last[-1]}, so round={round} is too "
                f"early: rounds must be revealed in non-decreasing order per image"
            )

        shape = self._shapes[index]
        flat = _UNIT_PIXELS[unit](picks, shape, region_size)  # sorted distinct, int64
        new = flat[~_bits_at(self._mask[index], flat)]
        void = 0
        if new.size:
            values = self._oracle_values(index, new)  # [len(new)] uint8
            void = int(np.count_nonzero(values == self._ignore))
            _set_bits(self._mask[index], new)
            self._flat[index] = np.concatenate([self._flat[index], new.astype(np.int32)])
            self._pix_round[index] = np.concatenate(
                [self._pix_round[index], np.full(new.size, round, np.uint8)]
            )
            self._pix_label[index] = np.concatenate([self._pix_label[index], values])
        self._centres[index] = np.concatenate([self._centres[index], picks.astype(np.int32)])
        self._pick_round[index] = np.concatenate(
            [self._pick_round[index], np.full(len(picks), round, np.uint8)]
        )
        record = RevealRecord(
            round=round, index=index, picks=len(picks), pixels=int(new.size) - void, void=void
        )
        self._calls[index][round] = _Call(record, region_size, unit)
        self._labelled += record.pixels
        self._void += record.void
        return record

    def reveal_many(
        self,
        round: int,
        indices: Sequence[int],
        centres: Sequence[np.ndarray],
        *,
        region_size: int,
        unit: Unit = "region",
    ) -> list[RevealRecord]:
        """:meth:`reveal` for a chunk of images in one call (one actor round trip per chunk):
        ``centres[k]`` are image ``indices[k]``'s picks. Each image's reveal is idempotent as
        :meth:`reveal`'s, so a chunk retried after a failure part-way repeats what was done for
        free. Every image's centres are checked before any image is revealed."""
        indices = [self._check_index(i) for i in indices]
        if len(centres) != len(indices):
            raise ValueError(f"reveal_many needs one centres array per index, but got {len(centres)} for {len(indices)}")
        checked = [self._check_centres(c, i) for i, c in zip(indices, centres, strict=True)]
        return [
            self.reveal(round, i, c, region_size=region_size, unit=unit)
            for i, c in zip(indices, checked, strict=True)
        ]

    def centres_of(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Every centre picked so far (int32 ``[n, 2]``, pick order) of each image in
        ``indices``: the compact suppression state a scorer needs to select where its maps are
        (:func:`~halo_ray.acquisition.square_mask` of them is :meth:`suppressed`)."""
        return [self._centres[self._check_index(i)].copy() for i in indices]

    def images_without(self, round: int) -> list[int]:
        """Indices of the images that have no reveal record for ``round`` yet (what a round,
        or a resumed one, still has to select), in index order."""
        round = self._check_round(round)
        return [i for i, calls in enumerate(self._calls) if round not in calls]

    def _replay(
        self, stored: _Call, picks: np.ndarray, region_size: int, unit: str
    ) -> RevealRecord:
        """Answer a retried call with its stored record, if it really is the same call."""
        rec = stored.record
        previous = self.centres(rec.index, round=rec.round)
        if stored.unit != unit or stored.region_size != region_size:
            raise ValueError(
                f"reveal(round={rec.round}, index={rec.index}) was already made with "
                f"unit={stored.unit!r}, region_size={stored.region_size}, but is repeated with "
                f"unit={unit!r}, region_size={region_size}; a retried call must be the same call"
            )
        if not np.array_equal(previous, picks):
            raise ValueError(
                f"reveal(round={rec.round}, index={rec.index}) was already made with "
                f"{len(previous)} centres, and the {len(picks)} centres given now differ; a "
                f"retried call must pass the same centres in the same order (selection must be "
                f"deterministic per round)"
            )
        return rec

    def _oracle_values(self, index: int, flat: np.ndarray) -> np.ndarray:
        """Ask the oracle for image ``index`` once and return its labels at ``flat`` as uint8."""
        label_map = _to_numpy(self._oracle.labels(index))
        if tuple(label_map.shape) != self._shapes[index]:
            raise ValueError(
                f"oracle.labels({index}) returned shape {tuple(label_map.shape)}, "
                f"but the pool holds image {index} as (H, W)={self._shapes[index]}"
            )
        if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
            raise ValueError(
                f"oracle.labels({index}) must return integer train ids, but got dtype "
                f"{label_map.dtype}"
            )
        values = label_map.reshape(-1)[flat]
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(
                f"oracle.labels({index}) must return train ids in [0, 255], but got values in "
                f"[{values.min()}, {values.max()}]"
            )
        return values.astype(np.uint8)

    # ---- selection feedback -----------------------------------------------------------------

    def centres(self, index: int, *, round: int | None = None) -> np.ndarray:
        """Pick centres of image ``index`` (int64 ``[n, 2]``, row/col, pick order), all rounds
        or only ``round``."""
        index = self._check_index(index)
        c = self._centres[index]
        if round is not None:
            c = c[self._pick_round[index] == round]
        return c.astype(np.int64)

    def suppressed(self, index: int, side: int) -> np.ndarray:
        """Persistent suppression mask of image ``index``: bool ``[H, W]``, True inside the
        ``side × side`` window (odd, clipped) of every centre picked so far. Feed it to the
        next round's selection as ``active``."""
        index = self._check_index(index)
        side = _check_odd_side("side", side)
        h, w = self._shapes[index]
        points = np.zeros((h, w), bool)  # [H, W]
        c = self._centres[index]
        points[c[:, 0], c[:, 1]] = True
        return _box_any(points, side)

    # ---- dense views (built on demand) ------------------------------------------------------

    def labelled_mask(self, index: int) -> np.ndarray:
        """bool ``[H, W]``: True where the pixel was revealed (void pixels included)."""
        index = self._check_index(index)
        h, w = self._shapes[index]
        return np.unpackbits(self._mask[index], count=h * w).reshape(h, w).astype(bool)

    def labels(self, index: int) -> np.ndarray:
        """uint8 ``[H, W]`` revealed train ids; ``ignore_index`` where unlabelled or void."""
        index = self._check_index(index)
        h, w = self._shapes[index]
        out = np.full(h * w, self._ignore, np.uint8)
        out[self._flat[index]] = self._pix_label[index]
        return out.reshape(h, w)

    def round_map(self, index: int) -> np.ndarray:
        """uint8 ``[H, W]``: 0 where unlabelled, else the round in which the pixel was revealed."""
        index = self._check_index(index)
        h, w = self._shapes[index]
        out = np.zeros(h * w, np.uint8)
        out[self._flat[index]] = self._pix_round[index]
        return out.reshape(h, w)

    def revealed_labels(self, *, rounds: Sequence[int] | None = None) -> dict[str, Any]:
        """The revealed non-void labels of every image, compact: what a trainer needs.

        One call returns all images at once (a single round trip when the pool is an actor):
        ``counts`` int64 ``[N]`` (pixels per image), ``flat`` int32 ``[M]`` (flat pixel index
        ``row · W + col`` in the image's native ``(H, W)``, images concatenated in index order,
        reveal order within an image), ``label`` uint8 ``[M]`` (train ids) and ``shapes``
        (``[[H, W], …]``). Void pixels are left out (they carry no label), so an image has
        ``counts > 0`` exactly when it holds a revealed non-void pixel. ``rounds`` restricts
        the result to pixels revealed in those rounds (one round's new labels); ``None``
        gives every round. About 5 bytes per labelled pixel, never a dense map.
        """
        wanted = None
        if rounds is not None:
            wanted = np.asarray([self._check_round(r) for r in rounds], np.uint8)
        flats, labels = [], []
        for i in range(len(self._shapes)):
            keep = self._pix_label[i] != self._ignore  # [n_i]
            if wanted is not None:
                keep &= np.isin(self._pix_round[i], wanted)
            flats.append(self._flat[i][keep])
            labels.append(self._pix_label[i][keep])
        return {
            "shapes": [[h, w] for h, w in self._shapes],
            "counts": np.asarray([len(f) for f in flats], np.int64),
            "flat": np.concatenate(flats) if flats else np.zeros(0, np.int32),
            "label": np.concatenate(labels) if labels else np.zeros(0, np.uint8),
        }

    # ---- counters ---------------------------------------------------------------------------

    @property
    def num_images(self) -> int:
        """Number of images in the pool."""
        return len(self._shapes)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(H, W)`` of every image."""
        return list(self._shapes)

    @property
    def ignore_index(self) -> int:
        """Label value of void pixels."""
        return self._ignore

    @property
    def labelled_pixels(self) -> int:
        """Distinct revealed non-void pixels: the budget spent so far."""
        return self._labelled

    @property
    def void_pixels(self) -> int:
        """Distinct revealed void pixels (not charged to the budget)."""
        return self._void

    @property
    def total_pixels(self) -> int:
        """Pixels of all images together."""
        return sum(h * w for h, w in self._shapes)

    @property
    def labelled_pct(self) -> float:
        """``100 · labelled_pixels / total_pixels``."""
        return 100.0 * self._labelled / self.total_pixels

    def summary(self) -> dict[str, float | int]:
        """Budget totals as one plain dict (one call, so it also works through a Ray actor)."""
        return {
            "labelled_pixels": self.labelled_pixels,
            "void_pixels": self.void_pixels,
            "total_pixels": self.total_pixels,
            "labelled_pct": self.labelled_pct,
        }

    def rounds_done(self, index: int) -> list[int]:
        """Rounds, ascending, for which image ``index`` has a reveal record."""
        index = self._check_index(index)
        return sorted(self._calls[index])

    def record(self, round: int, index: int) -> RevealRecord | None:
        """The record of (round, image), or None when that call has not been made."""
        call = self._calls[self._check_index(index)].get(round)
        return None if call is None else call.record

    # ---- ledger -----------------------------------------------------------------------------

    def _sorted_calls(self) -> list[_Call]:
        """All stored calls, sorted by round then image (independent of call order)."""
        calls = [c for per_image in self._calls for c in per_image.values()]
        return sorted(calls, key=lambda c: (c.record.round, c.record.index))

    def ledger(self) -> list[dict[str, int]]:
        """One row per (round, image), sorted by round then image: round, index, picks,
        pixels, void. ``sum(pixels) == labelled_pixels``, ``sum(void) == void_pixels``."""
        return [
            {
                "round": r.round,
                "index": r.index,
                "picks": r.picks,
                "pixels": r.pixels,
                "void": r.void,
            }
            for r in (c.record for c in self._sorted_calls())
        ]

    def round_totals(self) -> dict[int, dict[str, int]]:
        """Per round: ``{"images", "picks", "pixels", "void"}`` summed over the images."""
        totals: dict[int, dict[str, int]] = {}
        for row in self.ledger():
            t = totals.setdefault(row["round"], {"images": 0, "picks": 0, "pixels": 0, "void": 0})
            t["images"] += 1
            for key in ("picks", "pixels", "void"):
                t[key] += row[key]
        return totals

    # ---- memory -----------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes of the stored state: packed masks (1 bit/pixel), 6 bytes per revealed pixel
        (int32 index + uint8 round + uint8 label), 9 bytes per pick (2 × int32 + uint8 round)
        and :data:`LEDGER_ENTRY_BYTES` per ledger entry. Python object headers are not counted
        (a constant per image; see ``benchmarks/pool_memory.py`` for a tracemalloc check)."""
        arrays = (
            self._mask
            + self._flat
            + self._pix_round
            + self._pix_label
            + self._centres
            + self._pick_round
        )
        n_calls = sum(len(calls) for calls in self._calls)
        return sum(a.nbytes for a in arrays) + LEDGER_ENTRY_BYTES * n_calls

    # ---- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The pool's state as numpy arrays and Python primitives only (a run checkpoint stores
        the arrays as tensors: ``weights_only``-loadable).

        Per-image arrays are concatenated over images (counts per image kept), so the number
        of arrays does not grow with the dataset. The oracle is not part of the state.
        """

        def cat(arrays: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
            return np.concatenate(arrays) if arrays else empty

        return {
            "format": STATE_FORMAT,
            "shapes": [[h, w] for h, w in self._shapes],
            "ignore_index": self._ignore,
            "mask_bits": cat(self._mask, np.zeros(0, np.uint8)),
            "pixel_counts": np.array([len(a) for a in self._flat], np.int64),
            "pixel_flat": cat(self._flat, np.zeros(0, np.int32)),
            "pixel_round": cat(self._pix_round, np.zeros(0, np.uint8)),
            "pixel_label": cat(self._pix_label, np.zeros(0, np.uint8)),
            "pick_counts": np.array([len(a) for a in self._centres], np.int64),
            "pick_centres": cat(self._centres, np.zeros((0, 2), np.int32)),
            "pick_round": cat(self._pick_round, np.zeros(0, np.uint8)),
            "calls": [
                {
                    "round": c.record.round,
                    "index": c.record.index,
                    "picks": c.record.picks,
                    "pixels": c.record.pixels,
                    "void": c.record.void,
                    "region_size": c.region_size,
                    "unit": c.unit,
                }
                for c in self._sorted_calls()
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` exactly (its arrays as numpy arrays or tensors). The
        state must come from a pool with the same
        image shapes and ``ignore_index``; it is checked for consistency before anything is
        replaced, so a failed load leaves the pool unchanged."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"state['format'] must be {STATE_FORMAT!r}, but got {state.get('format')!r}; "
                f"pass the dict returned by LabelPool.state_dict()"
            )
        shapes = [tuple(int(v) for v in s) for s in state["shapes"]]
        if len(shapes) != len(self._shapes):
            raise ValueError(
                f"state holds {len(shapes)} images, but this pool has {len(self._shapes)}; "
                f"build the pool over the same target-train images"
            )
        for i, (got, want) in enumerate(zip(shapes, self._shapes, strict=True)):
            if got != want:
                raise ValueError(
                    f"state image {i} has shape (H, W)={got}, but this pool has {want}"
                )
        if int(state["ignore_index"]) != self._ignore:
            raise ValueError(
                f"state ignore_index={state['ignore_index']} differs from this pool's "
                f"ignore_index={self._ignore}"
            )

        mask_sizes = [math.ceil(h * w / 8) for h, w in self._shapes]
        masks = self._split(_to_numpy(state["mask_bits"]).astype(np.uint8), mask_sizes, "mask_bits")
        pix_counts = [int(v) for v in _to_numpy(state["pixel_counts"])]
        pick_counts = [int(v) for v in _to_numpy(state["pick_counts"])]
        flat = self._split(
            _to_numpy(state["pixel_flat"]).astype(np.int32), pix_counts, "pixel_flat"
        )
        pix_round = self._split(
            _to_numpy(state["pixel_round"]).astype(np.uint8), pix_counts, "pixel_round"
        )
        pix_label = self._split(
            _to_numpy(state["pixel_label"]).astype(np.uint8), pix_counts, "pixel_label"
        )
        centres = self._split(
            _to_numpy(state["pick_centres"]).astype(np.int32).reshape(-1, 2),
            pick_counts,
            "pick_centres",
        )
        pick_round = self._split(
            _to_numpy(state["pick_round"]).astype(np.uint8), pick_counts, "pick_round"
        )

        n = len(self._shapes)
        calls: list[dict[int, _Call]] = [{} for _ in range(n)]
        for c in state["calls"]:
            rec = RevealRecord(
                round=int(c["round"]),
                index=int(c["index"]),
                picks=int(c["picks"]),
                pixels=int(c["pixels"]),
                void=int(c["void"]),
            )
            self._check_round(rec.round)
            self._check_index(rec.index)
            calls[rec.index][rec.round] = _Call(rec, int(c["region_size"]), str(c["unit"]))

        for i, (h, w) in enumerate(self._shapes):
            self._check_image_state(
                i, h * w, masks[i], flat[i], pix_round[i], pix_label[i], pick_round[i], calls[i]
            )

        self._mask, self._flat, self._pix_round, self._pix_label = masks, flat, pix_round, pix_label
        self._centres, self._pick_round, self._calls = centres, pick_round, calls
        records = [c.record for per_image in calls for c in per_image.values()]
        self._labelled = sum(r.pixels for r in records)
        self._void = sum(r.void for r in records)

    def _check_image_state(
        self,
        i: int,
        size: int,
        mask: np.ndarray,
        flat: np.ndarray,
        pix_round: np.ndarray,
        pix_label: np.ndarray,
        pick_round: np.ndarray,
        calls: dict[int, _Call],
    ) -> None:
        """Check that one image's restored arrays agree with each other and with its ledger."""
        if flat.size and (flat.min() < 0 or flat.max() >= size):
            raise ValueError(
                f"state is inconsistent: image {i} has pixel indices outside [0, {size})"
            )
        popcount = int(_POPCOUNT[mask].sum(dtype=np.int64))  # O(size / 8), padding bits included
        distinct = np.unique(flat).size == flat.size
        if not distinct or popcount != flat.size or not _bits_at(mask, flat.astype(np.int64)).all():
            raise ValueError(
                f"state is inconsistent: image {i}'s mask_bits do not match its "
                f"{flat.size} revealed pixels"
            )
        for r in set(pix_round.tolist()) | set(pick_round.tolist()) | set(calls):
            rec = calls[r].record if r in calls else None
            in_round = pix_round == r
            stored = (
                int(np.count_nonzero(pick_round == r)),
                int(np.count_nonzero(in_round & (pix_label != self._ignore))),
                int(np.count_nonzero(in_round & (pix_label == self._ignore))),
            )
            if rec is None or (rec.picks, rec.pixels, rec.void) != stored:
                raise ValueError(
                    f"state is inconsistent: image {i} round {r} stores (picks, pixels, void)="
                    f"{stored}, but its ledger entry is {rec}"
                )

    def _split(self, array: np.ndarray, counts: list[int], name: str) -> list[np.ndarray]:
        """Split a concatenated per-image array back into per-image copies."""
        if len(counts) != len(self._shapes) or sum(counts) != len(array):
            raise ValueError(
                f"state is inconsistent: {name} has {len(array)} entries over "
                f"{len(counts)} per-image counts adding up to {sum(counts)}, but this pool has "
                f"{len(self._shapes)} images"
            )
        return [part.copy() for part in np.split(array, np.cumsum(counts)[:-1])]

    def __repr__(self) -> str:
        return (
            f"LabelPool(images={self.num_images}, labelled_pixels={self._labelled}, "
            f"void_pixels={self._void}, labelled_pct={self.labelled_pct:.4f})"
        )
