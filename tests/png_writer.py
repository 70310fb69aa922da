"""Test helper: a minimal PNG writer (zlib + crc32) with a chosen filter type per row.

Written independently of any decoder (forward filters straight from the PNG spec, Paeth
with the spec's ``p = a + b - c`` form) so that reading its files back bit-exactly tests
:func:`halo_ray.data.png16.decode_png` (OpenCV underneath) against the format.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → PNG colour type


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _paeth_spec(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


_ADAM7 = [
    (0, 0, 8, 8),
    (0, 4, 8, 8),
    (4, 0, 8, 4),
    (0, 2, 4, 4),
    (2, 0, 4, 2),
    (0, 1, 2, 2),
    (1, 0, 2, 1),
]
"""Adam7 passes (PNG spec §8.2): first row, first column, row step, column step."""


def _scanlines(data: np.ndarray, ftypes: np.ndarray) -> bytes:
    """Filtered scanlines of ``data`` ([H, W, bpp] uint8), row ``r`` with filter ``ftypes[r]``."""
    h = data.shape[0]
    x = data.astype(np.int32)
    left = np.zeros_like(x)
    left[:, 1:] = x[:, :-1]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    upleft = np.zeros_like(x)
    upleft[1:, 1:] = x[:-1, :-1]
    preds = [np.zeros_like(x), left, up, (left + up) // 2, _paeth_spec(left, up, upleft)]
    pred = np.choose(ftypes[:, None, None], preds)
    filtered = ((x - pred) % 256).astype(np.uint8).reshape(h, -1)
    return np.concatenate([ftypes[:, None].astype(np.uint8), filtered], axis=1).tobytes()


def encode_png(
    array: np.ndarray,
    filters: Sequence[int] | int | None = None,
    level: int = 6,
    interlace: bool = False,
) -> bytes:
    """PNG bytes of ``array`` ([H, W] or [H, W, C], uint8 or uint16).

    ``filters``: one filter type (0..4) for every row, a per-row sequence, or None for the
    cycle 0, 1, 2, 3, 4, 0, … so each filter meets each kind of neighbour. ``interlace``
    writes Adam7: each pass is its own small image, filtered with the first rows' types.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}[arr.dtype]
    data = (
        arr.astype(">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, w, -1)
    )  # [H, W, bpp]
    if filters is None:
        ftypes = np.arange(h) % 5
    elif isinstance(filters, int):
        ftypes = np.full(h, filters)
    else:
        ftypes = np.asarray(filters)
    if interlace:
        passes = [data[y0::dy, x0::dx] for y0, x0, dy, dx in _ADAM7]
        scan = b"".join(_scanlines(p, ftypes[: p.shape[0]]) for p in passes if p.size)
    else:
        scan = _scanlines(data, ftypes)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, _COLOUR_TYPE[c], 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(scan, level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, array: np.ndarray, filters: Sequence[int] | int | None = None) -> Path:
    """Write :func:`encode_png` to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(array, filters))
    return path
