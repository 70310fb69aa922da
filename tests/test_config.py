"""Config validation: every bad value is refused with a message naming key and value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_ray.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    load_config,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_experiment_loads_with_documented_values():
    cfg = load_config(ROOT / "experiments" / "synthetic.yaml")
    assert (cfg.strategy, cfg.budget, cfg.rounds, cfg.region_size, cfg.suppression_size) == ("halo", 5.0, 5, 3, 11)
    assert cfg.weight_decay == pytest.approx(1e-4)  # written 1.0e-4 so PyYAML reads a float
    assert (cfg.optimizer, cfg.lr) == ("adamw", pytest.approx(3e-3))


def test_overrides_are_typed_and_applied(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("strategy: halo\nbudget: 5\n")
    cfg = load_config(path, ["budget=2.2", "hfr=false", "strategy=ripu", "geometry=euclidean", "lr=1e-3"])
    assert cfg.budget == 2.2 and cfg.hfr is False and cfg.strategy == "ripu"
    assert cfg.lr == pytest.approx(1e-3)  # "1e-3" is a string to YAML; converted explicitly
    assert cfg.suppression_size == 5  # RIPU default: 2·region_size − 1


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("region_size", 4, "region_size must be an odd integer >= 1, but got region_size=4"),
        ("region_size", -3, "region_size=-3"),
        ("bins", 1, "bins must be an integer >= 2, but got bins=1"),
        ("budget", 0, "budget is a percentage in (0, 100], but got budget=0"),
        ("budget", 100.1, "budget=100.1"),
        ("budget", -1, "budget=-1"),
        ("curvature", 0, "curvature must be > 0"),
        ("curvature", -1.0, "curvature=-1.0"),
        ("suppression", 10, "suppression=10"),
        ("strategy", "bald", "strategy must be one of"),
        ("unit", "superpixel", "unit must be one of ['region', 'pixel', 'multiclass']"),
        ("rounds", -1, "rounds=-1"),
    ],
)
def test_impossible_values_are_refused_naming_key_and_value(key, value, expected):
    with pytest.raises(ConfigError) as err:
        build_config({key: value}, origin="exp.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("exp.yaml:")


@pytest.mark.parametrize("budget", [100, 100.0, 0.001])
def test_budget_bounds_accepted(budget):
    assert build_config({"budget": budget}).budget == pytest.approx(budget)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("rounds", "five", "rounds must be an integer, but got rounds='five'"),
        ("rounds", 2.5, "rounds must be an integer"),
        ("hfr", "maybe", "hfr must be true or false"),
        ("budget", "lots", "budget must be a number"),
        ("rounds", True, "rounds must be an integer"),
    ],
)
def test_wrong_types_are_refused(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        build_config({key: value})


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['budjet'\]"):
        build_config({"budjet": 5})


def test_hyperbolic_strategy_needs_hyperbolic_geometry():
    with pytest.raises(ConfigError, match="needs geometry='hyperbolic'"):
        build_config({"strategy": "halo", "geometry": "euclidean"})


def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_overrides(["budget"])


def test_source_key_ignores_acquisition_settings():
    a = ExperimentConfig(strategy="halo")
    assert a.source_key() == a.replace(strategy="ripu", budget=1.0).source_key()
    assert a.source_key() != a.replace(source_steps=10).source_key()
    assert a.source_key() != a.replace(seed=1).source_key()


def test_run_id_hashes_only_keys_away_from_their_defaults():
    """Writing a default explicitly, or a later halo_ray adding a key with a default, keeps a
    run's id (so older run directories resume); any changed key changes it."""
    import hashlib
    import json

    assert build_config({"budget": 5.0, "loop": "continuous"}).run_id() == build_config({}).run_id()
    assert build_config({}).run_id() == hashlib.sha256(b"{}").hexdigest()[:10]
    assert build_config({"budget": 2.0}).run_id() == hashlib.sha256(json.dumps({"budget": 2.0}).encode()).hexdigest()[:10]
    assert build_config({"budget": 2.0, "device": "cpu"}).run_id() == build_config({"budget": 2.0}).run_id()


# ------------------------------------------------------------------------------------------
# reference: true — the released arithmetic everywhere, each difference switchable on its own
# ------------------------------------------------------------------------------------------
def test_reference_selects_every_released_value_and_explicit_keys_win():
    from halo_ray.config import REFERENCE_DEFAULTS

    ours, released = build_config({}), build_config({"reference": True})
    for key, (our_value, released_value) in REFERENCE_DEFAULTS.items():
        assert getattr(ours, key) == our_value, key
        assert getattr(released, key) == released_value, key
    assert (released.hfr_norm, released.hfr_positivity, released.head_dtype, released.mlr) == (
        "l2", "clamp", "float64", "released"
    )
    assert released.align_corners is True
    mixed = build_config({"reference": True, "hfr_positivity": "softplus", "head_dtype": "float32"})
    assert (mixed.hfr_positivity, mixed.head_dtype, mixed.hfr_norm, mixed.mlr) == ("softplus", "float32", "l2", "released")
    alone = build_config({"hfr_positivity": "clamp"})  # one released difference, our defaults otherwise
    assert (alone.hfr_positivity, alone.hfr_norm, alone.head_dtype, alone.reference) == ("clamp", "rms", "float32", False)
    # resolved values are what a checkpoint stores, and reading them back gives the same config
    assert build_config(released.to_dict()) == released
    # explicit defaults keep a run's id; a released value changes it
    assert build_config({"hfr_norm": "rms", "align_corners": False}).run_id() == ours.run_id()
    assert alone.run_id() != ours.run_id()


