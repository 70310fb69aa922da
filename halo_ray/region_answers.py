"""Every superpixel's ground-truth answer, computed once per image and kept beside its superpixels.

A :class:`~halo_ray.region_pool.RegionPool` needs, for each image it ranks, what answering each
region would cost (its multi-hot answer) and, for the regions it reveals, their answers and
pixel counts. Reading them from ground truth means decoding the image's label map and running
:func:`answer_table` (the trimmed interiors): ~0.3 s per Cityscapes image,
so ~15 min for Cityscapes' 2,975 training images in every trial of a search. :class:`RegionAnswers`
does it once: per image one small file under the superpixel cache folder, reused by every
later trial and run, and recomputed when the label file or the superpixel file changed.

Layout: ``<superpixel cache folder>/answers-c<C>-trim<t>/<image name>.npz`` holding ``packed``
(uint8 ``[R, ceil((C + 1) / 8)]``, the answers' bits), ``pixels`` (int32 ``[R]``, each region's
pixel count) and ``stamp`` (int64: the label file's and the superpixel file's size and
modification time). Written atomically (temporary file + rename); a file that cannot be read is
computed again and replaced, never trusted.
"""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from halo_ray.atomic import atomic_write_bytes
from halo_ray.data.cpus import usable_cpus

__all__ = ["VOID", "RegionAnswers", "answer_table", "trimmed_region_mask"]

#: the void label id in train-id label maps
VOID = 255


