"""Greedy region (RA) / pixel (PA) selection on one image's score map.

The reference code picks with ``torch.max`` over the whole map once per pick and writes
``-inf`` into the suppression window: O(picks·H·W). Here the map is ordered once (highest
score first, ties by smallest column then smallest row - the reference's ``torch.max`` order),
and the ordered candidates are walked once, skipping centres that an earlier pick (or an
earlier round, via ``active``) suppressed. A pick costs one slice assignment of its
``suppression²`` window, never a pass over the map. Only as many top candidates as needed are ordered: the walk takes
the best chunk by a partial selection, and a further chunk only if that one runs dry.

On a GPU the walk would cost a host transfer per chunk and a Python visit per free
candidate, so there each chunk's greedy pass is instead solved on the device as the fixpoint
of a whole-map tensor iteration (``_greedy_device``), with a bounded number of host
synchronisations: a few per chunk and one per group of iterations, none per pick.

The result is the reference's greedy choice exactly: the same centres in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_count, check_odd
from .budget import _check_unit, picks_per_round

__all__ = ["picks_per_round", "select", "select_centres", "square_mask"]

# First chunk of the candidate order: picks × this many candidates per pick (at least).
_CANDIDATES_PER_PICK = 16
_MIN_CHUNK = 4096
# A chunk that runs dry is followed by one this many times larger.
_CHUNK_GROWTH = 4
# Entries of the strided sample that bounds a CPU partial selection (``_kth_largest``), and
# how many sample ranks below the expected one the bound goes.
_SAMPLE_SIZE = 32768
_SAMPLE_MARGIN = 64
# Candidates screened per vectorised gather in the walk (doubling up to the maximum).
_WALK_BATCH = 256
_WALK_BATCH_MAX = 8192
# Device path: fixpoint iterations between two stop tests (host synchronisations), at most.
_FIXPOINT_CHECK = 8
# Device path: a chunk still unsettled after this many fixpoint iterations (long chains of ties,
# about two iterations per pick on a plateau) is finished by the host walk, exactly.
_FIXPOINT_MAX = 64
# Device path: chunks of at most this many candidates rank in float32 (integers are exact up to
# 2^24), larger ones in float64.
_FLOAT32_RANKS = 2**24


# ----------------------------------------------------------------------------- validation


def _check_score(score: object) -> torch.Tensor:
    """A finite-or-infinite (never NaN) floating ``[H, W]`` tensor."""
    if not isinstance(score, torch.Tensor) or score.dim() != 2:
        shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ValueError(f"score must be an [H, W] tensor, but got {shape}")
    if not score.is_floating_point():
        raise ValueError(f"score must be a floating-point tensor, but got dtype={score.dtype}")
    if bool(torch.isnan(score).any()):
        raise ValueError(
            "score contains NaN; scores from reference=True are NaN on constant maps "
            "(the reference's min-max has no epsilon) - use reference=False for such inputs"
        )
    return score.detach()


def _check_active(active: object, score: torch.Tensor) -> torch.Tensor | None:
    """``None`` or a bool ``[H, W]`` mask of the score's shape, moved to the score's device."""
    if active is None:
        return None
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
        kind = active.dtype if isinstance(active, torch.Tensor) else type(active).__name__
        raise ValueError(f"active must be a bool [H, W] tensor or None, but got {kind}")
    if tuple(active.shape) != tuple(score.shape):
        raise ValueError(
            f"active must have the score's shape {tuple(score.shape)}, but got {tuple(active.shape)}"
        )
    return active.to(score.device)


# ----------------------------------------------------------------------------- budgets


# ----------------------------------------------------------------------------- masks


def square_mask(centres: torch.Tensor, shape: tuple[int, int], side: int) -> torch.Tensor:
    """Union of the ``side x side`` squares around ``centres``, clipped at the border.

    Args:
        centres: ``[n, 2]`` integer (row, col) pairs inside the image.
        shape: ``(H, W)`` of the image.
        side: odd square side (1 = the centres only).

    Returns:
        bool ``[H, W]`` on ``centres``' device. Vectorised: one scatter of ``n·side²`` indices.
    """
    side = check_odd("side", side)
    height, width = (int(shape[0]), int(shape[1]))
    if not isinstance(centres, torch.Tensor) or centres.dim() != 2 or centres.shape[1] != 2:
        got = tuple(centres.shape) if isinstance(centres, torch.Tensor) else type(centres).__name__
        raise ValueError(f"centres must be an [n, 2] tensor of (row, col), but got {got}")
    device = centres.device
    mask = torch.zeros((height, width), dtype=torch.bool, device=device)
    if centres.shape[0] == 0:
        return mask
    centres = centres.to(torch.int64)
    rows, cols = centres[:, 0], centres[:, 1]
    if bool(((rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)).any()):
        raise ValueError(f"centres must lie inside the image of shape {(height, width)}")
    k = side // 2
    offsets = torch.arange(-k, k + 1, device=device)
    # Clamping an offset square into the image maps its outside cells onto border cells that
    # the clipped square contains anyway, so the union is unchanged and no filtering is needed.
    rr = (rows[:, None] + offsets[None, :]).clamp_(0, height - 1)  # [n, side]
    cc = (cols[:, None] + offsets[None, :]).clamp_(0, width - 1)  # [n, side]
    flat = (rr[:, :, None] * width + cc[:, None, :]).reshape(-1)  # [n·side²]
    mask.view(-1)[flat] = True
    return mask


# ----------------------------------------------------------------------------- greedy walk


def _kth_largest(values: torch.Tensor, k: int) -> float:
    """The k-th largest entry of a 1-D tensor (a partial selection, not a full sort).

    On the CPU a strided sample first gives a bound ``floor`` that at least ``k`` entries
    reach; the k-th largest of those entries is the k-th largest of all (every entry at or
    above it is among them), so only they are partitioned. When the sample misjudges, the
    whole tensor is."""
    if values.device.type != "cpu":
        return float(torch.topk(values, k, sorted=False).values.min())
    flat = values.numpy()
    stride = flat.size // _SAMPLE_SIZE
    if stride >= 2:
        sample = flat[::stride]
        rank = min(sample.size, 2 * (k // stride) + _SAMPLE_MARGIN)  # a generous quantile: a low floor
        floor = np.partition(sample, sample.size - rank)[sample.size - rank]
        above = flat[flat >= floor]
        if above.size >= k:
            flat = above
    return float(np.partition(flat, flat.size - k)[flat.size - k])


def _walk(
    order: np.ndarray,
    blocked: np.ndarray,
    radius: int,
    picks: int,
    out: list[tuple[int, int]],
) -> None:
    """Greedy pass over candidates (column-major flat indices, best first).

    ``blocked`` is the ``[W, H]`` (column-major) uint8 map of suppressed centres. A
    candidate is taken unless it is blocked; each taken centre blocks its
    ``(2·radius+1)²`` window. Candidates are screened in batches with one vectorised gather, so
    Python only visits those still free when their batch starts. Stops once ``out`` holds
    ``picks`` centres.
    """
    width, height = blocked.shape
    flat_blocked = blocked.reshape(-1)  # a view
    batch = _WALK_BATCH
    for start in range(0, order.size, batch):
        chunk = order[start : start + batch]
        for flat in chunk[flat_blocked[chunk] == 0].tolist():
            if flat_blocked[flat]:
                continue
            col, row = divmod(flat, height)
            out.append((row, col))
            if len(out) == picks:
                return
            blocked[
                max(col - radius, 0) : col + radius + 1, max(row - radius, 0) : row + radius + 1
            ] = 1
        batch = min(batch * 2, _WALK_BATCH_MAX)


def _candidates(score: torch.Tensor, active: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The map as column-major values (flat = col·H + row, the tie order), ``-inf`` where a
    centre may not go (``-inf`` scores, ``active``), and how many may."""
    values = score.t().reshape(-1)
    if values.dtype not in (torch.float32, torch.float64):
        values = values.to(torch.float32)
    elif values.data_ptr() == score.data_ptr():  # a view ([1, W] or [H, 1] maps): not ours to write
        values = values.clone()
    unavailable = values == -math.inf  # no NaN: _check_score refused it
    if active is not None:
        unavailable |= active.t().reshape(-1)
    values.masked_fill_(unavailable, -math.inf)
    return values, values.numel() - int(torch.count_nonzero(unavailable))


