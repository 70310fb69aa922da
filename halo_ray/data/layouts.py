"""Lazy readers for the official GTAV, SYNTHIA, Cityscapes and ACDC file layouts.

Construction only lists files and checks that every image has its label file; pixels are
decoded in ``__getitem__``, so opening a 25 k-image GTAV tree is cheap. Every reader
returns :class:`Sample` objects with trainIds (0..18, 255 = ignore) whatever the layout
stores on disk (Cityscapes labelIds, see :mod:`halo_ray.data.labels`; SYNTHIA class ids,
see :mod:`halo_ray.data.synthia`).

Layouts (``<root>`` is the folder passed to the reader)::

    GTAV        <root>/images/00001.png                      RGB
                <root>/labels/00001.png                      8-bit palette PNG of labelIds
    SYNTHIA     <root>/RGB/0000000.png                       RGB (RAND_CITYSCAPES: 1280x760)
                <root>/GT/LABELS/0000000.png                 16-bit RGB PNG, SYNTHIA id in
                                                             channel 0 (8-bit copies accepted)
    Cityscapes  <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
                <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    ACDC        <root>/rgb_anon/<condition>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png
                <root>/gt/<condition>/<split>/<seq>/<seq>_frame_<n>_gt_labelIds.png

Size mismatches: SYNTHIA, Cityscapes and ACDC labels must match their image exactly (a
mismatch is a broken download and raises :class:`DatasetError`). Real GTAV ships a few
image/label pairs of different sizes; there the label is resized to the image with
nearest-neighbour sampling, as the usual GTAV loaders do.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from halo_ray.data.labels import (
    CITYSCAPES_CLASSES,
    NUM_CLASSES,
    LabelError,
    check_void_ids,
    to_train_ids,
)
from halo_ray.data.png16 import PNG_SIGNATURE, PngError, decode_png, read_png_header
from halo_ray.data.synthia import SYNTHIA_16_TRAIN_IDS, synthia_to_train_ids

__all__ = [
    "ACDC_CONDITIONS",
    "ACDCDataset",
    "CityscapesDataset",
    "DatasetError",
    "GTAVDataset",
    "InvalidLabelError",
    "LAYOUTS",
    "SYNTHIADataset",
    "Sample",
    "SegmentationDataset",
    "acdc_files",
    "cityscapes_files",
    "gtav_files",
    "open_dataset",
    "read_synthia_ids",
    "resize_image",
    "resize_label",
    "synthia_files",
]

ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")
SPLITS: tuple[str, ...] = ("train", "val", "test")

_CS_IMAGE_SUFFIX = "_leftImg8bit.png"
_CS_LABEL_SUFFIX = "_gtFine_labelIds.png"
_ACDC_IMAGE_SUFFIX = "_rgb_anon.png"
_ACDC_LABEL_SUFFIX = "_gt_labelIds.png"
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DatasetError(ValueError):
    """A dataset folder does not hold the layout it should, or one of its files is bad."""


class InvalidLabelError(DatasetError, LabelError):
    """A label file holds a value that is not a Cityscapes labelId (both error kinds)."""


@dataclass(frozen=True)
class Sample:
    """One decoded image/label pair."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    label: np.ndarray  # [H, W] uint8 trainIds, 255 = ignore
    name: str  # image path relative to the dataset root (posix), stable across machines


# ----------------------------------------------------------------------------------
# file naming (shared with the generator so writer and readers cannot drift apart)


def gtav_files(root: Path, index: int) -> tuple[Path, Path]:
    """(image, label) paths of GTAV item ``index`` (1-based, five digits as in the release)."""
    name = f"{index:05d}.png"
    return root / "images" / name, root / "labels" / name


def synthia_files(root: Path, index: int) -> tuple[Path, Path]:
    """(RGB, GT/LABELS) paths of SYNTHIA item ``index`` (0-based, seven digits as released)."""
    name = f"{index:07d}.png"
    return root / "RGB" / name, root / "GT" / "LABELS" / name


