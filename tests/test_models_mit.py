"""SegFormer paper sizes (MiT-B0 … B5) and MiT weight files in other key layouts.

The Hugging Face ``transformers`` layout is built here from our own MiT-B0 state dict by an
inverse mapping written independently of :func:`halo_ray.models.weights.convert_hf_mit` (names
from ``transformers``' ``modeling_segformer.py``), then loaded back with
:func:`load_backbone_weights`: every tensor and the encoder's output must be bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import halo_ray.models.mit as mit_module
from halo_ray.models import (
    BACKBONES,
    MIT_SIZES,
    MixTransformer,
    SegFormer,
    WeightsError,
    build_backbone,
    convert_hf_mit,
    load_backbone_weights,
    mit_key_layout,
)

HF_PREFIX = "segformer.encoder."  # SegformerForImageClassification / …ForSemanticSegmentation
HF_PARTS = {  # our MiTBlock submodule -> HF SegformerLayer submodule (key / value: split kv)
    "norm1": "layer_norm_1",
    "attn.q": "attention.self.query",
    "attn.sr": "attention.self.sr",
    "attn.norm": "attention.self.layer_norm",
    "attn.proj": "attention.output.dense",
    "norm2": "layer_norm_2",
    "mlp.fc1": "mlp.dense1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.fc2": "mlp.dense2",
}
IMAGE_HW = (64, 96)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this file (restored afterwards): small tensors, shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _segformer_b0(seed: int) -> SegFormer:
    torch.manual_seed(seed)
    return SegFormer("b0").eval()


def _to_hf(native: dict[str, Tensor], prefix: str = HF_PREFIX) -> dict[str, Tensor]:
    """Our MiT state dict in the HF layout: 0-based stages, renamed parts, kv split into
    ``key`` (first C rows) and ``value`` (last C rows)."""
    hf: dict[str, Tensor] = {}
    for key, value in native.items():
        head, rest = key.split(".", 1)
        if head.startswith("patch_embed"):
            stage = int(head.removeprefix("patch_embed")) - 1
            part, param = rest.split(".")
            part = {"proj": "proj", "norm": "layer_norm"}[part]
            hf[f"{prefix}patch_embeddings.{stage}.{part}.{param}"] = value
        elif head.startswith("block"):
            stage = int(head.removeprefix("block")) - 1
            index, sub = rest.split(".", 1)
            part, param = sub.rsplit(".", 1)
            base = f"{prefix}block.{stage}.{index}."
            if part == "attn.kv":
                c = value.shape[0] // 2
                hf[f"{base}attention.self.key.{param}"] = value[:c].clone()
                hf[f"{base}attention.self.value.{param}"] = value[c:].clone()
            else:
                hf[f"{base}{HF_PARTS[part]}.{param}"] = value
        else:
            assert head.startswith("norm"), key
            hf[f"{prefix}layer_norm.{int(head.removeprefix('norm')) - 1}.{rest}"] = value
    return hf


def _saved(tmp_path: Path, state: dict[str, Tensor], name: str = "weights.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def _assert_encoder_equal(encoder: nn.Module, source: nn.Module) -> None:
    loaded = encoder.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


# ---------------------------------------------------------------- paper sizes


@pytest.mark.parametrize(
    ("name", "dims", "depths", "decoder_dim"),
    [
        ("b0", (32, 64, 160, 256), (2, 2, 2, 2), 256),
        ("b1", (64, 128, 320, 512), (2, 2, 2, 2), 256),
        ("b2", (64, 128, 320, 512), (3, 4, 6, 3), 768),
        ("b3", (64, 128, 320, 512), (3, 4, 18, 3), 768),
        ("b4", (64, 128, 320, 512), (3, 8, 27, 3), 768),
        ("b5", (64, 128, 320, 512), (3, 6, 40, 3), 768),
    ],
)
def test_mit_sizes_are_the_public_configs(name, dims, depths, decoder_dim):
    """NVlabs ``mit_b*`` backbones / ``decoder_params.embed_dim`` (SegFormer paper Table 6)."""
    size = MIT_SIZES[name]
    assert size.embed_dims == dims
    assert size.depths == depths
    assert size.num_heads == (1, 2, 5, 8)
    assert size.sr_ratios == (8, 4, 2, 1)
    assert size.decoder_dim == decoder_dim
    assert size.mlp_ratio == 4


@pytest.mark.parametrize("name", ["b0", "b1", "b2", "b3", "b4", "b5"])
def test_registered_mit_factories_build_their_size(monkeypatch, name):
    """Each ``mit_b*`` registry entry asks for its own size (recorded, not built: B5 is 85 M)."""
    asked: list[str] = []
    monkeypatch.setattr(mit_module, "SegFormer", lambda size: asked.append(size) or size)
    assert f"mit_{name}" in BACKBONES
    assert build_backbone(f"mit_{name}") == name
    assert getattr(mit_module, f"mit_{name}")() == name
    assert asked == [name, name]


def test_mit_b4_parameter_counts_match_the_segformer_paper():
    """SegFormer paper, Table 1 (ADE20K, 150 classes): MiT-B4 encoder 60.8 M parameters,
    SegFormer-B4 64.1 M (the abstract's "64M parameters")."""
    torch.manual_seed(0)
    model = build_backbone("mit_b4")
    assert [len(getattr(model.encoder, f"block{i}")) for i in range(1, 5)] == [3, 8, 27, 3]
    encoder = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert round(encoder / 1e6, 1) == 60.8
    classifier_150 = 768 * 150 + 150
    assert round((total + classifier_150) / 1e6, 1) == 64.1


# ---------------------------------------------------------------- layout detection


@pytest.mark.parametrize(
    ("keys", "layout"),
    [
        (["segformer.encoder.patch_embeddings.0.proj.weight", "classifier.weight"], "hf"),
        (["encoder.block.0.0.attention.self.query.weight"], "hf"),
        (["layer_norm.3.bias"], "hf"),
        (["module.segformer.encoder.block.3.1.mlp.dense2.bias"], "hf"),
        (["backbone.patch_embed1.proj.weight", "decode_head.linear_pred.weight"], "mmseg"),
        (["backbone.block4.2.attn.kv.weight"], "mmseg"),
        (["patch_embed1.proj.weight", "block1.0.attn.kv.weight", "norm1.weight"], "native"),
        (["head.weight", "norm4.bias"], "native"),
        (["backbone.encoder.patch_embed1.proj.weight"], "native"),  # a segmenter, not mmseg
        (["conv1.weight", "layer1.0.bn1.running_mean"], "native"),
    ],
)
def test_mit_key_layout(keys, layout):
    assert mit_key_layout(keys) == layout


# ---------------------------------------------------------------- the HF layout


def test_hf_names_are_those_of_transformers():
    """Spot checks of the test's own inverse mapping against names read from
    ``modeling_segformer.py``, so the round trip below cannot pass with both sides wrong."""
    hf = _to_hf(_segformer_b0(0).encoder.state_dict(), prefix="encoder.")
    shapes = {
        "encoder.patch_embeddings.0.proj.weight": (32, 3, 7, 7),
        "encoder.patch_embeddings.3.layer_norm.bias": (256,),
        "encoder.block.0.0.layer_norm_1.weight": (32,),
        "encoder.block.0.1.attention.self.query.weight": (32, 32),
        "encoder.block.0.1.attention.self.key.weight": (32, 32),
        "encoder.block.0.1.attention.self.value.bias": (32,),
        "encoder.block.0.0.attention.self.sr.weight": (32, 32, 8, 8),
        "encoder.block.1.1.attention.self.layer_norm.weight": (64,),
        "encoder.block.2.1.attention.output.dense.bias": (160,),
        "encoder.block.1.0.layer_norm_2.weight": (64,),
        "encoder.block.1.0.mlp.dense1.weight": (256, 64),
        "encoder.block.3.1.mlp.dwconv.dwconv.weight": (1024, 1, 3, 3),
        "encoder.block.3.1.mlp.dense2.weight": (256, 1024),
        "encoder.layer_norm.3.weight": (256,),
    }
    for key, shape in shapes.items():
        assert tuple(hf[key].shape) == shape, key
    kv = sum(1 for k in hf if ".attention.self.key." in k)
    assert kv == 2 * 8  # weight + bias in each of the 8 blocks
    assert len(hf) == len(_segformer_b0(0).encoder.state_dict()) + kv
    assert "encoder.block.3.0.attention.self.sr.weight" not in hf  # sr ratio 1 in stage 4


def test_hf_file_round_trips_bit_identically(tmp_path):
    source = _segformer_b0(seed=0)
    state = _to_hf(source.encoder.state_dict())
    state["classifier.weight"] = torch.randn(1000, 256)
    state["classifier.bias"] = torch.randn(1000)
    target = _segformer_b0(seed=1)
    first = "patch_embed1.proj.weight"
    assert not torch.equal(target.encoder.state_dict()[first], source.encoder.state_dict()[first])
    report = load_backbone_weights(target, _saved(tmp_path, state))
    assert report.layout == "hf"
    assert report.ignored == ("classifier.weight", "classifier.bias")
    assert len(report.loaded) == len(source.encoder.state_dict())
    assert all(k.startswith("encoder.") for k in report.loaded)
    assert "Hugging Face SegFormer layout" in report.summary()
    _assert_encoder_equal(target.encoder, source.encoder)
    images = torch.randn(2, 3, *IMAGE_HW)
    with torch.no_grad():
        expected, got = source.encoder(images), target.encoder(images)
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)


