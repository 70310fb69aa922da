"""``halo-ray`` command line: thin wrappers over the library.

Exit codes: 0 success, 2 bad input (config, dataset, arguments), 1 a run that failed (or a
``data check`` that found errors in the dataset).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from halo_ray.distributed.actors import TrialResources

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _quiet_warnings() -> None:
    """geoopt emits torch.jit deprecation warnings on import; they are not the user's concern."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*")


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from halo_ray.config import ConfigError
    from halo_ray.data import DatasetError
    from halo_ray.data.labels import LabelError
    from halo_ray.models import WeightsError
    from halo_ray.results import AnalysisError

    return (ConfigError, DatasetError, LabelError, AnalysisError, WeightsError, UsageError)


def cmd_run(args: argparse.Namespace) -> int:
    from halo_ray.config import load_config
    from halo_ray.run import run_experiment
    from halo_ray.rundir import check_not_under_a_file
    from halo_ray.training import resolve_device

    cfg = load_config(args.experiment, args.set)
    resolve_device(cfg.device)  # no GPU behind device=cuda: bad input, before anything is written
    check_not_under_a_file(Path(cfg.source_cache), "source_cache")
    out = Path(args.out) if args.out else Path("runs") / cfg.experiment
    frame = run_experiment(cfg, out, resume=args.resume, tensorboard=not args.no_tensorboard)
    last = frame.iloc[-1]
    print(
        f"done: {len(frame)} rounds (0–{int(last['round'])}) | final mIoU {last['miou']:.2f} | "
        f"labelled {last['labelled_pct']:.3f}% | results {out / 'results'} | tensorboard {out / 'tensorboard'}"
    )
    return EXIT_OK


class UsageError(ValueError):
    """A command-line argument that cannot work (an unreachable ``--address``, a negative count)."""


def _connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (or start a local Ray); a bad address is bad input."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and address != "auto" and "://" not in address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UsageError(
            f"--address {address}: no Ray cluster could be reached ({type(err).__name__}: {err}); "
            "start one with `ray start --head` or `ray up cluster.yaml`, or leave --address out "
            "to run on a local Ray"
        ) from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected host:port, 'auto' or a ray:// URI")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise UsageError(
            f"--address {address}: no Ray cluster answers there ({err}); start one with "
            "`ray start --head` or `ray up cluster.yaml`, or leave --address out to run on a local Ray"
        ) from None


def cmd_search(args: argparse.Namespace) -> int:
    from halo_ray.config import parse_overrides
    from halo_ray.distributed.space import load_search_space
    from halo_ray.rundir import check_not_under_a_file

    space = load_search_space(args.space, parse_overrides(args.set))
    check_not_under_a_file(Path(args.storage).expanduser() / space.name, "--storage")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0 or args.scorers_per_trial < 0:
        raise UsageError(
            f"--cpus-per-trial must be > 0, --gpus-per-trial >= 0 and --scorers-per-trial >= 0, but got "
            f"{args.cpus_per_trial}, {args.gpus_per_trial} and {args.scorers_per_trial}"
        )
    _connect_ray(args.address)
    from halo_ray.distributed.actors import TrialResources
    from halo_ray.distributed.search import run_search
    from halo_ray.results import read_results

    resources = TrialResources.per_trial(args.cpus_per_trial, args.gpus_per_trial, args.scorers_per_trial)
    _check_trial_fits(resources, local=args.address is None)
    results = run_search(
        space, args.storage, resume=args.resume, resources=resources, warm_learners=args.warm_learners
    )
    frame = read_results(results)
    final = frame[frame["round"] == frame["round"].max()]
    best = final.sort_values(space.metric, ascending=space.mode == "min").iloc[0]
    print(
        f"done: {frame['trial_id'].nunique()} trials, {len(frame)} rows | best final {space.metric} "
        f"{best[space.metric]:.2f} ({best['strategy']}, trial {best['trial_id']}) | results {results}"
    )
    return EXIT_OK


def _check_trial_fits(resources: TrialResources, *, local: bool) -> None:
    """Refuse, before anything is written, trial settings the cluster cannot place (a trial
    would wait forever); on a cluster given by ``--address``, which may still add nodes, say so
    and go on."""
    import ray

    why = resources.unmet([node["Resources"] for node in ray.nodes() if node.get("Alive")])
    if why is None:
        return
    settings = "--cpus-per-trial, --gpus-per-trial and --scorers-per-trial"
    if local:
        raise UsageError(f"{settings} ask for more than this machine has: {why}; ask for less")
    print(f"warning: {settings}: {why}; trials wait until the cluster adds such nodes", file=sys.stderr)


def cmd_analyze(args: argparse.Namespace) -> int:
    from halo_ray.results import locate_results, write_report
    from halo_ray.rundir import check_not_under_a_file

    results, root = locate_results(args.results)
    out = Path(args.out) if args.out else (root or results.parent) / "analysis"
    check_not_under_a_file(out, "--out")
    report = write_report(args.results, out, baseline=args.baseline)
    print(report.summary())
    print(f"report: {report.files[-1]}")
    return EXIT_OK