def trimmed_region_mask(superpixels: np.ndarray, trim: int) -> np.ndarray:
    """Pixels that count for a region's label: all but a band of ``trim`` px around borders.

    The released rule: "thick" boundaries (a pixel whose 4-neighbour inside the image has
    another id; no boundary at the image border), dilated by a ``trim``×``trim`` square. 0 keeps
    every pixel.
    """
    if trim == 0:
        return np.ones(np.shape(superpixels), dtype=bool)
    from scipy.ndimage import binary_dilation

    spx = np.asarray(superpixels)
    edge = np.zeros(spx.shape, dtype=bool)
    vertical = spx[1:] != spx[:-1]
    horizontal = spx[:, 1:] != spx[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return ~binary_dilation(edge, structure=np.ones((trim, trim), dtype=bool))


def answer_table(label: Any, superpixels: Any, *, num_classes: int = 19, trim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The multi-hot answer of every region of one image, and the pixels it was read from.

    ``label`` ``[H,W]`` holds train ids ``0..num_classes-1`` and 255 for void. Returns
    ``multihot`` uint8 ``[R, num_classes+1]`` (the last column: the region holds void) and
    ``sizes`` int64 ``[R]``: the pixels the answer was read from — the region's interior after
    trimming (:func:`trimmed_region_mask`), or all its pixels when the trim empties it (the
    released fallback); 0 for an id without pixels. There is no minimum count: one pixel of a
    class puts it in the answer. Numpy only: a label pool's process needs no torch.
    """
    lab, spx = np.asarray(label), np.asarray(superpixels)
    if lab.ndim != 2 or spx.shape != lab.shape:
        raise ValueError(
            f"label and superpixels must be [H,W] of one shape, got {lab.shape} and {spx.shape}"
        )
    if trim < 0:
        raise ValueError(f"trim must be >= 0, got {trim}")
    lab = lab.astype(np.int64)
    bad = np.unique(lab[(lab < 0) | ((lab >= num_classes) & (lab != VOID))])
    if bad.size:
        raise ValueError(
            f"label holds {bad[:5].tolist()}: train ids must be 0..{num_classes - 1} or 255 (void)"
        )
    spx = spx.astype(np.int64)
    if spx.size == 0:
        raise ValueError("superpixels is empty")
    lo = int(spx.min())
    if lo < 0:
        raise ValueError(f"superpixel ids must be >= 0, but the map holds {lo}")
    num = int(spx.max()) + 1
    cls = np.where(lab == VOID, num_classes, lab)
    width = num_classes + 1
    key = spx * width + cls
    every = np.bincount(key.ravel(), minlength=num * width).reshape(num, width)
    keep = trimmed_region_mask(spx, trim)
    inner = np.bincount(key[keep], minlength=num * width).reshape(num, width)
    fallback = inner.sum(1) == 0
    counts = np.where(fallback[:, None], every, inner)
    return (counts > 0).astype(np.uint8), counts.sum(1).astype(np.int64)


class RegionAnswers:
    """``answers(index)`` → (multi-hot answers uint8 ``[R, C + 1]``, pixels per region int32
    ``[R]``) of one image set, from a disk cache filled on first use.

    Args:
        superpixels: a :class:`~halo_ray.data.superpixels.CachedSuperpixels` of the image set
            (its cache folder holds the answers too; its names name the files).
        labels: the same image set's reader: ``load_label(index)`` → train ids ``[H, W]``
            (255 = void), ``label_path(index)`` → the label file.
        num_classes: C (answers have C + 1 columns, the last the void bit).
        trim: the border band left out when an answer is read (released: 5).

    Picklable (a label-pool actor takes it), and safe for several processes at once: two
    writers of one file write the same bytes.
    """

    def __init__(self, superpixels: Any, labels: Any, *, num_classes: int = 19, trim: int = 5) -> None:
        self.superpixels = superpixels
        self.labels = labels
        self.num_classes = int(num_classes)
        self.trim = int(trim)

    @property
    def folder(self) -> Path:
        """Where this set's answers live: beside its superpixels, one folder per (C, trim)."""
        return self.superpixels.cache.folder / f"answers-c{self.num_classes}-trim{self.trim}"

    def path(self, index: int) -> Path:
        """The answer file of image ``index``."""
        spx_file = self.superpixels.cache.path(self.superpixels.names[int(index)])
        return self.folder / spx_file.relative_to(self.superpixels.cache.folder)

    def _stamp(self, index: int) -> np.ndarray:
        """Size and modification time of the label file and of the superpixel file."""
        out = []
        for path in (Path(self.labels.label_path(index)),
                     self.superpixels.cache.path(self.superpixels.names[int(index)])):
            stat = path.stat()
            out += [stat.st_size, stat.st_mtime_ns]
        return np.asarray(out, np.int64)

    def _read(self, path: Path, stamp: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (answers, pixels), or None when the file is absent, unreadable or stale."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if not np.array_equal(data["stamp"], stamp):
                    return None
                packed, pixels = data["packed"], data["pixels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        if packed.ndim != 2 or pixels.shape != (packed.shape[0],):
            return None
        return np.unpackbits(packed, axis=1, count=self.num_classes + 1), pixels.astype(np.int32)

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        path = self.path(index)
        stamp = self._stamp(index)
        cached = self._read(path, stamp)
        if cached is not None:
            return cached
        spx = np.asarray(self.superpixels(index), np.int64)
        label = np.asarray(self.labels.load_label(index))
        if spx.shape != label.shape:
            raise ValueError(f"image {index}: superpixels {spx.shape} and labels {label.shape} differ in size")
        multihot, _ = answer_table(label, spx, num_classes=self.num_classes, trim=self.trim)
        multihot = np.asarray(multihot, np.uint8)
        pixels = np.bincount(spx.reshape(-1), minlength=multihot.shape[0]).astype(np.int32)
        buffer = io.BytesIO()
        np.savez(buffer, packed=np.packbits(multihot, axis=1), pixels=pixels, stamp=stamp)
        atomic_write_bytes(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        return multihot, pixels

    def fill(self, workers: int | None = None) -> int:
        """Compute every image's answers the cache lacks or holds stale, ``workers`` images at a
        time in threads (None: one per CPU this process may use; file reads and label decoding
        overlap there, not measured at scale); returns how many were computed. A search fills
        them before its trials, so no label pool decodes labels."""
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be None or an integer >= 1, but got workers={workers!r}")

        def one(index: int) -> bool:
            if self._read(self.path(index), self._stamp(index)) is not None:
                return False
            self(index)
            return True

        indices = range(len(self.superpixels.names))
        workers = usable_cpus() if workers is None else workers
        if workers == 1:
            return sum(one(i) for i in indices)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="answers") as pool:
            return sum(pool.map(one, indices))
