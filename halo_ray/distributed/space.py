"""Search spaces: a YAML file naming an experiment, fixed overrides and the parameters to vary.

A search space is validated completely when it is loaded, before any trial starts: a typo
or an out-of-range value found an hour into a cluster search wastes the hour. Every
parameter value a trial can receive is checked by building the experiment config it
would produce, so the config's own rules (budget in (0, 100], odd region sizes, radius
strategies need the hyperbolic head, …) apply to search spaces without being repeated.

Format (flat on purpose, one line per parameter)::

    name: quickstart                         # default: the file's stem
    experiment: ../experiments/synthetic.yaml  # relative to this file
    set: {round_steps: 50}                   # config overrides for every trial
    searcher: grid                           # grid | random | optuna
    num_samples: 1                           # random/optuna: per grid point; grid: repeats
    metric: miou                             # a numeric Parquet result column
    mode: max                                # max | min
    max_failures: 2                          # Tune FailureConfig(max_failures)
    max_concurrent_trials: 2                 # optional
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}   # optional, over rounds
    parameters:
      strategy: {grid: [halo, ripu]}
      curvature: {loguniform: [0.1, 2.0]}
      bins: {randint: [8, 129]}              # [low, high) like tune.randint
      region_size: {choice: [1, 3, 5]}
      lr: {uniform: [1.0e-3, 2.0e-2]}
    variants:                                # optional: a grid axis of whole sets of keys
      - {hfr: false}
      - {hfr: true, hfr_positivity: clamp}

``variants`` run every listed set of config keys with every grid point, for ablations
whose keys only make sense together (HFR's options without HFR are one model, not four);
Tune sees a ``variant`` grid axis holding the variant's index, the results hold its keys.

Searchers and grid axes: ``grid`` parameters are always grid axes (every value is run);
with ``searcher: grid`` a ``choice`` is a grid axis too, and no other kind is allowed.
With ``random`` and ``optuna``, ``num_samples`` trials are drawn per grid point. Optuna
cannot take grid axes (Ray's ``OptunaSearch`` rejects ``grid_search``), so an optuna
search runs one Optuna study per grid point: ``{**point, **space.optuna_space()}`` for
each ``point`` in :meth:`SearchSpace.grid_points`.

``ray.tune`` is imported only inside :meth:`SearchSpace.param_space` and
:meth:`SearchSpace.optuna_space`, so loading and validating a space stays cheap.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pyarrow as pa

from halo_ray.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    config_keys,
    read_experiment_values,
    read_yaml_mapping,
)
from halo_ray.results import RESULT_COLUMNS, RESULT_SCHEMA

SEARCHERS = ("grid", "random", "optuna")
PARAM_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha",)
TOP_LEVEL_KEYS = (
    "name",
    "experiment",
    "set",
    "searcher",
    "num_samples",
    "metric",
    "mode",
    "max_failures",
    "max_concurrent_trials",
    "scheduler",
    "parameters",
    "variants",
)
#: The Tune parameter that holds a trial's index into ``variants`` (not a config key).
VARIANT_KEY = "variant"
#: At most this many parameter combinations are built as configs when a space is loaded;
#: larger spaces are checked on a fixed pseudo-random sample of that size (plus every
#: single value), which keeps loading under a second or two.
MAX_CHECKED_COMBINATIONS = 1000

ParamKind = Literal["grid", "choice", "uniform", "loguniform", "randint"]
Searcher = Literal["grid", "random", "optuna"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SearchSpaceError(ConfigError):
    """A search space file that cannot be run; the message names the file, key and value."""


# ----------------------------------------------------------------------------------
# typed pieces


@dataclass(frozen=True)
class ParamSpec:
    """One varied config key: a list of values (``grid``, ``choice``) or a range.

    ``values`` hold the values already converted to the config key's type (``"1e-3"`` from
    YAML becomes ``0.001``); ``low``/``high`` are the range bounds, ``high`` exclusive for
    ``randint`` as in ``tune.randint``.
    """

    key: str
    kind: ParamKind
    values: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None

    def is_grid_axis(self, searcher: str) -> bool:
        """Whether every value is run: grid always, choice too under the grid searcher."""
        return self.kind == "grid" or (self.kind == "choice" and searcher == "grid")

    def to_tune(self, *, as_grid: bool) -> Any:
        """The ``ray.tune`` object for this parameter (``tune.grid_search`` if ``as_grid``)."""
        from ray import tune

        if as_grid:
            return tune.grid_search(list(self.values or ()))
        if self.kind == "choice":
            return tune.choice(list(self.values or ()))
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "randint":
            return tune.randint(self.low, self.high)
        raise SearchSpaceError(f"parameters.{self.key}: a grid parameter has no sampling domain")

    def to_dict(self) -> dict[str, Any]:
        """``{"grid": [...]}`` or ``{"uniform": [low, high]}``, as written in the YAML."""
        if self.values is not None:
            return {self.kind: list(self.values)}
        return {self.kind: [self.low, self.high]}


@dataclass(frozen=True)
class AshaSpec:
    """Asynchronous successive halving over rounds (``time_attr`` = the ``round`` column).

    A trial reports round 0 (before any selection) up to ``rounds``, so ``max_t`` for Ray's
    ``ASHAScheduler`` is the config's ``rounds`` and ``grace_period`` counts rounds.
    """

    grace_period: int = 1  # rounds every trial runs before it can be stopped
    reduction_factor: int = 2  # keep 1/reduction_factor of trials at each rung

    def to_dict(self) -> dict[str, Any]:
        return {"type": "asha", "grace_period": self.grace_period, "reduction_factor": self.reduction_factor}


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with :func:`load_search_space`.

    ``base`` is the experiment config with ``set:`` applied, kept as a value so that trial
    configs are built without reading files again (a trial on another node may not see them).
    """

    path: Path  # the search space file, as given
    name: str  # search name: runs/<name>/, the Parquet ``search`` column
    experiment: Path  # the experiment YAML it extends
    fixed: dict[str, Any]  # ``set:`` overrides applied to every trial, as written
    searcher: Searcher
    num_samples: int  # random/optuna: trials per grid point; grid: repeats of the grid
    metric: str  # result column the searcher/scheduler optimises
    mode: Literal["max", "min"]
    max_failures: int  # Tune FailureConfig(max_failures)
    max_concurrent_trials: int | None
    scheduler: AshaSpec | None
    parameters: tuple[ParamSpec, ...]  # in file order
    base: ExperimentConfig = field(repr=False)  # experiment + set, validated
    variants: tuple[dict[str, Any], ...] = ()  # sets of config keys, a grid axis (VARIANT_KEY) when given

    # -- configs -----------------------------------------------------------------
    def base_config(self) -> ExperimentConfig:
        """The experiment YAML with ``set:`` applied: what every trial starts from."""
        return self.base

    def trial_config(self, params: Mapping[str, Any]) -> ExperimentConfig:
        """Base config plus one trial's parameter values, validated.

        ``params`` must give exactly this space's parameter keys (a Tune trial's ``config``,
        or a grid point merged with Optuna's suggestion). Numpy scalars are accepted.
        Errors are :class:`SearchSpaceError` naming this search file.
        """
        keys = ([VARIANT_KEY] if self.variants else []) + [p.key for p in self.parameters]
        unknown = sorted(set(params) - set(keys))
        missing = [k for k in keys if k not in params]
        if unknown or missing:
            raise SearchSpaceError(
                f"{self.path}: trial parameters must be exactly {keys}, "
                f"but got unknown {unknown} and missing {missing}"
            )
        values = {k: _plain(v) for k, v in params.items()}
        variant = self.variant_values(values.pop(VARIANT_KEY, None))
        try:
            return build_config({**self.base.to_values(), **variant, **values}, origin=str(self.path))
        except ConfigError as err:
            raise SearchSpaceError(
                f"{self.path}: trial parameters {values} do not make a valid config: "
                f"{_strip_origin(err, self.path)}"
            ) from None

    def variant_values(self, index: int | None) -> dict[str, Any]:
        """The config keys of variant ``index`` (``{}`` for a space without variants)."""
        if not self.variants:
            if index is not None:
                raise SearchSpaceError(f"{self.path}: this search has no variants, but got {VARIANT_KEY}={index!r}")
            return {}
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.variants):
            raise SearchSpaceError(
                f"{self.path}: {VARIANT_KEY} must index variants (0..{len(self.variants) - 1}), but got {index!r}"
            )
        return dict(self.variants[index])

    # -- grid ----------------------------------------------------------------------
    def grid_axes(self) -> dict[str, list[Any]]:
        """Parameters whose every value is run, in file order, with their values; the
        ``variant`` index axis first when the space has variants."""
        axes = {VARIANT_KEY: list(range(len(self.variants)))} if self.variants else {}
        axes.update({p.key: list(p.values or ()) for p in self.parameters if p.is_grid_axis(self.searcher)})
        return axes

    def grid_points(self) -> list[dict[str, Any]]:
        """Cartesian product of the grid axes; the first axis varies slowest.

        A space without grid axes has one, empty, point. Tune expands ``param_space()`` into
        the same set of points in its own order, so match trials by config, not position.
        """
        axes = self.grid_axes()
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]

    def total_trials(self) -> int:
        """Trials the search makes: grid points × ``num_samples`` (for every searcher)."""
        return len(self.grid_points()) * self.num_samples

    # -- ray.tune ------------------------------------------------------------------
    def param_space(self) -> dict[str, Any]:
        """``Tuner(param_space=...)`` for Tune's default (grid/random) variant generator.

        Grid axes become ``tune.grid_search``, the other parameters ``tune.choice``,
        ``tune.uniform``, ``tune.loguniform`` or ``tune.randint``. Pair it with
        ``TuneConfig(num_samples=space.num_samples)``: Tune then runs each grid point
        ``num_samples`` times, matching :meth:`total_trials`. Not for ``OptunaSearch``
        (it rejects grid_search): use :meth:`optuna_space` per grid point.
        """
        from ray import tune

        space = {VARIANT_KEY: tune.grid_search(list(range(len(self.variants))))} if self.variants else {}
        space.update({p.key: p.to_tune(as_grid=p.is_grid_axis(self.searcher)) for p in self.parameters})
        return space

    def optuna_space(self) -> dict[str, Any]:
        """The non-grid parameters as ``ray.tune`` domains, for ``OptunaSearch`` (TPE).

        Expected use: one Tuner per grid point, ``param_space={**point, **optuna_space()}``
        with ``TuneConfig(search_alg=OptunaSearch(metric=..., mode=...), num_samples=
        space.num_samples)``. Tune merges the point's constants into every suggested config.
        """
        return {p.key: p.to_tune(as_grid=False) for p in self.parameters if not p.is_grid_axis(self.searcher)}

    # -- records -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (search HParams, experiment state, ``--resume`` checks)."""
        return {
            "path": str(self.path),
            "name": self.name,
            "experiment": str(self.experiment),
            "set": dict(self.fixed),
            "searcher": self.searcher,
            "num_samples": self.num_samples,
            "metric": self.metric,
            "mode": self.mode,
            "max_failures": self.max_failures,
            "max_concurrent_trials": self.max_concurrent_trials,
            "scheduler": self.scheduler.to_dict() if self.scheduler else None,
            "parameters": {p.key: p.to_dict() for p in self.parameters},
            "variants": [dict(v) for v in self.variants],
            "total_trials": self.total_trials(),
            "base_config": self.base.to_dict(),
        }


