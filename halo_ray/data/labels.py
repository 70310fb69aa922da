"""Cityscapes label maps: the 19 train classes, labelId → trainId, and the official colours.

GTAV, Cityscapes (``*_gtFine_labelIds.png``) and ACDC (``*_gt_labelIds.png``) all store
Cityscapes *labelIds* (0..33). Models train on the 19 *trainIds* (0..18) with
:data:`IGNORE_INDEX` for void classes. The table below is written from the public
cityscapesScripts ``helpers/labels.py`` (name, labelId, trainId, colour).

Which stored values are valid input
-----------------------------------
Only the official labelIds 0..33 are accepted; anything else raises :class:`LabelError`.
In particular **255 is rejected**: cityscapesScripts never draws the license plate
(labelId -1), so 255 (-1 as uint8) does not occur in official labelId files, and a 255
in a "labelIds" file almost always means the user pointed the reader at
``*_labelTrainIds.png`` files (0..18 + 255), which would otherwise be silently
misread (trainId 7 "traffic sign" would become labelId 7 "road").

A dataset that stores void under other values (a converted copy that writes 255 for
"unlabelled", say) names them explicitly: ``void_ids`` (the ``void_label_ids`` config key,
``halo-ray data check --void-label-ids``) maps exactly those values to :data:`IGNORE_INDEX`. They
may not be official labelIds, so a typo cannot silently erase a class.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

import numpy as np

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELS",
    "IGNORE_INDEX",
    "INVALID_TRAIN_ID",
    "check_void_ids",
    "label_id_lut",
    "LABEL_ID_PALETTE",
    "LABEL_ID_TO_TRAIN_ID",
    "LabelError",
    "NUM_CLASSES",
    "NUM_LABEL_IDS",
    "CityscapesLabel",
    "TRAIN_ID_COLOURS",
    "TRAIN_ID_TO_LABEL_ID",
    "from_train_ids",
    "label_palette",
    "to_train_ids",
]


class LabelError(ValueError):
    """A label map holds a value that is not an official Cityscapes labelId."""


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table."""

    name: str  # official class name
    label_id: int  # value stored in *_labelIds.png (GTAV / Cityscapes / ACDC)
    train_id: int  # 0..18, or 255 for void / ignored-in-evaluation classes
    colour: tuple[int, int, int]  # official RGB colour


IGNORE_INDEX = 255  # trainId of every void class; skipped by losses and metrics
INVALID_TRAIN_ID = 254  # LUT sentinel for values that are not labelIds (never returned)
NUM_CLASSES = 19
NUM_LABEL_IDS = 34  # official labelIds are 0..33

# fmt: off
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled",             0, 255, (  0,   0,   0)),
    CityscapesLabel("ego vehicle",           1, 255, (  0,   0,   0)),
    CityscapesLabel("rectification border",  2, 255, (  0,   0,   0)),
    CityscapesLabel("out of roi",            3, 255, (  0,   0,   0)),
    CityscapesLabel("static",                4, 255, (  0,   0,   0)),
    CityscapesLabel("dynamic",               5, 255, (111,  74,   0)),
    CityscapesLabel("ground",                6, 255, ( 81,   0,  81)),
    CityscapesLabel("road",                  7,   0, (128,  64, 128)),
    CityscapesLabel("sidewalk",              8,   1, (244,  35, 232)),
    CityscapesLabel("parking",               9, 255, (250, 170, 160)),
    CityscapesLabel("rail track",           10, 255, (230, 150, 140)),
    CityscapesLabel("building",             11,   2, ( 70,  70,  70)),
    CityscapesLabel("wall",                 12,   3, (102, 102, 156)),
    CityscapesLabel("fence",                13,   4, (190, 153, 153)),
    CityscapesLabel("guard rail",           14, 255, (180, 165, 180)),
    CityscapesLabel("bridge",               15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel",               16, 255, (150, 120,  90)),
    CityscapesLabel("pole",                 17,   5, (153, 153, 153)),
    CityscapesLabel("polegroup",            18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light",        19,   6, (250, 170,  30)),
    CityscapesLabel("traffic sign",         20,   7, (220, 220,   0)),
    CityscapesLabel("vegetation",           21,   8, (107, 142,  35)),
    CityscapesLabel("terrain",              22,   9, (152, 251, 152)),
    CityscapesLabel("sky",                  23,  10, ( 70, 130, 180)),
    CityscapesLabel("person",               24,  11, (220,  20,  60)),
    CityscapesLabel("rider",                25,  12, (255,   0,   0)),
    CityscapesLabel("car",                  26,  13, (  0,   0, 142)),
    CityscapesLabel("truck",                27,  14, (  0,   0,  70)),
    CityscapesLabel("bus",                  28,  15, (  0,  60, 100)),
    CityscapesLabel("caravan",              29, 255, (  0,   0,  90)),
    CityscapesLabel("trailer",              30, 255, (  0,   0, 110)),
    CityscapesLabel("train",                31,  16, (  0,  80, 100)),
    CityscapesLabel("motorcycle",           32,  17, (  0,   0, 230)),
    CityscapesLabel("bicycle",              33,  18, (119,  11,  32)),
)
# fmt: on
# The license plate (labelId -1, trainId -1) is deliberately absent: it is never stored.

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    lab.name
    for lab in sorted(CITYSCAPES_LABELS, key=lambda lab: lab.train_id)
    if lab.train_id != 255
)


def _build_lut() -> np.ndarray:
    """256-entry labelId → trainId table; non-labelIds map to :data:`INVALID_TRAIN_ID`."""
    lut = np.full(256, INVALID_TRAIN_ID, dtype=np.uint8)  # [256]
    for lab in CITYSCAPES_LABELS:
        lut[lab.label_id] = lab.train_id
    return lut