def _candidate_chunks(values: torch.Tensor, n_available: int, picks: int) -> Iterator[torch.Tensor]:
    """Flat indices of the candidates, best first (stable: column-major on ties), one chunk at
    a time on ``values``' device: a partial selection finds each chunk's threshold, only the
    chunk is sorted, and each chunk that runs dry is followed by a larger one."""
    upper = None  # candidates >= upper were handed out already
    taken = 0
    chunk = max(_MIN_CHUNK, picks * _CANDIDATES_PER_PICK)
    while taken < n_available:
        k = min(n_available, taken + chunk)
        if values.device.type == "cpu":
            threshold = _kth_largest(values, k)
        else:  # stays on the device: no host synchronisation
            threshold = torch.topk(values, k, sorted=False).values.min()
        members = values >= threshold
        if upper is not None:
            members &= values < upper
        index = torch.nonzero(members).reshape(-1)  # ascending = column-major tie order
        order = index[torch.sort(values[index], descending=True, stable=True).indices]
        yield order
        taken += order.numel()
        upper = threshold
        chunk *= _CHUNK_GROWTH


def _greedy(
    score: torch.Tensor, picks: int, suppression: int, active: torch.Tensor | None
) -> list[tuple[int, int]]:
    """The reference's greedy picks as (row, col) pairs, in pick order."""
    height, width = score.shape
    values, n_available = _candidates(score, active)
    out: list[tuple[int, int]] = []
    blocked = np.zeros((width, height), dtype=np.uint8)  # column-major, like ``values``
    if picks == 0 or n_available == 0:
        return out
    for order in _candidate_chunks(values, n_available, picks):
        _walk(order.cpu().numpy(), blocked, suppression // 2, picks, out)
        if len(out) == picks:
            break
    return out


def _window_max(plane: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over the clipped ``(2·radius+1)²`` window around every cell of a 2-D float map.

    Two separable 1-D max-pools (O(side) per cell, not O(side²)); the padding is ``-inf``, so
    the window is clipped at the border.
    """
    if radius == 0:
        return plane
    side = 2 * radius + 1
    x = F.max_pool2d(plane[None, None], (side, 1), stride=1, padding=(radius, 0))
    x = F.max_pool2d(x, (1, side), stride=1, padding=(0, radius))
    return x[0, 0]


def _chunk_fixpoint(
    order: torch.Tensor,
    blocked: torch.Tensor,
    height: int,
    radius: int,
    need: int,
) -> torch.Tensor:
    """The greedy pass over one candidate chunk, as a fixpoint of tensor ops on its device.

    ``order`` holds the chunk's column-major flat indices (``flat = col·H + row``), best first;
    ``blocked`` is the column-major bool map of centres suppressed before this chunk. The
    greedy pass takes candidate ``i`` iff it is free and no earlier taken candidate lies within
    Chebyshev distance ``radius``: ``taken_i = free_i AND NOT any(j < i: taken_j AND
    conflict(i, j))``. That system has exactly one solution (candidate ``i`` depends only on
    earlier ones), so iterating it from ``taken = free`` until it stops changing gives the
    greedy pass. The number of iterations is the length of the longest chain of candidates
    whose fate hangs on the one before (at most the chunk's size): a few on natural score maps,
    about two per pick on a plateau, where ties are walked in column-major order.

    Blocked candidates are dropped first (they are never taken and block nothing), and the
    iteration runs on the bounding box of the free ones: a pick's window only reaches other
    candidates, all inside. One iteration is a few elementwise passes over that box: the
    ranks of the taken candidates, their windowed minimum (two 1-D max-pools of ``-rank``)
    and the comparison with each candidate's own rank - no gather, scatter or loop over
    candidates.

    The iteration stops before the whole chunk settles once enough picks are final: where the
    new iterate agrees with the old one on a prefix of the order, that prefix is a fixpoint of
    the prefix's own system and therefore final; once it holds ``need`` taken candidates,
    those are the picks. The stop test is the only host synchronisation in the loop; it runs
    after groups of 1, 2, 4, ... iterations, at most ``_FIXPOINT_CHECK`` (iterating past the
    fixpoint changes nothing, and the iterations of a group queue on the device unawaited).
    A chunk not settled after ``_FIXPOINT_MAX`` iterations (a plateau's long chain of ties)
    is finished by the host walk instead (:func:`_walk_on_host`, same picks): one transfer
    instead of ~two iterations per remaining pick.

    Returns:
        The first ``need`` (fewer when the chunk runs dry) picks' flat indices, in pick order,
        on ``order``'s device.
    """
    order = order[~blocked[order]]
    count = order.numel()
    if count == 0:
        return order
    cols, rows = order // height, order % height
    c0, c1, r0, r1 = torch.stack((cols.min(), cols.max(), rows.min(), rows.max())).tolist()
    box_w, box_h = c1 - c0 + 1, r1 - r0 + 1
    local = (cols - c0) * box_h + (rows - r0)  # flat index in the column-major box
    device = order.device
    dtype = torch.float32 if count <= _FLOAT32_RANKS else torch.float64  # exact ranks
    minus_inf = torch.tensor(-math.inf, dtype=dtype, device=device)
    neg_rank = torch.full((box_w * box_h,), -math.inf, dtype=dtype, device=device)
    neg_rank[local] = -torch.arange(count, dtype=dtype, device=device)
    free = neg_rank > -math.inf
    taken = free
    check = 1
    iterations = 0
    while True:
        if iterations >= _FIXPOINT_MAX:  # a long chain of ties: the walk is cheaper
            return _walk_on_host(order, blocked, height, radius, need)
        iterations += check
        for _ in range(check):
            # -(smallest rank of a taken candidate) per window; > -rank_i = an earlier pick
            nearest = _window_max(
                torch.where(taken, neg_rank, minus_inf).view(box_w, box_h), radius
            )
            taken, previous = free & (nearest.view(-1) <= neg_rank), taken
        check = min(2 * check, _FIXPOINT_CHECK)
        changed = taken != previous
        # rank of the first change (+inf if none): every rank below it is final
        first_change = -torch.where(changed, neg_rank, minus_inf).max()
        settled = torch.count_nonzero(taken & (-neg_rank < first_change))
        if bool((settled >= need) | ~changed.any()):
            break
    picked = torch.nonzero(taken[local]).reshape(-1)[:need]
    return order[picked]


def _walk_on_host(order: torch.Tensor, blocked: torch.Tensor, height: int, radius: int, need: int) -> torch.Tensor:
    """One chunk by the host walk (:func:`_walk`): ``order`` and the column-major ``blocked``
    map go to the host once, the first ``need`` picks' flat indices come back to the device."""
    width = blocked.numel() // height
    marks = blocked.view(width, height).cpu().numpy().astype(np.uint8)
    out: list[tuple[int, int]] = []
    _walk(order.cpu().numpy(), marks, radius, need, out)
    flat = [col * height + row for row, col in out]
    return torch.tensor(flat, dtype=torch.int64, device=order.device)


def _greedy_device(
    score: torch.Tensor, picks: int, suppression: int, active: torch.Tensor | None
) -> torch.Tensor:
    """The same picks as :func:`_greedy`, computed on the score's device, as ``[n, 2]`` int64.

    :func:`_greedy` walks each candidate chunk in Python on the host, which on a GPU costs a
    transfer per chunk and a Python visit per free candidate. Here the same chunks (the same
    partial selection and stable sort) are resolved by :func:`_chunk_fixpoint` with tensor
    ops on the device, and the suppression windows of a chunk's picks are marked by one
    dilation. Host synchronisations: one per call, a few per chunk and one per group of
    fixpoint iterations - none per pick or per candidate. ``select_centres`` uses it on every non-CPU device; it runs on
    the CPU too (slower than the walk there), which the tests use to check it.
    """
    height, width = score.shape
    device = score.device
    values, n_available = _candidates(score, active)
    found: list[torch.Tensor] = []
    n_found = 0
    if picks == 0 or n_available == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=device)
    radius = suppression // 2
    blocked = torch.zeros(width * height, dtype=torch.bool, device=device)
    for order in _candidate_chunks(values, n_available, picks):
        chosen = _chunk_fixpoint(order, blocked, height, radius, picks - n_found)
        found.append(chosen)
        n_found += chosen.numel()
        if n_found == picks:
            break
        marks = torch.zeros(width * height, dtype=torch.float32, device=device)  # block the picks' windows
        marks[chosen] = 1.0
        blocked |= _window_max(marks.view(width, height), radius).view(-1) > 0
    flat = torch.cat(found)
    return torch.stack((flat % height, flat // height), dim=1)


def select_centres(
    score: torch.Tensor,
    *,
    picks: int,
    suppression: int,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy pick centres, best score first, as an int64 ``[n, 2]`` (row, col) tensor.

    A pixel can be a centre unless it is ``active`` (suppressed in an earlier round) or lies
    in the ``suppression x suppression`` window of an earlier pick of this call. Ties go to
    the smallest column, then the smallest row (the reference's ``torch.max`` order);
    ``-inf`` scores are never picked. Returns fewer than ``picks`` rows (``n < picks``) when
    the map runs out of available centres. On the CPU the ordered candidates are walked in
    Python (fastest there); on any other device the same greedy pass runs as tensor ops on
    the device (``_greedy_device``) - the same centres in the same order.
    """
    score = _check_score(score)
    picks = check_count("picks", picks)
    suppression = check_odd("suppression", suppression)
    active = _check_active(active, score)
    if score.device.type != "cpu":  # no per-chunk host transfer, no Python walk
        return _greedy_device(score, picks, suppression, active)
    centres = _greedy(score, picks, suppression, active)
    return torch.tensor(centres, dtype=torch.int64, device=score.device).reshape(-1, 2)


def select(
    score: torch.Tensor,
    *,
    picks: int,
    region_size: int,
    suppression: int,
    active: torch.Tensor | None = None,
    unit: str = "region",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of greedy selection on one image.

    Args:
        score: ``[H, W]`` float map from :func:`score_map` (NaN is an error).
        picks: number of centres to pick (see :func:`picks_per_round`).
        region_size: odd side of the square each pick labels (unit ``region``).
        suppression: odd side of the window around each pick where no later centre may
            fall, in this round or later ones (HALO 11, RIPU ``2·region_size - 1``).
        active: bool ``[H, W]``, pixels suppressed by earlier rounds (True = cannot be a
            centre); None = nothing yet.
        unit: ``"region"`` labels the clipped ``region_size²`` square around each centre;
            ``"pixel"`` labels only the centre.

    Returns:
        ``(selected, active)``: bool ``[H, W]`` maps on the score's device - the pixels this
        call labels, and ``active`` updated with this call's suppression windows (pass it
        to the next round). Squares never overlap when ``suppression >= 2·region_size - 1``.
        Fewer than ``picks`` centres are taken when the map runs out of available ones.
    """
    unit = _check_unit(unit)
    region_size = check_odd("region_size", region_size)
    centres = select_centres(score, picks=picks, suppression=suppression, active=active)
    shape = (int(score.shape[0]), int(score.shape[1]))
    selected = square_mask(centres, shape, region_size if unit == "region" else 1)
    new_active = square_mask(centres, shape, suppression)
    if active is not None:
        new_active |= active.to(new_active.device)
    return selected, new_active
