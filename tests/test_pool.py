"""Tests for halo_ray.pool: exact pixel counts, idempotence, suppression, checkpoints, memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_ray.pool import ArrayOracle, DatasetOracle, LabelPool, Oracle, RevealRecord

VOID = 255


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class CountingOracle:
    """ArrayOracle that counts how often each image is asked for."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        self.maps = maps
        self.calls: list[int] = []

    def labels(self, index: int) -> np.ndarray:
        self.calls.append(index)
        return self.maps[index]


def ramp(h: int, w: int) -> np.ndarray:
    """Label map whose value at (r, c) is (r * w + c) % 250: every pixel distinguishable."""
    return (np.arange(h * w) % 250).astype(np.uint8).reshape(h, w)


def make_pool(shapes, maps=None, **kw) -> tuple[LabelPool, CountingOracle]:
    maps = maps if maps is not None else [ramp(h, w) for h, w in shapes]
    oracle = CountingOracle(maps)
    return LabelPool(shapes, oracle, **kw), oracle


def popcount(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def c(*pairs) -> np.ndarray:
    """Centres array [n, 2] from (row, col) pairs."""
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


class DenseModel:
    """Brute-force reference: dense arrays, a Python loop per centre and per window pixel."""

    def __init__(self, shapes, maps) -> None:
        self.maps = maps
        self.mask = [np.zeros(s, bool) for s in shapes]
        self.rounds = [np.zeros(s, np.uint8) for s in shapes]
        self.centres: list[list[tuple[int, int]]] = [[] for _ in shapes]

    def reveal(self, rnd, index, centres, side, unit) -> tuple[int, int]:
        h, w = self.mask[index].shape
        k = side // 2 if unit == "region" else 0
        pixels = void = 0
        for r0, c0 in centres:
            self.centres[index].append((r0, c0))
            for r in range(r0 - k, r0 + k + 1):
                for col in range(c0 - k, c0 + k + 1):
                    if 0 <= r < h and 0 <= col < w and not self.mask[index][r, col]:
                        self.mask[index][r, col] = True
                        self.rounds[index][r, col] = rnd
                        if self.maps[index][r, col] == VOID:
                            void += 1
                        else:
                            pixels += 1
        return pixels, void

    def labels(self, index) -> np.ndarray:
        return np.where(self.mask[index], self.maps[index], VOID).astype(np.uint8)

    def suppressed(self, index, side) -> np.ndarray:
        h, w = self.mask[index].shape
        out = np.zeros((h, w), bool)
        k = side // 2
        for r0, c0 in self.centres[index]:
            out[max(r0 - k, 0) : r0 + k + 1, max(c0 - k, 0) : c0 + k + 1] = True
        return out


def assert_ledger_invariants(pool: LabelPool) -> None:
    rows = pool.ledger()
    mask_bits = sum(popcount(pool.labelled_mask(i)) for i in range(pool.num_images))
    assert sum(r["pixels"] for r in rows) == pool.labelled_pixels == mask_bits - pool.void_pixels
    assert sum(r["void"] for r in rows) == pool.void_pixels
    non_void = sum(
        popcount(pool.labelled_mask(i) & (pool.labels(i) != VOID)) for i in range(pool.num_images)
    )
    assert non_void == pool.labelled_pixels


# --------------------------------------------------------------------------------------------
# exact revealed counts
# --------------------------------------------------------------------------------------------


def test_square_in_the_middle_reveals_side_squared_pixels_with_their_labels():
    pool, _ = make_pool([(10, 12)])
    rec = pool.reveal(1, 0, c((5, 6)), region_size=3)
    assert rec == RevealRecord(round=1, index=0, picks=1, pixels=9, void=0)
    expected = np.full((10, 12), VOID, np.uint8)
    expected[4:7, 5:8] = ramp(10, 12)[4:7, 5:8]
    np.testing.assert_array_equal(pool.labels(0), expected)
    np.testing.assert_array_equal(pool.labelled_mask(0), expected != VOID)
    np.testing.assert_array_equal(pool.round_map(0), (expected != VOID).astype(np.uint8))
    assert pool.labelled_pixels == 9
    assert pool.labelled_pct == pytest.approx(100 * 9 / 120)


@pytest.mark.parametrize(
    ("centre", "side", "pixels"),
    [
        ((0, 0), 3, 4),  # corner: 2 x 2
        ((0, 5), 3, 6),  # top edge: 2 x 3
        ((9, 11), 3, 4),  # opposite corner
        ((5, 0), 5, 15),  # left edge: 5 x 3
        ((0, 0), 5, 9),  # corner: 3 x 3
        ((1, 1), 7, 25),  # 5 x 5 left after clipping
        ((4, 4), 1, 1),
    ],
)
def test_squares_are_clipped_at_the_border(centre, side, pixels):
    pool, _ = make_pool([(10, 12)])
    assert pool.reveal(1, 0, c(centre), region_size=side).pixels == pixels
    assert popcount(pool.labelled_mask(0)) == pixels


def test_overlap_with_an_earlier_round_is_not_charged_again_and_keeps_its_round():
    pool, _ = make_pool([(10, 10)])
    pool.reveal(1, 0, c((5, 5)), region_size=3)
    rec = pool.reveal(2, 0, c((5, 6)), region_size=3)  # shares 6 of its 9 pixels
    assert (rec.picks, rec.pixels) == (1, 3)
    assert pool.labelled_pixels == 12
    rm = pool.round_map(0)
    assert (rm == 1).sum() == 9 and (rm == 2).sum() == 3
    np.testing.assert_array_equal(rm[4:7, 7], [2, 2, 2])
    np.testing.assert_array_equal(rm[4:7, 4:7], np.ones((3, 3)))
    assert pool.round_totals() == {
        1: {"images": 1, "picks": 1, "pixels": 9, "void": 0},
        2: {"images": 1, "picks": 1, "pixels": 3, "void": 0},
    }


def test_overlap_within_one_call_counts_distinct_pixels():
    pool, _ = make_pool([(10, 10)])
    rec = pool.reveal(1, 0, c((5, 5), (5, 6), (6, 6)), region_size=3)
    assert (rec.picks, rec.pixels) == (3, 15)  # 3 x 4 block + 3 pixels of the third square
    rec = pool.reveal(2, 0, c((1, 1), (1, 2), (2, 1), (2, 2)), region_size=3)
    assert (rec.picks, rec.pixels) == (4, 16)  # union of four 3x3 squares = 4 x 4


def test_void_pixels_are_counted_apart_from_the_budget():
    lab = ramp(8, 8)
    lab[3, 3:5] = VOID  # two void pixels inside the square around (3, 4)
    lab[0, 0] = VOID  # outside it
    pool, _ = make_pool([(8, 8)], [lab])
    rec = pool.reveal(1, 0, c((3, 4)), region_size=3)
    assert (rec.pixels, rec.void) == (7, 2)
    assert (pool.labelled_pixels, pool.void_pixels) == (7, 2)
    assert pool.labelled_mask(0)[3, 3] and pool.labels(0)[3, 3] == VOID
    assert pool.round_map(0)[3, 3] == 1  # revealed (not asked again), just void
    assert popcount(pool.labelled_mask(0)) == 9
    assert_ledger_invariants(pool)


def test_pixel_unit_reveals_only_the_centres():
    pool, _ = make_pool([(6, 7)])
    rec = pool.reveal(1, 0, c((0, 0), (2, 3), (5, 6)), region_size=3, unit="pixel")
    assert (rec.picks, rec.pixels, rec.void) == (3, 3, 0)
    expected = np.zeros((6, 7), bool)
    expected[[0, 2, 5], [0, 3, 6]] = True
    np.testing.assert_array_equal(pool.labelled_mask(0), expected)
    np.testing.assert_array_equal(pool.labels(0)[expected], ramp(6, 7)[expected])
    # a later pixel pick on an already labelled pixel costs nothing
    assert pool.reveal(2, 0, c((2, 3)), region_size=1, unit="pixel").pixels == 0


def test_images_are_independent():
    pool, _ = make_pool([(5, 5), (4, 6)])
    pool.reveal(1, 0, c((2, 2)), region_size=3)
    rec = pool.reveal(1, 1, c((2, 2)), region_size=3)
    assert rec.pixels == 9 and rec.index == 1
    assert pool.total_pixels == 25 + 24
    assert pool.labelled_pct == pytest.approx(100 * 18 / 49)
    assert pool.rounds_done(0) == [1] and pool.rounds_done(1) == [1]


def test_empty_centres_record_a_call_that_spends_nothing_and_asks_no_one():
    pool, oracle = make_pool([(5, 5)])
    rec = pool.reveal(1, 0, np.zeros((0, 2), np.int64), region_size=3)
    assert rec == RevealRecord(1, 0, 0, 0, 0)
    assert oracle.calls == [] and pool.rounds_done(0) == [1]


# --------------------------------------------------------------------------------------------
# idempotence and the oracle
# --------------------------------------------------------------------------------------------


def test_repeated_round_image_call_returns_the_record_and_spends_nothing():
    pool, oracle = make_pool([(10, 10)])
    first = pool.reveal(1, 0, c((2, 2), (7, 7)), region_size=3)
    state_before = (pool.labelled_pixels, pool.ledger(), pool.nbytes())
    again = pool.reveal(1, 0, c((2, 2), (7, 7)), region_size=3)
    assert again == first
    assert (pool.labelled_pixels, pool.ledger(), pool.nbytes()) == state_before
    assert oracle.calls == [0]  # asked once, not on the retry
    assert pool.record(1, 0) == first and pool.record(2, 0) is None


def test_repeat_with_other_centres_raises():
    pool, _ = make_pool([(10, 10)])
    pool.reveal(1, 0, c((2, 2), (7, 7)), region_size=3)
    with pytest.raises(
        ValueError, match=r"round=1, index=0.* 2 centres, and the 2 centres given now differ"
    ):
        pool.reveal(1, 0, c((2, 2), (7, 6)), region_size=3)
    with pytest.raises(ValueError, match="same centres"):
        pool.reveal(1, 0, c((7, 7), (2, 2)), region_size=3)  # pick order is part of the call
    with pytest.raises(ValueError, match="region_size=5"):
        pool.reveal(1, 0, c((2, 2), (7, 7)), region_size=5)
    with pytest.raises(ValueError, match="unit='pixel'"):
        pool.reveal(1, 0, c((2, 2), (7, 7)), region_size=3, unit="pixel")
    assert pool.labelled_pixels == 18


def test_oracle_is_asked_once_per_call_and_not_when_nothing_is_new():
    pool, oracle = make_pool([(10, 10), (10, 10)])
    pool.reveal(1, 0, c((2, 2), (2, 3), (7, 7)), region_size=3)
    pool.reveal(1, 1, c((5, 5)), region_size=3)
    assert oracle.calls == [0, 1]
    assert pool.reveal(2, 0, c((2, 2)), region_size=3).pixels == 0
    assert oracle.calls == [0, 1]


def test_earlier_round_after_a_later_one_raises():
    pool, _ = make_pool([(10, 10)])
    pool.reveal(3, 0, c((2, 2)), region_size=3)
    with pytest.raises(ValueError, match=r"index=0 already has round 3, so round=2 is too early"):
        pool.reveal(2, 0, c((5, 5)), region_size=3)
    pool.reveal(3, 0, c((2, 2)), region_size=3)  # the retry of round 3 is still fine


# --------------------------------------------------------------------------------------------
# validation (one boundary per test)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rnd", [1, 255, np.int64(2)])
def test_round_accepts_1_to_255(rnd):
    pool, _ = make_pool([(4, 4)])
    assert pool.reveal(rnd, 0, c((1, 1)), region_size=1).round == int(rnd)


@pytest.mark.parametrize("rnd", [0, -1, 256, True, 1.0])
def test_round_rejects_values_outside_1_to_255(rnd):
    pool, _ = make_pool([(4, 4)])
    with pytest.raises(ValueError, match=rf"round must be .* but got round={rnd!r}"):
        pool.reveal(rnd, 0, c((1, 1)), region_size=1)


@pytest.mark.parametrize("index", [-1, 2, True])
def test_index_out_of_range_raises(index):
    pool, _ = make_pool([(4, 4), (4, 4)])
    with pytest.raises(ValueError, match=rf"index must be an integer in \[0, 1\].*index={index!r}"):
        pool.reveal(1, index, c((1, 1)), region_size=1)


@pytest.mark.parametrize("centre", [(4, 0), (0, 5), (-1, 2), (2, -1)])
def test_centres_outside_the_image_raise_naming_the_centre(centre):
    pool, _ = make_pool([(4, 5)])
    with pytest.raises(
        ValueError, match=rf"\(H, W\)=\(4, 5\).*\(row, col\)=\({centre[0]}, {centre[1]}\)"
    ):
        pool.reveal(1, 0, c((1, 1), centre), region_size=1)
    assert pool.labelled_pixels == 0 and pool.rounds_done(0) == []


def test_centre_on_the_last_row_and_column_is_accepted():
    pool, _ = make_pool([(4, 5)])
    assert pool.reveal(1, 0, c((3, 4)), region_size=3).pixels == 4


@pytest.mark.parametrize(
    "bad", [np.zeros((3,), np.int64), np.zeros((2, 3), np.int64), np.zeros((1, 2))]
)
def test_centres_must_be_integer_n_by_2(bad):
    pool, _ = make_pool([(4, 5)])
    with pytest.raises(ValueError, match="centres must"):
        pool.reveal(1, 0, bad, region_size=1)


@pytest.mark.parametrize("side", [0, 2, 4, -3, 3.0])
def test_region_size_must_be_odd_positive(side):
    pool, _ = make_pool([(4, 5)])
    with pytest.raises(
        ValueError, match=rf"region_size must be an odd integer >= 1, but got region_size={side!r}"
    ):
        pool.reveal(1, 0, c((1, 1)), region_size=side)


def test_unknown_unit_raises():
    pool, _ = make_pool([(4, 5)])
    with pytest.raises(ValueError, match="unit must be one of .*unit='superpixel'"):
        pool.reveal(1, 0, c((1, 1)), region_size=1, unit="superpixel")


@pytest.mark.parametrize("shapes", [[], [(0, 4)], [(4, -1)], [(4,)]])
def test_bad_shapes_raise(shapes):
    with pytest.raises(ValueError, match="shapes"):
        LabelPool(shapes, ArrayOracle([]))


@pytest.mark.parametrize("ignore_index", [-1, 256])
def test_ignore_index_must_fit_uint8(ignore_index):
    with pytest.raises(ValueError, match=rf"ignore_index={ignore_index}"):
        LabelPool([(2, 2)], ArrayOracle([np.zeros((2, 2), np.uint8)]), ignore_index=ignore_index)


def test_oracle_with_the_wrong_shape_or_values_raises():
    pool = LabelPool([(4, 4)], ArrayOracle([np.zeros((4, 5), np.uint8)]))
    with pytest.raises(ValueError, match=r"returned shape \(4, 5\).*\(4, 4\)"):
        pool.reveal(1, 0, c((1, 1)), region_size=1)
    pool = LabelPool([(4, 4)], ArrayOracle([np.full((4, 4), 300, np.int64)]))
    with pytest.raises(ValueError, match=r"\[0, 255\].*\[300, 300\]"):
        pool.reveal(1, 0, c((1, 1)), region_size=1)
    pool = LabelPool([(4, 4)], ArrayOracle([np.zeros((4, 4), np.float32)]))
    with pytest.raises(ValueError, match="integer train ids"):
        pool.reveal(1, 0, c((1, 1)), region_size=1)
    assert pool.labelled_pixels == 0 and pool.ledger() == []


def test_non_default_ignore_index_marks_void_and_fills_unlabelled():
    lab = np.array([[0, 1], [2, 3]], np.uint8)
    pool = LabelPool([(2, 2)], ArrayOracle([lab]), ignore_index=0)
    rec = pool.reveal(1, 0, c((0, 0)), region_size=1, unit="pixel")
    assert (rec.pixels, rec.void) == (0, 1)
    pool.reveal(2, 0, c((1, 1)), region_size=1, unit="pixel")
    np.testing.assert_array_equal(pool.labels(0), [[0, 0], [0, 3]])


def test_torch_centres_are_accepted():
    pool, _ = make_pool([(10, 10)])
    rec = pool.reveal(1, 0, torch.tensor([[5, 5], [0, 0]]), region_size=3)
    assert rec.pixels == 13
    np.testing.assert_array_equal(pool.centres(0), [[5, 5], [0, 0]])


# --------------------------------------------------------------------------------------------
# oracles
# --------------------------------------------------------------------------------------------


@dataclass
class Item:
    image: object
    label: object


def test_dataset_oracle_reads_item_label_as_numpy():
    lab = ramp(3, 4)
    ds = [Item(None, torch.from_numpy(lab.astype(np.int64))), {"label": lab}]
    oracle = DatasetOracle(ds)
    assert isinstance(oracle, Oracle)
    np.testing.assert_array_equal(oracle.labels(0), lab)
    np.testing.assert_array_equal(oracle.labels(1), lab)
    pool = LabelPool([(3, 4), (3, 4)], oracle)
    pool.reveal(1, 0, c((1, 1)), region_size=3)
    np.testing.assert_array_equal(pool.labels(0)[0:3, 0:3], lab[0:3, 0:3])


def test_dataset_oracle_without_labels_raises():
    with pytest.raises(ValueError, match=r"dataset\[0\] has no 'label'"):
        DatasetOracle([object()]).labels(0)


def test_array_oracle_rejects_non_2d_maps():
    with pytest.raises(ValueError, match=r"label_maps\[1\] must be a 2-D"):
        ArrayOracle([np.zeros((2, 2)), np.zeros((2, 2, 3))])


# --------------------------------------------------------------------------------------------
# suppression
# --------------------------------------------------------------------------------------------


def test_suppressed_unions_windows_of_all_rounds():
    pool, _ = make_pool([(9, 9)])
    pool.reveal(1, 0, c((0, 0)), region_size=1)
    pool.reveal(2, 0, c((6, 6)), region_size=1)
    sup = pool.suppressed(0, 5)
    expected = np.zeros((9, 9), bool)
    expected[0:3, 0:3] = True
    expected[4:9, 4:9] = True
    np.testing.assert_array_equal(sup, expected)
    assert not pool.suppressed(0, 1)[1, 1] and pool.suppressed(0, 1)[0, 0]


def test_suppressed_rejects_even_side():
    pool, _ = make_pool([(9, 9)])
    with pytest.raises(ValueError, match="side must be an odd integer >= 1, but got side=4"):
        pool.suppressed(0, 4)


@st.composite
def shapes_and_centres(draw):
    h = draw(st.integers(1, 14))
    w = draw(st.integers(1, 14))
    rounds = draw(
        st.lists(
            st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, w - 1)), max_size=6),
            min_size=1,
            max_size=3,
        )
    )
    return h, w, rounds


