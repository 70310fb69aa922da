"""Careless input through the CLI: exit 2, one line naming the cause and its source, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from halo_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = str(ROOT / "experiments" / "synthetic.yaml")


def _refused(capsys, argv: list[str], *expected: str) -> str:
    """Run the CLI, expect exit 2 and one error line holding every ``expected`` text."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for text in expected:
        assert text in err[0], err[0]
    return err[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"seed: 0\nexperiment: \xff\xfe\n", "not a UTF-8 text file"),
        (b"", "the experiment file sets no key"),
        (b"seed: 0\nbudget: 5\nseed: 1\n", "key 'seed' is given twice (lines 1 and 3); keep one"),
    ],
)
def test_unreadable_empty_or_ambiguous_experiment_files(tmp_path, capsys, content, expected):
    path = tmp_path / "exp.yaml"
    path.write_bytes(content)
    _refused(capsys, ["run", str(path), "--out", str(tmp_path / "out")], str(path), expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("lr=.inf", "--set lr=.inf: lr must be a finite number, but got lr=inf"),
        ("lr=.nan", "lr must be a finite number, but got lr=nan"),
        ("budget=150", "--set budget=150: budget is a percentage in (0, 100]"),
        ("budjet=1", "--set budjet=1: unknown config key(s) ['budjet']"),
        ("experiment=../../escape", "experiment names run folders and result files"),
        ("suppression=1", "the suppression window must cover the labelled square"),
    ],
)
def test_command_line_values_are_blamed_on_the_command_line(tmp_path, capsys, pair, expected):
    _refused(capsys, ["run", SYNTHETIC, "--out", str(tmp_path / "out"), "--set", pair], expected)
    assert not (tmp_path / "out").exists()


def test_a_file_value_is_blamed_on_the_file_that_set_it_even_through_extends(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(f"extends: {SYNTHETIC}\nbudget: 0\n")
    variant = tmp_path / "variant.yaml"
    variant.write_text("extends: base.yaml\nseed: 1\n")
    _refused(capsys, ["run", str(variant), "--out", str(tmp_path / "out")], f"{base} (extends: of {variant}): budget")


def test_a_broken_base_file_is_blamed_with_the_file_whose_extends_brought_it_in(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("- a list\n")
    variant = tmp_path / "variant.yaml"
    variant.write_text("extends: base.yaml\nseed: 1\n")
    _refused(capsys, ["run", str(variant), "--out", str(tmp_path / "out")],
             f"{base}: expected a mapping of config keys, but got list (extends: of {variant})")
    assert not (tmp_path / "out").exists()


def test_huge_values_are_cut_in_messages(tmp_path, capsys):
    line = _refused(capsys, ["run", SYNTHETIC, "--out", str(tmp_path / "o"), "--set", "strategy=" + "x" * 5000])
    assert "chars)" in line and len(line) < 600


def test_a_budget_that_one_pick_would_exceed_is_refused(tmp_path, capsys, tiny_config_values):
    import yaml

    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump({**tiny_config_values, "region_size": 41, "suppression": 81}))
    out = tmp_path / "out"
    _refused(capsys, ["run", str(exp), "--out", str(out)], "allows 163.8 pixels per 64x128 target image and round",
             "one pick labels 1681")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_bad_input(tmp_path, capsys):
    _refused(capsys, ["run", SYNTHETIC, "--out", str(tmp_path / "o"), "--set", "device=cuda"], "torch sees no CUDA device")
    assert not (tmp_path / "o").exists()


def test_paths_under_a_regular_file_are_bad_input(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(capsys, ["run", SYNTHETIC, "--set", f"source_cache={afile}/cache", "--out", str(tmp_path / "o")],
             "source_cache", "is a file, not a directory")
    _refused(capsys, ["search", str(ROOT / "search_spaces" / "quickstart.yaml"), "--storage", str(afile / "runs")],
             "--storage", "is a file, not a directory")
    _refused(capsys, ["data", "generate", "--out", str(afile / "data")], "is a file, not a directory")
    _refused(capsys, ["run", SYNTHETIC, "--set", f"data_root={afile}/data", "--out", str(tmp_path / "o")],
             "data_root", "is a file, not a directory")
    assert afile.read_text() == "x"
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no folder can be made")
def test_a_data_root_that_cannot_be_written_is_bad_input(tmp_path, capsys):
    """The benchmark generated on first use into a folder that cannot be made: exit 2 naming
    data_root, and neither the run folder nor any benchmark file is left."""
    assert main(["run", SYNTHETIC, "--set", "data_root=/proc/halo_ray_data", "--out", str(tmp_path / "o")]) == 2
    *progress, error = capsys.readouterr().err.strip().splitlines()  # the line announcing the generation
    assert progress == ["generating the embedded benchmark into /proc/halo_ray_data (seed 0) …"]
    assert error.startswith("halo-ray: error: data_root=/proc/halo_ray_data: cannot write the embedded benchmark into")
    assert list(tmp_path.iterdir()) == []
    _refused(capsys, ["data", "generate", "--out", "/proc/halo_ray_data"],
             "cannot write the embedded benchmark into /proc/halo_ray_data")


def test_data_generate_refuses_a_negative_seed_and_an_existing_benchmark(tmp_path, capsys, tiny_benchmark):
    _refused(capsys, ["data", "generate", "--out", str(tmp_path / "d"), "--seed", "-1"], "--seed must be an integer >= 0")
    assert not (tmp_path / "d").exists()
    _refused(capsys, ["data", "generate", "--out", str(tiny_benchmark)], "already exist", "--overwrite")


def test_analyze_out_under_a_regular_file_is_bad_input(tmp_path, capsys, tiny_config_values):
    from halo_ray.config import build_config
    from halo_ray.run import run_experiment

    run = tmp_path / "run"
    run_experiment(build_config({**tiny_config_values, "rounds": 1}), run, log=lambda _: None, tensorboard=False)
    (tmp_path / "afile").write_text("x")
    _refused(capsys, ["analyze", str(run), "--out", str(tmp_path / "afile" / "report")], "is a file, not a directory")


def test_superpixels_smaller_than_the_trim_are_refused(tmp_path, capsys, tiny_config_values):
    """100 superpixels on 64x128 images are ~9 px wide: a 5-px band on each side leaves nothing."""
    import yaml

    values = {**tiny_config_values, "unit": "multiclass", "strategy": "pixbal", "clicks_per_round": 40,
              "superpixels": "grid", "geometry": "cosine", "superpixel_cache": str(tmp_path / "spx")}
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump({**values, "num_superpixels": 100}))
    out = tmp_path / "out"
    _refused(capsys, ["run", str(exp), "--out", str(out)],
             "num_superpixels=100 on 64x128 target images makes regions of about 9.1 px a side",
             "trim=5", "use num_superpixels <= 67, or trim <= 4")
    assert not out.exists() and not (tmp_path / "spx").exists()
    exp.write_text(yaml.safe_dump({**values, "num_superpixels": 100, "trim": 4, "rounds": 0}))
    assert main(["run", str(exp), "--out", str(out)]) == 0