def cityscapes_files(root: Path, split: str, city: str, seq: int, frame: int) -> tuple[Path, Path]:
    """(leftImg8bit, gtFine labelIds) paths of one Cityscapes frame."""
    stem = f"{city}_{seq:06d}_{frame:06d}"
    return (
        root / "leftImg8bit" / split / city / f"{stem}{_CS_IMAGE_SUFFIX}",
        root / "gtFine" / split / city / f"{stem}{_CS_LABEL_SUFFIX}",
    )


def acdc_files(
    root: Path, condition: str, split: str, sequence: str, frame: int
) -> tuple[Path, Path]:
    """(rgb_anon, gt labelIds) paths of one ACDC frame."""
    stem = f"{sequence}_frame_{frame:06d}"
    return (
        root / "rgb_anon" / condition / split / sequence / f"{stem}{_ACDC_IMAGE_SUFFIX}",
        root / "gt" / condition / split / sequence / f"{stem}{_ACDC_LABEL_SUFFIX}",
    )


# ----------------------------------------------------------------------------------
# decoding


def _read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8 ``[H, W, 3]``; DatasetError naming the file if bad."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.array(rgb, dtype=np.uint8)  # [H, W, 3]
    except _READ_ERRORS as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except _READ_ERRORS as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    return height, width


def _read_label_ids(path: Path) -> np.ndarray:
    """Decode a labelIds file (8-bit grayscale, 8-bit palette indices, or 16-bit grayscale)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                return np.array(im)  # [H, W]; palette PNGs give their indices
    except _READ_ERRORS as err:
        raise DatasetError(f"cannot read label file {path}: {err}") from err
    raise DatasetError(
        f"label file {path} has PIL mode {mode!r}; expected a single-channel labelIds image "
        "(8-bit grayscale or palette), not a colour rendering of the labels"
    )


def read_synthia_ids(path: Path) -> np.ndarray:
    """SYNTHIA class ids ``[H, W]`` (uint16 or uint8) from the first channel of a label file.

    16-bit PNGs are decoded by OpenCV through :func:`halo_ray.data.png16.decode_png`, which
    checks every chunk's CRC first (Pillow would keep only the high byte of each sample and
    turn every id into 0); 8-bit redistributions (grey, palette indices, or RGB/RGBA with
    the id in the first channel) are read with Pillow.
    """
    try:
        data = Path(path).read_bytes()
        if data.startswith(PNG_SIGNATURE) and read_png_header(data).bit_depth == 16:
            return decode_png(data, channel=0)  # [H, W] uint16
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.array(im)
    except (*_READ_ERRORS, PngError) as err:
        raise DatasetError(f"cannot read label file {path}: {err}") from err
    if arr.ndim == 3:
        arr = arr[:, :, 0]  # [H, W] the id channel of an RGB/RGBA/LA rendering
    if arr.dtype.kind not in "iub":
        raise DatasetError(
            f"label file {path} holds {arr.dtype} values; expected integer class ids"
        )
    return arr


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image to ``size=(H, W)``."""
    if image.shape[:2] == size:
        return image
    out = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(out)


def _resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map to ``size=(H, W)`` (no new ids)."""
    if label.shape == size:
        return label
    out = Image.fromarray(label).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(out)


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bicubic resize of an RGB uint8 image ``[H, W, 3]`` to ``size=(H', W')``, as the
    RIPU/HALO input pipelines do (PIL bicubic); the array itself when the size already matches."""
    size = _check_size(size)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 [H, W, 3] array, but got dtype {image.dtype} and shape {image.shape}"
        )
    if image.shape[:2] == size:
        return image
    out = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(out)  # [H', W', 3]