@settings(max_examples=60, deadline=None)
@given(data=shapes_and_centres(), side=st.sampled_from([1, 3, 5, 11]))
def test_suppressed_equals_brute_force_window_union(data, side):
    h, w, rounds = data
    pool, oracle = make_pool([(h, w)])
    model = DenseModel([(h, w)], oracle.maps)
    for rnd, centres in enumerate(rounds, start=1):
        pool.reveal(rnd, 0, c(*centres), region_size=3)
        model.reveal(rnd, 0, centres, 3, "region")
    np.testing.assert_array_equal(pool.suppressed(0, side), model.suppressed(0, side))


# --------------------------------------------------------------------------------------------
# ledger invariants against a dense brute-force model (hypothesis)
# --------------------------------------------------------------------------------------------


@st.composite
def runs(draw):
    n = draw(st.integers(1, 3))
    shapes = [(draw(st.integers(1, 12)), draw(st.integers(1, 12))) for _ in range(n)]
    maps = []
    for h, w in shapes:
        values = draw(st.lists(st.sampled_from([0, 1, 7, VOID]), min_size=h * w, max_size=h * w))
        maps.append(np.array(values, np.uint8).reshape(h, w))
    steps = []
    for rnd in range(1, draw(st.integers(1, 4)) + 1):
        for index in draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n)):
            h, w = shapes[index]
            centres = draw(
                st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, w - 1)), max_size=8)
            )
            unit = draw(st.sampled_from(["region", "pixel"]))
            side = draw(st.sampled_from([1, 3, 5]))
            steps.append((rnd, index, centres, side, unit))
    return shapes, maps, steps


