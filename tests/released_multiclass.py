"""MulActSeg's released arithmetic, statement by statement, for tests and benchmarks.

Loops over images, regions and prototypes and Python's ``sorted``, as the released code
(MulActSeg ``38ff116``) runs them, written here from the formulas in docs/multiclass.md. The
vectorised :mod:`halo_ray.multiclass` is checked against these (tests/test_multiclass.py) and
timed against them (benchmarks/multiclass.py). Also two generators of test inputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.ndimage import binary_dilation as nd_dilation
from skimage.segmentation import find_boundaries

try:  # the released call; deprecated in scikit-image 0.26, to be removed in 0.28
    from skimage.morphology import binary_dilation
except ImportError:  # pragma: no cover - newer scikit-image: the same dilation through scipy
    binary_dilation = nd_dilation


def voronoi(h: int, w: int, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """A superpixel-like map: nearest of ``seeds`` random points, ids 0..seeds-1."""
    pts = rng.uniform([0, 0], [h, w], size=(seeds, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return d.argmin(-1).astype(np.int64)


def blocky_labels(h: int, w: int, classes: int, rng: np.random.Generator, void: float = 0.05) -> np.ndarray:
    """Blocky class maps with a long tail and some void."""
    coarse = rng.choice(classes, size=(h // 4 + 1, w // 4 + 1), p=np.arange(classes, 0, -1) / (classes * (classes + 1) / 2))
    lab = np.kron(coarse, np.ones((4, 4), np.int64))[:h, :w]
    lab[rng.random((h, w)) < void] = 255
    return lab


def released_region_labels(label, spx, num_classes, trim):
    """region_cityscapes_tensor.py: per region, unique classes of the trimmed mask (fallback)."""
    num = spx.max() + 1
    multihot = np.zeros((num, num_classes + 1), np.uint8)
    sizes = np.zeros(num, np.int64)
    if trim:
        with warnings.catch_warnings():  # deprecated in scikit-image 0.26, the released call
            warnings.simplefilter("ignore", FutureWarning)
            band = binary_dilation(find_boundaries(spx, mode="thick"), np.ones((trim, trim), np.uint8))
        trimmed = np.where(band, num, spx).reshape(-1)
    flat_spx, flat_lab = spx.reshape(-1), label.reshape(-1)
    for p in np.unique(spx):
        mask = (trimmed == p) if trim else (flat_spx == p)
        if trim and not mask.any():
            mask = flat_spx == p
        u = np.unique(flat_lab[mask])
        cls = [c for c in u.tolist() if c != 255]
        if 255 in u:
            cls.append(num_classes)
        multihot[p, cls] = 1
        sizes[p] = mask.sum()
    return multihot, sizes


def _scatter_mean(values, index, size):
    out = torch.zeros(size)
    for j in range(size):
        sel = values[index == j]
        out[j] = sel.mean() if len(sel) else 0.0
    return out


def released_scores(strategy, logits, spx, *, T, nu, ban, batch, nseg):
    """active_selection/my_bvsb*.py: batch loop, torch_scatter mean per image, then the rest."""
    n, k = logits.shape[:2]
    b = n if batch is None else batch
    batches = [(logits[i : i + b], spx[i : i + b]) for i in range(0, n, b)]
    if strategy == "pixbal":
        prior = torch.zeros(k)
        for z, _ in batches:
            prior += torch.mean(torch.softmax(z / T, dim=1), dim=(0, 2, 3))
        prior = prior / len(batches)
        weight = (nu * prior + 1) ** (-2)
    unc, votes = [], []
    for z, s in batches:
        prob = torch.softmax(z / T, dim=1)
        top2_val, top2_idx = torch.topk(prob, 2, dim=1)
        bvsb = top2_val[:, 1] / top2_val[:, 0]
        bvsb += 1e-8
        top1 = top2_idx[:, 0]
        if strategy == "pixbal":
            bvsb = bvsb * weight[top1.reshape(-1)].view(top1.shape)
        for i in range(z.shape[0]):
            unc.append(_scatter_mean(bvsb[i].reshape(-1), s[i].reshape(-1), nseg))
            oh = torch.nn.functional.one_hot(top1[i].reshape(-1), k)
            v = torch.zeros(nseg, k, dtype=torch.int64)
            for j in range(nseg):
                v[j] = oh[s[i].reshape(-1) == j].sum(0)
            votes.append(v)
    u = torch.stack(unc).view(-1)
    votes = torch.stack(votes).view(-1, k)
    if strategy != "pixbal":
        u = u - u[u != 0].min()
        u = u / u.max()
    dominant = votes.argmax(dim=1)
    if ban:
        u[dominant == k - 1] = 0
    if strategy == "classbal":
        oh = torch.nn.functional.one_hot(dominant, k)
        dist = oh.sum(0) / oh.sum()
        u = torch.exp(-dist)[dominant] * u
    return u.view(n, nseg)


def released_select(scores, multihot, budget, available):
    """region_active_dataset.py expand_training_set with fair counting (after sorted(reverse))."""
    items = [
        (float(scores[i, j]), i, j)
        for i in range(scores.shape[0])
        for j in range(scores.shape[1])
        if available[i, j]
    ]
    order, cost = [], 0
    for _, i, j in sorted(items, reverse=True):
        order.append((i, j))
        cost += int(multihot[i, j].sum())
        if cost > budget:
            break
    return order, cost


def released_losses(logits, multihot, spx, selected, T):
    """OnehotCEMultihotChoice and GroupMultiLabelCE_onlymulti, image by image."""
    n, k, h, w = logits.shape
    out = torch.softmax(logits / T, dim=1).permute(0, 2, 3, 1).reshape(n, -1, k)
    sp = spx.reshape(n, -1)
    spmask = torch.stack([selected[i][sp[i]] for i in range(n)])
    targets = multihot.to(out.dtype)
    oh_loss = mh_loss = pp = 0.0
    oh_n = mh_n = pp_n = 1
    for i in range(n):
        if not spmask[i].any():
            continue
        trg_pixel = targets[i][sp[i][spmask[i]]]
        pos = (out[i][spmask[i]] * trg_pixel).sum(1)
        bits = trg_pixel.sum(1)
        oh_loss += -torch.log(pos[bits == 1] + 1e-8).sum()
        oh_n += int((bits == 1).sum())
        mh_loss += -torch.log(pos[bits > 1] + 1e-8).sum()
        mh_n += int((bits > 1).sum())
        multi = spmask[i].clone()
        multi[spmask[i]] = bits > 1
        if not multi.any():
            continue
        mx = torch.zeros(multihot.shape[1], k)
        for j in range(multihot.shape[1]):
            pix = multi & (sp[i] == j)
            if pix.any():
                mx[j] = out[i][pix].max(0).values
        prod = mx * targets[i]
        nz = prod[prod != 0]
        pp += -torch.log(nz + 1e-8).sum()
        pp_n += nz.numel()
    return oh_loss / oh_n, mh_loss / mh_n, pp / pp_n


def released_pseudo_labels(feat, logits, multihot, spx, selected):
    """eval_save_cosplbl_prop_includeonehot.py pseudo_label_generation, one image, loops."""
    k, h, w = logits.shape
    out = torch.softmax(logits, dim=0).reshape(k, -1).t()
    f = feat.reshape(feat.shape[0], -1).t()
    sp = spx.reshape(-1)
    use = selected & multihot.any(1) & (torch.bincount(sp, minlength=len(selected)) > 0)
    plbl = torch.full((h * w,), 255, dtype=torch.int64)
    valid = use[sp]
    if not valid.any():
        return plbl.view(h, w)
    vidx = torch.nonzero(valid).squeeze(1)
    regions = torch.nonzero(use).squeeze(1).tolist()
    protos, proto_region, proto_cls = [], [], []
    for reg in regions:
        pix = vidx[sp[vidx] == reg]
        for c in torch.nonzero(multihot[reg]).squeeze(1).tolist():
            vals = out[pix, c]
            first = int(torch.nonzero(vals == vals.max())[0])  # CPU scatter_max: first wins
            protos.append(f[pix[first]])
            proto_region.append(reg)
            proto_cls.append(c)
    protos = torch.stack(protos)
    proto_region = torch.tensor(proto_region)
    proto_cls = torch.tensor(proto_cls)
    sim = protos @ f[vidx].t()  # [P, M]
    local_cls = torch.empty(len(vidx), dtype=torch.int64)
    local_sim = torch.empty(len(vidx))
    local_proto = torch.empty(len(vidx), dtype=torch.int64)
    for m, px in enumerate(vidx.tolist()):
        mine = torch.nonzero(proto_region == sp[px]).squeeze(1)
        s = sim[mine, m]
        best = int(torch.nonzero(s == s.max())[0])
        local_proto[m] = mine[best]
        local_cls[m] = proto_cls[mine[best]]
        local_sim[m] = s[best]
    thr = torch.ones(len(protos))
    for p in range(len(protos)):
        won = local_proto == p
        if won.any():
            thr[p] = torch.median(local_sim[won])
    spx_np = spx.numpy()
    for reg in regions:
        neighbours = np.unique(spx_np[nd_dilation(spx_np == reg, np.ones((3, 3)))])
        surr = torch.from_numpy(np.isin(spx_np.reshape(-1), neighbours))
        mine = torch.nonzero(proto_region == reg).squeeze(1)
        s = protos[mine] @ f[surr].t()
        lab = proto_cls[mine][s.argmax(0)]
        ok = (thr[mine][:, None] < s).any(0)
        idx = torch.nonzero(surr).squeeze(1)
        plbl[idx[ok]] = lab[ok]
    plbl[vidx] = local_cls
    return plbl.view(h, w)
