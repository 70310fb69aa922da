"""Dataset checker: scan a folder in an official layout and report every problem at once.

The readers in :mod:`halo_ray.data.layouts` stop at the first bad file; before a long run
one wants the whole list. :func:`check_dataset` pairs every image with its label file by
name, then checks each file in a pool of worker processes, streaming: a worker decodes
one label, returns its class histogram (20 integers) and its problems, and forgets it.

What is checked, and how much each costs per item:

* pairing: an image without its label file, or a label file without its image (error);
* images: the header gives the size; PNGs must also end with an intact ``IEND`` chunk,
  which catches truncated downloads without reading the file. ``verify_images=True``
  reads the whole file and checks the CRC of every chunk (catches flipped bytes too);
* labels: fully decoded (CRC of every chunk checked, then the pixels), every value must be
  in the layout's id map (Cityscapes labelIds 0..33; SYNTHIA ids 0..22), and the pixels
  are counted per trainId (19 classes + void) over every readable label file;
* sizes: label size ≠ image size is an error, except for GTAV, which is known to ship a
  few such pairs that its reader resizes, so there it is a warning.

Pool choice: processes (``spawn`` start method, so it is safe whatever threads the caller
runs; a script calling :func:`check_dataset` with ``workers > 1`` needs the usual
``if __name__ == "__main__":`` guard). Pillow, zlib and OpenCV (16-bit SYNTHIA labels, see
:mod:`halo_ray.data.png16`) release the GIL while they decode, but the CRC walk, the
histogram and the Python around them hold it in part; processes scale whatever that share
is. Starting the workers costs about a second, which only small trees notice;
``workers=1`` checks in the calling process.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from halo_ray.data.cpus import usable_cpus
from halo_ray.data.labels import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    INVALID_TRAIN_ID,
    NUM_CLASSES,
    NUM_LABEL_IDS,
    check_void_ids,
    label_id_lut,
)
from halo_ray.data.layouts import (
    _ACDC_IMAGE_SUFFIX,
    _ACDC_LABEL_SUFFIX,
    _CS_IMAGE_SUFFIX,
    _CS_LABEL_SUFFIX,
    _READ_ERRORS,
    ACDC_CONDITIONS,
    LAYOUT_FOLDERS,
    SPLITS,
    DatasetError,
    _read_label_ids,
    read_synthia_ids,
    resolve_layout_root,
)
from halo_ray.data.png16 import PNG_SIGNATURE, PngError, check_png_structure, read_png_header
from halo_ray.data.synthia import NUM_SYNTHIA_IDS, SYNTHIA_ID_TO_TRAIN_ID

__all__ = [
    "CHECK_LAYOUTS",
    "CheckReport",
    "ProblemKind",
    "check_dataset",
]

CHECK_LAYOUTS: tuple[str, ...] = ("gtav", "synthia", "cityscapes", "acdc")
LABELLED_SPLITS: tuple[str, ...] = ("train", "val")  # Cityscapes/ACDC test labels are dummies
VOID_BIN = NUM_CLASSES  # index of the void / ignore bin in CheckReport.class_pixels
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the only valid last 12 bytes of a PNG
_CHUNKSIZE_MAX = 16  # items per task sent to a worker (amortises pickling, keeps progress live)


class ProblemKind:
    """Names of the problem kinds (the keys of :attr:`CheckReport.problems`)."""

    MISSING_FOLDER = "missing folder"
    IMAGE_WITHOUT_LABEL = "image without label"
    LABEL_WITHOUT_IMAGE = "label without image"
    UNREADABLE_IMAGE = "unreadable image"
    UNREADABLE_LABEL = "unreadable label"
    SIZE_MISMATCH = "size mismatch"
    IDS_OUTSIDE_MAP = "label ids outside the map"


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found; ``ok`` when there is no error."""

    root: str  # the folder that was checked
    layout: str  # "gtav" | "synthia" | "cityscapes" | "acdc"
    note: str | None = None  # which folder was read, when the given root wrapped the layout
    errors: list[str] = field(default_factory=list)  # one message per problem, naming the file
    warnings: list[str] = field(default_factory=list)  # problems the readers work around
    n_images: int = 0  # image files found
    n_labels: int = 0  # label files found
    # [20] pixels per trainId 0..18, then void (official void ids and 255); ids outside the
    # map are not counted (they are errors), every readable label file is
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES + 1, np.int64))
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind → messages, as found

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def _add(self, severity: str, kind: str, message: str) -> None:
        text = f"{kind}: {message}"
        (self.errors if severity == "error" else self.warnings).append(text)
        self.problems.setdefault(kind, []).append(text)

    def class_percent(self) -> np.ndarray:
        """``[20]`` share of each trainId (and void, last) in all counted pixels, in percent."""
        total = int(self.class_pixels.sum())
        if total == 0:
            return np.full(NUM_CLASSES + 1, np.nan)
        return self.class_pixels / total * 100.0

    def summary(self, max_per_kind: int = 5) -> str:
        """Multi-line human summary: counts, the first problems of each kind, class table."""
        lines = [
            f"{self.layout} dataset at {self.root}: {self.n_images} images, {self.n_labels} "
            f"label files, {len(self.errors)} errors, {len(self.warnings)} warnings",
        ]
        if self.note:
            lines.insert(0, self.note)
        error_kinds = {e.split(": ", 1)[0] for e in self.errors}
        for title, want_error in (("errors", True), ("warnings", False)):
            kinds = [k for k in self.problems if (k in error_kinds) == want_error]
            if not kinds:
                continue
            lines.append(f"{title}:")
            for kind in kinds:
                msgs = self.problems[kind]
                lines.append(f"  {kind} ({len(msgs)}):")
                prefix = len(kind) + 2
                lines.extend(f"    {m[prefix:]}" for m in msgs[:max_per_kind])
                if len(msgs) > max_per_kind:
                    lines.append(f"    ... and {len(msgs) - max_per_kind} more")
        total = int(self.class_pixels.sum())
        labelled = int(self.class_pixels[:NUM_CLASSES].sum())
        lines.append(f"class pixel frequencies ({total} pixels; % of all, % of non-void):")
        names = (*CITYSCAPES_CLASSES, "void")
        for i, name in enumerate(names):
            count = int(self.class_pixels[i])
            all_pct = f"{100.0 * count / total:7.3f}" if total else "      -"
            lab_pct = (
                f"{100.0 * count / labelled:7.3f}" if labelled and i < NUM_CLASSES else "      -"
            )
            lines.append(f"  {name:<14} {all_pct} {lab_pct}  {count}")
        lines.append("result: OK" if self.ok else f"result: FAILED ({len(self.errors)} errors)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------
# scanning the folder tree


class _Item(NamedTuple):
    """One unit of work: an image and/or a label file (paths as str: cheap to pickle)."""

    image: str | None
    label: str | None
    label_format: str  # "labelids" (Cityscapes ids, PIL) | "synthia" (SYNTHIA ids, OpenCV/PIL)
    mismatch_is_error: bool
    void_ids: tuple[int, ...] = ()  # extra labelId values read as void (``--void-label-ids``)


@dataclass
class _Group:
    """Image and label folders whose files pair up by a key built from the file name."""

    image_dir: Path
    label_dir: Path
    image_glob: str  # relative to image_dir
    label_glob: str
    image_suffix: str  # stripped to form the key
    label_suffix: str


def _files(folder: Path, pattern: str, suffix: str) -> dict[str, Path]:
    """``{key: path}`` for files matching ``pattern``; key = path relative to folder, suffix off."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.glob(pattern):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            out[rel[: -len(suffix)]] = path
    return out


def _expected(layout: str, root: Path) -> str:
    """One-line description of the layout, for error messages."""
    return {
        "gtav": f"{root}/images/<nnnnn>.png with {root}/labels/<nnnnn>.png (GTAV layout)",
        "synthia": f"{root}/RGB/<nnnnnnn>.png with {root}/GT/LABELS/<nnnnnnn>.png "
        "(SYNTHIA RAND_CITYSCAPES layout)",
        "cityscapes": f"{root}/leftImg8bit/<split>/<city>/*{_CS_IMAGE_SUFFIX} with "
        f"{root}/gtFine/<split>/<city>/*{_CS_LABEL_SUFFIX} (Cityscapes layout)",
        "acdc": f"{root}/rgb_anon/<condition>/<split>/<sequence>/*{_ACDC_IMAGE_SUFFIX} with "
        f"{root}/gt/<condition>/<split>/<sequence>/*{_ACDC_LABEL_SUFFIX} (ACDC layout)",
    }[layout]


_TOP_FOLDERS = LAYOUT_FOLDERS


def _check_split(split: Any, layout: str) -> tuple[str, ...] | None:
    """None (all labelled splits present) or the one requested split."""
    if split is None:
        return None
    if layout in ("gtav", "synthia"):
        if split != "all":
            raise ValueError(
                f"the {layout} layout has no splits: split must be None or 'all', but got split={split!r}"
            )
        return None
    if split not in SPLITS:
        raise ValueError(
            f"split must be one of {SPLITS} for the {layout} layout, but got split={split!r}"
        )
    return (split,)


def _present_splits(parents: Sequence[Path], requested: tuple[str, ...] | None) -> list[str]:
    """Splits to check: the requested one, or the labelled splits present under any parent."""
    candidates = requested or LABELLED_SPLITS
    return [s for s in candidates if any((p / s).is_dir() for p in parents)]


def _groups(
    layout: str,
    root: Path,
    splits: tuple[str, ...] | None,
    conditions: Sequence[str] | None,
    report: CheckReport,
) -> list[_Group]:
    """The folder pairs of ``layout`` under ``root``; DatasetError if it is not that layout."""
    expected = _expected(layout, root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DatasetError(f"{root} {what}; expected {expected}")
    tops = [root / t for t in _TOP_FOLDERS[layout]]
    if not any(t.is_dir() for t in tops):
        raise DatasetError(
            f"{root} does not hold the {layout} layout: none of the expected subfolders "
            f"{', '.join(_TOP_FOLDERS[layout])} exists; expected {expected}"
        )
    for top in tops:
        if not top.is_dir():
            report._add(
                "error", ProblemKind.MISSING_FOLDER, f"{top} does not exist; expected {expected}"
            )
    img_top, lbl_top = tops
    if layout == "gtav":
        return [_Group(img_top, lbl_top, "*.png", "*.png", ".png", ".png")]
    if layout == "synthia":
        return [_Group(img_top, lbl_top, "*.png", "*.png", ".png", ".png")]
    if layout == "cityscapes":
        found = _present_splits(tops, splits)
        if not found:
            raise DatasetError(
                f"no split folder {'/'.join(splits or LABELLED_SPLITS)} under {img_top} or {lbl_top}; "
                f"expected {expected}"
            )
        return [
            _Group(
                img_top / s,
                lbl_top / s,
                f"*/*{_CS_IMAGE_SUFFIX}",
                f"*/*{_CS_LABEL_SUFFIX}",
                _CS_IMAGE_SUFFIX,
                _CS_LABEL_SUFFIX,
            )
            for s in found
        ]
    # acdc
    if conditions is None:
        conds = [c for c in ACDC_CONDITIONS if any((t / c).is_dir() for t in tops)]
        if not conds:
            raise DatasetError(
                f"no condition folder ({', '.join(ACDC_CONDITIONS)}) under {img_top} or {lbl_top}; "
                f"expected {expected}"
            )
    else:
        conds = [conditions] if isinstance(conditions, str) else list(conditions)
        bad = [c for c in conds if c not in ACDC_CONDITIONS]
        if bad or not conds or len(set(conds)) != len(conds):
            raise ValueError(
                f"conditions must be distinct names from {ACDC_CONDITIONS}, but got conditions={conditions!r}"
            )
    groups = []
    for cond in conds:
        found = _present_splits([img_top / cond, lbl_top / cond], splits)
        if not found:
            report._add(
                "error",
                ProblemKind.MISSING_FOLDER,
                f"condition {cond!r} has no split folder {'/'.join(splits or LABELLED_SPLITS)} "
                f"under {img_top / cond} or {lbl_top / cond}",
            )
        groups.extend(
            _Group(
                img_top / cond / s,
                lbl_top / cond / s,
                f"*/*{_ACDC_IMAGE_SUFFIX}",
                f"*/*{_ACDC_LABEL_SUFFIX}",
                _ACDC_IMAGE_SUFFIX,
                _ACDC_LABEL_SUFFIX,
            )
            for s in found
        )
    return groups


def _pair(
    groups: list[_Group], layout: str, report: CheckReport, void_ids: tuple[int, ...] = ()
) -> list[_Item]:
    """Items to check; images without labels and labels without images become errors."""
    label_format = "synthia" if layout == "synthia" else "labelids"
    mismatch_is_error = layout != "gtav"
    items: list[_Item] = []
    for g in groups:
        if layout in ("cityscapes", "acdc"):  # split folders: one side may be missing
            for folder in (g.image_dir, g.label_dir):
                if not folder.is_dir() and folder.parent.is_dir():
                    report._add("error", ProblemKind.MISSING_FOLDER, f"{folder} does not exist")
        images = _files(g.image_dir, g.image_glob, g.image_suffix)
        labels = _files(g.label_dir, g.label_glob, g.label_suffix)
        report.n_images += len(images)
        report.n_labels += len(labels)
        for key in sorted(images.keys() | labels.keys()):
            img, lbl = images.get(key), labels.get(key)
            if lbl is None:
                report._add(
                    "error",
                    ProblemKind.IMAGE_WITHOUT_LABEL,
                    f"{img} (expected {g.label_dir / (key + g.label_suffix)})",
                )
            elif img is None:
                report._add(
                    "error",
                    ProblemKind.LABEL_WITHOUT_IMAGE,
                    f"{lbl} (expected {g.image_dir / (key + g.image_suffix)})",
                )
            items.append(
                _Item(
                    None if img is None else str(img),
                    None if lbl is None else str(lbl),
                    label_format,
                    mismatch_is_error,
                    void_ids,
                )
            )
    return items


# ----------------------------------------------------------------------------------
# checking one item (runs in the worker processes)

_Issue = tuple[str, str, str]  # (severity, kind, message)


def _image_size(path: str, verify: bool) -> tuple[int, int]:
    """(H, W) of an image from its header; for PNGs also check the end (or every CRC)."""
    with open(path, "rb") as fh:
        head = fh.read(33)
        if head.startswith(PNG_SIGNATURE):
            if verify:
                hdr = check_png_structure(head + fh.read())
            else:
                hdr = read_png_header(head)
                size = fh.seek(0, os.SEEK_END)
                if size < 45:
                    raise PngError(f"truncated: the file has only {size} bytes")
                fh.seek(-12, os.SEEK_END)
                if fh.read(12) != _IEND:
                    raise PngError("truncated or corrupt: the file does not end with an IEND chunk")
            return hdr.height, hdr.width
    with Image.open(path) as im:  # other formats: header only
        width, height = im.size
    return height, width


def _label_histogram(ids: np.ndarray, lut: np.ndarray, n_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """(class pixels ``[20]``, bad values ``[k, 2]`` of (value, count)) of one id map.

    One pass over the pixels (a histogram of the stored ids); the id → trainId map is then
    applied to the at most 65536 histogram bins, not to the pixels.
    """
    flat = ids.ravel()
    negative = np.zeros((0, 2), np.int64)
    if flat.dtype.kind == "i" and flat.size and flat.min() < 0:  # signed PIL modes only
        neg_values, neg_counts = np.unique(flat[flat < 0], return_counts=True)
        negative = np.stack([neg_values, neg_counts], axis=1).astype(np.int64)
        flat = flat[flat >= 0]
    hist = np.bincount(flat, minlength=n_ids)  # [max(id)+1] pixels per stored id
    values = np.arange(hist.size)
    train = np.full(hist.size, INVALID_TRAIN_ID, dtype=np.int64)
    mapped = min(hist.size, lut.size)  # stored ids the map covers (extra void ids may lie above n_ids)
    train[:mapped] = lut[:mapped]
    bad = (train == INVALID_TRAIN_ID) & (hist > 0)
    ok = (train != INVALID_TRAIN_ID) & (hist > 0)
    bins = np.where(train[ok] == IGNORE_INDEX, VOID_BIN, train[ok])
    classes = np.zeros(NUM_CLASSES + 1, np.int64)
    np.add.at(classes, bins, hist[ok])
    return classes, np.concatenate([negative, np.stack([values[bad], hist[bad]], axis=1)])


def _read_label(path: str, label_format: str) -> np.ndarray:
    """Decode a label file to its stored ids; DatasetError/PngError with the reason if bad."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data.startswith(PNG_SIGNATURE):
        check_png_structure(data)  # CRCs: Pillow does not check the IDAT ones
    if label_format == "synthia":
        return read_synthia_ids(Path(path))
    return _read_label_ids(Path(path))


def _naming(path: str, err: BaseException) -> str:
    """The error message, prefixed with ``path`` unless it already names the file."""
    text = str(err) or type(err).__name__
    return text if path in text else f"{path}: {text}"


def _check_item(item: _Item, verify_images: bool) -> tuple[list[_Issue], np.ndarray | None]:
    """Problems of one image/label pair and the label's class histogram (None if unread)."""
    issues: list[_Issue] = []
    image_hw = None
    if item.image is not None:
        try:
            image_hw = _image_size(item.image, verify_images)
        except (*_READ_ERRORS, PngError) as err:
            issues.append(("error", ProblemKind.UNREADABLE_IMAGE, _naming(item.image, err)))
    if item.label is None:
        return issues, None
    try:
        ids = _read_label(item.label, item.label_format)
    except (*_READ_ERRORS, PngError) as err:  # DatasetError is a ValueError
        issues.append(("error", ProblemKind.UNREADABLE_LABEL, _naming(item.label, err)))
        return issues, None
    if item.label_format == "synthia":
        lut, n_ids, what = SYNTHIA_ID_TO_TRAIN_ID, NUM_SYNTHIA_IDS, "SYNTHIA class ids"
    else:
        lut, n_ids, what = label_id_lut(item.void_ids), NUM_LABEL_IDS, "Cityscapes labelIds"
    classes, bad = _label_histogram(ids, lut, n_ids)
    if len(bad):
        listed = ", ".join(f"{v} ({c} px)" for v, c in bad[:8].tolist())
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        issues.append(
            (
                "error",
                ProblemKind.IDS_OUTSIDE_MAP,
                f"{item.label}: value(s) {listed}{more} are not {what} (expected 0..{n_ids - 1}"
                + ("; values that mean void in this dataset go in --void-label-ids / void_label_ids)"
                   if item.label_format == "labelids" else ")"),
            )
        )
    if image_hw is not None and ids.shape != image_hw:
        issues.append(
            (
                "error" if item.mismatch_is_error else "warning",
                ProblemKind.SIZE_MISMATCH,
                f"image {item.image} is {image_hw[1]}x{image_hw[0]} (WxH) but label {item.label} "
                f"is {ids.shape[1]}x{ids.shape[0]}",
            )
        )
    return issues, classes


def _check_chunk(
    items: list[_Item], verify_images: bool
) -> list[tuple[list[_Issue], np.ndarray | None]]:
    """Worker entry point: a few items per task, so pickling costs little per file."""
    return [_check_item(item, verify_images) for item in items]


def _chunks(items: list[_Item], size: int) -> Iterator[list[_Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _results(
    items: list[_Item], workers: int, verify_images: bool
) -> Iterable[tuple[list[_Issue], np.ndarray | None]]:
    """Per-item results in order; in-process for one worker, else from a process pool."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield _check_item(item, verify_images)
        return
    size = max(1, min(_CHUNKSIZE_MAX, len(items) // (4 * workers)))
    ctx = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # map() submits every chunk at once, but a chunk is a few paths; results stream back
        task = functools.partial(_check_chunk, verify_images=verify_images)
        for chunk in pool.map(task, _chunks(items, size)):
            yield from chunk


def _check_workers(workers: Any) -> int:
    """None → one per CPU this process may use; else an integer >= 1."""
    if workers is None:
        return usable_cpus()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be None or an integer >= 1, but got workers={workers!r}")
    return int(workers)


def check_dataset(
    root: str | Path,
    layout: str,
    *,
    split: str | None = None,
    conditions: Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    verify_images: bool = False,
    void_ids: Sequence[int] = (),
) -> CheckReport:
    """Scan the dataset at ``root`` in ``layout`` and report every problem found.

    ``split``: Cityscapes/ACDC split to check (default: every labelled split present,
    i.e. ``train`` and ``val``); GTAV and SYNTHIA have none (None or "all").
    ``conditions``: ACDC conditions (default: every condition folder present).
    ``workers``: processes decoding in parallel (None = one per CPU, 1 = in this process).
    ``progress(done, total)`` is called after each file pair. ``verify_images`` checks the
    CRC of every chunk of every PNG image (reads all image bytes; default: header and end).
    ``void_ids``: extra labelId values that mean void in this dataset (the ``void_label_ids``
    config key); they are counted as void, not reported (not for SYNTHIA).
    Raises DatasetError when ``root`` is missing or holds none of the layout's folders,
    ValueError for a bad argument; every other problem goes into the report.
    """
    key = layout.lower() if isinstance(layout, str) else layout
    if key not in CHECK_LAYOUTS:
        raise ValueError(f"layout must be one of {CHECK_LAYOUTS}, but got layout={layout!r}")
    if conditions is not None and key != "acdc":
        raise ValueError(
            f"conditions only apply to the acdc layout, but got conditions={conditions!r}"
        )
    splits = _check_split(split, key)
    n_workers = _check_workers(workers)
    extra_void = check_void_ids(void_ids, name="void_ids")
    if extra_void and key == "synthia":
        raise ValueError("void_ids apply to labelId layouts (gtav, cityscapes, acdc), not to synthia")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be None or a callable (done, total), but got {progress!r}")
    root, note = resolve_layout_root(root, key)
    report = CheckReport(root=str(root), layout=key, note=note)
    items = _pair(_groups(key, root, splits, conditions, report), key, report, extra_void)
    total = len(items)
    for done, (issues, classes) in enumerate(_results(items, n_workers, verify_images), start=1):
        for severity, kind, message in issues:
            report._add(severity, kind, message)
        if classes is not None:
            report.class_pixels += classes
        if progress is not None:
            progress(done, total)
    return report
