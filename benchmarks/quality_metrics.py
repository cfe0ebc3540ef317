"""Picture metrics of the quality benchmark: how a filled or extended region compares with
the known pixels around it, on 8-bit ``(H, W, 3)`` images and boolean masks (True = generated).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
>>> hole = np.zeros((64, 64), bool); hole[20:40, 20:40] = True
>>> round(fill_texture(img, hole), 1), round(border_seam(img, hole), 1)
(1.0, 1.0)
>>> flat = img.copy(); flat[hole] = 128
>>> fill_texture(flat, hole) < 0.1
True
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Width in pixels of the known ring a fill is compared with.
RING = 15


def _ring(hole: np.ndarray, width: int = RING) -> np.ndarray:
    """Known pixels within ``width`` pixels of the generated region."""
    return ndimage.binary_dilation(hole, iterations=width) & ~hole


def _pair_diffs(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute difference over channels between vertical and horizontal neighbours."""
    x = img.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    return (np.abs(np.diff(x, axis=0)).mean(axis=2), np.abs(np.diff(x, axis=1)).mean(axis=2))


def _gradient(img: np.ndarray) -> np.ndarray:
    """Per-pixel gradient magnitude (forward differences, mean over channels)."""
    gy, gx = _pair_diffs(img)
    g = np.zeros(img.shape[:2])
    g[:-1, :-1] = np.hypot(gy[:, :-1], gx[:-1, :])
    return g


def fill_texture(img: np.ndarray, hole: np.ndarray, ring: int = RING) -> float:
    """Mean gradient inside the generated region (1 px in from its border) over the mean
    gradient in the known ring around it: about 1 when the fill is as detailed as its
    surroundings, near 0 for a flat fill."""
    g = _gradient(img)
    inner = ndimage.binary_erosion(hole, iterations=1)
    inner[-1, :] = inner[:, -1] = False
    around = _ring(hole, ring)
    around[-1, :] = around[:, -1] = False
    if not inner.any():
        inner = hole
    return float(g[inner].mean() / max(g[around].mean(), 1e-9))


def border_seam(img: np.ndarray, hole: np.ndarray, ring: int = RING) -> float:
    """Mean difference between neighbours across the region's border over the mean
    difference between neighbours in the known ring: about 1 when the border does not show."""
    gy, gx = _pair_diffs(img)
    across = np.concatenate([gy[hole[:-1] != hole[1:]], gx[hole[:, :-1] != hole[:, 1:]]])
    r = _ring(hole, ring)
    within = np.concatenate([gy[r[:-1] & r[1:]], gx[r[:, :-1] & r[:, 1:]]])
    return float(across.mean() / max(within.mean(), 1e-9))


def known_error(img: np.ndarray, ref: np.ndarray, hole: np.ndarray) -> int:
    """Largest 8-bit difference from ``ref`` outside the generated region."""
    keep = ~hole
    return int(np.abs(img[keep].astype(np.int32) - ref[keep].astype(np.int32)).max())
