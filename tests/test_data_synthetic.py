"""The embedded benchmark generator: determinism, long tail, domain gap, atomic writing."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest

from halo_ray.data import synthetic
from halo_ray.data.labels import CITYSCAPES_CLASSES
from halo_ray.data.synthetic import (
    MANIFEST_NAME,
    class_frequencies,
    generate_benchmark,
    generate_sample,
)

H, W = 64, 128
SMALL = dict(
    height=H,
    width=W,
    n_source=3,
    n_target_train=3,
    n_target_val=2,
    n_adverse_train=2,
    n_adverse_val=1,
    conditions=("fog", "night"),
)
CLS = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def source_set():
    return [generate_sample(5, "source", "train", i, height=H, width=W) for i in range(16)]


@pytest.fixture(scope="module")
def target_set():
    return [generate_sample(5, "target", "train", i, height=H, width=W) for i in range(16)]


# ---- determinism -------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    a = generate_benchmark(tmp_path / "a", seed=11, **SMALL)
    b = generate_benchmark(tmp_path / "b", seed=11, **SMALL)
    c = generate_benchmark(tmp_path / "c", seed=12, **SMALL)
    files_a, files_b, files_c = _tree_bytes(a.root), _tree_bytes(b.root), _tree_bytes(c.root)
    images = [k for k in files_a if k != MANIFEST_NAME]
    # 3 GTAV + 5 Cityscapes + 2 conditions x 3 ACDC frames, image + label each
    assert len(images) == 2 * (3 + 5 + 6)
    assert all(files_a[k] == files_b[k] for k in images)
    assert set(files_c) == set(files_a)
    assert all(files_a[k] != files_c[k] for k in images if "/images/" in k or "leftImg8bit" in k)


def test_worker_processes_write_the_same_files(tmp_path, monkeypatch):
    """Frames are generated over worker processes (spawned) with the same bytes as in-process."""
    import halo_ray.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_PARALLEL_MIN_FRAMES", 0)  # SMALL is below the threshold
    one = _tree_bytes(generate_benchmark(tmp_path / "one", seed=4, workers=1, **SMALL).root)
    two = _tree_bytes(generate_benchmark(tmp_path / "two", seed=4, workers=2, **SMALL).root)
    images = [k for k in one if k != MANIFEST_NAME]
    assert set(one) == set(two) and len(images) == 2 * (3 + 5 + 6)
    assert all(one[k] == two[k] for k in images)
    with pytest.raises(ValueError, match="workers must be a positive integer, but got workers=0"):
        generate_benchmark(tmp_path / "none", seed=4, workers=0, **SMALL)
    assert not (tmp_path / "none").exists()


def test_a_frame_does_not_depend_on_how_many_frames_were_asked_for():
    one = generate_sample(3, "target", "val", 7, height=H, width=W)
    again = generate_sample(3, "target", "val", 7, height=H, width=W)
    other = generate_sample(3, "target", "val", 8, height=H, width=W)
    assert np.array_equal(one.image, again.image) and np.array_equal(one.label_ids, again.label_ids)
    assert not np.array_equal(one.label_ids, other.label_ids)


def test_adverse_frames_share_labels_semantics_but_not_images():
    fog = generate_sample(0, "adverse", "train", 0, height=H, width=W, condition="fog")
    night = generate_sample(0, "adverse", "train", 0, height=H, width=W, condition="night")
    assert fog.image.shape == night.image.shape == (H, W, 3)
    assert night.image.mean() < fog.image.mean() - 40  # night is dark, fog is bright


# ---- long tail and class coverage -----------------------------------------------------------


@pytest.mark.parametrize("which", ["source_set", "target_set"])
def test_long_tailed_class_frequencies(which, request):
    freq = class_frequencies(request.getfixturevalue(which))
    assert freq.shape == (19,) and freq.sum() == pytest.approx(1.0)
    for big in ("road", "building", "sky"):
        assert freq[CLS[big]] > 0.05, big
    for small in ("pole", "traffic light", "traffic sign", "rider", "motorcycle"):
        assert 0.0 < freq[CLS[small]] < 0.02, small


@pytest.mark.parametrize("which", ["source_set", "target_set"])
def test_every_class_occurs(which, request):
    present = np.zeros(19, bool)
    for s in request.getfixturevalue(which):
        ids = np.unique(s.train_ids)
        present[ids[ids < 19]] = True
    assert present.all(), [CITYSCAPES_CLASSES[i] for i in np.flatnonzero(~present)]


def test_only_official_label_ids_are_written_and_target_has_void_pixels(target_set):
    ids = np.unique(np.concatenate([s.label_ids.ravel() for s in target_set]))
    assert ids.max() <= 33
    assert 1 in ids  # ego vehicle (void) appears in Cityscapes-like frames
    assert any((s.train_ids == 255).any() for s in target_set)


# ---- domain gap -------------------------------------------------------------------------------


def _mean_hsv(samples, train_id):
    px = np.concatenate([s.image[s.train_ids == train_id] for s in samples]).astype(np.float64)
    h, s, _ = colorsys.rgb_to_hsv(*(px.mean(0) / 255.0))
    return h * 360.0, s


@pytest.mark.parametrize("name", ["road", "car", "sky", "vegetation"])
def test_source_and_target_colours_differ_for_the_same_class(name, source_set, target_set):
    hue_s, sat_s = _mean_hsv(source_set, CLS[name])
    hue_t, sat_t = _mean_hsv(target_set, CLS[name])
    gap = abs((hue_s - hue_t + 180.0) % 360.0 - 180.0)
    assert gap > 25.0, (name, hue_s, hue_t)
    assert sat_t < sat_s


def test_target_is_textured_and_source_is_flat(source_set, target_set):
    def roughness(samples):
        """Median |difference| between horizontal neighbours that are both road."""
        diffs = []
        for s in samples:
            img = s.image.astype(np.int16)
            both = (s.train_ids[:, 1:] == 0) & (s.train_ids[:, :-1] == 0)
            diffs.append(np.abs(img[:, 1:] - img[:, :-1]).sum(-1)[both])
        return np.median(np.concatenate(diffs))

    assert roughness(source_set) <= 3
    assert roughness(target_set) >= 3 * max(roughness(source_set), 1)


# ---- writing -------------------------------------------------------------------------------


def test_layout_and_manifest(tmp_path):
    paths = generate_benchmark(tmp_path / "bench", seed=1, **SMALL)
    assert (paths.gtav_root / "images" / "00001.png").is_file()
    assert (paths.gtav_root / "labels" / "00003.png").is_file()
    cs = paths.cityscapes_root
    assert (cs / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").is_file()
    assert (cs / "gtFine/train/hamburg/hamburg_000000_000019_gtFine_labelIds.png").is_file()
    assert (cs / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png").is_file()
    acdc = paths.acdc_root
    assert (acdc / "rgb_anon/fog/train/GOPR1000/GOPR1000_frame_000001_rgb_anon.png").is_file()
    assert (acdc / "gt/night/val/GOPR2500/GOPR2500_frame_000001_gt_labelIds.png").is_file()
    assert not (acdc / "rgb_anon" / "rain").exists()
    manifest = json.loads((paths.root / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 1 and manifest["conditions"] == ["fog", "night"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]  # no temp folder left


def test_refuses_existing_layout_unless_overwrite(tmp_path):
    out = tmp_path / "bench"
    generate_benchmark(out, seed=1, **SMALL)
    before = _tree_bytes(out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_benchmark(out, seed=2, **SMALL)
    assert _tree_bytes(out) == before
    generate_benchmark(out, seed=2, overwrite=True, **SMALL)
    after = _tree_bytes(out)
    assert json.loads(after[MANIFEST_NAME])["seed"] == 2
    assert after["gtav/images/00001.png"] != before["gtav/images/00001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def _fail_after(monkeypatch, n_calls):
    real = synthetic._save_rgb
    calls = {"n": 0}

    def flaky(path, image):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise KeyboardInterrupt("simulated interruption")
        real(path, image)

    monkeypatch.setattr(synthetic, "_save_rgb", flaky)


def test_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    _fail_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        generate_benchmark(tmp_path / "bench", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_tree(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    generate_benchmark(out, seed=1, **SMALL)
    before = _tree_bytes(out)
    _fail_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        generate_benchmark(out, seed=2, overwrite=True, **SMALL)
    assert _tree_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]


# ---- argument checks and helpers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(height=16), "height must be an integer >= 32"),
        (dict(width=31.5), "width must be an integer >= 32"),
        (dict(n_source=0), "n_source must be an integer >= 1"),
        (dict(conditions=("fog", "hail")), "conditions must be a non-empty subset"),
        (dict(conditions=("fog", "fog")), "without repeats"),
        (dict(seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_benchmark(tmp_path / "bench", **args)
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        (("game", "train", 0), {}),
        (("source", "val", 0), {}),
        (("adverse", "train", 0), {}),
        (("target", "train", 0), {"condition": "fog"}),
    ],
)
def test_generate_sample_rejects_bad_domain_split_condition(args, kw):
    with pytest.raises(ValueError):
        generate_sample(0, *args, height=H, width=W, **kw)


def test_class_frequencies_closed_form():
    freq = class_frequencies(
        [np.array([[0, 0, 1, 255]], np.uint8), np.array([[18, 255]], np.uint8)]
    )
    expected = np.zeros(19)
    expected[[0, 1, 18]] = [0.5, 0.25, 0.25]
    assert np.allclose(freq, expected)
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_frequencies([np.full((2, 2), 255, np.uint8)])


@pytest.mark.parametrize("x", np.linspace(10.0, 11.0, 7).tolist())
def test_thin_parts_are_at_least_two_pixels_wide_at_any_subpixel_position(x):
    cv = synthetic._Canvas(40, 24)
    far = synthetic._Sprite(cv, x, 38.0, 0.5, 50.0)  # 0.5 px per metre: a 0.16 m pole is 0.08 px
    far.rect(-0.08, 0.08, 0.0, 60.0, cv.instance((0.0, 0.0, 0.5), 17), min_w=synthetic.THIN_PX)
    rows = (cv.label == 17).sum(axis=1)
    assert (rows[rows > 0] == 2).all() and (rows > 0).sum() == 30
    cv2 = synthetic._Canvas(40, 24)
    leg = synthetic._Sprite(cv2, x, 38.0, 0.5, 50.0)
    leg.segment((0.0, 0.0), (0.0, 60.0), 0.05, cv2.instance((0.0, 0.0, 0.5), 33))
    rows = (cv2.label == 33).sum(axis=1)
    assert rows[rows > 0][1:-1].min() >= 2  # the round end caps may be narrower


def test_objects_land_in_the_frame():
    rng = np.random.default_rng(0)
    street = synthetic._make_street(rng, H, W)
    for _ in range(200):
        anchor = synthetic._place(rng, street, [(-40.0, -30.0), (30.0, 40.0)])
        if anchor is None:
            continue
        x, yb, k, z = anchor
        assert 0.0 <= x <= W and street.horizon < yb <= street.horizon + (H - street.horizon) * 1.08
        assert z == pytest.approx(street.focal * synthetic.CAM_HEIGHT / (yb - street.horizon))


def test_a_concurrent_identical_generation_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    real = synthetic._write_tree
    nested = {"done": False}

    def write_then_race(*args, **kwargs):
        real(*args, **kwargs)
        if not nested["done"]:  # another trial finishes the same benchmark first
            nested["done"] = True
            generate_benchmark(out, seed=3, **SMALL)

    monkeypatch.setattr(synthetic, "_write_tree", write_then_race)
    generate_benchmark(out, seed=3, **SMALL)
    assert nested["done"] and (out / MANIFEST_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]
    monkeypatch.setattr(synthetic, "_write_tree", real)
    with pytest.raises(FileExistsError):
        generate_benchmark(out, seed=3, **SMALL)
