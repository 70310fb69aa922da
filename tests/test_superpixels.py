"""Superpixels (SEEDS as released by MulActSeg, SLIC, SEEDS's grid), their cache and the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import exposure

from halo_ray.cli import main
from halo_ray.data.layouts import DatasetError, cityscapes_files, open_dataset
from halo_ray.data.superpixels import (
    METHODS,
    DatasetKey,
    SuperpixelCache,
    SuperpixelCacheError,
    compute_superpixels,
    default_num_superpixels,
    precompute_superpixels,
    seeds_grid_shape,
    seeds_initial_grid,
)


def _opencv_seeds(height: int, width: int, n: int):
    return cv2.ximgproc.createSuperpixelSEEDS(
        width, height, 3, n, num_levels=5, prior=3, histogram_bins=10, double_step=True
    )


def _textured(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs plus noise: an image with edges and texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float64)
    smooth = ndimage.zoom(coarse, (16, 16, 1), order=1)[:h, :w]
    return np.clip(smooth + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def _edge_pixels(labels: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= labels[:-1] != labels[1:]
    return edge


# ---- counts and the grid -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1024, 2048, 2048),
        (512, 1024, 512),
        (1052, 1914, 1966),
        (1080, 1920, 2025),
        (760, 1280, 950),
        (1, 1, 1),
        (16, 32, 1),
    ],
)
def test_default_count_is_cityscapes_2048_scaled_by_area(height, width, expected):
    assert default_num_superpixels(height, width) == expected


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_default_count_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=f"height={bad!r}"):
        default_num_superpixels(bad, 10)


@pytest.mark.parametrize(
    ("height", "width", "n", "rows", "cols"),
    [
        (1024, 2048, None, 32, 64),
        (512, 1024, None, 16, 32),
        (128, 256, 32, 4, 8),
        (96, 192, None, 3, 6),
        (64, 128, None, 2, 4),
    ],
)
def test_grid_blocks_are_exactly_32_px_where_the_size_divides(height, width, n, rows, cols):
    labels = compute_superpixels(
        np.zeros((height, width, 3), np.uint8), method="grid", num_superpixels=n
    )
    y, x = np.mgrid[:height, :width]
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, (y // 32) * cols + x // 32)  # row-major 32x32 blocks
    assert seeds_grid_shape(height, width, n) == (rows, cols)


@pytest.mark.parametrize(
    ("height", "width", "n"),
    [(375, 500, None), (333, 500, None), (37, 91, 3), (207, 112, 23), (6, 10, 1)],
)
def test_grid_is_the_seeds_initial_partition(height, width, n):
    """Painted with one colour (its own histogram bin) per block, the grid is a fixed point of
    OpenCV's SEEDS: no block or pixel move can gain, so SEEDS returns the grid itself. A block
    map other than SEEDS's own starting one would not survive."""
    grid = seeds_initial_grid(height, width, n)
    rows, cols = seeds_grid_shape(height, width, n)
    count = n or default_num_superpixels(height, width)
    assert (
        grid.max() + 1
        == rows * cols
        == _opencv_seeds(height, width, count).getNumberOfSuperpixels()
    )
    # rectangles tiling the image: the id is (row of y) * cols + (column of x)
    np.testing.assert_array_equal(grid, (grid[:, :1] // cols) * cols + grid[:1] % cols)
    assert len(np.unique(grid)) == rows * cols
    codes = np.random.default_rng(0).permutation(1000)[: rows * cols]
    colours = (np.stack([codes // 100, codes // 10 % 10, codes % 10], -1) + 0.5).astype(
        np.float32
    ) / 10
    seeds = _opencv_seeds(height, width, count)
    seeds.iterate(colours[grid], 10)
    np.testing.assert_array_equal(seeds.getLabels(), grid)


def test_seeds_at_cityscapes_size_is_2048_regions_of_32px_blocks():
    """2048x1024 with the default count: OpenCV builds a 64x32 grid of 32x32 blocks (2048 ids);
    a constant image keeps it exactly (nothing to gain by moving)."""
    height, width = 1024, 2048
    assert (
        _opencv_seeds(
            height, width, default_num_superpixels(height, width)
        ).getNumberOfSuperpixels()
        == 2048
    )
    labels = compute_superpixels(np.full((height, width, 3), 90, np.uint8))  # seeds, default count
    y, x = np.mgrid[:height, :width]
    assert labels.dtype == np.int32 and labels.max() + 1 == 2048
    np.testing.assert_array_equal(labels, (y // 32) * 64 + x // 32)


@pytest.mark.parametrize(("height", "width"), [(1052, 1914), (760, 1280), (1080, 1920), (500, 375)])
def test_seeds_grid_shape_is_opencvs_count(height, width):
    rows, cols = seeds_grid_shape(height, width)
    assert (
        rows * cols
        == _opencv_seeds(
            height, width, default_num_superpixels(height, width)
        ).getNumberOfSuperpixels()
    )


@pytest.mark.parametrize(
    ("height", "width", "n"), [(270, 7, None), (7, 270, None), (91, 37, 10), (4, 4, 5000)]
)
def test_sizes_that_would_crash_opencv_are_refused(height, width, n):
    """OpenCV divides by zero (the process dies) when its grid has no row or column."""
    image = np.zeros((height, width, 3), np.uint8)
    with pytest.raises(ValueError, match=f"{width}x{height} \\(WxH\\)"):
        compute_superpixels(image, method="seeds", num_superpixels=n)
    with pytest.raises(ValueError, match="too small or too elongated"):
        compute_superpixels(image, method="grid", num_superpixels=n)


# ---- the released SEEDS recipe -----------------------------------------------------------------


def test_seeds_is_the_released_recipe():
    """Bit for bit the released script: equalize_hist of the [H, W, 3] array, float32 RGB2HSV
    (hue in degrees, which saturates SEEDS's float bins), SEEDS(5 levels, prior 3, 10 bins,
    double step), 10 iterations."""
    image = _textured(96, 160, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage: "This might be a color image"
        equalised = exposure.equalize_hist(image)
    hsv = cv2.cvtColor(equalised.astype(np.float32), cv2.COLOR_RGB2HSV)
    assert hsv[..., 0].max() > 1  # the hue is in degrees, beyond SEEDS's [0, 1] float range
    seeds = _opencv_seeds(96, 160, 15)
    seeds.iterate(hsv, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours does not warn
        ours = compute_superpixels(image, method="seeds")
    np.testing.assert_array_equal(ours, seeds.getLabels())
    assert default_num_superpixels(96, 160) == 15


def test_seeds_follows_a_colour_edge_that_the_grid_cuts():
    """A vertical edge at x=100 lies inside the 32-px block 96..127 (on a 4-px sub-block
    boundary): every grid block of that column straddles it, no SEEDS region does."""
    height, width = 128, 256
    image = np.empty((height, width, 3), np.uint8)
    image[:, :100] = (30, 60, 90)
    image[:, 100:] = (200, 180, 160)
    for method, straddling in (("seeds", 0), ("grid", 4)):
        labels = compute_superpixels(image, method=method, num_superpixels=32)
        left, right = set(np.unique(labels[:, :100])), set(np.unique(labels[:, 100:]))
        assert len(left & right) == straddling, method


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_seeds_and_slic_recall_region_boundaries(seed):
    """12 random colour cells (Voronoi) plus noise: boundary recall within 2 px and the share
    of pixels outside their region's majority cell, against the grid's."""
    rng = np.random.default_rng(seed)
    height, width = 128, 256
    centres = rng.uniform((0, 0), (height, width), (12, 2))
    y, x = np.mgrid[:height, :width]
    cells = np.argmin((y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2, -1)
    image = rng.integers(0, 256, (12, 3))[cells] + rng.integers(-6, 7, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    truth = _edge_pixels(cells)

    def scores(labels):
        recall = (
            truth & ndimage.binary_dilation(_edge_pixels(labels), iterations=2)
        ).sum() / truth.sum()
        joint = np.zeros((labels.max() + 1, 12), np.int64)
        np.add.at(joint, (labels.ravel(), cells.ravel()), 1)
        return recall, 1 - joint.max(1).sum() / cells.size

    grid_recall, grid_under = scores(compute_superpixels(image, method="grid", num_superpixels=32))
    for method in ("seeds", "slic"):
        recall, under = scores(compute_superpixels(image, method=method, num_superpixels=32))
        assert recall >= 0.85 and recall >= 2.5 * grid_recall, (method, recall, grid_recall)
        assert under <= 0.3 * grid_under, (method, under, grid_under)


@pytest.mark.parametrize("method", METHODS)
def test_same_input_same_output(method):
    image = _textured(seed=1)
    first = compute_superpixels(image, method=method)
    second = compute_superpixels(image.copy(), method=method)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.int32 and first.shape == image.shape[:2] and first.min() >= 0


def test_slic_ids_start_at_zero_and_are_dense():
    labels = compute_superpixels(_textured(seed=2), method="slic", num_superpixels=20)
    assert labels.min() == 0 and len(np.unique(labels)) == labels.max() + 1 > 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="felzenszwalb"), "method='felzenszwalb'"),
        (dict(num_superpixels=0), "num_superpixels=0"),
        (dict(num_superpixels=2.0), "num_superpixels=2.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_superpixels(np.zeros((32, 32, 3), np.uint8), **kwargs)


def test_a_non_rgb_image_is_refused():
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        compute_superpixels(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        compute_superpixels(np.zeros((32, 32, 3), np.float32))


# ---- the cache ---------------------------------------------------------------------------------


class _Images:
    """A minimal image list (the layout readers' interface), counting decodes."""

    layout = "cityscapes"

    def __init__(self, root: Path, images: list[np.ndarray]) -> None:
        self.root = root
        self.images = images
        self.names = [f"leftImg8bit/train/city/img{i}_leftImg8bit.png" for i in range(len(images))]
        self.decoded = 0

    def __len__(self) -> int:
        return len(self.images)

    def image_size(self, i: int) -> tuple[int, int]:
        return self.images[i].shape[:2]

    def load_image(self, i: int) -> np.ndarray:
        self.decoded += 1
        return self.images[i]


def _cache(tmp_path, images, method="seeds", n=None):
    key = DatasetKey.for_dataset(images)
    return SuperpixelCache(tmp_path / "cache", dataset_key=key, method=method, num_superpixels=n)


def _images(tmp_path, sizes=((64, 96), (64, 96), (48, 80))):
    return _Images(tmp_path / "data", [_textured(h, w, seed=i) for i, (h, w) in enumerate(sizes)])


def test_cache_round_trip_is_bit_identical_and_reused(tmp_path):
    images = _images(tmp_path)
    cache = _cache(tmp_path, images)
    calls = []
    report = precompute_superpixels(images, cache, workers=2, progress=lambda *a: calls.append(a))
    assert (report.total, report.computed, report.cached) == (3, 3, 0)
    assert sorted(c[0] for c in calls) == [1, 2, 3] and all(c[1] == 3 and c[2] for c in calls)
    for i, name in enumerate(images.names):
        stored = cache.load(name, shape=images.image_size(i))
        np.testing.assert_array_equal(stored, compute_superpixels(images.images[i]))
        assert stored.dtype == np.int32
        path = cache.path(name)
        assert path.is_file() and path.suffix == ".npz" and path.is_relative_to(cache.folder)
        assert np.load(path)["labels"].dtype == np.int16  # small on disk
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    assert manifest["method"] == "seeds" and manifest["num_superpixels"] is None
    assert manifest["dataset"] == {
        "layout": "cityscapes",
        "root": str((tmp_path / "data").resolve()),
        "image_size": None,
    }
    assert manifest["recipe"]["prior"] == 3 and "opencv" in manifest["created_with"]
    assert not list(cache.folder.rglob("*.tmp"))

    # a second run, by a new cache object for the same key: nothing computed, nothing decoded
    again, calls = _cache(tmp_path, images), []
    images.decoded = 0
    report = precompute_superpixels(images, again, workers=2, progress=lambda *a: calls.append(a))
    assert again.folder == cache.folder
    assert (report.computed, report.cached) == (0, 3) and images.decoded == 0
    assert len(calls) == 3 and not any(c[2] for c in calls)


def test_cache_folders_are_keyed_by_parameters_and_dataset(tmp_path):
    images = _images(tmp_path)
    folders = {
        _cache(tmp_path, images).folder,
        _cache(tmp_path, images, method="slic").folder,
        _cache(tmp_path, images, method="grid").folder,
        _cache(tmp_path, images, n=64).folder,
        _cache(tmp_path, images, n=65).folder,
        SuperpixelCache(
            tmp_path / "cache",
            dataset_key=DatasetKey("cityscapes", "/elsewhere", None),
            method="seeds",
        ).folder,
        SuperpixelCache(
            tmp_path / "cache",
            dataset_key=DatasetKey("cityscapes", images.root.resolve().as_posix(), (64, 96)),
        ).folder,
    }
    assert len(folders) == 7 and all(f.parent == tmp_path / "cache" for f in folders)
    assert _cache(tmp_path, images, n=64).folder.name.startswith("cityscapes-seeds-64-")
    assert _cache(tmp_path, images).folder == _cache(tmp_path, images).folder  # stable
    assert not (tmp_path / "cache").exists()  # naming a cache writes nothing

    grid = _cache(tmp_path, images, method="grid", n=4)
    precompute_superpixels(images, grid, workers=1)
    other = _cache(tmp_path, images, method="grid", n=6)
    with pytest.raises(SuperpixelCacheError, match="missing"):
        other.load(images.names[0], shape=(64, 96))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [grid.folder.name]


def test_dataset_key_records_a_shared_image_size(tmp_path):
    assert DatasetKey.for_dataset(_images(tmp_path, sizes=((48, 80), (48, 80)))).image_size == (
        48,
        80,
    )
    assert DatasetKey.for_dataset(_images(tmp_path)).image_size is None


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_unusable_cache_files_raise_naming_the_file_and_the_fix(tmp_path):
    images = _images(tmp_path)
    cache = _cache(tmp_path, images, method="grid")
    precompute_superpixels(images, cache, workers=1)
    first, second, third = images.names
    _truncate(cache.path(first))
    misfit = compute_superpixels(_textured(40, 96), method="grid")
    cache.save(second, misfit)  # 96x40 labels where the image is 96x64
    cache.path(third).unlink()
    before = sorted(p.name for p in cache.folder.rglob("*"))

    cases = [
        (first, "truncated or corrupt"),
        (second, "wrong size: it holds 96x40 \\(WxH\\) labels but the image is 96x64"),
        (third, "missing"),
    ]
    for name, problem in cases:
        with pytest.raises(SuperpixelCacheError, match=problem) as info:
            cache.load(name, shape=images.image_size(images.names.index(name)))
        message = str(info.value)
        assert str(cache.path(name)) in message
        assert (
            "halo-ray data superpixels" in message
            and "--method grid" in message
            and "--split train" in message
        )
        assert isinstance(info.value, DatasetError)
    assert sorted(p.name for p in cache.folder.rglob("*")) == before  # nothing deleted

    # the precompute command repairs exactly those three
    report = precompute_superpixels(images, cache, workers=1)
    assert (report.computed, report.replaced, report.cached) == (3, 2, 0)
    for i, name in enumerate(images.names):
        np.testing.assert_array_equal(
            cache.load(name, shape=images.image_size(i)),
            compute_superpixels(images.images[i], method="grid"),
        )


def test_a_flipped_byte_inside_a_file_is_caught(tmp_path):
    images = _images(tmp_path, sizes=((64, 96),))
    cache = _cache(tmp_path, images, method="seeds")
    precompute_superpixels(images, cache, workers=1)
    path = cache.path(images.names[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not cache.is_valid(images.names[0], shape=(64, 96))
    with pytest.raises(SuperpixelCacheError, match=str(path)):
        cache.load(images.names[0], shape=(64, 96))


@pytest.mark.parametrize("method", METHODS)
def test_a_new_cache_object_accepts_its_own_manifest(tmp_path, method):
    """The manifest survives its JSON round trip (floats, tuples), so later runs can add files."""
    key = DatasetKey("acdc", "/data/acdc", (4, 6))
    SuperpixelCache(tmp_path, dataset_key=key, method=method).save(
        "a/x.png", np.zeros((4, 6), np.int32)
    )
    later = SuperpixelCache(tmp_path, dataset_key=key, method=method)
    later.save("a/y.png", np.ones((4, 6), np.int32))
    assert later.load("a/y.png", shape=(4, 6)).sum() == 24


def test_a_foreign_manifest_is_refused(tmp_path):
    images = _images(tmp_path)
    cache = _cache(tmp_path, images, method="grid")
    cache.folder.mkdir(parents=True)
    (cache.folder / "manifest.json").write_text(json.dumps({"method": "slic"}))
    with pytest.raises(SuperpixelCacheError, match="holds something else"):
        precompute_superpixels(images, cache, workers=1)


@pytest.mark.parametrize("name", ["", "/abs/x.png", "../x.png", "a/../../x.png"])
def test_names_must_stay_inside_the_cache(tmp_path, name):
    with pytest.raises(ValueError, match="relative to the dataset root"):
        _cache(tmp_path, _images(tmp_path)).path(name)


# ---- CLI ---------------------------------------------------------------------------------------


def _tiny_cityscapes(root: Path) -> Path:
    """Two train images and one val image, 64x128, in the Cityscapes layout."""
    for split, city, frame in (
        ("train", "aachen", 1),
        ("train", "bremen", 2),
        ("val", "lindau", 3),
    ):
        image, label = cityscapes_files(root, split, city, 0, frame)
        for path in (image, label):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_textured(64, 128, seed=frame)).save(image)
        Image.fromarray(np.full((64, 128), 7, np.uint8)).save(label)
    return root


def _cli_args(root, cache, *extra: str) -> list[str]:
    """``halo-ray data superpixels ROOT --layout cityscapes --cache CACHE …`` as argv."""
    return ["data", "superpixels", str(root), "--layout", "cityscapes", "--cache", str(cache), *extra]


def test_cli_precomputes_and_reuses_the_cache(tmp_path, capsys):
    root = _tiny_cityscapes(tmp_path / "cityscapes")
    cache_root = tmp_path / "runs" / "cache" / "superpixels"
    args = _cli_args(root, cache_root, "--workers", "2")
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 images" in out and "2 computed" in out and str(cache_root) in out
    (folder,) = cache_root.iterdir()
    assert folder.name.startswith("cityscapes-seeds-auto-")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.npz"))
    assert files == [
        "leftImg8bit/train/aachen/aachen_000000_000001_leftImg8bit.npz",
        "leftImg8bit/train/bremen/bremen_000000_000002_leftImg8bit.npz",
    ]
    dataset = open_dataset("cityscapes", root, "train")
    cache = SuperpixelCache(cache_root, dataset_key=DatasetKey.for_dataset(dataset))
    assert cache.folder == folder
    labels = cache.load(dataset.names[0], shape=(64, 128))
    np.testing.assert_array_equal(labels, compute_superpixels(dataset.load_image(0)))
    assert labels.max() + 1 == 8  # default count at 128x64: 8 blocks of 32x32
    assert not list(root.rglob("*.npz"))  # nothing written into the dataset

    assert main(args) == 0
    assert "0 computed, 2 already cached" in capsys.readouterr().out

    assert main([*args, "--split", "val", "--method", "grid", "--num-superpixels", "2"]) == 0
    assert len(list(cache_root.iterdir())) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-superpixels", "0"], "--num-superpixels 0"),
        (["--workers", "0"], "--workers 0"),
        (["--split", "trian"], "split='trian'"),
    ],
)
def test_cli_bad_values_exit_2_naming_them(tmp_path, capsys, extra, message):
    root = _tiny_cityscapes(tmp_path / "cityscapes")
    code = main(_cli_args(root, tmp_path / "c", *extra))
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cli_bad_method_or_layout_exits_2(tmp_path, capsys):
    root = _tiny_cityscapes(tmp_path / "cityscapes")
    with pytest.raises(SystemExit) as info:
        main(["data", "superpixels", str(root), "--layout", "cityscapes", "--method", "quickshift"])
    assert info.value.code == 2 and "'quickshift'" in capsys.readouterr().err
    code = main(
        ["data", "superpixels", str(root), "--layout", "gtav", "--cache", str(tmp_path / "c")]
    )
    assert code == 2 and str(root) in capsys.readouterr().err
    code = main(
        [
            "data",
            "superpixels",
            str(root),
            "--layout",
            "synthia",
            "--split",
            "train",
            "--cache",
            str(tmp_path / "c"),
        ]
    )
    assert code == 2 and "split='train'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
