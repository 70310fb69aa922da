"""Statements of the README and docs that can drift from the code, checked against it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from halo_ray.config import config_keys
from halo_ray.results import RESULT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_example_experiment_file_lists_every_config_key():
    listed = yaml.safe_load((ROOT / "experiments" / "synthetic.yaml").read_text())
    assert [k for k in config_keys() if k not in listed] == []
    assert [k for k in listed if k not in config_keys()] == []


def test_the_readme_is_a_front_door_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    assert "bash scripts/install.sh && .venv/bin/halo-ray search search_spaces/quickstart.yaml" in text
    assert "bash scripts/install.sh && .venv/bin/python -m pytest" in text
    assert "{" + "{" not in text  # no unfilled placeholder
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_every_docs_link_resolves():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: {target}"


def test_the_documented_parquet_schema_is_the_written_one():
    text = (ROOT / "docs" / "configuration.md").read_text()
    listed = re.search(r"One row per \(trial, round\): `([^`]+)`", text).group(1)
    documented = [c.strip() for c in listed.replace("\n", " ").split(",")]
    written = [c for c in RESULT_COLUMNS if not re.match(r"(iou|radius)_", c) or c in ("radius_mean", "radius_acc_spearman")]
    expanded = [c for c in documented if c not in ("iou_<class>", "radius_<class>")]
    assert expanded == written
    assert {"iou_<class>", "radius_<class>"} <= set(documented)
