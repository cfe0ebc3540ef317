"""Guided texture resynthesis of a generated region: every pixel copied from the known image.

The diffusion fill of a hole is right in layout but smoother than its surroundings: each
estimate is a softmax average of candidate patches, and the fold averages overlapping
estimates (see ``docs/quality.md``). This pass keeps the layout and brings the texture back.
It visits the generated pixels from the border inwards (distance to the known region, then
row-major order) and gives each one the value of a single known pixel: the centre of the
source window that best matches the pixel's neighbourhood, where

* pixels already decided (known, or copied earlier in the pass) are compared as they are,
* pixels not decided yet are compared through the fill (the *guide*), both sides blurred a
  little and with a small weight: they steer the layout, not the fine detail.

Candidates are the windows that continue the sources of the decided neighbours (which copies
coherent runs of texture, as the classic content-aware fills do), the nearest windows of the
guide found by the caller (layout), and a few seeded random windows. A source window lies in
the known region whole. Everything is a fixed-order loop over float64 sums, so the result is
the same on any machine and thread count; with numba the loop is compiled.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> known = rng.random((1, 24, 24)).astype(np.float32)
>>> hole = np.zeros((24, 24), bool); hole[8:14, 9:15] = True
>>> out = resynthesize(known, hole, np.zeros_like(known), seed=1, patch=3)
>>> bool((out[:, ~hole] == known[:, ~hole]).all())
True
>>> bool(np.isin(out[0, hole], known[0, ~hole]).all())
True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["COHERENCE_BONUS", "GUIDE_BLUR", "GUIDE_WEIGHT", "NEIGHBOURHOOD", "RANDOM_CANDIDATES",
           "resynthesize", "source_windows"]

#: Weight of a not-yet-decided pixel (compared through the guide) against a decided one.
GUIDE_WEIGHT = 0.05
#: Standard deviation (pixels) of the blur applied to the guide and the sources where they
#: are compared: the fill is smoother than the sources, so only their low frequencies match.
GUIDE_BLUR = 0.7
#: Random source windows tried per pixel, besides the coherent and the guide's candidates.
RANDOM_CANDIDATES = 32
#: A candidate that does not continue a decided neighbour's source must be this much better
#: (relative distance) to be chosen.
COHERENCE_BONUS = 1.0
#: Side of the compared neighbourhoods (whatever the patch size of the diffusion): a few
#: dozen pixels tell a good continuation, and the cost grows with the side to the fourth.
NEIGHBOURHOOD = 5


def _order(hole: np.ndarray) -> np.ndarray:
    """Generated pixels ``(n, 2)`` by 8-connected distance to the known region, then
    row-major: the border first, each ring after the ring outside it."""
    h, w = hole.shape
    dist = np.where(hole, -1, 0).astype(np.int64)
    front = np.argwhere(~hole)
    d = 0
    while front.size and (dist < 0).any():
        d += 1
        nxt = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                y, x = front[:, 0] + dy, front[:, 1] + dx
                ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
                y, x = y[ok], x[ok]
                new = dist[y, x] < 0
                dist[y[new], x[new]] = d
                nxt.append(np.stack([y[new], x[new]], 1))
        front = np.unique(np.concatenate(nxt), axis=0) if nxt else np.empty((0, 2), np.int64)
    ys, xs = np.nonzero(hole)
    if (dist[ys, xs] < 0).any():  # no known pixel at all: plain row-major order
        dist[hole] = 0
    o = np.lexsort((xs, ys, dist[ys, xs]))
    return np.stack([ys[o], xs[o]], 1).astype(np.int64)


def _blur(img: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised separable Gaussian blur of ``img`` ``(C, H, W)`` over the pixels where
    ``weight`` ``(1, H, W)`` is 1 (fixed order of additions, edges renormalised)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    num = img.astype(np.float64) * weight
    den = weight.astype(np.float64)
    for axis in (1, 2):
        n_acc, d_acc = np.zeros_like(num), np.zeros_like(den)
        size = num.shape[axis]
        for i, kv in enumerate(k):
            o = i - r
            src = slice(max(0, o), size + min(0, o))
            dst = slice(max(0, -o), size - max(0, o))
            sl_s = [slice(None)] * 3
            sl_d = [slice(None)] * 3
            sl_s[axis], sl_d[axis] = src, dst
            n_acc[tuple(sl_d)] += kv * num[tuple(sl_s)]
            d_acc[tuple(sl_d)] += kv * den[tuple(sl_s)]
        num, den = n_acc, d_acc
    return (num / np.maximum(den, 1e-12)).astype(np.float32)


def source_windows(hole: np.ndarray, patch: int) -> np.ndarray:
    """``(H, W)`` bool: pixels that can be copied, the centres of ``patch``-sided windows
    that lie inside the image and hold no generated pixel."""
    r = patch // 2
    h, w = hole.shape
    ok = np.zeros((h, w), bool)
    if h < patch or w < patch:
        return ok
    c = np.zeros((h + 1, w + 1), np.int64)
    c[1:, 1:] = np.cumsum(np.cumsum(hole, 0), 1)
    n = c[patch:, patch:] - c[:-patch, patch:] - c[patch:, :-patch] + c[:-patch, :-patch]
    ok[r:r + n.shape[0], r:r + n.shape[1]] = n == 0
    return ok


def _synth(src, blur_src, ok, guide_blur, hole, order, cand, rnd, r, lam,
           bonus):  # pragma: no cover
    c, h, w = src.shape
    out = src.copy()
    done = np.empty((h, w), np.bool_)
    sy = np.full((h, w), -1, np.int64)
    sx = np.full((h, w), -1, np.int64)
    for y in range(h):
        for x in range(w):
            done[y, x] = not hole[y, x]
            if done[y, x]:
                sy[y, x] = y
                sx[y, x] = x
    side = 2 * r + 1
    cy = np.empty(side * side + cand.shape[1] + rnd.shape[1], np.int64)
    cx = np.empty_like(cy)
    for i in range(order.shape[0]):
        qy, qx = order[i, 0], order[i, 1]
        n = 0
        for dy in range(-r, r + 1):  # continue the sources of decided generated neighbours
            for dx in range(-r, r + 1):
                ny, nx = qy + dy, qx + dx
                if 0 <= ny < h and 0 <= nx < w and done[ny, nx] and hole[ny, nx]:
                    ty, tx = sy[ny, nx] - dy, sx[ny, nx] - dx
                    if 0 <= ty < h and 0 <= tx < w and ok[ty, tx]:
                        seen = False  # neighbours of one copied run propose the same source
                        for j in range(n):
                            if cy[j] == ty and cx[j] == tx:
                                seen = True
                                break
                        if not seen:
                            cy[n], cx[n] = ty, tx
                            n += 1
        ncoh = n
        for j in range(cand.shape[1]):
            v = cand[i, j]
            if v >= 0:
                cy[n], cx[n] = v // w, v % w
                n += 1
        for j in range(rnd.shape[1]):
            v = rnd[i, j]
            cy[n], cx[n] = v // w, v % w
            n += 1
        best, by, bx = np.inf, -1, -1
        for j in range(n):
            ty, tx = cy[j], cx[j]
            f = 1.0 if j < ncoh else 1.0 + bonus  # coherent continuations are preferred
            d = 0.0
            for dy in range(-r, r + 1):
                if d * f >= best:  # cannot win any more (the sums only grow): same choice
                    break
                py = qy + dy
                if py < 0 or py >= h:
                    continue
                for dx in range(-r, r + 1):
                    px = qx + dx
                    if px < 0 or px >= w:
                        continue
                    if done[py, px]:
                        for ch in range(c):
                            t = np.float64(out[ch, py, px]) - np.float64(src[ch, ty + dy, tx + dx])
                            d += t * t
                    else:
                        for ch in range(c):
                            t = (np.float64(guide_blur[ch, py, px])
                                 - np.float64(blur_src[ch, ty + dy, tx + dx]))
                            d += lam * t * t
            if d * f < best:
                best, by, bx = d * f, ty, tx
        if by >= 0:
            for ch in range(c):
                out[ch, qy, qx] = src[ch, by, bx]
            sy[qy, qx], sx[qy, qx] = by, bx
        done[qy, qx] = True
    return out


def _search(candidates, guide: np.ndarray, order: np.ndarray, patch: int,
            block: int = 16384) -> np.ndarray:
    """``candidates`` of the guide's ``patch``-sided windows at ``order``, in blocks (a window
    matrix of every generated pixel would hold ``C * patch^2`` floats per pixel)."""
    a, b = patch // 2, patch - patch // 2 - 1
    pad = np.pad(guide, ((0, 0), (a, b), (a, b)), mode="edge")
    out = []
    for i in range(0, len(order), block):
        ys, xs = order[i:i + block, 0], order[i:i + block, 1]
        win = np.empty((len(ys), guide.shape[0], patch, patch), np.float32)
        for dy in range(patch):
            for dx in range(patch):
                win[:, :, dy, dx] = pad[:, ys + dy, xs + dx].T
        out.append(np.asarray(candidates(win.reshape(len(ys), -1)), dtype=np.int64))
    return np.concatenate(out)


def _compiled_synth():
    try:
        import numba
    except ImportError:
        return _synth
    return numba.njit(nogil=True, cache=True, error_model="numpy")(_synth)


_SYNTH: Callable | None = None


def resynthesize(known: np.ndarray, hole: np.ndarray, guide: np.ndarray, seed: int,
                 candidates: Callable[[np.ndarray], np.ndarray] | None = None,
                 search_patch: int = NEIGHBOURHOOD, patch: int = NEIGHBOURHOOD,
                 guide_weight: float = GUIDE_WEIGHT, guide_blur: float = GUIDE_BLUR,
                 random_candidates: int = RANDOM_CANDIDATES,
                 coherence_bonus: float = COHERENCE_BONUS) -> np.ndarray:
    """Replace every generated pixel of ``guide`` by a known pixel, from the border inwards.

    Parameters
    ----------
    known:
        ``(C, H, W)`` float32: the image whose pixels outside ``hole`` are kept and copied.
    hole:
        ``(H, W)`` bool, True where pixels are generated.
    guide:
        ``(C, H, W)`` float32: the fill to follow (its values outside ``hole`` are ignored).
    seed:
        Seeds the random candidates.
    candidates:
        Optional ``f(windows) -> (n, k)`` int64 flat indices ``y * W + x`` of source centres
        (-1 for none) for the guide's ``(n, C * search_patch**2)`` windows (flat ``(C, P,
        P)``, top-left corner ``search_patch // 2`` up and left of the pixel) around the
        ``n`` generated pixels in visiting order (e.g. an ANN search of the known windows).
    search_patch:
        Side of the windows given to ``candidates``.
    patch:
        Side of the compared neighbourhoods (odd; an even side uses ``patch + 1``).
    guide_weight, guide_blur, random_candidates, coherence_bonus:
        See :data:`GUIDE_WEIGHT`, :data:`GUIDE_BLUR`, :data:`RANDOM_CANDIDATES` and
        :data:`COHERENCE_BONUS`.

    Returns
    -------
    ``(C, H, W)`` float32: ``known`` outside the hole (bit for bit), a copied known pixel in it
    (the guide's pixel where no source window exists).
    """
    global _SYNTH
    known = np.ascontiguousarray(known, dtype=np.float32)
    hole = np.ascontiguousarray(hole, dtype=bool)
    guide = np.ascontiguousarray(guide, dtype=np.float32)
    r = patch // 2
    ok = source_windows(hole, 2 * r + 1)
    src = np.where(hole[None], guide, known).astype(np.float32)
    if not ok.any() or not hole.any():
        return src
    order = _order(hole)
    keep = (~hole).astype(np.float64)[None]
    blur_src = _blur(known, keep, guide_blur)
    guide_blur_img = _blur(guide, np.ones_like(keep), guide_blur)
    if candidates is not None:
        cand = _search(candidates, guide, order, search_patch)
        cand = np.where((cand >= 0) & ok.reshape(-1)[np.maximum(cand, 0)], cand, -1)
    else:
        cand = np.empty((len(order), 0), np.int64)
    pool = np.flatnonzero(ok)
    rng = np.random.Generator(np.random.Philox(seed))
    rnd = pool[rng.integers(0, len(pool), (len(order), random_candidates))]
    if _SYNTH is None:
        _SYNTH = _compiled_synth()
    return _SYNTH(src, blur_src, ok, guide_blur_img, hole, order, np.ascontiguousarray(cand),
                  np.ascontiguousarray(rnd), r, float(guide_weight), float(coherence_bonus))
