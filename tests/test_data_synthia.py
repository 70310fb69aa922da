"""SYNTHIA: 16-bit PNG decoding (OpenCV), the id → trainId map, 16/13-class mIoU, the reader."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from png_writer import _chunk, encode_png, write_png

from halo_ray.data import (
    LAYOUTS,
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    DatasetError,
    LabelError,
    SYNTHIADataset,
    decode_png,
    open_dataset,
    read_png,
    restrict_to_synthia_classes,
    synthia_class_iou,
    synthia_miou,
    synthia_to_train_ids,
    to_synthia_16,
)
from halo_ray.data.layouts import InvalidLabelError, synthia_files
from halo_ray.data.png16 import PngError, check_png_structure

# SYNTHIA id → Cityscapes trainId, written out from the public facts: the SYNTHIA
# RAND_CITYSCAPES README names the ids, RIPU's core/datasets/synthia.py picks the 16
# evaluated ones (its 16-class ids 0..15 are these trainIds in order).
EXPECTED = {
    0: 255, 1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18,
    12: 17, 13: 255, 14: 255, 15: 6, 16: 255, 17: 12, 18: 255, 19: 15, 20: 255, 21: 3, 22: 255,
}  # fmt: skip


# ---- PNG decoding (OpenCV through decode_png) ---------------------------------------------------

SHAPES = [(1, 1), (3, 5), (7, 13), (16, 1), (5, 33)]  # odd widths and a one-pixel row


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("filters", ["cycle", 0, 1, 2, 3, 4, "random"])
@pytest.mark.parametrize("interlace", [False, True])
def test_decoder_is_bit_exact_for_every_filter(dtype, channels, filters, interlace):
    rng = np.random.default_rng(channels * 10 + (filters if isinstance(filters, int) else 7))
    for h, w in SHAPES:
        array = rng.integers(0, np.iinfo(dtype).max + 1, (h, w, channels), dtype=dtype)
        if filters == "cycle":
            f = None  # 0, 1, 2, 3, 4, 0, … row by row
        elif filters == "random":
            f = rng.integers(0, 5, h).tolist()
        else:
            f = filters
        data = encode_png(array, f, interlace=interlace)
        out = decode_png(data)
        assert out.dtype == dtype and out.shape == (h, w, channels)
        assert np.array_equal(out, array)
        for ch in range(channels):
            assert np.array_equal(decode_png(data, channel=ch), array[:, :, ch])


def test_decoder_on_label_like_maps_with_ties():
    """Flat regions make Paeth's three distances tie often (the spec: ties prefer a, then b)."""
    h, w = 23, 31
    ids = (np.arange(w)[None, :] // 4 + np.arange(h)[:, None] // 5) % 23  # [H, W]
    label = np.stack([ids, ids * 1000 % 65536, np.zeros_like(ids)], axis=-1).astype(np.uint16)
    for f in (3, 4, None, [4, 3] * 11 + [1]):
        assert np.array_equal(decode_png(encode_png(label, f), channel=0), label[:, :, 0])
        assert np.array_equal(decode_png(encode_png(label, f)), label)


def test_ancillary_chunks_leave_the_samples_alone():
    """No gamma, sBIT shift or orientation is applied; a tRNS alpha OpenCV adds is dropped."""
    rgb = np.random.default_rng(2).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    grey = rgb[..., 0].copy()
    exif = bytes.fromhex("4d4d002a000000080001011200030000000100030000000000000000")  # rotate 180
    for array, extra in [
        (rgb, [(b"gAMA", struct.pack(">I", 45455)), (b"sBIT", bytes([5, 6, 5]))]),
        (rgb, [(b"eXIf", exif), (b"tRNS", struct.pack(">3H", *rgb[0, 0]))]),
        (grey, [(b"tRNS", struct.pack(">H", grey[0, 0])), (b"sBIT", b"\x03")]),
    ]:
        data = encode_png(array, None)
        data = data[:33] + b"".join(_chunk(kind, payload) for kind, payload in extra) + data[33:]
        out = decode_png(data)
        assert out.dtype == np.uint16 and np.array_equal(out.reshape(array.shape), array)


def test_pillow_keeps_only_the_high_byte_of_48_bit_pngs_opencv_keeps_all(tmp_path):
    """Why decoding goes through OpenCV: Pillow (≤12) reads a 16-bit RGB PNG as 8-bit RGB,
    so ids become 0; OpenCV gives uint16 exactly, in BGR order and only with IMREAD_UNCHANGED
    (its default IMREAD_COLOR also drops the low byte)."""
    label = np.zeros((2, 4, 3), np.uint16)
    label[..., 0] = [[3, 21, 300, 22], [0, 10, 65535, 1]]
    label[..., 1] = 7
    path = write_png(tmp_path / "l.png", label)
    with Image.open(path) as im:
        pil = np.array(im)
    assert pil.dtype == np.uint8 and np.array_equal(pil[..., 0], label[..., 0] >> 8)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and np.array_equal(raw, label[..., ::-1])  # BGR
    colour = cv2.imread(str(path))
    assert colour.dtype == np.uint8 and np.array_equal(colour[..., 2], label[..., 0] >> 8)
    assert np.array_equal(decode_png(path.read_bytes(), channel=0), label[..., 0])
    assert np.array_equal(decode_png(path.read_bytes()), label)  # RGB order


def test_read_png_with_a_non_ascii_path(tmp_path):
    """Decoding goes through bytes (cv2.imdecode): cv2.imread fails on such paths on Windows."""
    array = np.arange(24, dtype=np.uint16).reshape(2, 4, 3) * 1000
    path = write_png(tmp_path / "Ünïcødé 標籤" / "0000000.png", array)
    assert np.array_equal(read_png(path), array)
    assert np.array_equal(read_png(str(path), channel=2), array[..., 2])


def _rows_png(header: tuple[int, int, int, int, int], scan: bytes) -> bytes:
    """A PNG with the given IHDR fields (w, h, depth, colour type, interlace) and raw scan."""
    w, h, depth, ctype, interlace = header
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(scan))
        + _chunk(b"IEND", b"")
    )


