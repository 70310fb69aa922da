"""Pretrained weights from local files, and frozen BatchNorm.

Nothing here downloads anything: weights are read from a path the user gives, with
``torch.load(path, map_location="cpu", weights_only=True)``, so a file that is an arbitrary
pickle (code that would run on load) is refused, never executed.

* :func:`load_pretrained` loads a state dict into a module by parameter name, checking keys and
  shapes first and raising one :class:`WeightsError` that lists every problem.
* :func:`load_backbone_weights` loads ImageNet *encoder* weights (ResNet-101, MiT) into the
  ``encoder`` of a segmenter's backbone; the decoder and head keep their initialisation and are
  named in the report; the file's ImageNet classifier (``fc.*`` / ``head.*``) is ignored and
  listed.
* :func:`convert_hf_mit` renames a MiT encoder state dict from the Hugging Face ``transformers``
  SegFormer layout to ours (fusing key and value into ``attn.kv``); :func:`mit_key_layout` tells
  the layouts apart, and :func:`load_backbone_weights` converts HF and mmseg files on its own.
* :func:`freeze_batchnorm` puts every BatchNorm in eval mode with frozen affine parameters,
  and keeps it so through later ``module.train()`` calls (DeepLab / RIPU's ``FREEZE_BN``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..hyperbolic import HFR
from .mit import MixTransformer
from .resnet import ResNet

__all__ = [
    "CLASSIFIER_PREFIXES",
    "LoadReport",
    "MIT_LAYOUTS",
    "WeightsError",
    "convert_hf_mit",
    "find_encoder",
    "freeze_batchnorm",
    "load_backbone_weights",
    "load_pretrained",
    "mit_key_layout",
    "read_state_dict",
]

NESTING_KEYS: tuple[str, ...] = ("state_dict", "model")
"""Keys under which checkpoints commonly nest their state dict (tried in this order)."""

WRAPPER_PREFIX = "module."
"""Prefix DataParallel / DistributedDataParallel add to every key; always stripped."""

CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "head.")
"""ImageNet classifier keys of ResNet (``fc.*``) and MiT (``head.*``) checkpoints: not part of
an encoder, ignored (and listed) by :func:`load_backbone_weights`."""

_SHOW = 5  # keys quoted per problem in error messages (the count is always given)


class WeightsError(ValueError):
    """A weights file could not be loaded: missing file, refused pickle, or key/shape mismatch.

    The message names the file and every problem (first keys of each kind plus counts).
    """


@dataclass(frozen=True)
class LoadReport:
    """What a load did. All keys are the target module's names (after prefix mapping).

    ``loaded``: keys set from the file; ``missing``: keys of the module the file did not cover,
    left as they were (only possible with ``strict=False``, or for the decoder / head in
    :func:`load_backbone_weights`); ``ignored``: file keys dropped on purpose (``ignore_prefixes``,
    e.g. an ImageNet classifier), named as in the file. ``layout``: the key layout the file was
    read as (a key of :data:`MIT_LAYOUTS`; ``"native"`` for files already in our names).
    """

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    layout: str = "native"

    def summary(self) -> str:
        """One line for logs: counts, the layout if converted, the first missing / ignored keys."""
        parts = [f"loaded {len(self.loaded)} tensors from '{self.path}'"]
        if self.layout != "native":
            parts[0] += f" (read as {MIT_LAYOUTS[self.layout]})"
        if self.missing:
            parts.append(f"{_quote(self.missing)} not in the file (kept as initialised)")
        if self.ignored:
            parts.append(f"ignored file keys {_quote(self.ignored)}")
        return "; ".join(parts)


def _in_file(key: str, file_name: Callable[[str], str | None] | None) -> str:
    """`` (file: 'name')`` when ``file_name`` gives the file a different name for the module key
    ``key`` (converted layouts), else ``""``."""
    name = file_name(key) if file_name is not None else None
    return "" if name is None or name == key else f" (file: {name!r})"


def _quote(keys: Sequence[str], file_name: Callable[[str], str | None] | None = None) -> str:
    """``['a', 'b', …] (N keys)``: the first few keys (each with its file name where it differs,
    see :func:`_in_file`) and the count."""
    shown = ", ".join(repr(k) + _in_file(k, file_name) for k in keys[:_SHOW])
    more = ", …" if len(keys) > _SHOW else ""
    return f"[{shown}{more}] ({len(keys)} key{'s' if len(keys) != 1 else ''})"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a local file into a flat ``{name: tensor}`` dict, never unpickling arbitrary objects.

    Accepts a torch file holding a plain state dict, or one nested under ``"state_dict"`` or
    ``"model"`` (as training checkpoints store it), and a ``.safetensors`` file (the format
    Hugging Face publishes, tensors only by construction). Raises :class:`WeightsError` for a
    missing file, a file that ``weights_only`` loading refuses (an arbitrary pickle), an
    unreadable file, or contents that are not a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"pretrained weights file not found: '{path}' (nothing is downloaded; "
            "give the path of a local .pth/.pt/.safetensors file)"
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"'{path}' is not a plain tensor state dict: torch.load(weights_only=True) refused "
            f"it ({reason}). Only files of tensors (e.g. torch.save(model.state_dict(), path)) "
            "are accepted; arbitrary pickles are never unpickled."
        ) from err
    except Exception as err:  # corrupt / truncated / not a torch file at all
        raise WeightsError(f"could not read '{path}' as a torch state dict: {err}") from err
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (CPU), or a :class:`WeightsError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"could not read '{path}' as a safetensors file: {err}") from err
    if not state:
        raise WeightsError(f"'{path}' holds no tensors")
    return dict(state)


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """The flat tensor dict inside ``obj`` (itself, or nested under :data:`NESTING_KEYS`)."""
    for _ in range(len(NESTING_KEYS) + 1):
        if not isinstance(obj, Mapping):
            raise WeightsError(
                f"'{path}' holds a {type(obj).__name__}, not a state dict (a dict of tensors)"
            )
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        nested = next((k for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    raise WeightsError(
        f"'{path}' is not a state dict: expected a dict of tensors, or one nested under "
        f"{' / '.join(repr(k) for k in NESTING_KEYS)}, but found non-tensor entries "
        f"{_quote(non_tensor) if non_tensor else '[] (it is empty)'}"
    )


def _remap(
    state: Mapping[str, Tensor], prefix_map: Mapping[str, str] | None, path: Path
) -> dict[str, Tensor]:
    """Strip :data:`WRAPPER_PREFIX`, then replace each key's longest matching ``prefix_map`` prefix.

    ``prefix_map={"backbone.": ""}`` strips a prefix, ``{"": "encoder."}`` adds one. Two file
    keys landing on the same name is an error.
    """
    prefixes = sorted((prefix_map or {}).items(), key=lambda kv: len(kv[0]), reverse=True)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix(WRAPPER_PREFIX)
        for old, new in prefixes:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        if name in out:
            raise WeightsError(
                f"'{path}': two file keys map to {name!r} under prefix_map={prefix_map!r}"
            )
        out[name] = value
    return out


def _optional(key: str) -> bool:
    """Module keys a file may lack without error: BatchNorm's ``num_batches_tracked`` counters
    (absent from older ImageNet checkpoints; unused with momentum-based running stats)."""
    return key.endswith("num_batches_tracked")


def load_pretrained(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    prefix_map: Mapping[str, str] | None = None,
    strict: bool = True,
    ignore_prefixes: Sequence[str] = (),
) -> LoadReport:
    """Load the state dict in the local file ``path`` into ``module`` by name; return a report.

    File keys are mapped first: a leading ``"module."`` is stripped, then ``prefix_map``
    replaces the longest matching prefix (e.g. ``{"backbone.": ""}``); mapped keys starting
    with any of ``ignore_prefixes`` are dropped and listed in ``LoadReport.ignored``.

    The rule: every remaining file key must name a tensor of ``module`` with the same shape,
    and at least one must; with ``strict=True`` every tensor of ``module`` must be in the file
    (``num_batches_tracked`` counters excepted); ``strict=False`` tolerates *missing* keys only
    (e.g. a decoder that the file does not cover) and lists them in ``LoadReport.missing``.
    Unexpected keys are never tolerated, since they usually mean a wrong prefix: drop them
    with ``ignore_prefixes``. Nothing is changed unless every check passes; otherwise one
    :class:`WeightsError` names the file, the missing and unexpected keys (first few plus
    counts) and every shape mismatch (key, expected shape, file shape).
    """
    file_path = Path(path)
    state = _remap(read_state_dict(file_path), prefix_map, file_path)
    return _load_state(module, state, file_path, strict=strict, ignore_prefixes=ignore_prefixes)


def _load_state(
    module: nn.Module,
    state: Mapping[str, Tensor],
    file_path: Path,
    *,
    strict: bool,
    ignore_prefixes: Sequence[str],
    layout: str = "native",
    file_name: Callable[[str], str | None] | None = None,
) -> LoadReport:
    """Check ``state`` (already in the module's names) against ``module`` and load it, following
    :func:`load_pretrained`'s rule. ``layout`` / ``file_name`` only shape messages: the layout the
    file was read as, and each module key's name in the file."""
    drop = tuple(ignore_prefixes)
    ignored = tuple(k for k in state if drop and k.startswith(drop))
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    target = module.state_dict()
    missing = tuple(k for k in target if k not in state and not _optional(k))
    unexpected = tuple(k for k in state if k not in target)
    mismatched = tuple(
        (k, tuple(target[k].shape), tuple(v.shape))
        for k, v in state.items()
        if k in target and target[k].shape != v.shape
    )
    problems = []
    if strict and missing:
        problems.append(
            f"missing keys (in the module, not in the file) {_quote(missing, file_name)}"
        )
    if unexpected:
        problems.append(
            f"unexpected keys (in the file, not in the module) {_quote(unexpected, file_name)}"
        )
    if mismatched:
        shown = "; ".join(
            f"{k}{_in_file(k, file_name)}: module expects {e}, file has {g}"
            for k, e, g in mismatched[:_SHOW]
        )
        problems.append(
            f"{len(mismatched)} shape mismatch{'es' if len(mismatched) > 1 else ''}: {shown}"
        )
    if not problems and len(state) == len(unexpected):
        problems.append("no file key matches the module")
    if problems:
        read_as = (
            f" (read as {MIT_LAYOUTS[layout]} and renamed to MiT names; the file's own name "
            "follows a key where it differs)"
            if layout != "native"
            else ""
        )
        raise WeightsError(
            f"cannot load '{file_path}' into {type(module).__name__}"
            f"{' (strict)' if strict else ''}{read_as}: "
            + "; ".join(problems)
            + ". If the file's keys carry another prefix, pass prefix_map (e.g. {'backbone.': ''})."
        )
    module.load_state_dict(state, strict=False)
    loaded = tuple(k for k in target if k in state)
    return LoadReport(
        path=str(file_path), loaded=loaded, missing=missing, ignored=ignored, layout=layout
    )


def find_encoder(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, encoder)``: the pretrainable encoder of a segmenter, backbone or bare encoder.

    Looks for ``model.backbone.encoder`` (a :class:`~halo_ray.models.Segmenter`), then
    ``model.encoder`` (a backbone such as :class:`~halo_ray.models.deeplab.DeepLabV2`), then
    ``model`` itself if it is a :class:`ResNet` or :class:`MixTransformer`. ``prefix`` is the
    encoder's name inside ``model`` (``"backbone.encoder."``, ``"encoder."`` or ``""``).
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and isinstance(
        getattr(backbone, "encoder", None), nn.Module
    ):
        return "backbone.encoder.", backbone.encoder
    if isinstance(getattr(model, "encoder", None), nn.Module):
        return "encoder.", model.encoder
    if isinstance(model, ResNet | MixTransformer):
        return "", model
    inner = type(backbone).__name__ if isinstance(backbone, nn.Module) else type(model).__name__
    raise WeightsError(
        f"{inner} has no pretrainable encoder (no 'encoder' submodule): ImageNet weights fit the "
        "ResNet / MiT backbones (e.g. backbone='deeplabv2_r101', 'deeplabv3p_r101', 'mit_b2')"
    )


# ---------------------------------------------------------------- MiT key layouts

MIT_LAYOUTS: dict[str, str] = {
    "native": "the NVlabs MiT layout (patch_embed1.*, block1.0.attn.kv.*, norm1.*)",
    "mmseg": "the NVlabs / mmseg segmentation-checkpoint layout (MiT names under 'backbone.')",
    "hf": (
        "the Hugging Face SegFormer layout (encoder.block.0.0.attention.self.query.*, "
        "separate key / value)"
    ),
}
"""Key layouts of MiT weight files told apart by :func:`mit_key_layout`, each with the phrase that
:func:`load_backbone_weights`'s reports and errors use for it."""

_LAYOUT_IGNORE: dict[str, tuple[str, ...]] = {
    "native": (),
    "mmseg": ("decode_head.", "auxiliary_head."),  # a trained segmenter's heads
    "hf": ("classifier.", "decode_head."),  # SegformerFor{ImageClassification,SemanticSegm.}
}
"""Non-encoder file keys dropped (and listed in ``ignored``) for each layout, besides
:data:`CLASSIFIER_PREFIXES`."""

MMSEG_PREFIX = "backbone."
"""Prefix of the encoder keys in NVlabs / mmseg SegFormer checkpoints (stripped for MiT)."""

_HF_PREFIXES = ("segformer.encoder.", "encoder.")  # SegformerFor* models; bare SegformerModel
_HF_KEY = re.compile(  # any HF encoder key, with or without its prefix
    r"(segformer\.)?(encoder\.)?(patch_embeddings\.\d+|block\.\d+\.\d+|layer_norm\.\d+)\."
)
_MMSEG_KEY = re.compile(r"backbone\.(patch_embed|block|norm)\d")
_HF_PATCH = re.compile(r"patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)")  # stage, part, param
_HF_NORM = re.compile(r"layer_norm\.(\d+)\.(\w+)")  # stage, param
_HF_BLOCK = re.compile(r"block\.(\d+)\.(\d+)\.(.+)\.(\w+)")  # stage, block, part, param
_NATIVE_PATCH = re.compile(r"patch_embed(\d+)\.(proj|norm)\.(\w+)")
_NATIVE_NORM = re.compile(r"norm(\d+)\.(\w+)")
_NATIVE_BLOCK = re.compile(r"block(\d+)\.(\d+)\.(.+)\.(\w+)")
_HF_BLOCK_PARTS: dict[str, str] = {  # HF SegformerLayer submodule -> our MiTBlock submodule
    "layer_norm_1": "norm1",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
}
_NATIVE_BLOCK_PARTS = {ours: hf for hf, ours in _HF_BLOCK_PARTS.items()}
_KV_ROLES = ("key", "value")  # HF's separate projections, fused into our attn.kv in this order
_HF_KV_PARTS = tuple(f"attention.self.{role}" for role in _KV_ROLES)


def mit_key_layout(keys: Iterable[str]) -> str:
    """The layout of a MiT weight file's ``keys``: ``"hf"``, ``"mmseg"`` or ``"native"``.

    ``"hf"``: some key is a Hugging Face ``transformers`` SegFormer encoder key
    (``[segformer.][encoder.]patch_embeddings.{i}.`` / ``block.{i}.{j}.`` / ``layer_norm.{i}.``,
    0-based). ``"mmseg"``: some key is one of our MiT names under ``backbone.`` (NVlabs / mmseg
    SegFormer training checkpoints). ``"native"`` otherwise: the keys are taken as our own
    names. A leading ``"module."`` is ignored.
    """
    names = [k.removeprefix(WRAPPER_PREFIX) for k in keys]
    if any(_HF_KEY.match(k) for k in names):
        return "hf"
    if any(_MMSEG_KEY.match(k) for k in names):
        return "mmseg"
    return "native"


def _split_hf_prefix(key: str) -> tuple[str, str]:
    """``(prefix, name)``: the key's ``segformer.encoder.`` / ``encoder.`` prefix (or ``""``)
    and the HF encoder name after it."""
    for prefix in _HF_PREFIXES:
        if key.startswith(prefix):
            return prefix, key[len(prefix) :]
    return "", key


def _hf_to_native(name: str) -> str | None:
    """Our name for the HF encoder name ``name`` (prefix stripped; stages 0-based there, 1-based
    here); ``None`` for names that are not encoder keys or are key / value (fused separately)."""
    if m := _HF_PATCH.fullmatch(name):
        return f"patch_embed{int(m[1]) + 1}.{'norm' if m[2] == 'layer_norm' else 'proj'}.{m[3]}"
    if m := _HF_NORM.fullmatch(name):
        return f"norm{int(m[1]) + 1}.{m[2]}"
    if (m := _HF_BLOCK.fullmatch(name)) and m[3] in _HF_BLOCK_PARTS:
        return f"block{int(m[1]) + 1}.{m[2]}.{_HF_BLOCK_PARTS[m[3]]}.{m[4]}"
    return None


def _native_to_hf(name: str, prefix: str) -> str | None:
    """The HF file name(s) of our encoder name ``name`` under ``prefix`` (for messages); the
    fused ``attn.kv`` names both its sources, ``'….key.weight + ….value.weight'``."""
    if m := _NATIVE_PATCH.fullmatch(name):
        part = "layer_norm" if m[2] == "norm" else "proj"
        return f"{prefix}patch_embeddings.{int(m[1]) - 1}.{part}.{m[3]}"
    if m := _NATIVE_NORM.fullmatch(name):
        return f"{prefix}layer_norm.{int(m[1]) - 1}.{m[2]}"
    if m := _NATIVE_BLOCK.fullmatch(name):
        base = f"{prefix}block.{int(m[1]) - 1}.{m[2]}."
        if m[3] == "attn.kv":
            return " + ".join(f"{base}attention.self.{role}.{m[4]}" for role in _KV_ROLES)
        hf = _NATIVE_BLOCK_PARTS.get(m[3])
        return None if hf is None else f"{base}{hf}.{m[4]}"
    return None


def _convert_hf(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """:func:`convert_hf_mit`, plus each converted key's file name(s) (our name -> file key)."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    kv: dict[str, dict[str, tuple[str, Tensor]]] = {}  # our attn.kv name -> role -> (key, tensor)
    needed: dict[str, str] = {}  # our attn.kv name -> its file key pattern ("{}" = role)

    def put(name: str, value: Tensor, source: str) -> None:
        if name in out:
            raise WeightsError(
                f"two file keys map to {name!r}: {origin[name]!r} and {source!r} (a file mixing "
                "the Hugging Face SegFormer layout with our MiT names, or two HF prefixes)"
            )
        out[name], origin[name] = value, source

    for key, value in state.items():
        prefix, name = _split_hf_prefix(key)
        block = _HF_BLOCK.fullmatch(name)
        if block and block[3] in ("attention.self.query", *_HF_KV_PARTS):
            stage, index, role, param = block[1], block[2], block[3].rsplit(".", 1)[1], block[4]
            fused = f"block{int(stage) + 1}.{index}.attn.kv.{param}"
            needed.setdefault(fused, f"{prefix}block.{stage}.{index}.attention.self.{{}}.{param}")
            if role in _KV_ROLES:
                kv.setdefault(fused, {})[role] = (key, value)
                continue
        native = _hf_to_native(name)
        put(key if native is None else native, value, key)
    absent = [
        pattern.format(role)
        for fused, pattern in needed.items()
        for role in _KV_ROLES
        if role not in kv.get(fused, {})
    ]
    if absent:
        raise WeightsError(
            f"read as {MIT_LAYOUTS['hf']}, but the attention tensors {_quote(absent)} are missing: "
            "MiT fuses each block's key and value projections into one 'attn.kv' (key rows "
            "first), so a block with a query needs both its key and its value"
        )
    for fused, roles in kv.items():
        (k_name, k), (v_name, v) = roles["key"], roles["value"]
        if k.shape != v.shape:
            raise WeightsError(
                f"cannot fuse {k_name!r} {tuple(k.shape)} and {v_name!r} {tuple(v.shape)} into "
                f"{fused!r}: key and value projections must have the same shape"
            )
        put(fused, torch.cat([k, v], dim=0), f"{k_name} + {v_name}")  # [2C, C] / [2C]
    return out, origin


def convert_hf_mit(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a MiT encoder state dict from the Hugging Face ``transformers`` SegFormer layout to
    our (NVlabs) names; the tensors are the same objects, except the fused ``attn.kv``.

    Accepted key prefixes: ``segformer.encoder.`` (``SegformerForImageClassification`` /
    ``SegformerForSemanticSegmentation`` files), ``encoder.`` (a bare ``SegformerModel``) or none.
    The renaming, stage ``i`` and block ``j`` being 0-based in HF and ``i + 1`` here:
    ``patch_embeddings.{i}.proj`` / ``.layer_norm`` -> ``patch_embed{i+1}.proj`` / ``.norm``;
    ``block.{i}.{j}.layer_norm_1`` / ``layer_norm_2`` -> ``block{i+1}.{j}.norm1`` / ``norm2``;
    ``attention.self.query`` / ``.sr`` / ``.layer_norm`` -> ``attn.q`` / ``attn.sr`` /
    ``attn.norm``; ``attention.output.dense`` -> ``attn.proj``; ``mlp.dense1`` / ``dense2`` ->
    ``mlp.fc1`` / ``fc2`` (``mlp.dwconv.dwconv`` unchanged); ``layer_norm.{i}`` -> ``norm{i+1}``.
    ``attention.self.key`` and ``.value`` (``[C, C]`` / ``[C]`` each) are concatenated along
    dim 0 into ``attn.kv`` (``[2C, C]`` / ``[2C]``, key rows first, as our attention splits it).

    Keys that are not HF encoder keys (``classifier.*``, ``decode_head.*``, anything else) are
    returned unchanged, for the caller to ignore or report. Raises :class:`WeightsError` naming
    the missing file key when a block has a query, key or value without its key or value, and
    when two file keys land on one name.
    """
    return _convert_hf(state)[0]


def _from_layout(
    state: Mapping[str, Tensor], layout: str
) -> tuple[dict[str, Tensor], Callable[[str], str | None] | None]:
    """``state`` in our MiT names, and a function giving each of our keys' name in the file."""
    if layout == "hf":
        converted, origin = _convert_hf(state)
        prefix = next(
            (_split_hf_prefix(k)[0] for k in state if _HF_KEY.match(k)), ""
        )  # the file's prefix, for keys it lacks
        return converted, lambda key: origin.get(key) or _native_to_hf(key, prefix)
    if layout == "mmseg":
        out: dict[str, Tensor] = {}
        source: dict[str, str] = {}
        for key, value in state.items():
            name = key.removeprefix(MMSEG_PREFIX)
            if name in out:
                raise WeightsError(f"two file keys map to {name!r}: {source[name]!r} and {key!r}")
            out[name], source[name] = value, key
        return out, lambda key: source.get(key, MMSEG_PREFIX + key)
    return dict(state), None


def load_backbone_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    prefix_map: Mapping[str, str] | None = None,
    ignore_prefixes: Sequence[str] = CLASSIFIER_PREFIXES,
) -> LoadReport:
    """Load ImageNet encoder weights from the local file ``path`` into ``model``'s encoder.

    ``model`` is a segmenter, a backbone with an ``encoder``, or a bare ResNet / MiT (see
    :func:`find_encoder`). The file's keys are the encoder's own names (``conv1.weight``,
    ``layer1.0.conv1.weight``, … / ``patch_embed1.proj.weight``, …), after ``prefix_map``.
    The encoder must be covered completely and shapes must match (a partly loaded encoder is
    an error, see :func:`load_pretrained`); the file's classifier keys (``ignore_prefixes``,
    default ``fc.*`` and ``head.*``) are dropped and listed in ``ignored``. The returned
    report's keys are names in ``model``: ``missing`` lists everything outside the encoder
    (ASPP, decoder, head), which keeps its initialisation.

    For a MiT encoder, the file's layout is detected (:func:`mit_key_layout`, after
    ``prefix_map``) and converted with nothing to pass: Hugging Face SegFormer files
    (:func:`convert_hf_mit`; their ``classifier.*`` / ``decode_head.*`` keys are ignored) and
    NVlabs / mmseg segmentation checkpoints (``backbone.`` stripped; ``decode_head.*`` /
    ``auxiliary_head.*`` ignored). ``ignore_prefixes`` then applies to the converted names
    (non-encoder keys keep their file names, so ``ignored`` shows those). ``LoadReport.layout``
    and every error message say which layout the file was read as, and errors give the file's
    name next to each of our keys where it differs. ResNet files are loaded by name only.
    """
    prefix, encoder = find_encoder(model)
    file_path = Path(path)
    state = _remap(read_state_dict(file_path), prefix_map, file_path)
    layout, file_name, drop = "native", None, tuple(ignore_prefixes)
    if isinstance(encoder, MixTransformer):
        layout = mit_key_layout(state)
        try:
            state, file_name = _from_layout(state, layout)
        except WeightsError as err:
            raise WeightsError(f"cannot load '{file_path}': {err}") from err
        drop += _LAYOUT_IGNORE[layout]
    report = _load_state(
        encoder,
        state,
        file_path,
        strict=True,
        ignore_prefixes=drop,
        layout=layout,
        file_name=file_name,
    )
    outside = tuple(k for k in model.state_dict() if not k.startswith(prefix)) if prefix else ()
    return LoadReport(
        path=report.path,
        loaded=tuple(prefix + k for k in report.loaded),
        missing=outside,
        ignored=report.ignored,
        layout=report.layout,
    )


class _StayInEval:
    """``train`` of a frozen BatchNorm: selects eval mode whatever ``mode`` is asked for.

    A plain object rather than a bound method so that a frozen model still pickles (a bound
    method would pickle as ``getattr(bn, name)``, which cannot be resolved on load).
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def freeze_batchnorm(module: nn.Module) -> int:
    """Freeze every BatchNorm in ``module`` (itself included) but HFR's; return how many it froze.

    Frozen means: eval mode (normalise with the running statistics and never update them),
    affine ``weight`` / ``bias`` with ``requires_grad=False``, and staying so through later
    ``module.train()`` calls. The latter works by giving each BatchNorm instance its own
    ``train`` (an instance attribute that always selects eval mode; ``nn.Module.train``
    recurses by calling each child's ``train``), so ``bn.training`` is truthfully ``False`` at
    all times. It survives ``.to(device)``, ``copy.deepcopy`` and pickling, and is not part of
    the state dict: after building a fresh model from a checkpoint, freeze it again. There is
    no unfreeze; build a fresh model instead. Call it after loading pretrained weights and
    before building the optimizer (frozen parameters then get no gradient and no update).

    The BatchNorm inside HFR (:class:`~halo_ray.hyperbolic.HFR`) is left alone: it is not a
    pretrained layer, and HALO's code trains it as an ordinary BatchNorm under ``FREEZE_BN``
    (its ``wn_mlp`` holds a plain ``nn.BatchNorm1d`` while the backbone's and decoder's norm
    layers are frozen).
    """
    count = 0
    keep = {id(m) for hfr in module.modules() if isinstance(hfr, HFR) for m in hfr.modules()}
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in keep:
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(False)
            m.train = _StayInEval(m)
            m.eval()
            count += 1
    return count
