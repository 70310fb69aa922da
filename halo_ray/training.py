"""The training step loop, prediction and evaluation — no Ray, no files.

Losses: ``losses.py``; image sets and sparse labels: ``imagesets.py``; source sampling:
``sampling.py``; metrics: ``metrics.py``.

The :class:`Trainer` owns the model and its optimizer. The run (``halo_ray.run``) and
the Ray trainer actor drive it through the same few methods: ``train``, ``predict``,
``evaluate``, ``state_dict``/``load_state_dict``.

Data scale to real datasets: an :class:`ImageSet` decodes only the items of the batch at
hand (at the network input size), revealed target labels stay sparse
(:class:`SparseLabels`, dense maps only for the batch), and evaluation upsamples the
predictions to each label's native size in pieces of bounded memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from halo_ray.config import ConfigError, ExperimentConfig
from halo_ray.data.labels import IGNORE_INDEX
from halo_ray.data.synthia import SYNTHIA_ABSENT_TRAIN_IDS, synthia_miou
from halo_ray.hyperbolic import radius_map
from halo_ray.imagesets import ImageSet, RegionTargets, SparseLabels
from halo_ray.losses import local_consistency_loss, negative_learning_loss
from halo_ray.metrics import (
    Evaluation,
    confusion_matrix,
    iou_from_confusion,
    radius_iou_spearman,
    upsample_chunks,
)
from halo_ray.models import build_segmenter, find_encoder, freeze_batchnorm, load_backbone_weights
from halo_ray.optim import SGD, AdamW, Optimizer

# ImageNet statistics: the papers' backbones are ImageNet-pretrained, and the same
# normalisation is kept for the small backbone so weights stay interchangeable.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Logit of a class the run does not train (SYNTHIA's missing three): finite, so no NaN in
#: losses or entropies, and low enough that its softmax probability is 0 in float32.
ABSENT_LOGIT = -1.0e4


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for but torch sees no CUDA device; use device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def use_deterministic_kernels() -> None:
    """Make CUDA arithmetic repeat bit for bit (``deterministic: true``), for this process.

    By default cuBLAS, cuDNN and atomic-add kernels order their sums differently from run to
    run, so two CUDA runs of one config (or a run and its resume) drift apart in the last
    bits, then in their selections. This picks deterministic kernels and cuBLAS workspaces
    (set before the first cuBLAS call of the process, as a trial's fresh learner process does).
    Ops without a deterministic CUDA kernel only warn (``warn_only``): on an H100 those were
    the evaluation's ``bincount`` and the loss value's forward reduction, and two runs were
    still identical. On the CPU, runs are deterministic anyway.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` → float ``[B, 3, H, W]`` with ImageNet mean/std."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    """Poly decay ``base·(1 − step/total)^power`` (DeepLab/RIPU/HALO schedule)."""
    if total <= 0:
        return base
    return base * max(0.0, 1.0 - step / total) ** power


def scheduled_lr(cfg: ExperimentConfig, step: int, total: int) -> float:
    """The poly rate over ``total`` steps (``poly_horizon`` instead when set: RIPU decays over
    62,500 steps and stops at 40,000), scaled during a linear warm-up from ``warmup_start`` to
    1 (HALO: 600 steps from 0.01)."""
    horizon = cfg.poly_horizon if cfg.poly_horizon is not None else total
    lr = poly_lr(cfg.lr, step, horizon, cfg.poly_power)
    if step < cfg.warmup_steps:
        lr *= cfg.warmup_start + (1.0 - cfg.warmup_start) * step / cfg.warmup_steps
    return lr


# ----------------------------------------------------------------------------------
# trainer


ProgressFn = Callable[[int, int, float, float], None]  # (step, total, loss, lr)
SourceSampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> int64 [n] indices


_Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images [B, h, w, 3], labels [B, h, w], flips [B]


@dataclass(frozen=True)
class _StepDraw:
    """What one training step sampled: source and target batch positions and flip coins."""

    src_idx: list[int]
    src_flip: torch.Tensor  # bool [B]
    tgt_idx: list[int] | None
    tgt_flip: torch.Tensor | None  # bool [B]


class _Prefetcher:
    """Yields ``load(draw())`` for ``steps`` steps; with ``enabled``, step ``i + 1``'s images
    are decoded in a background thread while step ``i`` trains (the GPU is not left waiting
    for PIL).

    ``draw`` runs in the caller's thread, in step order, never beyond ``steps``: the sampling
    generator ends where it would without prefetching, so results and resumes are identical.
    ``load`` must only read shared state (the image sets and labels do not change during
    ``Trainer.train``). Leaving the ``with`` block waits for a pending load.
    """

    def __init__(self, draw: Callable[[], _StepDraw], load: Callable[[_StepDraw], Any], steps: int, *, enabled: bool):
        self.draw, self.load, self.steps = draw, load, steps
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch") if enabled and steps > 1 else None
        self._pending = None

    def __enter__(self):
        return self._batches()

    def _batches(self):
        for i in range(self.steps):
            batch = self.load(self.draw()) if self._pending is None else self._pending.result()
            self._pending = None
            if self._pool is not None and i + 1 < self.steps:
                self._pending = self._pool.submit(self.load, self.draw())
            yield batch

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class Trainer:
    """Holds the segmenter and its optimizer; trains on source + labelled target, scores, evaluates."""

    def __init__(self, cfg: ExperimentConfig, num_classes: int, device: torch.device | None = None):
        self.cfg = cfg
        self.num_classes = num_classes
        #: the model's outputs: the classes, plus the "undefined" one with ``undefined_output``
        self.outputs = num_classes + int(cfg.undefined_output)
        self.device = device or resolve_device(cfg.device)
        #: bool [C]: classes the run trains and predicts; a SYNTHIA source lacks terrain, truck and
        #: train, whose logits are then pinned far below the others (None: every class)
        self.trained_classes: torch.Tensor | None = None
        if cfg.source == "synthia":
            self.trained_classes = torch.ones(self.outputs, dtype=torch.bool, device=self.device)
            self.trained_classes[list(SYNTHIA_ABSENT_TRAIN_IDS)] = False
        if cfg.amp and self.device.type != "cuda":
            raise ConfigError(f"amp=true needs a CUDA device (bfloat16 autocast), but the run is on {self.device}")
        if cfg.deterministic:
            use_deterministic_kernels()
        torch.manual_seed(cfg.seed)
        model = build_segmenter(
            backbone=cfg.backbone,
            geometry=cfg.geometry,
            num_classes=self.outputs,
            embed_dim=cfg.embed_dim,
            curvature=cfg.curvature,
            learnable_curvature=cfg.learnable_curvature,
            hfr=cfg.hfr,
            hfr_norm=cfg.hfr_norm,
            hfr_positivity=cfg.hfr_positivity,
            head_dtype=cfg.head_dtype,
            mlr=cfg.mlr,
            temperature=cfg.temperature,
        )
        #: what loading ``pretrained`` did (None without it), for the run's log
        self.weights_report = load_backbone_weights(model, cfg.pretrained) if cfg.pretrained else None
        if cfg.freeze_bn:
            freeze_batchnorm(model)
        self.model = model.to(self.device)
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> Optimizer:
        """SGD with momentum, or AdamW (``optimizer``); with ``head_lr_mult`` ≠ 1 the encoder and
        the rest are two groups (``lr_mult`` each). Weight decay applies to every parameter, as
        in both reference codes."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups: list[dict] = [{"params": params, "lr_mult": 1.0}]
        if self.cfg.head_lr_mult != 1.0:
            _, encoder = find_encoder(self.model)
            inside = {id(p) for p in encoder.parameters()}
            groups = [
                {"params": [p for p in params if id(p) in inside], "lr_mult": 1.0},
                {"params": [p for p in params if id(p) not in inside], "lr_mult": self.cfg.head_lr_mult},
            ]
        if self.cfg.optimizer == "adamw":
            return AdamW(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        return SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)

    def _autocast(self):
        """bfloat16 autocast on CUDA when ``amp`` is on; a no-op context otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def reset_optimizer(self) -> None:
        """Fresh optimizer state (``retrain`` loop: each round starts a new schedule)."""
        self.optimizer = self._new_optimizer()

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    @property
    def curvature(self) -> float | None:
        return self.model.curvature

    # -- training ------------------------------------------------------------------
    def _batch(self, images: torch.Tensor, labels: torch.Tensor, flip: torch.Tensor):
        """Flip and move one (micro-)batch: uint8 ``[b, h, w, 3]`` → normalised ``[b, 3, h, w]``."""
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(2), images)
        labels = torch.where(flip.view(-1, 1, 1), labels.flip(2), labels)
        return normalize(images.to(self.device)), labels.to(self.device).long()

    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 logits with the classes the run does not train pinned at ``ABSENT_LOGIT``
        (their probability is exactly 0, and they never win the argmax)."""
        logits = logits.float()
        if self.trained_classes is None:
            return logits
        return logits.masked_fill(~self.trained_classes.view(1, -1, 1, 1), ABSENT_LOGIT)

    def _forward_full(self, x: torch.Tensor):
        """Logits (float32) upsampled to the input resolution, plus the raw output."""
        with self._autocast():
            out = self.model(x)
        return self.upsample(self._masked(out.logits), x.shape[-2:]), out

    def train(
        self,
        steps: int,
        *,
        source: ImageSet,
        generator: torch.Generator,
        start_step: int,
        total_steps: int,
        target: ImageSet | None = None,
        target_labels: SparseLabels | RegionTargets | None = None,
        source_sampler: SourceSampler | None = None,
        progress: ProgressFn | None = None,
    ) -> float:
        """Run ``steps`` SGD steps; returns the mean loss.

        Each step takes ``batch_size`` source images (uniformly, or from ``source_sampler``)
        and, when target labels are given, ``batch_size`` target images that hold at least
        one labelled pixel (``target_sampling: all``: any target image, as the reference
        codes; one without labels then adds only the negative-learning term). Only these images are decoded, at the sets' input sizes; the
        target labels are built dense for them alone. The learning rate follows the poly
        schedule at global step ``start_step + i`` of ``total_steps``. All sampling draws
        from ``generator``, in a fixed order per step (source images, source flips, target
        images, target flips; the flip coins are drawn even with ``train_flip`` off), so a
        resumed run repeats it exactly.

        ``target_labels`` may be the answered superpixels of the multi-class query
        (:class:`~halo_ray.imagesets.RegionTargets`): the target term is then the stage-1 loss
        (:meth:`_answer_loss`) instead of cross-entropy.
        """
        cfg = self.cfg
        self.model.train()
        target_pool = None  # target images a step draws from
        if target is not None and target_labels is not None:
            if cfg.target_sampling == "all" and not isinstance(target_labels, RegionTargets):
                # the reference codes: labelled or not (NL still applies)
                target_pool = torch.arange(len(target))
            else:
                target_pool = torch.from_numpy(target_labels.labelled_images())
            if target_pool.numel() == 0:
                target_pool = None

        def draw() -> _StepDraw:
            """One step's sampling, always in this order, from ``generator`` alone."""
            if source_sampler is None:
                src_idx = torch.randint(len(source), (cfg.batch_size,), generator=generator)
            else:
                src_idx = source_sampler(cfg.batch_size, generator)
            src_flip = torch.rand(cfg.batch_size, generator=generator) < 0.5
            if target_pool is None:
                return _StepDraw(src_idx.tolist(), src_flip, None, None)
            pick = torch.randint(target_pool.numel(), (cfg.batch_size,), generator=generator)
            tgt_flip = torch.rand(cfg.batch_size, generator=generator) < 0.5
            return _StepDraw(src_idx.tolist(), src_flip, target_pool[pick].tolist(), tgt_flip)

        def load(d: _StepDraw) -> tuple[_Batch | None, _Batch | None]:
            """Decode one step's images (CPU work; in the prefetch thread when ``prefetch``)."""
            tgt = None
            if d.tgt_idx is not None:
                tgt_images = target.images(d.tgt_idx)  # [B, h, w, 3]
                # [B, h, w] labels, or (superpixels, answers, selected) for answered regions
                tgt_labels = target_labels.batch(d.tgt_idx, tuple(tgt_images.shape[1:3]))
                tgt = (tgt_images, tgt_labels, d.tgt_flip if cfg.train_flip else torch.zeros_like(d.tgt_flip))
            src = None  # source-free rounds (source_weight 0) never read a source image
            if tgt is None or cfg.source_weight > 0:
                flip = d.src_flip if cfg.train_flip else torch.zeros_like(d.src_flip)
                src = (*source.training_batch(d.src_idx), flip)
            return src, tgt

        losses = []
        with _Prefetcher(draw, load, steps, enabled=cfg.prefetch) as batches:
            for i, (src, tgt) in enumerate(batches):
                step = start_step + i
                lr = scheduled_lr(cfg, step, total_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_mult", 1.0)
                self.optimizer.zero_grad(set_to_none=True)
                parts = []
                for part in torch.arange(cfg.batch_size).chunk(cfg.grad_accum):  # micro-batches
                    loss = self._micro_batch_loss(src, tgt, part)
                    loss.backward()
                    parts.append(loss.detach())
                self.optimizer.step()
                value = sum(float(v) for v in parts)  # one device sync per step
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step}")
                losses.append(value)
                if progress is not None:
                    progress(step + 1, total_steps, value, lr)
        return float(np.mean(losses)) if losses else float("nan")

    def _micro_batch_loss(
        self,
        src: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        tgt: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        part: torch.Tensor,
    ) -> torch.Tensor:
        """The step's loss restricted to the batch positions ``part``, scaled so that the
        micro-batch losses of one step sum to the loss of the whole batch.

        ``src`` and ``tgt`` are the step's whole batches (images ``[B, h, w, 3]``, labels
        ``[B, h, w]``, flips ``[B]``). The cross-entropies are divided by the whole batch's count
        of labelled pixels, so with frozen BatchNorm accumulating them is exact.

        Local consistency and negative learning are the released losses of each micro-batch
        (mean over its boundary pixels, sum over its negatives / their count) divided by the
        number of micro-batches: what the released code's data-parallel GPUs, one micro-batch
        each, average.
        """
        cfg = self.cfg
        loss = torch.zeros((), device=self.device)
        if src is not None:
            logits, y, valid = self._micro_batch_forward(src, part)
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum") / valid
            if cfg.local_consistency > 0:
                loss = loss + cfg.local_consistency * local_consistency_loss(logits, y) / cfg.grad_accum
            if tgt is not None and cfg.source_weight != 1.0:  # the rounds weigh the source terms
                loss = loss * cfg.source_weight
        if tgt is not None and isinstance(tgt[1], tuple):  # answered superpixels
            return loss + cfg.target_loss_weight * self._answer_loss(tgt, part)
        if tgt is not None:
            logits_t, yt, valid_t = self._micro_batch_forward(tgt, part)
            ce_t = F.cross_entropy(logits_t, yt, ignore_index=IGNORE_INDEX, reduction="sum") / valid_t
            loss = loss + cfg.target_loss_weight * ce_t
            if cfg.negative_learning:
                loss = loss + negative_learning_loss(logits_t, classes=self.trained_classes) / cfg.grad_accum
        return loss

    def _answer_loss(self, batch: tuple[torch.Tensor, tuple, torch.Tensor], part: torch.Tensor) -> torch.Tensor:
        """The multi-class query's stage-1 loss (:func:`~halo_ray.multiclass.partial_label_losses`,
        weights ``stage1_weights``) of ``part`` of a target batch of answered superpixels.

        At temperature 1 on the head's logits (the cosine head folds its temperature in). The
        answers' void bit is dropped when the model has no "undefined" output (as the released
        VOC code); the released normalisers run over one GPU's batch, so a micro-batch's loss is
        divided by the number of micro-batches, as the released data-parallel GPUs average.
        """
        from halo_ray.multiclass import partial_label_losses

        images, (superpixels, answers, selected), flip = batch
        x, spx = self._batch(images[part], superpixels[part], flip[part])  # superpixels flip as labels do
        logits, _ = self._forward_full(x)
        k = logits.shape[1]
        terms = partial_label_losses(
            logits, answers[part][..., :k].to(self.device), spx, selected[part].to(self.device),
            temperature=1.0, weights=self.cfg.stage1_weights,
        )
        return terms["total"] / self.cfg.grad_accum

    def _micro_batch_forward(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], part: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits at input size, labels, the whole batch's labelled-pixel count) of ``part``."""
        images, labels, flip = batch
        x, y = self._batch(images[part], labels[part], flip[part])
        logits, _ = self._forward_full(x)
        return logits, y, (labels != IGNORE_INDEX).sum().clamp_min(1)

    # -- inference -----------------------------------------------------------------
    @torch.no_grad()
    def forward_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """uint8 ``[B, h, w, 3]`` → (logits ``[B, C, h', w']``, embeddings ``[B, D, h', w']``, c),
        at the model's output resolution (logits float32, embeddings float32 or, from a float64
        head, float64); :meth:`upsample` takes them to any size."""
        self.model.eval()
        x = normalize(images.to(self.device))
        with self._autocast():
            out = self.model(x)
        emb = out.embeddings if out.embeddings.dtype == torch.float64 else out.embeddings.float()
        return self._masked(out.logits), emb, self.model.curvature

    def class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The class channels ``[B, C, ...]`` of ``[B, K, ...]`` logits: without the "undefined"
        output (``undefined_output``), which takes part in training, PixBal/BvSB and pseudo
        labels only; predictions, evaluation and pixel strategies see the classes (as the
        released code, which drops it before its argmax and its 'predignore' BvSB)."""
        return logits[:, : self.num_classes]

    def upsample(self, maps: torch.Tensor, size: Sequence[int], *, via: Sequence[int] | None = None) -> torch.Tensor:
        """Bilinear upsampling of ``[B, K, h', w']`` maps to ``size=(H, W)``, with the config's
        ``align_corners``. Keeps ball points inside the ball (a convex combination of points of
        a ball lies in it). ``via`` (an intermediate size) first goes there, as the released
        selection code takes logits to the network input size and then to the label size."""
        align = bool(self.cfg.align_corners)
        if via is not None and tuple(via) != tuple(maps.shape[-2:]) and tuple(via) != tuple(size):
            maps = F.interpolate(maps, size=tuple(via), mode="bilinear", align_corners=align)
        return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=align)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, size: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """uint8 ``[B, h, w, 3]`` → (probs ``[B, C, H, W]``, embeddings ``[B, D, H, W]``, c).

        Both maps are upsampled to ``size=(H, W)`` (default: the image size): selection
        and evaluation work at full label resolution.
        """
        logits, emb, c = self.forward_maps(images)
        size = tuple(images.shape[1:3]) if size is None else tuple(size)
        return self.upsample(logits, size).softmax(dim=1), self.upsample(emb, size), c

    @torch.no_grad()
    def evaluate(self, data: ImageSet) -> Evaluation:
        """mIoU, per-class IoU, pixel accuracy and radius statistics on a labelled set.

        The network sees the images at the set's input size; its logits and embeddings are
        upsampled to each label's native size, so the confusion counts native label pixels.
        """
        C = self.num_classes
        conf = torch.zeros(C, C, dtype=torch.long, device=self.device)
        radius_sum = torch.zeros(C, dtype=torch.float64, device=self.device)
        radius_count = torch.zeros(C, dtype=torch.float64, device=self.device)
        for start in range(0, len(data), self.cfg.eval_batch_size):
            indices = range(start, min(start + self.cfg.eval_batch_size, len(data)))
            images, labels = data.evaluation_batch(indices)  # [B, h, w, 3], B × [H_i, W_i]
            logits, emb, c = self.forward_maps(images)
            logits = self.class_logits(logits)  # the released argmax runs over the classes only
            mirrored = self.class_logits(self.forward_maps(images.flip(2))[0]) if self.cfg.eval_flip else None
            channels = C + (emb.shape[1] if c is not None else 0)
            for part in upsample_chunks([tuple(label.shape) for label in labels], channels):
                size = tuple(labels[part[0]].shape)
                target = torch.stack([labels[k] for k in part]).to(self.device).long()  # [b, H, W]
                probs = self.upsample(logits[part], size).softmax(dim=1)
                if mirrored is not None:  # flip test-time augmentation: mean of the two softmaxes
                    probs = (probs + self.upsample(mirrored[part], size).softmax(dim=1).flip(-1)) / 2
                # max(dim).indices: argmax's result (first maximum, NaN counts as one) at half its CPU time
                conf += confusion_matrix(probs.max(dim=1).indices, target, C)
                if c is not None:
                    radius = radius_map(self.upsample(emb[part], size), c=c)  # [b, H, W]
                    keep = target != IGNORE_INDEX
                    radius_sum += torch.bincount(target[keep], weights=radius[keep].double(), minlength=C)
                    radius_count += torch.bincount(target[keep], minlength=C).double()
        iou = iou_from_confusion(conf) * 100.0
        total = conf.sum().item()
        pixel_acc = 100.0 * conf.diag().sum().item() / total if total else float("nan")
        if self.model.curvature is None:
            per_class = np.full(C, np.nan)
            radius_mean = float("nan")
        else:
            counts = radius_count.cpu().numpy()
            sums = radius_sum.cpu().numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            radius_mean = float(sums.sum() / counts.sum()) if counts.sum() else float("nan")
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        miou13 = float("nan")
        if self.cfg.source == "synthia":  # the papers' 16-class mIoU and 13-class mIoU*
            matrix = conf.cpu().numpy()
            miou, miou13 = synthia_miou(matrix, classes=16), synthia_miou(matrix, classes=13)
        return Evaluation(
            miou=miou,
            miou13=miou13,
            pixel_acc=pixel_acc,
            iou=iou,
            radius_per_class=per_class,
            radius_mean=radius_mean,
            radius_acc_spearman=radius_iou_spearman(per_class, iou),
            pixels=int(total),
        )


__all__ = [
    "ABSENT_LOGIT", "IMAGENET_MEAN", "IMAGENET_STD", "ProgressFn", "SourceSampler", "Trainer", "normalize",
    "poly_lr", "resolve_device", "scheduled_lr", "use_deterministic_kernels",
]