def resize_label(label: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map ``[H, W]`` to ``size=(H', W')`` (PIL
    nearest, so no new ids and void stays void); the array itself when the size matches."""
    size = _check_size(size)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"label must be a uint8 [H, W] array, but got dtype {label.dtype} and shape {label.shape}"
        )
    return _resize_label(label, size)  # [H', W']


def _check_size(size: Any) -> tuple[int, int] | None:
    """Validate the optional output size ``(H, W)``."""
    if size is None:
        return None
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size
        )
    )
    if not ok:
        raise ValueError(
            f"size must be None or (height, width) with positive integers, but got size={size!r}"
        )
    return int(size[0]), int(size[1])


def _check_split(split: Any, layout: str) -> str:
    """``split`` must be one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(
            f"split must be one of {SPLITS} for the {layout} layout, but got split={split!r}"
        )
    return split


def _require_dir(path: Path, expected: str) -> None:
    """DatasetError naming ``path`` and the expected layout when the folder is missing."""
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise DatasetError(f"{path} {what}; expected {expected}")


def _pair_labels(images: list[Path], label_of: Any, expected: str) -> list[tuple[Path, Path]]:
    """Pair every image with its label path; DatasetError naming both if a label is missing."""
    pairs = [(img, label_of(img)) for img in images]
    listed: dict[Path, set[str]] = {}
    for img, lbl in pairs:
        folder = lbl.parent
        if folder not in listed:
            listed[folder] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if lbl.name not in listed[folder]:
            raise DatasetError(f"image {img} has no label file: expected {lbl} ({expected})")
    return pairs


# ----------------------------------------------------------------------------------
# readers


class SegmentationDataset:
    """Base reader: a sorted list of (image, label) files decoded on access.

    Subclasses find the files of their layout and call ``__init__``; users index it like a
    sequence. ``__getitem__`` is what training and evaluation call; ``load_label`` is the
    cheaper label-only path for oracles and statistics.
    """

    layout: ClassVar[str] = ""
    class_names: ClassVar[tuple[str, ...]] = CITYSCAPES_CLASSES
    num_classes: ClassVar[int] = NUM_CLASSES
    # trainIds the layout's labels can hold (SYNTHIA lacks terrain, truck and train)
    label_train_ids: ClassVar[tuple[int, ...]] = tuple(range(NUM_CLASSES))
    resize_mismatched_labels: ClassVar[bool] = False  # GTAV only: fix known size mismatches

    def __init__(
        self, root: Path, pairs: Sequence[tuple[Path, Path]], *, size: Any = None, void_ids: Sequence[int] = ()
    ) -> None:
        self.root = Path(root)
        self.size = _check_size(size)
        #: extra label values read as void (see :func:`~halo_ray.data.labels.check_void_ids`)
        self.void_ids = check_void_ids(void_ids, name="void_ids")
        ordered = sorted(pairs, key=lambda p: p[0].relative_to(self.root).as_posix())
        self._images = [p[0] for p in ordered]
        self._labels = [p[1] for p in ordered]
        self.names: list[str] = [p.relative_to(self.root).as_posix() for p in self._images]

    def __len__(self) -> int:
        return len(self._images)

    def _index(self, i: Any) -> int:
        """Normalise an integer index (negative from the end); IndexError when out of range."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, but got {type(i).__name__}")
        n = len(self._images)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"index {int(i)} out of range for {type(self).__name__} of length {n}")
        return j

    def image_path(self, i: int) -> Path:
        """Path of the image file of item ``i``."""
        return self._images[self._index(i)]

    def label_path(self, i: int) -> Path:
        """Path of the label file of item ``i``."""
        return self._labels[self._index(i)]

    def _decode_label(self, path: Path) -> np.ndarray:
        """trainIds ``[H, W]`` uint8 of one label file; the one place layouts differ in labels."""
        raw = _read_label_ids(path)
        try:
            return to_train_ids(raw, source=str(path), void_ids=self.void_ids)
        except LabelError as err:
            raise InvalidLabelError(str(err)) from err

    def _train_ids(self, j: int, image_hw: tuple[int, int]) -> np.ndarray:
        """Label of item ``j`` as trainIds at the image's size (before the optional resize)."""
        path = self._labels[j]
        label = self._decode_label(path)
        if label.shape != image_hw:
            if not self.resize_mismatched_labels:
                raise DatasetError(
                    f"size mismatch: image {self._images[j]} is {image_hw[1]}x{image_hw[0]} (WxH) "
                    f"but label {path} is {label.shape[1]}x{label.shape[0]}"
                )
            label = _resize_label(label, image_hw)
        return label

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of item ``i`` as :meth:`__getitem__` returns it, from the file header only
        (no decoding): the native size, or ``size`` when the reader resizes."""
        return self.size if self.size is not None else _image_size(self._images[self._index(i)])

    def load_image(self, i: int) -> np.ndarray:
        """Only the image of item ``i``: RGB uint8 ``[H, W, 3]`` (the label file is not read)."""
        image = _read_image(self._images[self._index(i)])  # [H, W, 3]
        return image if self.size is None else _resize_image(image, self.size)

    def load_label(self, i: int) -> np.ndarray:
        """Only the label of item ``i`` as trainIds ``[H, W]`` uint8 (reads the image header)."""
        j = self._index(i)
        label = self._train_ids(j, _image_size(self._images[j]))
        return label if self.size is None else _resize_label(label, self.size)

    def __getitem__(self, i: int) -> Sample:
        j = self._index(i)
        image = _read_image(self._images[j])  # [H, W, 3]
        label = self._train_ids(j, image.shape[:2])  # [H, W]
        if self.size is not None:
            image, label = _resize_image(image, self.size), _resize_label(label, self.size)
        return Sample(image=image, label=label, name=self.names[j])

    def __iter__(self) -> Iterator[Sample]:
        for j in range(len(self)):
            yield self[j]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, size={self.size})"


class GTAVDataset(SegmentationDataset):
    """GTAV ("Playing for Data"): ``images/*.png`` with palette ``labels/*.png`` of labelIds."""

    layout = "gtav"
    resize_mismatched_labels = True

    def __init__(self, root: str | Path, *, size: Any = None, void_ids: Sequence[int] = ()) -> None:
        root = Path(root)
        expected = f"{root}/images/<nnnnn>.png with {root}/labels/<nnnnn>.png (GTAV layout)"
        _require_dir(root, expected)
        _require_dir(root / "images", expected)
        _require_dir(root / "labels", expected)
        images = sorted((root / "images").glob("*.png"))
        if not images:
            raise DatasetError(f"no images in {root / 'images'}; expected {expected}")
        pairs = _pair_labels(images, lambda img: root / "labels" / img.name, expected)
        super().__init__(root, pairs, size=size, void_ids=void_ids)


class SYNTHIADataset(SegmentationDataset):
    """SYNTHIA RAND_CITYSCAPES: ``RGB/*.png`` with 16-bit ``GT/LABELS/*.png`` of SYNTHIA ids.

    ``root`` is the ``RAND_CITYSCAPES`` folder. Labels come back as 19-class Cityscapes
    trainIds in which terrain, truck and train never occur (see :mod:`halo_ray.data.synthia`
    for the mapping and for the 16-class / 13-class evaluation).
    """

    layout = "synthia"
    label_train_ids = SYNTHIA_16_TRAIN_IDS

    def __init__(self, root: str | Path, *, size: Any = None) -> None:
        root = Path(root)
        expected = (
            f"{root}/RGB/<nnnnnnn>.png with {root}/GT/LABELS/<nnnnnnn>.png "
            "(SYNTHIA RAND_CITYSCAPES layout)"
        )
        _require_dir(root, expected)
        _require_dir(root / "RGB", expected)
        _require_dir(root / "GT" / "LABELS", expected)
        images = sorted((root / "RGB").glob("*.png"))
        if not images:
            raise DatasetError(f"no images in {root / 'RGB'}; expected {expected}")
        pairs = _pair_labels(images, lambda img: root / "GT" / "LABELS" / img.name, expected)
        super().__init__(root, pairs, size=size)

    def _decode_label(self, path: Path) -> np.ndarray:
        """trainIds of one SYNTHIA label file (ids from its first channel, 16- or 8-bit)."""
        raw = read_synthia_ids(path)
        try:
            return synthia_to_train_ids(raw, source=str(path))
        except LabelError as err:
            raise InvalidLabelError(str(err)) from err


class CityscapesDataset(SegmentationDataset):
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine`` labelIds."""

    layout = "cityscapes"

    def __init__(self, root: str | Path, split: str, *, size: Any = None, void_ids: Sequence[int] = ()) -> None:
        root = Path(root)
        self.split = _check_split(split, self.layout)
        expected = (
            f"{root}/leftImg8bit/{split}/<city>/*{_CS_IMAGE_SUFFIX} with "
            f"{root}/gtFine/{split}/<city>/*{_CS_LABEL_SUFFIX} (Cityscapes layout)"
        )
        _require_dir(root, expected)
        _require_dir(root / "leftImg8bit" / split, expected)
        _require_dir(root / "gtFine" / split, expected)
        images = sorted((root / "leftImg8bit" / split).glob(f"*/*{_CS_IMAGE_SUFFIX}"))
        if not images:
            raise DatasetError(
                f"split {split!r} is empty: no images in {root / 'leftImg8bit' / split}; expected {expected}"
            )

        def label_of(img: Path) -> Path:
            stem = img.name[: -len(_CS_IMAGE_SUFFIX)]
            return root / "gtFine" / split / img.parent.name / f"{stem}{_CS_LABEL_SUFFIX}"

        super().__init__(root, _pair_labels(images, label_of, expected), size=size, void_ids=void_ids)


class ACDCDataset(SegmentationDataset):
    """ACDC: ``rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png`` + ``gt`` labelIds.

    ``conditions=None`` reads every condition folder present under ``rgb_anon/`` (at least
    one of :data:`ACDC_CONDITIONS`); naming conditions explicitly requires each of them.
    """

    layout = "acdc"

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        conditions: Sequence[str] | None = None,
        size: Any = None,
        void_ids: Sequence[int] = (),
    ) -> None:
        root = Path(root)
        self.split = _check_split(split, self.layout)
        expected = (
            f"{root}/rgb_anon/<condition>/{split}/<sequence>/*{_ACDC_IMAGE_SUFFIX} with "
            f"{root}/gt/<condition>/{split}/<sequence>/*{_ACDC_LABEL_SUFFIX} (ACDC layout), "
            f"condition in {ACDC_CONDITIONS}"
        )
        _require_dir(root, expected)
        _require_dir(root / "rgb_anon", expected)
        _require_dir(root / "gt", expected)
        self.conditions = self._resolve_conditions(root, conditions, expected)
        images: list[Path] = []
        for cond in self.conditions:
            for top in ("rgb_anon", "gt"):
                folder = root / top / cond / split
                if not folder.is_dir():
                    raise DatasetError(
                        f"condition {cond!r}: {folder} does not exist; expected {expected}"
                    )
            found = sorted((root / "rgb_anon" / cond / split).glob(f"*/*{_ACDC_IMAGE_SUFFIX}"))
            if not found:
                raise DatasetError(
                    f"split {split!r} of condition {cond!r} is empty: no images in "
                    f"{root / 'rgb_anon' / cond / split}; expected {expected}"
                )
            images.extend(found)

        def label_of(img: Path) -> Path:
            cond = img.parent.parent.parent.name
            stem = img.name[: -len(_ACDC_IMAGE_SUFFIX)]
            return root / "gt" / cond / split / img.parent.name / f"{stem}{_ACDC_LABEL_SUFFIX}"

        super().__init__(root, _pair_labels(images, label_of, expected), size=size, void_ids=void_ids)

    @staticmethod
    def _resolve_conditions(
        root: Path, conditions: Sequence[str] | None, expected: str
    ) -> tuple[str, ...]:
        """Validate the requested conditions, or find the present ones when None."""
        if conditions is None:
            present = tuple(c for c in ACDC_CONDITIONS if (root / "rgb_anon" / c).is_dir())
            if not present:
                raise DatasetError(
                    f"no condition folder under {root / 'rgb_anon'}; expected {expected}"
                )
            return present
        if isinstance(conditions, str):
            conditions = (conditions,)
        conditions = tuple(conditions)
        if not conditions:
            raise ValueError(
                f"conditions must name at least one of {ACDC_CONDITIONS}, but got conditions=()"
            )
        for cond in conditions:
            if cond not in ACDC_CONDITIONS:
                raise ValueError(
                    f"conditions must be a subset of {ACDC_CONDITIONS}, but got {cond!r}"
                )
        if len(set(conditions)) != len(conditions):
            raise ValueError(
                f"conditions must not repeat a condition, but got conditions={conditions!r}"
            )
        for cond in conditions:
            if not (root / "rgb_anon" / cond).is_dir():
                raise DatasetError(
                    f"condition {cond!r} is missing: {root / 'rgb_anon' / cond} does not exist; expected {expected}"
                )
        return conditions