def test_decoder_errors_name_what_is_wrong():
    good = encode_png(np.arange(30, dtype=np.uint16).reshape(2, 5, 3))
    with pytest.raises(PngError, match="bad signature"):
        decode_png(b"GIF89a" + good[6:])
    with pytest.raises(PngError, match="truncated"):
        decode_png(good[: len(good) - 20])
    flipped = bytearray(good)
    flipped[45] ^= 0x40  # inside the IDAT payload
    with pytest.raises(PngError, match="CRC mismatch in chunk 'IDAT'"):
        decode_png(bytes(flipped))
    with pytest.raises(PngError, match="CRC mismatch"):
        check_png_structure(bytes(flipped))
    with pytest.raises(PngError, match="row 1 has filter type 7"):
        decode_png(_rows_png((2, 2, 8, 0, 0), b"\x00ab\x07cd"))
    with pytest.raises(PngError, match="needs 6"):  # IHDR says 2 rows, data holds one
        decode_png(_rows_png((2, 2, 8, 0, 0), b"\x00ab"))
    with pytest.raises(PngError, match="colour type 3"):
        decode_png(_rows_png((2, 1, 8, 3, 0), b"\x00ab"))
    with pytest.raises(PngError, match="colour type 0 at bit depth 4"):
        decode_png(_rows_png((2, 1, 4, 0, 0), b"\x00a"))
    idat = bytearray(zlib.compress(bytes(2 * 31)))  # 2 rows of 5 RGB 16-bit pixels
    idat[-1] ^= 1  # the zlib stream's adler32; the chunk CRC is right
    with pytest.raises(PngError, match="zlib: .*incorrect data check"):
        decode_png(good[:33] + _chunk(b"IDAT", bytes(idat)) + _chunk(b"IEND", b""))
    assert decode_png(_rows_png((1, 1, 16, 0, 1), b"\x00ab")).tolist() == [[[0x6162]]]  # Adam7
    with pytest.raises(PngError, match="bit depth 16 with colour type 3"):
        decode_png(_rows_png((1, 1, 16, 3, 0), b"\x00ab"))
    with pytest.raises(ValueError, match=r"channel must be None or an integer in \[0, 2\]"):
        decode_png(good, channel=3)


