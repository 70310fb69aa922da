"""The multi-class label query (Hwang et al., NeurIPS 2023): regions answered with every class.

The annotator is shown a superpixel and clicks every class present in it; a round's budget is
counted in clicks. This module is the method's arithmetic as pure functions, each reproducing
the released code (MulActSeg) on the same inputs; the formulas and their sources are in
``docs/multiclass.md``:

* :func:`region_labels` — the oracle: a region's multi-hot answer from ground truth, read
  from the region's interior (a band around every superpixel border is trimmed);
* :func:`region_scores` — PixBal, BvSB and ClassBal per region; :func:`region_means` — any
  pixel score map (HALO, RIPU, entropy…) averaged per region; :func:`random_scores`;
* :func:`select_regions` — greedy selection under a click budget (by default never over it;
  ``reference=True`` keeps the released overshoot and tie order);
* :func:`partial_label_losses` — stage 1: cross-entropy on one-class regions, the merged
  positive loss on multi-class regions and the prototypical pixel loss;
* :func:`pseudo_labels` — stage 2: prototype pseudo labels with expansion to adjacent regions.

Arrays may be numpy or torch. Superpixels are region ids ``0..R-1`` (R = max + 1 unless given),
``[H,W]`` or ``[N,H,W]``; logits are ``[N,K,H,W]`` with K = C or C + 1 (the last channel is
"undefined"/void). Everything is vectorised: no Python loop over pixels or regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from halo_ray.names import REGION_STRATEGIES
from halo_ray.region_answers import VOID, answer_table

#: the released code's ``eps`` inside every ``-log(p + eps)``
LOG_EPS = 1e-8
#: added to every best-versus-second-best ratio (released ``softmax_bvsb``)
BVSB_EPS = 1e-8
#: the region scores :func:`region_scores` computes
#: the released stage-1 loss weights: cross-entropy, merged positive, prototypical pixel
LOSS_WEIGHTS = (16.0, 8.0, 1.0)


def _tensor(x: Any, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A torch view of a numpy array or tensor (no copy where possible)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t if dtype is None else t.to(dtype)


def _num_regions(superpixels: torch.Tensor, num_regions: int | None) -> int:
    """R: ``num_regions`` when given (the released ``nseg``), else max id + 1; ids checked."""
    if superpixels.numel() == 0:
        raise ValueError("superpixels is empty")
    lo, hi = int(superpixels.min()), int(superpixels.max())
    if lo < 0:
        raise ValueError(f"superpixel ids must be >= 0, but the map holds {lo}")
    if num_regions is None:
        return hi + 1
    if hi >= num_regions:
        raise ValueError(f"superpixel id {hi} does not fit num_regions={num_regions}")
    return int(num_regions)


# ---------------------------------------------------------------------------------------------
# the oracle


def region_labels(
    label: Any, superpixels: Any, *, num_classes: int = 19, trim: int = 5
) -> tuple[Any, Any]:
    """The multi-hot answer of every region of one image, and the pixels it was read from:
    :func:`halo_ray.region_answers.answer_table` (numpy, no torch), taking and giving torch
    tensors too. Returns numpy for numpy input, torch otherwise."""
    as_numpy = not isinstance(label, torch.Tensor)
    lab = label.cpu().numpy() if isinstance(label, torch.Tensor) else label
    spx = superpixels.cpu().numpy() if isinstance(superpixels, torch.Tensor) else superpixels
    multihot, sizes = answer_table(lab, spx, num_classes=num_classes, trim=trim)
    if as_numpy:
        return multihot, sizes
    return torch.from_numpy(multihot), torch.from_numpy(sizes)


# ---------------------------------------------------------------------------------------------
# acquisition


def _region_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``values`` per flat region index; 0 for a region without pixels (torch_scatter)."""
    total = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    count = torch.bincount(index, minlength=size).to(values.dtype).clamp_(min=1)
    return total / count


