"""check_dataset on tiny trees in each official layout, clean and with planted defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from png_writer import write_png

from halo_ray.data import (
    CheckReport,
    DatasetError,
    GTAVDataset,
    ProblemKind,
    check_dataset,
)
from halo_ray.data.labels import label_palette
from halo_ray.data.layouts import acdc_files, cityscapes_files, gtav_files, synthia_files

H, W = 6, 10  # every label below has 60 pixels


def _rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette(label_palette())
    else:
        im = Image.fromarray(array)
    im.save(path)
    return path


def _label_ids(a: int, b: int, c: int, counts=(20, 30, 10)) -> np.ndarray:
    """A 6x10 labelIds map with ``counts`` pixels of ids a, b, c (row-major runs)."""
    return np.repeat(np.array([a, b, c], np.uint8), counts).reshape(H, W)


def _synthia_label(ids: np.ndarray) -> np.ndarray:
    """16-bit RGB SYNTHIA label with ``ids`` in channel 0 and instance-like noise after."""
    noise = np.random.default_rng(int(ids.sum())).integers(0, 65536, ids.shape + (2,))
    return np.concatenate([ids[..., None], noise], axis=-1).astype(np.uint16)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _names(messages: list[str]) -> str:
    return "\n".join(messages)


# ---- clean trees: exact class pixel counts ----------------------------------------------------


def _expected_pixels(pairs: dict[int, int]) -> np.ndarray:
    """[20] from {trainId or 255: pixels}."""
    out = np.zeros(20, np.int64)
    for t, n in pairs.items():
        out[19 if t == 255 else t] += n
    return out


def test_clean_cityscapes_counts_every_class_pixel(tmp_path):
    # train: road 20, car 30, unlabeled 10 | sky 60 ; val: sidewalk 20, person 30, parking 10
    for i, ids in enumerate([_label_ids(7, 26, 0), np.full((H, W), 23, np.uint8)]):
        img, lbl = cityscapes_files(tmp_path, "train", "aachen", i, 19)
        _save(img, _rgb(seed=i))
        _save(lbl, ids)
        _save(lbl.with_name(lbl.name.replace("labelIds", "color")), _rgb())  # ignored
    img, lbl = cityscapes_files(tmp_path, "val", "lindau", 0, 19)
    _save(img, _rgb(seed=9))
    _save(lbl, _label_ids(8, 24, 9))
    report = check_dataset(tmp_path, "cityscapes", workers=1)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.n_images == 3 and report.n_labels == 3
    expected = _expected_pixels({0: 20, 13: 30, 255: 10 + 10, 10: 60, 1: 20, 11: 30})
    assert report.class_pixels.dtype == np.int64
    assert report.class_pixels.tolist() == expected.tolist()
    only_val = check_dataset(tmp_path, "cityscapes", split="val", workers=1)
    assert only_val.class_pixels.tolist() == _expected_pixels({1: 20, 11: 30, 255: 10}).tolist()
    assert np.allclose(report.class_percent()[[0, 10, 19]], [20 / 1.8, 60 / 1.8, 20 / 1.8])


def test_clean_synthia_counts_with_16_bit_labels(tmp_path):
    ids = np.repeat(np.array([3, 1, 21, 0, 22, 16]), [25, 10, 5, 4, 6, 10]).reshape(H, W)
    for i in range(2):
        img, lbl = synthia_files(tmp_path, i)
        _save(img, _rgb(seed=i))
        write_png(lbl, _synthia_label(np.roll(ids, i)), filters=[4, 3, 1, 0, 2, 4])
    report = check_dataset(tmp_path, "synthia", workers=1)
    assert report.ok, report.summary()
    # road 2x25, sky 2x10, wall 2x5; void, lanemarking and terrain (not evaluated) are void
    assert (
        report.class_pixels.tolist()
        == _expected_pixels({0: 50, 10: 20, 3: 10, 255: 2 * (4 + 6 + 10)}).tolist()
    )


def test_clean_generated_benchmark_matches_its_reader(tiny_benchmark):
    root = tiny_benchmark / "gtav"
    report = check_dataset(root, "gtav", workers=1)
    assert report.ok and report.n_images == report.n_labels == len(GTAVDataset(root))
    labels = np.concatenate([s.label.ravel() for s in GTAVDataset(root)])
    counts = np.bincount(np.where(labels == 255, 19, labels), minlength=20)
    assert report.class_pixels.tolist() == counts.tolist()


# ---- planted defects ---------------------------------------------------------------------------


@pytest.fixture
def broken_gtav(tmp_path):
    files = {}
    for i in range(1, 7):
        files[i] = gtav_files(tmp_path, i)
        _save(files[i][0], _rgb(seed=i))
        _save(files[i][1], _label_ids(7, 26, 0), palette=True)
    _save(files[2][1], np.full((4, 8), 7, np.uint8), palette=True)  # size mismatch
    files[3][1].unlink()  # image without label
    extra = _save(gtav_files(tmp_path, 9)[1], _label_ids(7, 7, 7), palette=True)  # label alone
    _save(files[4][1], _label_ids(7, 40, 255, counts=(57, 2, 1)), palette=True)  # ids 40, 255
    _truncate(files[5][0])  # truncated image
    files[6][1].write_bytes(b"not a png")  # corrupt label
    return tmp_path, files, extra


def test_gtav_defects_each_reported_in_the_right_list(broken_gtav):
    root, files, extra = broken_gtav
    report = check_dataset(root, "gtav", workers=1)
    assert not report.ok
    assert report.n_images == 6 and report.n_labels == 6
    p = report.problems
    assert len(p[ProblemKind.SIZE_MISMATCH]) == 1
    assert f"image {files[2][0]} is 10x6 (WxH) but label {files[2][1]} is 8x4" in _names(
        report.warnings
    )
    assert str(files[2][1]) not in _names(report.errors)  # GTAV: a warning, not an error
    assert p[ProblemKind.IMAGE_WITHOUT_LABEL] == [
        f"image without label: {files[3][0]} (expected {files[3][1]})"
    ]
    assert p[ProblemKind.LABEL_WITHOUT_IMAGE] == [
        f"label without image: {extra} (expected {root / 'images' / '00009.png'})"
    ]
    assert p[ProblemKind.IDS_OUTSIDE_MAP] == [
        f"label ids outside the map: {files[4][1]}: value(s) 40 (2 px), 255 (1 px) are not "
        "Cityscapes labelIds (expected 0..33; values that mean void in this dataset go in --void-label-ids / "
        "void_label_ids)"
    ]
    (unreadable_image,) = p[ProblemKind.UNREADABLE_IMAGE]
    assert str(files[5][0]) in unreadable_image and "truncated" in unreadable_image
    (unreadable_label,) = p[ProblemKind.UNREADABLE_LABEL]
    assert str(files[6][1]) in unreadable_label
    assert set(report.errors) == {
        m for k, v in p.items() if k != ProblemKind.SIZE_MISMATCH for m in v
    }
    # counts: clean labels 1, 5 (20 road, 30 car, 10 void) + 2 (32 road) + 4 (57 road) + 9 (60 road)
    assert (
        report.class_pixels.tolist()
        == _expected_pixels({0: 2 * 20 + 32 + 57 + 60, 13: 2 * 30, 255: 2 * 10}).tolist()
    )


def test_void_ids_count_as_void_and_the_rest_stays_an_error(broken_gtav):
    """--void-label-ids 255: the 255 pixel is void (counted), 40 is still outside the map; a
    labelId among the void ids is refused (it would erase a class)."""
    root, files, _ = broken_gtav
    report = check_dataset(root, "gtav", workers=1, void_ids=[255])
    (message,) = report.problems[ProblemKind.IDS_OUTSIDE_MAP]
    assert f"{files[4][1]}: value(s) 40 (2 px) are not" in message and "255" not in message.split("(expected")[0]
    plain = check_dataset(root, "gtav", workers=1)
    assert report.class_pixels[-1] == plain.class_pixels[-1] + 1  # the void bin gained the 255 pixel
    with pytest.raises(ValueError, match=r"void_ids must not name Cityscapes labelIds 0..33 .* \[7\]"):
        check_dataset(root, "gtav", workers=1, void_ids=[7])
    with pytest.raises(ValueError, match="not to synthia"):
        check_dataset(root, "synthia", workers=1, void_ids=[255])


def test_synthia_defects(tmp_path):
    files = {}
    ok_ids = np.full((H, W), 3, np.uint16)
    for i in range(7):
        files[i] = synthia_files(tmp_path, i)
        _save(files[i][0], _rgb(seed=i))
        write_png(files[i][1], _synthia_label(ok_ids))
    bad = ok_ids.copy()
    bad[0, :4] = 23
    bad[5, 9] = 300
    write_png(files[1][1], _synthia_label(bad))  # out-of-map ids
    _truncate(files[2][1])  # truncated label
    write_png(files[3][1], _synthia_label(np.full((H, W - 1), 3, np.uint16)))  # size mismatch
    files[4][1].unlink()  # image without label
    files[5][0].unlink()  # label without image
    files[6][0].write_bytes(b"\x89PNG\r\n\x1a\nrubbish")  # corrupt image
    report = check_dataset(tmp_path, "synthia", workers=1)
    p = report.problems
    assert report.n_images == 6 and report.n_labels == 6 and report.warnings == []
    assert p[ProblemKind.IDS_OUTSIDE_MAP] == [
        f"label ids outside the map: {files[1][1]}: value(s) 23 (4 px), 300 (1 px) are not "
        "SYNTHIA class ids (expected 0..22)"
    ]
    (trunc,) = p[ProblemKind.UNREADABLE_LABEL]
    assert trunc.startswith(f"unreadable label: {files[2][1]}: truncated")
    assert p[ProblemKind.SIZE_MISMATCH] == [
        f"size mismatch: image {files[3][0]} is 10x6 (WxH) but label {files[3][1]} is 9x6"
    ]
    assert f"{files[4][0]} (expected {files[4][1]})" in _names(p[ProblemKind.IMAGE_WITHOUT_LABEL])
    assert f"{files[5][1]} (expected {files[5][0]})" in _names(p[ProblemKind.LABEL_WITHOUT_IMAGE])
    (corrupt,) = p[ProblemKind.UNREADABLE_IMAGE]
    assert str(files[6][0]) in corrupt
    assert len(report.errors) == 6 and all(m in report.errors for v in p.values() for m in v)
    # road everywhere except the 5 bad pixels; unreadable label 2 not counted; 4 has no label
    assert report.class_pixels.tolist() == _expected_pixels({0: 60 * 3 + 54 + 55}).tolist()


def test_cityscapes_and_acdc_defects(tmp_path):
    cs = tmp_path / "cs"
    pairs = [cityscapes_files(cs, s, "aachen", i, 19) for s in ("train", "val") for i in range(2)]
    for k, (img, lbl) in enumerate(pairs):
        _save(img, _rgb(seed=k))
        _save(lbl, _label_ids(7, 26, 0))
    pairs[3][1].unlink()  # val image without label
    data = bytearray(pairs[0][1].read_bytes())
    assert data[37:41] == b"IDAT"
    data[43] ^= 0xFF  # flipped byte inside the label's pixel data
    pairs[0][1].write_bytes(bytes(data))
    _save(pairs[1][1], np.full((H, W + 2), 7, np.uint8))  # size mismatch: an error here
    report = check_dataset(cs, "cityscapes", workers=1)
    assert report.n_images == 4 and report.n_labels == 3
    assert f"{pairs[3][0]} (expected {pairs[3][1]})" in _names(
        report.problems[ProblemKind.IMAGE_WITHOUT_LABEL]
    )
    (crc,) = report.problems[ProblemKind.UNREADABLE_LABEL]
    assert str(pairs[0][1]) in crc and "CRC mismatch" in crc
    (size,) = report.problems[ProblemKind.SIZE_MISMATCH]
    assert size in report.errors and str(pairs[1][1]) in size
    assert check_dataset(cs, "cityscapes", split="train", workers=1).n_images == 2

    acdc = tmp_path / "acdc"
    for cond in ("fog", "night"):
        for split in ("train", "val"):
            img, lbl = acdc_files(acdc, cond, split, "GOPR0001", 1)
            _save(img, _rgb())
            _save(lbl, _label_ids(23, 21, 0))
    _, lonely = acdc_files(acdc, "night", "val", "GOPR0002", 7)
    _save(lonely, _label_ids(23, 21, 0))
    report = check_dataset(acdc, "acdc", workers=1)
    assert report.n_images == 4 and report.n_labels == 5
    assert report.problems[ProblemKind.LABEL_WITHOUT_IMAGE] == [
        f"label without image: {lonely} (expected "
        f"{acdc / 'rgb_anon/night/val/GOPR0002/GOPR0002_frame_000007_rgb_anon.png'})"
    ]
    assert report.class_pixels.tolist() == _expected_pixels({10: 100, 8: 150, 255: 50}).tolist()
    fog = check_dataset(acdc, "acdc", conditions=["fog"], split="val", workers=1)
    assert fog.ok and fog.n_images == 1


def test_histogram_of_wide_and_negative_ids():
    """16-bit and signed id maps: every value outside the map is listed, the rest counted."""
    from halo_ray.data.check import _label_histogram
    from halo_ray.data.labels import LABEL_ID_TO_TRAIN_ID

    ids = np.array([[7, 7, 26, 0], [-3, 40000, 40000, 255]], np.int32)
    classes, bad = _label_histogram(ids, LABEL_ID_TO_TRAIN_ID, 34)
    assert classes.tolist() == _expected_pixels({0: 2, 13: 1, 255: 1}).tolist()
    assert bad.tolist() == [[-3, 1], [255, 1], [40000, 2]]


def test_verify_images_finds_a_flipped_byte_the_quick_check_misses(tmp_path):
    img, lbl = gtav_files(tmp_path, 1)
    _save(img, _rgb(64, 64))
    _save(lbl, np.full((64, 64), 7, np.uint8), palette=True)
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0x01
    img.write_bytes(bytes(data))
    assert check_dataset(tmp_path, "gtav", workers=1).ok  # header and IEND are intact
    deep = check_dataset(tmp_path, "gtav", workers=1, verify_images=True)
    (msg,) = deep.problems[ProblemKind.UNREADABLE_IMAGE]
    assert str(img) in msg and "CRC mismatch" in msg


def test_process_pool_gives_the_same_report_and_progress(broken_gtav):
    root, _, _ = broken_gtav
    serial = check_dataset(root, "gtav", workers=1)
    calls: list[tuple[int, int]] = []
    pooled = check_dataset(root, "gtav", workers=2, progress=lambda d, t: calls.append((d, t)))
    assert pooled.errors == serial.errors and pooled.warnings == serial.warnings
    assert pooled.class_pixels.tolist() == serial.class_pixels.tolist()
    assert calls == [(d, 7) for d in range(1, 8)]  # 6 images + the lone label


# ---- summary, arguments, bad roots -------------------------------------------------------------


def test_summary_lists_counts_problems_and_class_table(broken_gtav):
    root, files, extra = broken_gtav
    report = check_dataset(root, "gtav", workers=1)
    text = report.summary(max_per_kind=1)
    assert text.splitlines()[0] == (
        f"gtav dataset at {root}: 6 images, 6 label files, {len(report.errors)} errors, 1 warnings"
    )
    assert "errors:\n" in text and "warnings:\n  size mismatch (1):" in text
    assert f"  image without label (1):\n    {files[3][0]}" in text
    assert str(extra) in text
    road = next(line for line in text.splitlines() if line.strip().startswith("road "))
    total = int(report.class_pixels.sum())
    assert f"{100 * report.class_pixels[0] / total:7.3f}" in road
    assert text.splitlines()[-1] == f"result: FAILED ({len(report.errors)} errors)"
    assert CheckReport(root="r", layout="gtav").summary().endswith("result: OK")


def test_bad_root_names_path_and_expected_folders(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'nope'} does not exist; expected"):
        check_dataset(tmp_path / "nope", "gtav")
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(
        DatasetError, match=rf"{tmp_path} does not hold the gtav layout: .*images, labels"
    ):
        check_dataset(tmp_path, "gtav")
    with pytest.raises(DatasetError, match=r"the synthia layout: .*RGB, GT/LABELS"):
        check_dataset(tmp_path, "synthia")
    with pytest.raises(DatasetError, match=r"the acdc layout: .*rgb_anon, gt"):
        check_dataset(tmp_path, "acdc")
    report = check_dataset(tmp_path, "cityscapes", workers=1)  # gtFine missing: reported
    assert report.problems[ProblemKind.MISSING_FOLDER][0].startswith(
        f"missing folder: {tmp_path / 'gtFine'} does not exist"
    )
    with pytest.raises(DatasetError, match="no split folder val"):
        check_dataset(tmp_path, "cityscapes", split="val")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "kitti"}, "layout must be one of"),
        ({"layout": "gtav", "split": "train"}, "gtav layout has no splits"),
        ({"layout": "cityscapes", "split": "training"}, "split must be one of"),
        ({"layout": "cityscapes", "conditions": ["fog"]}, "conditions only apply to the acdc"),
        ({"layout": "acdc", "conditions": ["dusk"]}, "conditions must be distinct names"),
        (
            {"layout": "gtav", "workers": 0},
            r"workers must be None or an integer >= 1, but got workers=0",
        ),
        ({"layout": "gtav", "progress": 3}, "progress must be None or a callable"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    generate_dirs = [tmp_path / d for d in ("images", "labels", "rgb_anon/fog", "gt/fog")]
    for d in generate_dirs:
        d.mkdir(parents=True)
    with pytest.raises(ValueError, match=match):
        check_dataset(tmp_path, **kwargs)


def test_an_archive_s_own_top_folder_is_read_through_and_named(tmp_path, capsys):
    """SYNTHIA unpacks to RAND_CITYSCAPES/: given the folder around it, check and reader use it."""
    from halo_ray.cli import main
    from halo_ray.data import open_dataset

    inner = tmp_path / "RAND_CITYSCAPES"
    ids = np.repeat(np.array([3, 1, 21, 0]), [25, 10, 5, 20]).reshape(H, W)
    for i in range(2):
        img, lbl = synthia_files(inner, i)
        _save(img, _rgb(seed=i))
        write_png(lbl, _synthia_label(np.roll(ids, i)))
    report = check_dataset(tmp_path, "synthia", workers=1)
    assert report.ok and report.n_images == 2 and report.root == str(inner)
    assert report.note == f"read {inner}: the folder inside {tmp_path} that holds the synthia layout"
    assert report.summary().splitlines()[0] == report.note
    assert len(open_dataset("synthia", tmp_path)) == 2
    assert main(["data", "check", str(tmp_path), "--layout", "synthia", "--workers", "1"]) == 0
    assert f"read {inner}" in capsys.readouterr().out
    (tmp_path / "copy").mkdir()  # two candidates: nothing is guessed
    for sub in ("RGB", "GT/LABELS"):
        (tmp_path / "copy" / sub).mkdir(parents=True)
    with pytest.raises(DatasetError, match="does not hold the synthia layout"):
        check_dataset(tmp_path, "synthia", workers=1)


def test_worker_pools_default_to_the_cpus_this_process_may_use():
    """A process confined to one CPU (``taskset``, a container's or a batch job's cpuset)
    checks the dataset and segments superpixels with one worker, not one per machine CPU."""
    import os
    import subprocess
    import sys

    code = """
import os
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
from halo_ray.data.check import _check_workers
from halo_ray.data.cpus import usable_cpus
from halo_ray.data.superpixels import _default_workers
print(usable_cpus(), _check_workers(None), _default_workers((64, 128), "grid", 32))
"""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this OS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]
