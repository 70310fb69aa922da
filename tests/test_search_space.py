"""Search space loading: every validation rule, the shipped spaces, and the ray.tune mapping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from halo_ray.config import ConfigError
from halo_ray.distributed import AshaSpec, ParamSpec, SearchSpaceError, load_search_space

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "experiments" / "synthetic.yaml"
SPACES = ROOT / "search_spaces"


def write_space(tmp_path: Path, body: str, name: str = "space.yaml") -> Path:
    """A search space file extending the shipped synthetic experiment."""
    path = tmp_path / name
    path.write_text(f"experiment: {SYNTHETIC}\n" + body)
    return path


def load_error(tmp_path: Path, body: str) -> str:
    """The SearchSpaceError message of a space that must fail; it always names the file."""
    path = write_space(tmp_path, body)
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


GRID = "parameters:\n  strategy: {grid: [halo, ripu]}\n"


# ----------------------------------------------------------------------------------
# validation: structure


def test_error_is_a_config_error():
    assert issubclass(SearchSpaceError, ConfigError)


def test_unknown_top_level_key_is_named(tmp_path):
    msg = load_error(tmp_path, "searchr: grid\n" + GRID)
    assert "unknown key(s) ['searchr']" in msg


def test_parameter_that_is_not_a_config_key(tmp_path):
    msg = load_error(tmp_path, "parameters:\n  curvatur: {grid: [1.0]}\n")
    assert "parameters.curvatur: 'curvatur' is not a config key" in msg


def test_set_key_that_is_not_a_config_key(tmp_path):
    msg = load_error(tmp_path, "set: {round_step: 5}\n" + GRID)
    assert "set: unknown config key(s) ['round_step']" in msg


def test_invalid_set_value_names_key_and_value(tmp_path):
    msg = load_error(tmp_path, "set: {budget: 150}\n" + GRID)
    assert "with set:" in msg and "budget=150" in msg


def test_parameter_also_in_set(tmp_path):
    msg = load_error(tmp_path, "set: {strategy: halo}\n" + GRID)
    assert "['strategy'] appear in both set: and parameters:" in msg


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("{normal: [0, 1]}", "parameters.curvature: unknown spec kind(s) ['normal']"),
        ("{grid: [1.0], uniform: [0.5, 1.0]}", "parameters.curvature: give exactly one of"),
        ("1.0", "parameters.curvature: expected a mapping"),
        ("{grid: []}", "parameters.curvature: grid values must be a non-empty list, but got []"),
        ("{choice: 1.0}", "parameters.curvature: choice values must be a non-empty list, but got 1.0"),
        ("{uniform: [0.5]}", "parameters.curvature: uniform needs a list [low, high], but got [0.5]"),
    ],
)
def test_bad_spec_shapes(tmp_path, spec, expected):
    msg = load_error(tmp_path, f"searcher: random\nparameters:\n  curvature: {spec}\n")
    assert expected in msg


def test_missing_experiment_file_is_named(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("experiment: ../nope/missing.yaml\n" + GRID)
    with pytest.raises(SearchSpaceError, match=r"experiment file '\.\./nope/missing\.yaml' not found"):
        load_search_space(path)


def test_experiment_is_relative_to_the_space_file(tmp_path):
    (tmp_path / "exps").mkdir()
    (tmp_path / "exps" / "e.yaml").write_text(SYNTHETIC.read_text())
    (tmp_path / "spaces").mkdir()
    path = tmp_path / "spaces" / "s.yaml"
    path.write_text("experiment: ../exps/e.yaml\n" + GRID)
    space = load_search_space(path)
    assert space.experiment == tmp_path / "exps" / "e.yaml"
    assert space.name == "s"  # default: the file's stem


def test_bad_name(tmp_path):
    msg = load_error(tmp_path, "name: my search/1\n" + GRID)
    assert "name must be letters" in msg and "'my search/1'" in msg


# ----------------------------------------------------------------------------------
# validation: values, checked by building configs


def test_grid_value_out_of_range_names_key_and_value(tmp_path):
    msg = load_error(tmp_path, "parameters:\n  budget: {grid: [5.0, 150]}\n")
    assert "parameters.budget: grid value 150 is not a valid config value" in msg
    assert "budget=150" in msg


def test_even_region_size_is_rejected(tmp_path):
    msg = load_error(tmp_path, "parameters:\n  region_size: {grid: [4]}\n")
    assert "parameters.region_size: grid value 4" in msg and "odd" in msg


def test_choice_value_with_wrong_type(tmp_path):
    msg = load_error(tmp_path, "searcher: random\nparameters:\n  bins: {choice: [8, many]}\n")
    assert "parameters.bins: choice value 'many'" in msg and "integer" in msg


def test_duplicate_grid_values(tmp_path):
    msg = load_error(tmp_path, "parameters:\n  budget: {grid: [1, 1.0, 2.0]}\n")
    assert "parameters.budget: grid values must be distinct, but 1.0 appears more than once" in msg


def test_value_valid_only_with_another_parameter_is_accepted(tmp_path):
    # geometry=euclidean is invalid with the base strategy (halo) but fine with entropy
    path = write_space(
        tmp_path, "parameters:\n  geometry: {grid: [euclidean, hyperbolic]}\n  strategy: {grid: [entropy, ripu]}\n"
    )
    assert load_search_space(path).total_trials() == 4


def test_value_invalid_with_every_combination_names_it(tmp_path):
    msg = load_error(tmp_path, "parameters:\n  geometry: {grid: [euclidean]}\n")
    assert "parameters.geometry: grid value 'euclidean' is not a valid config value" in msg
    assert "needs geometry='hyperbolic'" in msg


def test_invalid_combination_is_reported_whole(tmp_path):
    msg = load_error(
        tmp_path, "parameters:\n  geometry: {grid: [euclidean, hyperbolic]}\n  strategy: {grid: [entropy, halo]}\n"
    )
    assert "parameters: the combination {geometry: euclidean, strategy: halo} is not a valid config" in msg


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("lr: {uniform: [0.02, 0.01]}", "parameters.lr: uniform bounds must be finite numbers with low < high, but got [0.02, 0.01]"),
        ("lr: {uniform: [0.01, .inf]}", "parameters.lr: uniform bounds must be finite numbers with low < high"),
        ("curvature: {loguniform: [0, 2]}", "parameters.curvature: loguniform bounds must satisfy 0 < low < high, but got [0, 2]"),
        ("curvature: {loguniform: [2.0, 0.5]}", "loguniform bounds must satisfy 0 < low < high, but got [2.0, 0.5]"),
        ("bins: {randint: [8.5, 64]}", "parameters.bins: randint bounds must be integers with low < high"),
        ("bins: {randint: [8, 8]}", "randint bounds must be integers with low < high ([low, high) like tune.randint), but got [8, 8]"),
        ("bins: {uniform: [8, 64]}", "parameters.bins: uniform samples real numbers, but bins takes int; use randint"),
        ("strategy: {randint: [0, 3]}", "parameters.strategy: randint needs a numeric config key"),
    ],
)
def test_bad_bounds(tmp_path, spec, expected):
    msg = load_error(tmp_path, f"searcher: random\nparameters:\n  {spec}\n")
    assert expected in msg


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("curvature: {uniform: [-1, 2]}", "parameters.curvature: uniform low bound -1.0 is not a valid config value"),
        ("budget: {uniform: [1, 150]}", "parameters.budget: uniform high bound 150.0 is not a valid config value"),
        ("bins: {randint: [1, 10]}", "parameters.bins: randint low bound 1 is not a valid config value"),
        ("budget: {randint: [1, 102]}", "parameters.budget: randint largest value high-1 101 is not a valid config value"),
        ("region_size: {randint: [1, 6]}", "parameters.region_size: randint value low+1 2 is not a valid config value"),
    ],
)
def test_bounds_must_be_valid_config_values(tmp_path, spec, expected):
    msg = load_error(tmp_path, f"searcher: random\nparameters:\n  {spec}\n")
    assert expected in msg


def test_randint_high_is_exclusive(tmp_path):
    # budget 100 is valid and 101 is not: [1, 101) must load, [1, 102) must not (above)
    path = write_space(tmp_path, "searcher: random\nparameters:\n  budget: {randint: [1, 101]}\n")
    assert load_search_space(path).parameters[0] == ParamSpec("budget", "randint", low=1, high=101)


def test_numeric_strings_in_bounds_and_values_are_converted(tmp_path):
    # PyYAML reads 1e-4 (no dot) as the string "1e-4"
    path = write_space(
        tmp_path,
        "searcher: random\nparameters:\n  lr: {loguniform: [1e-4, 1e-2]}\n  weight_decay: {grid: [1e-4, 5e-4]}\n",
    )
    lr, wd = load_search_space(path).parameters
    assert (lr.low, lr.high) == (1e-4, 1e-2) and isinstance(lr.low, float)
    assert wd.values == (1e-4, 5e-4) and all(isinstance(v, float) for v in wd.values)


def test_grid_searcher_rejects_sampled_parameters(tmp_path):
    msg = load_error(tmp_path, "searcher: grid\nparameters:\n  curvature: {loguniform: [0.1, 2.0]}\n")
    assert "parameters.curvature: searcher 'grid' takes only grid or choice parameters, but curvature is loguniform" in msg


def test_grid_searcher_treats_choice_as_a_grid_axis(tmp_path):
    path = write_space(tmp_path, "parameters:\n  region_size: {choice: [1, 3, 5]}\n  seed: {grid: [0, 1]}\n")
    space = load_search_space(path)
    assert space.grid_axes() == {"region_size": [1, 3, 5], "seed": [0, 1]}
    assert space.total_trials() == 6
    assert space.optuna_space() == {}


def test_optuna_needs_a_parameter_to_optimise(tmp_path):
    msg = load_error(tmp_path, "searcher: optuna\n" + GRID)
    assert "searcher 'optuna' needs at least one choice, uniform, loguniform or randint parameter" in msg


@pytest.mark.parametrize(
    "line, expected",
    [
        ("searcher: bayes", "searcher must be one of ['grid', 'random', 'optuna'], but got searcher='bayes'"),
        ("num_samples: 0", "num_samples must be an integer >= 1, but got num_samples=0"),
        ("num_samples: true", "num_samples must be an integer >= 1, but got num_samples=True"),
        ("metric: accuracy", "metric must be a result column reported every round (e.g. miou, pixel_acc), but got metric='accuracy'"),
        ("metric: strategy", "metric must be a numeric result column, but 'strategy' holds string"),
        ("mode: maximize", "mode must be one of ['max', 'min'], but got mode='maximize'"),
        ("max_failures: -1", "max_failures must be an integer >= 0, but got max_failures=-1"),
        ("max_concurrent_trials: 0", "max_concurrent_trials must be an integer >= 1, but got max_concurrent_trials=0"),
    ],
)
def test_top_level_values(tmp_path, line, expected):
    assert expected in load_error(tmp_path, line + "\n" + GRID)


@pytest.mark.parametrize(
    "scheduler, expected",
    [
        ("{type: hyperband}", "scheduler.type must be one of ['asha'], but got type='hyperband'"),
        ("{type: asha, grace_period: 0}", "scheduler.grace_period must be an integer in [1, rounds=5] (ASHA counts rounds), but got grace_period=0"),
        ("{type: asha, grace_period: 6}", "but got grace_period=6"),
        ("{type: asha, reduction_factor: 1}", "scheduler.reduction_factor must be an integer >= 2, but got reduction_factor=1"),
        ("{type: asha, patience: 3}", "scheduler: unknown key(s) ['patience']"),
        ("asha", "scheduler must be a mapping"),
    ],
)
def test_scheduler_validation(tmp_path, scheduler, expected):
    assert expected in load_error(tmp_path, f"scheduler: {scheduler}\n" + GRID)


def test_grace_period_is_bounded_by_the_rounds_after_set(tmp_path):
    msg = load_error(tmp_path, "set: {rounds: 3}\nscheduler: {type: asha, grace_period: 4}\n" + GRID)
    assert "[1, rounds=3]" in msg
    path = write_space(tmp_path, "set: {rounds: 3}\nscheduler: {type: asha, grace_period: 3}\n" + GRID)
    assert load_search_space(path).scheduler == AshaSpec(grace_period=3, reduction_factor=2)


def test_grace_period_is_bounded_by_the_smallest_rounds_parameter(tmp_path):
    msg = load_error(tmp_path, "scheduler: {type: asha, grace_period: 3}\nparameters:\n  rounds: {grid: [2, 5]}\n")
    assert "[1, rounds=2]" in msg


# ----------------------------------------------------------------------------------
# shipped search spaces

SHIPPED = {
    "quickstart": 4,
    "quickstart_seeds": 20,
    "strategies": 45,
    "geometry": 20,
    "ablation_hfr": 15,
    "ablation_reference": 21,
    "ablation_scoring": 18,
    "euclidean_vs_hyperbolic": 12,
    "annotation_units": 12,
}


def test_every_shipped_space_is_listed():
    assert sorted(p.stem for p in SPACES.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name, trials", sorted(SHIPPED.items()))
def test_shipped_space_loads_with_expected_trials(name, trials):
    path = SPACES / f"{name}.yaml"
    space = load_search_space(path)
    assert space.name == name
    assert space.experiment == SYNTHETIC
    assert space.total_trials() == trials
    header = path.read_text().split("\n\n")[0]
    assert re.search(rf"\b{trials} trials\b", header), "the header comment states the trial count"
    json.dumps(space.to_dict())  # JSON-serialisable for HParams / experiment state
    for point in space.grid_points()[:3]:
        samples = {p.key: p.values[0] if p.values else p.low for p in space.parameters if p.key not in point}
        assert space.trial_config({**point, **samples}).experiment == "synthetic"


def test_quickstart_settings():
    space = load_search_space(SPACES / "quickstart.yaml")
    base = space.base_config()
    # two trials side by side on one core each fill a 2-core machine; each shows a selection
    assert base.num_threads * space.max_concurrent_trials == 2 and base.log_images >= 1
    assert space.grid_axes() == {"strategy": ["halo", "ripu", "entropy", "random"]}
    # the 5-seed version runs exactly the quickstart's trials, seed by seed
    seeds = load_search_space(SPACES / "quickstart_seeds.yaml")
    assert seeds.base_config().replace(log_images=base.log_images) == base
    assert {p["strategy"] for p in seeds.grid_points()} == set(space.grid_axes()["strategy"])
    # all trials share one source pre-training: the strategy is not part of its key
    assert len({space.trial_config(p).source_key() for p in space.grid_points()}) == 1


def test_geometry_space_is_optuna_with_asha():
    space = load_search_space(SPACES / "geometry.yaml")
    assert space.searcher == "optuna" and space.num_samples == 20
    assert space.scheduler == AshaSpec(grace_period=2, reduction_factor=2)
    assert space.base_config().strategy == "halo"
    assert space.grid_points() == [{}]
    assert set(space.optuna_space()) == {"curvature", "bins", "region_size"}


def test_euclidean_vs_hyperbolic_uses_strategies_both_heads_support():
    space = load_search_space(SPACES / "euclidean_vs_hyperbolic.yaml")
    configs = [space.trial_config(p) for p in space.grid_points()]
    assert {(c.geometry, c.strategy) for c in configs} == {
        (g, s) for g in ("euclidean", "hyperbolic") for s in ("entropy", "ripu")
    }


# ----------------------------------------------------------------------------------
# grid points, trial configs, records


def test_grid_points_order_first_axis_slowest(tmp_path):
    path = write_space(tmp_path, "parameters:\n  strategy: {grid: [halo, ripu]}\n  seed: {grid: [0, 1, 2]}\n")
    points = load_search_space(path).grid_points()
    assert points == [
        {"strategy": "halo", "seed": 0},
        {"strategy": "halo", "seed": 1},
        {"strategy": "halo", "seed": 2},
        {"strategy": "ripu", "seed": 0},
        {"strategy": "ripu", "seed": 1},
        {"strategy": "ripu", "seed": 2},
    ]


def test_total_trials_per_searcher(tmp_path):
    grid = write_space(tmp_path, "num_samples: 2\nparameters:\n  seed: {grid: [0, 1, 2]}\n  budget: {choice: [1.0, 5.0]}\n", "g.yaml")
    assert load_search_space(grid).total_trials() == 3 * 2 * 2  # grid repeated twice
    rnd = write_space(
        tmp_path, "searcher: random\nnum_samples: 4\nparameters:\n  seed: {grid: [0, 1, 2]}\n  budget: {choice: [1.0, 5.0]}\n", "r.yaml"
    )
    space = load_search_space(rnd)
    assert space.grid_axes() == {"seed": [0, 1, 2]}  # choice is sampled, not a grid axis
    assert space.total_trials() == 3 * 4


def test_trial_config_applies_set_and_params(tmp_path):
    path = write_space(tmp_path, "set: {round_steps: 7, suppression: null}\n" + GRID + "  seed: {grid: [0, 2]}\n")
    space = load_search_space(path)
    assert space.base_config().round_steps == 7 and space.base_config().suppression is None
    cfg = space.trial_config({"strategy": "ripu", "seed": np.int64(2)})
    assert (cfg.strategy, cfg.seed, cfg.round_steps, cfg.suppression) == ("ripu", 2, 7, None)
    assert cfg.source_steps == 600  # untouched keys come from the experiment file
    assert cfg.suppression_size == 5  # RIPU's own window once suppression is null


def test_trial_config_errors_name_the_search_file(tmp_path):
    path = write_space(tmp_path, GRID + "  budget: {grid: [1.0, 5.0]}\n")
    space = load_search_space(path)
    with pytest.raises(SearchSpaceError, match=re.escape(f"{path}: trial parameters")) as info:
        space.trial_config({"strategy": "halo", "budget": 150.0})
    assert "budget=150.0" in str(info.value)
    with pytest.raises(SearchSpaceError, match=r"unknown \['lr'\] and missing \['budget'\]"):
        space.trial_config({"strategy": "halo", "lr": 0.1})


def test_to_dict_round_trips_through_json(tmp_path):
    path = write_space(tmp_path, "name: t1\nsearcher: random\nscheduler: {type: asha}\nparameters:\n  lr: {uniform: [1.0e-3, 2.0e-2]}\n  hfr: {choice: [true, false]}\n")
    record = json.loads(json.dumps(load_search_space(path).to_dict()))
    assert record["parameters"] == {"lr": {"uniform": [1e-3, 2e-2]}, "hfr": {"choice": [True, False]}}
    assert record["scheduler"] == {"type": "asha", "grace_period": 1, "reduction_factor": 2}
    assert (record["name"], record["searcher"], record["max_failures"], record["total_trials"]) == ("t1", "random", 2, 1)
    assert record["base_config"]["strategy"] == "halo"


# ----------------------------------------------------------------------------------
# ray.tune mapping (domain objects only: no Ray cluster)


def test_param_space_for_grid_searcher():
    space = load_search_space(SPACES / "strategies.yaml")
    assert space.param_space() == {
        "strategy": {"grid_search": ["halo", "halo_radius", "ripu", "entropy", "random"]},
        "budget": {"grid_search": [1.0, 2.2, 5.0]},
        "seed": {"grid_search": [0, 1, 2]},
    }


def test_param_space_domains_for_random_searcher(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    path = write_space(
        tmp_path,
        "searcher: random\nparameters:\n  seed: {grid: [0, 1]}\n  region_size: {choice: [1, 3]}\n"
        "  lr: {uniform: [1.0e-3, 2.0e-2]}\n  curvature: {loguniform: [0.1, 2.0]}\n  bins: {randint: [8, 129]}\n",
    )
    space = load_search_space(path).param_space()
    assert space["seed"] == {"grid_search": [0, 1]}
    assert isinstance(space["region_size"], Categorical) and space["region_size"].categories == [1, 3]
    assert isinstance(space["lr"], Float) and isinstance(space["lr"].get_sampler(), Float._Uniform)
    assert (space["lr"].lower, space["lr"].upper) == (1e-3, 2e-2)
    assert isinstance(space["curvature"].get_sampler(), Float._LogUniform)
    assert isinstance(space["bins"], Integer) and (space["bins"].lower, space["bins"].upper) == (8, 129)
    draws = [space["bins"].sample() for _ in range(200)]
    assert min(draws) >= 8 and max(draws) <= 128


def test_optuna_space_per_grid_point_works_with_optuna_search(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    path = write_space(
        tmp_path,
        "searcher: optuna\nnum_samples: 3\nparameters:\n  seed: {grid: [0, 1]}\n"
        "  curvature: {loguniform: [0.1, 2.0]}\n  bins: {randint: [8, 129]}\n  region_size: {choice: [1, 3, 5]}\n",
    )
    space = load_search_space(path)
    assert space.total_trials() == 6
    point = space.grid_points()[1]
    searcher = OptunaSearch(metric=space.metric, mode=space.mode, seed=0)
    assert searcher.set_search_properties(space.metric, space.mode, {**point, **space.optuna_space()})
    suggestion = searcher.suggest("trial_1")
    assert set(suggestion) == {"curvature", "bins", "region_size"}
    cfg = space.trial_config({**point, **suggestion})
    assert cfg.seed == 1 and 0.1 <= cfg.curvature <= 2.0 and 8 <= cfg.bins <= 128


def test_a_space_over_a_variant_file_resolves_its_extends(tmp_path):
    """An experiment file that extends another (relative to itself) gives the space its
    inherited values, overridden by its own."""
    (tmp_path / "exps").mkdir()
    (tmp_path / "exps" / "base.yaml").write_text(SYNTHETIC.read_text())
    (tmp_path / "exps" / "variant.yaml").write_text("extends: base.yaml\nbudget: 2.5\nrounds: 3\n")
    path = tmp_path / "s.yaml"
    path.write_text("experiment: exps/variant.yaml\n" + GRID)
    base = load_search_space(path).base_config()
    assert (base.budget, base.rounds) == (2.5, 3)
    assert base.embed_dim == load_search_space(write_space(tmp_path, GRID, "plain.yaml")).base_config().embed_dim


# ----------------------------------------------------------------------------------
# variants: whole sets of keys as one grid axis


VARIANTS = "variants:\n  - {hfr: false}\n  - {hfr: true, hfr_positivity: clamp, hfr_norm: l2}\n"


def test_variants_are_a_grid_axis_of_whole_key_sets(tmp_path):
    space = load_search_space(write_space(tmp_path, VARIANTS + "parameters:\n  seed: {grid: [0, 1, 2]}\n"))
    assert space.total_trials() == 6
    assert space.grid_axes() == {"variant": [0, 1], "seed": [0, 1, 2]}
    assert space.param_space() == {"variant": {"grid_search": [0, 1]}, "seed": {"grid_search": [0, 1, 2]}}
    off = space.trial_config({"variant": 0, "seed": 1})
    released = space.trial_config({"variant": np.int64(1), "seed": 2})
    assert (off.hfr, off.hfr_positivity, off.seed) == (False, "softplus", 1)
    assert (released.hfr, released.hfr_positivity, released.hfr_norm, released.seed) == (True, "clamp", "l2", 2)
    assert json.loads(json.dumps(space.to_dict()))["variants"] == [
        {"hfr": False}, {"hfr": True, "hfr_positivity": "clamp", "hfr_norm": "l2"}
    ]
    with pytest.raises(SearchSpaceError, match=r"variant must index variants \(0\.\.1\), but got 2"):
        space.trial_config({"variant": 2, "seed": 0})
    with pytest.raises(SearchSpaceError, match=r"missing \['variant'\]"):
        space.trial_config({"seed": 0})


def test_the_shipped_hfr_ablation_runs_each_hfr_model_once_per_seed():
    space = load_search_space(SPACES / "ablation_hfr.yaml")
    models = {
        (cfg.hfr, cfg.hfr_positivity if cfg.hfr else None, cfg.hfr_norm if cfg.hfr else None)
        for cfg in (space.trial_config(p) for p in space.grid_points())
    }
    assert len(models) == 5 and space.total_trials() == 15
    assert (True, "clamp", "l2") in models and (False, None, None) in models


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("variants: {hfr: false}\n", "variants must be a non-empty list of mappings of config keys"),
        ("variants: []\n", "variants must be a non-empty list"),
        ("variants:\n  - hfr\n", "variants[0]: expected a non-empty mapping of config keys, but got 'hfr'"),
        ("variants:\n  - {}\n", "variants[0]: expected a non-empty mapping"),
        ("variants:\n  - {hfr: false}\n  - {hfr_norms: l2}\n", "variants[1]: unknown config key(s) ['hfr_norms']"),
        ("variants:\n  - {hfr: false}\n  - {hfr: false}\n", 'variants[1]: {"hfr": false} repeats variants[0]'),
        ("set: {hfr: true}\nvariants:\n  - {hfr: false}\n", "variants[0]: hfr in set: too; keep each key in one place"),
        ("variants:\n  - {seed: 1}\nparameters:\n  seed: {grid: [0]}\n", "seed in parameters: too"),
        ("variants:\n  - {hfr: false}\n  - {hfr_positivity: relu}\n",
         "variants[1] {'hfr_positivity': 'relu'} does not make a valid config: hfr_positivity must be one of"),
        ("variants:\n  - {hfr: false}\n  - {head_dtype: float64}\nparameters:\n  amp: {grid: [false, true]}\n",
         "variants[1] {'head_dtype': 'float64'}: parameters.amp: grid value True is not a valid config value"),
    ],
)
def test_bad_variants_are_named(tmp_path, body, expected):
    assert expected in load_error(tmp_path, body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("set: {seed: 1}\n", "the search varies nothing (no parameters: and no variants:)"),
        ("metric: miou13\n" + GRID, "metric: miou13 (the 13-class mIoU*) is reported for source: synthia only, but a trial has source='gtav'"),
        ("metric: radius_mean\nparameters:\n  strategy: {grid: [ripu]}\n  geometry: {grid: [hyperbolic, euclidean]}\n",
         "radius_mean is reported for the hyperbolic head only, but a trial has geometry='euclidean'"),
    ],
)
def test_searches_that_vary_nothing_or_optimise_an_unreported_metric_are_refused(tmp_path, body, expected):
    assert expected in load_error(tmp_path, body)
