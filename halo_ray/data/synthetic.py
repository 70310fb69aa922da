"""Embedded benchmark: seeded procedural street scenes with a real domain gap.

Three domains share one scene model (a pinhole camera over a street: road, sidewalks,
facades, and sprites placed on the ground plane) and differ in appearance:

* ``source`` ("game", written as GTAV): flat saturated class colours, sharp edges.
* ``target`` ("city", written as Cityscapes): every class colour hue-rotated by ±45° with
  saturation × 0.7, plus moderate texture, uneven lighting, shadows, blur and noise, and an
  ego-vehicle bonnet (void) in half of the frames.
* ``adverse`` (written as ACDC): the city rendering plus fog, night, rain or snow.

The 19 Cityscapes train classes occur with a long tail (road, building, sky large; pole,
light, sign, rider, motorcycle small). Sprites are placed by sampling their ground row
inside the visible range, so they land in the frame; thin parts are at least 2 px wide.

Every frame comes from its own generator keyed by (seed, domain, split, condition,
index), so a frame does not depend on how many others were asked for, and the files are
bit-identical for the same seed. Drawing is vectorised per shape (coordinate masks on
the shape's bounding box); no Python loop visits pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from halo_ray.data.cpus import usable_cpus
from halo_ray.data.labels import (
    IGNORE_INDEX,
    NUM_CLASSES,
    TRAIN_ID_TO_LABEL_ID,
    label_palette,
    to_train_ids,
)
from halo_ray.data.layouts import (
    ACDC_CONDITIONS,
    DatasetError,
    acdc_files,
    cityscapes_files,
    gtav_files,
)

__all__ = [
    "BenchmarkPaths",
    "CITY_NAMES",
    "DOMAINS",
    "MANIFEST_NAME",
    "SyntheticSample",
    "class_frequencies",
    "generate_benchmark",
    "generate_sample",
]

DOMAINS: tuple[str, ...] = ("source", "target", "adverse")
CITY_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bremen", "hamburg"),
    "val": ("frankfurt", "lindau", "munster"),
}
MANIFEST_NAME = "halo_ray_benchmark.json"  # written last: its presence means a complete tree
CITYSCAPES_FRAME = 19  # the annotated frame of every Cityscapes snippet
ACDC_FRAMES_PER_SEQUENCE = 10
_MAX_ACDC_PER_SPLIT = 5000  # keeps the synthetic GOPR sequence names unique

# ---- scene constants ------------------------------------------------------------------
CAM_HEIGHT = 1.5  # camera height above the road (m)
THIN_PX = 2.0  # minimum width of thin parts (poles, legs, frames), in pixels
SKY_DEPTH = 1.0e4  # depth assigned to sky pixels (m), "infinitely" far for fog
HUE_ROTATION = 45.0  # city hue rotation per class (degrees), sign alternates by trainId
CITY_SATURATION = 0.7  # city saturation factor

# Source ("game") palette per trainId as (hue degrees, saturation, value): saturated,
# distinct colours so that the per-class hue rotation produces a real gap.
# fmt: off
GAME_HSV = np.array([
    (280, 0.40, 0.50),  # road
    (320, 0.65, 0.90),  # sidewalk
    ( 30, 0.45, 0.55),  # building
    (240, 0.40, 0.65),  # wall
    (  0, 0.30, 0.75),  # fence
    (200, 0.25, 0.70),  # pole
    ( 45, 0.95, 0.95),  # traffic light
    ( 60, 0.95, 0.85),  # traffic sign
    ( 95, 0.75, 0.55),  # vegetation
    (125, 0.50, 0.85),  # terrain
    (205, 0.60, 0.92),  # sky
    (350, 0.85, 0.80),  # person
    ( 12, 1.00, 0.95),  # rider
    (228, 0.95, 0.60),  # car
    (232, 0.90, 0.32),  # truck
    (195, 1.00, 0.50),  # bus
    (180, 1.00, 0.38),  # train
    (255, 0.95, 0.90),  # motorcycle
    (340, 0.90, 0.45),  # bicycle
], dtype=np.float64)
# fmt: on
_GAME_HSV_LIST = [tuple(map(float, row)) for row in GAME_HSV]

# Per-labelId texture amplitudes of the city domain: fine grain and low-frequency blotches.
_FINE_AMP = np.full(256, 0.04, np.float32)
_BLOTCH_AMP = np.full(256, 0.08, np.float32)
for _lid, _fine, _blotch in (
    (7, 0.07, 0.10),  # road
    (8, 0.05, 0.08),  # sidewalk
    (11, 0.06, 0.12),  # building
    (21, 0.16, 0.15),  # vegetation
    (22, 0.12, 0.15),  # terrain
    (23, 0.015, 0.22),  # sky: clouds
    (12, 0.06, 0.10),  # wall
):
    _FINE_AMP[_lid], _BLOTCH_AMP[_lid] = _fine, _blotch

_GROUND_LUT = np.zeros(256, bool)
_GROUND_LUT[[7, 8, 22]] = True  # road, sidewalk, terrain: receive cast shadows

_DOMAIN_CODE = {"source": 0, "target": 1, "adverse": 2}
_SPLIT_CODE = {"train": 0, "val": 1}
_CONDITION_CODE = {None: 0, "fog": 1, "night": 2, "rain": 3, "snow": 4}

# labelIds used while drawing
_L = {
    "unlabeled": 0,
    "ego": 1,
    "static": 4,
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "wall": 12,
    "fence": 13,
    "pole": 17,
    "light": 19,
    "sign": 20,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}
_LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, np.int64)
_LABEL_TO_TRAIN[TRAIN_ID_TO_LABEL_ID] = np.arange(NUM_CLASSES)


# ----------------------------------------------------------------------------------
# public results


@dataclass(frozen=True)
class SyntheticSample:
    """One generated frame, in memory."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    label_ids: np.ndarray  # [H, W] uint8 Cityscapes labelIds (what the files store)
    train_ids: np.ndarray  # [H, W] uint8 trainIds, 255 = ignore (what the readers return)


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where :func:`generate_benchmark` wrote each layout."""

    root: Path  # the out_dir passed in
    gtav_root: Path  # source domain, GTAV layout
    cityscapes_root: Path  # target domain, Cityscapes layout
    acdc_root: Path  # adverse target domain, ACDC layout


# ----------------------------------------------------------------------------------
# canvas and shapes


class _Canvas:
    """Label / instance / depth / shading maps that shapes are painted into (painter's order)."""

    def __init__(self, height: int, width: int) -> None:
        """An all-sky canvas; instance 0 must be registered as the sky colour."""
        self.h, self.w = height, width
        self.label = np.full((height, width), _L["sky"], np.uint8)  # [H, W] labelIds
        self.inst = np.zeros((height, width), np.int32)  # [H, W] index into the colour table
        self.depth = np.full((height, width), SKY_DEPTH, np.float32)  # [H, W] metres
        self.shade = np.ones((height, width), np.float32)  # [H, W] windows, markings
        self.hsv: list[tuple[float, float, float]] = []
        self.inst_label: list[int] = []
        self.lights: list[tuple[float, float, float, tuple[float, float, float]]] = []

    def instance(self, hsv: Sequence[float], label_id: int) -> int:
        """Register a colour (game palette, HSV) for one part of one object."""
        self.hsv.append((float(hsv[0]), float(hsv[1]), float(hsv[2])))
        self.inst_label.append(label_id)
        return len(self.hsv) - 1

    def window(self, top: float, bottom: float, left: float, right: float):
        """Clipped pixel box whose centres lie in [top, bottom) x [left, right), with centre grids."""
        y0 = max(int(np.ceil(top - 0.5)), 0)
        y1 = min(int(np.ceil(bottom - 0.5)), self.h)
        x0 = max(int(np.ceil(left - 0.5)), 0)
        x1 = min(int(np.ceil(right - 0.5)), self.w)
        if y0 >= y1 or x0 >= x1:
            return None
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5  # [h, 1]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5  # [1, w]
        return (slice(y0, y1), slice(x0, x1)), yy, xx

    def fill(self, box: tuple[slice, slice], mask: np.ndarray | None, inst: int, z: float) -> None:
        """Paint instance ``inst`` at depth ``z`` where ``mask`` is true inside ``box``."""
        lab = self.inst_label[inst]
        if mask is None:
            self.label[box], self.inst[box], self.depth[box] = lab, inst, z
            self.shade[box] = 1.0
            return
        self.label[box][mask] = lab
        self.inst[box][mask] = inst
        self.depth[box][mask] = z
        self.shade[box][mask] = 1.0


def _widen(a: float, b: float, minimum: float) -> tuple[float, float]:
    """Grow the interval [a, b) symmetrically to at least ``minimum`` long."""
    if b - a >= minimum:
        return a, b
    c = 0.5 * (a + b)
    return c - 0.5 * minimum, c + 0.5 * minimum


@dataclass
class _Sprite:
    """A sprite's anchor: bottom-centre (x, yb) in pixels, scale k px/m, depth z."""

    cv: _Canvas
    x: float
    yb: float
    k: float
    z: float

    def px(self, dx: float, dy: float) -> tuple[float, float]:
        """Sprite-local metres (dx right, dy up) → image (x, y)."""
        return self.x + dx * self.k, self.yb - dy * self.k

    def rect(
        self,
        dx0: float,
        dx1: float,
        dy0: float,
        dy1: float,
        inst: int,
        min_w: float = 0.0,
        min_h: float = 0.0,
    ) -> None:
        """Axis-aligned box [dx0, dx1] x [dy0, dy1] in metres, at least min_w x min_h px."""
        left, right = _widen(self.x + dx0 * self.k, self.x + dx1 * self.k, min_w)
        top, bottom = _widen(self.yb - dy1 * self.k, self.yb - dy0 * self.k, min_h)
        win = self.cv.window(top, bottom, left, right)
        if win is not None:
            self.cv.fill(win[0], None, inst, self.z)

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, inst: int, min_r: float = 1.0
    ) -> None:
        """Filled ellipse (metres), radii at least ``min_r`` px."""
        px, py = self.px(cx, cy)
        rxp, ryp = max(rx * self.k, min_r), max(ry * self.k, min_r)
        win = self.cv.window(py - ryp, py + ryp, px - rxp, px + rxp)
        if win is None:
            return
        box, yy, xx = win
        mask = ((xx - px) / rxp) ** 2 + ((yy - py) / ryp) ** 2 <= 1.0
        self.cv.fill(box, mask, inst, self.z)

    def ring(self, cx: float, cy: float, r: float, thick: float, inst: int) -> None:
        """Circular ring (a bicycle wheel), at least 1.6 px thick."""
        px, py = self.px(cx, cy)
        rp = max(r * self.k, 2.0)
        tp = max(thick * self.k, 1.6)
        win = self.cv.window(py - rp, py + rp, px - rp, px + rp)
        if win is None:
            return
        box, yy, xx = win
        d = np.sqrt((xx - px) ** 2 + (yy - py) ** 2)
        self.cv.fill(box, (d <= rp) & (d >= rp - tp), inst, self.z)

    def segment(
        self, p: tuple[float, float], q: tuple[float, float], width: float, inst: int
    ) -> None:
        """Thick line from p to q (metres) with round caps, at least THIN_PX wide."""
        (ax, ay), (bx, by) = self.px(*p), self.px(*q)
        half = 0.5 * max(width * self.k, THIN_PX)
        win = self.cv.window(
            min(ay, by) - half, max(ay, by) + half, min(ax, bx) - half, max(ax, bx) + half
        )
        if win is None:
            return
        box, yy, xx = win
        vx, vy = bx - ax, by - ay
        t = np.clip(((xx - ax) * vx + (yy - ay) * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
        d2 = (xx - ax - t * vx) ** 2 + (yy - ay - t * vy) ** 2
        self.cv.fill(box, d2 <= half * half, inst, self.z)

    def polygon(self, pts: Sequence[tuple[float, float]], inst: int) -> None:
        """Convex polygon given in sprite-local metres (any winding)."""
        ptsp = [self.px(dx, dy) for dx, dy in pts]
        xs, ys = [p[0] for p in ptsp], [p[1] for p in ptsp]
        win = self.cv.window(min(ys), max(ys), min(xs), max(xs))
        if win is None:
            return
        box, yy, xx = win
        pos = np.ones(np.broadcast_shapes(yy.shape, xx.shape), bool)
        neg = pos.copy()
        for (x1, y1), (x2, y2) in zip(ptsp, ptsp[1:] + ptsp[:1], strict=True):
            c = (x2 - x1) * (yy - y1) - (y2 - y1) * (xx - x1)
            pos &= c >= 0
            neg &= c <= 0
        self.cv.fill(box, pos | neg, inst, self.z)


# ----------------------------------------------------------------------------------
# scene geometry


@dataclass(frozen=True)
class _Street:
    """Camera and street layout of one frame (lateral positions X in metres, left < 0)."""

    h: int
    w: int
    horizon: float  # image row of the horizon
    vx: float  # image column of the vanishing point
    focal: float  # focal length in pixels
    road: tuple[float, float]  # X of the left / right road edge
    walk: tuple[float, float]  # X of the outer sidewalk edges
    grass: tuple[float, float]  # X of the outer terrain edges (== walk when no strip)
    facade: tuple[float, float]  # X of the building lines

    def ground_g(self, rows: np.ndarray) -> np.ndarray:
        """Pixels below the horizon of row centres (≤ 0 above it)."""
        return rows + 0.5 - self.horizon


def _hsv_jitter(
    rng: np.random.Generator, train_id: int, hue: float = 8.0
) -> tuple[float, float, float]:
    """The game colour of a class with per-instance jitter."""
    h, s, v = _GAME_HSV_LIST[train_id]
    a, b, c = rng.random(3).tolist()
    return (
        h + hue * (2.0 * a - 1.0),
        min(s * (0.85 + 0.25 * b), 1.0),
        min(v * (0.8 + 0.32 * c), 1.0),
    )


def _make_street(rng: np.random.Generator, h: int, w: int) -> _Street:
    """Random camera (horizon, vanishing column, focal) and street cross-section of one frame."""
    road_half = rng.uniform(3.5, 7.0)
    offset = rng.uniform(-0.5, 0.5) * (road_half - 1.2)  # camera stays on the road
    left_r, right_r = offset - road_half, offset + road_half
    walk_l, walk_r = left_r - rng.uniform(2.5, 6.0), right_r + rng.uniform(2.5, 6.0)
    grass_l = walk_l - (rng.uniform(1.0, 4.0) if rng.random() < 0.45 else 0.0)
    grass_r = walk_r + (rng.uniform(1.0, 4.0) if rng.random() < 0.45 else 0.0)
    return _Street(
        h=h,
        w=w,
        horizon=h * rng.uniform(0.36, 0.48),
        vx=w * rng.uniform(0.4, 0.6),
        focal=w * rng.uniform(0.8, 1.0),
        road=(left_r, right_r),
        walk=(walk_l, walk_r),
        grass=(grass_l, grass_r),
        facade=(grass_l - rng.uniform(0.0, 2.5), grass_r + rng.uniform(0.0, 2.5)),
    )


def _draw_ground(cv: _Canvas, st: _Street, rng: np.random.Generator) -> np.ndarray:
    """Road, sidewalks, terrain below the horizon; returns the lateral-position map X [H, W]."""
    r0 = min(max(int(np.ceil(st.horizon - 0.5)), 0), cv.h)  # first row below the horizon
    rows = np.arange(r0, cv.h, dtype=np.float32)[:, None]
    cols = np.arange(cv.w, dtype=np.float32)[None, :] + 0.5
    g = np.maximum(st.ground_g(rows), 1e-3)  # [h, 1]
    lateral = np.zeros((cv.h, cv.w), np.float32)
    lateral[r0:] = (cols - st.vx) * CAM_HEIGHT / g  # [h, W] metres
    depth = st.focal * CAM_HEIGHT / g  # [h, 1]
    # lateral bands, left to right: terrain | sidewalk | terrain | sidewalk | road | ... mirrored
    edges = np.array(
        [
            st.facade[0],
            st.grass[0],
            st.walk[0],
            st.road[0],
            st.road[1],
            st.walk[1],
            st.grass[1],
            st.facade[1],
        ]
    )
    names = (
        "terrain",
        "sidewalk",
        "terrain",
        "sidewalk",
        "road",
        "sidewalk",
        "terrain",
        "sidewalk",
        "terrain",
    )
    insts = np.array(
        [cv.instance(_hsv_jitter(rng, int(_LABEL_TO_TRAIN[_L[n]]), hue=5.0), _L[n]) for n in names]
    )
    band = np.searchsorted(edges, lateral[r0:], side="right")  # [h, W]
    cv.inst[r0:] = insts[band]
    cv.label[r0:] = np.array([_L[n] for n in names], np.uint8)[band]
    cv.depth[r0:] = depth
    # dashed centre line: shading only (still "road")
    centre = 0.5 * (st.road[0] + st.road[1])
    marking = (np.abs(lateral[r0:] - centre) < 0.12) & (np.mod(depth, 8.0) < 4.0)
    cv.shade[r0:][marking] = 1.9
    return lateral


def _draw_skyline(cv: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    """Distant buildings / trees just above the horizon (piecewise-constant heights)."""
    edges = np.cumsum(rng.uniform(6, 30, size=max(4, cv.w // 4)) * cv.w / 256.0)
    edges = edges[edges < cv.w]
    idx = np.searchsorted(edges, np.arange(cv.w) + 0.5)  # [W] block of each column
    nblocks = len(edges) + 1
    heights = rng.uniform(1.0, 0.30 * st.horizon, size=nblocks) * (rng.random(nblocks) < 0.8)
    is_tree = rng.random(nblocks) < 0.25
    insts = np.array(
        [
            cv.instance(_hsv_jitter(rng, 8 if t else 2), _L["vegetation" if t else "building"])
            for t in is_tree
        ]
    )
    top = st.horizon - heights[idx]  # [W]
    rows = np.arange(cv.h, dtype=np.float32)[:, None] + 0.5
    mask = (rows >= top[None, :]) & (rows < st.horizon + 1.0)
    inst_map = np.broadcast_to(insts[idx][None, :], mask.shape)
    cv.inst[mask] = inst_map[mask]
    cv.label[mask] = np.asarray(cv.inst_label, np.uint8)[inst_map[mask]]
    cv.depth[mask] = 400.0


def _draw_side_planes(
    cv: _Canvas,
    st: _Street,
    side: int,
    plane_x: float,
    z_start: np.ndarray,
    z_end: np.ndarray,
    heights: np.ndarray,
    insts: np.ndarray,
    wiggle: np.ndarray,
    pattern: str | None,
) -> None:
    """Vertical planes parallel to the street at lateral ``plane_x`` over depth segments.

    Each image column on that side sees the plane at one depth, so the segment of a column
    is a lookup; top and bottom rows follow the pinhole projection (vectorised over [H, W]).
    """
    x_lo, x_hi = (0, int(np.ceil(st.vx))) if side < 0 else (int(st.vx), cv.w)
    cols = np.arange(x_lo, x_hi, dtype=np.float32) + 0.5
    dist = (cols - st.vx) * side  # [w] pixels from the vanishing column on this side
    valid = dist > 0.5
    g = np.maximum(dist, 0.5) * CAM_HEIGHT / abs(plane_x)  # [w] ground row offset
    z = st.focal * CAM_HEIGHT / g  # [w] depth of the plane seen by each column
    seg = np.searchsorted(z_start, z, side="right") - 1  # [w]
    valid &= seg >= 0
    seg_c = np.clip(seg, 0, len(z_start) - 1)
    valid &= z < z_end[seg_c]
    if not valid.any():
        return
    hgt = heights[seg_c] + wiggle[seg_c] * np.sin(z * 0.9 + seg_c)  # [w] metres
    y_ground = st.horizon + g
    y_top = y_ground - g * hgt / CAM_HEIGHT
    r_lo = max(int(np.floor(y_top[valid].min())), 0)
    r_hi = min(int(np.ceil(y_ground[valid].max())) + 1, cv.h)
    if r_lo >= r_hi:
        return
    rows = np.arange(r_lo, r_hi, dtype=np.float32)[:, None] + 0.5
    mask = valid[None, :] & (rows >= y_top[None, :]) & (rows < y_ground[None, :])  # [h, w]
    box = (slice(r_lo, r_hi), slice(x_lo, x_hi))
    inst_map = np.broadcast_to(insts[seg_c][None, :], mask.shape)
    label_map = np.asarray(cv.inst_label, np.uint8)[inst_map]
    cv.inst[box][mask] = inst_map[mask]
    cv.label[box][mask] = label_map[mask]
    cv.depth[box][mask] = np.broadcast_to(z[None, :], mask.shape)[mask]
    shade = cv.shade[box]
    shade[mask] = 1.0
    if pattern is None:
        return
    k = g / CAM_HEIGHT  # [w] px per metre at the plane
    v = (y_ground[None, :] - rows) / k[None, :]  # [h, w] height above ground (m)
    if pattern == "windows":
        win = (
            (np.mod(z, 3.5) < 2.0)[None, :]
            & (np.mod(v, 3.2) > 1.2)
            & (v > 2.5)
            & (v < hgt[None, :] - 1.0)
        )
        shade[win & mask & (label_map == _L["building"])] = 0.55
    elif pattern == "bars":
        shade[mask & (np.mod(z, 0.6) < 0.25)[None, :]] = 0.7


def _facade_segments(rng: np.random.Generator, cv: _Canvas, near: float, far: float):
    """Random blocks along the street: building (most), park (vegetation) or gap."""
    n = 64  # more than enough blocks: lengths grow with depth
    draws = rng.random((n, 3))  # [n, (length, kind, height)]
    bounds = [near]
    for u in draws[:, 0].tolist():
        if bounds[-1] >= far:
            break
        bounds.append(
            bounds[-1] + (8.0 + 22.0 * u) * (1.0 + bounds[-1] / 40.0)
        )  # far blocks are few px wide
    m = len(bounds) - 1
    kind = np.searchsorted([0.74, 0.90], draws[:m, 1])  # 0 building, 1 park, 2 gap
    keep = np.flatnonzero(kind < 2)
    if keep.size == 0:
        return None
    park = kind[keep] == 1
    heights = np.where(park, 4.0 + 5.0 * draws[keep, 2], 7.0 + 19.0 * draws[keep, 2])
    insts = np.array(
        [
            cv.instance(
                _hsv_jitter(rng, 8) if p else _hsv_jitter(rng, 2, hue=12.0),
                _L["vegetation" if p else "building"],
            )
            for p in park.tolist()
        ],
        np.int64,
    )
    edges = np.asarray(bounds)
    return edges[keep], edges[keep + 1], heights, insts, np.where(park, 1.2, 0.0)


def _draw_facades(cv: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    """Building lines (with parks and gaps) on both sides, seen in perspective."""
    far = st.focal * CAM_HEIGHT / 0.5
    for side, plane_x in ((-1, st.facade[0]), (1, st.facade[1])):
        segs = _facade_segments(rng, cv, 0.5, far)
        if segs is not None:
            _draw_side_planes(cv, st, side, plane_x, *segs, pattern="windows")


def _draw_low_walls(cv: _Canvas, st: _Street, rng: np.random.Generator) -> None:
    """Walls and fences along the outer sidewalk / terrain edge (or the curb)."""
    for name, p, hrange, pattern in (
        ("wall", 0.6, (0.8, 2.5), None),
        ("fence", 0.7, (1.0, 2.2), "bars"),
    ):
        if rng.random() > p:
            continue
        side = int(rng.choice([-1, 1]))
        edge = st.grass[0] if side < 0 else st.grass[1]
        plane_x = (
            edge if rng.random() < 0.7 else (st.road[0] if side < 0 else st.road[1]) + side * 0.3
        )
        if plane_x * side <= 0.5:
            continue
        n = int(rng.integers(1, 3))
        starts = np.sort(rng.uniform(1.0, 60.0, size=n))
        ends = starts + rng.uniform(6.0, 30.0, size=n)
        ends = np.minimum(ends, np.append(starts[1:], np.inf))
        tid = _LABEL_TO_TRAIN[_L[name]]
        insts = np.array([cv.instance(_hsv_jitter(rng, tid), _L[name]) for _ in range(n)], np.int64)
        heights = rng.uniform(*hrange, size=n)
        _draw_side_planes(cv, st, side, plane_x, starts, ends, heights, insts, np.zeros(n), pattern)


# ----------------------------------------------------------------------------------
# sprites (objects standing on the ground plane)

_DARK_GLASS = (215.0, 0.35, 0.22)
_TYRE = (0.0, 0.0, 0.08)
_SKIN = (25.0, 0.45, 0.85)
_TRUNK = (28.0, 0.6, 0.35)


def _car(s: _Sprite, rng: np.random.Generator) -> None:
    """A car from behind/in front (60 %) or from the side; tyres and glass are car too."""
    cv = s.cv
    body = cv.instance(_hsv_jitter(rng, 13, hue=25.0), _L["car"])
    glass = cv.instance(_DARK_GLASS, _L["car"])
    tyre = cv.instance(_TYRE, _L["car"])
    if rng.random() < 0.6:  # seen from behind / in front
        s.rect(-0.8, -0.5, 0.0, 0.35, tyre, min_w=THIN_PX)
        s.rect(0.5, 0.8, 0.0, 0.35, tyre, min_w=THIN_PX)
        s.rect(-0.9, 0.9, 0.25, 0.95, body)
        s.polygon([(-0.85, 0.95), (0.85, 0.95), (0.65, 1.5), (-0.65, 1.5)], body)
        s.polygon([(-0.72, 1.0), (0.72, 1.0), (0.58, 1.42), (-0.58, 1.42)], glass)
        for dx in (-0.7, 0.7):
            cv.lights.append((*s.px(dx, 0.75), max(0.25 * s.k, 1.5), (1.0, 0.15, 0.1)))
    else:  # side view
        half = rng.uniform(1.9, 2.3)
        s.rect(-half, half, 0.25, 0.95, body)
        s.polygon(
            [(-half * 0.55, 0.95), (half * 0.35, 0.95), (half * 0.1, 1.45), (-half * 0.45, 1.45)],
            body,
        )
        s.polygon(
            [(-half * 0.48, 1.0), (half * 0.28, 1.0), (half * 0.07, 1.38), (-half * 0.4, 1.38)],
            glass,
        )
        for dx in (-half * 0.65, half * 0.65):
            s.ellipse(dx, 0.33, 0.33, 0.33, tyre)
        cv.lights.append((*s.px(half, 0.7), max(0.3 * s.k, 1.5), (1.0, 0.95, 0.8)))


def _truck(s: _Sprite, rng: np.random.Generator) -> None:
    """A box truck, from behind or from the side (cab + box)."""
    cv = s.cv
    box = cv.instance(_hsv_jitter(rng, 14, hue=20.0), _L["truck"])
    cab = cv.instance(_hsv_jitter(rng, 14, hue=20.0), _L["truck"])
    glass = cv.instance(_DARK_GLASS, _L["truck"])
    tyre = cv.instance(_TYRE, _L["truck"])
    if rng.random() < 0.5:
        s.rect(-1.2, 1.2, 0.3, 3.4, box)
        s.rect(-1.1, -0.7, 0.0, 0.5, tyre, min_w=THIN_PX)
        s.rect(0.7, 1.1, 0.0, 0.5, tyre, min_w=THIN_PX)
    else:
        length = rng.uniform(5.0, 8.0)
        sgn = 1 if rng.random() < 0.5 else -1
        s.rect(-length / 2, length / 2, 0.4, 3.6, box)
        cab_x = sgn * (length / 2 + 1.0)
        s.rect(cab_x - 1.0, cab_x + 1.0, 0.4, 2.8, cab)
        s.rect(cab_x - 0.1 * sgn - 0.5, cab_x - 0.1 * sgn + 0.5, 1.7, 2.5, glass)
        for dx in (-length / 2 + 0.8, length / 2 - 0.8, cab_x):
            s.ellipse(dx, 0.45, 0.45, 0.45, tyre)


def _bus(s: _Sprite, rng: np.random.Generator) -> None:
    """A bus, front view or side view with a window band."""
    cv = s.cv
    body = cv.instance(_hsv_jitter(rng, 15, hue=15.0), _L["bus"])
    glass = cv.instance(_DARK_GLASS, _L["bus"])
    tyre = cv.instance(_TYRE, _L["bus"])
    if rng.random() < 0.4:
        s.rect(-1.25, 1.25, 0.2, 3.2, body)
        s.rect(-1.1, 1.1, 1.6, 2.9, glass)
        cv.lights.append((*s.px(-0.9, 0.6), max(0.3 * s.k, 1.5), (1.0, 0.95, 0.8)))
        cv.lights.append((*s.px(0.9, 0.6), max(0.3 * s.k, 1.5), (1.0, 0.95, 0.8)))
    else:
        half = rng.uniform(5.0, 6.5)
        s.rect(-half, half, 0.3, 3.2, body)
        s.rect(-half + 0.5, half - 0.5, 1.7, 2.7, glass)
        for dx in (-half + 1.8, half - 2.0):
            s.ellipse(dx, 0.5, 0.5, 0.5, tyre)


def _train(s: _Sprite, rng: np.random.Generator) -> None:
    """A tram on the road, side view, 16-26 m long."""
    cv = s.cv
    body = cv.instance(_hsv_jitter(rng, 16, hue=12.0), _L["train"])
    glass = cv.instance(_DARK_GLASS, _L["train"])
    half = rng.uniform(8.0, 13.0)
    s.rect(-half, half, 0.3, 3.5, body)
    s.polygon([(-half, 3.5), (half, 3.5), (half - 0.5, 3.8), (-half + 0.5, 3.8)], body)
    # window band, split in cars
    for c in np.arange(-half + 0.8, half - 1.5, 3.0):
        s.rect(c, c + 2.0, 1.8, 2.9, glass)


def _person(s: _Sprite, rng: np.random.Generator) -> None:
    """A pedestrian: two legs, torso, head (legs at least THIN_PX wide)."""
    cv = s.cv
    shirt = cv.instance(_hsv_jitter(rng, 11, hue=20.0), _L["person"])
    h, sat, v = _hsv_jitter(rng, 11, hue=30.0)
    legs = cv.instance((h, sat, v * 0.55), _L["person"])
    skin = cv.instance(_SKIN, _L["person"])
    tall = rng.uniform(1.6, 1.9) / 1.75
    s.rect(-0.19, -0.03, 0.0, 0.85 * tall, legs, min_w=THIN_PX)
    s.rect(0.03, 0.19, 0.0, 0.85 * tall, legs, min_w=THIN_PX)
    s.rect(-0.23, 0.23, 0.8 * tall, 1.5 * tall, shirt, min_w=THIN_PX + 1)
    s.ellipse(0.0, 1.62 * tall, 0.11, 0.13, skin)


def _two_wheeler(s: _Sprite, rng: np.random.Generator, *, motor: bool, ridden: bool) -> None:
    """A motorcycle or bicycle (side view), optionally with its rider on top."""
    cv = s.cv
    lab = "motorcycle" if motor else "bicycle"
    tid = 17 if motor else 18
    frame = cv.instance(_hsv_jitter(rng, tid, hue=15.0), _L[lab])
    tyre = cv.instance(_TYRE, _L[lab])
    wr = 0.34
    half = (1.0 if motor else 0.85) - wr
    if motor:
        s.ellipse(-half, wr, wr, wr, tyre)
        s.ellipse(half, wr, wr, wr, tyre)
        s.polygon(
            [(-half - 0.1, 0.45), (half, 0.45), (half * 0.6, 0.95), (-half * 0.9, 0.85)], frame
        )
        s.segment((half, wr), (half * 0.8, 1.05), 0.08, frame)
    else:
        s.ring(-half, wr, wr, 0.07, tyre)
        s.ring(half, wr, wr, 0.07, tyre)
        seat, bar = (-half * 0.35, 0.9), (half * 0.75, 0.98)
        s.segment((-half, wr), (0.0, wr), 0.06, frame)
        s.segment((0.0, wr), seat, 0.06, frame)
        s.segment(seat, bar, 0.06, frame)
        s.segment((0.0, wr), bar, 0.06, frame)
        s.segment((half, wr), bar, 0.06, frame)
    if not ridden:
        return
    rider = cv.instance(_hsv_jitter(rng, 12, hue=20.0), _L["rider"])
    skin = cv.instance(_SKIN, _L["rider"])
    hip = (-half * 0.3, 0.95 if motor else 0.92)
    s.segment(hip, (0.05, 0.45), 0.14, rider)  # leg
    s.polygon(
        [
            (hip[0] - 0.2, hip[1]),
            (hip[0] + 0.2, hip[1]),
            (hip[0] + 0.35, hip[1] + 0.6),
            (hip[0] - 0.05, hip[1] + 0.65),
        ],
        rider,
    )
    s.segment((hip[0] + 0.3, hip[1] + 0.55), (half * 0.75, 1.0), 0.09, rider)  # arm
    s.ellipse(hip[0] + 0.22, hip[1] + 0.8, 0.12, 0.13, skin)


def _pole(s: _Sprite, rng: np.random.Generator, *, road_side: int) -> None:
    """A pole carrying a traffic light (40 %), a traffic sign (40 %) or a street lamp."""
    cv = s.cv
    pole = cv.instance(_hsv_jitter(rng, 5, hue=10.0), _L["pole"])
    height = rng.uniform(3.5, 8.0)
    s.rect(-0.08, 0.08, 0.0, height, pole, min_w=THIN_PX)
    kind = rng.random()
    if kind < 0.4:  # traffic light, on an arm over the road or on the pole top
        light = cv.instance(_hsv_jitter(rng, 6, hue=10.0), _L["light"])
        if rng.random() < 0.5 and height > 5.0:
            arm = rng.uniform(1.0, 3.0) * road_side
            s.segment((0.0, height - 0.2), (arm, height - 0.2), 0.1, pole)
            cx, top = arm, height - 0.35
        else:
            cx, top = 0.0, height + 0.9
        s.rect(cx - 0.18, cx + 0.18, top - 0.95, top, light, min_w=THIN_PX, min_h=3.0)
        colour = [(1.0, 0.1, 0.05), (1.0, 0.7, 0.1), (0.2, 1.0, 0.4)][int(rng.integers(3))]
        cv.lights.append((*s.px(cx, top - 0.5), max(0.5 * s.k, 2.0), colour))
    elif kind < 0.8:  # traffic sign at 2-3 m
        sign = cv.instance(_hsv_jitter(rng, 7, hue=20.0), _L["sign"])
        cy = min(rng.uniform(2.0, 3.0), height - 0.2)
        r = rng.uniform(0.3, 0.42)
        shape = rng.integers(3)
        if shape == 0:
            s.ellipse(0.0, cy, r, r, sign, min_r=1.5)
        elif shape == 1:
            s.rect(-r, r, cy - r, cy + r, sign, min_w=3.0, min_h=3.0)
        else:
            s.polygon([(-r * 1.1, cy + r), (r * 1.1, cy + r), (0.0, cy - r)], sign)
            s.ellipse(0.0, cy + 0.2 * r, 0.4 * r, 0.4 * r, sign, min_r=1.0)
    else:  # street lamp: a short arm with a lamp head (pole), lit at night
        arm = 1.2 * road_side
        s.segment((0.0, height), (arm, height + 0.3), 0.1, pole)
        cv.lights.append((*s.px(arm, height + 0.15), max(0.6 * s.k, 2.5), (1.0, 0.85, 0.55)))


def _tree(s: _Sprite, rng: np.random.Generator) -> None:
    """A tree: trunk and crown are both vegetation, as in Cityscapes."""
    cv = s.cv
    trunk = cv.instance(_TRUNK, _L["vegetation"])
    crown = cv.instance(_hsv_jitter(rng, 8, hue=15.0), _L["vegetation"])
    height = rng.uniform(2.0, 3.5)
    s.rect(-0.15, 0.15, 0.0, height, trunk, min_w=THIN_PX)
    rx, ry = rng.uniform(1.2, 2.8), rng.uniform(1.3, 2.6)
    s.ellipse(0.0, height + ry * 0.8, rx, ry, crown)
    s.ellipse(rx * 0.5, height + ry * 0.5, rx * 0.6, ry * 0.6, crown)


def _clutter(s: _Sprite, rng: np.random.Generator) -> None:
    """A void object (bin, bollard box): labelId 'static', ignored in training."""
    inst = s.cv.instance((rng.uniform(0, 360), 0.3, 0.4), _L["static"])
    w, hgt = rng.uniform(0.4, 0.8), rng.uniform(0.6, 1.2)
    s.rect(-w / 2, w / 2, 0.0, hgt, inst, min_w=THIN_PX)


def _place(
    rng: np.random.Generator,
    st: _Street,
    spans: Sequence[tuple[float, float]],
    near_bias: float = 1.4,
    reach: float = 1.08,
) -> tuple[float, float, float, float] | None:
    """Sample an anchor (x, yb, k, z) on the ground inside the frame, within lateral ``spans``.

    The ground row is drawn in the visible range first (depth clamped to what the camera
    sees: at most ``reach`` times the ground height of the frame), then the lateral
    position among the spans that are visible at that row. ``near_bias`` > 1 favours far.
    """
    g_hi = (st.h - st.horizon) * reach
    for _ in range(8):
        g = 2.5 + (g_hi - 2.5) * rng.random() ** near_bias
        k = g / CAM_HEIGHT
        options = []
        for lo, hi in spans:
            xa, xb = max(st.vx + lo * k, 0.0), min(st.vx + hi * k, float(st.w))
            if xa < xb:
                options.append((xa, xb))
        if options:
            xa, xb = options[int(rng.integers(len(options)))]
            return rng.uniform(xa, xb), st.horizon + g, k, st.focal * CAM_HEIGHT / g
    return None


def _sprites(
    rng: np.random.Generator, st: _Street
) -> list[tuple[float, float, float, float, Callable]]:
    """Every object of the frame as (z, x, yb, k, draw); drawn far to near."""
    (rl, rr), (wl, wr) = st.road, st.walk
    lanes = [(rl + 1.0, rr - 1.0)]
    curbs = [(rl + 0.9, rl + 1.3), (rr - 1.3, rr - 0.9)]
    walks = [(wl + 0.3, rl - 0.3), (rr + 0.3, wr - 0.3)]
    out = []

    def add(spans, fn, n, bias=1.6, reach=1.08):
        """Place ``n`` objects drawn by ``fn`` (those that find no visible spot are dropped)."""
        for _ in range(n):
            anchor = _place(rng, st, spans, bias, reach)
            if anchor is not None:
                x, yb, k, z = anchor
                out.append((z, x, yb, k, fn))

    add(lanes + curbs, _car, 1 + int(rng.poisson(2.5)), bias=2.2, reach=0.9)
    add(lanes, _truck, int(rng.poisson(0.4)), bias=2.0, reach=0.6)
    add(lanes, _bus, int(rng.poisson(0.45)), bias=2.2, reach=0.55)
    add(lanes, _train, int(rng.random() < 0.3), bias=2.0, reach=0.45)
    add(walks, _person, int(rng.poisson(3.0)))
    add(lanes, _person, int(rng.poisson(0.5)))
    for _ in range(int(rng.poisson(0.9))):
        motor = bool(rng.random() < 0.5)
        add(lanes + curbs, lambda s, r, m=motor: _two_wheeler(s, r, motor=m, ridden=True), 1)
    for _ in range(int(rng.poisson(0.5))):
        add(walks, lambda s, r: _two_wheeler(s, r, motor=bool(r.random() < 0.3), ridden=False), 1)
    for side, span in ((-1, (rl - 0.6, rl - 0.3)), (1, (rr + 0.3, rr + 0.6))):
        add(
            [span],
            lambda s, r, sd=-side: _pole(s, r, road_side=sd),
            int(rng.poisson(1.3)),
            bias=1.0,
        )
    add(walks + [(st.grass[0] + 0.5, wl), (wr, st.grass[1] - 0.5)], _tree, int(rng.poisson(1.8)))
    add(walks, _clutter, int(rng.poisson(0.4)))
    return out


def _draw_ego_vehicle(cv: _Canvas, rng: np.random.Generator) -> None:
    """The bonnet at the bottom of Cityscapes-like frames (labelId 'ego vehicle' = void)."""
    inst = cv.instance((rng.uniform(0, 360), 0.2, 0.15), _L["ego"])
    rx, ry = cv.w * rng.uniform(0.6, 0.9), cv.h * rng.uniform(0.05, 0.1)
    cx = cv.w * rng.uniform(0.4, 0.6)
    win = cv.window(cv.h - ry, cv.h, 0, cv.w)
    if win is None:
        return
    box, yy, xx = win
    mask = ((xx - cx) / rx) ** 2 + ((yy - cv.h) / ry) ** 2 <= 1.0
    cv.fill(box, mask, inst, 1.0)


def _build_scene(
    rng: np.random.Generator, h: int, w: int, *, ego: bool
) -> tuple[_Canvas, _Street, np.ndarray]:
    """Draw one frame's labels, instances, depth and shading (painter's order, far to near)."""
    cv = _Canvas(h, w)
    sky = cv.instance(_hsv_jitter(rng, 10, hue=10.0), _L["sky"])
    assert sky == 0  # the canvas starts as sky with instance 0
    st = _make_street(rng, h, w)
    _draw_skyline(cv, st, rng)
    lateral = _draw_ground(cv, st, rng)
    _draw_facades(cv, st, rng)
    _draw_low_walls(cv, st, rng)
    sprites = _sprites(rng, st)
    sprites.sort(key=lambda t: -t[0])
    for z, x, yb, k, fn in sprites:
        fn(_Sprite(cv, x, yb, k, z), rng)
    if ego and rng.random() < 0.5:
        _draw_ego_vehicle(cv, rng)
    return cv, st, lateral


# ----------------------------------------------------------------------------------
# rendering


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """[N, 3] (hue degrees, s, v) → [N, 3] RGB in [0, 1]."""
    h = np.mod(hsv[:, 0], 360.0) / 60.0
    s, v = np.clip(hsv[:, 1], 0, 1), np.clip(hsv[:, 2], 0, 1)
    c = v * s
    x = c * (1 - np.abs(np.mod(h, 2.0) - 1))
    m = v - c
    sector = np.floor(h).astype(int) % 6
    zeros = np.zeros_like(c)
    table = np.stack(
        [
            np.stack([c, x, zeros], 1),
            np.stack([x, c, zeros], 1),
            np.stack([zeros, c, x], 1),
            np.stack([zeros, x, c], 1),
            np.stack([x, zeros, c], 1),
            np.stack([c, zeros, x], 1),
        ]
    )  # [6, N, 3]
    return table[sector, np.arange(len(c))] + m[:, None]


def _colour_table(cv: _Canvas, domain: str) -> np.ndarray:
    """Per-instance RGB [N, 3]: the game palette, or the city palette (class hue rotation)."""
    hsv = np.array(cv.hsv, np.float64)  # [N, 3]
    if domain != "source":
        tids = _LABEL_TO_TRAIN[np.array(cv.inst_label)]  # [N]
        rot = np.where(tids % 2 == 0, HUE_ROTATION, -HUE_ROTATION)
        rot = np.where(tids == IGNORE_INDEX, 0.0, rot)
        hsv = hsv.copy()
        hsv[:, 0] += rot
        hsv[:, 1] *= CITY_SATURATION
    return _hsv_to_rgb(hsv).astype(np.float32)


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication (sigma ≈ 0.7 px)."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)) if img.ndim == 3 else ((1, 1), (1, 1)), mode="edge")
    p = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean uniform noise with standard deviation ``std`` (4x cheaper than Gaussian)."""
    u = rng.random(shape, dtype=np.float32)
    u -= 0.5
    u *= np.float32(std * np.sqrt(12.0))
    return u


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency noise [H, W] ~ N(0, 1)-ish: a coarse grid upsampled bilinearly."""
    gh, gw = h // cell + 2, w // cell + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / cell
    xs = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0).astype(np.float32)[:, None], (xs - x0).astype(np.float32)[None, :]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _sky_gradient(cv: _Canvas, st: _Street) -> np.ndarray:
    """Shading map [H, W]: sky lighter towards the horizon, 1 elsewhere."""
    rows = np.arange(cv.h, dtype=np.float32)[:, None] + 0.5
    grad = 0.85 + 0.3 * np.clip(rows / max(st.horizon, 1.0), 0, 1)  # [H, 1] lighter at the horizon
    return np.where(cv.label == _L["sky"], grad, 1.0).astype(np.float32)


def _render_game(cv: _Canvas, st: _Street, rng: np.random.Generator) -> np.ndarray:
    """Flat saturated colours, sharp edges, nearly no noise."""
    img = _colour_table(cv, "source")[cv.inst]  # [H, W, 3]
    img *= (cv.shade * _sky_gradient(cv, st))[..., None]
    img += _noise(rng, img.shape, 0.004)
    return img


def _render_city(
    cv: _Canvas, st: _Street, lateral: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """City palette plus moderate texture, lighting, shadows, blur (noise added at the end)."""
    h, w = cv.h, cv.w
    img = _colour_table(cv, "target")[cv.inst]  # [H, W, 3]
    shade = 1.0 + 0.8 * (cv.shade - 1.0)
    fine = _blur(_noise(rng, (h, w), 1.0))  # [H, W]
    blotch = _smooth_noise(rng, h, w, max(4, h // 10))  # [H, W]
    lab = cv.label
    shade = shade * (1.0 + _FINE_AMP[lab] * 2.0 * fine) * (1.0 + _BLOTCH_AMP[lab] * blotch)
    shade *= _sky_gradient(cv, st)
    # a cast shadow over one side of the street
    if rng.random() < 0.6:
        ground = _GROUND_LUT[lab]
        edge = rng.uniform(st.road[0], st.road[1])
        side = lateral < edge if rng.random() < 0.5 else lateral > edge
        shade = np.where(ground & side, shade * rng.uniform(0.55, 0.75), shade)
    # uneven lighting: horizontal / vertical gradients and global gain / white balance
    cols = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
    rows = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
    shade = shade * (1.0 + rng.uniform(-0.15, 0.15) * cols + rng.uniform(-0.1, 0.1) * rows)
    gain = rng.uniform(0.85, 1.1) * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    img = img * shade[..., None] * gain
    return _blur(img)


def _glows(cv: _Canvas, img: np.ndarray, strength: float) -> np.ndarray:
    """Add Gaussian glows at the light sources (traffic lights, lamps, vehicle lights)."""
    for x, y, r, colour in cv.lights:
        win = cv.window(y - 3 * r, y + 3 * r, x - 3 * r, x + 3 * r)
        if win is None:
            continue
        box, yy, xx = win
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r * r))  # [h, w]
        img[box] += strength * g[..., None] * np.asarray(colour, np.float32)
    return img


def _streaks(
    rng: np.random.Generator, h: int, w: int, density: float, length: int, slope: float
) -> np.ndarray:
    """Motion-blurred sparse points: rain streaks [H, W] in [0, 1]."""
    seeds = (rng.random((h, w)) < density).astype(np.float32)
    out = np.zeros_like(seeds)
    for t in range(length):
        out += np.roll(seeds, (t, int(round(t * slope))), axis=(0, 1))
    return np.clip(out, 0, 1)


def _apply_condition(
    cv: _Canvas, img: np.ndarray, condition: str, rng: np.random.Generator
) -> np.ndarray:
    """Adverse weather / light on a city rendering: fog (depth-based haze), night, rain, snow."""
    h, w = cv.h, cv.w
    depth = cv.depth[..., None]  # [H, W, 1]
    if condition == "fog":
        visibility = rng.uniform(25.0, 70.0)
        t = np.exp(-3.0 * depth / visibility)
        air = rng.uniform(0.72, 0.85) * np.array([0.97, 1.0, 1.02], np.float32)
        return _blur(img * t + air * (1 - t))
    if condition == "night":
        dark = np.power(np.clip(img, 0, 1), 1.15) * rng.uniform(0.3, 0.42)
        dark *= np.array([0.8, 0.9, 1.2], np.float32)
        lit = (cv.shade < 0.6) & (rng.random((h, w)) < 0.25)  # some lit windows
        dark[lit] += np.array([0.35, 0.28, 0.12], np.float32)
        return _glows(cv, dark, 0.9)
    if condition == "rain":
        grey = img.mean(axis=2, keepdims=True)
        wet = 0.75 * (0.6 * img + 0.4 * grey) + 0.05
        streak = _streaks(rng, h, w, 0.004, max(4, h // 16), rng.uniform(0.1, 0.35))
        return _blur(wet + 0.3 * streak[..., None])
    if condition == "snow":
        t = np.exp(-3.0 * depth / rng.uniform(80.0, 150.0))
        hazy = 0.9 * img * t + 0.85 * (1 - t) + 0.08
        flakes = (rng.random((h, w)) < 0.006).astype(np.float32)
        flakes = np.clip(flakes + np.roll(flakes, 1, 0) + np.roll(flakes, 1, 1), 0, 1)
        return hazy * (1 - 0.8 * flakes[..., None]) + 0.9 * flakes[..., None]
    raise ValueError(f"condition must be one of {ACDC_CONDITIONS}, but got condition={condition!r}")


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image → rounded uint8."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def generate_sample(
    seed: int,
    domain: str,
    split: str,
    index: int,
    *,
    height: int = 128,
    width: int = 256,
    condition: str | None = None,
) -> SyntheticSample:
    """Generate one frame in memory, exactly as :func:`generate_benchmark` writes it.

    ``domain`` is "source" (split must be "train"), "target" or "adverse" (then
    ``condition`` is one of :data:`ACDC_CONDITIONS`). ``index`` is the 0-based position of
    the frame in its (domain, split, condition) list, which is also its reader index.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, but got domain={domain!r}")
    if split not in _SPLIT_CODE or (domain == "source" and split != "train"):
        raise ValueError(
            f"split must be 'train' or 'val' ('train' for source), but got split={split!r}"
        )
    if (domain == "adverse") != (condition is not None) or condition not in _CONDITION_CODE:
        raise ValueError(
            f"condition must be one of {ACDC_CONDITIONS} for the adverse domain and None otherwise, "
            f"but got domain={domain!r}, condition={condition!r}"
        )
    _check_dims(height, width)
    rng = np.random.default_rng(
        [
            int(seed),
            _DOMAIN_CODE[domain],
            _SPLIT_CODE[split],
            _CONDITION_CODE[condition],
            int(index),
        ]
    )
    cv, st, lateral = _build_scene(rng, height, width, ego=domain != "source")
    if domain == "source":
        img = _render_game(cv, st, rng)
    else:
        img = _render_city(cv, st, lateral, rng)
        if condition is not None:
            img = _apply_condition(cv, img, condition, rng)
        noise = 0.012 if condition is None else 0.02
        img = img + _noise(rng, img.shape, noise)
    label_ids = cv.label.copy()
    return SyntheticSample(
        image=_to_uint8(img),
        label_ids=label_ids,
        train_ids=to_train_ids(label_ids, source=f"generator ({domain}/{split}/{index})"),
    )


# ----------------------------------------------------------------------------------
# writing the official layouts


def _check_dims(height: Any, width: Any) -> None:
    """Image sizes must be integers >= 32 (the street needs some rows)."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 32:
            raise ValueError(f"{name} must be an integer >= 32, but got {name}={value!r}")


def _check_count(name: str, value: Any, maximum: int | None = None) -> None:
    """Frame counts must be integers >= 1 (and <= maximum where names must stay unique)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, but got {name}={value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, but got {name}={value!r}")


def _save_rgb(path: Path, image: np.ndarray) -> None:
    """RGB PNG (fast zlib level: the noisy target images barely compress further)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _save_gray(path: Path, label_ids: np.ndarray) -> None:
    """8-bit grayscale PNG of labelIds (Cityscapes gtFine, ACDC gt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_ids).save(path, format="PNG", compress_level=1)


def _save_palette(path: Path, label_ids: np.ndarray) -> None:
    """8-bit palette PNG whose indices are labelIds (as the GTAV release stores labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = label_ids.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(label_ids).tobytes())
    im.putpalette(label_palette())
    im.save(path, format="PNG", compress_level=1)


def _city_of(split: str, index: int, n: int) -> tuple[str, int]:
    """(city, sequence number) of the index-th frame of a split spread over its cities."""
    cities = CITY_NAMES[split]
    c = index * len(cities) // n
    first = -(-c * n // len(cities))  # ceil(c * n / ncities): first index of city c
    return cities[c], index - first


def _acdc_name(condition: str, split: str, index: int) -> tuple[str, int]:
    """(GoPro-style sequence name, frame number) of the index-th frame of a condition/split."""
    seq = index // ACDC_FRAMES_PER_SEQUENCE
    number = 1000 * (ACDC_CONDITIONS.index(condition) + 1) + (500 if split == "val" else 0) + seq
    return f"GOPR{number:04d}", 6 * (index % ACDC_FRAMES_PER_SEQUENCE) + 1


#: one frame to write: (domain, split, index, condition, image path, label path, label writer)
_Frame = tuple[str, str, int, "str | None", Path, Path, str]
#: frames below this count are written in-process: starting worker processes costs more
_PARALLEL_MIN_FRAMES = 64


def _frames(tmp: Path, counts: dict[str, int], conditions: tuple[str, ...]) -> list[_Frame]:
    """Every frame of the three layouts under ``tmp`` (frame i of each list = reader index i)."""
    gtav, cs, acdc = tmp / "gtav", tmp / "cityscapes", tmp / "acdc"
    frames: list[_Frame] = []
    for i in range(counts["n_source"]):
        frames.append(("source", "train", i, None, *gtav_files(gtav, i + 1), "palette"))
    for split, n in (("train", counts["n_target_train"]), ("val", counts["n_target_val"])):
        for i in range(n):
            city, seq = _city_of(split, i, n)
            frames.append(("target", split, i, None, *cityscapes_files(cs, split, city, seq, CITYSCAPES_FRAME), "gray"))
    for cond in conditions:
        for split, n in (("train", counts["n_adverse_train"]), ("val", counts["n_adverse_val"])):
            for i in range(n):
                sequence, frame = _acdc_name(cond, split, i)
                frames.append(("adverse", split, i, cond, *acdc_files(acdc, cond, split, sequence, frame), "gray"))
    return frames


def _write_frames(seed: int, h: int, w: int, frames: Sequence[_Frame]) -> None:
    """Generate and save ``frames`` (a worker process's share, or all of them)."""
    for domain, split, index, condition, img_path, lbl_path, writer in frames:
        s = generate_sample(seed, domain, split, index, height=h, width=w, condition=condition)
        _save_rgb(img_path, s.image)
        (_save_palette if writer == "palette" else _save_gray)(lbl_path, s.label_ids)


def _write_tree(
    tmp: Path, seed: int, h: int, w: int, counts: dict[str, int], conditions: tuple[str, ...], workers: int
) -> None:
    """Write all three layouts under ``tmp``, over ``workers`` processes. Every frame has its
    own random stream (:func:`generate_sample`), so the files do not depend on ``workers``."""
    frames = _frames(tmp, counts, conditions)
    if workers <= 1 or len(frames) < _PARALLEL_MIN_FRAMES:
        _write_frames(seed, h, w, frames)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [frames[k::workers] for k in range(workers)]  # interleaved: the domains cost alike
    # spawn, not fork: the caller may hold threads (a Ray driver, a decoding pool)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_write_frames, seed, h, w, share) for share in shares]:
            done.result()


def generate_benchmark(
    out_dir: str | Path,
    *,
    seed: int = 0,
    height: int = 128,
    width: int = 256,
    n_source: int = 400,
    n_target_train: int = 300,
    n_target_val: int = 100,
    n_adverse_train: int = 100,
    n_adverse_val: int = 50,
    conditions: Sequence[str] = ("fog", "night", "rain"),
    overwrite: bool = False,
    workers: int | None = None,
) -> BenchmarkPaths:
    """Write the embedded benchmark under ``out_dir`` in the official layouts.

    ``out_dir/gtav`` (source, GTAV), ``out_dir/cityscapes`` (target, Cityscapes: train
    cities aachen/bremen/hamburg, val frankfurt/lindau/munster) and ``out_dir/acdc``
    (adverse target, ACDC; ``n_adverse_*`` frames *per condition*). Files are identical
    for the same arguments. Everything is written into a temporary folder next to
    ``out_dir`` and moved into place at the end, so an interrupted run leaves no partial
    tree; existing layout folders are an error unless ``overwrite=True``. Concurrent
    calls with identical arguments are safe (the first finished tree is kept). ``workers``
    processes generate the frames (default: the CPUs this process may use); the files are the
    same for any number.
    """
    out = Path(out_dir)
    _check_dims(height, width)
    counts = {
        "n_source": n_source,
        "n_target_train": n_target_train,
        "n_target_val": n_target_val,
        "n_adverse_train": n_adverse_train,
        "n_adverse_val": n_adverse_val,
    }
    for name, value in counts.items():
        _check_count(name, value, _MAX_ACDC_PER_SPLIT if "adverse" in name else None)
    if isinstance(conditions, str):
        conditions = (conditions,)
    conditions = tuple(conditions)
    if (
        not conditions
        or any(c not in ACDC_CONDITIONS for c in conditions)
        or len(set(conditions)) != len(conditions)
    ):
        raise ValueError(
            f"conditions must be a non-empty subset of {ACDC_CONDITIONS} without repeats, "
            f"but got conditions={conditions!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, but got seed={seed!r}")
    if workers is None:
        workers = usable_cpus()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, but got workers={workers!r}")
    layouts = ("gtav", "cityscapes", "acdc")
    existing = [out / name for name in layouts if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(map(str, existing))} already exist(s); pass overwrite=True "
            "(CLI: --overwrite) to replace the generated benchmark"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir={out} exists and is not a folder")

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:  # a folder the user chose that cannot hold it: bad input, nothing written
        raise DatasetError(f"cannot write the embedded benchmark into {out}: {err.strerror or err}") from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the tree is meant to be shared
        t0 = time.perf_counter()
        _write_tree(tmp, int(seed), int(height), int(width), counts, conditions, int(workers))
        manifest = {
            "generator": "halo_ray.data.synthetic",
            "seed": int(seed),
            "height": int(height),
            "width": int(width),
            **counts,
            "conditions": list(conditions),
        }
        (tmp / MANIFEST_NAME).write_text(
            json.dumps({**manifest, "seconds": round(time.perf_counter() - t0, 2)}, indent=2) + "\n"
        )
        _install(tmp, out, layouts, overwrite=overwrite, manifest=manifest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BenchmarkPaths(
        root=out, gtav_root=out / "gtav", cityscapes_root=out / "cityscapes", acdc_root=out / "acdc"
    )


def _same_manifest(out: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``out`` holds a complete tree generated with the same arguments."""
    try:
        found = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    found.pop("seconds", None)
    return found == manifest


def _install(
    tmp: Path, out: Path, layouts: tuple[str, ...], *, overwrite: bool, manifest: dict[str, Any]
) -> None:
    """Move the finished tree into place: one rename if ``out`` is new, else per layout.

    If another process finished the same generation first (concurrent trials asking for
    the benchmark), its identical tree is kept and ours is dropped.
    """
    if not out.exists():
        try:
            os.replace(tmp, out)
            return
        except OSError:
            if not out.exists():
                raise
    if not overwrite:
        if _same_manifest(out, manifest):
            return
        existing = [out / name for name in layouts if (out / name).exists()]
        if existing:
            raise FileExistsError(
                f"{', '.join(map(str, existing))} appeared while generating; pass overwrite=True to replace them"
            )
    trash = tmp / ".replaced"
    trash.mkdir()
    manifest = out / MANIFEST_NAME
    if manifest.exists():  # drop the old completion marker first
        os.replace(manifest, trash / MANIFEST_NAME)
    for name in layouts:
        if (out / name).exists():
            os.replace(out / name, trash / name)
        os.replace(tmp / name, out / name)
    os.replace(tmp / MANIFEST_NAME, manifest)


def class_frequencies(dataset: Iterable[Any]) -> np.ndarray:
    """Fraction of labelled (non-ignore) pixels per trainId, ``[19]`` float64 summing to 1.

    Accepts a reader (uses its label-only ``load_label`` path), or any iterable of samples
    with a ``label`` / ``train_ids`` attribute, or of trainId arrays.
    """
    counts = np.zeros(NUM_CLASSES, np.int64)
    if hasattr(dataset, "load_label") and hasattr(dataset, "__len__"):
        labels: Iterable[Any] = (dataset.load_label(i) for i in range(len(dataset)))  # type: ignore[attr-defined]
    else:
        labels = dataset
    for item in labels:
        lab = getattr(item, "label", None)
        if lab is None:
            lab = getattr(item, "train_ids", item)
        lab = np.asarray(lab).ravel()
        counts += np.bincount(lab[lab < NUM_CLASSES], minlength=NUM_CLASSES)[:NUM_CLASSES]
    total = counts.sum()
    if total == 0:
        raise ValueError(
            "class_frequencies: the dataset has no labelled pixel (all ignore or empty)"
        )
    return counts / total
