"""A whole run with a paper model (DeepLab-v2 on ResNet-101) on CPU, through the CLI.

It exercises together what the paper settings need: ImageNet-style encoder weights from a
local file, frozen BatchNorm, a 10× learning rate outside the encoder, gradient accumulation
and a network input smaller than the native label size (selection and evaluation at native
resolution).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from halo_ray.acquisition import picks_per_round
from halo_ray.cli import main
from halo_ray.run import latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A ResNet-101 state dict in torchvision's ImageNet layout (random values, classifier included)."""
    from halo_ray.models import resnet101

    torch.manual_seed(5)
    state = resnet101().state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path_factory.mktemp("weights") / "resnet101-imagenet.pth"
    torch.save(state, path)
    return path, state


def test_deeplabv2_r101_run_end_to_end_on_cpu(tiny_config_values, tmp_path, resnet_weights):
    path, imagenet = resnet_weights
    experiment = tmp_path / "gtav_to_cityscapes_tiny.yaml"
    values = {**tiny_config_values, "rounds": 2, "source_steps": 2, "round_steps": 1, "batch_size": 2,
              "log_images": 1, "eval_batch_size": 2}
    experiment.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    sets = {"backbone": "deeplabv2_r101", "pretrained": str(path), "freeze_bn": "true", "head_lr_mult": "10.0",
            "grad_accum": "2", "hfr": "false", "lr": "2.5e-4", "target_size": "[96, 48]", "strategy": "halo"}
    args = ["run", str(experiment), "--out", str(out), "--no-tensorboard"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0

    frame = pd.read_parquet(out / "results").sort_values("round")
    assert list(frame["round"]) == [0, 1, 2] and (frame["backbone"] == "deeplabv2_r101").all()
    state = load_checkpoint(latest_checkpoint(out))
    model = state["learner"]["trainer"]["model"]
    # frozen BatchNorm: the encoder's statistics are still the weights file's after training
    for key in ("bn1.running_mean", "layer3.7.bn2.running_var"):
        assert torch.equal(model[f"backbone.encoder.{key}"], imagenet[key]), key
    # the encoder trained at lr, the rest at 10 × lr
    groups = state["learner"]["trainer"]["optimizer"]["param_groups"]
    assert sorted(g["lr_mult"] for g in groups) == [1.0, 10.0]
    # picks and budget at the native 64×128 label size, not the 96×48 network input
    picks = picks_per_round(64, 128, budget_pct=values["budget"], rounds=2, region_size=3)
    assert frame["labelled_pixels"].iloc[-1] + frame["void_pixels"].iloc[-1] <= 8 * 2 * picks * 9
    assert frame["labelled_pixels"].iloc[-1] > 0.5 * 8 * 2 * picks * 9


@pytest.mark.parametrize(
    "name", ["gtav_to_cityscapes", "synthia_to_cityscapes", "cityscapes_to_acdc", "gtav_to_cityscapes_source_free"]
)
def test_paper_experiment_files_load(name):
    from halo_ray.config import load_config

    cfg = load_config(ROOT / "experiments" / f"{name}.yaml")
    assert cfg.experiment == name and cfg.backbone == "deeplabv3p_r101_sep" and cfg.loop == "adapt"
    assert (cfg.lr, cfg.head_lr_mult, cfg.poly_power, cfg.warmup_steps) == (1.0e-3, 10.0, 0.5, 600)
    assert cfg.source_steps == cfg.rounds * cfg.round_steps == 15000 and cfg.budget == 5.0
    assert cfg.round_lengths() == [3750, 3750, 2500, 2500, 2500]  # HALO's SELECT_ITER on 4 GPUs
    assert cfg.target_size == (1280, 640) and cfg.freeze_bn and cfg.negative_learning and cfg.eval_flip
    # HALO validates every 500 steps, keeps the best checkpoint and adapts from the best source model
    assert (cfg.eval_every, cfg.keep_best, cfg.source_select) == (500, True, "best")
    assert cfg.source_weight == (0.0 if name.endswith("source_free") else 1.0)
    if name.endswith("source_free"):  # shares the source-only model with the main protocol
        main_cfg = load_config(ROOT / "experiments" / "gtav_to_cityscapes.yaml")
        assert cfg.source_key() == main_cfg.source_key()


def test_gtav_to_cityscapes_experiment_runs_on_a_tiny_fabricated_dataset(tiny_benchmark, tmp_path, resnet_weights):
    """The paper experiment file itself, pointed at a tiny GTAV + Cityscapes tree, with only
    the sizes and lengths scaled down: completes on CPU with one row per round."""
    path, _ = resnet_weights
    out = tmp_path / "run"
    sets = {
        "source_root": tiny_benchmark / "gtav", "target_root": tiny_benchmark / "cityscapes",
        "pretrained": path, "source_cache": tmp_path / "cache", "source_size": "[96, 48]", "target_size": "[96, 48]",
        "source_steps": 2, "round_steps": 1, "rounds": 2, "select_steps": "[0, 1]", "batch_size": 2, "grad_accum": 2,
        "warmup_steps": 1,
        "num_threads": 1, "log_every": 1, "log_images": 1,
    }
    args = ["run", str(ROOT / "experiments" / "gtav_to_cityscapes.yaml"), "--out", str(out), "--no-tensorboard"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    frame = pd.read_parquet(out / "results").sort_values("round")
    assert list(frame["round"]) == [0, 1, 2]
    assert (frame["experiment"] == "gtav_to_cityscapes").all() and (frame["strategy"] == "halo_radius").all()
    assert frame["labelled_pct"].iloc[-1] > 0


def test_variant_files_extend_the_main_protocol():
    """Source-only, fully supervised and RIPU variants: each extends gtav_to_cityscapes.yaml
    and changes only what its protocol changes."""
    from halo_ray.config import load_config, read_experiment_values
    from halo_ray.training import scheduled_lr

    main_cfg = load_config(ROOT / "experiments" / "gtav_to_cityscapes.yaml")
    source_only = load_config(ROOT / "experiments" / "gtav_source_only.yaml")
    assert source_only.rounds == 0 and source_only.round_lengths() == []
    assert source_only.source_key() == main_cfg.source_key()  # the very model the main file adapts

    full = load_config(ROOT / "experiments" / "cityscapes_fully_supervised.yaml")
    assert (full.source, full.target, full.rounds) == ("cityscapes", "cityscapes", 0)
    assert full.source_root == full.target_root and full.batch_size // full.grad_accum == 2

    ripu = load_config(ROOT / "experiments" / "gtav_to_cityscapes_ripu.yaml")
    assert (ripu.backbone, ripu.geometry, ripu.strategy, ripu.budget) == ("deeplabv2_r101", "euclidean", "ripu", 2.2)
    assert ripu.suppression_size == 5 and ripu.loop == "continuous" and ripu.source_select == "last"
    # selections at global steps 10k..18k, the run stops at 40k of a 62.5k poly horizon
    starts = [ripu.source_steps + s for s in ripu.select_steps]
    assert starts == [10000, 12000, 14000, 16000, 18000] and ripu.total_steps == 40000
    assert scheduled_lr(ripu, 39999, ripu.total_steps) == pytest.approx(2.5e-4 * (1 - 39999 / 62500) ** 0.9)
    assert scheduled_lr(ripu, 39999, ripu.total_steps) > 0.39 * 2.5e-4  # ≈ 0.40× base at the stop
    raw = read_experiment_values(ROOT / "experiments" / "gtav_to_cityscapes_ripu.yaml")
    assert "extends" not in raw and raw["pretrained"] is None  # inherited from the base file


def test_extends_errors_name_the_files(tmp_path):
    from halo_ray.config import ConfigError, load_config

    (tmp_path / "a.yaml").write_text("extends: b.yaml\nrounds: 2\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"extends makes a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: extends: base experiment file .*nope\.yaml does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: 3\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: extends must name a base experiment file, but got 3"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: f.yaml\npoly_horizon: 0\n")
    (tmp_path / "f.yaml").write_text("rounds: 1\n")
    with pytest.raises(ConfigError, match=r"e\.yaml: poly_horizon must be an integer >= 1 or null"):
        load_config(tmp_path / "e.yaml")


def test_segformer_acdc_file_is_halos_adamw_recipe():
    from halo_ray.config import load_config

    cfg = load_config(ROOT / "experiments" / "cityscapes_to_acdc_segformer.yaml")
    base = load_config(ROOT / "experiments" / "cityscapes_to_acdc.yaml")
    assert (cfg.backbone, cfg.optimizer, cfg.lr, cfg.head_lr_mult, cfg.weight_decay) == ("mit_b4", "adamw", 6e-5, 10.0, 0.01)
    assert (cfg.warmup_steps, cfg.poly_power, cfg.hfr, cfg.embed_dim) == (1000, 0.5, False, 768)
    assert cfg.rounds * cfg.round_steps == 7500 and cfg.select_steps == (0, 1875, 3750, 5000, 6250)
    assert cfg.target_conditions == base.target_conditions == ("fog", "night", "rain", "snow")
    assert cfg.source_key() != base.source_key()  # its own source model


def test_cityscapes_multiclass_protocol_runs_on_a_tiny_fabricated_dataset(tiny_benchmark, tmp_path):
    """The released multi-class protocol file itself (deep-stem ResNet-50 DeepLab-v3+, cosine
    head on its 256-d features, the "undefined" output, round_model best, stage 2) on a tiny
    Cityscapes tree with an ImageNet-layout weights file, only sizes and lengths scaled down."""
    from halo_ray.config import load_config
    from halo_ray.models import resnet50_deepstem

    cfg = load_config(ROOT / "experiments" / "cityscapes_multiclass.yaml")
    assert (cfg.backbone, cfg.geometry, cfg.embed_dim, cfg.undefined_output) == ("deeplabv3p_r50_deepstem", "cosine", None, True)
    assert (cfg.loop, cfg.source_steps, cfg.round_model, cfg.reference, cfg.align_corners) == ("retrain", 0, "best", True, False)
    torch.manual_seed(7)
    weights = tmp_path / "resnet50_deepstem.pth"
    torch.save({"model": resnet50_deepstem().state_dict()}, weights)
    out = tmp_path / "run"
    sets = {
        "source_root": tiny_benchmark / "cityscapes", "target_root": tiny_benchmark / "cityscapes",
        "pretrained": weights, "source_cache": tmp_path / "cache", "superpixel_cache": tmp_path / "spx",
        "target_size": "[96, 48]", "clicks_per_round": 20, "round_steps": 2, "eval_every": 1, "stage2_steps": 1,
        "rounds": 2, "batch_size": 2, "num_threads": 1, "log_every": 1, "log_images": 0,
    }
    args = ["run", str(ROOT / "experiments" / "cityscapes_multiclass.yaml"), "--out", str(out), "--no-tensorboard"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    frame = pd.read_parquet(out / "results").sort_values("round")
    assert list(frame["round"]) == [0, 1, 2] and (frame["unit"] == "multiclass").all()
    assert frame["clicks"].iloc[1] > 20  # reference: the released overshoot (and a random first round)
    assert frame["miou_stage2"].iloc[1:].notna().all()
    model = load_checkpoint(latest_checkpoint(out))["learner"]["trainer"]["model"]
    assert model["head.weight"].shape == (20, 256)  # 19 classes + "undefined", on the 256-d features
    assert "backbone.encoder.conv1.6.weight" in model and "head.reduce.weight" not in model
