"""Superpixels for region-level label queries (MulActSeg's multi-class labels), and their cache.

MulActSeg (Hwang et al., NeurIPS 2023) queries labels per superpixel. Its released data
pipeline computes them offline with Cai et al.'s ``extract_superpixels.py`` (facts in
``docs/datasets.md``, "Superpixels"); :func:`compute_superpixels` reproduces
that recipe and two alternatives:

* ``"seeds"`` (the released recipe): ``skimage.exposure.equalize_hist`` of the RGB image,
  then ``cv2.cvtColor(float32, RGB2HSV)``, then OpenCV-contrib SEEDS with
  ``num_levels=5, prior=3, histogram_bins=10, double_step=True`` and 10 pixel iterations.
* ``"slic"``: scikit-image SLIC (the ablation of the released code).
* ``"grid"``: SEEDS's initial block grid without any refinement (a content-free baseline).

Region counts. Cityscapes uses 2048 superpixels at 2048×1024, i.e. a 64×32 grid of 32×32 px
blocks; :func:`default_num_superpixels` scales that count by image area. SEEDS does not
take the count literally: its blocks are multiples of 16 px wide and high (a 2-px base
block doubled over 5 levels), so for instance GTAV's 1914×1052 with the area-scaled 1966
gets a 39×21 grid of about 48×48 px blocks, 819 regions (:func:`seeds_grid_shape`).

The cache (:class:`SuperpixelCache`) keeps one compressed ``.npz`` per image under a folder
named by the dataset and the parameters; :func:`precompute_superpixels` fills it in parallel
threads (OpenCV releases the GIL) and skips what is already there. Pure data code: numpy,
OpenCV and scikit-image, no Ray (architecture.md §1). OpenCV and scikit-image are imported
on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np

from halo_ray.atomic import atomic_write_bytes
from halo_ray.data.cpus import usable_cpus
from halo_ray.data.layouts import DatasetError

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_CACHE_DIR",
    "METHODS",
    "CachedSuperpixels",
    "DatasetKey",
    "ImageSource",
    "PrecomputeReport",
    "SuperpixelCache",
    "SuperpixelCacheError",
    "compute_superpixels",
    "default_num_superpixels",
    "precompute_superpixels",
    "seeds_grid_shape",
    "seeds_initial_grid",
]

METHODS: tuple[str, ...] = ("seeds", "slic", "grid")
DEFAULT_CACHE_DIR = Path("runs/cache/superpixels")  # the run cache, never the dataset folder
CACHE_FORMAT = 1  # bump when the file format or a recipe changes: old folders are then unused

# Cityscapes: 2048 superpixels at 2048x1024 (the released SEED_2048 setting)
REFERENCE_SUPERPIXELS = 2048
REFERENCE_SIZE = (1024, 2048)  # (H, W)

# The released SEEDS recipe (Cai et al.'s extract_superpixel_seeds), fixed.
SEEDS_NUM_LEVELS = 5
SEEDS_PRIOR = 3
SEEDS_HISTOGRAM_BINS = 10
SEEDS_DOUBLE_STEP = True
SEEDS_ITERATIONS = 10
SEEDS_MIN_SUPERPIXELS = 10  # OpenCV raises smaller counts to 10
# SLIC: scikit-image's default compactness (Cai et al.'s SLIC ablation passes none), no smoothing
SLIC_COMPACTNESS = 10.0
SLIC_SIGMA = 0.0

#: What each method computes beyond (method, count): written into the manifest and hashed
#: into the cache folder name, so a changed recipe can never read an old folder.
RECIPES: dict[str, dict[str, Any]] = {
    "seeds": {
        "preprocess": "skimage.exposure.equalize_hist on all RGB values; cv2 RGB2HSV on float32",
        "num_levels": SEEDS_NUM_LEVELS,
        "prior": SEEDS_PRIOR,
        "histogram_bins": SEEDS_HISTOGRAM_BINS,
        "double_step": SEEDS_DOUBLE_STEP,
        "iterations": SEEDS_ITERATIONS,
    },
    "slic": {
        "compactness": SLIC_COMPACTNESS,
        "sigma": SLIC_SIGMA,
        "colour": "CIELAB (scikit-image default)",
        "enforce_connectivity": True,
    },
    "grid": {"grid": f"SEEDS initial block grid, num_levels={SEEDS_NUM_LEVELS}"},
}

_MANIFEST = "manifest.json"
_DEFAULT_RULE = "per image: max(1, round(2048 * H * W / (2048 * 1024)))"
_ARRAY_KEY = "labels"  # the one array inside each .npz
_FILE_SUFFIX = ".npz"


class SuperpixelCacheError(DatasetError):
    """A cached superpixel file is missing or unusable (truncated, mis-sized, not a label map)."""


# ----------------------------------------------------------------------------------
# counts and the SEEDS grid


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, but got {name}={value!r}")
    return int(value)


def default_num_superpixels(height: int, width: int) -> int:
    """Superpixels for an image of ``height × width``: Cityscapes' 2048 at 2048×1024 scaled by
    area, ``max(1, round(2048 * H * W / (2048 * 1024)))`` (Python rounding, half to even)."""
    height = _positive_int(height, "height")
    width = _positive_int(width, "width")
    ref_h, ref_w = REFERENCE_SIZE
    return max(1, round(REFERENCE_SUPERPIXELS * height * width / (ref_h * ref_w)))


def _check_num_superpixels(num_superpixels: Any) -> int | None:
    return None if num_superpixels is None else _positive_int(num_superpixels, "num_superpixels")


def _seeds_levels(height: int, width: int, num_superpixels: int) -> tuple[list[int], list[int]]:
    """Blocks per row and per column at each SEEDS level (0 = the finest), as OpenCV's
    ``SuperpixelSEEDSImpl::initialize`` computes them, in its float32 arithmetic.

    ValueError for a size OpenCV cannot handle (it divides by zero and crashes the process):
    an image too small, or too elongated, for the requested count.
    """
    n = max(num_superpixels, SEEDS_MIN_SUPERPIXELS)
    f32 = np.float32
    n_h = int(np.sqrt(f32(n) * f32(height) / f32(width)))  # superpixel rows requested
    n_w = n_h * width // height
    levels = SEEDS_NUM_LEVELS + 1
    while n_h >= 1 and n_w >= 1 and levels > 1:
        levels -= 1
        scale = f32(1 << (levels - 1))
        block_wf = f32(width) / f32(n_w) / scale
        block_hf = f32(height) / f32(n_h) / scale
        if block_wf >= 1 and block_hf >= 1:
            break
    else:
        levels = 0
    if levels:
        block_w, block_h = int(np.ceil(block_wf)), int(np.ceil(block_hf))
        cols, rows = [width // block_w], [height // block_h]
        for _ in range(1, levels):
            cols.append(cols[-1] // 2)  # every level groups 2x2 blocks of the one below
            rows.append(rows[-1] // 2)
        if cols[-1] >= 1 and rows[-1] >= 1:
            return cols, rows
    raise ValueError(
        f"SEEDS cannot split a {width}x{height} (WxH) image into {num_superpixels} superpixels: "
        "its block grid would have no row or no column (the image is too small or too elongated "
        "for the count); use method='slic' or 'grid', or another num_superpixels"
    )


def seeds_grid_shape(
    height: int, width: int, num_superpixels: int | None = None
) -> tuple[int, int]:
    """``(rows, cols)`` of SEEDS's top-level block grid: ``rows * cols`` is the number of
    superpixels SEEDS returns (``getNumberOfSuperpixels()``). ``None`` = the default count."""
    height = _positive_int(height, "height")
    width = _positive_int(width, "width")
    n = _check_num_superpixels(num_superpixels) or default_num_superpixels(height, width)
    cols, rows = _seeds_levels(height, width, n)
    return rows[-1], cols[-1]


def _axis_labels(size: int, counts: list[int]) -> np.ndarray:
    """``[size]`` top-level block index of every coordinate along one axis.

    OpenCV gives each level-0 block the parent at level 1 that contains the block's last pixel
    (raster order: its bottom-right corner), and so on upwards; along one axis that is the
    block's last coordinate. Block ``b`` of a level with ``k`` blocks covers
    ``[b * (size // k), (b + 1) * (size // k))``, and the last block also takes the remainder.
    """
    coords = np.arange(size)
    labels = np.minimum(coords // (size // counts[0]), counts[0] - 1)  # [size] level 0
    for below, above in zip(counts[:-1], counts[1:], strict=True):
        last = np.minimum((np.arange(below) + 1) * (size // below), size) - 1  # [below]
        last[-1] = size - 1
        parent = np.minimum(last // (size // above), above - 1)  # [below]
        labels = parent[labels]
    return labels


def seeds_initial_grid(height: int, width: int, num_superpixels: int | None = None) -> np.ndarray:
    """int32 ``[H, W]``: the labels SEEDS starts from before any update (row-major block ids).

    The blocks are axis-aligned rectangles whose sides are sums of base blocks; at 2048×1024
    with 2048 superpixels they are exactly 32×32 px. Checked against OpenCV in the tests (an
    image painted with one colour per block is a fixed point of SEEDS).
    """
    height = _positive_int(height, "height")
    width = _positive_int(width, "width")
    n = _check_num_superpixels(num_superpixels) or default_num_superpixels(height, width)
    cols, rows = _seeds_levels(height, width, n)
    row_ids = _axis_labels(height, rows)  # [H]
    col_ids = _axis_labels(width, cols)  # [W]
    return (row_ids[:, None] * cols[-1] + col_ids[None, :]).astype(np.int32)  # [H, W]


# ----------------------------------------------------------------------------------
# computing one image


def _check_image(image: Any) -> np.ndarray:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        what = (
            f"dtype {image.dtype} and shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"image must be a uint8 [H, W, 3] RGB array, but got {what}")
    return image


def _cv2_ximgproc() -> Any:
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise ImportError(
            "SEEDS superpixels need OpenCV's contrib modules (cv2.ximgproc), which this cv2 lacks: "
            "install opencv-contrib-python-headless and uninstall other opencv-python* packages"
        )
    return cv2


def _seeds(image: np.ndarray, n: int) -> np.ndarray:
    """The released recipe; see :func:`compute_superpixels`."""
    from skimage.exposure import equalize_hist

    height, width = image.shape[:2]
    _seeds_levels(height, width, n)  # refuse sizes that would crash OpenCV
    cv2 = _cv2_ximgproc()
    # equalize_hist pools every value of the RGB image into one histogram (the released call
    # passes the [H, W, 3] array; on the flattened values it is identical and does not warn)
    equalised = equalize_hist(image.reshape(-1)).reshape(image.shape)  # [H, W, 3] float64 in (0, 1]
    hsv = cv2.cvtColor(equalised.astype(np.float32), cv2.COLOR_RGB2HSV)  # [H, W, 3] H in [0, 360)
    seeds = cv2.ximgproc.createSuperpixelSEEDS(
        width,
        height,
        3,
        n,
        num_levels=SEEDS_NUM_LEVELS,
        prior=SEEDS_PRIOR,
        histogram_bins=SEEDS_HISTOGRAM_BINS,
        double_step=SEEDS_DOUBLE_STEP,
    )
    seeds.iterate(hsv, SEEDS_ITERATIONS)
    return np.ascontiguousarray(seeds.getLabels(), dtype=np.int32)  # [H, W]


def _slic(image: np.ndarray, n: int) -> np.ndarray:
    from skimage.segmentation import slic

    labels = slic(
        image,
        n_segments=n,
        compactness=SLIC_COMPACTNESS,
        sigma=SLIC_SIGMA,
        start_label=0,
        channel_axis=-1,
    )
    return np.ascontiguousarray(labels, dtype=np.int32)  # [H, W]


def compute_superpixels(
    image: np.ndarray, *, method: str = "seeds", num_superpixels: int | None = None
) -> np.ndarray:
    """Superpixel region ids of one RGB uint8 image ``[H, W, 3]``: int32 ``[H, W]``.

    Ids lie in ``0..R-1`` with ``R = max + 1``; SEEDS ids are kept as OpenCV returns them (the
    row-major index of the block a region grew from), so an id may be unused.
    ``num_superpixels`` defaults to :func:`default_num_superpixels` of the image size.

    ``"seeds"`` follows the released recipe exactly: ``skimage.exposure.equalize_hist`` (one
    histogram over all R, G and B values), ``cv2.cvtColor(float32, COLOR_RGB2HSV)``, then
    ``cv2.ximgproc.createSuperpixelSEEDS(W, H, 3, n, num_levels=5, prior=3,
    histogram_bins=10, double_step=True)``, ``iterate(hsv, 10)``, ``getLabels()``. As released,
    the float HSV image has its hue in degrees, [0, 360), while SEEDS bins float channels as if
    they lay in [0, 1] (``min(int(v * 10), 9)``): every hue of 0.9° or more falls in the last
    bin, so the hue channel only tells grey pixels (hue 0) and a sliver of reds from the rest,
    and SEEDS effectively clusters on saturation and value. This is reproduced on purpose.
    SEEDS raises counts below 10 to 10, and its block grid fixes the actual count
    (:func:`seeds_grid_shape`); sizes that would crash OpenCV raise ValueError instead.

    ``"slic"``: ``skimage.segmentation.slic(image, n_segments=n, compactness=10, sigma=0,
    start_label=0)`` in CIELAB. 10 is scikit-image's default, which the released SLIC ablation
    uses; on 0..100 Lab values it weighs colour and a 32-px spatial step about equally.

    ``"grid"``: :func:`seeds_initial_grid`, SEEDS's starting blocks with no refinement.

    Deterministic: the same image and arguments give the same ids.
    """
    image = _check_image(image)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got method={method!r}")
    height, width = image.shape[:2]
    n = _check_num_superpixels(num_superpixels) or default_num_superpixels(height, width)
    if method == "seeds":
        return _seeds(image, n)
    if method == "slic":
        return _slic(image, n)
    return seeds_initial_grid(height, width, n)


# ----------------------------------------------------------------------------------
# the cache


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (concurrent and killed writers leave whole files)."""
    atomic_write_bytes(path, lambda tmp: tmp.write_bytes(data))


@dataclass(frozen=True)
class DatasetKey:
    """Which images a cache folder holds superpixels of: one dataset copy at one image size."""

    layout: str  # "gtav" | "synthia" | "cityscapes" | "acdc", or any name for other image sets
    root: str  # absolute, resolved folder holding the layout (another copy gets another folder)
    image_size: tuple[int, int] | None  # (H, W) shared by every image; None when sizes differ

    @classmethod
    def for_dataset(cls, dataset: ImageSource) -> DatasetKey:
        """The key of a reader from :mod:`halo_ray.data.layouts` (its ``layout`` and ``root``);
        ``image_size`` from the image headers (no decoding)."""
        sizes = {tuple(dataset.image_size(i)) for i in range(len(dataset))}
        size = sizes.pop() if len(sizes) == 1 else None
        return cls(
            layout=str(dataset.layout),
            root=str(Path(dataset.root).resolve()),
            image_size=None if size is None else (int(size[0]), int(size[1])),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "root": self.root,
            "image_size": None if self.image_size is None else list(self.image_size),
        }


class ImageSource(Protocol):
    """What :func:`precompute_superpixels` reads: the layout readers
    (:class:`~halo_ray.data.layouts.SegmentationDataset`) satisfy it."""

    layout: str
    root: Path
    names: list[str]  # image paths relative to the root, posix, unique

    def __len__(self) -> int: ...

    def image_size(self, i: int) -> tuple[int, int]: ...  # (H, W) from the header

    def load_image(self, i: int) -> np.ndarray: ...  # [H, W, 3] uint8 RGB


class SuperpixelCache:
    """One folder of superpixel maps: one dataset (:class:`DatasetKey`), one method and count.

    Layout::

        <cache_root>/<layout>-<method>-<count or auto>-<hash>/
            manifest.json                     what the folder holds (key, recipe, versions)
            <image name without .png>.npz     one compressed int16/int32 [H, W] array "labels"

    ``<hash>`` is a digest of the dataset key, the method, the count and the method's recipe,
    so different parameters never share a folder. Image names keep their dataset subfolders
    (e.g. ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.npz``). Files are
    written atomically (temporary file + rename), so concurrent writers and a killed writer
    leave whole files only. Constructing a cache touches no disk; :meth:`save` creates the
    folder and its manifest, :meth:`load` only reads and never deletes.
    """

    def __init__(
        self,
        cache_root: str | Path,
        *,
        dataset_key: DatasetKey,
        method: str = "seeds",
        num_superpixels: int | None = None,
    ) -> None:
        if not isinstance(dataset_key, DatasetKey):
            raise ValueError(f"dataset_key must be a DatasetKey, but got {dataset_key!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, but got method={method!r}")
        self.cache_root = Path(cache_root)
        self.dataset_key = dataset_key
        self.method = method
        self.num_superpixels = _check_num_superpixels(num_superpixels)
        self.manifest: dict[str, Any] = {
            "what": "superpixel region ids, one compressed .npz per image (array 'labels', int16 "
            "or int32 [H, W]), named by the image's path relative to the dataset root",
            "format": CACHE_FORMAT,
            "dataset": dataset_key.as_dict(),
            "method": method,
            "num_superpixels": self.num_superpixels,
            "num_superpixels_rule": None if self.num_superpixels is not None else _DEFAULT_RULE,
            "recipe": RECIPES[method],
        }
        digest = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:10]
        count = "auto" if self.num_superpixels is None else str(self.num_superpixels)
        self.folder = self.cache_root / f"{dataset_key.layout}-{method}-{count}-{digest}"
        self._manifest_lock = threading.Lock()
        self._manifest_checked = False

    def __repr__(self) -> str:
        return f"SuperpixelCache(folder={str(self.folder)!r})"

    # ---- naming

    def path(self, name: str) -> Path:
        """The file of image ``name`` (a relative posix path, as the readers' ``names``)."""
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts or pure.name in ("", "."):
            raise ValueError(
                f"name must be an image path relative to the dataset root, but got name={name!r}"
            )
        return self.folder.joinpath(*pure.with_suffix(_FILE_SUFFIX).parts)

    def command(self, name: str | None = None) -> str:
        """The ``halo-ray`` command that (re)computes this folder, for error messages."""
        key = self.dataset_key
        parts = ["halo-ray data superpixels", shlex.quote(key.root), "--layout", key.layout]
        split = _split_of(key.layout, name) if name else None
        if split:
            parts += ["--split", split]
        parts += ["--method", self.method]
        if self.num_superpixels is not None:
            parts += ["--num-superpixels", str(self.num_superpixels)]
        parts += ["--cache", shlex.quote(str(self.cache_root))]
        return " ".join(parts)

    # ---- reading

    def _problem(self, path: Path, shape: tuple[int, int]) -> tuple[str | None, np.ndarray | None]:
        """(what is wrong with the file, None) or (None, its labels), decompressing all of it."""
        if not path.is_file():
            return "missing", None
        member_name = _ARRAY_KEY + ".npy"
        try:
            with zipfile.ZipFile(path) as archive:
                with archive.open(member_name) as member:  # the header only: no decompression
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        stored, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        stored, _, dtype = np.lib.format.read_array_header_2_0(member)
                if dtype not in (np.dtype(np.int16), np.dtype(np.int32)):
                    return f"not a superpixel map: its array is {dtype}, not int16/int32", None
                if tuple(stored) != tuple(shape):
                    return (
                        f"of the wrong size: it holds {_wxh(stored)} (WxH) labels but the image "
                        f"is {_wxh(shape)}",
                        None,
                    )
                with archive.open(member_name) as member:  # CRC-checked as it decompresses
                    labels = np.lib.format.read_array(member, allow_pickle=False)
        except KeyError:
            return f"not a superpixel map: it has no '{_ARRAY_KEY}' array", None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            return f"unreadable (truncated or corrupt: {type(err).__name__}: {err})", None
        if labels.size and int(labels.min()) < 0:
            return "not a superpixel map: it holds negative ids", None
        return None, labels

    def is_valid(self, name: str, *, shape: Sequence[int]) -> bool:
        """Whether image ``name`` has a complete, readable file of ``shape = (H, W)``
        (decompresses it: a flipped byte inside is caught too)."""
        problem, _ = self._problem(self.path(name), _shape(shape))
        return problem is None

    def load(self, name: str, *, shape: Sequence[int]) -> np.ndarray:
        """int32 ``[H, W]`` region ids of image ``name``, whose size is ``shape = (H, W)``.

        Raises :class:`SuperpixelCacheError` naming the file and what is wrong with it
        (missing, truncated or corrupt, another size than the image, not a label map) and the
        command that recomputes it. Nothing is deleted.
        """
        path = self.path(name)
        problem, labels = self._problem(path, _shape(shape))
        if problem is not None:
            raise SuperpixelCacheError(
                f"superpixel cache file {path} is {problem}; compute the cache with `{self.command(name)}`"
            )
        assert labels is not None
        return labels.astype(np.int32, copy=False)

    # ---- writing

    def _ensure_manifest(self) -> None:
        """Write ``manifest.json`` once; refuse a folder whose manifest says something else."""
        with self._manifest_lock:
            if self._manifest_checked:
                return
            path = self.folder / _MANIFEST
            if path.is_file():
                try:
                    found = json.loads(path.read_text())
                except (OSError, ValueError) as err:
                    raise SuperpixelCacheError(
                        f"superpixel cache manifest {path} is unreadable: {err}"
                    ) from err
                mismatched = sorted(k for k, v in self.manifest.items() if found.get(k) != v)
                if mismatched:
                    raise SuperpixelCacheError(
                        f"superpixel cache folder {self.folder} holds something else: its manifest "
                        f"differs in {', '.join(mismatched)}; move it away or use another cache root"
                    )
            else:
                record = dict(self.manifest, created_with=_versions(self.method))
                _write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
            self._manifest_checked = True

    def save(self, name: str, labels: np.ndarray) -> Path:
        """Store the region ids of image ``name`` (int16 when they fit, else int32); atomic."""
        if not isinstance(labels, np.ndarray) or labels.ndim != 2 or labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be an integer [H, W] array, but got {getattr(labels, 'shape', labels)!r}"
            )
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) > np.iinfo(np.int32).max):
            raise ValueError("labels must be ids >= 0 that fit in int32")
        path = self.path(name)
        self._ensure_manifest()
        small = labels.size == 0 or int(labels.max()) <= np.iinfo(np.int16).max
        stored = labels.astype(np.int16 if small else np.int32, copy=False)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{_ARRAY_KEY: stored})
        _write_bytes(path, buffer.getvalue())
        return path


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape
        )
    ):
        raise ValueError(
            f"shape must be (height, width) with positive integers, but got shape={shape!r}"
        )
    return int(shape[0]), int(shape[1])