# ----------------------------------------------------------------------------------
# small helpers


def _plain(value: Any) -> Any:
    """Numpy scalars (``tune.randint`` / Optuna may hand them out) → Python scalars."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return value


def _strip_origin(err: Exception, path: Path) -> str:
    """A config error's message without the ``<origin>: `` prefix build_config adds."""
    msg = str(err)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _show(values: Mapping[str, Any]) -> str:
    """``{geometry: euclidean, strategy: halo}``: a combination as a reader would write it."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}"


def _number(raw: Any) -> float | None:
    """A finite real number from YAML (``"1e-4"`` strings included), else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def _integer(raw: Any) -> int | None:
    """An integer from YAML (``8``, ``"8"``, ``8.0``), else None."""
    value = _number(raw)
    if value is None or not value.is_integer():
        return None
    return int(value)


def _key_type(key: str) -> Any:
    """The config key's annotated type with ``None`` removed (``int | None`` → ``int``)."""
    hint = get_type_hints(ExperimentConfig)[key]
    inner = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is not Literal and len(inner) == 1 and len(get_args(hint)) == 2:
        return inner[0]
    return hint


# ----------------------------------------------------------------------------------
# parsing one part at a time


def _parse_name(data: Mapping[str, Any], path: Path) -> str:
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SearchSpaceError(
            f"{path}: name must be letters, digits, '_', '-' or '.' (it names runs/<name>/), but got name={name!r}"
        )
    return name