# ---- id maps -----------------------------------------------------------------------------------


def test_every_synthia_id_maps_like_the_published_table():
    ids = np.arange(23, dtype=np.uint16).reshape(1, 23)
    out = synthia_to_train_ids(ids, source="t")
    assert out.dtype == np.uint8
    assert out[0].tolist() == [EXPECTED[i] for i in range(23)]
    assert synthia_to_train_ids(ids.astype(np.uint8), source="t").tolist() == out.tolist()
    assert synthia_to_train_ids(ids.astype(np.int64), source="t").tolist() == out.tolist()


def test_sixteen_and_thirteen_classes():
    assert SYNTHIA_16_CLASSES == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "sky", "person", "rider", "car", "bus",
        "motorcycle", "bicycle",
    )  # fmt: skip
    assert SYNTHIA_13_CLASSES == tuple(
        c for c in SYNTHIA_16_CLASSES if c not in ("wall", "fence", "pole")
    )
    assert sorted(v for v in EXPECTED.values() if v != 255) == [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18,
    ]  # fmt: skip


@pytest.mark.parametrize("bad", [23, 255, 300, 65535])
def test_ids_outside_the_map_raise_naming_source_value_and_count(bad):
    ids = np.full((3, 4), 3, np.uint16)
    ids[0, :2] = bad
    with pytest.raises(
        LabelError, match=rf"lbl\.png: label value\(s\) {bad} \(2 px\) are not SYNTHIA"
    ):
        synthia_to_train_ids(ids, source="lbl.png")
    with pytest.raises(LabelError, match=rf"{bad} \(2 px\)"):
        synthia_to_train_ids(ids.astype(np.int32), source="x")
    with pytest.raises(LabelError, match="dtype float"):
        synthia_to_train_ids(ids.astype(np.float32), source="x")


def test_to_synthia_16_and_restriction():
    train = np.array(
        [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18, 255, 255, 0]]
    )
    assert to_synthia_16(train).tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 9],
        [10, 11, 12, 255, 13, 255, 14, 15, 255, 255, 0],
    ]
    restricted = restrict_to_synthia_classes(train)
    assert restricted.dtype == np.uint8
    assert restricted[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 10]
    assert restricted[1].tolist() == [11, 12, 13, 255, 15, 255, 17, 18, 255, 255, 0]
    with pytest.raises(ValueError, match=r"trainIds 0\.\.18 or 255, but got \[19\]"):
        to_synthia_16(np.array([19]))
    with pytest.raises(ValueError, match="train_ids"):
        restrict_to_synthia_classes(np.array([-1]))


# ---- 16-class mIoU and 13-class mIoU* ----------------------------------------------------------


def _known_confusion() -> np.ndarray:
    conf = np.zeros((19, 19), np.int64)
    conf[np.arange(19), np.arange(19)] = 10
    conf[0, 9] = 5  # road predicted as terrain: a miss of road
    conf[9, 8] = 7  # terrain ground truth: ignored, so vegetation gets no false positive
    conf[13, 15] = 10  # car predicted as bus
    conf[17, 17] = 0  # motorcycle absent from ground truth and prediction → NaN
    return conf


