"""A run owns its directory: foreign folders untouched, one process at a time, nothing to resume refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from halo_ray.cli import main
from halo_ray.config import build_config
from halo_ray.run import run_experiment
from halo_ray.rundir import LOCK_FILE, MARKER_FILE, RunDirectoryError, claim_run_directory

ROOT = Path(__file__).resolve().parents[1]


def _quiet(_: str) -> None:
    pass


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def test_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path, tiny_config_values):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "own config"}')
    (folder / "notes.txt").write_text("precious")
    before = _tree(folder)
    with pytest.raises(RunDirectoryError, match=r"non-empty folder that is not a halo_ray run \(no halo_ray_run.json\)"):
        run_experiment(build_config(tiny_config_values), folder, log=_quiet, tensorboard=False)
    with pytest.raises(RunDirectoryError, match="holds no halo_ray run to continue"):
        run_experiment(build_config(tiny_config_values), folder, resume=True, log=_quiet, tensorboard=False)
    assert _tree(folder) == before


def test_resume_needs_a_run_and_its_checkpoints(tmp_path, tiny_config_values):
    cfg = build_config({**tiny_config_values, "rounds": 1})
    with pytest.raises(RunDirectoryError, match=r"--resume: .*typo holds no halo_ray run to continue"):
        run_experiment(cfg, tmp_path / "typo", resume=True, log=_quiet, tensorboard=False)
    assert not (tmp_path / "typo").exists()
    out = tmp_path / "run"
    run_experiment(cfg, out, log=_quiet, tensorboard=False)
    assert (out / MARKER_FILE).is_file()
    shutil.rmtree(out / "checkpoints")  # a finished run whose checkpoints were deleted
    rows = sorted((out / "results").glob("*.parquet"))
    with pytest.raises(RunDirectoryError, match="already holds a halo_ray run; pass --resume"):
        run_experiment(cfg, out, log=_quiet, tensorboard=False)
    with pytest.raises(Exception, match="holds result rows of this run .* but no checkpoint"):
        run_experiment(cfg, out, resume=True, log=_quiet, tensorboard=False)
    assert sorted((out / "results").glob("*.parquet")) == rows


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    out = tmp_path / "run"
    with claim_run_directory(out, resume=False):
        assert "pid" in (out / LOCK_FILE).read_text()
        with pytest.raises(RunDirectoryError, match=r"in use by another halo_ray process \(pid \d+ on "):
            with claim_run_directory(out, resume=True):
                pass
        (out / "results").mkdir()
    with claim_run_directory(out, resume=True):  # released at the end of the first
        pass


def test_failing_before_writing_anything_leaves_no_trace(tmp_path, tiny_config_values):
    out = tmp_path / "run"
    cfg = build_config({**tiny_config_values, "data_root": str(tmp_path / "nodata"), "generate_data": False})
    with pytest.raises(Exception, match="nodata"):
        run_experiment(cfg, out, log=_quiet, tensorboard=False)
    assert not out.exists()


def test_leftover_temp_files_of_a_killed_write_are_removed_on_resume(tmp_path):
    out = tmp_path / "run"
    with claim_run_directory(out, resume=False):
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / ".round_002.pt.abc123.tmp").write_bytes(b"half")
        (out / "results").mkdir()
        (out / "results" / ".x-round001.parquet.q9.tmp").write_bytes(b"half")
        (out / "results" / "x-round000.parquet").write_bytes(b"whole")
    with claim_run_directory(out, resume=True):
        assert not list(out.rglob("*.tmp"))
        assert (out / "results" / "x-round000.parquet").read_bytes() == b"whole"


def test_out_under_a_regular_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["run", str(ROOT / "experiments" / "synthetic.yaml"), "--out", str(tmp_path / "afile" / "run")])
    assert code == 2
    assert "afile is a file, not a directory" in capsys.readouterr().err


def test_a_run_that_fails_before_writing_removes_the_parent_folders_it_made(tmp_path):
    """A claim of ``a/b/c`` that fails before the run writes anything leaves no folder it made
    behind; a parent that was there, or that something else wrote into meanwhile, stays."""
    with pytest.raises(KeyError, match="boom"):
        with claim_run_directory(tmp_path / "a" / "b" / "c", resume=False):
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyError):
        with claim_run_directory(tmp_path / "kept" / "b" / "c", resume=False) as run:
            (run.parent / "other.txt").write_text("someone else's")  # b is no longer empty
            raise KeyError("boom")
    assert _tree(tmp_path) == [("kept", None), ("kept/b", None), ("kept/b/other.txt", b"someone else's")]