@pytest.mark.parametrize("prefix", ["encoder.", ""])
def test_hf_files_of_a_bare_model_or_encoder_load(tmp_path, prefix):
    """A ``SegformerModel`` file (``encoder.``) and a bare ``SegformerEncoder`` one (no prefix)."""
    source = _segformer_b0(seed=0)
    path = _saved(tmp_path, _to_hf(source.encoder.state_dict(), prefix=prefix))
    target = _segformer_b0(seed=1)
    report = load_backbone_weights(target.encoder, path)  # a bare MixTransformer
    assert report.layout == "hf" and report.ignored == ()
    assert report.loaded == tuple(source.encoder.state_dict())
    _assert_encoder_equal(target.encoder, source.encoder)


def test_semantic_segmentation_file_ignores_the_decode_head(tmp_path):
    source = _segformer_b0(seed=0)
    state = _to_hf(source.encoder.state_dict())
    head = {
        "decode_head.linear_c.0.proj.weight": torch.randn(256, 32),
        "decode_head.linear_fuse.weight": torch.randn(256, 1024, 1, 1),
        "decode_head.batch_norm.num_batches_tracked": torch.tensor(7),
        "decode_head.classifier.weight": torch.randn(19, 256, 1, 1),
    }
    target = _segformer_b0(seed=1)
    report = load_backbone_weights(target, _saved(tmp_path, state | head))
    assert report.ignored == tuple(head)
    _assert_encoder_equal(target.encoder, source.encoder)


