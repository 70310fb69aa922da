"""Typed, validated experiment configuration.

One flat namespace on purpose: a config key is also the Parquet column and the
``--set key=value`` flag, so there is one name for one concept everywhere. The
config is validated once, at the edge (file or command line), into a frozen
dataclass; nothing downstream mutates it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from halo_ray.data.labels import check_void_ids
from halo_ray.names import (
    BACKBONE_NAMES,
    HYPERBOLIC_STRATEGIES,
    MIN_TRAIN_MICRO_BATCH,
    REGION_STRATEGIES,
    STRATEGIES,
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be turned into a valid config."""


KEY_GROUPS: tuple[str, ...] = ("identity", "data", "model", "acquisition", "training", "runtime")
"""The groups of config keys, in the order experiment files and ``config show`` list them."""


@dataclass(frozen=True)
class KeyInfo:
    """What a config key is and what it shapes; every field of :class:`ExperimentConfig` has one.

    The hashes, checks and records that depend on keys are derived from this, so a new key
    is classified once, where it is declared (a test fails for a key without it).
    """

    group: str  # one of KEY_GROUPS
    doc: str  # one line: what the key means (config show, the JSON schema)
    source: Literal["always", "if_set", "schedule", "special"] | None = None  # shapes the source model:
    # hashed into source_key always, only away from its default (keys added after caches existed),
    # through the continuous loop's schedule length, or by a rule of its own (local_consistency;
    # reference, through the keys it resolves)
    validation: bool = False  # shapes a source-phase validation record (validation_key)
    column: bool = False  # a Parquet column of its own (the rest is in config_json)
    hparam: bool = False  # recorded in TensorBoard's HParams
    runtime: bool = False  # says how, not what: a resume may change it, run ids ignore it


def key(default: Any, group: str, doc: str, **roles: Any) -> Any:
    """A config field: its default and its :class:`KeyInfo` (``roles``: source, validation,
    column, hparam, runtime)."""
    return dataclasses.field(default=default, metadata={"key": KeyInfo(group, doc, **roles)})


