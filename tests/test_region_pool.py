"""RegionPool: answered superpixels charged in clicks, idempotent, resumable bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from released_multiclass import blocky_labels, voronoi

from halo_ray.multiclass import region_labels, select_regions
from halo_ray.pool import ArrayOracle
from halo_ray.region_pool import RegionPool
from halo_ray.run import load_checkpoint, save_checkpoint


class CountingOracle(ArrayOracle):
    def __init__(self, maps):
        super().__init__(maps)
        self.calls = 0

    def labels(self, index):
        self.calls += 1
        return super().labels(index)


def _pool(n=3, *, bill_void=True, trim=0, seed=0):
    rng = np.random.default_rng(seed)
    spx = [voronoi(40, 60, 25, rng) for _ in range(n)]
    labels = [blocky_labels(40, 60, 6, rng, void=0.02) for _ in range(n)]
    oracle = CountingOracle(labels)
    pool = RegionPool(n, lambda i: spx[i], oracle, num_classes=6, trim=trim, bill_void=bill_void)
    return pool, spx, labels, oracle


def test_clicks_are_the_answers_bits():
    pool, spx, labels, _ = _pool()
    multihot, _ = region_labels(labels[1], spx[1], num_classes=6, trim=0)
    rec = pool.reveal(1, 1, [4, 0, 7])
    assert rec.clicks == int(multihot[[4, 0, 7]].sum())
    assert rec.void == int(multihot[[4, 0, 7], 6].sum())
    ids, answers, rounds = pool.answered(1)
    assert ids.tolist() == [4, 0, 7] and rounds.tolist() == [1, 1, 1]
    np.testing.assert_array_equal(answers, multihot[[4, 0, 7]])
    table, selected = pool.targets(1, 25)
    np.testing.assert_array_equal(table[selected], multihot[[0, 4, 7]])
    assert table[~selected].sum() == 0 and pool.available(1, 25).sum() == 22
    assert pool.clicks == rec.clicks


def test_void_is_billed_only_when_asked():
    billed, spx, labels, _ = _pool(bill_void=True)
    free, *_ = _pool(bill_void=False)
    everything = list(range(25))
    a, b = billed.reveal(1, 0, everything), free.reveal(1, 0, everything)
    assert a.void == b.void > 0
    assert a.clicks - b.clicks == a.void


def test_retry_is_free_other_regions_refused_rounds_ordered():
    pool, _, _, oracle = _pool()
    first = pool.reveal(2, 0, np.array([3, 5]))
    assert pool.reveal(2, 0, torch.tensor([3, 5])) == first and oracle.calls == 1
    assert pool.clicks == first.clicks
    with pytest.raises(ValueError, match="retried call must pass the same regions"):
        pool.reveal(2, 0, [5, 3])
    with pytest.raises(ValueError, match="round=1 is too early"):
        pool.reveal(1, 0, [9])
    with pytest.raises(ValueError, match=r"regions \[5\] were answered in an earlier round"):
        pool.reveal(3, 0, [5, 6])
    with pytest.raises(ValueError, match="repeat an id"):
        pool.reveal(3, 0, [6, 6])
    with pytest.raises(ValueError, match="superpixel ids 0..24"):
        pool.reveal(3, 0, [25])
    with pytest.raises(ValueError, match="round must be an integer in 1..255"):
        pool.reveal(0, 0, [1])


def test_state_round_trip_is_exact_and_checked(tmp_path):
    pool, spx, labels, _ = _pool(trim=3)
    for r in (1, 2):
        for i in range(3):
            pool.reveal(r, i, np.flatnonzero(pool.available(i, 25))[r : r + 3 * r])
    pool.reveal(3, 2, [])  # an empty call is a call too
    plain_state = pool.state_dict()
    assert all(isinstance(plain_state[k], np.ndarray) for k in ("counts", "regions", "answers", "rounds", "sizes"))
    save_checkpoint(tmp_path / "state.pt", plain_state)  # as a run stores it: arrays as tensors
    state = load_checkpoint(tmp_path / "state.pt")
    assert isinstance(state["regions"], torch.Tensor)
    again, *_ = _pool(trim=3)
    again.load_state_dict(state)
    assert again.ledger() == pool.ledger() and again.clicks == pool.clicks
    for i in range(3):
        for got, want in zip(again.answered(i), pool.answered(i), strict=True):
            np.testing.assert_array_equal(got, want)
    assert again.reveal(3, 2, []) == pool.reveal(3, 2, [])
    other, *_ = _pool(trim=5)
    with pytest.raises(ValueError, match="state trim=3 differs from this pool's trim=5"):
        other.load_state_dict(state)
    bad = dict(state, rounds=torch.flip(state["rounds"], [0]))
    fresh, *_ = _pool(trim=3)
    with pytest.raises(ValueError, match="state is inconsistent"):
        fresh.load_state_dict(bad)
    assert fresh.ledger() == []  # a failed load leaves the pool unchanged


def test_a_round_selected_under_a_click_budget_spends_at_most_it():
    pool, spx, labels, _ = _pool(n=4, seed=3)
    answers = np.stack([region_labels(labels[i], spx[i], num_classes=6, trim=0)[0] for i in range(4)])
    scores = np.random.default_rng(0).random((4, 25))
    order, clicks = select_regions(scores, answers, budget=40, available=None)
    for i in range(4):
        pool.reveal(1, i, order[order[:, 0] == i, 1])
    assert pool.clicks == clicks <= 40
    assert pool.round_totals()[1]["clicks"] == clicks


def test_memory_is_a_few_bytes_per_answered_region():
    pool, *_ = _pool()
    pool.reveal(1, 0, list(range(20)))
    # 4 (id) + 1 (7 bits packed) + 1 (round) + 4 (pixels)
    assert pool.nbytes() == 20 * 10


def test_batched_calls_equal_the_per_image_ones():
    pool, spx, labels, _ = _pool()
    pool.reveal(1, 0, [2, 5])
    pool.reveal(2, 0, [7])
    pool.reveal(2, 2, [1])
    counts = [25, 25, 25]
    table = pool.available_table(counts, before_round=2)
    for i in range(3):
        np.testing.assert_array_equal(table[i], pool.available(i, 25, before_round=2))
    assert table[0, 7] and not table[0, 2]  # round 2's own picks are still selectable in round 2
    assert pool.answered_images() == [0, 2]
    got = pool.targets_of([0, 2], counts)
    for i in (0, 2):
        for a, b in zip(got[i], pool.targets(i, 25), strict=True):
            np.testing.assert_array_equal(a, b)
    for i, row in zip([1, 2], pool.costs_of([1, 2]), strict=True):
        multihot, _ = region_labels(labels[i], spx[i], num_classes=6, trim=0)
        np.testing.assert_array_equal(row, multihot.sum(1))


def test_region_answers_are_cached_beside_the_superpixels_and_recomputed_when_stale(tiny_benchmark, tmp_path,
                                                                                    monkeypatch):
    """The disk cache gives exactly region_labels' answers and the regions' pixel counts; a
    second reader reads files, not labels; a changed label file or a broken answer file is
    computed again; a pool reading through it keeps the same state as one reading labels."""
    import os

    from halo_ray import region_answers as module
    from halo_ray.data import open_dataset
    from halo_ray.data.superpixels import CachedSuperpixels
    from halo_ray.pool import DatasetOracle
    from halo_ray.region_answers import RegionAnswers

    target = open_dataset("cityscapes", tiny_benchmark / "cityscapes", split="train")
    spx = CachedSuperpixels(target, tmp_path / "spx", method="grid", num_superpixels=32)
    spx.ensure(target)
    answers = RegionAnswers(spx, target, trim=3)
    for i in range(len(target)):
        multihot, pixels = answers(i)
        want, _ = region_labels(target.load_label(i), spx(i), num_classes=19, trim=3)
        np.testing.assert_array_equal(multihot, want)
        np.testing.assert_array_equal(pixels, np.bincount(spx(i).reshape(-1), minlength=want.shape[0]))
        assert answers.path(i).is_file() and answers.path(i).is_relative_to(spx.cache.folder)
    first = [answers(i) for i in range(len(target))]

    def no_labels(*_args, **_kwargs):
        raise AssertionError("labels read although the answers are cached")

    monkeypatch.setattr(module, "answer_table", no_labels)
    again = RegionAnswers(spx, target, trim=3)  # another process, say
    for i in range(len(target)):
        np.testing.assert_array_equal(again(i)[0], first[i][0])
    monkeypatch.undo()
    # a label file that changed (its size or time) is read again
    label_file = target.label_path(0)
    os.utime(label_file, ns=(os.stat(label_file).st_atime_ns, os.stat(label_file).st_mtime_ns + 10**9))
    monkeypatch.setattr(module, "answer_table", no_labels)
    with pytest.raises(AssertionError, match="labels read"):
        again(0)
    monkeypatch.undo()
    answers.path(1).write_bytes(b"not an npz")  # a broken file is replaced, never trusted
    np.testing.assert_array_equal(again(1)[0], first[1][0])
    assert answers.path(1).read_bytes()[:2] == b"PK"
    # the pool's state is the same through the cache
    plain = RegionPool(len(target), spx, DatasetOracle(target), trim=3)
    cached = RegionPool(len(target), spx, DatasetOracle(target), trim=3, answers=RegionAnswers(spx, target, trim=3))
    for pool in (plain, cached):
        pool.reveal(1, 0, [3, 1, 4])
        pool.reveal(1, 2, [0, 31])
    assert [plain.costs(i).tolist() for i in range(3)] == [cached.costs(i).tolist() for i in range(3)]
    for key, value in plain.state_dict().items():
        other = cached.state_dict()[key]
        assert np.array_equal(value, other) if isinstance(value, np.ndarray) else value == other, key


def test_region_answers_fill_computes_what_the_cache_lacks_in_threads(tiny_benchmark, tmp_path):
    """``fill`` computes each missing or stale answer once (the count it returns), in threads,
    the same files as reading image by image; a filled cache computes nothing more."""
    import os

    from halo_ray.data import open_dataset
    from halo_ray.data.superpixels import CachedSuperpixels
    from halo_ray.region_answers import RegionAnswers

    target = open_dataset("cityscapes", tiny_benchmark / "cityscapes", split="train")
    one_by_one = CachedSuperpixels(target, tmp_path / "a", method="grid", num_superpixels=32)
    threaded = CachedSuperpixels(target, tmp_path / "b", method="grid", num_superpixels=32)
    for spx in (one_by_one, threaded):
        spx.ensure(target)
    serial, parallel = RegionAnswers(one_by_one, target, trim=3), RegionAnswers(threaded, target, trim=3)
    for i in range(len(target)):
        serial(i)
    assert parallel.fill(workers=3) == len(target) == 8
    assert parallel.fill() == 0 and serial.fill(workers=1) == 0
    for i in range(len(target)):
        for a, b in zip(serial(i), parallel(i), strict=True):
            np.testing.assert_array_equal(a, b)
    label_file = target.label_path(5)
    os.utime(label_file, ns=(os.stat(label_file).st_atime_ns, os.stat(label_file).st_mtime_ns + 10**9))
    assert parallel.fill(workers=2) == 1  # the stale one only
    with pytest.raises(ValueError, match="workers must be None or an integer >= 1, but got workers=0"):
        parallel.fill(workers=0)