def test_convert_hf_mit_fuses_key_rows_first_and_keeps_other_keys():
    c = 4
    state = {
        "segformer.encoder.block.1.0.attention.self.query.weight": torch.full((c, c), 3.0),
        "segformer.encoder.block.1.0.attention.self.value.weight": torch.ones(c, c),
        "segformer.encoder.block.1.0.attention.self.key.weight": torch.zeros(c, c),
        "segformer.encoder.block.1.0.attention.self.value.bias": torch.ones(c),
        "segformer.encoder.block.1.0.attention.self.key.bias": torch.zeros(c),
        "classifier.weight": torch.full((2, c), 5.0),
    }
    out = convert_hf_mit(state)
    assert set(out) == {
        "block2.0.attn.q.weight",
        "block2.0.attn.kv.weight",
        "block2.0.attn.kv.bias",
        "classifier.weight",
    }
    kv = out["block2.0.attn.kv.weight"]  # [2C, C]
    assert kv.shape == (2 * c, c)
    assert torch.equal(kv[:c], torch.zeros(c, c)) and torch.equal(kv[c:], torch.ones(c, c))
    assert torch.equal(out["block2.0.attn.kv.bias"], torch.cat([torch.zeros(c), torch.ones(c)]))
    assert out["classifier.weight"] is state["classifier.weight"]
    assert out["block2.0.attn.q.weight"] is state[next(iter(state))]


def test_hf_file_missing_a_value_is_named_and_nothing_is_loaded(tmp_path):
    state = _to_hf(_segformer_b0(seed=0).encoder.state_dict())
    del state["segformer.encoder.block.1.0.attention.self.value.weight"]
    target = _segformer_b0(seed=1)
    before = {k: v.clone() for k, v in target.encoder.state_dict().items()}
    with pytest.raises(
        WeightsError,
        match=r"Hugging Face SegFormer layout.*"
        r"\['segformer\.encoder\.block\.1\.0\.attention\.self\.value\.weight'\] \(1 key\)",
    ):
        load_backbone_weights(target, _saved(tmp_path, state))
    for key, value in target.encoder.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_convert_hf_mit_names_a_missing_key_next_to_its_query():
    state = {
        "encoder.block.0.0.attention.self.query.weight": torch.zeros(2, 2),
        "encoder.block.0.0.attention.self.value.weight": torch.zeros(2, 2),
    }
    with pytest.raises(
        WeightsError, match=r"\['encoder\.block\.0\.0\.attention\.self\.key\.weight'\] \(1 key\)"
    ):
        convert_hf_mit(state)


