"""Cityscapes label maps checked against the official cityscapesScripts table."""

from __future__ import annotations

import numpy as np
import pytest

from halo_ray.data.labels import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_PALETTE,
    LABEL_ID_TO_TRAIN_ID,
    TRAIN_ID_COLOURS,
    TRAIN_ID_TO_LABEL_ID,
    LabelError,
    from_train_ids,
    label_palette,
    to_train_ids,
)

# (labelId, trainId) of the 19 evaluated classes, from cityscapesScripts helpers/labels.py
OFFICIAL_TRAIN = [
    (7, 0),
    (8, 1),
    (11, 2),
    (12, 3),
    (13, 4),
    (17, 5),
    (19, 6),
    (20, 7),
    (21, 8),
    (22, 9),
    (23, 10),
    (24, 11),
    (25, 12),
    (26, 13),
    (27, 14),
    (28, 15),
    (31, 16),
    (32, 17),
    (33, 18),
]
OFFICIAL_VOID = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]


def test_class_names_in_train_id_order():
    assert CITYSCAPES_CLASSES == (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )
    assert IGNORE_INDEX == 255


@pytest.mark.parametrize(("label_id", "train_id"), OFFICIAL_TRAIN)
def test_each_train_class_maps_like_the_official_table(label_id, train_id):
    assert LABEL_ID_TO_TRAIN_ID[label_id] == train_id
    assert to_train_ids(np.array([[label_id]], np.uint8), source="t")[0, 0] == train_id
    assert TRAIN_ID_TO_LABEL_ID[train_id] == label_id


def test_every_other_official_id_is_void():
    assert sorted(OFFICIAL_VOID + [lid for lid, _ in OFFICIAL_TRAIN]) == list(range(34))
    out = to_train_ids(np.array(OFFICIAL_VOID, np.uint8), source="t")
    assert out.tolist() == [255] * len(OFFICIAL_VOID)


@pytest.mark.parametrize("bad", [34, 40, 200, 254, 255])
def test_ids_outside_the_official_range_raise_naming_source_and_id(bad):
    label = np.full((3, 4), 7, np.uint8)
    label[1, 2] = bad
    with pytest.raises(LabelError, match=rf"some/file\.png: label value\(s\) {bad} \(1 px\)"):
        to_train_ids(label, source="some/file.png")


def test_label_error_is_a_value_error_and_lists_each_bad_id():
    label = np.array([[40, 41, 41, 7]], np.uint8)
    with pytest.raises(ValueError, match=r"40 \(1 px\), 41 \(2 px\)"):
        to_train_ids(label, source="x")


@pytest.mark.parametrize(
    "label", [np.array([[-1, 7]], np.int32), np.array([[300, 7]], np.uint16), np.array([[7.0]])]
)
def test_wide_negative_or_float_inputs_are_rejected(label):
    with pytest.raises(LabelError):
        to_train_ids(label, source="x")


def test_wide_integer_inputs_in_range_are_accepted():
    out = to_train_ids(np.array([[7, 33, 0]], np.int64), source="x")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 18, 255]]


def test_lut_is_read_only_and_256_long():
    assert LABEL_ID_TO_TRAIN_ID.shape == (256,) and LABEL_ID_TO_TRAIN_ID.dtype == np.uint8
    with pytest.raises(ValueError):
        LABEL_ID_TO_TRAIN_ID[7] = 3


def test_official_colours():
    assert LABEL_ID_PALETTE[7].tolist() == [128, 64, 128]  # road
    assert LABEL_ID_PALETTE[23].tolist() == [70, 130, 180]  # sky
    assert LABEL_ID_PALETTE[26].tolist() == [0, 0, 142]  # car
    assert LABEL_ID_PALETTE[33].tolist() == [119, 11, 32]  # bicycle
    assert LABEL_ID_PALETTE[19].tolist() == [250, 170, 30]  # traffic light
    assert TRAIN_ID_COLOURS[10].tolist() == [70, 130, 180]
    flat = label_palette()
    assert len(flat) == 768 and flat[7 * 3 : 7 * 3 + 3] == [128, 64, 128]


def test_from_train_ids_round_trips_and_rejects_non_train_ids():
    train = np.array([list(range(19)) + [255]], np.uint8)
    assert np.array_equal(to_train_ids(from_train_ids(train), source="x"), train)
    with pytest.raises(ValueError, match="19"):
        from_train_ids(np.array([19]))