def _parse_experiment(data: Mapping[str, Any], path: Path) -> Path:
    raw = data.get("experiment")
    if not isinstance(raw, str) or not raw:
        raise SearchSpaceError(
            f"{path}: experiment must name the experiment YAML it extends (relative to this file), "
            f"but got experiment={raw!r}"
        )
    experiment = Path(os.path.normpath(path.parent / raw))
    if not experiment.is_file():
        raise SearchSpaceError(f"{path}: experiment file {raw!r} not found (looked for {experiment})")
    return experiment


def _parse_set(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    fixed = data.get("set") or {}
    if not isinstance(fixed, dict):
        raise SearchSpaceError(f"{path}: set must be a mapping of config keys, but got set={fixed!r}")
    unknown = sorted(set(fixed) - set(config_keys()))
    if unknown:
        raise SearchSpaceError(f"{path}: set: unknown config key(s) {unknown}; known keys are {sorted(config_keys())}")
    return dict(fixed)


def _parse_int(data: Mapping[str, Any], path: Path, key: str, default: Any, minimum: int) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SearchSpaceError(f"{path}: {key} must be an integer >= {minimum}, but got {key}={value!r}")
    return value


def _parse_choice(data: Mapping[str, Any], path: Path, key: str, default: str, allowed: Sequence[str]) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise SearchSpaceError(f"{path}: {key} must be one of {list(allowed)}, but got {key}={value!r}")
    return value


def _parse_metric(data: Mapping[str, Any], path: Path) -> str:
    metric = data.get("metric", "miou")
    if metric not in RESULT_COLUMNS:
        raise SearchSpaceError(
            f"{path}: metric must be a result column reported every round (e.g. miou, pixel_acc), "
            f"but got metric={metric!r}"
        )
    kind = RESULT_SCHEMA.field(metric).type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise SearchSpaceError(f"{path}: metric must be a numeric result column, but {metric!r} holds {kind}")
    return metric


def _parse_scheduler(data: Mapping[str, Any], path: Path, rounds: int) -> AshaSpec | None:
    raw = data.get("scheduler")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SearchSpaceError(
            f"{path}: scheduler must be a mapping like {{type: asha, grace_period: 1}}, but got scheduler={raw!r}"
        )
    unknown = sorted(set(raw) - {"type", "grace_period", "reduction_factor"})
    if unknown:
        raise SearchSpaceError(
            f"{path}: scheduler: unknown key(s) {unknown}; known keys are ['grace_period', 'reduction_factor', 'type']"
        )
    if raw.get("type") not in SCHEDULERS:
        raise SearchSpaceError(f"{path}: scheduler.type must be one of {list(SCHEDULERS)}, but got type={raw.get('type')!r}")
    grace = raw.get("grace_period", 1)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 1 <= grace <= rounds:
        raise SearchSpaceError(
            f"{path}: scheduler.grace_period must be an integer in [1, rounds={rounds}] "
            f"(ASHA counts rounds), but got grace_period={grace!r}"
        )
    factor = raw.get("reduction_factor", 2)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise SearchSpaceError(
            f"{path}: scheduler.reduction_factor must be an integer >= 2, but got reduction_factor={factor!r}"
        )
    return AshaSpec(grace_period=grace, reduction_factor=factor)


def _parse_param(key: str, raw: Any, path: Path) -> ParamSpec:
    """Shape checks of one parameter spec (values are checked against configs later)."""
    where = f"{path}: parameters.{key}"
    if key not in config_keys():
        raise SearchSpaceError(f"{where}: {key!r} is not a config key; known keys are {sorted(config_keys())}")
    if not isinstance(raw, dict):
        raise SearchSpaceError(
            f"{where}: expected a mapping with one of {list(PARAM_KINDS)} (e.g. {{grid: [...]}}), "
            f"but got {raw!r}; a value fixed for every trial belongs under set:"
        )
    unknown = sorted(k for k in raw if k not in PARAM_KINDS)
    if unknown:
        raise SearchSpaceError(f"{where}: unknown spec kind(s) {unknown}; expected one of {list(PARAM_KINDS)}")
    if len(raw) != 1:
        raise SearchSpaceError(f"{where}: give exactly one of {list(PARAM_KINDS)}, but got {sorted(raw)}")
    kind, body = next(iter(raw.items()))
    if kind in ("grid", "choice"):
        if not isinstance(body, list) or not body:
            raise SearchSpaceError(f"{where}: {kind} values must be a non-empty list, but got {body!r}")
        return ParamSpec(key, kind, values=tuple(body))
    if not isinstance(body, list) or len(body) != 2:
        raise SearchSpaceError(f"{where}: {kind} needs a list [low, high], but got {body!r}")
    hint = _key_type(key)
    if kind == "randint":
        if hint not in (int, float):
            raise SearchSpaceError(f"{where}: randint needs a numeric config key, but {key} takes {hint}")
        low, high = (_integer(b) for b in body)
        if low is None or high is None or not low < high:
            raise SearchSpaceError(
                f"{where}: randint bounds must be integers with low < high ([low, high) like tune.randint), "
                f"but got {body!r}"
            )
        return ParamSpec(key, kind, low=low, high=high)
    if hint is not float:
        advice = "; use randint" if hint is int else ""
        raise SearchSpaceError(f"{where}: {kind} samples real numbers, but {key} takes {getattr(hint, '__name__', hint)}{advice}")
    low, high = (_number(b) for b in body)
    if kind == "loguniform" and (low is None or high is None or not 0 < low < high):
        raise SearchSpaceError(f"{where}: loguniform bounds must satisfy 0 < low < high, but got {body!r}")
    if low is None or high is None or not low < high:
        raise SearchSpaceError(f"{where}: uniform bounds must be finite numbers with low < high, but got {body!r}")
    return ParamSpec(key, kind, low=low, high=high)


def _parse_variants(data: Mapping[str, Any], path: Path, taken: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """Shape checks of ``variants:``: distinct, non-empty mappings of config keys that ``set:``
    and ``parameters:`` leave alone (``taken``: key -> where it is)."""
    raw = data.get("variants")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise SearchSpaceError(
            f"{path}: variants must be a non-empty list of mappings of config keys "
            f"(e.g. [{{hfr: false}}, {{hfr: true, hfr_norm: l2}}]), but got variants={raw!r}"
        )
    seen: list[str] = []
    for i, variant in enumerate(raw):
        where = f"{path}: variants[{i}]"
        if not isinstance(variant, dict) or not variant:
            raise SearchSpaceError(f"{where}: expected a non-empty mapping of config keys, but got {variant!r}")
        unknown = sorted(set(variant) - set(config_keys()))
        if unknown:
            raise SearchSpaceError(f"{where}: unknown config key(s) {unknown}; known keys are {sorted(config_keys())}")
        clash = sorted(k for k in variant if k in taken)
        if clash:
            places = ", ".join(f"{k} in {taken[k]}" for k in clash)
            raise SearchSpaceError(f"{where}: {places} too; keep each key in one place")
        text = json.dumps(variant, sort_keys=True, default=str)
        if text in seen:
            raise SearchSpaceError(f"{where}: {text} repeats variants[{seen.index(text)}]; variants must be distinct")
        seen.append(text)
    return tuple(dict(v) for v in raw)


# ----------------------------------------------------------------------------------
# checking values by building configs


def _candidates(spec: ParamSpec) -> list[tuple[str, Any]]:
    """Values that stand for everything a parameter can take, each with a label for errors.

    Lists: every value. Ranges: both ends, since the config's numeric rules are intervals.
    randint also checks ``low + 1``: odd-only keys (region_size) fail on one of two
    neighbours, the only non-interval rule the config has.
    """
    if spec.values is not None:
        return [(f"{spec.kind} value", v) for v in spec.values]
    if spec.kind != "randint":
        return [(f"{spec.kind} low bound", spec.low), (f"{spec.kind} high bound", spec.high)]
    low, high = int(spec.low), int(spec.high)  # type: ignore[arg-type]
    out = [("randint low bound", low)]
    if low + 1 < high - 1:
        out.append(("randint value low+1", low + 1))
    if high - 1 > low:
        out.append(("randint largest value high-1", high - 1))
    return out


def _combinations(specs: Sequence[ParamSpec], cands: Mapping[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of candidate values, or a fixed sample if there are too many."""
    keys = [s.key for s in specs]
    lists = [cands[k] for k in keys]
    if math.prod(len(v) for v in lists) <= MAX_CHECKED_COMBINATIONS:
        for combo in itertools.product(*lists):
            yield dict(zip(keys, combo, strict=True))
        return
    rng = random.Random(0)
    for _ in range(MAX_CHECKED_COMBINATIONS):
        yield {k: rng.choice(v) for k, v in zip(keys, lists, strict=True)}


def _check_values(
    specs: tuple[ParamSpec, ...], base: Mapping[str, Any], path: Path
) -> tuple[ParamSpec, ...]:
    """Build configs for every candidate value; return specs with values in the key's type.

    A value is wrong on its own (error names the key and value) when no combination with
    the other parameters makes it valid; otherwise a failing combination is reported whole
    (e.g. ``{geometry: euclidean, strategy: halo}``).
    """

    def attempt(values: Mapping[str, Any]) -> ExperimentConfig | ConfigError:
        try:
            return build_config({**base, **values}, origin=str(path))
        except ConfigError as err:
            return err

    raw_cands = {s.key: [v for _, v in _candidates(s)] for s in specs}
    typed: dict[str, list[Any]] = {}
    for spec in specs:
        others = [s for s in specs if s.key != spec.key]
        typed[spec.key] = []
        for label, value in _candidates(spec):
            first = attempt({spec.key: value})
            cfg = first
            if isinstance(first, ConfigError):
                for combo in _combinations(others, raw_cands):
                    cfg = attempt({**combo, spec.key: value})
                    if not isinstance(cfg, ConfigError):
                        break
            if isinstance(cfg, ConfigError):
                raise SearchSpaceError(
                    f"{path}: parameters.{spec.key}: {label} {value!r} is not a valid config value: "
                    f"{_strip_origin(first, path)}"
                )
            converted = getattr(cfg, spec.key)
            typed[spec.key].append(list(converted) if isinstance(converted, tuple) else converted)

    checked = []
    for spec in specs:
        if spec.values is None:
            checked.append(spec)
            continue
        values = typed[spec.key]
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) != len(seen):
            dupes = sorted({s for s in seen if seen.count(s) > 1})
            raise SearchSpaceError(
                f"{path}: parameters.{spec.key}: {spec.kind} values must be distinct, "
                f"but {', '.join(dupes)} appears more than once in {list(spec.values)!r}"
            )
        checked.append(ParamSpec(spec.key, spec.kind, values=tuple(values)))

    cands = {s.key: [v for _, v in _candidates(s)] for s in checked}
    for combo in _combinations(checked, cands):
        result = attempt(combo)
        if isinstance(result, ConfigError):
            raise SearchSpaceError(
                f"{path}: parameters: the combination {_show(combo)} is not a valid config: "
                f"{_strip_origin(result, path)}"
            )
    return tuple(checked)


def _metric_unreported(metric: str, cfg: ExperimentConfig) -> str | None:
    """Why a run of ``cfg`` would leave ``metric`` empty (None when it reports it)."""
    if metric == "miou13" and cfg.source != "synthia":
        return f"miou13 (the 13-class mIoU*) is reported for source: synthia only, but a trial has source={cfg.source!r}"
    if (metric.startswith("radius_") or metric == "radius_acc_spearman") and cfg.geometry != "hyperbolic":
        return f"{metric} is reported for the hyperbolic head only, but a trial has geometry={cfg.geometry!r}"
    return None


def _check_metric_reported(
    metric: str, base: ExperimentConfig, specs: tuple[ParamSpec, ...], variants: tuple[dict[str, Any], ...],
    searcher: str, path: Path,
) -> None:
    """Refuse a metric that some trial would never report (the searcher would optimise nothing)."""
    axes = [s for s in specs if s.is_grid_axis(searcher)]
    points = [dict(zip([s.key for s in axes], combo, strict=True)) for combo in itertools.product(*(s.values or () for s in axes))]
    for variant in variants or ({},):
        for point in points[:MAX_CHECKED_COMBINATIONS]:
            cfg = build_config({**base.to_values(), **variant, **point}, origin=str(path))
            reason = _metric_unreported(metric, cfg)
            if reason:
                raise SearchSpaceError(f"{path}: metric: {reason}; choose a metric every trial reports, e.g. miou")


# ----------------------------------------------------------------------------------
# the loader


def load_search_space(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """Read and fully validate a search space YAML; errors are :class:`SearchSpaceError`.

    ``overrides`` (``halo-ray search --set key=value``) are applied on top of the file's
    ``set:`` — e.g. a cluster's shared ``data_root`` — and recorded with it.
    """
    path = Path(path)
    try:
        data = read_yaml_mapping(path)
    except ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SearchSpaceError(f"{path}: unknown key(s) {unknown}; known keys are {sorted(TOP_LEVEL_KEYS)}")

    name = _parse_name(data, path)
    experiment = _parse_experiment(data, path)
    fixed = {**_parse_set(data, path), **dict(overrides or {})}
    searcher = _parse_choice(data, path, "searcher", "grid", SEARCHERS)
    num_samples = _parse_int(data, path, "num_samples", 1, minimum=1)
    metric = _parse_metric(data, path)
    mode = _parse_choice(data, path, "mode", "max", ("max", "min"))
    max_failures = _parse_int(data, path, "max_failures", 2, minimum=0)
    max_concurrent = _parse_int(data, path, "max_concurrent_trials", None, minimum=1)

    try:
        base_values = {**read_experiment_values(experiment), **fixed}
    except ConfigError as err:
        raise SearchSpaceError(f"{path}: experiment {data['experiment']!r}: {err}") from None
    try:
        base = build_config(base_values, origin=str(path))
    except ConfigError as err:
        raise SearchSpaceError(
            f"{path}: experiment {data['experiment']!r} with set: does not make a valid config: "
            f"{_strip_origin(err, path)}"
        ) from None

    raw_params = data.get("parameters") or {}
    if not isinstance(raw_params, dict):
        raise SearchSpaceError(f"{path}: parameters must be a mapping of config keys to specs, but got {raw_params!r}")
    specs = tuple(_parse_param(str(k), v, path) for k, v in raw_params.items())
    both = sorted(set(raw_params) & set(fixed))
    if both:
        raise SearchSpaceError(f"{path}: {both} appear in both set: and parameters:; keep each key in one place")
    for spec in specs:
        if searcher == "grid" and not spec.is_grid_axis(searcher):
            raise SearchSpaceError(
                f"{path}: parameters.{spec.key}: searcher 'grid' takes only grid or choice parameters, "
                f"but {spec.key} is {spec.kind}; use searcher random or optuna"
            )
    if searcher == "optuna" and all(s.is_grid_axis(searcher) for s in specs):
        raise SearchSpaceError(
            f"{path}: searcher 'optuna' needs at least one choice, uniform, loguniform or randint "
            f"parameter to optimise, but all parameters are grid axes; use searcher grid"
        )
    taken = {**{k: "set:" for k in fixed}, **{k: "parameters:" for k in raw_params}}
    variants = _parse_variants(data, path, taken)
    for i, variant in enumerate(variants):  # every variant alone, then with every parameter value
        try:
            build_config({**base.to_values(), **variant}, origin=str(path))
        except ConfigError as err:
            raise SearchSpaceError(
                f"{path}: variants[{i}] {variant} does not make a valid config: {_strip_origin(err, path)}"
            ) from None
        try:
            _check_values(specs, {**base.to_values(), **variant}, path)
        except SearchSpaceError as err:
            raise SearchSpaceError(f"{path}: variants[{i}] {variant}: {_strip_origin(err, path)}") from None
    specs = _check_values(specs, {**base.to_values(), **(variants[0] if variants else {})}, path)

    if not specs and not variants:
        raise SearchSpaceError(
            f"{path}: the search varies nothing (no parameters: and no variants:); add one, "
            "e.g. parameters: {seed: {grid: [0, 1, 2]}}, or run the experiment with `halo-ray run`"
        )
    _check_metric_reported(metric, base, specs, variants, searcher, path)

    rounds_spec = next((s for s in specs if s.key == "rounds"), None)
    min_rounds = min(int(v) for _, v in _candidates(rounds_spec)) if rounds_spec else base.rounds
    scheduler = _parse_scheduler(data, path, min_rounds)

    return SearchSpace(
        path=path,
        name=name,
        experiment=experiment,
        fixed=fixed,
        searcher=searcher,  # type: ignore[arg-type]
        num_samples=num_samples,
        metric=metric,
        mode=mode,  # type: ignore[arg-type]
        max_failures=max_failures,
        max_concurrent_trials=max_concurrent,
        scheduler=scheduler,
        parameters=specs,
        base=base,
        variants=variants,
    )


__all__ = [
    "MAX_CHECKED_COMBINATIONS",
    "PARAM_KINDS",
    "SEARCHERS",
    "VARIANT_KEY",
    "AshaSpec",
    "ParamSpec",
    "SearchSpace",
    "SearchSpaceError",
    "load_search_space",
]
