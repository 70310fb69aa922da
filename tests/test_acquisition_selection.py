"""Greedy selection: budgets, tie-break, suppression across rounds, RA/PA units, exact
agreement with the reference's argmax-per-pick loop (hypothesis property test), and the device
path (run on the CPU here) picking exactly the host walk's centres."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_ray.acquisition import picks_per_round, select, select_centres, selection, square_mask
from halo_ray.acquisition.selection import _greedy, _greedy_device


def reference_greedy(score, active, picks, region_size, suppression, unit="region"):
    """The reference's loop: torch.max over the whole map per pick, window reset to -inf."""
    score, active = score.clone(), active.clone()
    selected = torch.zeros_like(active)
    score[active] = -float("inf")
    rk, mk = region_size // 2, suppression // 2
    centres = []
    for _ in range(picks):
        values, rows = torch.max(score, dim=0)
        best, col = torch.max(values, dim=0)
        if best == -float("inf"):
            break
        w = col.item()
        h = rows[w].item()
        centres.append((h, w))
        score[max(h - mk, 0) : h + mk + 1, max(w - mk, 0) : w + mk + 1] = -float("inf")
        active[max(h - mk, 0) : h + mk + 1, max(w - mk, 0) : w + mk + 1] = True
        if unit == "region":
            selected[max(h - rk, 0) : h + rk + 1, max(w - rk, 0) : w + rk + 1] = True
        else:
            selected[h, w] = True
    return centres, selected, active


def _clipped_area(centres: torch.Tensor, shape: tuple[int, int], side: int) -> int:
    k = side // 2
    total = 0
    for r, c in centres.tolist():
        rows = min(r + k, shape[0] - 1) - max(r - k, 0) + 1
        cols = min(c + k, shape[1] - 1) - max(c - k, 0) + 1
        total += rows * cols
    return total


# ----------------------------------------------------------------------------- budgets


def test_picks_per_round_region_unit():
    assert (
        picks_per_round(1024, 2048, budget_pct=5, rounds=5, region_size=3) == 2331
    )  # ceil(20971.52/9)
    assert picks_per_round(640, 1280, budget_pct=5, rounds=5, region_size=3) == 911
    assert picks_per_round(128, 256, budget_pct=1, rounds=5, region_size=3) == 8  # ceil(65.536/9)


def test_picks_per_round_pixel_unit_counts_centre_pixels():
    assert picks_per_round(1024, 2048, budget_pct=5, rounds=5, region_size=3, unit="pixel") == 20972
    # RIPU's 40 pixels per 1280x640 image over 5 rounds
    assert (
        picks_per_round(640, 1280, budget_pct=0.0048828125, rounds=5, region_size=3, unit="pixel")
        == 8
    )