@settings(max_examples=80, deadline=None)
@given(run=runs(), replay=st.booleans())
def test_ledger_and_views_match_a_dense_model(run, replay):
    shapes, maps, steps = run
    pool = LabelPool(shapes, ArrayOracle(maps))
    model = DenseModel(shapes, maps)
    records = []
    for rnd, index, centres, side, unit in steps:
        rec = pool.reveal(rnd, index, c(*centres), region_size=side, unit=unit)
        pixels, void = model.reveal(rnd, index, centres, side, unit)
        assert (rec.round, rec.index, rec.picks, rec.pixels, rec.void) == (
            rnd,
            index,
            len(centres),
            pixels,
            void,
        )
        records.append(rec)
    if replay:  # retrying every call changes nothing
        ledger = pool.ledger()
        for (rnd, index, centres, side, unit), rec in zip(steps, records, strict=True):
            assert pool.reveal(rnd, index, c(*centres), region_size=side, unit=unit) == rec
        assert pool.ledger() == ledger
    assert_ledger_invariants(pool)
    for i in range(len(shapes)):
        np.testing.assert_array_equal(pool.labelled_mask(i), model.mask[i])
        np.testing.assert_array_equal(pool.labels(i), model.labels(i))
        np.testing.assert_array_equal(pool.round_map(i), model.rounds[i])
    totals = pool.round_totals()
    assert sum(t["pixels"] for t in totals.values()) == pool.labelled_pixels
    assert sum(t["picks"] for t in totals.values()) == sum(len(s[2]) for s in steps)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def filled_pool() -> tuple[LabelPool, list[np.ndarray]]:
    shapes = [(20, 30), (17, 9), (5, 5)]
    rng = np.random.default_rng(0)
    maps = [
        np.where(rng.random(s) < 0.1, VOID, rng.integers(0, 19, s)).astype(np.uint8) for s in shapes
    ]
    pool = LabelPool(shapes, ArrayOracle(maps))
    pool.reveal(1, 0, c((0, 0), (10, 10), (19, 29)), region_size=3)
    pool.reveal(1, 1, c((3, 3)), region_size=5)
    pool.reveal(2, 0, c((10, 11), (4, 20)), region_size=3)
    pool.reveal(2, 1, c((16, 8), (3, 3)), region_size=1, unit="pixel")
    pool.reveal(2, 2, np.zeros((0, 2), np.int64), region_size=3)
    return pool, maps


