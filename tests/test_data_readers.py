"""Readers of the official layouts, on the generated benchmark and on broken trees."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from halo_ray.data import (
    ACDCDataset,
    CityscapesDataset,
    DatasetError,
    GTAVDataset,
    LabelError,
    SegmentationDataset,
    class_frequencies,
    generate_benchmark,
    generate_sample,
    open_dataset,
)
from halo_ray.data.labels import label_palette
from halo_ray.data.layouts import acdc_files, cityscapes_files, gtav_files

H, W = 64, 128
SEED = 4
COUNTS = dict(n_source=6, n_target_train=7, n_target_val=3, n_adverse_train=3, n_adverse_val=2)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("readers") / "bench"
    return generate_benchmark(
        out, seed=SEED, height=H, width=W, conditions=("fog", "night", "rain"), **COUNTS
    )


# ---- the generated tree read back -------------------------------------------------------------


def test_counts(bench):
    assert len(GTAVDataset(bench.gtav_root)) == 6
    assert len(CityscapesDataset(bench.cityscapes_root, "train")) == 7
    assert len(CityscapesDataset(bench.cityscapes_root, "val")) == 3
    assert len(ACDCDataset(bench.acdc_root, "train")) == 3 * 3
    assert len(ACDCDataset(bench.acdc_root, "val", conditions=("night",))) == 2
    assert ACDCDataset(bench.acdc_root, "train").conditions == ("fog", "night", "rain")


@pytest.mark.parametrize(
    ("layout", "split", "kw", "domain", "condition"),
    [
        ("gtav", None, {}, "source", None),
        ("cityscapes", "train", {}, "target", None),
        ("cityscapes", "val", {}, "target", None),
        ("acdc", "train", {"conditions": ("night",)}, "adverse", "night"),
        ("acdc", "val", {"conditions": ["fog"]}, "adverse", "fog"),
    ],
)
def test_reader_returns_exactly_what_the_generator_made(
    bench, layout, split, kw, domain, condition
):
    root = {"gtav": bench.gtav_root, "cityscapes": bench.cityscapes_root, "acdc": bench.acdc_root}[
        layout
    ]
    ds = open_dataset(layout, root, split, **kw)
    for i in range(len(ds)):
        sample = ds[i]
        made = generate_sample(
            SEED, domain, split or "train", i, height=H, width=W, condition=condition
        )
        assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
        assert sample.label.shape == (H, W) and sample.label.dtype == np.uint8
        assert np.array_equal(sample.label, made.train_ids)
        assert np.array_equal(sample.image, made.image)
        assert np.array_equal(ds.load_label(i), sample.label)


def test_train_ids_only(bench):
    labels = np.concatenate(
        [s.label.ravel() for s in CityscapesDataset(bench.cityscapes_root, "train")]
    )
    values = set(np.unique(labels).tolist())
    assert values <= set(range(19)) | {255} and len(values) > 10


def test_names_are_sorted_paths_relative_to_root(bench):
    gtav = GTAVDataset(bench.gtav_root)
    assert gtav.names[:2] == ["images/00001.png", "images/00002.png"]
    cs = CityscapesDataset(bench.cityscapes_root, "train")
    assert cs.names == sorted(cs.names)
    assert cs.names[0] == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert cs[3].name == cs.names[3]
    acdc = ACDCDataset(bench.acdc_root, "train")
    assert acdc.names[0] == "rgb_anon/fog/train/GOPR1000/GOPR1000_frame_000001_rgb_anon.png"
    assert [n.split("/")[1] for n in acdc.names] == ["fog"] * 3 + ["night"] * 3 + ["rain"] * 3


def test_class_metadata_and_negative_index(bench):
    ds = GTAVDataset(bench.gtav_root)
    assert isinstance(ds, SegmentationDataset)
    assert ds.num_classes == 19 and ds.class_names[0] == "road" and len(ds.class_names) == 19
    assert ds[-1].name == ds.names[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_resize(bench):
    ds = CityscapesDataset(bench.cityscapes_root, "train", size=(32, 48))
    full = CityscapesDataset(bench.cityscapes_root, "train")
    s = ds[0]
    assert s.image.shape == (32, 48, 3) and s.label.shape == (32, 48)
    assert set(np.unique(s.label)) <= set(np.unique(full[0].label))  # nearest: no new ids
    assert ds.load_label(0).shape == (32, 48)
    with pytest.raises(ValueError, match="size must be None or"):
        CityscapesDataset(bench.cityscapes_root, "train", size=(32,))


def test_class_frequencies_of_a_reader_match_in_memory(bench):
    ds = GTAVDataset(bench.gtav_root)
    made = [generate_sample(SEED, "source", "train", i, height=H, width=W) for i in range(len(ds))]
    assert np.allclose(class_frequencies(ds), class_frequencies(made))


def test_readers_pickle(bench):
    ds = ACDCDataset(bench.acdc_root, "val")
    again = pickle.loads(pickle.dumps(ds))
    assert again.names == ds.names and np.array_equal(again[1].label, ds[1].label)


def test_gtav_labels_are_palette_pngs(bench):
    with Image.open(GTAVDataset(bench.gtav_root).label_path(0)) as im:
        assert im.mode == "P"
        assert im.getpalette()[7 * 3 : 7 * 3 + 3] == [128, 64, 128]


def test_open_dataset_arguments(bench):
    with pytest.raises(ValueError, match="layout must be one of"):
        open_dataset("mapillary", bench.gtav_root)
    with pytest.raises(ValueError, match="no splits"):
        open_dataset("gtav", bench.gtav_root, "train")
    with pytest.raises(ValueError, match="split is required"):
        open_dataset("cityscapes", bench.cityscapes_root)
    with pytest.raises(ValueError, match="split must be one of"):
        open_dataset("cityscapes", bench.cityscapes_root, "training")
    with pytest.raises(ValueError, match="subset of"):
        open_dataset("acdc", bench.acdc_root, "train", conditions=("dusk",))
    assert len(open_dataset("GTAV", bench.gtav_root, "all")) == 6


# ---- broken trees ---------------------------------------------------------------------------


def _rgb(h=8, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette:
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette(label_palette())
    im.save(path)


def _cityscapes(
    root: Path, n: int = 2, label_value: int = 7, label_hw=(8, 12)
) -> list[tuple[Path, Path]]:
    pairs = []
    for i in range(n):
        img, lbl = cityscapes_files(root, "train", "aachen", i, 19)
        _write(img, _rgb(seed=i))
        _write(lbl, np.full(label_hw, label_value, np.uint8))
        pairs.append((img, lbl))
    return pairs


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(
        DatasetError,
        match=rf"{missing} does not exist; expected .*leftImg8bit/train/<city>/\*_leftImg8bit\.png",
    ):
        CityscapesDataset(missing, "train")
    with pytest.raises(DatasetError, match=str(missing)):
        GTAVDataset(missing)
    with pytest.raises(DatasetError, match=str(missing)):
        ACDCDataset(missing, "val")


def test_missing_label_folder(tmp_path):
    _cityscapes(tmp_path)
    (tmp_path / "gtFine" / "train" / "aachen").rename(tmp_path / "elsewhere")
    (tmp_path / "gtFine" / "train").rmdir()
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'gtFine' / 'train'} does not exist"):
        CityscapesDataset(tmp_path, "train")


def test_missing_label_file_names_both(tmp_path):
    pairs = _cityscapes(tmp_path)
    pairs[1][1].unlink()
    with pytest.raises(
        DatasetError, match=rf"image {pairs[1][0]} has no label file: expected {pairs[1][1]}"
    ):
        CityscapesDataset(tmp_path, "train")


def test_empty_split(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "lindau").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        CityscapesDataset(tmp_path, "val")


@pytest.mark.parametrize("content", [b"", b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_corrupt_image_names_the_file(tmp_path, content):
    pairs = _cityscapes(tmp_path)
    pairs[0][0].write_bytes(content)
    ds = CityscapesDataset(tmp_path, "train")  # construction does not decode
    with pytest.raises(DatasetError, match=f"cannot read image {pairs[0][0]}"):
        ds[0]
    assert ds[1].image.shape == (8, 12, 3)


def test_truncated_png_names_the_file(tmp_path):
    pairs = _cityscapes(tmp_path)
    data = pairs[0][0].read_bytes()
    pairs[0][0].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"cannot read image {pairs[0][0]}"):
        CityscapesDataset(tmp_path, "train")[0]


def test_corrupt_label_names_the_file(tmp_path):
    pairs = _cityscapes(tmp_path)
    pairs[1][1].write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=f"cannot read label file {pairs[1][1]}"):
        CityscapesDataset(tmp_path, "train")[1]


@pytest.mark.parametrize("bad", [40, 255])
def test_label_id_outside_the_map_names_file_and_id(tmp_path, bad):
    pairs = _cityscapes(tmp_path)
    label = np.full((8, 12), 26, np.uint8)
    label[2:4, 3] = bad
    _write(pairs[0][1], label)
    ds = CityscapesDataset(tmp_path, "train")
    with pytest.raises(
        DatasetError, match=rf"{pairs[0][1]}: label value\(s\) {bad} \(2 px\)"
    ) as info:
        ds[0]
    assert isinstance(info.value, LabelError)
    with pytest.raises(DatasetError, match=str(bad)):
        ds.load_label(0)


def test_colour_label_is_rejected(tmp_path):
    pairs = _cityscapes(tmp_path)
    _write(pairs[0][1], _rgb())
    with pytest.raises(DatasetError, match="mode 'RGB'"):
        CityscapesDataset(tmp_path, "train")[0]


def test_size_mismatch_names_both_files(tmp_path):
    pairs = _cityscapes(tmp_path, label_hw=(8, 10))
    ds = CityscapesDataset(tmp_path, "train")
    with pytest.raises(
        DatasetError,
        match=rf"size mismatch: image {pairs[0][0]} is 12x8 .* label {pairs[0][1]} is 10x8",
    ):
        ds[0]
    with pytest.raises(DatasetError, match="size mismatch"):
        ds.load_label(0)


def test_acdc_size_mismatch_and_missing_condition(tmp_path):
    img, lbl = acdc_files(tmp_path, "snow", "train", "GOPR0001", 1)
    _write(img, _rgb())
    _write(lbl, np.full((4, 12), 7, np.uint8))
    with pytest.raises(DatasetError, match="size mismatch"):
        ACDCDataset(tmp_path, "train")[0]
    with pytest.raises(
        DatasetError, match=rf"condition 'fog' is missing: {tmp_path / 'rgb_anon' / 'fog'}"
    ):
        ACDCDataset(tmp_path, "train", conditions=("snow", "fog"))
    with pytest.raises(
        DatasetError, match=rf"condition 'snow': {tmp_path / 'gt' / 'snow' / 'val'} does not exist"
    ):
        (tmp_path / "rgb_anon" / "snow" / "val").mkdir()
        ACDCDataset(tmp_path, "val")


def test_gtav_resizes_mismatched_labels_to_the_image(tmp_path):
    img, lbl = gtav_files(tmp_path, 1)
    _write(img, _rgb(8, 12))
    label = np.full((4, 6), 7, np.uint8)
    label[:, 3:] = 26  # right half car
    _write(lbl, label, palette=True)
    s = GTAVDataset(tmp_path)[0]
    assert s.label.shape == (8, 12)
    assert (s.label[:, :6] == 0).all() and (s.label[:, 6:] == 13).all()


def test_gtav_missing_label_and_missing_folder(tmp_path):
    img, lbl = gtav_files(tmp_path, 7)
    _write(img, _rgb())
    with pytest.raises(
        DatasetError, match=rf"{tmp_path / 'labels'} does not exist; expected .*images/<nnnnn>\.png"
    ):
        GTAVDataset(tmp_path)
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match=rf"image {img} has no label file: expected {lbl}"):
        GTAVDataset(tmp_path)


def test_void_ids_read_named_values_as_void_in_every_labelid_layout(tmp_path):
    """A dataset that stores void as 255 (or 34) reads with void_ids naming them: those
    pixels become the ignore index; any other unknown value still fails naming the file, and
    the message without void_ids points at the key."""
    img, lbl = gtav_files(tmp_path / "gtav", 1)
    _write(img, _rgb(8, 12))
    label = np.full((8, 12), 7, np.uint8)
    label[0, :4], label[1, :2] = 255, 34
    _write(lbl, label, palette=True)
    with pytest.raises(DatasetError, match=r"255 \(4 px\), 34 \(2 px\)|34 \(2 px\), 255 \(4 px\)") as info:
        GTAVDataset(tmp_path / "gtav")[0]
    assert "list them in void_label_ids" in str(info.value)
    read = GTAVDataset(tmp_path / "gtav", void_ids=[255, 34]).load_label(0)
    assert (read[0, :4] == 255).all() and (read[1, :2] == 255).all() and (read[2:] == 0).all()
    with pytest.raises(DatasetError, match=r"label value\(s\) 34 \(2 px\)"):
        GTAVDataset(tmp_path / "gtav", void_ids=[255]).load_label(0)

    _cityscapes(tmp_path / "cs", label_value=255)
    assert (CityscapesDataset(tmp_path / "cs", "train", void_ids=(255,)).load_label(0) == 255).all()
    with pytest.raises(ValueError, match=r"void_ids must not name Cityscapes labelIds 0..33 .*\[7\]"):
        CityscapesDataset(tmp_path / "cs", "train", void_ids=(7, 255))


def test_void_label_ids_config_key_reaches_every_reader_of_a_run(tmp_path):
    from halo_ray.config import ConfigError, build_config
    from halo_ray.learner import open_split

    img, lbl = gtav_files(tmp_path / "gtav", 1)
    _write(img, _rgb(8, 12))
    _write(lbl, np.full((8, 12), 255, np.uint8), palette=True)
    _cityscapes(tmp_path / "cityscapes", label_value=255)
    image, label = cityscapes_files(tmp_path / "cityscapes", "val", "lindau", 5, 19)
    _write(image, _rgb(seed=5))
    _write(label, np.full((8, 12), 255, np.uint8))
    cfg = build_config(dict(data_root=str(tmp_path), generate_data=False, void_label_ids=[255]))
    assert cfg.to_dict()["void_label_ids"] == [255]
    for which in ("source", "train", "val"):
        assert (open_split(cfg, which).load_label(0) == 255).all(), which
    with pytest.raises(ConfigError, match=r"void_label_ids must not name Cityscapes labelIds 0..33"):
        build_config(dict(void_label_ids=[0]))
    with pytest.raises(ConfigError, match=r"void_label_ids must be integers 0..255"):
        build_config(dict(void_label_ids=[256]))
    assert build_config(dict(void_label_ids=[])).source_key() == build_config({}).source_key()
    assert build_config(dict(void_label_ids=[255])).source_key() != build_config({}).source_key()
