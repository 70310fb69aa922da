"""The learner: model, optimizer, sampling RNG and the run's data in one object.

A multi-round run talks to it only through method calls with plain arguments and results
(no properties, no callbacks that hold open files), so the very same class serves a local
run and, wrapped with ``ray.remote``, a Ray trainer actor that holds the model on a GPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from halo_ray.acquisition import score_map, select_centres, square_mask
from halo_ray.config import HYPERBOLIC_STRATEGIES, ExperimentConfig
from halo_ray.data.labels import CITYSCAPES_CLASSES
from halo_ray.data.layouts import resolve_layout_root
from halo_ray.hyperbolic import radius_map
from halo_ray.imagesets import DEFAULT_CACHE_BYTES, ImageSet, RegionTargets, SparseLabels
from halo_ray.metrics import Evaluation
from halo_ray.multiclass import (
    REGION_STRATEGIES,
    batch_class_mean,
    combine_region_scores,
    pseudo_labels,
    random_scores,
    region_means,
    region_terms,
    select_regions,
)
from halo_ray.sampling import ClassBalancedSampler, image_seed
from halo_ray.splits import (
    LogFn,
    ensure_data,
    ensure_superpixels,
    log_to_stderr,
    open_split,
    region_answers,
    superpixel_source,
)
from halo_ray.training import ProgressFn, Trainer, resolve_device


@dataclass
class RunData:
    """The three sets a run needs, each a lazy :class:`ImageSet` (nothing decoded up front)."""

    source: ImageSet
    target_train: ImageSet
    target_val: ImageSet


def prepare_data(
    cfg: ExperimentConfig, log: LogFn = log_to_stderr, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> RunData:
    """Generate the embedded benchmark if asked and missing, then open the three sets lazily.

    Source images go to the network at ``source_size``, target images at ``target_size``
    (native when null); labels stay at their native size for evaluation and selection.
    Sets estimated under ``cache_bytes`` keep what they decode (the embedded benchmark).
    """
    ensure_data(cfg, log)
    for layout, root in ((cfg.source, cfg.source_path), (cfg.target, cfg.target_path)):
        _, note = resolve_layout_root(root, layout)
        if note:
            log(f"{layout}: {note}")

    def lazy(which: str, size: tuple[int, int] | None, key: str) -> ImageSet:
        return ImageSet(
            open_split(cfg, which), size=size, cache_bytes=cache_bytes, workers=cfg.decode_workers, size_key=key
        )

    return RunData(
        source=lazy("source", cfg.source_hw, "source_size"),
        target_train=lazy("train", cfg.target_hw, "target_size"),
        target_val=lazy("val", cfg.target_hw, "target_size"),
    )


def class_presence(dataset: Any, num_classes: int, log: LogFn = log_to_stderr) -> np.ndarray:
    """bool ``[N, C]``: which train ids occur in each image's native label (void ignored).

    One pass over the labels (``load_label``, one at a time), for class-balanced sampling.
    """
    out = np.zeros((len(dataset), num_classes), bool)
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        ids = np.unique(np.asarray(dataset.load_label(i)))
        out[i, ids[ids < num_classes]] = True
        if (i + 1) % 1000 == 0:
            log(f"class presence: {i + 1}/{len(dataset)} labels scanned ({time.perf_counter() - t0:.0f}s)")
    return out


def cached_class_presence(
    cfg: ExperimentConfig, dataset: Any, num_classes: int, log: LogFn = log_to_stderr
) -> np.ndarray:
    """:func:`class_presence` of the source set, cached in ``source_cache``.

    The file ``classes-<key>.npy`` is keyed by the layout, the resolved source folder, the
    image names (in order) and the class count, so any change of the set computes it anew;
    it is written atomically, and two runs that compute it at once write the same bytes.
    """
    identity = {
        "layout": cfg.source, "root": str(Path(cfg.source_path).resolve()),
        "names": list(dataset.names), "classes": num_classes,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.source_cache) / f"classes-{key}.npy"
    if path.exists():
        presence = np.load(path)
        if presence.shape == (len(dataset), num_classes):
            return presence.astype(bool)
    log(f"class-balanced source: scanning {len(dataset)} source labels for the classes they hold (cache {path})")
    presence = class_presence(dataset, num_classes, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, presence)
    os.replace(tmp, path)
    return presence


# ----------------------------------------------------------------------------------
# learner


class Learner:
    """Trains, scores and evaluates for one run; holds everything that must be checkpointed.

    The revealed target labels are data the run hands over once per round
    (:meth:`set_target_labels` after a start or resume, :meth:`add_target_labels` after each
    round's selection); they are not part of :meth:`state_dict`, the pool checkpoints them.
    """

    def __init__(self, cfg: ExperimentConfig, data: RunData | None = None, log: LogFn = log_to_stderr):
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.cfg = cfg
        self.log = log
        self.data = data if data is not None else prepare_data(cfg, log)
        self.trainer = Trainer(cfg, len(CITYSCAPES_CLASSES), resolve_device(cfg.device))
        if self.trainer.weights_report is not None:
            log(self.trainer.weights_report.summary())
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.source_sampler: ClassBalancedSampler | None = None
        if cfg.class_balanced_source:
            self.source_sampler = ClassBalancedSampler(
                lambda: cached_class_presence(cfg, self.data.source.dataset, len(CITYSCAPES_CLASSES), log),
                len(CITYSCAPES_CLASSES), cfg.seed,
            )
        self._shapes: list[tuple[int, int]] | None = None
        self._target_labels: SparseLabels | RegionTargets | None = None
        #: unit multiclass: the target-train superpixels (filled ahead by the run) and region counts
        self._superpixels = superpixel_source(cfg) if cfg.unit == "multiclass" else None
        self._region_counts: list[int] | None = None
        self._region_costs: np.ndarray | None = None  # set_region_costs: clicks per region [N, R]
        self._source_state: dict | None = None  # the source pre-trained state (load_source)
        self._kept_model: dict[str, torch.Tensor] | None = None  # keep_model's copy of the weights

    # -- facts -----------------------------------------------------------------------
    def target_shapes(self) -> list[tuple[int, int]]:
        """Native ``(H, W)`` of every target-train label, in index order (file headers only)."""
        if self._shapes is None:
            data = self.data.target_train
            self._shapes = [data.label_shape(i) for i in range(len(data))]
        return list(self._shapes)

    def target_names(self) -> list[str]:
        return list(self.data.target_train.names)

    def region_counts(self) -> list[int]:
        """Unit multiclass: superpixels per target-train image (max id + 1), in index order."""
        if self._superpixels is None:
            raise ValueError("region_counts needs unit: multiclass")
        if self._region_counts is None:
            self._region_counts = [int(self._superpixels(i).max()) + 1 for i in range(len(self._superpixels))]
        return list(self._region_counts)

    def curvature(self) -> float | None:
        """The ball's current c (learned or fixed); None for the Euclidean head."""
        return self.trainer.curvature

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"trainer": self.trainer.state_dict(), "generator": self.generator.get_state()}
        if self.source_sampler is not None:
            state["source_sampler"] = self.source_sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.generator.set_state(state["generator"])
        if self.source_sampler is not None:
            self.source_sampler.load_state_dict(state["source_sampler"])

    def checkpoint(self, state: dict, pool_state: dict) -> bytes:
        """A run checkpoint file's bytes: the run's ``state`` (its own values), the label pool's
        state (``pool``: numpy arrays, stored as tensors), this learner's state (``learner``)
        and this process's torch RNG (``torch_rng``, which dropout draws from). Made here,
        where the tensors are, so that a search trial's process handles the checkpoint as
        bytes and never imports torch."""
        from halo_ray.run.checkpointer import checkpoint_bytes

        return checkpoint_bytes({
            **state, "pool": pool_state, "learner": self.state_dict(), "torch_rng": torch.get_rng_state(),
        })

    def restore(self, data: bytes, origin: str) -> dict:
        """Continue from a run checkpoint file's bytes (:meth:`checkpoint`): refuse it when it
        holds another config (``origin`` names it in the error), load its learner state and
        torch RNG, and return the rest of it with numpy arrays for tensors."""
        from halo_ray.run.checkpointer import as_arrays, check_same_config, read_checkpoint_bytes

        state = read_checkpoint_bytes(data)
        check_same_config(self.cfg, state["config"], origin)
        self.load_state_dict(state.pop("learner"))
        torch.set_rng_state(state.pop("torch_rng"))
        return as_arrays(state)

    def model_file(self, state: dict) -> bytes:
        """A best-model file's bytes: ``state`` (the record) with the model's weights (``model``)."""
        from halo_ray.run.checkpointer import checkpoint_bytes

        return checkpoint_bytes({**state, "model": self.model_state()})

    def load_source(self) -> None:
        """Load the source pre-trained state of this config: from the shared cache, or trained
        and cached first (:func:`halo_ray.run.checkpointer.source_checkpoint`, which needs
        this learner fresh); kept here for the rounds that start from it again."""
        if self._source_state is None:
            from halo_ray.run.checkpointer import source_checkpoint

            self._source_state = source_checkpoint(self.cfg, self, self.log)
        self.load_state_dict(self._source_state)

    def keep_model(self) -> None:
        """Keep a copy of the current weights (a round's best validation, ``round_model: best``)
        here, where :meth:`load_kept_model` takes them back: they never leave this process."""
        self._kept_model = self.model_state()

    def load_kept_model(self) -> None:
        """Go on with the weights :meth:`keep_model` kept (and forget them)."""
        if self._kept_model is None:
            raise RuntimeError("load_kept_model: no weights were kept (call keep_model first)")
        self.load_model_state(self._kept_model)
        self._kept_model = None

    def drop_kept_model(self) -> None:
        """Forget the weights :meth:`keep_model` kept, when the round goes on with its last
        model instead: one model's memory back before the round's selection."""
        self._kept_model = None

    def model_state(self) -> dict[str, torch.Tensor]:
        """A copy of the model's weights alone (CPU tensors, unaffected by further training):
        what a scorer needs to score like this learner, or a kept best model."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.trainer.model.state_dict().items()}

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take another learner's weights (scorer actors: no optimizer, no training)."""
        self.trainer.model.load_state_dict(state)

    def reset_optimizer(self) -> None:
        self.trainer.reset_optimizer()

    # -- revealed target labels --------------------------------------------------------
    def set_target_labels(self, revealed: dict[str, Any]) -> None:
        """Replace the revealed target labels (:meth:`LabelPool.revealed_labels` layout)."""
        self._target_labels = SparseLabels.from_revealed(revealed)

    def add_target_labels(self, revealed: dict[str, Any]) -> None:
        """Add newly revealed target labels (one round's :meth:`LabelPool.revealed_labels`)."""
        if self._target_labels is None:
            self._target_labels = SparseLabels(self.target_shapes())
        self._target_labels.add(revealed)

    def set_answers(self, answers: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        """Unit multiclass: replace the answered superpixels, ``{index: (answers [R, C+1], selected [R])}``
        (:meth:`halo_ray.region_pool.RegionPool.targets`); training then uses the stage-1 loss."""
        self._target_labels = RegionTargets(self._superpixels, len(self.target_shapes()))
        self.add_answers(answers)

    def add_answers(self, answers: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        """Unit multiclass: set the answers of some images (a round's, after its reveals)."""
        if not isinstance(self._target_labels, RegionTargets):
            self._target_labels = RegionTargets(self._superpixels, len(self.target_shapes()))
        for index, (table, selected) in answers.items():
            self._target_labels.set(int(index), table, selected)

    def labelled_target_images(self) -> list[int]:
        """Target-train images with at least one revealed non-void pixel (training draws from these)."""
        return [] if self._target_labels is None else self._target_labels.labelled_images().tolist()

    # -- work ------------------------------------------------------------------------
    def train(
        self,
        steps: int,
        *,
        start_step: int,
        total_steps: int,
        use_target: bool = False,
        progress: ProgressFn | None = None,
    ) -> list[tuple[int, float, float]]:
        """``steps`` SGD steps on source (+ labelled target with ``use_target``); returns
        ``(step, loss, lr)`` per step."""
        history: list[tuple[int, float, float]] = []

        def record(step: int, total: int, loss: float, lr: float) -> None:
            history.append((step, loss, lr))
            if progress is not None:
                progress(step, total, loss, lr)

        labels = self._target_labels if use_target else None
        self.trainer.train(
            steps, source=self.data.source, generator=self.generator, start_step=start_step,
            total_steps=total_steps, target=self.data.target_train if labels is not None else None,
            target_labels=labels, source_sampler=self.source_sampler.draw if self.source_sampler else None,
            progress=record,
        )
        return history

    def score(self, round_index: int, indices: Sequence[int]) -> list[torch.Tensor]:
        """Score maps ``[H, W]`` (CPU float32) of target-train images under the config's strategy,
        at each image's native label size (the network sees ``target_size``)."""
        return [score.cpu() for _, score in self._score_maps(round_index, indices)]

    def select(
        self,
        round_index: int,
        indices: Sequence[int],
        picks: Sequence[int],
        prior: Sequence[np.ndarray],
        *,
        suppression: int,
        keep: Sequence[int] = (),
    ) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
        """Score and select a chunk of images where the maps are (on the model's device):
        image ``indices[k]`` gets ``picks[k]`` greedy centres outside the ``suppression``
        windows of its earlier centres ``prior[k]`` (:meth:`LabelPool.centres_of`) and of each
        other. Returns the centres (int32 ``[n, 2]`` per image, what the pool records) and the
        float32 score maps (numpy) of the images in ``keep`` (pictures of a round): O(picks) leave here,
        not O(pixels)."""
        if not len(picks) == len(prior) == len(indices):
            raise ValueError(f"select needs picks and prior per index: {len(indices)}, {len(picks)}, {len(prior)}")
        shapes = self.target_shapes()
        keep = set(int(i) for i in keep)
        centres: list[np.ndarray] = []
        kept: dict[int, np.ndarray] = {}
        for (i, score), n, before in zip(self._score_maps(round_index, indices), picks, prior, strict=True):
            earlier = torch.as_tensor(np.asarray(before, np.int64).reshape(-1, 2), device=score.device)
            active = square_mask(earlier, shapes[i], suppression)  # = the pool's suppressed(i, suppression)
            picked = select_centres(score, picks=int(n), suppression=suppression, active=active)
            centres.append(picked.cpu().numpy().astype(np.int32))
            if i in keep:
                kept[i] = score.cpu().numpy()  # numpy: the run loop's process has no torch
        return centres, kept

    def _score_maps(self, round_index: int, indices: Sequence[int]):
        """(index, score map ``[H, W]`` on the model's device) per image, a batch at a time."""
        cfg = self.cfg
        shapes = self.target_shapes()
        hyperbolic = cfg.strategy in HYPERBOLIC_STRATEGIES
        for start in range(0, len(indices), cfg.eval_batch_size):
            batch = list(indices[start : start + cfg.eval_batch_size])
            images = self.data.target_train.images(batch)  # [B, h, w, 3] at the network input size
            logits, emb, c = self.trainer.forward_maps(images)
            logits = self.trainer.class_logits(logits)  # pixel strategies score the classes
            # the released selection takes logits to the input size, then to the label size
            via = tuple(images.shape[1:3]) if cfg.align_corners else None
            for j, i in enumerate(batch):
                probs = self.trainer.upsample(logits[j : j + 1], shapes[i], via=via).softmax(dim=1)[0]  # [C, H, W]
                ball = self.trainer.upsample(emb[j : j + 1], shapes[i])[0] if hyperbolic else None  # [D, H, W]
                gen = torch.Generator(device=probs.device).manual_seed(image_seed(cfg.seed, round_index, i))
                yield i, score_map(
                    cfg.strategy, probs, ball,
                    curvature=c if c is not None else cfg.curvature, bins=cfg.bins,
                    region_size=cfg.region_size, boundary_window=cfg.boundary_window,
                    reference=cfg.reference, generator=gen,
                    unit="region" if cfg.unit == "multiclass" else cfg.unit,  # superpixels average region scores
                )

    def _native_logits(self, indices: Sequence[int]):
        """(index, logits ``[1, K, H, W]`` at the native label size) per image, a batch at a time."""
        shapes = self.target_shapes()
        for start in range(0, len(indices), self.cfg.eval_batch_size):
            batch = list(indices[start : start + self.cfg.eval_batch_size])
            logits, _, _ = self.trainer.forward_maps(self.data.target_train.images(batch))
            for j, i in enumerate(batch):
                yield i, self.trainer.upsample(logits[j : j + 1], shapes[i])

    def class_means(self, round_index: int, indices: Sequence[int]) -> list[torch.Tensor]:
        """Unit multiclass, PixBal's pass 1: each image's mean class probability ``[K]``, at
        temperature 1 on the head's logits (the cosine head folds its temperature in). The run
        averages them per batch of ``eval_batch_size`` images and then over the batches, the
        released prior, however the images were split over scorers."""
        return [batch_class_mean(logits, temperature=1.0).cpu() for _, logits in self._native_logits(indices)]

    def region_terms(
        self, round_index: int, indices: Sequence[int], prior: torch.Tensor | None, num_regions: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit multiclass: per-region ``(means [n, R], dominant [n, R])`` of ``indices`` under
        the strategy (:func:`halo_ray.multiclass.region_terms`); a pixel strategy's score map
        (HALO, RIPU, entropy…) is averaged per superpixel, dominant 0. O(regions) leaves here."""
        cfg = self.cfg
        means, dominant = [], []
        if cfg.strategy in REGION_STRATEGIES:
            for i, logits in self._native_logits(indices):
                spx = torch.from_numpy(self._superpixels(i)).unsqueeze(0)
                m, d = region_terms(
                    cfg.strategy, logits, spx, temperature=1.0, prior=prior, nu=cfg.nu, num_regions=num_regions
                )
                means.append(m.cpu())
                dominant.append(d.cpu())
        else:
            for i, score in zip(indices, self.score(round_index, indices), strict=True):
                spx = torch.from_numpy(self._superpixels(i)).unsqueeze(0)
                means.append(region_means(score.unsqueeze(0), spx, num_regions=num_regions))
                dominant.append(torch.zeros(1, num_regions, dtype=torch.int64))
        return torch.cat(means), torch.cat(dominant)

    def set_region_costs(self, rows: Sequence[np.ndarray]) -> None:
        """Unit multiclass: each image's clicks per region (:meth:`RegionPool.costs_of
        <halo_ray.region_pool.RegionPool.costs_of>` of every image, in index order), kept here
        for :meth:`rank_regions` (a run sends them once)."""
        counts = self.region_counts()
        if len(rows) != len(counts):
            raise ValueError(f"set_region_costs needs one row per target image: {len(rows)} for {len(counts)}")
        table = np.zeros((len(counts), max(counts, default=0)), np.int64)
        for i, row in enumerate(rows):
            table[i, : counts[i]] = row
        self._region_costs = table

    def pixbal_prior(self, *parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit multiclass, PixBal: the released prior from every image's :meth:`class_means`
        (``parts``: lists of them, in index order): the mean of per-batch means over batches
        of ``eval_batch_size`` images."""
        per_image = torch.stack([m for part in parts for m in part])
        step = max(self.cfg.eval_batch_size, 1)
        return torch.stack([per_image[s : s + step].mean(0) for s in range(0, len(per_image), step)]).mean(0)

    def rank_regions(
        self, round_index: int, available: np.ndarray, *parts: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[np.ndarray, int]:
        """Unit multiclass: rank every region of the pool and pick the best within the round's
        click budget (``clicks_per_round``), here where the terms are: ``(order [M, 2] of
        (image, region) rows in pick order, clicks)``.

        ``available``: bool ``[N, R]`` (:meth:`RegionPool.available_table
        <halo_ray.region_pool.RegionPool.available_table>`); ``parts``: :meth:`region_terms` of
        consecutive images covering the pool (none for the random strategy, and for the released
        first round, which is random). PixBal's prior and BvSB's normalisation are statistics of
        the whole pool, so the whole pool is ranked at once.
        """
        cfg = self.cfg
        if self._region_costs is None:
            raise ValueError("rank_regions needs the regions' click costs first (set_region_costs)")
        n, width = self._region_costs.shape
        strategy = "random" if cfg.reference and round_index == 1 else cfg.strategy
        if strategy == "random":
            scores = random_scores((n, width), torch.Generator().manual_seed(image_seed(cfg.seed, round_index, 0)))
        else:
            means, dominant = torch.cat([m for m, _ in parts]), torch.cat([d for _, d in parts])
            if strategy in REGION_STRATEGIES:  # with an "undefined" output, regions it dominates score 0
                scores = combine_region_scores(
                    strategy, means, dominant, num_channels=len(CITYSCAPES_CLASSES) + int(cfg.undefined_output),
                    ban_void=cfg.undefined_output,
                )
            else:
                scores = means
        order, clicks = select_regions(
            scores, self._region_costs[..., None], budget=cfg.clicks_per_round, available=available,
            reference=cfg.reference,
        )
        return np.asarray(order, np.int64).reshape(-1, 2), int(clicks)

    def _pseudo_maps(self):
        """(index, pseudo labels int64 ``[H, W]`` at the native size, 255 = none) of every image
        with answers, from the current model: :func:`halo_ray.multiclass.pseudo_labels` with the
        head's embeddings as features and the softmax of the raw logits (the cosine head's
        ``logits · temperature``)."""
        scale = self.cfg.temperature if self.cfg.geometry == "cosine" else 1.0
        shapes = self.target_shapes()
        for i in self._target_labels.labelled_images().tolist():
            logits, emb, _ = self.trainer.forward_maps(self.data.target_train.images([i]))
            z = self.trainer.upsample(logits, shapes[i])[0] * scale
            feats = self.trainer.upsample(emb.float(), shapes[i])[0]
            table, selected = self._target_labels.entry(i)
            spx = torch.from_numpy(self._superpixels(i))
            yield i, pseudo_labels(feats, z, torch.from_numpy(table[:, : z.shape[0]]), spx, torch.from_numpy(selected)).cpu()

    def stage_two(self, steps: int) -> dict[str, float | None]:
        """Unit multiclass, after a round: the stage-2 pseudo labels of the current model, and
        with ``steps`` > 0 the stage-2 model trained on them from the source state.

        The pseudo labels of every image with answers are made once and measured against ground
        truth (never trained on): ``pseudo_coverage`` (share of all target-train pixels with
        one) and ``pseudo_precision`` (share of those, ground-truth void left out, that are
        right; with ``undefined_output`` a pixel labelled "undefined" counts as given, and as wrong
        where ground truth has a class). The stage-2 model starts anew from the source state
        (:meth:`load_source`) and trains ``steps`` steps
        on them (plain cross-entropy); ``miou_stage2`` is its target-val mIoU. The learner comes
        back exactly as it was (model, optimizer, sampling RNG, answers): as released, stage-2
        models never acquire. Values are None where there is nothing to measure.
        """
        shapes = self.target_shapes()
        out: dict[str, float | None] = {"pseudo_coverage": 0.0, "pseudo_precision": None, "miou_stage2": None}
        if not isinstance(self._target_labels, RegionTargets):
            return out
        maps = dict(self._pseudo_maps())
        given_px = judged_px = right_px = 0
        for i, labels in maps.items():
            truth = torch.from_numpy(np.asarray(self.data.target_train.items([i], image=False)[0][1]).astype(np.int64))
            given = labels != 255
            judged = given & (truth != 255)
            given_px += int(given.sum())
            judged_px += int(judged.sum())
            right_px += int((judged & (labels == truth)).sum())
        out["pseudo_coverage"] = given_px / sum(h * w for h, w in shapes)
        out["pseudo_precision"] = right_px / judged_px if judged_px else None
        if steps < 1 or not maps:
            return out
        flat = [np.flatnonzero(maps[i].numpy().reshape(-1) != 255) if i in maps else np.zeros(0, np.int64)
                for i in range(len(shapes))]
        pseudo = SparseLabels.from_revealed({
            "shapes": shapes,
            "counts": np.asarray([len(f) for f in flat], np.int64),
            "flat": np.concatenate(flat).astype(np.int32),
            "label": np.concatenate([maps[i].numpy().reshape(-1)[flat[i]] for i in sorted(maps)]).astype(np.uint8),
        })
        answered = self._target_labels
        saved = copy.deepcopy(self.state_dict())
        try:
            self.load_source()
            self.trainer.reset_optimizer()
            self._target_labels = pseudo
            self.train(steps, start_step=0, total_steps=steps, use_target=True)
            out["miou_stage2"] = self.evaluate().miou
        finally:
            self.load_state_dict(saved)
            self._target_labels = answered
        return out

    def evaluate(self) -> Evaluation:
        """Metrics of the current model on target-val."""
        return self.trainer.evaluate(self.data.target_val)

    def snapshot(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """What the current model sees on some target-train images, for pictures of a round.

        At native label resolution: ``image`` uint8 ``[K, H, W, 3]``, ``label`` uint8
        ``[K, H, W]`` (ground truth trainIds), ``prediction`` uint8 ``[K, H, W]`` and, for the
        ball, ``radius`` float32 ``[K, H, W]`` (the images must share one native size).
        """
        data = self.data.target_train
        pairs = data.items(list(indices))
        logits, emb, c = self.trainer.forward_maps(data.stack([data.to_input(img) for img, _ in pairs]))
        logits = self.trainer.class_logits(logits)
        predictions, radii = [], []
        for j, (_, label) in enumerate(pairs):
            size = label.shape
            predictions.append(self.trainer.upsample(logits[j : j + 1], size).softmax(dim=1).argmax(dim=1)[0])
            if c is not None:
                radii.append(radius_map(self.trainer.upsample(emb[j : j + 1], size), c=c)[0])
        out = {
            "image": np.stack([img for img, _ in pairs]),
            "label": np.stack([label for _, label in pairs]).astype(np.uint8),
            "prediction": torch.stack(predictions).to(torch.uint8).cpu().numpy(),
        }
        if c is not None:
            out["radius"] = torch.stack(radii).float().cpu().numpy()
        return out


__all__ = [
    "Learner", "LogFn", "RunData", "cached_class_presence", "class_presence", "ensure_data", "image_seed",
    "ensure_superpixels", "log_to_stderr", "open_split", "prepare_data", "region_answers", "superpixel_source",
]
