"""The images and labels a learner trains on, decoded lazily, and revealed labels kept sparse.

An :class:`ImageSet` decodes only the items of the batch at hand (at the network input size,
in parallel threads), caching decoded items only for sets small enough (the embedded
benchmark); :class:`SparseLabels` holds the revealed target labels as pixel lists, about 5
bytes per labelled pixel, and builds dense maps per batch only. :class:`ArrayDataset` and
:meth:`ImageSet.from_arrays` put arrays already in memory (a notebook, a test) behind the
same interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from halo_ray.data.labels import IGNORE_INDEX
from halo_ray.data.layouts import Sample, resize_image, resize_label

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_DECODE_WORKERS", "ArrayDataset", "ImageSet", "RegionTargets", "SparseLabels"]


#: An :class:`ImageSet` keeps decoded items in memory only when the whole set is estimated to
#: fit in this many bytes (the embedded benchmark does; Cityscapes or GTAV never do).
DEFAULT_CACHE_BYTES = 256 * 2**20

#: Threads that decode the items of one batch in parallel (PIL releases the GIL).
DEFAULT_DECODE_WORKERS = 4


class ArrayDataset:
    """An in-memory dataset with the reader interface :class:`ImageSet` needs (tests, small sets).

    ``images`` uint8 ``[N, H, W, 3]`` and ``labels`` uint8 ``[N, H, W]`` (arrays or tensors).
    """

    def __init__(self, images: Any, labels: Any, names: Sequence[str] | None = None):
        self._images = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
        self._labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
        if self._images.ndim != 4 or self._images.shape[-1] != 3 or self._labels.shape != self._images.shape[:3]:
            raise ValueError(
                f"images must be [N, H, W, 3] and labels [N, H, W], but got shapes "
                f"{self._images.shape} and {self._labels.shape}"
            )
        self.names = list(names) if names is not None else [f"im{i}" for i in range(len(self._images))]

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> Sample:
        return Sample(image=self._images[i], label=self._labels[i], name=self.names[i])

    def load_image(self, i: int) -> np.ndarray:
        return self._images[i]

    def load_label(self, i: int) -> np.ndarray:
        return self._labels[i]

    def image_size(self, i: int) -> tuple[int, int]:
        return tuple(int(v) for v in self._images.shape[1:3])


class ImageSet:
    """One of a run's sets as the trainer sees it: decodes only the items asked for.

    Wraps a reader with the :class:`~halo_ray.data.SegmentationDataset` interface
    (``names``, ``len``, ``[i]`` → image + label, ``load_image``, ``load_label``,
    ``image_size``) opened at its native size. Images come back as uint8 ``[B, h, w, 3]``
    tensors at the network input ``size=(h, w)`` (PIL bicubic, as RIPU/HALO; native when
    None); labels either at the input size (nearest; :meth:`training_batch`) or at their
    native size (:meth:`evaluation_batch`: metrics and selection work at full label
    resolution).

    Small sets: when ``len × (4 bytes per pixel of item 0)`` is at most ``cache_bytes``,
    decoded native items are kept (at most ``cache_bytes`` in all) and reused. Decoding is
    deterministic, so results are identical with or without the cache; nothing requires it.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        size: tuple[int, int] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        workers: int = DEFAULT_DECODE_WORKERS,
        size_key: str = "size",
    ):
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be None or (H, W) with positive integers, but got size={size!r}")
        if cache_bytes < 0 or workers < 1:
            raise ValueError(
                f"cache_bytes must be >= 0 and workers >= 1, but got cache_bytes={cache_bytes}, workers={workers}"
            )
        self.dataset = dataset
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.names: list[str] = list(dataset.names)
        self.workers = workers
        self.size_key = size_key  # the config key named when a batch mixes image sizes
        self._images: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray] = {}
        self._cache_left = 0
        if cache_bytes and len(dataset):
            h, w = dataset.image_size(0)
            if len(dataset) * h * w * 4 <= cache_bytes:
                self._cache_left = cache_bytes
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.names)

    def label_shape(self, i: int) -> tuple[int, int]:
        """Native ``(H, W)`` of item ``i``'s label (= its image), from the file header only."""
        h, w = self.dataset.image_size(i)
        return int(h), int(w)

    # -- decoding ----------------------------------------------------------------------
    def _decode(self, i: int, image: bool, label: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Native (image, label) of item ``i``, each only if asked for; one file read per part."""
        img = self._images.get(i) if image else None
        lab = self._labels.get(i) if label else None
        if image and img is None and label and lab is None:
            sample = self.dataset[i]
            img, lab = sample.image, sample.label
        elif image and img is None:
            img = self.dataset.load_image(i)
        elif label and lab is None:
            lab = self.dataset.load_label(i)
        return img, lab

    def items(
        self, indices: Sequence[int], *, image: bool = True, label: bool = True
    ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Native ``(image [H, W, 3], label [H, W])`` uint8 arrays of ``indices`` (read-only)."""
        return self._fetch(indices, image=image, label=label, resize=False, label_to_input=False)

    def _fetch(
        self, indices: Sequence[int], *, image: bool, label: bool, resize: bool, label_to_input: bool
    ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """``(image, label)`` of ``indices``, decoded and (``resize``: image at the input size;
        ``label_to_input``: label nearest-resized to it) in the decode threads.

        Native arrays are cached in the caller's thread, so the threads never write shared state.
        """
        idx = [int(i) for i in indices]

        def work(i: int) -> tuple[np.ndarray | None, ...]:
            img, lab = self._decode(i, image, label)
            out_img = self.to_input(img) if resize and img is not None else img
            out_lab = resize_label(lab, out_img.shape[:2]) if label_to_input and lab is not None else lab
            return img, lab, out_img, out_lab

        if self.workers > 1 and len(idx) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
            decoded = list(self._pool.map(work, idx))
        else:
            decoded = [work(i) for i in idx]
        for i, (img, lab, _, _) in zip(idx, decoded, strict=True):  # cache in the caller's thread
            for store, value in ((self._images, img), (self._labels, lab)):
                if value is not None and i not in store and value.nbytes <= self._cache_left:
                    store[i] = value
                    self._cache_left -= value.nbytes
        return [(out_img, out_lab) for _, _, out_img, out_lab in decoded]

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """A native image at the network input size (bicubic), uint8 ``[h, w, 3]``."""
        return image if self.size is None else resize_image(image, self.size)

    def stack(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack equally sized arrays into one tensor; name the size key when they differ."""
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"{type(self.dataset).__name__}: images of different sizes {sorted(shapes)} in one batch; "
                f"set {self.size_key} to resize them to one network input size"
            )
        return torch.from_numpy(np.stack(arrays))

    # -- batches -----------------------------------------------------------------------
    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``[B, h, w, 3]`` images at the input size (labels are not read)."""
        pairs = self._fetch(indices, image=True, label=False, resize=True, label_to_input=False)
        return self.stack([img for img, _ in pairs])

    def training_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, h, w, 3]`` and labels ``[B, h, w]`` (nearest-resized) at the input size."""
        pairs = self._fetch(indices, image=True, label=True, resize=True, label_to_input=True)
        return self.stack([img for img, _ in pairs]), self.stack([lab for _, lab in pairs])

    def evaluation_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images ``[B, h, w, 3]`` at the input size and each label at its native ``[H, W]``."""
        pairs = self._fetch(indices, image=True, label=True, resize=True, label_to_input=False)
        return self.stack([img for img, _ in pairs]), [torch.from_numpy(np.array(lab)) for _, lab in pairs]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None  # threads do not travel
        return state

    def __repr__(self) -> str:
        return f"ImageSet({self.dataset!r}, n={len(self)}, size={self.size}, cached={len(self._images)})"

    @classmethod
    def from_arrays(cls, images: Any, labels: Any, names: Sequence[str] | None = None, **kw: Any) -> ImageSet:
        """An in-memory set (tests, small experiments): see :class:`ArrayDataset`."""
        return cls(ArrayDataset(images, labels, names), **kw)


class SparseLabels:
    """Revealed target labels, kept sparse: per image the flat indices and train ids of its
    labelled pixels (about 5 bytes per labelled pixel), never a dense ``[N, H, W]`` tensor.

    Filled from :meth:`halo_ray.pool.LabelPool.revealed_labels` (``set``/``add`` once per
    round); :meth:`batch` builds dense maps only for the images of one training batch.
    """

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self.shapes = [(int(h), int(w)) for h, w in shapes]
        self._flat = [np.zeros(0, np.int32) for _ in self.shapes]
        self._label = [np.zeros(0, np.uint8) for _ in self.shapes]

    def __len__(self) -> int:
        return len(self.shapes)

    @classmethod
    def from_revealed(cls, revealed: Mapping[str, Any]) -> SparseLabels:
        out = cls(revealed["shapes"])
        out.add(revealed)
        return out

    @classmethod
    def from_dense(cls, labels: Any, ignore_index: int = IGNORE_INDEX) -> SparseLabels:
        """From dense maps ``[N, H, W]`` (tests, small sets): every non-void pixel is labelled."""
        dense = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
        flat = dense.reshape(len(dense), -1)  # [N, H·W]
        keep = flat != ignore_index
        idx = [np.flatnonzero(k).astype(np.int32) for k in keep]
        return cls.from_revealed({
            "shapes": [dense.shape[1:3]] * len(dense),
            "counts": np.asarray([len(i) for i in idx], np.int64),
            "flat": np.concatenate(idx) if idx else np.zeros(0, np.int32),
            "label": flat[keep].astype(np.uint8),
        })

    def add(self, revealed: Mapping[str, Any]) -> None:
        """Append newly revealed pixels (the :meth:`LabelPool.revealed_labels` layout)."""
        shapes = [(int(h), int(w)) for h, w in revealed["shapes"]]
        if shapes != self.shapes:
            raise ValueError(
                f"revealed labels are for {len(shapes)} images of shapes {sorted(set(shapes))}, "
                f"but these labels hold {len(self.shapes)} images of shapes {sorted(set(self.shapes))}"
            )
        counts = np.asarray(revealed["counts"], np.int64)
        flat = np.asarray(revealed["flat"])
        label = np.asarray(revealed["label"], np.uint8)
        if counts.shape != (len(self.shapes),) or counts.sum() != len(flat) or len(flat) != len(label):
            raise ValueError(
                f"revealed labels are inconsistent: {len(counts)} counts adding up to {counts.sum()}, "
                f"{len(flat)} indices and {len(label)} labels for {len(self.shapes)} images"
            )
        ends = np.cumsum(counts)
        for i in np.flatnonzero(counts):
            part = slice(int(ends[i] - counts[i]), int(ends[i]))
            h, w = self.shapes[i]
            f = flat[part]
            if f.min() < 0 or f.max() >= h * w:
                raise ValueError(f"revealed labels of image {i} hold pixel indices outside [0, {h * w})")
            self._flat[i] = np.concatenate([self._flat[i], f.astype(np.int32)])
            self._label[i] = np.concatenate([self._label[i], label[part]])

    def labelled_images(self) -> np.ndarray:
        """Indices (ascending, int64) of the images holding at least one labelled pixel."""
        return np.flatnonzero([len(f) > 0 for f in self._flat]).astype(np.int64)

    @property
    def num_pixels(self) -> int:
        return int(sum(len(f) for f in self._flat))

    def nbytes(self) -> int:
        return int(sum(f.nbytes + v.nbytes for f, v in zip(self._flat, self._label, strict=True)))

    def dense(self, index: int) -> np.ndarray:
        """uint8 ``[H, W]`` at the native size: train ids where labelled, ``IGNORE_INDEX`` elsewhere."""
        h, w = self.shapes[index]
        out = np.full(h * w, IGNORE_INDEX, np.uint8)
        out[self._flat[index]] = self._label[index]
        return out.reshape(h, w)

    def batch(self, indices: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
        """uint8 ``[B, h, w]``: the dense maps of ``indices`` resized (nearest) to ``size=(h, w)``.

        As in RIPU/HALO, the labels revealed at full resolution are resized to the training size.
        """
        maps = [resize_label(self.dense(int(i)), size) for i in indices]
        return torch.from_numpy(np.stack(maps))


class RegionTargets:
    """Answered superpixels of target-train images as training targets (multi-class query).

    Per labelled image: its superpixel map (read on demand from ``superpixels(index)``, the
    superpixel cache), the answer table ``[R, K]`` and the selected mask ``[R]`` of
    :meth:`halo_ray.region_pool.RegionPool.targets`. :meth:`batch` resizes the maps of one
    training batch to the training size with the same nearest rule as :class:`SparseLabels`,
    so a superpixel covers the pixels its labels would.
    """

    def __init__(self, superpixels: Any, num_images: int):
        self._superpixels = superpixels
        self.num_images = int(num_images)
        self._answers: dict[int, np.ndarray] = {}
        self._selected: dict[int, np.ndarray] = {}

    def set(self, index: int, answers: Any, selected: Any) -> None:
        """Image ``index``'s answer table ``[R, K]`` and selected mask ``[R]`` (replacing earlier ones)."""
        answers, selected = np.asarray(answers, np.uint8), np.asarray(selected, bool)
        if not 0 <= index < self.num_images:
            raise ValueError(f"index must be in 0..{self.num_images - 1}, got {index}")
        if answers.ndim != 2 or selected.shape != (answers.shape[0],):
            raise ValueError(f"answers must be [R, K] and selected [R], got {answers.shape} and {selected.shape}")
        if selected.any():
            self._answers[int(index)], self._selected[int(index)] = answers, selected
        else:
            self._answers.pop(int(index), None)
            self._selected.pop(int(index), None)

    def labelled_images(self) -> np.ndarray:
        """Indices (ascending, int64) of the images with at least one answered region."""
        return np.asarray(sorted(self._answers), np.int64)

    def entry(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index``'s answer table ``[R, K]`` and selected mask ``[R]``."""
        return self._answers[int(index)], self._selected[int(index)]

    def batch(self, indices: Sequence[int], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(superpixels int64 [B, h, w], answers uint8 [B, R, K], selected bool [B, R])`` at
        ``size=(h, w)``; R is the largest region count of the batch (tables padded with
        unselected, empty rows)."""
        from PIL import Image

        maps, tables, chosen = [], [], []
        for i in indices:
            i = int(i)
            if i not in self._answers:
                raise ValueError(f"image {i} has no answered region")
            spx = np.asarray(self._superpixels(i)).astype(np.int32)
            if spx.max() >= len(self._selected[i]):
                raise ValueError(f"image {i}'s superpixels hold id {int(spx.max())}, beyond its {len(self._selected[i])} answers")
            if spx.shape != tuple(size):
                spx = np.asarray(Image.fromarray(spx).resize((size[1], size[0]), Image.Resampling.NEAREST))
            maps.append(spx.astype(np.int64))
            tables.append(self._answers[i])
            chosen.append(self._selected[i])
        r = max(len(s) for s in chosen)
        k = tables[0].shape[1]
        answers = np.zeros((len(tables), r, k), np.uint8)
        selected = np.zeros((len(tables), r), bool)
        for j, (table, sel) in enumerate(zip(tables, chosen, strict=True)):
            answers[j, : len(table)], selected[j, : len(sel)] = table, sel
        return torch.from_numpy(np.stack(maps)), torch.from_numpy(answers), torch.from_numpy(selected)