def _wxh(shape: Sequence[int]) -> str:
    return (
        "x".join(str(v) for v in reversed(tuple(shape))) if len(shape) == 2 else str(tuple(shape))
    )


def _split_of(layout: str, name: str) -> str | None:
    """The split folder in an image name of the Cityscapes or ACDC layout, else None."""
    parts = PurePosixPath(name).parts
    index = {"cityscapes": 1, "acdc": 2}.get(layout)
    return parts[index] if index is not None and len(parts) > index + 1 else None


def _versions(method: str) -> dict[str, str]:
    """Library versions behind a folder (recorded, not keyed: a minor upgrade keeps the cache)."""
    out = {"numpy": np.__version__}
    try:
        if method == "seeds":
            import cv2

            out["opencv"] = cv2.__version__
        if method in ("seeds", "slic"):
            import skimage

            out["scikit-image"] = skimage.__version__
    except ImportError:  # pragma: no cover - compute would already have failed
        pass
    return out


# ----------------------------------------------------------------------------------
# a whole image list


@dataclass(frozen=True)
class PrecomputeReport:
    """What :func:`precompute_superpixels` did."""

    folder: Path  # the cache folder
    total: int  # images in the list
    computed: int  # images segmented now (missing files, and the ``replaced`` ones)
    cached: int  # images whose valid file was reused
    replaced: int  # unusable files (truncated, mis-sized) that were recomputed