def only_arrays_and_primitives(value) -> bool:
    if isinstance(value, np.ndarray) or value is None:
        return True
    if isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(only_arrays_and_primitives(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) for k in value) and all(
            only_arrays_and_primitives(v) for v in value.values()
        )
    return False


def roundtrip(state: dict, tmp_path) -> dict:
    """Through a run checkpoint file, as a run stores the pool: arrays become tensors."""
    from halo_ray.run import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "state.pt", {"pool": state, "step": 3})
    loaded = load_checkpoint(tmp_path / "state.pt")["pool"]
    assert isinstance(loaded["mask_bits"], torch.Tensor)
    return loaded


def test_state_dict_holds_only_numpy_arrays_and_primitives():
    """No tensors: the pool's process never imports torch (tests/test_startup.py)."""
    pool, _ = filled_pool()
    assert only_arrays_and_primitives(pool.state_dict())


@pytest.mark.parametrize("through", ["checkpoint", "arrays"])
def test_state_dict_roundtrip_restores_everything_and_later_reveals_match(through, tmp_path):
    pool, maps = filled_pool()
    fresh = LabelPool(pool.shapes, ArrayOracle(maps))
    state = pool.state_dict()
    fresh.load_state_dict(roundtrip(state, tmp_path) if through == "checkpoint" else state)
    for i in range(pool.num_images):
        np.testing.assert_array_equal(fresh.labelled_mask(i), pool.labelled_mask(i))
        np.testing.assert_array_equal(fresh.labels(i), pool.labels(i))
        np.testing.assert_array_equal(fresh.round_map(i), pool.round_map(i))
        np.testing.assert_array_equal(fresh.suppressed(i, 11), pool.suppressed(i, 11))
        np.testing.assert_array_equal(fresh.centres(i), pool.centres(i))
        assert fresh.rounds_done(i) == pool.rounds_done(i)
    assert fresh.ledger() == pool.ledger()
    assert (fresh.labelled_pixels, fresh.void_pixels, fresh.nbytes()) == (
        pool.labelled_pixels,
        pool.void_pixels,
        pool.nbytes(),
    )
    # a retried old call is still free, and new calls behave identically
    assert fresh.reveal(2, 0, c((10, 11), (4, 20)), region_size=3) == pool.record(2, 0)
    for p in (pool, fresh):
        p.reveal(3, 0, c((11, 11), (0, 29)), region_size=3)
        p.reveal(3, 1, c((0, 0)), region_size=3)
    assert fresh.ledger() == pool.ledger()
    for i in range(pool.num_images):
        np.testing.assert_array_equal(fresh.labels(i), pool.labels(i))
        np.testing.assert_array_equal(fresh.round_map(i), pool.round_map(i))
    assert_ledger_invariants(fresh)


