"""CLI: each bad input exits 2 with a message naming the key/file/value and writes nothing
(a broken label found mid-run, where labels are read lazily, keeps only the completed rounds)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from halo_ray.cli import main


def _exp(tmp_path, text="experiment: tiny\n"):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def _run(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


def _base_sets(values):
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={v}"]
    return out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budjet=5", "unknown config key(s) ['budjet']"),
        ("region_size=4", "region_size must be an odd integer >= 1, but got region_size=4"),
        ("region_size=-1", "region_size=-1"),
        ("bins=1", "bins must be an integer >= 2, but got bins=1"),
        ("budget=0", "budget is a percentage in (0, 100], but got budget=0"),
        ("budget=150", "budget=150"),
        ("curvature=0", "curvature must be > 0"),
        ("curvature=-2", "curvature=-2"),
        ("rounds=many", "rounds must be an integer, but got rounds='many'"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    code, err = _run(capsys, ["run", str(_exp(tmp_path)), "--out", str(out), "--set", override])
    assert code == 2
    assert message in err
    assert not out.exists()


def test_missing_experiment_file(tmp_path, capsys):
    code, err = _run(capsys, ["run", str(tmp_path / "missing.yaml")])
    assert code == 2 and "missing.yaml: no such config file" in err


def test_missing_dataset_folder(tmp_path, capsys, tiny_config_values):
    out = tmp_path / "out"
    values = {**tiny_config_values, "data_root": str(tmp_path / "nowhere"), "generate_data": "false"}
    code, err = _run(capsys, ["run", str(_exp(tmp_path)), "--out", str(out), *_base_sets(values)])
    assert code == 2
    assert str(tmp_path / "nowhere") in err
    assert not out.exists()


def _copy_benchmark(src, tmp_path):
    dst = tmp_path / "bench"
    shutil.copytree(src, dst)
    return dst


def test_unreadable_image_is_named(tmp_path, capsys, tiny_benchmark, tiny_config_values):
    root = _copy_benchmark(tiny_benchmark, tmp_path)
    image = sorted((root / "cityscapes" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))[0]
    image.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    values = {**tiny_config_values, "data_root": str(root)}
    code, err = _run(capsys, ["run", str(_exp(tmp_path)), "--out", str(out), *_base_sets(values)])
    assert code == 2
    assert image.name in err
    assert not out.exists()


def test_label_id_outside_the_map_is_named(tmp_path, capsys, tiny_benchmark, tiny_config_values):
    root = _copy_benchmark(tiny_benchmark, tmp_path)
    label = sorted((root / "cityscapes" / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))[0]
    original = label.read_bytes()
    ids = np.array(Image.open(label))
    ids[0, 0] = 77
    Image.fromarray(ids).save(label)
    out = tmp_path / "out"
    values = {**tiny_config_values, "data_root": str(root)}
    args = ["run", str(_exp(tmp_path)), "--out", str(out), *_base_sets(values)]
    code, err = _run(capsys, args)
    assert code == 2
    assert label.name in err and "77" in err
    # labels are read lazily: the run stopped when round 1 asked the oracle for this file, and
    # kept only what was complete (round 0), nothing of round 1
    assert sorted(p.name for p in (out / "results").glob("*.parquet"))[-1].endswith("round000.parquet")
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["round_000.pt"]
    label.write_bytes(original)  # fixed: --resume finishes the run
    code, _ = _run(capsys, [*args, "--resume"])
    assert code == 0 and len(list((out / "results").glob("*.parquet"))) == values["rounds"] + 1


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "run" in capsys.readouterr().out


def test_analyze_bad_path_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_such_search"
    code, err = _run(capsys, ["analyze", str(missing)])
    assert code == 2 and str(missing) in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run(capsys, ["analyze", str(empty)])
    assert code == 2 and "no *.parquet files" in err
    assert not (tmp_path / "analysis").exists() and not (empty / "analysis").exists()


def test_data_check_end_to_end(tmp_path, tiny_benchmark, capsys):
    """`halo-ray data check`: a clean tree passes with class counts; a missing label fails naming
    the image; a root without the layout's folders is bad input."""
    from halo_ray.data import open_dataset

    code = main(["data", "check", str(tiny_benchmark / "cityscapes"), "--layout", "cityscapes", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "result: OK" in out
    splits = [open_dataset("cityscapes", tiny_benchmark / "cityscapes", split=s) for s in ("train", "val")]
    road = sum(int((d[i].label == 0).sum()) for d in splits for i in range(len(d)))
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith("road ")]
    assert line.split()[-1] == str(road)  # exact road pixel count over train + val

    broken = tmp_path / "cityscapes"
    shutil.copytree(tiny_benchmark / "cityscapes", broken)
    label = sorted((broken / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))[0]
    label.unlink()
    code = main(["data", "check", str(broken), "--layout", "cityscapes", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1 and label.name.replace("_gtFine_labelIds", "_leftImg8bit") in out and "FAILED" in out

    code, err = _run(capsys, ["data", "check", str(tmp_path), "--layout", "gtav"])
    assert code == 2 and str(tmp_path) in err

    # a label that stores void as 255: an error, unless --void-label-ids names it (then clean)
    shutil.rmtree(broken)
    shutil.copytree(tiny_benchmark / "cityscapes", broken)
    label = sorted((broken / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]
    ids = np.array(Image.open(label))
    ids[0, :5] = 255
    Image.fromarray(ids).save(label)
    assert main(["data", "check", str(broken), "--layout", "cityscapes", "--workers", "1"]) == 1
    assert "--void-label-ids" in capsys.readouterr().out
    assert main(["data", "check", str(broken), "--layout", "cityscapes", "--workers", "1", "--void-label-ids", "255"]) == 0
    code, err = _run(capsys, ["data", "check", str(broken), "--layout", "cityscapes", "--void-label-ids", "7"])
    assert code == 2 and "must not name Cityscapes labelIds" in err