def test_class_iou_from_a_known_confusion_matrix():
    iou = synthia_class_iou(_known_confusion())
    expected = np.ones(16)
    expected[SYNTHIA_16_CLASSES.index("road")] = 10 / 15
    expected[SYNTHIA_16_CLASSES.index("car")] = 10 / 20
    expected[SYNTHIA_16_CLASSES.index("bus")] = 10 / 20
    expected[SYNTHIA_16_CLASSES.index("motorcycle")] = np.nan
    assert np.allclose(iou, expected, equal_nan=True)


def test_miou_16_and_13_closed_form():
    conf = _known_confusion()
    miou16 = (10 / 15 + 0.5 + 0.5 + 12) / 15 * 100  # 15 classes present (motorcycle NaN)
    miou13 = (10 / 15 + 0.5 + 0.5 + 9) / 12 * 100  # wall, fence, pole out; motorcycle NaN
    assert synthia_miou(conf) == pytest.approx(miou16)
    assert synthia_miou(conf, classes=13) == pytest.approx(miou13)
    iou16 = synthia_class_iou(conf) * 100
    assert synthia_miou(iou16) == pytest.approx(miou16)
    assert synthia_miou(iou16, classes=13) == pytest.approx(miou13)
    iou19 = np.full(19, 3.0)  # the absent classes' entries must not count
    iou19[[0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]] = iou16
    assert synthia_miou(iou19) == pytest.approx(miou16)
    assert synthia_miou(iou19, classes=13) == pytest.approx(miou13)


def test_miou_arguments():
    assert np.isnan(synthia_miou(np.zeros((19, 19))))
    with pytest.raises(ValueError, match="classes must be 16 .* or 13 .*, but got classes=19"):
        synthia_miou(np.zeros(16), classes=19)
    with pytest.raises(ValueError, match=r"but got shape \(18,\)"):
        synthia_miou(np.zeros(18))
    with pytest.raises(ValueError, match="19x19"):
        synthia_class_iou(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="non-negative"):
        synthia_class_iou(-np.ones((19, 19)))