def test_the_papers_protocol_files_run_the_released_arithmetic():
    for name in ("gtav_to_cityscapes", "synthia_to_cityscapes", "cityscapes_to_acdc", "gtav_to_cityscapes_ripu"):
        cfg = load_config(ROOT / "experiments" / f"{name}.yaml")
        assert cfg.reference and cfg.align_corners and cfg.head_dtype == "float64", name
        assert (cfg.hfr_positivity, cfg.hfr_norm, cfg.mlr) == ("clamp", "l2", "released"), name
    assert load_config(ROOT / "experiments" / "gtav_to_cityscapes_ripu.yaml").local_consistency == pytest.approx(0.1)
    assert load_config(ROOT / "experiments" / "gtav_to_cityscapes.yaml").local_consistency == 0.0


def test_source_key_tracks_the_head_and_upsampling_keys():
    base = build_config({})
    for change in ({"hfr_positivity": "clamp"}, {"head_dtype": "float64"}, {"mlr": "released"},
                   {"align_corners": True}, {"local_consistency": 0.1}, {"hfr_norm": "l2"}):
        assert build_config(change).source_key() != base.source_key(), change
    assert build_config({"local_consistency": 0}).source_key() == base.source_key()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"hfr_positivity": "relu"}, "hfr_positivity must be one of ['softplus', 'clamp'], but got hfr_positivity='relu'"),
        ({"head_dtype": "float16"}, "head_dtype must be one of ['float32', 'float64'], but got head_dtype='float16'"),
        ({"mlr": "plain"}, "mlr must be one of ['ball', 'released'], but got mlr='plain'"),
        ({"align_corners": "sometimes"}, "align_corners must be true or false"),
        ({"local_consistency": -0.1}, "local_consistency is the weight of RIPU's local-consistency loss, a finite number >= 0"),
        ({"local_consistency": float("inf")}, "but got local_consistency=inf"),
        ({"local_consistency": True}, "local_consistency is now the weight of RIPU's local-consistency loss (a number: RIPU 0.1, 0 = off)"),
        ({"local_consistency": False}, "not a switch, but got local_consistency=False"),
        ({"amp": True, "head_dtype": "float64"}, "amp=true (bfloat16 autocast) cannot run with head_dtype='float64'"),
        ({"amp": True, "reference": True}, "head_dtype='float64' (implied by reference: true; set head_dtype: float32 to keep amp)"),
    ],
)
def test_head_and_loss_keys_refuse_values_outside_their_sets(values, expected):
    with pytest.raises(ConfigError) as err:
        build_config(values, origin="exp.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("exp.yaml:")


def test_an_old_local_consistency_switch_fails_through_the_cli_with_exit_2(tmp_path, capsys):
    from halo_ray.cli import main

    old = tmp_path / "old.yaml"
    old.write_text("local_consistency: true\n")
    out = tmp_path / "run"
    assert main(["run", str(old), "--out", str(out)]) == 2
    assert "local_consistency is now the weight" in capsys.readouterr().err
    for bad, message in (
        ("hfr_positivity=relu", "hfr_positivity must be one of ['softplus', 'clamp']"),
        ("head_dtype=half", "head_dtype must be one of ['float32', 'float64']"),
        ("local_consistency=-1", "local_consistency is the weight of RIPU's local-consistency loss"),
        ("mlr=plain", "mlr must be one of ['ball', 'released']"),
    ):
        assert main(["run", str(ROOT / "experiments" / "synthetic.yaml"), "--out", str(out), "--set", bad]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    assert build_config({"amp": True, "reference": True, "head_dtype": "float32"}).amp  # the way out works


def test_keys_left_null_keep_following_reference_through_replace_and_searches(tmp_path):
    from halo_ray.distributed.space import load_search_space

    ours = build_config({})
    assert ours.replace(reference=True).head_dtype == "float64"
    assert ours.replace(reference=True, head_dtype="float32").head_dtype == "float32"
    pinned = build_config({"hfr_norm": "rms"})  # set explicitly: stays
    assert pinned.replace(reference=True).hfr_norm == "rms" and pinned.replace(reference=True).mlr == "released"
    assert ours.to_values()["hfr_norm"] is None and pinned.to_values()["hfr_norm"] == "rms"
    assert ours.to_dict()["hfr_norm"] == "rms"  # records hold what the run computes with
    (tmp_path / "e.yaml").write_text("geometry: hyperbolic\n")
    (tmp_path / "s.yaml").write_text(
        "experiment: e.yaml\nparameters:\n  reference: {grid: [false, true]}\n  seed: {grid: [0]}\n"
    )
    space = load_search_space(tmp_path / "s.yaml")
    released = space.trial_config({"reference": True, "seed": 0})
    assert (released.hfr_positivity, released.head_dtype, released.align_corners) == ("clamp", "float64", True)
    assert space.trial_config({"reference": False, "seed": 0}).hfr_positivity == "softplus"


# ------------------------------------------------------------------------------------------
# every key classified where it is declared; the hashes and records derive from that
# ------------------------------------------------------------------------------------------
def test_every_config_key_is_classified_and_the_derived_sets_match_their_users():
    from halo_ray.config import KEY_GROUPS, RUNTIME_KEYS, config_keys, key_info, keys_where
    from halo_ray.results import RESULT_COLUMNS
    from halo_ray.run import HPARAM_KEYS

    for name in config_keys():
        info = key_info(name)
        assert info.group in KEY_GROUPS and info.doc.strip(), name
        assert info.source in (None, "always", "if_set", "schedule", "special"), name
        assert not (info.runtime and (info.source or info.validation or info.column)), name  # how, not what
    assert set(keys_where(column=True)) == set(RESULT_COLUMNS) & set(config_keys())
    assert set(HPARAM_KEYS) == set(keys_where(hparam=True)) and RUNTIME_KEYS == set(keys_where(runtime=True))
    # a key that shapes the source model changes the source cache's key; one that does not, does not
    base = build_config({})
    for name in config_keys():
        changed = _another_valid_value(base, name)
        if changed is None:
            continue
        moves = changed.source_key() != base.source_key()
        assert moves == (key_info(name).source is not None), name


def _another_valid_value(cfg: ExperimentConfig, name: str) -> ExperimentConfig | None:
    """``cfg`` with ``name`` changed to some other valid value (None when no simple one exists)."""
    value = getattr(cfg, name)
    strings = {
        "experiment": "other", "data_root": "elsewhere", "source": "cityscapes", "target": "acdc",
        "backbone": "mit_b0", "geometry": "euclidean", "strategy": "entropy", "unit": "pixel", "loop": "adapt",
        "optimizer": "adamw", "device": "cpu", "source_cache": "other", "hfr_norm": "l2", "hfr_positivity": "clamp",
        "head_dtype": "float64", "mlr": "released", "target_sampling": "all", "source_select": "best",
        "source_root": "/somewhere", "target_root": "/somewhere",
    }
    others = {
        "source_size": (64, 32), "target_size": (64, 32), "void_label_ids": (255,), "target_conditions": ("fog",),
        "poly_horizon": 5, "num_threads": 5, "suppression": 13, "select_steps": None, "pretrained": None,
    }
    if name in strings:
        options = [strings[name]]
    elif name in others:
        options = [others[name]]
    elif isinstance(value, bool):
        options = [not value]
    elif isinstance(value, int):
        options = [value + 2, value + 1]
    elif isinstance(value, float):
        options = [value * 0.5 + 0.25]
    else:
        options = []
    for option in options:
        if option == value:
            continue
        try:
            return cfg.replace(**{name: option})
        except ConfigError:
            continue
    return None


def test_config_show_prints_an_experiment_file_with_each_value_s_origin(tmp_path, capsys):
    from halo_ray.cli import main

    base = ROOT / "experiments" / "gtav_to_cityscapes.yaml"
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"extends: {base}\nexperiment: mine\nrounds: 0\nselect_steps: null\n")
    assert main(["config", "show", str(variant), "--set", "budget=2.2"]) == 0
    text = capsys.readouterr().out
    origin = {line.split(":", 1)[0]: line.split("# ", 1)[1] for line in text.splitlines() if not line.startswith("#")}
    assert origin["experiment"] == str(variant) and origin["budget"] == "--set budget=2.2"
    assert origin["backbone"] == f"{base} (extends: of {variant})"
    assert origin["head_dtype"] == "reference: true" and origin["data_seed"] == "default"
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert load_config(shown) == load_config(variant, ["budget=2.2"])  # it is an experiment file itself
    assert main(["config", "show", str(tmp_path / "missing.yaml")]) == 2


def test_the_json_schema_accepts_every_shipped_experiment_file_and_refuses_typos(tmp_path):
    import jsonschema

    from halo_ray.cli import main
    from halo_ray.config import config_json_schema, read_yaml_mapping

    schema = config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        assert not list(validator.iter_errors(read_yaml_mapping(path))), path.name
    assert list(validator.iter_errors({"budjet": 5}))  # unknown key
    assert list(validator.iter_errors({"hfr_positivity": "relu"}))
    assert list(validator.iter_errors({"rounds": "five"}))
    assert main(["config", "schema", "--out", str(tmp_path / "schema.json")]) == 0
    assert json.loads((tmp_path / "schema.json").read_text()) == schema