def test_hf_file_missing_a_plain_key_names_both_names(tmp_path):
    state = _to_hf(_segformer_b0(seed=0).encoder.state_dict())
    del state["segformer.encoder.block.2.1.mlp.dense1.weight"]
    with pytest.raises(
        WeightsError,
        match=r"read as the Hugging Face SegFormer layout.*missing keys .*"
        r"'block3\.1\.mlp\.fc1\.weight' \(file: 'segformer\.encoder\.block\.2\.1\.mlp\.dense1"
        r"\.weight'\)\] \(1 key\)",
    ):
        load_backbone_weights(_segformer_b0(seed=1), _saved(tmp_path, state))


def test_hf_shape_mismatch_names_the_file_key(tmp_path):
    state = _to_hf(_segformer_b0(seed=0).encoder.state_dict())
    state["segformer.encoder.patch_embeddings.1.proj.weight"] = torch.zeros(64, 32, 5, 5)
    with pytest.raises(
        WeightsError,
        match=r"patch_embed2\.proj\.weight \(file: 'segformer\.encoder\.patch_embeddings\.1\.proj"
        r"\.weight'\): module expects \(64, 32, 3, 3\), file has \(64, 32, 5, 5\)",
    ):
        load_backbone_weights(_segformer_b0(seed=1), _saved(tmp_path, state))


def test_hf_key_colliding_with_a_native_key_is_refused(tmp_path):
    native = _segformer_b0(seed=0).encoder.state_dict()
    state = _to_hf(native) | {"norm1.weight": native["norm1.weight"]}
    with pytest.raises(
        WeightsError,
        match=r"two file keys map to 'norm1\.weight': "
        r"'segformer\.encoder\.layer_norm\.0\.weight' and 'norm1\.weight'",
    ):
        load_backbone_weights(_segformer_b0(seed=1), _saved(tmp_path, state))


# ---------------------------------------------------------------- the mmseg layout


def test_mmseg_checkpoint_loads_its_backbone_and_ignores_the_heads(tmp_path):
    """An NVlabs / mmseg SegFormer training checkpoint: ``{"meta": …, "state_dict": …}`` with
    the encoder under ``backbone.`` and the decoder under ``decode_head.``."""
    source = _segformer_b0(seed=0)
    state = {f"backbone.{k}": v for k, v in source.encoder.state_dict().items()}
    heads = {
        "decode_head.linear_c4.proj.weight": torch.randn(256, 256),
        "decode_head.linear_fuse.conv.weight": torch.randn(256, 1024, 1, 1),
        "decode_head.linear_pred.weight": torch.randn(19, 256, 1, 1),
    }
    path = tmp_path / "segformer.b0.city.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": state | heads}, path)
    target = _segformer_b0(seed=1)
    report = load_backbone_weights(target, path)
    assert report.layout == "mmseg"
    assert report.ignored == tuple(heads)
    assert len(report.loaded) == len(state)
    _assert_encoder_equal(target.encoder, source.encoder)


def test_mmseg_missing_key_names_the_file_key(tmp_path):
    state = {f"backbone.{k}": v for k, v in _segformer_b0(seed=0).encoder.state_dict().items()}
    del state["backbone.block2.1.attn.kv.bias"]
    with pytest.raises(
        WeightsError,
        match=r"read as the NVlabs / mmseg .*'block2\.1\.attn\.kv\.bias' "
        r"\(file: 'backbone\.block2\.1\.attn\.kv\.bias'\)\] \(1 key\)",
    ):
        load_backbone_weights(_segformer_b0(seed=1), _saved(tmp_path, state))


def test_native_file_is_read_as_before(tmp_path):
    source = _segformer_b0(seed=0)
    target = _segformer_b0(seed=1)
    report = load_backbone_weights(target, _saved(tmp_path, source.encoder.state_dict()))
    assert report.layout == "native"
    assert "read as" not in report.summary()
    assert isinstance(target.encoder, MixTransformer)
    _assert_encoder_equal(target.encoder, source.encoder)


# ---------------------------------------------------------------- safetensors files


def test_hf_safetensors_file_loads_like_the_torch_file(tmp_path):
    """Hugging Face publishes MiT weights as ``model.safetensors``: read directly (tensors only
    by construction), converted from the HF layout, bit-identical to the source encoder."""
    from safetensors.torch import save_file

    source = _segformer_b0(seed=0)
    state = {k: v.contiguous() for k, v in _to_hf(source.encoder.state_dict()).items()}
    state["classifier.weight"] = torch.randn(1000, 256)
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    target = _segformer_b0(seed=1)
    report = load_backbone_weights(target, path)
    assert report.layout == "hf" and report.ignored == ("classifier.weight",)
    _assert_encoder_equal(target.encoder, source.encoder)


def test_broken_safetensors_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(WeightsError, match=r"could not read '.*model\.safetensors' as a safetensors file"):
        load_backbone_weights(_segformer_b0(seed=1), path)