# ---- the reader --------------------------------------------------------------------------------


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _synthia_label(h: int, w: int, seed: int) -> np.ndarray:
    """16-bit RGB label: every SYNTHIA id in channel 0, instance-like noise in the others."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.resize(np.arange(23), h * w)).reshape(h, w)
    other = rng.integers(0, 65536, (h, w, 2))
    return np.concatenate([ids[..., None], other], axis=-1).astype(np.uint16)


def _synthia_tree(root: Path, n: int = 3, hw=(7, 11)) -> list[tuple[Path, Path, np.ndarray]]:
    items = []
    for i in range(n):
        img, lbl = synthia_files(root, i)
        image = _rgb(*hw, seed=i)
        label = _synthia_label(*hw, seed=100 + i)
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(img)
        write_png(lbl, label, filters=None if i % 2 == 0 else [4, 3, 1, 2, 0, 4, 4])
        items.append((img, lbl, label[..., 0]))
    return items


def test_reader_returns_the_train_id_of_every_synthia_id(tmp_path):
    items = _synthia_tree(tmp_path)
    ds = SYNTHIADataset(tmp_path)
    assert len(ds) == 3 and ds.layout == "synthia"
    assert ds.names == ["RGB/0000000.png", "RGB/0000001.png", "RGB/0000002.png"]
    lut = np.array([EXPECTED[i] for i in range(23)], np.uint8)
    for i, (img, lbl, ids) in enumerate(items):
        sample = ds[i]
        assert ds.image_path(i) == img and ds.label_path(i) == lbl
        assert sample.image.shape == (7, 11, 3) and sample.label.dtype == np.uint8
        assert np.array_equal(sample.image, np.asarray(Image.open(img)))
        assert np.array_equal(sample.label, lut[ids])
        assert np.array_equal(ds.load_label(i), sample.label)
        assert set(np.unique(sample.label)) == set(EXPECTED.values())  # every id was present
    assert not {9, 14, 16} & set(np.unique(ds[0].label).tolist())
    assert ds.label_train_ids == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


def test_reader_accepts_8_bit_labels_with_the_id_in_the_first_channel(tmp_path):
    items = _synthia_tree(tmp_path, n=3)
    rgb8 = np.stack([items[0][2], items[0][2] * 2, np.full_like(items[0][2], 9)], -1).astype(
        np.uint8
    )
    Image.fromarray(rgb8).save(items[0][1])  # 8-bit RGB
    Image.fromarray(items[1][2].astype(np.uint8)).save(items[1][1])  # 8-bit grey
    write_png(items[2][1], items[2][2].astype(np.uint16))  # 16-bit grey
    ds = SYNTHIADataset(tmp_path)
    lut = np.array([EXPECTED[i] for i in range(23)], np.uint8)
    for i in range(3):
        assert np.array_equal(ds.load_label(i), lut[items[i][2]])


def test_reader_resizes_like_the_others(tmp_path):
    _synthia_tree(tmp_path, n=1)
    s = SYNTHIADataset(tmp_path, size=(4, 6))[0]
    assert s.image.shape == (4, 6, 3) and s.label.shape == (4, 6)
    assert set(np.unique(s.label)) <= set(EXPECTED.values())


def test_out_of_map_id_names_file_value_and_count(tmp_path):
    items = _synthia_tree(tmp_path, n=2)
    label = _synthia_label(7, 11, seed=5)
    label[0, :3, 0] = 300
    label[1, 0, 0] = 23
    write_png(items[1][1], label)
    ds = SYNTHIADataset(tmp_path)
    with pytest.raises(
        InvalidLabelError, match=rf"{items[1][1]}: label value\(s\) 23 \(1 px\), 300 \(3 px\)"
    ) as info:
        ds[1]
    assert isinstance(info.value, LabelError) and isinstance(info.value, DatasetError)
    assert ds[0].label.shape == (7, 11)


def test_corrupt_and_truncated_labels_name_the_file(tmp_path):
    items = _synthia_tree(tmp_path, n=2)
    data = items[0][1].read_bytes()
    items[0][1].write_bytes(data[: len(data) // 2])
    items[1][1].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = SYNTHIADataset(tmp_path)
    with pytest.raises(DatasetError, match=f"cannot read label file {items[0][1]}: truncated"):
        ds[0]
    with pytest.raises(DatasetError, match=f"cannot read label file {items[1][1]}"):
        ds.load_label(1)


def test_missing_label_size_mismatch_and_missing_root(tmp_path):
    items = _synthia_tree(tmp_path, n=2)
    write_png(items[0][1], _synthia_label(7, 10, seed=1))
    with pytest.raises(
        DatasetError, match=rf"size mismatch: image {items[0][0]} is 11x7 .* is 10x7"
    ):
        SYNTHIADataset(tmp_path)[0]
    items[1][1].unlink()
    with pytest.raises(
        DatasetError, match=rf"image {items[1][0]} has no label file: expected {items[1][1]}"
    ):
        SYNTHIADataset(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(
        DatasetError, match=rf"{missing} does not exist; expected .*RGB/<nnnnnnn>\.png"
    ):
        SYNTHIADataset(missing)
    with pytest.raises(DatasetError, match=r"GT/LABELS does not exist"):
        (tmp_path / "other" / "RGB").mkdir(parents=True)
        SYNTHIADataset(tmp_path / "other")


def test_registered_as_a_layout_without_splits(tmp_path):
    _synthia_tree(tmp_path, n=2)
    assert LAYOUTS["synthia"] is SYNTHIADataset
    assert len(open_dataset("synthia", tmp_path)) == 2
    assert len(open_dataset("SYNTHIA", tmp_path, "all", size=(3, 3))) == 2
    with pytest.raises(ValueError, match="the synthia layout has no splits"):
        open_dataset("synthia", tmp_path, "train")