def cmd_data_generate(args: argparse.Namespace) -> int:
    from halo_ray.data import generate_benchmark
    from halo_ray.rundir import check_not_under_a_file

    if args.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, but got --seed {args.seed}")
    check_not_under_a_file(Path(args.out), "--out")
    try:
        paths = generate_benchmark(Path(args.out), seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as err:
        raise UsageError(f"data generate: {err}") from None
    print(f"wrote the embedded benchmark: {paths}")
    return EXIT_OK


def cmd_data_check(args: argparse.Namespace) -> int:
    from halo_ray.data import check_dataset

    def progress(done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            print(f"data check | {done}/{total} files", file=sys.stderr, flush=True)

    try:
        report = check_dataset(
            args.root, args.layout, split=args.split, conditions=args.conditions, workers=args.workers,
            progress=progress, verify_images=args.verify_images, void_ids=args.void_label_ids,
        )
    except ValueError as err:  # a bad argument (DatasetError, a missing root, is caught by main)
        raise UsageError(str(err)) from None
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_data_superpixels(args: argparse.Namespace) -> int:
    from halo_ray.data.layouts import open_dataset
    from halo_ray.data.superpixels import DatasetKey, SuperpixelCache, precompute_superpixels
    from halo_ray.rundir import check_not_under_a_file

    if args.num_superpixels is not None and args.num_superpixels < 1:
        raise UsageError(f"--num-superpixels must be an integer >= 1, but got --num-superpixels {args.num_superpixels}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be an integer >= 1, but got --workers {args.workers}")
    cache_root = Path(args.cache)
    check_not_under_a_file(cache_root, "--cache")
    split = args.split
    if split is None and args.layout in ("cityscapes", "acdc"):
        split = "train"
    try:
        dataset = open_dataset(args.layout, args.root, split)
    except ValueError as err:  # a bad --split; DatasetError (not the layout) is bad input too
        raise UsageError(str(err)) from None
    cache = SuperpixelCache(
        cache_root, dataset_key=DatasetKey.for_dataset(dataset), method=args.method,
        num_superpixels=args.num_superpixels,
    )
    computed = 0

    def progress(done: int, total: int, fresh: bool) -> None:
        nonlocal computed
        computed += fresh
        if fresh or done == total or done % 500 == 0:
            print(f"data superpixels | {done}/{total} images ({computed} computed)", file=sys.stderr, flush=True)

    try:
        report = precompute_superpixels(dataset, cache, workers=args.workers, progress=progress)
    except ValueError as err:  # an image SEEDS cannot split (DatasetError: an unreadable image)
        raise UsageError(str(err)) from None
    except KeyboardInterrupt:
        print(
            f"halo-ray: interrupted; {computed} images were cached in {cache.folder}, "
            "the same command continues with the rest", file=sys.stderr,
        )
        return EXIT_FAILED
    count = args.num_superpixels if args.num_superpixels is not None else "2048 at 2048x1024, scaled by area"
    replaced = f", {report.replaced} unusable files replaced" if report.replaced else ""
    print(
        f"superpixels: {report.total} images | {report.computed} computed, {report.cached} already cached"
        f"{replaced} | method {args.method}, superpixels per image: {count} | cache {report.folder}"
    )
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    from halo_ray.config import load_config_with_origins, show_config

    cfg, origins = load_config_with_origins(args.experiment, args.set)
    print(f"# {args.experiment}" + "".join(f" --set {p}" for p in args.set) + ", resolved; each value's origin after #")
    print(show_config(cfg, origins), end="")
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    import json

    from halo_ray.config import config_json_schema
    from halo_ray.results import atomic_write_bytes
    from halo_ray.rundir import check_not_under_a_file

    text = json.dumps(config_json_schema(), indent=2) + "\n"
    if args.out is None:
        print(text, end="")
        return EXIT_OK
    out = Path(args.out)
    check_not_under_a_file(out.parent, "--out")
    atomic_write_bytes(out, lambda tmp: tmp.write_text(text))
    print(f"wrote the JSON Schema of experiment files to {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halo-ray",
        description="Hyperbolic active learning (HALO) for domain-adaptive segmentation, run at scale.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one multi-round active-learning experiment")
    run.add_argument("experiment", help="experiment YAML (e.g. experiments/synthetic.yaml)")
    run.add_argument("--out", help="run directory (default: runs/<experiment>)")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set budget=2.2 --set strategy=ripu (repeatable)",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last round")
    run.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")
    run.set_defaults(func=cmd_run)

    search = sub.add_parser("search", help="run a Ray Tune search whose trials are whole active-learning runs")
    search.add_argument("space", help="search space YAML (e.g. search_spaces/quickstart.yaml)")
    search.add_argument("--storage", default="runs", help="folder (shared on a cluster) for runs/<search>/ (default: runs)")
    search.add_argument("--address", default=None, help="Ray cluster address, e.g. auto (default: start a local Ray)")
    search.add_argument("--resume", action="store_true", help="continue an interrupted search in --storage")
    search.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs one trial reserves (default 1)")
    search.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="GPUs for each trial's learner (default 0; 1 on GPU workers)"
    )
    search.add_argument(
        "--scorers-per-trial", type=int, default=0,
        help="scorer actors each trial's target scoring fans out over, each the size of the learner "
        "(default 0: the learner scores)",
    )
    search.add_argument(
        "--no-warm-learners", dest="warm_learners", action="store_false",
        help="start every learner process when its trial asks for it, not ahead with its imports done "
        "(warm ones cost ~340 MB each while they wait)",
    )
    search.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override an experiment key for every trial, e.g. --set data_root=/shared/data (repeatable)",
    )
    search.set_defaults(func=cmd_search)

    analyze = sub.add_parser(
        "analyze", help="tables, figures and a report from a search's (or a run's) results, also partial ones"
    )
    analyze.add_argument("results", help="runs/<search> (or its results/ folder, or a run directory)")
    analyze.add_argument("--out", help="report folder (default: <results' search folder>/analysis)")
    analyze.add_argument(
        "--baseline", help="strategy the others are compared with, paired by seed (default: random if present)"
    )
    analyze.set_defaults(func=cmd_analyze)

    config = sub.add_parser("config", help="experiment files: the resolved config with origins, a JSON Schema")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config and where each value came from")
    show.add_argument("experiment", help="experiment YAML")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    show.set_defaults(func=cmd_config_show)
    schema = config_sub.add_parser("schema", help="write a JSON Schema of experiment files (editors validate and complete)")
    schema.add_argument("--out", help="file to write (default: print)")
    schema.set_defaults(func=cmd_config_schema)

    data = sub.add_parser("data", help="datasets: generate the embedded benchmark, check a dataset, superpixels")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="write the embedded synthetic benchmark in the official layouts")
    gen.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    gen.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing benchmark in --out")
    gen.set_defaults(func=cmd_data_generate)
    check = data_sub.add_parser(
        "check", help="scan a dataset in an official layout for missing, unpaired, unreadable or mislabelled files"
    )
    check.add_argument("root", help="dataset root, e.g. /data/cityscapes or /data/SYNTHIA/RAND_CITYSCAPES")
    check.add_argument("--layout", required=True, choices=["gtav", "synthia", "cityscapes", "acdc"])
    check.add_argument("--split", help="cityscapes/acdc split to check (default: every labelled split present)")
    check.add_argument("--conditions", nargs="+", help="acdc conditions (default: every condition present)")
    check.add_argument("--workers", type=int, help="decoding processes (default: one per CPU this process may use; 1: no pool)")
    check.add_argument(
        "--verify-images", action="store_true", help="check every chunk of every image (slower; default: header and end)"
    )
    check.add_argument(
        "--void-label-ids", type=int, nargs="+", default=[], metavar="ID",
        help="label values (not labelIds 0..33) that mean void in this dataset, as the void_label_ids config key",
    )
    check.set_defaults(func=cmd_data_check)
    superpixels = data_sub.add_parser(
        "superpixels", help="precompute and cache the superpixels of a dataset's images (multi-class label queries)"
    )
    superpixels.add_argument("root", help="dataset root, e.g. /data/cityscapes")
    superpixels.add_argument("--layout", required=True, choices=["gtav", "synthia", "cityscapes", "acdc"])
    superpixels.add_argument("--split", help="cityscapes/acdc split (default: train); gtav and synthia have none")
    superpixels.add_argument(
        "--method", default="seeds", choices=["seeds", "slic", "grid"],
        help="seeds: the released MulActSeg recipe (default); slic; grid: SEEDS's blocks, unrefined",
    )
    superpixels.add_argument(
        "--num-superpixels", type=int, metavar="N",
        help="superpixels per image (default: 2048 at 2048x1024, scaled by image area)",
    )
    superpixels.add_argument(
        "--cache", default="runs/cache/superpixels", help="cache root (default: runs/cache/superpixels)"
    )
    superpixels.add_argument(
        "--workers", type=int, help="images segmented in parallel (default: one per CPU this process may use, fewer if memory is short)"
    )
    superpixels.set_defaults(func=cmd_data_superpixels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``halo-ray`` console script."""
    _quiet_warnings()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    parser = build_parser()
    args = parser.parse_args(argv)
    bad_input = _bad_input_errors()
    try:
        return args.func(args)
    except bad_input as err:
        print(f"halo-ray: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("halo-ray: interrupted; resume with --resume", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # a failed run: the traceback is for us, the last line for the user
        traceback.print_exc()
        print(f"halo-ray: run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
