"""Every superpixel's ground-truth answer, computed once per image and kept beside its superpixels.

A :class:`~halo_ray.region_pool.RegionPool` needs, for each image it ranks, what answering each
region would cost (its multi-hot answer) and, for the regions it reveals, their answers and
pixel counts. Reading them from ground truth means decoding the image's label map and running
:func:`halo_ray.multiclass.region_labels` (the trimmed interiors): ~0.3 s per Cityscapes image,
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
from pathlib import Path
from typing import Any

import numpy as np

from halo_ray.atomic import atomic_write_bytes
from halo_ray.multiclass import region_labels

__all__ = ["RegionAnswers"]


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
        multihot, _ = region_labels(label, spx, num_classes=self.num_classes, trim=self.trim)
        multihot = np.asarray(multihot, np.uint8)
        pixels = np.bincount(spx.reshape(-1), minlength=multihot.shape[0]).astype(np.int32)
        buffer = io.BytesIO()
        np.savez(buffer, packed=np.packbits(multihot, axis=1), pixels=pixels, stamp=stamp)
        atomic_write_bytes(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        return multihot, pixels