#: Keys where the released HALO code's arithmetic differs from our defaults: key -> (our
#: default, the released value). Left null, each follows ``reference``; set, it wins.
REFERENCE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "hfr_norm": ("rms", "l2"),
    "hfr_positivity": ("softplus", "clamp"),
    "head_dtype": ("float32", "float64"),
    "mlr": ("ball", "released"),
    "align_corners": (False, True),
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one multi-round active-learning run."""

    # --- identity -------------------------------------------------------------
    experiment: str = key("synthetic", "identity", "name of the experiment; a Parquet column", column=True)
    seed: int = key(0, "identity", "seeds model init, sampling and random selection", source="always", column=True, hparam=True)

    # --- data -------------------------------------------------------------------
    data_root: str = key("data/synthetic", "data", "folder holding <source>/ and <target>/ layouts", source="always", validation=True)
    source: Literal["gtav", "synthia", "cityscapes"] = key("gtav", "data", "source layout under data_root (synthia: 16 classes)", source="always", column=True)
    target: Literal["cityscapes", "acdc"] = key("cityscapes", "data", "target layout under data_root", validation=True, column=True)
    source_root: str | None = key(None, "data", "overrides <data_root>/<source> (real datasets)", source="always")
    target_root: str | None = key(None, "data", "overrides <data_root>/<target>", validation=True)
    target_conditions: tuple[str, ...] = key(("fog", "night", "rain"), "data", "ACDC conditions", validation=True)
    void_label_ids: tuple[int, ...] = key((), "data", "extra labelId-file values that mean void (not 0..33, e.g. [255]); default none", source="if_set", validation=True)
    generate_data: bool = key(True, "data", "write the embedded benchmark into data_root if it is missing")
    data_seed: int = key(0, "data", "seed of the embedded benchmark generator", source="always", validation=True)
    source_size: tuple[int, ...] | None = key(None, "data", "[W, H] network input for source images; null = native (papers: 1280x720)", source="if_set")
    target_size: tuple[int, ...] | None = key(None, "data", "[W, H] network input for target images; null = native (papers: 1280x640)", validation=True)

    # --- model ------------------------------------------------------------------
    backbone: str = key("tiny", "model", "one of halo_ray.models.BACKBONES: tiny (CPU), deeplabv2_r101, deeplabv3p_r101, deeplabv3p_r101_sep, deeplabv3p_r50_deepstem (multi-class query), mit_b0..mit_b5", source="always", column=True, hparam=True)
    pretrained: str | None = key(None, "model", "local file of ImageNet weights for the backbone's encoder (never downloaded)", source="always")
    freeze_bn: bool = key(False, "model", "keep every BatchNorm at its (pretrained) statistics, affine parameters frozen", source="always")
    geometry: Literal["hyperbolic", "euclidean", "cosine"] = key("hyperbolic", "model", "head type: hyperbolic (HALO), euclidean, cosine (the multi-class query's classifier)", source="always", column=True, hparam=True)
    embed_dim: int | None = key(64, "model", "pixel embedding dimension D; null = no 1x1 reduction, the head classifies the backbone's features (geometry cosine: the released multi-class model)", source="always", column=True, hparam=True)
    curvature: float = key(1.0, "model", "Poincaré ball curvature c > 0 (initial value if learnable)", source="always", column=True, hparam=True)
    learnable_curvature: bool = key(False, "model", "train c jointly with the network", source="always", hparam=True)
    hfr: bool = key(True, "model", "hyperbolic feature reweighting before expmap0", source="always", column=True, hparam=True)
    temperature: float = key(0.1, "model", "cosine head: logits = cosine / temperature (released multi-class query: 0.1)", source="if_set", hparam=True)
    undefined_output: bool = key(False, "model", "unit multiclass: one more output, 'undefined', learned from the answers' void bit; regions it dominates are never picked (released Cityscapes)", source="if_set", hparam=True)
    # The next five keys are where the released HALO code's arithmetic differs from our defaults
    # (README "Our defaults and the released code"); null = the released value under reference: true,
    # ours otherwise, and an explicit value wins either way (ablations).
    hfr_norm: Literal["rms", "l2"] | None = key(None, "model", "HFR spatial normalisation: rms (ours), l2 (released)", source="always", hparam=True)
    hfr_positivity: Literal["softplus", "clamp"] | None = key(None, "model", "HFR weights: softplus (ours), clamp at 1e-5 (released)", source="if_set", hparam=True)
    head_dtype: Literal["float32", "float64"] | None = key(None, "model", "expmap0, MLR and radius: float32 (ours), float64 (released)", source="if_set", hparam=True)
    mlr: Literal["ball", "released"] | None = key(None, "model", "MLR offsets kept in the ball (ours), HALO's HyperMLR (released)", source="if_set", hparam=True)
    align_corners: bool | None = key(None, "model", "bilinear upsampling of logits/embeddings: false (ours), true (released)", source="if_set", hparam=True)

    # --- acquisition ------------------------------------------------------------
    strategy: str = key("halo", "acquisition", "one of STRATEGIES", column=True, hparam=True)
    unit: Literal["region", "pixel", "multiclass"] = key("region", "acquisition", "region: squares (RA); pixel: centres only (PA); multiclass: superpixels answered with every class present, cost in clicks", column=True, hparam=True)
    budget: float = key(5.0, "acquisition", "total labelled share of target pixels, in percent (0, 100]", column=True, hparam=True)
    rounds: int = key(5, "acquisition", "selection rounds R; 0 = source-only (or, with the target as source, fully supervised)", column=True, hparam=True, source="schedule")
    region_size: int = key(3, "acquisition", "odd side of a labelled square (2k+1)", column=True, hparam=True)
    suppression: int | None = key(None, "acquisition", "odd side of the suppression window; None = strategy default", column=True, hparam=True)
    bins: int = key(100, "acquisition", "radius quantisation levels K of the HALO boundary score (reference K)", column=True, hparam=True)
    boundary_window: int = key(3, "acquisition", "odd side of the HALO boundary (impurity) window", hparam=True)
    clicks_per_round: int | None = key(None, "acquisition", "unit multiclass: clicks a round may spend (one per class named; released Cityscapes: 100000)", hparam=True)
    superpixels: Literal["seeds", "slic", "grid"] = key("seeds", "acquisition", "unit multiclass: superpixel method (seeds = the released recipe)", hparam=True)
    num_superpixels: int | None = key(None, "acquisition", "unit multiclass: superpixels per image; null = 2048 at 2048x1024, scaled by area", hparam=True)
    trim: int = key(5, "acquisition", "unit multiclass: border band (px) left out when an answer is read from ground truth", hparam=True)
    bill_void: bool = key(True, "acquisition", "unit multiclass: a region holding void costs a click for it (released Cityscapes)", hparam=True)
    stage1_weights: tuple[float, ...] = key((16.0, 8.0, 1.0), "training", "unit multiclass: weights of the stage-1 terms [CE on one-class regions, merged positive, prototypical pixel] (released 16/8/1; its ablations zero some)", hparam=True)
    stage2_steps: int = key(0, "training", "unit multiclass: steps of the stage-2 model (anew from the source model, on pseudo labels) after each round; 0 = no stage 2", hparam=True)
    nu: float = key(6.0, "acquisition", "unit multiclass: PixBal's class-weight coefficient (released Cityscapes 6, VOC 12)", hparam=True)
    reference: bool = key(False, "acquisition", "the released HALO/RIPU code's arithmetic: scores, picks, and the five keys above", column=True, hparam=True, source="special")

    # --- training ---------------------------------------------------------------
    loop: Literal["continuous", "adapt", "retrain"] = key("continuous", "training", "continuous: one schedule over source phase and rounds (RIPU); adapt: a new schedule from the source model (HALO); retrain: each round from the source model (docs/architecture.md §2)", column=True, hparam=True, source="schedule")
    source_steps: int = key(600, "training", "source-only pre-training steps (cached by config hash)", source="always")
    round_steps: int = key(100, "training", "training steps after each selection round (rounds × round_steps in all)", source="schedule")
    select_steps: tuple[int, ...] | None = key(None, "training", "adaptation steps where rounds select (first 0); null = every round_steps")
    batch_size: int = key(8, "training", "source images per step (and labelled target images per step)", source="always")
    lr: float = key(0.01, "training", "base learning rate (poly decay)", source="always", hparam=True)
    optimizer: Literal["sgd", "adamw"] = key("sgd", "training", "SGD with momentum (DeepLab runs) or AdamW (SegFormer runs)", source="if_set", hparam=True)
    momentum: float = key(0.9, "training", "SGD only", source="always")
    weight_decay: float = key(5.0e-4, "training", "weight decay of every parameter (both reference codes)", source="always")
    poly_power: float = key(0.9, "training", "exponent of the poly learning-rate schedule", source="always")
    poly_horizon: int | None = key(None, "training", "steps over which poly decays; null = the schedule's length (RIPU: 62500, stopped at 40000)", source="if_set")
    warmup_steps: int = key(0, "training", "linear warm-up of the learning rate over the schedule's first steps", source="always")
    warmup_start: float = key(0.01, "training", "warm-up starts at this fraction of the scheduled rate", source="always")
    head_lr_mult: float = key(1.0, "training", "rate multiplier of everything outside the pretrained encoder (decoder, head)", source="always")
    grad_accum: int = key(1, "training", "micro-batches per optimizer step (a paper batch on a smaller GPU); divides batch_size", source="always")
    amp: bool = key(False, "training", "bfloat16 autocast for training and inference; CUDA only", source="always")
    target_loss_weight: float = key(1.0, "training", "weight of the labelled-target cross-entropy")
    source_weight: float = key(1.0, "training", "weight of the source losses in the rounds; 0 = source-free adaptation")
    negative_learning: bool = key(False, "training", "RIPU's negative-learning loss (eq. 11, weight 1) on the target batch's pixels")
    target_sampling: Literal["labelled", "all"] = key("labelled", "training", "target batch: images with labels, or all (RIPU/HALO code)")
    local_consistency: float = key(0.0, "training", "weight of RIPU's local-consistency loss (eq. 9) on source boundary pixels; RIPU: 0.1", source="special")
    train_flip: bool = key(True, "training", "random horizontal flips of training images (RIPU/HALO use none)", source="if_set")
    class_balanced_source: bool = key(False, "training", "RIPU's class-balanced source sampling (rare classes drawn more)", source="if_set")
    eval_batch_size: int = key(16, "training", "images per evaluation batch (memory, not results)")
    eval_flip: bool = key(False, "training", "evaluate on the mean softmax of each image and its mirror (RIPU/HALO code)", validation=True)
    eval_every: int = key(0, "training", "also validate inside rounds after every N-th global step (HALO: 500); 0 = round ends only", validation=True)
    keep_best: bool = key(False, "training", "save the weights of the best validation (best_miou / best_step columns always)")
    source_select: Literal["last", "best"] = key("last", "training", "adapt from the source phase's last model, or its best validation (HALO)")
    round_model: Literal["last", "best"] = key("last", "training", "after a round's training, acquire, report and go on with its last model, or its best validation (released multi-class query; needs eval_every)", hparam=True)

    # --- runtime ----------------------------------------------------------------
    device: str = key("auto", "runtime", "\"auto\" (cuda if available), \"cpu\", \"cuda\" or \"cuda:N\"", runtime=True)
    num_threads: int | None = key(None, "runtime", "torch intra-op threads; None keeps torch's default", runtime=True)
    decode_workers: int = key(4, "runtime", "threads decoding and resizing one batch's images (PIL releases the GIL)", runtime=True)
    prefetch: bool = key(True, "runtime", "decode the next step's images while this step trains (same results)", runtime=True)
    deterministic: bool = key(False, "runtime", "deterministic CUDA kernels: runs and resumes repeat bit for bit on a GPU too", runtime=True)
    keep_checkpoints: int = key(1, "runtime", "round checkpoints kept (the latest ones; a resume needs only the last)", runtime=True)
    source_cache: str = key("runs/cache", "runtime", "where source pre-trained checkpoints are shared")
    superpixel_cache: str = key("runs/cache/superpixels", "runtime", "where superpixels are cached (halo-ray data superpixels fills it ahead)")
    log_every: int = key(25, "runtime", "progress line / loss scalar every N steps")
    log_images: int = key(2, "runtime", "target images whose radius/selection maps go to TensorBoard")

    def __post_init__(self) -> None:
        # keys left null follow `reference`; remembered (not a field) so that replace() and
        # to_values() let them follow a changed `reference` again
        following = frozenset(k for k in REFERENCE_DEFAULTS if getattr(self, k) is None)
        object.__setattr__(self, "_following", following)
        for key in following:  # frozen: set once, here, before anything reads it
            ours, released = REFERENCE_DEFAULTS[key]
            object.__setattr__(self, key, released if self.reference else ours)
        _validate(self)

    # ------------------------------------------------------------------------------
    @property
    def suppression_size(self) -> int:
        """The suppression window actually used: HALO's 11, otherwise RIPU's 2·region−1."""
        if self.suppression is not None:
            return self.suppression
        if self.strategy in HYPERBOLIC_STRATEGIES:
            return 11
        return 2 * self.region_size - 1

    @property
    def source_path(self) -> Path:
        return Path(self.source_root) if self.source_root else Path(self.data_root) / self.source

    @property
    def target_path(self) -> Path:
        return Path(self.target_root) if self.target_root else Path(self.data_root) / self.target

    @property
    def source_hw(self) -> tuple[int, int] | None:
        """``source_size`` as ``(H, W)`` (tensor order), or None for the native size."""
        return None if self.source_size is None else (self.source_size[1], self.source_size[0])

    @property
    def target_hw(self) -> tuple[int, int] | None:
        """``target_size`` as ``(H, W)`` (tensor order), or None for the native size."""
        return None if self.target_size is None else (self.target_size[1], self.target_size[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key in ("target_conditions", "source_size", "target_size", "select_steps", "void_label_ids", "stage1_weights"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_values(self) -> dict[str, Any]:
        """The values to build this config again *and vary it*: :meth:`to_dict`, except that
        keys which follow ``reference`` (left null) are null again, so a search or an override
        that changes ``reference`` moves them with it. ``to_dict`` holds the resolved values
        (what a run computes with: Parquet, checkpoints, ids)."""
        out = self.to_dict()
        for key in self._following:
            out[key] = None
        return out

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes``; keys that followed ``reference`` keep following it."""
        following = {k: None for k in self._following if k not in changes}
        return dataclasses.replace(self, **following, **changes)

    def source_key(self) -> str:
        """Hash of everything that determines the source pre-trained model.

        Runs whose keys agree share one cached source checkpoint.
        """
        payload = {k: getattr(self, k) for k in keys_where(source="always")}
        # a weight now; 0 hashes as the switch's old "off", so those caches stay valid
        payload["local_consistency"] = self.local_consistency or False
        # later keys count only away from their defaults, so caches written before they existed stay valid
        defaults = default_values()
        for name in keys_where(source="if_set"):
            if self.to_dict()[name] != defaults[name]:
                payload[name] = self.to_dict()[name]
        if self.freeze_bn and self.hfr and self.geometry == "hyperbolic":
            payload["hfr_batchnorm"] = "trained"  # frozen with the others before; trained as HALO's since
        if self.loop == "continuous":
            # the poly schedule spans source + rounds, so it shapes the source phase too
            payload["total_steps"] = self.total_steps
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def validation_key(self) -> str:
        """Hash of what a source-phase validation record depends on beyond :meth:`source_key`:
        the target validation set, how it is evaluated and how often (``source_select: best``)."""
        values = self.to_dict()
        payload = {"source": self.source_key(), **{k: values[k] for k in keys_where(validation=True)}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def source_cache_files(self) -> tuple[Path, Path]:
        """Where this config's source model is cached in ``source_cache``, and where its
        best source-phase validation (``source_select: best``) is."""
        folder = Path(self.source_cache)
        key = self.source_key()
        return folder / f"source-{key}.pt", folder / f"source-{key}-best-{self.validation_key()}.pt"

    def source_cached(self) -> bool:
        """Whether the cache holds everything a run of this config needs from its source phase."""
        path, best_path = self.source_cache_files()
        return path.exists() and (self.source_select != "best" or best_path.exists())

    def round_lengths(self) -> list[int]:
        """Training steps of each round: ``round_steps`` each, or the gaps between
        ``select_steps`` (the last round runs to ``rounds × round_steps`` adaptation steps)."""
        if self.select_steps is None:
            return [self.round_steps] * self.rounds
        ends = [*self.select_steps[1:], self.rounds * self.round_steps]
        return [end - start for start, end in zip(self.select_steps, ends, strict=True)]

    @property
    def total_steps(self) -> int:
        """Length of the continuous schedule: source pre-training plus every round."""
        return self.source_steps + self.rounds * self.round_steps

    def run_id(self) -> str:
        """Short stable id of this exact configuration: a hash of the keys away from their
        defaults, runtime keys aside. A run resumed on another device or with other thread
        counts keeps its id, and so does every run when a later halo_ray adds a key (whose
        default keeps the old behaviour)."""
        defaults = default_values()
        payload = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS and v != defaults[k]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------
# validation


@functools.cache
def default_values() -> dict[str, Any]:
    """Every key's default in :meth:`ExperimentConfig.to_dict` form, which is also how
    ``config_json`` and ``search.json`` hold it: what a config written before a key existed
    ran with (:meth:`ExperimentConfig.run_id`, ``analyze``, ``search --resume``). Read-only
    by convention (cached): merge it into a new dict."""
    return ExperimentConfig().to_dict()


#: Longest text of a value echoed back in an error message (a huge value is cut, not repeated).
MAX_SHOWN = 80


def _shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`MAX_SHOWN` characters."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    """``text`` cut to :data:`MAX_SHOWN` characters, saying how long it was."""
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 15] + f"... ({len(text)} chars)"


#: An experiment name: it names run folders and result files, so no path separators or dots first.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _odd(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum or value % 2 == 0:
        raise ConfigError(f"{name} must be an odd integer >= {minimum}, but got {name}={value}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if (value < 0) if allow_zero else (value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, but got {name}={value}")


def _check_input_size(name: str, value: tuple[int, ...] | None) -> None:
    """A network input size is null or ``[W, H]``: two integers >= 1."""
    if value is None:
        return
    ok = len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ConfigError(
            f"{name} must be null (native size) or [W, H] with two integers >= 1, "
            f"but got {name}={list(value)}"
        )


def _validate_multiclass(cfg: ExperimentConfig) -> None:
    """The multi-class label query's keys (docs/multiclass.md)."""
    allowed = (*REGION_STRATEGIES, *STRATEGIES)
    if cfg.strategy not in allowed:
        raise ConfigError(f"unit multiclass: strategy must be one of {list(allowed)}, but got strategy={_shown(cfg.strategy)}")
    if cfg.clicks_per_round is None or cfg.clicks_per_round < 1:
        raise ConfigError(
            f"unit multiclass needs clicks_per_round, an integer >= 1 (one click per class named), "
            f"but got clicks_per_round={cfg.clicks_per_round}"
        )
    if cfg.num_superpixels is not None and cfg.num_superpixels < 1:
        raise ConfigError(f"num_superpixels must be an integer >= 1 or null, but got num_superpixels={cfg.num_superpixels}")
    if cfg.trim < 0:
        raise ConfigError(f"trim must be an integer >= 0 (0 = no band), but got trim={cfg.trim}")
    if cfg.stage2_steps < 0:
        raise ConfigError(f"stage2_steps must be an integer >= 0 (0 = no stage 2), but got stage2_steps={cfg.stage2_steps}")
    _positive("nu", cfg.nu, allow_zero=True)
    weights = cfg.stage1_weights
    if len(weights) != 3 or any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ConfigError(
            "stage1_weights are the weights of [CE on one-class regions, merged positive, prototypical pixel]: "
            f"three finite numbers >= 0, not all 0 (released [16, 8, 1]), but got stage1_weights={list(weights)}"
        )


def _validate(cfg: ExperimentConfig) -> None:
    """One check per key, each naming the key, the value and what is expected."""
    if not _NAME_RE.match(cfg.experiment) or len(cfg.experiment) > 100:
        raise ConfigError(
            f"experiment names run folders and result files: letters, digits, '_', '.', '-' (not first), at "
            f"most 100 characters, but got experiment={_shown(cfg.experiment)}"
        )
    bad_floats = [f.name for f in fields(cfg) if isinstance(getattr(cfg, f.name), float)
                  and not math.isfinite(getattr(cfg, f.name))]
    if bad_floats:
        name = bad_floats[0]
        raise ConfigError(f"{name} must be a finite number, but got {name}={getattr(cfg, name)}")
    if cfg.unit == "multiclass":
        _validate_multiclass(cfg)
    elif cfg.undefined_output:
        raise ConfigError(
            f"undefined_output=true learns the 'undefined' output from superpixel answers and needs unit: "
            f"multiclass, but got unit={cfg.unit!r}"
        )
    elif cfg.strategy not in STRATEGIES:
        hint = " (pixbal, bvsb and classbal score superpixels: unit: multiclass)" if cfg.strategy in REGION_STRATEGIES else ""
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, but got strategy={_shown(cfg.strategy)}{hint}")
    if cfg.strategy in HYPERBOLIC_STRATEGIES and cfg.geometry != "hyperbolic":
        raise ConfigError(
            f"strategy={cfg.strategy!r} reads the hyperbolic radius and needs geometry='hyperbolic', "
            f"but got geometry={cfg.geometry!r}"
        )
    if not (0 < cfg.budget <= 100) or not math.isfinite(cfg.budget):
        raise ConfigError(f"budget is a percentage in (0, 100], but got budget={cfg.budget}")
    if not (math.isfinite(cfg.curvature) and cfg.curvature > 0):
        raise ConfigError(f"curvature must be > 0 (the ball's c), but got curvature={cfg.curvature}")
    if cfg.bins < 2:
        raise ConfigError(f"bins must be an integer >= 2, but got bins={cfg.bins}")
    _odd("region_size", cfg.region_size)
    _odd("boundary_window", cfg.boundary_window)
    if cfg.suppression is not None:
        _odd("suppression", cfg.suppression)
    if cfg.unit == "region" and cfg.suppression_size < cfg.region_size:
        raise ConfigError(
            f"the suppression window must cover the labelled square, but got suppression={cfg.suppression_size} < "
            f"region_size={cfg.region_size} (squares of one round would overlap); use suppression >= "
            f"{2 * cfg.region_size - 1} for squares that never overlap"
        )
    try:
        check_void_ids(cfg.void_label_ids)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.poly_horizon is not None and cfg.poly_horizon < 1:
        raise ConfigError(
            f"poly_horizon must be an integer >= 1 or null (the schedule's own length), but got "
            f"poly_horizon={cfg.poly_horizon}"
        )
    if cfg.rounds < 0:
        raise ConfigError(
            f"rounds must be an integer >= 0 (0: a source-only run, its round-0 row alone), but got rounds={cfg.rounds}"
        )
    if cfg.embed_dim is None and cfg.geometry != "cosine":
        raise ConfigError(
            f"embed_dim=null (no reduction: classify the backbone's features) is the released multi-class model's "
            f"cosine classifier and needs geometry='cosine', but got geometry={cfg.geometry!r}; give embed_dim a size"
        )
    for name in ("batch_size", "embed_dim", "eval_batch_size", "log_every"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be an integer >= 1, but got {name}={getattr(cfg, name)}")
    for name in ("source_steps", "round_steps", "log_images", "eval_every"):
        _positive(name, getattr(cfg, name), allow_zero=True)
    for name in ("lr", "poly_power", "head_lr_mult", "temperature"):
        _positive(name, getattr(cfg, name))
    if cfg.backbone not in BACKBONE_NAMES:
        raise ConfigError(f"backbone must be one of {sorted(BACKBONE_NAMES)}, but got backbone={_shown(cfg.backbone)}")
    if cfg.pretrained is not None and not Path(cfg.pretrained).expanduser().is_file():
        raise ConfigError(f"pretrained must be a local weights file, but {cfg.pretrained!r} does not exist")
    if cfg.head_lr_mult != 1.0 and cfg.backbone == "tiny":
        raise ConfigError(
            f"head_lr_mult={cfg.head_lr_mult} needs a backbone with a pretrained encoder (the tiny backbone "
            "has none); use 1.0 or a ResNet/MiT backbone"
        )
    if cfg.warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be an integer >= 0, but got warmup_steps={cfg.warmup_steps}")
    if not 0.0 <= cfg.warmup_start <= 1.0:
        raise ConfigError(f"warmup_start is a fraction in [0, 1], but got warmup_start={cfg.warmup_start}")
    if cfg.select_steps is not None:
        steps, adaptation = list(cfg.select_steps), cfg.rounds * cfg.round_steps
        if (
            len(steps) != cfg.rounds or steps[0] != 0 or any(b <= a for a, b in zip(steps[:-1], steps[1:], strict=True))
            or steps[-1] >= adaptation
        ):
            raise ConfigError(
                f"select_steps must list rounds={cfg.rounds} strictly increasing adaptation steps starting "
                f"at 0 and below rounds × round_steps = {adaptation}, but got select_steps={steps}"
            )
    if cfg.grad_accum < 1 or cfg.batch_size % cfg.grad_accum:
        raise ConfigError(
            f"grad_accum must be an integer >= 1 that divides batch_size={cfg.batch_size}, "
            f"but got grad_accum={cfg.grad_accum}"
        )
    least = MIN_TRAIN_MICRO_BATCH.get(cfg.backbone, 1)
    if cfg.grad_accum >= 1 and cfg.batch_size // cfg.grad_accum < least:
        raise ConfigError(
            f"backbone={cfg.backbone!r} trains on at least {least} images per forward pass (BatchNorm after its "
            f"image pooling), but batch_size={cfg.batch_size} over grad_accum={cfg.grad_accum} gives "
            f"{cfg.batch_size // cfg.grad_accum}; use a smaller grad_accum or a larger batch_size"
        )
    if cfg.amp and cfg.device == "cpu":
        raise ConfigError("amp=true needs a CUDA device (bfloat16 autocast), but device='cpu'")
    for name in ("momentum", "weight_decay", "target_loss_weight", "source_weight"):
        _positive(name, getattr(cfg, name), allow_zero=True)
    if not (math.isfinite(cfg.local_consistency) and cfg.local_consistency >= 0):
        raise ConfigError(
            f"local_consistency is the weight of RIPU's local-consistency loss, a finite number >= 0 "
            f"(RIPU: 0.1; 0 = off), but got local_consistency={cfg.local_consistency}"
        )
    if cfg.amp and cfg.head_dtype == "float64":
        implied = " (implied by reference: true; set head_dtype: float32 to keep amp)" if cfg.reference else ""
        raise ConfigError(
            f"amp=true (bfloat16 autocast) cannot run with head_dtype='float64'{implied}: the float64 head "
            "exists to reproduce the released arithmetic, which autocast would change; choose one"
        )
    if cfg.round_model == "best" and cfg.eval_every < 1:
        raise ConfigError(
            "round_model='best' goes on from the best of a round's validations, which run every eval_every "
            f"global steps: it needs eval_every >= 1, but got eval_every={cfg.eval_every}"
        )
    if cfg.source_select == "best" and (cfg.eval_every < 1 or cfg.loop == "continuous"):
        raise ConfigError(
            f"source_select='best' validates the source phase every eval_every steps and starts adaptation from "
            f"its best model: it needs eval_every >= 1 and loop adapt or retrain (continuous runs one schedule), "
            f"but got eval_every={cfg.eval_every}, loop={cfg.loop!r}"
        )
    if cfg.keep_checkpoints < 1:
        raise ConfigError(
            f"keep_checkpoints must be an integer >= 1 (round checkpoints kept; a resume needs the last), "
            f"but got keep_checkpoints={cfg.keep_checkpoints}"
        )
    if cfg.decode_workers < 1:
        raise ConfigError(f"decode_workers must be >= 1, but got decode_workers={cfg.decode_workers}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1 or null, but got num_threads={cfg.num_threads}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', but got device={_shown(cfg.device)}")
    for name in ("source_size", "target_size"):
        _check_input_size(name, getattr(cfg, name))
    known = {"fog", "night", "rain", "snow"}
    bad = [c for c in cfg.target_conditions if c not in known]
    if bad or not cfg.target_conditions:
        raise ConfigError(
            f"target_conditions must be a non-empty subset of {sorted(known)}, but got {list(cfg.target_conditions)}"
        )


# ----------------------------------------------------------------------------------
# parsing


def _field_types() -> dict[str, Any]:
    return get_type_hints(ExperimentConfig)


def _coerce(key: str, value: Any, hint: Any, origin_name: str) -> Any:
    """Convert ``value`` to the annotated type of ``key`` or raise naming both."""
    args = get_args(hint)
    origin = get_origin(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{origin_name}: {key} must be one of {list(args)}, but got {key}={_shown(value)}")
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(key, value, inner, origin_name)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{origin_name}: {key} must be a list, but got {key}={_shown(value)}")
        return tuple(_coerce(key, v, args[0], origin_name) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{origin_name}: {key} must be true or false, but got {key}={_shown(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{origin_name}: {key} must be an integer, but got {key}={_shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{origin_name}: {key} must be an integer, but got {key}={_shown(value)}")
    if hint is float:
        if isinstance(value, bool) and key == "local_consistency":
            raise ConfigError(
                f"{origin_name}: local_consistency is now the weight of RIPU's local-consistency loss "
                f"(a number: RIPU 0.1, 0 = off), not a switch, but got local_consistency={_shown(value)}"
            )
        if isinstance(value, bool):
            raise ConfigError(f"{origin_name}: {key} must be a number, but got {key}={_shown(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{origin_name}: {key} must be a number, but got {key}={_shown(value)}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{origin_name}: {key} must be a string, but got {key}={_shown(value)}")
    raise ConfigError(f"{origin_name}: unsupported type for {key}")  # pragma: no cover


def build_config(
    values: dict[str, Any], *, origin: str = "config", origins: dict[str, str] | None = None
) -> ExperimentConfig:
    """Validate a flat mapping into an :class:`ExperimentConfig`.

    ``origin`` names where the values came from (file path, ``--set``) in every error;
    ``origins`` may name it per key (:func:`load_config`: the file, an ``extends:`` base, or
    the ``--set key=value``), and an error about a key is then attributed to that key's origin.
    """
    origins = origins or {}
    hints = _field_types()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        where = _origin_of(unknown, origins, origin)
        raise ConfigError(
            f"{where}: unknown config key(s) {[_cut(str(k)) for k in unknown]}; known keys are {sorted(hints)}"
        )
    typed = {k: _coerce(k, v, hints[k], origins.get(k, origin)) for k, v in values.items()}
    try:
        return ExperimentConfig(**typed)
    except ConfigError as err:
        named = [k for k in origins if re.search(rf"\b{re.escape(k)}\b", str(err))]
        raise ConfigError(f"{_origin_of(named, origins, origin)}: {err}") from None


def _origin_of(keys: list[str], origins: dict[str, str], default: str) -> str:
    """Where the first of ``keys`` given on the command line came from, else the first key's, else ``default``."""
    for key in keys:
        if origins.get(key, "").startswith("--set"):
            return origins[key]
    return origins.get(keys[0], default) if keys else default


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["budget=2.2", "hfr=false"]`` into a mapping of raw YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, but got {_shown(pair)}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, but got {_shown(pair)}")
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"key {_shown(key)} is given twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, but got {type(data).__name__}")
    return data


EXTENDS_KEY = "extends"
"""Experiment-file key naming a base file (relative to this one) whose values this file overrides."""


def read_experiment_values(
    path: str | Path, _chain: tuple[Path, ...] = (), *, origins: dict[str, str] | None = None
) -> dict[str, Any]:
    """The config values of an experiment file, ``extends:`` resolved.

    A variant file (``extends: gtav_to_cityscapes.yaml`` plus the keys it changes) inherits
    every other key of its base, which may extend another; a cycle or a missing base is an
    error naming the chain of files. ``origins``, when given, receives for every key the file
    it came from (``base.yaml (extends: of variant.yaml)`` for inherited keys).
    """
    values = _read_experiment_values(Path(path), _chain)
    if origins is not None:
        origins.update({key: source for key, (_, source) in values.items()})
    return {key: value for key, (value, _) in values.items()}


def _read_experiment_values(path: Path, _chain: tuple[Path, ...]) -> dict[str, tuple[Any, str]]:
    """:func:`read_experiment_values` with each value's file: ``{key: (value, origin)}``."""
    data = read_yaml_mapping(path)
    if not data:
        raise ConfigError(
            f"{path}: the experiment file sets no key; start from experiments/synthetic.yaml, or "
            f"write '{EXTENDS_KEY}: <base file>' with the keys you change"
        )
    base = data.pop(EXTENDS_KEY, None)
    own = {key: (value, str(path)) for key, value in data.items()}
    if base is None:
        return own
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: {EXTENDS_KEY} must name a base experiment file, but got {base!r}")
    base_path = (path.parent / base).resolve()
    chain = (*_chain, path.resolve())
    if base_path in chain:
        names = " -> ".join(str(p) for p in (*chain, base_path))
        raise ConfigError(f"{path}: {EXTENDS_KEY} makes a cycle: {names}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: {EXTENDS_KEY}: base experiment file {base_path} does not exist")
    shown = Path(os.path.normpath(path.parent / base))  # as the user wrote it, for messages
    try:
        read = _read_experiment_values(shown, chain)
    except ConfigError as err:  # a broken base: say which file's extends: brought it in
        if "(extends: of " in str(err):
            raise
        raise ConfigError(f"{err} (extends: of {path})") from None
    inherited = {
        key: (value, source if "(extends:" in source else f"{source} (extends: of {path})")
        for key, (value, source) in read.items()
    }
    return {**inherited, **own}


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (``extends:`` resolved), apply ``--set`` overrides, validate.

    Errors name where the offending value came from: the file, the base file an ``extends:``
    brought it from, or the ``--set key=value`` that gave it.
    """
    return load_config_with_origins(path, overrides)[0]


def load_config_with_origins(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[ExperimentConfig, dict[str, str]]:
    """:func:`load_config`, and where each key's value came from: the file, ``<base>
    (extends: of <file>)``, ``--set key=value``, ``reference: true|false`` for keys that follow
    it, or ``default``."""
    path = Path(path)
    origins: dict[str, str] = {}
    values = read_experiment_values(path, origins=origins)
    for pair in overrides or []:
        name = pair.split("=", 1)[0].strip()
        origins[name] = f"--set {_cut(pair)}"
    values.update(parse_overrides(overrides or []))
    cfg = build_config(values, origin=str(path), origins=origins)
    for name in cfg._following:
        origins[name] = f"reference: {str(cfg.reference).lower()}"
    return cfg, {name: origins.get(name, "default") for name in config_keys()}


def show_config(cfg: ExperimentConfig, origins: dict[str, str]) -> str:
    """The resolved config as an experiment file, by group, each value with its origin."""
    values = cfg.to_dict()
    lines: list[str] = []
    for group in KEY_GROUPS:
        lines.append(f"# --- {group}")
        for name in keys_where(group=group):
            text = yaml.safe_dump({name: values[name]}, default_flow_style=True, width=10_000).strip()
            text = text[1:-1] if text.startswith("{") else text  # {key: value} -> key: value
            lines.append(f"{text:<44} # {origins.get(name, 'default')}")
    return "\n".join(lines) + "\n"


def config_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of experiment files, for editors that validate and complete YAML.

    Every key with its type, allowed values, default and one-line meaning; ``extends`` names a
    base file; other keys are refused, as :func:`load_config` refuses them. Cross-key rules
    (odd windows, ranges that depend on other keys) stay :func:`load_config`'s.
    """
    hints = _field_types()
    defaults = ExperimentConfig().to_values()
    properties: dict[str, Any] = {
        EXTENDS_KEY: {"type": "string", "description": "a base experiment file (relative to this one) whose keys this file overrides"},
    }
    for name in config_keys():
        info = key_info(name)
        prop = _json_type(hints[name])
        prop["description"] = f"[{info.group}] {info.doc}"
        prop["default"] = defaults[name]
        properties[name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "halo_ray experiment file",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def _json_type(hint: Any) -> dict[str, Any]:
    """The JSON Schema of one annotated config type."""
    args, origin = get_args(hint), get_origin(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return {"anyOf": [_json_type(inner), {"type": "null"}]}
    if origin is tuple:
        return {"type": "array", "items": _json_type(args[0])}
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return {"type": names[hint]}


def config_keys() -> list[str]:
    """All config keys, in declaration order."""
    return [f.name for f in fields(ExperimentConfig)]


def key_info(name: str) -> KeyInfo:
    """The :class:`KeyInfo` of config key ``name``."""
    for f in fields(ExperimentConfig):
        if f.name == name:
            return f.metadata["key"]
    raise KeyError(f"unknown config key {name!r}")


def keys_where(**roles: Any) -> tuple[str, ...]:
    """Config keys whose :class:`KeyInfo` has every given role value, in declaration order
    (``keys_where(runtime=True)``, ``keys_where(source="always")``, ``keys_where(group="data")``)."""
    return tuple(
        f.name for f in fields(ExperimentConfig) if all(getattr(f.metadata["key"], r) == v for r, v in roles.items())
    )


#: Keys that say how a run is executed, not what it computes: a resumed run may change them
#: (another node, more cores), and two trials that differ only in them are the same experiment.
#: Decoding and prefetching never change a number; another device or thread count may change
#: floating-point rounding (as it does between two machines).
RUNTIME_KEYS: frozenset[str] = frozenset(keys_where(runtime=True))


__all__ = [
    "KEY_GROUPS",
    "REFERENCE_DEFAULTS",
    "RUNTIME_KEYS",
    "KeyInfo",
    "key_info",
    "keys_where",
    "ConfigError",
    "ExperimentConfig",
    "HYPERBOLIC_STRATEGIES",
    "STRATEGIES",
    "build_config",
    "default_values",
    "config_json_schema",
    "config_keys",
    "load_config",
    "load_config_with_origins",
    "parse_overrides",
    "read_experiment_values",
    "read_yaml_mapping",
    "show_config",
]