def test_state_dict_does_not_alias_the_pool():
    pool, _ = filled_pool()
    state = pool.state_dict()
    before = state["mask_bits"].copy()
    pool.reveal(3, 2, c((2, 2)), region_size=3)
    np.testing.assert_array_equal(state["mask_bits"], before)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ([(20, 30), (17, 9)], "state holds 3 images, but this pool has 2"),
        (
            [(20, 30), (17, 9), (5, 6)],
            r"state image 2 has shape \(H, W\)=\(5, 5\), but this pool has \(5, 6\)",
        ),
    ],
)
def test_load_state_dict_names_shape_mismatches(shapes, match):
    pool, _ = filled_pool()
    other = LabelPool(shapes, ArrayOracle([]))
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(pool.state_dict())


def test_load_state_dict_rejects_other_ignore_index_and_tampering_without_changing_the_pool():
    pool, maps = filled_pool()
    state = pool.state_dict()
    with pytest.raises(ValueError, match="ignore_index=255 differs .* ignore_index=0"):
        LabelPool(pool.shapes, ArrayOracle(maps), ignore_index=0).load_state_dict(state)

    target = LabelPool(pool.shapes, ArrayOracle(maps))
    target.reveal(1, 2, c((2, 2)), region_size=1)
    bad_mask = dict(state, mask_bits=state["mask_bits"].copy())
    bad_mask["mask_bits"][0] ^= 1  # flip a bit that no pixel index backs
    with pytest.raises(ValueError, match="image 0's mask_bits do not match"):
        target.load_state_dict(bad_mask)
    bad_ledger = dict(state, calls=[dict(row) for row in state["calls"]])
    bad_ledger["calls"][0]["pixels"] += 1
    with pytest.raises(ValueError, match="image 0 round 1 stores"):
        target.load_state_dict(bad_ledger)
    with pytest.raises(ValueError, match="state\\['format'\\]"):
        target.load_state_dict({"shapes": state["shapes"]})
    assert target.labelled_pixels == 1 and target.ledger() == [
        {"round": 1, "index": 2, "picks": 1, "pixels": 1, "void": 0}
    ]