def _build_train_to_label() -> np.ndarray:
    """trainId → the labelId that produces it (first match, as in cityscapesScripts)."""
    out = np.zeros(NUM_CLASSES, dtype=np.uint8)  # [19]
    for lab in reversed(CITYSCAPES_LABELS):
        if lab.train_id != 255:
            out[lab.train_id] = lab.label_id
    return out


LABEL_ID_TO_TRAIN_ID: np.ndarray = _build_lut()  # [256] uint8
LABEL_ID_TO_TRAIN_ID.setflags(write=False)
TRAIN_ID_TO_LABEL_ID: np.ndarray = _build_train_to_label()  # [19] uint8
TRAIN_ID_TO_LABEL_ID.setflags(write=False)

LABEL_ID_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)  # [256, 3] colour per labelId
for _lab in CITYSCAPES_LABELS:
    LABEL_ID_PALETTE[_lab.label_id] = _lab.colour
LABEL_ID_PALETTE.setflags(write=False)

TRAIN_ID_COLOURS: np.ndarray = LABEL_ID_PALETTE[TRAIN_ID_TO_LABEL_ID].copy()  # [19, 3]
TRAIN_ID_COLOURS.setflags(write=False)


def label_palette() -> list[int]:
    """The 768-value flat palette (RGB per labelId) for 8-bit palette PNGs, as GTAV uses."""
    return LABEL_ID_PALETTE.reshape(-1).tolist()


def _describe_bad(values: np.ndarray, counts: np.ndarray, limit: int = 8) -> str:
    """'40 (12 px), 41 (3 px)' for the first ``limit`` offending values."""
    parts = [f"{int(v)} ({int(c)} px)" for v, c in zip(values[:limit], counts[:limit], strict=True)]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(parts) + more


def check_void_ids(void_ids: Iterable[object], *, name: str = "void_label_ids") -> tuple[int, ...]:
    """Validated, sorted extra void values: integers 0..255 that are not official labelIds."""
    values = tuple(void_ids)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= 255]
    if bad:
        raise ValueError(f"{name} must be integers 0..255, but got {name}={list(values)!r}")
    official = sorted(int(v) for v in values if v < NUM_LABEL_IDS)
    if official:
        raise ValueError(
            f"{name} must not name Cityscapes labelIds 0..{NUM_LABEL_IDS - 1} (it would erase their classes), "
            f"but got {official}"
        )
    return tuple(sorted({int(v) for v in values}))


@lru_cache(maxsize=16)
def label_id_lut(void_ids: tuple[int, ...] = ()) -> np.ndarray:
    """:data:`LABEL_ID_TO_TRAIN_ID` with ``void_ids`` (checked extra void values) mapped to
    :data:`IGNORE_INDEX`; read-only ``[256]``."""
    if not void_ids:
        return LABEL_ID_TO_TRAIN_ID
    lut = LABEL_ID_TO_TRAIN_ID.copy()
    lut[list(void_ids)] = IGNORE_INDEX
    lut.setflags(write=False)
    return lut


def to_train_ids(label_ids: np.ndarray, *, source: str, void_ids: tuple[int, ...] = ()) -> np.ndarray:
    """Map a Cityscapes labelId map to trainIds (0..18, :data:`IGNORE_INDEX` for void).

    ``source`` names where the map came from (a file path, "generator", …) so a bad value
    can be traced. ``void_ids`` (from :func:`check_void_ids`) are extra values read as void.
    Raises :class:`LabelError` naming the source and the offending values when any other
    value is not an official labelId 0..33 (see the module docstring for why 255 is rejected).
    """
    lut = label_id_lut(tuple(void_ids))
    arr = np.asarray(label_ids)
    if arr.dtype.kind not in "iub":
        raise LabelError(
            f"{source}: label_ids must be an integer array of Cityscapes labelIds, "
            f"but got dtype {arr.dtype}"
        )
    if arr.dtype == np.uint8:
        out = lut[arr]
        bad_mask = out == INVALID_TRAIN_ID
        if not bad_mask.any():
            return out
        values, counts = np.unique(arr[bad_mask], return_counts=True)
    else:
        wide = arr.astype(np.int64)
        in_range = (wide >= 0) & (wide < 256)
        out = lut[np.where(in_range, wide, 255)]
        bad_mask = ~in_range | (out == INVALID_TRAIN_ID)
        if not bad_mask.any():
            return out
        values, counts = np.unique(wide[bad_mask], return_counts=True)
    raise LabelError(
        f"{source}: label value(s) {_describe_bad(values, counts)} are not Cityscapes labelIds "
        f"(expected 0..{NUM_LABEL_IDS - 1}; a file of trainIds 0..18/255 is not a labelIds file; if this "
        f"dataset stores void as such values, list them in void_label_ids)"
    )


def from_train_ids(train_ids: np.ndarray) -> np.ndarray:
    """Inverse map for writing label files: trainId → labelId, :data:`IGNORE_INDEX` → 0.

    Raises ValueError for values that are neither 0..18 nor 255.
    """
    arr = np.asarray(train_ids)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"train_ids must be an integer array, but got dtype {arr.dtype}")
    lut = np.full(256, INVALID_TRAIN_ID, dtype=np.uint8)  # [256]
    lut[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    lut[IGNORE_INDEX] = 0
    wide = arr.astype(np.int64)
    out = lut[np.clip(wide, 0, 255)]
    bad = (wide < 0) | (wide > 255) | (out == INVALID_TRAIN_ID)
    if bad.any():
        values = np.unique(wide[bad])
        raise ValueError(
            f"train_ids must hold 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}, but got {values[:8].tolist()}"
        )
    return out
