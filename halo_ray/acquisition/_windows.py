"""Statistics over odd square windows: box sums/means, in-image counts, label impurity.

Private helpers of :mod:`halo_ray.acquisition.scores`. Every function is a pure function on
tensors of one image (``[H, W]``) and runs on the device its input is on.

The label impurity (entropy of the label histogram inside each window) is the expensive part
of the RIPU and HALO scores. The reference code builds a one-hot ``[K, H, W]`` tensor and
box-filters every channel, which costs ``K·H·W`` memory and work (K = 100 bins for HALO).
Here the ``side²`` labels of each window are sorted with a fixed sorting network (a few
dozen element-wise min/max ops over ``[H, W]`` maps), after which equal labels are adjacent
and the histogram counts are run lengths. For 3x3 windows the 8 "equals its predecessor"
bits of the sorted labels fix the histogram's shape, so the impurity is one table lookup.
For large windows over few labels a per-label box filter is cheaper; :func:`window_impurity`
picks whichever costs fewer full-map ops.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ._reference import tail_columns

__all__ = [
    "box_mean",
    "box_sum_conv",
    "in_image_count",
    "sorting_network",
    "window_impurity",
    "window_impurity_reference",
]

# Windows up to this many pixels (7x7) are sorted with a network; larger ones use one-hot boxes.
_MAX_NETWORK_SIZE = 49
# Elements per dense [K, strip] buffer in the reference-exact impurity (bounds its memory).
_DENSE_STRIP_ELEMENTS = 1 << 22


def box_mean(x: torch.Tensor, side: int) -> torch.Tensor:
    """Mean of ``x`` over the ``side x side`` window around each pixel, zero padded.

    The divisor is always ``side²`` (outside pixels count as zeros), the convention of
    docs/acquisition.md, so border pixels are damped instead of re-weighted.
    """
    if side == 1:
        return x.clone()
    out = F.avg_pool2d(
        x[None, None], kernel_size=side, stride=1, padding=side // 2, count_include_pad=True
    )  # [1, 1, H, W]
    return out[0, 0]


def box_sum_conv(x: torch.Tensor, side: int) -> torch.Tensor:
    """Sum of ``x`` over the ``side x side`` window, zero padded, as an all-ones conv2d.

    This is the exact operation of the reference code's ``entropy_conv`` (bias-free
    ``nn.Conv2d`` with unit weights), so the float32 result is bitwise identical to it.
    """
    weight = torch.ones((1, 1, side, side), dtype=x.dtype, device=x.device)
    return F.conv2d(x[None, None], weight, None, 1, (side // 2, side // 2))[0, 0]


def in_image_count(
    height: int, width: int, side: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Number of in-image pixels of the ``side x side`` window around each pixel, ``[H, W]``.

    Equals the reference's ``count`` (the channel sum of the box-filtered one-hot map), so
    "sum / count" is the mean over the pixels that exist. Cached per shape: treat as read-only.
    """
    return _in_image_count(height, width, side, torch.device(device), dtype)


