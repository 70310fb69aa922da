"""``halo-ray`` command line: thin wrappers over the library.

Exit codes: 0 success, 2 bad input (config, dataset, arguments), 1 a run that failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _quiet_warnings() -> None:
    """geoopt emits torch.jit deprecation warnings on import; they are not the user's concern."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*")


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from halo_ray.config import ConfigError
    from halo_ray.data import DatasetError
    from halo_ray.data.labels import LabelError

    return (ConfigError, DatasetError, LabelError)


def cmd_run(args: argparse.Namespace) -> int:
    from halo_ray.config import load_config
    from halo_ray.run import run_experiment

    cfg = load_config(args.experiment, args.set)
    out = Path(args.out) if args.out else Path("runs") / cfg.experiment
    frame = run_experiment(cfg, out, resume=args.resume, tensorboard=not args.no_tensorboard)
    last = frame.iloc[-1]
    print(
        f"done: {len(frame)} rounds (0–{int(last['round'])}) | final mIoU {last['miou']:.2f} | "
        f"labelled {last['labelled_pct']:.3f}% | results {out / 'results'} | tensorboard {out / 'tensorboard'}"
    )
    return EXIT_OK


def cmd_data_generate(args: argparse.Namespace) -> int:
    from halo_ray.data import generate_benchmark

    paths = generate_benchmark(Path(args.out), seed=args.seed, overwrite=args.overwrite)
    print(f"wrote the embedded benchmark: {paths}")
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

    data = sub.add_parser("data", help="datasets: generate the embedded benchmark")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="write the embedded synthetic benchmark in the official layouts")
    gen.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    gen.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing benchmark in --out")
    gen.set_defaults(func=cmd_data_generate)
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