# --------------------------------------------------------------------------------------------
# memory (target, docs/architecture.md §5: <= 1.1 bit per target pixel plus O(labelled))
# --------------------------------------------------------------------------------------------

#: Bytes per revealed pixel allowed on top of 1.1 bit/pixel: 6 stored (int32 index, uint8
#: round, uint8 label) + 9 per 3x3 pick amortised over its 9 pixels + ledger rows.
BYTES_PER_LABELLED = 8


def test_memory_of_a_10_image_1000x2000_pool_at_1_percent():
    h, w, n = 1000, 2000, 10
    label_map = ramp(h, w)
    pool = LabelPool([(h, w)] * n, ArrayOracle([label_map] * n))
    rng = np.random.default_rng(0)
    grid_r, grid_c = np.arange(1, h - 1, 3), np.arange(1, w - 1, 3)  # disjoint 3x3 squares
    picks = h * w // 100 // 9  # 2222 squares of 9 pixels: 1 % labelled
    assert pool.nbytes() <= 1.1 / 8 * pool.total_pixels
    for i in range(n):
        cells = rng.choice(len(grid_r) * len(grid_c), size=picks, replace=False)
        centres = np.stack([grid_r[cells // len(grid_c)], grid_c[cells % len(grid_c)]], axis=1)
        assert pool.reveal(1, i, centres, region_size=3).pixels == 9 * picks
    revealed = pool.labelled_pixels + pool.void_pixels
    assert pool.labelled_pct == pytest.approx(100 * 9 * picks / (h * w))
    assert pool.nbytes() == n * (h * w // 8) + 6 * revealed + 9 * picks * n + 56 * n
    assert pool.nbytes() <= 1.1 / 8 * pool.total_pixels + BYTES_PER_LABELLED * revealed
    bits_per_pixel = 8 * pool.nbytes() / pool.total_pixels
    assert bits_per_pixel < 1.6  # vs 8 for a dense uint8 label map


# --------------------------------------------------------------------------------------------
# chunk calls: one actor round trip per chunk of images
# --------------------------------------------------------------------------------------------


def test_reveal_many_is_reveal_per_image_and_centres_of_is_the_compact_suppression_state():
    from halo_ray.acquisition import square_mask

    shapes = [(20, 30), (16, 16), (25, 9)]
    a, _ = make_pool(shapes)
    b, _ = make_pool(shapes)
    rng = np.random.default_rng(0)
    for r in (1, 2):
        centres = [np.stack([rng.integers(0, h, 4), rng.integers(0, w, 4)], 1) for h, w in shapes]
        assert b.images_without(r) == [0, 1, 2]
        records = b.reveal_many(r, [0, 1, 2], centres, region_size=3, unit="region")
        assert records == [a.reveal(r, i, c, region_size=3) for i, c in enumerate(centres)]
        assert b.reveal_many(r, [1], [centres[1]], region_size=3) == [records[1]]  # a retried chunk is free
        assert b.images_without(r) == [] and b.images_without(r + 1) == [0, 1, 2]
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert np.array_equal(value, b.state_dict()[key]) if isinstance(value, np.ndarray) else value == b.state_dict()[key]
    for i, earlier in enumerate(b.centres_of([0, 1, 2])):
        assert earlier.shape == (8, 2)
        mask = square_mask(torch.as_tensor(earlier, dtype=torch.int64), shapes[i], 11).numpy()
        np.testing.assert_array_equal(mask, b.suppressed(i, 11))
    with pytest.raises(ValueError, match="one centres array per index"):
        b.reveal_many(3, [0, 1], [centres[0]], region_size=3)
    with pytest.raises(ValueError):  # image 2's centre is outside its 25x9 image: nothing is revealed
        b.reveal_many(3, [0, 2], [centres[0], np.array([[0, 20]])], region_size=3)
    assert b.images_without(3) == [0, 1, 2]