@functools.lru_cache(maxsize=32)
def _in_image_count(
    height: int, width: int, side: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    k = side // 2

    def extent(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (torch.clamp(idx + k, max=n - 1) - torch.clamp(idx - k, min=0) + 1).to(dtype)

    return extent(height)[:, None] * extent(width)[None, :]  # [H, W]


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of a sorting network for ``n`` inputs.

    Batcher's odd-even merge sort for the next power of two, with every comparator that
    touches a padding position (``>= n``) removed: padding acts as ``+inf``, which such
    comparators never move, so the pruned network sorts any ``n`` inputs ascending.
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:
                            pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def _label_dtype(num_labels: int) -> torch.dtype:
    """Smallest integer dtype holding labels ``0..num_labels`` (the last is padding)."""
    if num_labels <= torch.iinfo(torch.uint8).max:
        return torch.uint8
    return torch.int16 if num_labels < torch.iinfo(torch.int16).max else torch.int32


def _sorted_window(labels: torch.Tensor, num_labels: int, side: int) -> list[torch.Tensor]:
    """The ``side²`` labels of each window sorted ascending: ``side²`` maps ``[H, W]``.

    Outside pixels are padding, encoded as ``num_labels``, so they sort last and a window
    with N in-image pixels holds its labels in entries ``0..N-1``.
    """
    height, width = labels.shape
    k = side // 2
    padded = F.pad(labels.to(_label_dtype(num_labels)), (k, k, k, k), value=num_labels)
    values = [padded[i : i + height, j : j + width] for i in range(side) for j in range(side)]
    for a, b in sorting_network(side * side):
        values[a], values[b] = (
            torch.minimum(values[a], values[b]),
            torch.maximum(values[a], values[b]),
        )
    return values


def _sorted_window_runs(
    labels: torch.Tensor, num_labels: int, side: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Sorted window labels with their run lengths.

    Returns three lists of ``side²`` maps ``[H, W]``: the window's labels sorted ascending
    (padding, encoded as ``num_labels``, sorts last), the 1-based position of each entry
    inside its run of equal labels (0 for padding), and whether the entry ends its run. At a
    run end the rank is the label's count in the window, so each present label is seen
    exactly once, in ascending label order.
    """
    values = _sorted_window(labels, num_labels, side)
    n = len(values)
    ranks: list[torch.Tensor] = []
    rank = (values[0] != num_labels).to(torch.int16)
    ranks.append(rank)
    for i in range(1, n):
        same = values[i] == values[i - 1]
        rank = torch.where(same, rank + 1, torch.ones_like(rank))
        rank = torch.where(values[i] == num_labels, torch.zeros_like(rank), rank)
        ranks.append(rank)
    ends = [values[i] != values[i + 1] for i in range(n - 1)]
    ends.append(torch.ones_like(values[0], dtype=torch.bool))
    return values, ranks, ends


def _adjacent_equal_code(values: list[torch.Tensor]) -> torch.Tensor:
    """Bit ``i-1`` set where sorted entry i equals entry i-1, for a 3x3 window: uint8 ``[H, W]``.

    With N in-image pixels, the bits below N-1 fix the run lengths (the label counts) of
    the window, so one table lookup by (N, code) gives any function of the histogram.
    """
    code = (values[8] == values[7]).to(torch.uint8)
    for i in range(7, 0, -1):
        code.mul_(2).add_(values[i] == values[i - 1])
    return code


def _code_index(
    code: torch.Tensor, extra: torch.Tensor | None, total: torch.Tensor
) -> torch.Tensor:
    """Flat table index ``((N·256) + extra)·256 + code`` (``extra`` optional), int32 ``[H·W]``."""
    index = (total * (65536 if extra is not None else 256)).to(torch.int32)
    if extra is not None:
        index += torch.bitwise_left_shift(extra.to(torch.int32), 8)
    index += code
    return index.reshape(-1)


@functools.cache
def _runs_by_code() -> list[list[list[int]]]:
    """For each N in 0..9 and 8-bit adjacency code: the run lengths among the first N entries."""
    table: list[list[list[int]]] = []
    for total in range(10):
        per_code: list[list[int]] = []
        for code in range(256):
            runs: list[int] = []
            for i in range(total):
                if i > 0 and (code >> (i - 1)) & 1:
                    runs[-1] += 1
                else:
                    runs.append(1)
            per_code.append(runs)
        table.append(per_code)
    return table


@functools.lru_cache(maxsize=64)
def _entropy_table_3x3_cpu(num_labels: int) -> torch.Tensor:
    """Normalised window entropy for every (N, adjacency code) of a 3x3 window, float32 ``[2560]``."""
    values = []
    for total, per_code in enumerate(_runs_by_code()):
        for runs in per_code:
            h = -sum((r / total) * math.log(r / total) for r in runs) if total else 0.0
            values.append(h / math.log(num_labels))
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def _entropy_table_3x3(num_labels: int, device: torch.device) -> torch.Tensor:
    """:func:`_entropy_table_3x3_cpu` on ``device``."""
    return _entropy_table_3x3_cpu(num_labels).to(device)


def _use_network(num_labels: int, side: int) -> bool:
    """Whether sorting the window is cheaper than one box filter per label (full-map ops)."""
    n = side * side
    if n > _MAX_NETWORK_SIZE:
        return False
    network_ops = 2 * len(sorting_network(n)) + 6 * n
    per_label_ops = 5 * num_labels
    return network_ops <= per_label_ops


def _entropy_table(side: int, num_labels: int, device: torch.device) -> torch.Tensor:
    """Table ``T[N, n] = -(n/N)·ln(n/N) / ln K`` (0 for n = 0), float64 then float32, flattened.

    Indexed by ``N·(side²+1) + n`` with N the window's in-image count.
    """
    n = side * side
    counts = torch.arange(n + 1, dtype=torch.float64)
    totals = torch.arange(n + 1, dtype=torch.float64).clamp(min=1)
    frac = counts[None, :] / totals[:, None]  # [N, n]
    table = -torch.special.xlogy(frac, frac) / math.log(num_labels)
    return table.reshape(-1).to(device=device, dtype=torch.float32)


def window_impurity(labels: torch.Tensor, num_labels: int, side: int) -> torch.Tensor:
    """Entropy of the label histogram in each ``side x side`` window, divided by ``ln K``.

    ``labels`` is ``[H, W]`` with values in ``[0, K)``; outside pixels are ignored (the
    histogram holds the in-image pixels only). Exact ``0·ln 0 = 0``: a window with a single
    label scores exactly 0, one split evenly between two labels scores ``ln 2 / ln K``.
    Returns float32 ``[H, W]`` in ``[0, 1]``.
    """
    height, width = labels.shape
    device = labels.device
    n = side * side
    if side == 1:
        return torch.zeros((height, width), dtype=torch.float32, device=device)
    total = in_image_count(height, width, side, device=device, dtype=torch.int64)  # [H, W]
    if side == 3:
        code = _adjacent_equal_code(_sorted_window(labels, num_labels, side))
        table3 = _entropy_table_3x3(num_labels, device)
        return torch.index_select(table3, 0, _code_index(code, None, total)).reshape(height, width)
    table = _entropy_table(side, num_labels, device)
    base = total * (n + 1)  # [H, W] row offset into the table
    out = torch.zeros((height, width), dtype=torch.float32, device=device)
    if _use_network(num_labels, side):
        # Telescoping sum over the sorted entries: sum_i T[N, r_i] - T[N, r_i - 1] = sum_k T[N, n_k].
        delta = table.clone()
        delta.view(n + 1, n + 1)[:, 1:] -= table.view(n + 1, n + 1)[:, :-1].clone()
        _, ranks, _ = _sorted_window_runs(labels, num_labels, side)
        for rank in ranks:
            out += torch.index_select(delta, 0, (base + rank.to(torch.int64)).reshape(-1)).reshape(
                height, width
            )
        return out
    present = (
        torch.bincount(labels.reshape(-1).to(torch.int64), minlength=num_labels)
        .nonzero()
        .reshape(-1)
    )
    for label in present.tolist():
        hit = (labels == label).to(torch.float32)
        count = box_sum_conv(hit, side).round_().to(torch.int64)  # [H, W], exact small ints
        out += torch.index_select(table, 0, (base + count).reshape(-1)).reshape(height, width)
    return out


def _reference_terms(side: int, device: torch.device) -> torch.Tensor:
    """Reference term ``-d·log(d + 1e-6)``, ``d = n/N`` in float32, as a flat ``[N, n]`` table.

    Computed with the reference's own float32 expression, on a tensor long enough that every
    entry takes the vectorised kernel path the reference's large tensors take, so each entry
    is bitwise identical to the reference's value for that (count, total).
    """
    n = side * side
    counts = torch.arange(n + 1, dtype=torch.float32, device=device)
    totals = torch.arange(n + 1, dtype=torch.float32, device=device).clamp(min=1)
    dist = (counts[None, :] / totals[:, None]).reshape(-1)  # [(n+1)²]
    reps = 64
    wide = dist[:, None].expand(-1, reps).contiguous().reshape(-1)  # every entry 64 times
    term = -wide * torch.log(wide + 1e-6)
    return term.reshape(-1, reps)[:, 0].contiguous()


def _dense_class_sum(
    classes: list[torch.Tensor],
    terms: list[torch.Tensor],
    num_labels: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Sum per pixel of ``terms`` over classes, in the reference's dense reduction.

    ``classes[i]``/``terms[i]`` (``[H, W]``) give, for each pixel, one class index (or
    ``num_labels`` for "no class") and its term. They are scattered into a zero ``[K, pixels]``
    buffer that is summed over the class dimension with ``torch.sum`` - the reduction the
    reference applies to its ``[1, K, H, W]`` tensor, zeros included - so the float32 rounding
    is the reference's. On CPU the buffer is filled in strips of pixels (the CPU reduction
    order over K does not depend on the number of pixels); on other devices in one piece,
    with the reference's exact shape.
    """
    pixels = height * width
    device = classes[0].device
    flat_classes = [c.reshape(-1).to(torch.int64) for c in classes]
    flat_terms = [t.reshape(-1) for t in terms]
    if device.type == "cpu":
        # strips of whole SIMD periods, so only the image's last pixels form ATen's leftover
        strip = max(1, _DENSE_STRIP_ELEMENTS // (num_labels + 1) // 128) * 128
    else:
        strip = pixels
    out = torch.empty(pixels, dtype=torch.float32, device=device)
    buffer = torch.empty((num_labels + 1, min(strip, pixels)), dtype=torch.float32, device=device)
    for start in range(0, pixels, strip):
        stop = min(start + strip, pixels)
        view = buffer[:, : stop - start]
        view.zero_()
        for cls, term in zip(flat_classes, flat_terms, strict=True):
            view.scatter_(0, cls[None, start:stop], term[None, start:stop])
        if device.type == "cpu":
            out[start:stop] = torch.sum(view[:num_labels], dim=0)
        else:
            dense = view[:num_labels].reshape(1, num_labels, height, width)
            out = torch.sum(dense, dim=1, keepdim=True).reshape(-1)
    return out.reshape(height, width)


# ATen's CPU sum over a dimension of K rows adds them in blocks of 16 ("cascade sum"):
# sequentially inside a block, block sums sequentially into a second accumulator, the
# K mod 16 trailing rows last. Beyond 256 rows a third level appears; not emulated.
_CASCADE_BLOCK = 16  # = 1 << 4, the shift used for block ids
_CASCADE_MAX_LABELS = 256


@functools.cache
def _reference_table_3x3(num_labels: int) -> torch.Tensor:
    """Reference impurity sum for every (N, block-change code, adjacency code) of a 3x3 window.

    Emulates, in float32, ``torch.sum`` over the reference's K-class dimension: the terms of
    the present labels (ascending) are added sequentially inside each 16-label block and the
    block sums sequentially (the trailing K mod 16 labels act as one more block; float
    addition is commutative, so "tail + blocks" equals "blocks + tail"). Zero terms of absent
    labels are exact no-ops. Returns float32 ``[10·256·256]`` on CPU.
    """
    terms = _reference_terms(3, torch.device("cpu")).numpy().reshape(10, 10)  # [N, n]
    codes = np.arange(1 << 16)
    same_label = codes & 255
    same_block = codes >> 8
    out = np.zeros((10, 1 << 16), dtype=np.float32)
    for total in range(1, 10):
        acc_block = np.zeros(codes.shape, dtype=np.float32)
        acc_all = np.zeros(codes.shape, dtype=np.float32)
        length = np.ones(codes.shape, dtype=np.int64)
        for i in range(1, total):
            close = ((same_label >> (i - 1)) & 1) == 0
            closed = (acc_block + terms[total][length]).astype(np.float32)
            acc_block = np.where(close, closed, acc_block)
            flush = close & (((same_block >> (i - 1)) & 1) == 0)
            acc_all = np.where(flush, (acc_all + acc_block).astype(np.float32), acc_all)
            acc_block = np.where(flush, np.float32(0), acc_block)
            length = np.where(close, 1, length + 1)
        acc_block = (acc_block + terms[total][length]).astype(np.float32)
        out[total] = (acc_all + acc_block).astype(np.float32)
    return torch.from_numpy(out.reshape(-1))


def _reference_impurity_3x3_cpu(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Reference impurity sum (before ``/ log K``) of 3x3 windows on CPU by one table lookup.

    The last few pixels, which ATen sums in another order, come from the dense computation
    on the bottom rows (:func:`_redo_tail_dense`).
    """
    height, width = labels.shape
    values = _sorted_window(labels, num_labels, 3)
    code = _adjacent_equal_code(values)
    full_blocks = num_labels // _CASCADE_BLOCK
    blocks = [torch.bitwise_right_shift(v, 4).clamp_(max=full_blocks) for v in values]
    block_code = _adjacent_equal_code(blocks)
    total = in_image_count(height, width, 3, device=labels.device, dtype=torch.int64)
    index = _code_index(code, block_code, total)
    out = torch.index_select(_reference_table_3x3(num_labels), 0, index).reshape(height, width)
    return _redo_tail_dense(out, labels, num_labels, 3)


def _redo_tail_dense(
    out: torch.Tensor, labels: torch.Tensor, num_labels: int, side: int
) -> torch.Tensor:
    """Overwrite the last ``tail_columns(H·W)`` pixels with the dense reference computation.

    Only the bottom rows that hold those pixels, plus the window's reach above them, are
    one-hot encoded; their class sum runs on exactly the tail pixels, so ATen reduces them
    in the same (leftover) order as in the full ``[1, K, H, W]`` tensor.
    """
    height, width = labels.shape
    leftover = tail_columns(height * width)
    if leftover == 0:
        return out
    k = side // 2
    first_row = (height * width - leftover) // width
    top = max(first_row - k, 0)
    block = labels[top:].to(torch.int64)  # [h, W]
    one_hot = F.one_hot(block, num_classes=num_labels).to(torch.float32).permute(2, 0, 1)
    weight = torch.ones((num_labels, 1, side, side), dtype=torch.float32)
    summary = F.conv2d(one_hot[None], weight, None, 1, (k, k), 1, num_labels)[0]  # [K, h, W]
    summary = summary.reshape(num_labels, -1)[:, -leftover:].contiguous()  # [K, leftover]
    count = torch.sum(summary, dim=0, keepdim=True)
    dist = summary / count
    out.view(-1)[-leftover:] = torch.sum(-dist * torch.log(dist + 1e-6), dim=0)
    return out


def _reference_impurity_dense(labels: torch.Tensor, num_labels: int, side: int) -> torch.Tensor:
    """The reference's own computation: one-hot ``[1, K, H, W]``, grouped box conv, entropy."""
    one_hot = F.one_hot(labels.to(torch.int64), num_classes=num_labels).to(torch.float32)
    one_hot = one_hot.permute(2, 0, 1).unsqueeze(0)  # [1, K, H, W]
    weight = torch.ones((num_labels, 1, side, side), dtype=torch.float32, device=labels.device)
    summary = F.conv2d(one_hot, weight, None, 1, (side // 2, side // 2), 1, num_labels)
    count = torch.sum(summary, dim=1, keepdim=True)  # [1, 1, H, W]
    dist = summary / count
    return torch.sum(-dist * torch.log(dist + 1e-6), dim=1)[0]


def _reference_impurity_runs(labels: torch.Tensor, num_labels: int, side: int) -> torch.Tensor:
    """Reference impurity sum for windows up to 7x7: run lengths, then the dense class sum.

    Only the <= side² present labels of each pixel get a term (one table lookup each);
    the reference's own reduction then adds them up (:func:`_dense_class_sum`).
    """
    height, width = labels.shape
    n = side * side
    total = in_image_count(height, width, side, device=labels.device, dtype=torch.int64)
    base = total * (n + 1)
    table = _reference_terms(side, labels.device)
    values, ranks, ends = _sorted_window_runs(labels, num_labels, side)
    classes, terms = [], []
    for value, rank, end in zip(values, ranks, ends, strict=True):
        keep = end & (value != num_labels)
        classes.append(torch.where(keep, value.to(torch.int64), num_labels))
        index = (base + rank.to(torch.int64)).reshape(-1)
        terms.append(
            torch.where(keep, torch.index_select(table, 0, index).reshape(height, width), 0.0)
        )
    return _dense_class_sum(classes, terms, num_labels, height, width)


@functools.cache
def _cpu_table_matches(num_labels: int) -> bool:
    """Self-check: does the 3x3 table emulation equal torch's own dense sum bitwise here?

    Guards against a torch release that changes its CPU reduction order; on a mismatch the
    slower dense path (exact by construction) is used instead.
    """
    if num_labels > _CASCADE_MAX_LABELS:
        return False
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, num_labels, (9, 17), generator=gen)
    labels = torch.cat(
        [
            torch.randint(0, num_labels, (40, 135), generator=gen),
            coarse.repeat_interleave(3, 0).repeat_interleave(8, 1)[:, :135],
            torch.randint(0, min(num_labels, 3), (41, 135), generator=gen),
        ]
    )  # 108 x 135: 14580 pixels, 116 of them in the leftover
    fast = _reference_impurity_3x3_cpu(labels, num_labels)
    dense = _reference_impurity_dense(labels, num_labels, 3)
    return bool(torch.equal(fast, dense))


def window_impurity_reference(
    labels: torch.Tensor, num_labels: int, side: int, *, normalise: bool = True
) -> torch.Tensor:
    """The reference code's region impurity, bitwise: ``sum_k -d_k·log(d_k + 1e-6) / log K``.

    ``d_k`` is the fraction of the window's in-image pixels with label k (the reference's
    ``summary / count`` after its one-hot box-filter conv). The ``+1e-6`` makes a pure
    window score ``-log(1 + 1e-6)/log K`` (slightly below 0) instead of 0. The counts come
    from the sorting network. On CPU, 3x3 windows then take one table lookup that
    reproduces the reference's float32 class-order sum; otherwise the terms of the present
    labels are scattered into a zero ``[K, pixels]`` buffer that ``torch.sum`` reduces as the
    reference does (on CUDA with the reference's exact ``[1, K, H, W]`` shape). Windows over
    7x7 run the reference's dense one-hot computation as is. ``normalise=False`` returns
    the sum before the division by ``log K`` (RIPU's ``SpatialPurity``).
    """
    if labels.device.type == "cpu" and side == 3 and _cpu_table_matches(num_labels):
        summed = _reference_impurity_3x3_cpu(labels, num_labels)
    elif side * side <= _MAX_NETWORK_SIZE:
        summed = _reference_impurity_runs(labels, num_labels, side)
    else:
        summed = _reference_impurity_dense(labels, num_labels, side)
    return summed / math.log(num_labels) if normalise else summed
