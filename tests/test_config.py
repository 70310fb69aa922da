"""Config validation: every bad value is refused with a message naming key and value."""

from __future__ import annotations

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
    assert cfg.weight_decay == pytest.approx(5e-4)  # written 5.0e-4 so PyYAML reads a float


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
        ("unit", "superpixel", "unit must be one of ['region', 'pixel']"),
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