LAYOUTS: dict[str, type[SegmentationDataset]] = {
    "gtav": GTAVDataset,
    "synthia": SYNTHIADataset,
    "cityscapes": CityscapesDataset,
    "acdc": ACDCDataset,
}


#: The folders a layout's root holds: the top level of each official download.
LAYOUT_FOLDERS: dict[str, tuple[str, ...]] = {
    "gtav": ("images", "labels"),
    "synthia": ("RGB", "GT/LABELS"),
    "cityscapes": ("leftImg8bit", "gtFine"),
    "acdc": ("rgb_anon", "gt"),
}


def resolve_layout_root(root: str | Path, layout: str) -> tuple[Path, str | None]:
    """The folder that holds ``layout``'s folders, and a note when it is not ``root`` itself.

    ``root`` itself when it holds any of them; otherwise its one subfolder that holds all of
    them — an archive's own top folder, as users unpack downloads (SYNTHIA's
    ``RAND_CITYSCAPES/``, a ``cityscapes/`` folder around ``leftImg8bit/`` and ``gtFine/``).
    The note says which folder was read; anything else is left to the reader's own errors.
    """
    root = Path(root)
    wanted = LAYOUT_FOLDERS[layout]
    if not root.is_dir() or any((root / f).is_dir() for f in wanted):
        return root, None
    inside = sorted(d for d in root.iterdir() if d.is_dir() and all((d / f).is_dir() for f in wanted))
    if len(inside) != 1:
        return root, None
    return inside[0], f"read {inside[0]}: the folder inside {root} that holds the {layout} layout"


def open_dataset(
    layout: str, root: str | Path, split: str | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Open a dataset by layout name ("gtav" | "synthia" | "cityscapes" | "acdc").

    GTAV and SYNTHIA have no splits in their layouts: ``split`` must be None (or "all").
    Cityscapes and ACDC need ``split``. Extra keyword arguments (``size``, ``conditions``)
    go to the reader.
    """
    key = layout.lower() if isinstance(layout, str) else layout
    if key not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, but got layout={layout!r}")
    root, _ = resolve_layout_root(root, key)  # an archive's top folder is read through
    if key in ("gtav", "synthia"):
        if split not in (None, "all"):
            raise ValueError(
                f"the {key} layout has no splits: split must be None or 'all', but got split={split!r}"
            )
        return LAYOUTS[key](root, **kwargs)  # type: ignore[call-arg]
    if split is None:
        raise ValueError(f"split is required for the {key} layout: one of {SPLITS}")
    return LAYOUTS[key](root, split, **kwargs)  # type: ignore[call-arg]
