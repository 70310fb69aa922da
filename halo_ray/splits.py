"""The run's data sets, opened without torch: the embedded benchmark written when missing, the
source / target-train / target-val readers of a configuration, the label pool over the
target-train set and (unit multiclass) its superpixels and their ground-truth answers.

Nothing here imports torch for a run of squares or pixels (multiclass answers do), so a
search trial's driver and its label-pool actor open the target-train set (file headers
only) while the learner's process is still importing its model code.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halo_ray.config import ConfigError, ExperimentConfig
from halo_ray.data import (
    DatasetError,
    SegmentationDataset,
    SynthiaClassesView,
    generate_benchmark,
    open_dataset,
)
from halo_ray.data.labels import CITYSCAPES_CLASSES
from halo_ray.data.superpixels import CachedSuperpixels, default_num_superpixels
from halo_ray.pool import DatasetOracle, LabelPool
from halo_ray.rundir import check_not_under_a_file

if TYPE_CHECKING:
    from halo_ray.region_answers import RegionAnswers
    from halo_ray.region_pool import RegionPool

LogFn = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    """Default progress sink: one flushed line on stderr."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------
# data


def ensure_data(cfg: ExperimentConfig, log: LogFn = log_to_stderr) -> None:
    """Write the embedded benchmark into ``data_root`` when asked to and it is missing."""
    root = Path(cfg.data_root)
    if cfg.generate_data and not root.exists() and cfg.source_root is None and cfg.target_root is None:
        check_not_under_a_file(root, "data_root")  # bad input, before anything is written
        log(f"generating the embedded benchmark into {root} (seed {cfg.data_seed}) …")
        t0 = time.perf_counter()
        try:
            generate_benchmark(root, seed=cfg.data_seed)
        except DatasetError as err:
            raise ConfigError(
                f"data_root={cfg.data_root}: {err}; choose a writable data_root (or generate_data: false "
                "with the datasets in place)"
            ) from None
        log(f"generated in {time.perf_counter() - t0:.1f}s")


def open_split(cfg: ExperimentConfig, which: str) -> SegmentationDataset:
    """The lazy reader of one of the run's sets: ``source``, ``train`` or ``val`` (target)."""
    if which == "source":
        source_kw = {"void_ids": cfg.void_label_ids} if cfg.source != "synthia" else {}
        return open_dataset(
            cfg.source, cfg.source_path, split="train" if cfg.source == "cityscapes" else None, **source_kw
        )
    target_kw = {"conditions": cfg.target_conditions} if cfg.target == "acdc" else {}
    target = open_dataset(cfg.target, cfg.target_path, split=which, void_ids=cfg.void_label_ids, **target_kw)
    # SYNTHIA lacks terrain, truck and train: a SYNTHIA-source run ignores them in the target too
    return SynthiaClassesView(target) if cfg.source == "synthia" else target


def superpixel_source(cfg: ExperimentConfig, train: Any = None) -> CachedSuperpixels:
    """Unit multiclass: the target-train superpixels of the run, read from ``superpixel_cache``
    (:meth:`~halo_ray.data.superpixels.CachedSuperpixels.ensure` fills it); ``train`` is the
    target-train set when the caller has it open already."""
    return CachedSuperpixels(
        open_split(cfg, "train") if train is None else train, cfg.superpixel_cache, method=cfg.superpixels,
        num_superpixels=cfg.num_superpixels,
    )


def region_answers(cfg: ExperimentConfig, train: Any = None) -> RegionAnswers:
    """Unit multiclass: every target-train superpixel's ground-truth answer, cached beside the
    superpixels (:class:`~halo_ray.region_answers.RegionAnswers`, whose ``superpixels`` the
    pool reads too), for the run's pool; ``train`` as in :func:`superpixel_source`."""
    from halo_ray.region_answers import RegionAnswers  # loaded by multiclass runs only

    train = open_split(cfg, "train") if train is None else train
    return RegionAnswers(superpixel_source(cfg, train), train, num_classes=len(CITYSCAPES_CLASSES), trim=cfg.trim)


def check_regions_fit_trim(cfg: ExperimentConfig, shapes: Sequence[tuple[int, int]]) -> None:
    """Refuse superpixels too small for the answer's border band: a region of side ``s`` keeps no
    interior pixel once ``trim`` px go from each side (``s <= 2·trim``), and every answer would
    silently fall back to the whole region. Judged on the mean region of the smallest image."""
    if cfg.trim == 0 or not shapes:
        return
    height, width = min(shapes, key=lambda hw: hw[0] * hw[1])
    count = cfg.num_superpixels if cfg.num_superpixels is not None else default_num_superpixels(height, width)
    side = math.sqrt(height * width / count)
    if side > 2 * cfg.trim:
        return
    most = max(1, (height * width) // (2 * cfg.trim + 1) ** 2)
    named = f"num_superpixels={cfg.num_superpixels}" if cfg.num_superpixels is not None else (
        f"num_superpixels=null ({count} at {height}x{width})")
    raise ConfigError(
        f"{named} on {height}x{width} target images makes regions of about {side:.1f} px a side, no wider than "
        f"the answer's border band of trim={cfg.trim} px on each side: every answer would fall back to the whole "
        f"region; use num_superpixels <= {most}, or trim <= {max(0, math.ceil(side / 2) - 1)}"
    )


def ensure_superpixels(cfg: ExperimentConfig, log: LogFn = log_to_stderr, train: Any = None) -> None:
    """Unit multiclass: compute the target-train superpixels the cache lacks (valid files are
    reused), after :func:`check_regions_fit_trim`; ``train`` as in :func:`superpixel_source`."""
    train = open_split(cfg, "train") if train is None else train
    source = superpixel_source(cfg, train)
    check_regions_fit_trim(cfg, sorted(set(source.shapes)))  # the sizes its headers gave
    t0 = time.perf_counter()
    report = source.ensure(train)
    if report.computed:
        log(f"superpixels ({cfg.superpixels}): {report.computed} computed, {report.cached} cached in "
            f"{time.perf_counter() - t0:.1f}s | {report.folder}")


def open_pool(cfg: ExperimentConfig, shapes: Sequence[tuple[int, int]], train: Any = None) -> LabelPool | RegionPool:
    """The run's empty label pool over target-train images of native ``shapes``, its oracle
    reading ground truth from disk: pixels for units ``region``/``pixel``, answered superpixels
    (:func:`region_answers`, filled ahead by :func:`ensure_superpixels`) for ``multiclass``;
    ``train`` as in :func:`superpixel_source`."""
    train = open_split(cfg, "train") if train is None else train
    if cfg.unit != "multiclass":
        return LabelPool(shapes, DatasetOracle(train))
    from halo_ray.region_pool import RegionPool

    answers = region_answers(cfg, train)
    return RegionPool(
        len(shapes), answers.superpixels, DatasetOracle(train), num_classes=len(CITYSCAPES_CLASSES), trim=cfg.trim,
        bill_void=cfg.bill_void, shapes=shapes, answers=answers,
    )


__all__ = [
    "LogFn", "check_regions_fit_trim", "ensure_data", "ensure_superpixels", "log_to_stderr", "open_pool", "open_split",
    "region_answers", "superpixel_source",
]