def test_picks_per_round_is_exact_on_exact_multiples():
    # 90*100 * 2.2 % / 1 round / 1 = 198; 300*300 * 0.9 % / 3 rounds / 9 = 30 exactly
    assert picks_per_round(90, 100, budget_pct=2.2, rounds=1, region_size=1) == 198
    assert picks_per_round(300, 300, budget_pct=0.9, rounds=3, region_size=3) == 30
    # the reference's float arithmetic overshoots this exact multiple by one
    assert 300 * 300 * (0.9 / 100 / 3) / 9 > 30
    assert picks_per_round(300, 300, budget_pct=0.9, rounds=3, region_size=3, reference=True) == 31


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget_pct": 0}, "budget_pct must be in \\(0, 100\\], but got budget_pct=0"),
        ({"budget_pct": 100.1}, "budget_pct=100.1"),
        ({"budget_pct": -1}, "budget_pct=-1"),
        ({"rounds": 0}, "rounds must be an integer >= 1, but got rounds=0"),
        ({"region_size": 2}, "region_size must be an odd integer >= 1, but got region_size=2"),
        ({"unit": "superpixel"}, "unit must be one of"),
    ],
)
def test_picks_per_round_validation(kwargs, match):
    args = {"budget_pct": 5, "rounds": 5, "region_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        picks_per_round(64, 64, **args)


def test_picks_per_round_accepts_boundaries():
    assert picks_per_round(10, 10, budget_pct=100, rounds=1, region_size=1) == 100
    assert picks_per_round(10, 10, budget_pct=1e-9, rounds=1, region_size=1) == 1


# ----------------------------------------------------------------------------- selection


def test_constant_map_tie_break_smallest_column_then_row():
    centres = select_centres(torch.zeros(8, 10), picks=100, suppression=3)
    expected = [(r, c) for c in range(0, 10, 2) for r in range(0, 8, 2)]
    assert centres.tolist() == [list(p) for p in expected]
    ref, _, _ = reference_greedy(
        torch.zeros(8, 10), torch.zeros(8, 10, dtype=torch.bool), 100, 1, 3
    )
    assert [tuple(p) for p in centres.tolist()] == ref


def test_exactly_picks_when_space_allows_and_squares_never_overlap():
    gen = torch.Generator().manual_seed(0)
    score = torch.rand((60, 80), generator=gen)
    picks = picks_per_round(60, 80, budget_pct=5, rounds=5, region_size=3)  # 6
    selected, active = select(score, picks=picks, region_size=3, suppression=5)
    centres = select_centres(score, picks=picks, suppression=5)
    assert centres.shape == (picks, 2)
    # no overlap: the labelled count is the sum of the clipped squares
    assert int(selected.sum()) == _clipped_area(centres, (60, 80), 3)
    assert torch.equal(active, square_mask(centres, (60, 80), 5))


def test_selected_count_with_border_clipping_is_exact():
    score = torch.zeros(7, 9)
    score[0, 0] = 5.0  # corner: 2x2 of the 3x3 square
    score[3, 8] = 4.0  # right edge: 3x2
    score[4, 4] = 3.0  # interior: 3x3
    selected, _ = select(score, picks=3, region_size=3, suppression=5)
    assert int(selected.sum()) == 4 + 6 + 9
    assert select_centres(score, picks=3, suppression=5).tolist() == [[0, 0], [3, 8], [4, 4]]


def test_no_centre_inside_a_suppressed_window_and_minimum_distance():
    gen = torch.Generator().manual_seed(1)
    score = torch.rand((40, 50), generator=gen)
    centres = select_centres(score, picks=40, suppression=7)
    for i in range(len(centres)):
        for j in range(i):
            assert int((centres[i] - centres[j]).abs().max()) > 3


def test_suppression_persists_across_two_rounds():
    gen = torch.Generator().manual_seed(2)
    first, second = torch.rand((30, 40), generator=gen), torch.rand((30, 40), generator=gen)
    selected1, active1 = select(first, picks=10, region_size=3, suppression=5)
    selected2, active2 = select(second, picks=10, region_size=3, suppression=5, active=active1)
    centres2 = select_centres(second, picks=10, suppression=5, active=active1)
    assert not active1[centres2[:, 0], centres2[:, 1]].any()  # no round-2 centre in round-1 windows
    assert not (selected1 & selected2).any()  # labelled squares stay disjoint across rounds
    assert torch.equal(active2 & active1, active1)  # active only grows
    ref_c, ref_sel, ref_act = reference_greedy(second, active1, 10, 3, 5)
    assert [tuple(p) for p in centres2.tolist()] == ref_c
    assert torch.equal(selected2, ref_sel) and torch.equal(active2, ref_act)


def test_pixel_unit_labels_only_the_centres():
    gen = torch.Generator().manual_seed(3)
    score = torch.rand((20, 30), generator=gen)
    selected, active = select(score, picks=12, region_size=3, suppression=3, unit="pixel")
    centres = select_centres(score, picks=12, suppression=3)
    assert int(selected.sum()) == 12
    assert selected[centres[:, 0], centres[:, 1]].all()
    assert torch.equal(active, square_mask(centres, (20, 30), 3))


def test_fewer_centres_than_picks_returns_what_exists():
    # 5x5 constant map, suppression 5 (radius 2): (0,0), (3,0), (0,3), (3,3), then nothing is free
    centres = select_centres(torch.zeros(5, 5), picks=10, suppression=5)
    assert centres.tolist() == [[0, 0], [3, 0], [0, 3], [3, 3]]
    selected, active = select(torch.zeros(5, 5), picks=10, region_size=1, suppression=5)
    assert int(selected.sum()) == 4 and bool(active.all())


def test_minus_infinity_is_never_picked_and_all_active_gives_nothing():
    score = torch.full((6, 6), -math.inf)
    score[2, 3] = 1.0
    assert select_centres(score, picks=5, suppression=1).tolist() == [[2, 3]]
    everything = torch.ones((6, 6), dtype=torch.bool)
    selected, active = select(
        torch.rand(6, 6), picks=5, region_size=3, suppression=3, active=everything
    )
    assert not selected.any() and bool(active.all())
    assert select_centres(torch.rand(6, 6), picks=0, suppression=3).shape == (0, 2)


def test_many_chunks_of_candidates_match_the_reference():
    # a large suppression blocks most candidates, so the walk needs several candidate chunks
    gen = torch.Generator().manual_seed(4)
    score = torch.rand((150, 170), generator=gen)
    picks = 600
    centres = select_centres(score, picks=picks, suppression=9)
    ref, _, _ = reference_greedy(score, torch.zeros(150, 170, dtype=torch.bool), picks, 1, 9)
    assert [tuple(p) for p in centres.tolist()] == ref


def test_partial_selection_on_large_maps_is_exact():
    """The CPU's sampled bound (maps of 64k+ pixels) finds exactly the k-th largest, with ties,
    with most entries -inf, and when the sample sees only the largest entries (the bound
    misjudges and the whole map is partitioned)."""
    import numpy as np

    from halo_ray.acquisition.selection import _SAMPLE_SIZE, _kth_largest

    gen = torch.Generator().manual_seed(7)
    n = 300_000
    stride = n // _SAMPLE_SIZE
    uniform = torch.rand(n, generator=gen)
    ties = torch.randint(0, 50, (n,), generator=gen).to(torch.float32)
    mostly_unavailable = torch.where(torch.rand(n, generator=gen) < 0.9, torch.tensor(-math.inf), uniform)
    sampled_high = torch.zeros(n)
    sampled_high[::stride] = 1.0 + torch.rand(len(sampled_high[::stride]), generator=gen)  # the sample: all high
    for values in (uniform, ties, mostly_unavailable, sampled_high, uniform.double()):
        finite = int(torch.isfinite(values).sum())
        for k in (1, 37, 4096, 37_296, finite // 2, finite):
            assert _kth_largest(values, k) == float(np.sort(values.numpy())[-k]), (values.dtype, k)


def test_large_maps_with_plateaus_and_earlier_picks_match_the_reference():
    """The CPU path over maps large enough for the sampled bound: the reference's centres,
    plateau ties included (column-major order), and a [1, W] map (a view when flattened) is
    left as the caller gave it."""
    gen = torch.Generator().manual_seed(11)
    score = (torch.rand((320, 400), generator=gen) * 20).floor() / 20  # 20 levels: plateaus everywhere
    active = torch.rand((320, 400), generator=gen) < 0.3
    centres = select_centres(score, picks=300, suppression=5, active=active)
    ref, _, _ = reference_greedy(score, active, 300, 1, 5)
    assert [tuple(p) for p in centres.tolist()] == ref
    row = torch.rand((1, 70_000), generator=gen)
    given_row = row.clone()
    row_active = torch.zeros_like(row, dtype=torch.bool)
    row_active[0, ::3] = True
    centres = select_centres(row, picks=40, suppression=3, active=row_active)
    ref, _, _ = reference_greedy(row, row_active, 40, 1, 3)
    assert [tuple(p) for p in centres.tolist()] == ref
    assert torch.equal(row, given_row)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"picks": -1}, "picks must be an integer >= 0, but got picks=-1"),
        ({"suppression": 4}, "suppression must be an odd integer >= 1, but got suppression=4"),
        ({"region_size": 0}, "region_size must be an odd integer >= 1, but got region_size=0"),
        ({"unit": "square"}, "unit must be one of"),
        ({"active": torch.zeros(5, 6, dtype=torch.bool)}, "active must have the score's shape"),
        ({"active": torch.zeros(6, 6)}, "active must be a bool"),
    ],
)
def test_select_validation(kwargs, match):
    args = {"picks": 2, "region_size": 3, "suppression": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        select(torch.rand(6, 6), **args)


def test_nan_scores_are_rejected():
    score = torch.rand(4, 4)
    score[1, 1] = math.nan
    with pytest.raises(ValueError, match="score contains NaN"):
        select(score, picks=1, region_size=1, suppression=1)


def test_square_mask_union_clipped_at_border():
    mask = square_mask(torch.tensor([[0, 0], [2, 2]]), (4, 5), 3)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert not square_mask(torch.zeros((0, 2), dtype=torch.int64), (3, 3), 5).any()
    with pytest.raises(ValueError, match="side must be an odd integer"):
        square_mask(torch.tensor([[0, 0]]), (3, 3), 2)


# ----------------------------------------------------------------------------- property test


@st.composite
def _selection_problem(draw):
    height = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    levels = draw(st.integers(1, 4))  # few levels -> many ties
    values = draw(
        st.lists(st.integers(0, levels), min_size=height * width, max_size=height * width)
    )
    score = torch.tensor(values, dtype=torch.float32).reshape(height, width)
    active_bits = draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
    use_active = draw(st.booleans())
    active = torch.tensor(active_bits).reshape(height, width) if use_active else None
    region_size = draw(st.sampled_from([1, 3, 5]))
    suppression = draw(st.sampled_from([1, 3, 5, 7, 9]))
    picks = draw(st.integers(0, 12))
    unit = draw(st.sampled_from(["region", "pixel"]))
    return score, active, picks, region_size, suppression, unit


@settings(max_examples=150, deadline=None)
@given(_selection_problem())
def test_select_property_matches_reference_and_invariants(problem):
    score, active, picks, region_size, suppression, unit = problem
    height, width = score.shape
    prior = active if active is not None else torch.zeros((height, width), dtype=torch.bool)
    selected, new_active = select(
        score,
        picks=picks,
        region_size=region_size,
        suppression=suppression,
        active=active,
        unit=unit,
    )
    centres = select_centres(score, picks=picks, suppression=suppression, active=active)
    ref_centres, ref_selected, ref_active = reference_greedy(
        score, prior, picks, region_size, suppression, unit
    )
    assert [tuple(p) for p in centres.tolist()] == ref_centres
    assert torch.equal(selected, ref_selected)
    assert torch.equal(new_active, ref_active)
    # invariants: count, suppression, no overlap
    n = len(centres)
    assert n <= picks
    if n < picks:  # the map ran out: every pixel is suppressed
        assert bool(new_active.all())
    assert not prior[centres[:, 0], centres[:, 1]].any() if n else True
    for i in range(n):
        for j in range(i):
            assert int((centres[i] - centres[j]).abs().max()) > suppression // 2
    side = region_size if unit == "region" else 1
    if suppression >= 2 * side - 1:  # squares cannot overlap
        assert int(selected.sum()) == _clipped_area(centres, (height, width), side)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_selection_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    score = torch.rand((120, 160), generator=gen)
    score[score < 0.3] = 0.3  # ties
    active = torch.rand((120, 160), generator=gen) < 0.2
    cpu = select(score, picks=50, region_size=3, suppression=5, active=active)
    gpu = select(score.to("cuda"), picks=50, region_size=3, suppression=5, active=active.to("cuda"))
    assert gpu[0].device.type == "cuda"
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


# ----------------------------------------------------------------------------- device path


def _assert_device_path_matches_walk(score, picks, suppression, active=None):
    """``_greedy_device`` (run on the CPU) picks exactly ``_greedy``'s centres, in order."""
    walked = _greedy(score, picks, suppression, active)
    centres = _greedy_device(score, picks, suppression, active)
    assert centres.dtype == torch.int64 and centres.device == score.device
    assert centres.shape == (len(walked), 2)
    assert [tuple(c) for c in centres.tolist()] == walked


def _random_score(gen, height, width, dtype):
    """A random map of one of several kinds: continuous, few levels (ties), constant, with
    ``-inf`` rectangles and pixels, and now and then ``+inf`` pixels."""
    kind = int(torch.randint(0, 4, (1,), generator=gen))
    score = torch.rand((height, width), generator=gen, dtype=torch.float64)
    if kind == 1:  # few levels -> many ties
        levels = int(torch.randint(1, 5, (1,), generator=gen))
        score = torch.floor(score * levels)
    elif kind == 2:  # a plateau: the greedy pass walks it in column-major order
        score = torch.zeros_like(score)
    elif kind == 3:  # smooth ramps rounded to a few decimals: long runs of near-equal ties
        rows = torch.arange(height, dtype=torch.float64)[:, None]
        cols = torch.arange(width, dtype=torch.float64)[None, :]
        score = torch.round((torch.sin(rows / 7) + torch.cos(cols / 11) + 0.1 * score) * 20)
    if bool(torch.rand((1,), generator=gen) < 0.4):  # a -inf rectangle and -inf pixels
        r0, c0 = (
            int(torch.randint(0, height, (1,), generator=gen)),
            int(torch.randint(0, width, (1,), generator=gen)),
        )
        score[r0 : r0 + height // 3 + 1, c0 : c0 + width // 3 + 1] = -math.inf
        score[torch.rand((height, width), generator=gen) < 0.1] = -math.inf
    if bool(torch.rand((1,), generator=gen) < 0.15):
        score[torch.rand((height, width), generator=gen) < 0.02] = math.inf
    return score.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("suppression", [1, 3, 11, 25])
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (23, 1), (37, 53), (128, 256)])
def test_device_path_matches_walk_on_random_maps(shape, suppression, dtype):
    height, width = shape
    gen = torch.Generator().manual_seed(height * 1000 + width * 10 + suppression)
    free_per_window = max(1, (height * width) // ((suppression // 2 + 1) ** 2))
    for _ in range(2 if height * width > 10_000 else 5):  # the large maps: long chains on CPU
        score = _random_score(gen, height, width, dtype)
        active = None
        if bool(torch.rand((1,), generator=gen) < 0.5):
            density = float(torch.rand((1,), generator=gen)) * 0.6
            active = torch.rand((height, width), generator=gen) < density
        choices = [0, 1, 2, free_per_window // 3 + 1, free_per_window, height * width + 5]
        picks = choices[int(torch.randint(0, len(choices), (1,), generator=gen))]
        _assert_device_path_matches_walk(score, picks, suppression, active)


def test_device_path_on_plateaus_and_edge_cases():
    # constant maps: ties in column-major order, the longest fixpoint chains
    for shape, suppression in [((40, 60), 3), ((33, 70), 11), ((5, 5), 5), ((1, 50), 3)]:
        for picks in (1, 7, 10_000):
            _assert_device_path_matches_walk(torch.zeros(shape), picks, suppression)
    # nothing available: all -inf, all active, no picks
    _assert_device_path_matches_walk(torch.full((6, 7), -math.inf), 3, 3)
    _assert_device_path_matches_walk(torch.rand(6, 7), 3, 3, torch.ones(6, 7, dtype=torch.bool))
    _assert_device_path_matches_walk(torch.rand(6, 7), 0, 3)
    assert _greedy_device(torch.rand(6, 7), 0, 3, None).shape == (0, 2)
    # one available pixel
    score = torch.full((9, 9), -math.inf)
    score[4, 6] = -1e30
    assert _greedy_device(score, 5, 3, None).tolist() == [[4, 6]]


def test_device_path_over_several_candidate_chunks(monkeypatch):
    # suppression 25 on 150x170 leaves room for far fewer than 600 picks: every chunk runs dry,
    # so later chunks (blocked by the earlier chunks' picks) are resolved too
    gen = torch.Generator().manual_seed(6)
    score = torch.rand((150, 170), generator=gen)
    _assert_device_path_matches_walk(score, 600, 25)
    # tiny chunks: many of them, and (on rounded maps) ties straddling the chunk thresholds
    monkeypatch.setattr(selection, "_MIN_CHUNK", 7)
    monkeypatch.setattr(selection, "_CANDIDATES_PER_PICK", 0)
    monkeypatch.setattr(selection, "_CHUNK_GROWTH", 1)
    _assert_device_path_matches_walk(score, 300, 9)
    _assert_device_path_matches_walk(torch.round(score * 60) / 60, 300, 9)
    active = torch.rand((150, 170), generator=gen) < 0.3
    _assert_device_path_matches_walk(torch.round(score * 30) / 30, 10_000, 5, active)


def test_device_path_settings_do_not_change_the_picks(monkeypatch):
    # float64 ranks (used above 2^24 candidates) and a stop test after every iteration
    gen = torch.Generator().manual_seed(7)
    score = torch.round(torch.rand((64, 96), generator=gen) * 5)
    expected = _greedy(score, 200, 5, None)
    monkeypatch.setattr(selection, "_FLOAT32_RANKS", 0)
    monkeypatch.setattr(selection, "_FIXPOINT_CHECK", 1)
    assert [tuple(c) for c in _greedy_device(score, 200, 5, None).tolist()] == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_select_centres_uses_the_device_path_and_matches_cpu(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    score = torch.round(torch.rand((300, 500), generator=gen) * 50) / 50  # ties
    active = torch.rand((300, 500), generator=gen) < 0.2
    cpu = select_centres(score, picks=700, suppression=11, active=active)

    def walk_not_allowed(*args):
        raise AssertionError("the host walk ran on a CUDA score")

    monkeypatch.setattr(selection, "_greedy", walk_not_allowed)
    gpu = select_centres(score.cuda(), picks=700, suppression=11, active=active.cuda())
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("cap", [0, 1, 10**9])
def test_device_path_hands_long_chains_to_the_host_walk_with_the_same_picks(monkeypatch, cap):
    """A chunk unsettled after ``_FIXPOINT_MAX`` iterations (a plateau) is finished by the walk:
    the same picks whether it takes over at once, after one group, or never."""
    monkeypatch.setattr(selection, "_FIXPOINT_MAX", cap)
    gen = torch.Generator().manual_seed(9)
    for score in (torch.zeros((40, 60)), torch.round(torch.rand((50, 70), generator=gen) * 4)):
        expected = _greedy(score, 150, 5, None)
        assert [tuple(c) for c in _greedy_device(score, 150, 5, None).tolist()] == expected