def _available_memory() -> int | None:
    """Bytes of memory available to new work (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _memory_per_image(height: int, width: int, method: str, n: int) -> int:
    """Bytes one SEEDS/SLIC call needs, roughly (SEEDS: a float histogram of 1000 bins, padded
    to 1008, per block at every level, ≈2.8 GB at 2048×1024; plus the float copies)."""
    pixels = height * width
    if method == "seeds":
        try:
            cols, rows = _seeds_levels(height, width, n)
        except ValueError:
            return 64 * pixels
        blocks = sum(c * r for c, r in zip(cols, rows, strict=True))
        return blocks * 1009 * 4 + 80 * pixels
    return 64 * pixels  # SLIC keeps a few float64 copies of the image; the grid far less


def _default_workers(largest: tuple[int, int], method: str, n: int | None) -> int:
    """One thread per CPU this process may use, fewer when memory would not hold that many
    images at once."""
    cpus = usable_cpus()
    available = _available_memory()
    if available is None:
        return cpus
    count = n or default_num_superpixels(*largest)
    need = _memory_per_image(largest[0], largest[1], method, count)
    return max(1, min(cpus, int(0.7 * available) // max(1, need)))


def precompute_superpixels(
    dataset: ImageSource,
    cache: SuperpixelCache,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, bool], None] | None = None,
) -> PrecomputeReport:
    """Compute and cache the superpixels of every image of ``dataset``; skip valid cached ones.

    ``dataset``: an :class:`ImageSource`, e.g. a layout reader from
    :func:`halo_ray.data.layouts.open_dataset`. ``cache``: where the maps go (its method and
    count are used). ``workers``: threads segmenting in parallel; OpenCV and scikit-image
    release the GIL for the heavy parts. None = one per CPU, capped by the available memory
    (SEEDS needs about 2.9 GB per 2048×1024 image). ``progress(done, total, computed)`` is
    called once per image as it finishes, in this thread; ``computed`` is False for an image
    taken from the cache. A cached file that is unusable (truncated, another size) is
    recomputed and replaced. The first error (an unreadable image) cancels the images not yet
    started and is raised; the files written until then stay.
    """
    total = len(dataset)
    if workers is not None:
        workers = _positive_int(workers, "workers")
    if progress is not None and not callable(progress):
        raise ValueError(
            f"progress must be None or a callable (done, total, computed), but got {progress!r}"
        )
    names = list(dataset.names)
    if len(set(names)) != len(names):
        raise ValueError("dataset.names must be unique: two images would share one cache file")
    for name in names:
        cache.path(name)  # a bad name fails before any work
    sizes = [_shape(dataset.image_size(i)) for i in range(total)]  # headers only
    if workers is None:
        largest = max(sizes, key=lambda s: s[0] * s[1], default=(1, 1))
        workers = _default_workers(largest, cache.method, cache.num_superpixels)

    def one(i: int) -> tuple[bool, bool]:
        """(computed, replaced) for image ``i``."""
        path = cache.path(names[i])
        problem, _ = cache._problem(path, sizes[i])
        if problem is None:
            return False, False
        image = dataset.load_image(i)  # [H, W, 3]
        if image.shape[:2] != sizes[i]:
            raise DatasetError(
                f"image {names[i]} decodes to {_wxh(image.shape[:2])} (WxH) but its header says {_wxh(sizes[i])}"
            )
        try:
            labels = compute_superpixels(
                image, method=cache.method, num_superpixels=cache.num_superpixels
            )
        except ValueError as err:  # a size SEEDS cannot split: say which image
            raise ValueError(f"image {names[i]}: {err}") from err
        cache.save(names[i], labels)
        return True, problem != "missing"

    computed = replaced = done = 0

    def record(result: tuple[bool, bool]) -> None:
        nonlocal computed, replaced, done
        computed += result[0]
        replaced += result[1]
        done += 1
        if progress is not None:
            progress(done, total, result[0])

    if workers == 1 or total <= 1:
        for i in range(total):
            record(one(i))
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="superpixels")
        try:
            futures = [pool.submit(one, i) for i in range(total)]
            for future in as_completed(futures):
                record(future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return PrecomputeReport(
        folder=cache.folder,
        total=total,
        computed=computed,
        cached=total - computed,
        replaced=replaced,
    )


class CachedSuperpixels:
    """``superpixels(index)`` → int64 ``[H, W]`` of one image set, read from its cache.

    A picklable callable (it rebuilds its :class:`SuperpixelCache` after unpickling), so a
    label-pool actor and a learner actor read the same files. :meth:`ensure` fills the cache
    first (:func:`precompute_superpixels`; valid files are reused).
    """

    def __init__(self, dataset: ImageSource, cache_root: str | Path, *, method: str = "seeds",
                 num_superpixels: int | None = None) -> None:
        self.key = DatasetKey.for_dataset(dataset)
        self.cache_root = Path(cache_root)
        self.method = method
        self.num_superpixels = num_superpixels
        self.names = list(dataset.names)
        self.shapes = [_shape(dataset.image_size(i)) for i in range(len(dataset))]
        self._cache: SuperpixelCache | None = None

    @property
    def cache(self) -> SuperpixelCache:
        if self._cache is None:
            self._cache = SuperpixelCache(
                self.cache_root, dataset_key=self.key, method=self.method, num_superpixels=self.num_superpixels
            )
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"} | {"_cache": None}

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, index: int) -> np.ndarray:
        return self.cache.load(self.names[int(index)], shape=self.shapes[int(index)]).astype(np.int64)

    def ensure(self, dataset: ImageSource, *, progress: Callable[[int, int, bool], None] | None = None) -> PrecomputeReport:
        """Compute whatever the cache lacks for ``dataset`` (the set this source was built from)."""
        return precompute_superpixels(dataset, self.cache, progress=progress)