def region_scores(
    strategy: str,
    logits: Any,
    superpixels: Any,
    *,
    temperature: float = 0.1,
    nu: float = 6.0,
    ban_void: bool = True,
    batch_size: int | None = None,
    available: Any = None,
    num_regions: int | None = None,
) -> torch.Tensor:
    """Score every region of every image: ``[N, R]`` float32, higher = label first.

    With ``p = softmax(z/T)``, ``u = p₂/p₁ + 1e-8`` (second over first probability) and ``ŷ`` the
    top-1 class of each pixel:

    * ``pixbal`` (the method's own): ``mean_R u·w(ŷ)`` with ``w_c = (ν·p̄_c + 1)^-2``, p̄ the
      mean probability over every pixel of every image passed (``batch_size`` reproduces the
      released mean of per-batch means);
    * ``bvsb``: ``mean_R u``, min–max normalised over all N·R entries (the minimum over non-zero
      entries, as released: regions without pixels become negative);
    * ``classbal``: ``bvsb`` × ``exp(-f_d)``, d the region's dominant top-1 class and f_d the
      share of all N·R entries with that dominant class (empty ids count as class 0).

    ``ban_void`` (the released Cityscapes variants): the last channel is "undefined", and a
    region whose most frequent top-1 class is it scores 0. ``ban_void=False`` treats all K
    channels alike. Statistics run over every region of every image passed; ``available``
    (``[N,R]`` bool, default: the ids present in each image) only marks the regions still in the
    pool — the others score ``-inf``. ``num_regions`` is the released ``nseg`` (default max id + 1).
    """
    if strategy not in REGION_STRATEGIES:
        raise ValueError(
            f"strategy must be one of {', '.join(REGION_STRATEGIES)}, got {strategy!r}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    z = _tensor(logits, dtype=torch.float32)
    n = z.shape[0] if z.dim() == 4 else 0
    prior = None
    if strategy == "pixbal":
        step = n if batch_size is None else batch_size
        prior = torch.stack([batch_class_mean(z[i : i + step], temperature=temperature) for i in range(0, max(n, 1), step)]).mean(0)
    means, dominant = region_terms(
        strategy, z, superpixels, temperature=temperature, prior=prior, nu=nu, num_regions=num_regions
    )
    if available is None:
        spx = _tensor(superpixels).to(z.device, torch.int64).reshape(n, -1)
        r = means.shape[1]
        available = torch.stack([torch.bincount(row, minlength=r) > 0 for row in spx]) if n else None
    return combine_region_scores(strategy, means, dominant, num_channels=z.shape[1], ban_void=ban_void, available=available)


def batch_class_mean(logits: Any, *, temperature: float = 0.1) -> torch.Tensor:
    """One batch's mean probability per class, ``softmax(z/T)`` over its images and pixels.

    PixBal's class prior is the mean of these over the pool's batches (released pass 1): a
    scorer computes it batch by batch and never holds the pool's logits at once.
    """
    z = _tensor(logits, dtype=torch.float32)
    if z.dim() != 4 or z.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty [B,K,H,W], got {tuple(z.shape)}")
    return torch.softmax(z / temperature, dim=1).mean(dim=(0, 2, 3))


def region_terms(
    strategy: str,
    logits: Any,
    superpixels: Any,
    *,
    temperature: float = 0.1,
    prior: Any = None,
    nu: float = 6.0,
    num_regions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-region parts of :func:`region_scores` for a chunk of images: ``(means, dominant)``.

    ``means [n,R]`` float32: the region mean of ``u·w(ŷ)`` (``pixbal``, ``prior`` = the class
    prior over the pool) or of ``u`` (``bvsb``, ``classbal``); ``dominant [n,R]``: the region's
    most frequent top-1 class (0 for an id without pixels). What a scorer returns per chunk:
    O(regions), never O(pixels); :func:`combine_region_scores` finishes over the whole pool.
    """
    if strategy not in REGION_STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(REGION_STRATEGIES)}, got {strategy!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = _tensor(logits, dtype=torch.float32)
    spx = _tensor(superpixels).to(z.device, torch.int64)
    if spx.dim() == 2:
        spx = spx.unsqueeze(0)
    if z.dim() != 4 or spx.shape != (z.shape[0], *z.shape[2:]):
        raise ValueError(
            f"logits must be [N,K,H,W] and superpixels [N,H,W] of the same N,H,W, got {tuple(z.shape)} and {tuple(spx.shape)}"
        )
    n, k = z.shape[:2]
    if k < 2:
        raise ValueError(f"logits need at least 2 channels, got {k}")
    r = _num_regions(spx, num_regions)
    prob = torch.softmax(z / temperature, dim=1)
    top_val, top_idx = torch.topk(prob, 2, dim=1)
    u = top_val[:, 1] / top_val[:, 0] + BVSB_EPS
    top1 = top_idx[:, 0]
    index = (spx + torch.arange(n, device=z.device).view(n, 1, 1) * r).reshape(-1)
    size = n * r
    if strategy == "pixbal":
        if prior is None:
            raise ValueError("pixbal needs the class prior over the pool (batch_class_mean of each batch, averaged)")
        weight = (nu * _tensor(prior, dtype=torch.float32).to(z.device) + 1) ** (-2)
        if weight.shape != (k,):
            raise ValueError(f"prior must hold one value per channel ({k}), got {tuple(weight.shape)}")
        means = _region_mean((u * weight[top1]).reshape(-1), index, size)
    else:
        means = _region_mean(u.reshape(-1), index, size)
    votes = torch.zeros(size * k, dtype=torch.int64, device=z.device)
    votes.index_add_(0, index * k + top1.reshape(-1), torch.ones_like(index))
    dominant = votes.view(size, k).argmax(dim=1)
    return means.view(n, r), dominant.view(n, r)


def combine_region_scores(
    strategy: str,
    means: Any,
    dominant: Any,
    *,
    num_channels: int,
    ban_void: bool = True,
    available: Any = None,
) -> torch.Tensor:
    """Finish :func:`region_scores` over the whole pool from its chunks' :func:`region_terms`.

    ``bvsb``/``classbal``: min–max over all N·R entries (min over non-zero ones); the void ban
    (``ban_void``: dominant = the last of ``num_channels``); ``classbal``'s ``exp(-f_d)``. Regions
    not ``available`` score ``-inf`` (default: all available).
    """
    if strategy not in REGION_STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(REGION_STRATEGIES)}, got {strategy!r}")
    score = _tensor(means, dtype=torch.float32)
    dom = _tensor(dominant).to(score.device, torch.int64)
    if score.dim() != 2 or dom.shape != score.shape:
        raise ValueError(f"means and dominant must be [N,R] of one shape, got {tuple(score.shape)} and {tuple(dom.shape)}")
    n, r = score.shape
    k = num_channels
    score, dom = score.reshape(-1), dom.reshape(-1)
    if strategy != "pixbal":
        score = score - score[score != 0].min()
        score = score / score.max()
    if ban_void:
        score = torch.where(dom == k - 1, torch.zeros_like(score), score)
    if strategy == "classbal":
        share = torch.bincount(dom, minlength=k).to(torch.float32) / (n * r)
        score = torch.exp(-share)[dom] * score
    score = score.view(n, r)
    if available is None:
        return score
    avail = _tensor(available).to(score.device, torch.bool)
    if avail.shape != (n, r):
        raise ValueError(f"available must be [N,R] = {(n, r)}, got {tuple(avail.shape)}")
    return score.masked_fill(~avail, float("-inf"))


def region_means(score: Any, superpixels: Any, *, num_regions: int | None = None) -> torch.Tensor:
    """Any pixel score map ``[N,H,W]`` (HALO, RIPU, entropy… from
    :func:`halo_ray.acquisition.score_map`) averaged per superpixel: ``[N, R]`` float32, 0 for
    an id without pixels (as the released ``scatter(..., reduce="mean")``). This is how HALO's
    hyperbolic scores meet the multi-class query."""
    values = _tensor(score)
    spx = _tensor(superpixels).to(values.device, torch.int64)
    if values.dim() == 2:
        values = values.unsqueeze(0)
    if spx.dim() == 2:
        spx = spx.unsqueeze(0)
    if values.dim() != 3 or spx.shape != values.shape:
        raise ValueError(f"score and superpixels must be [N,H,W] of one shape, got {tuple(values.shape)} and {tuple(spx.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError("score holds NaN or inf; a region mean of it cannot be ranked")
    n = values.shape[0]
    r = _num_regions(spx, num_regions)
    index = (spx + torch.arange(n, device=values.device).view(n, 1, 1) * r).reshape(-1)
    return _region_mean(values.reshape(-1).to(torch.float32), index, n * r).view(n, r)


def random_scores(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform scores ``[N, R]`` from a seeded generator: the random strategy, and the released
    first round (which draws Python's ``random.random()`` per region)."""
    return torch.rand(shape, generator=generator)


def select_regions(
    scores: Any, multihot: Any, *, budget: int, available: Any, reference: bool = False
) -> tuple[Any, int]:
    """Pick regions by score until the click budget is spent: ``(order [M,2], clicks)``.

    A region costs one click per set bit of its answer (``multihot [N,R,K]``; pass it without
    the void column not to bill void). Regions are ranked by score, ties by image index and then
    region id, all descending (the released ``sorted(..., reverse=True)``). The default takes
    the longest prefix of that ranking whose clicks stay within ``budget``; ``reference=True``
    also keeps the released overshoot: the region that first passes the budget is taken, then
    selection stops. ``order`` holds (image, region) rows in pick order; ``clicks`` their bits.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a whole number of clicks >= 1, got {budget!r}")
    sc = np.asarray(
        scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64
    )
    mh = np.asarray(multihot.cpu() if isinstance(multihot, torch.Tensor) else multihot)
    if sc.ndim != 2 or mh.shape[:2] != sc.shape:
        raise ValueError(
            f"scores must be [N,R] and multihot [N,R,K] of the same N,R, got {sc.shape} and {mh.shape}"
        )
    if available is None:
        avail = np.ones(sc.shape, dtype=bool)
    else:
        avail = np.asarray(
            available.cpu() if isinstance(available, torch.Tensor) else available, dtype=bool
        )
        if avail.shape != sc.shape:
            raise ValueError(f"available must be [N,R] = {sc.shape}, got {avail.shape}")
    image, region = np.nonzero(avail)
    value = sc[image, region]
    if np.isnan(value).any():
        raise ValueError("scores hold NaN for available regions; a NaN cannot be ranked")
    rank = np.lexsort((-region, -image, -value))
    image, region = image[rank], region[rank]
    cost = mh.astype(np.int64).sum(axis=2)[image, region]
    spent = np.cumsum(cost)
    over = np.flatnonzero(spent > budget)
    if over.size == 0:
        m = len(spent)
    else:
        m = int(over[0]) + 1 if reference else int(over[0])
    order = np.stack([image[:m], region[:m]], axis=1).astype(np.int64)
    clicks = int(spent[m - 1]) if m else 0
    if isinstance(scores, torch.Tensor):
        return torch.from_numpy(order), clicks
    return order, clicks


# ---------------------------------------------------------------------------------------------
# stage 1


def partial_label_losses(
    logits: torch.Tensor,
    multihot: Any,
    superpixels: Any,
    selected: Any,
    *,
    temperature: float = 0.1,
    weights: Sequence[float] = LOSS_WEIGHTS,
) -> dict[str, torch.Tensor]:
    """Stage-1 losses on the labelled regions: ``{"ce", "mp", "pp", "total"}`` (0-d tensors).

    With ``p = softmax(z/T)`` and ``P(x) = Σ_{c∈Y} p_c(x)`` over the region's answer Y, over the
    pixels of selected regions of the whole batch:

    * ``ce`` = ``Σ -log(P+1e-8) / (1 + count)`` over pixels of one-class regions (|Y| = 1);
    * ``mp`` = the same over pixels of multi-class regions (|Y| > 1), the merged positive loss;
    * ``pp`` = ``Σ -log(m+1e-8) / (1 + count)`` over (region, class) pairs of selected
      multi-class regions, ``m`` the largest ``p_c`` in the region; pairs with ``m = 0`` drop
      out (released), the prototypical pixel loss;
    * ``total`` = ``w_ce·ce + w_mp·mp + w_pp·pp`` (released 16, 8, 1).

    ``multihot`` is ``[N,R,K]`` with K the logits' channels; regions with an empty answer count
    in no term. The normalisers start at 1 and run over the whole batch, as released.
    """
    z = logits
    if z.dim() != 4:
        raise ValueError(f"logits must be [N,K,H,W], got {tuple(z.shape)}")
    n, k = z.shape[:2]
    mh = _tensor(multihot).to(z.device)
    spx = _tensor(superpixels).to(z.device, torch.int64)
    sel = _tensor(selected).to(z.device, torch.bool)
    if spx.dim() == 2:
        spx = spx.unsqueeze(0)
    if mh.dim() != 3 or mh.shape[0] != n or mh.shape[2] != k:
        raise ValueError(
            f"multihot must be [N,R,K] = [{n}, R, {k}] (K = the logits' channels), got {tuple(mh.shape)}"
        )
    r = mh.shape[1]
    if spx.shape != (n, *z.shape[2:]) or sel.shape != (n, r):
        raise ValueError(
            f"superpixels must be [N,H,W] and selected [N,R], got {tuple(spx.shape)} and {tuple(sel.shape)}"
        )
    _num_regions(spx, r)
    if len(weights) != 3:
        raise ValueError(f"weights must be (ce, mp, pp), got {tuple(weights)}")
    mh = mh.to(torch.bool)
    prob = torch.softmax(z / temperature, dim=1)
    flat = (spx + torch.arange(n, device=z.device).view(n, 1, 1) * r).reshape(-1)
    answer = mh.reshape(n * r, k)
    bits = answer.sum(1)
    chosen = sel.reshape(-1)
    pix_prob = prob.permute(0, 2, 3, 1).reshape(-1, k)
    pix_bits = bits[flat]
    pix_sel = chosen[flat]
    positive = (pix_prob * answer[flat].to(pix_prob.dtype)).sum(1)
    nll = -torch.log(positive + LOG_EPS)
    one = pix_sel & (pix_bits == 1)
    many = pix_sel & (pix_bits > 1)
    ce = nll[one].sum() / (1 + int(one.sum()))
    mp = nll[many].sum() / (1 + int(many.sum()))
    # prototypical pixel loss: the largest probability of each answered class in the region
    rows = flat[many]
    peak = torch.zeros(n * r, k, dtype=prob.dtype, device=z.device)
    peak = peak.scatter_reduce(0, rows.view(-1, 1).expand(-1, k), pix_prob[many], "amax")
    term = (peak * answer.to(peak.dtype))[peak * answer.to(peak.dtype) != 0]
    pp = -torch.log(term + LOG_EPS).sum() / (1 + term.numel())
    total = weights[0] * ce + weights[1] * mp + weights[2] * pp
    return {"ce": ce, "mp": mp, "pp": pp, "total": total}


# ---------------------------------------------------------------------------------------------
# stage 2


def _first_argmax(values: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """Per group and column: the first row (raster order) holding the max of ``values [M,K]``."""
    k = values.shape[1]
    best = torch.full((groups, k), float("-inf"), dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, group.view(-1, 1).expand(-1, k), values, "amax")
    rows = torch.arange(values.shape[0], device=values.device).view(-1, 1).expand(-1, k)
    hit = torch.where(values == best[group], rows, torch.full_like(rows, values.shape[0]))
    first = torch.full((groups, k), values.shape[0], dtype=torch.int64, device=values.device)
    return first.scatter_reduce(0, group.view(-1, 1).expand(-1, k), hit, "amin")


def _lower_median(
    values: torch.Tensor, group: torch.Tensor, groups: int
) -> torch.Tensor:
    """Per group: ``torch.median`` of its values (the lower median); 1.0 for an empty group."""
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    count = torch.bincount(group, minlength=groups)
    start = torch.cumsum(count, 0) - count
    has = count > 0
    pick = (start + (count - 1).clamp(min=0) // 2)[has]
    median = torch.ones(groups, dtype=values.dtype, device=values.device)
    median[has] = values[order[pick]]
    return median


def _adjacent_pairs(spx: torch.Tensor, num: int, keep: torch.Tensor) -> torch.Tensor:
    """(a, b) id pairs, b in ``keep``, with a under b's mask dilated by a 3×3 square (a = b too)."""
    h, w = spx.shape
    pairs = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = spx[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)].reshape(-1)
            b = spx[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)].reshape(-1)
            near = keep[b]
            pairs.append(a[near] * num + b[near])
    key = torch.unique(torch.cat(pairs))
    return torch.stack([key // num, key % num], 1)


def _similarities(
    feat: torch.Tensor, protos: torch.Tensor, rows: torch.Tensor, chunk: int = 16384
) -> torch.Tensor:
    """``<feat[i], protos[rows[i], k]>`` for every i and k, in chunks of bounded memory."""
    out = torch.empty(feat.shape[0], protos.shape[1], dtype=feat.dtype, device=feat.device)
    for i in range(0, feat.shape[0], chunk):
        out[i : i + chunk] = torch.einsum(
            "md,mkd->mk", feat[i : i + chunk], protos[rows[i : i + chunk]]
        )
    return out


def pseudo_labels(
    features: Any, logits: Any, multihot: Any, superpixels: Any, selected: Any
) -> torch.Tensor:
    """Stage-2 pseudo labels of one image: int64 ``[H,W]``, 255 where no label is given.

    Released algorithm (features used as given, never re-normalised; probabilities at T = 1):

    1. a prototype per (selected region R, class c ∈ Y(R)): the feature of R's pixel with the
       largest ``p_c`` (the first in raster order on ties);
    2. every pixel of a selected region takes the class of its region's most similar prototype
       (dot product; the lowest class on ties);
    3. each prototype's threshold is the lower median of the similarities of the pixels it won
       (1.0 when it won none);
    4. expansion, regions by increasing id, a later one overwriting: every pixel of a region
       8-adjacent to R (R included) takes the class of R's most similar prototype if *any* of
       R's prototypes is more similar to it than its own threshold;
    5. the pixels of selected regions keep their label from step 2.

    ``features [D,H,W]``, ``logits [K,H,W]``, ``multihot [R,K]``, ``superpixels [H,W]``,
    ``selected [R]`` bool. Selected regions with an empty answer or without pixels are skipped.
    """
    feat = _tensor(features)
    z = _tensor(logits).to(feat.device)
    mh = _tensor(multihot).to(feat.device, torch.bool)
    spx = _tensor(superpixels).to(feat.device, torch.int64)
    sel = _tensor(selected).to(feat.device, torch.bool)
    if feat.dim() != 3 or z.dim() != 3 or spx.shape != feat.shape[1:] or z.shape[1:] != spx.shape:
        raise ValueError(
            f"features [D,H,W], logits [K,H,W] and superpixels [H,W] must share H,W, got {tuple(feat.shape)}, {tuple(z.shape)}, {tuple(spx.shape)}"
        )
    k = z.shape[0]
    if mh.dim() != 2 or mh.shape[1] != k or sel.shape != (mh.shape[0],):
        raise ValueError(
            f"multihot must be [R,{k}] and selected [R], got {tuple(mh.shape)} and {tuple(sel.shape)}"
        )
    r = _num_regions(spx, mh.shape[0])
    h, w = spx.shape
    flat_spx = spx.reshape(-1)
    present = torch.bincount(flat_spx, minlength=r) > 0
    use = sel & present & mh.any(1)
    out = torch.full((h * w,), VOID, dtype=torch.int64, device=feat.device)
    if not bool(use.any()):
        return out.view(h, w)
    regions = torch.nonzero(use).squeeze(1)  # increasing id
    slot = torch.full((r,), -1, dtype=torch.int64, device=feat.device)
    slot[regions] = torch.arange(regions.numel(), device=feat.device)
    f = feat.reshape(feat.shape[0], -1).t()  # [HW, D]
    prob = torch.softmax(z, dim=0).reshape(k, -1).t()  # [HW, K]
    inside = torch.nonzero(use[flat_spx]).squeeze(1)  # raster order
    row = slot[flat_spx[inside]]
    # 1. prototypes
    first = _first_argmax(prob[inside], row, regions.numel())
    has_proto = mh[regions]  # [S, K]
    proto = f[inside[first.clamp(max=inside.numel() - 1)]]  # [S, K, D]
    proto = proto * has_proto.unsqueeze(2).to(proto.dtype)
    # 2. intra-region label
    sim = _similarities(f[inside], proto, row)
    sim = sim.masked_fill(~has_proto[row], float("-inf"))
    best_sim, best_cls = sim.max(dim=1)
    best_cls = (
        torch.where(sim == best_sim.unsqueeze(1), torch.arange(k, device=feat.device), k)
        .min(1)
        .values
    )
    # 3. thresholds per prototype
    threshold = _lower_median(best_sim, row * k + best_cls, regions.numel() * k)
    threshold = threshold.view(-1, k)
    # 4. expansion over 8-adjacent regions, later regions overwriting
    pairs = _adjacent_pairs(spx, r, use)  # (neighbour id, selected region)
    by_id = torch.sort(flat_spx, stable=True).indices
    count = torch.bincount(flat_spx, minlength=r)
    start = torch.cumsum(count, 0) - count
    sizes = count[pairs[:, 0]]
    pair_of = torch.repeat_interleave(torch.arange(pairs.shape[0], device=feat.device), sizes)
    offset = torch.arange(pair_of.numel(), device=feat.device) - torch.repeat_interleave(
        torch.cumsum(sizes, 0) - sizes, sizes
    )
    pixel = by_id[start[pairs[pair_of, 0]] + offset]
    owner = slot[pairs[pair_of, 1]]
    esim = _similarities(f[pixel], proto, owner)
    valid = ((threshold[owner] < esim) & has_proto[owner]).any(1)
    esim = esim.masked_fill(~has_proto[owner], float("-inf"))
    emax = esim.max(dim=1, keepdim=True).values
    ecls = torch.where(esim == emax, torch.arange(k, device=feat.device), k).min(1).values
    pixel, owner, ecls = pixel[valid], owner[valid], ecls[valid]
    winner = torch.full((h * w,), -1, dtype=torch.int64, device=feat.device)
    winner = winner.scatter_reduce(0, pixel, owner, "amax")
    won = winner[pixel] == owner
    out[pixel[won]] = ecls[won]
    # 5. labelled regions keep their own label
    out[inside] = best_cls
    return out.view(h, w)
