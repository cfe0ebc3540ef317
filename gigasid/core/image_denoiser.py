"""Image-level denoiser (spec §2.4) and the Laplacian cross-scale blend (spec §4.4), per region.

A region's estimate is the Gaussian-weighted average of the predictions of every patch that
overlaps it, exactly as in the whole-image computation: the patch grid is global, so a tile
with enough input halo reproduces the corresponding pixels of the whole-image result.
"""

from __future__ import annotations

import torch

from gigasid.core import kernels, resample
from gigasid.core import patches as P
from gigasid.core.domain import Domain

Region = tuple[int, int, int, int]


def patch_halo_region(domain: Domain, patch: int, stride: int, region: Region) -> Region:
    """Input window ``(y0, y1, x0, x1)`` that :func:`denoise_region` reads for ``region``
    (full-image coordinates, unwrapped on a torus)."""
    ys = domain.y.starts_touching(patch, stride, region[0], region[1])
    xs = domain.x.starts_touching(patch, stride, region[2], region[3])
    return (*P.input_span(ys, patch), *P.input_span(xs, patch))


def _coverage_1d(starts: torch.Tensor, g: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Sum of the 1-D fold window over all windows, on pixels ``lo .. hi-1``.

    Each pixel adds its windows' weights in increasing window start (float64), the order of a
    loop over the starts, so a pixel's value does not depend on the region it is part of.
    """
    p = g.shape[0]
    hit = torch.zeros(hi - lo + p - 1, dtype=torch.int64)  # windows starting at lo - p + 1 + i
    inside = starts[(starts > lo - p) & (starts < hi)] - (lo - p + 1)
    hit.index_add_(0, inside, torch.ones_like(inside))
    if int(hit.max()) > 1:
        raise ValueError("window starts must be distinct")
    cov = torch.zeros(hi - lo, dtype=torch.float64)
    for off in range(p - 1, -1, -1):  # pixel x, window start x - off: increasing start
        cov += hit[p - 1 - off : p - 1 - off + hi - lo].to(torch.float64) * g[off]
    return cov


def _distinct(starts: torch.Tensor, axis, patch: int
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The windows to denoise among ``starts`` and how the others reuse them.

    Returns the indices of the first window of each distinct canonical window
    (:meth:`~gigasid.core.domain.Axis.canonical_windows`: copies across a torus's wrap, or a
    mirror partner), where every window's estimate sits among them (None when all are
    distinct) and which windows take it reflected (None when none do). On a mirror axis
    the first of a pair is the partner in the leading half, so it is never reflected.
    """
    if axis.kind == "plane":
        return torch.arange(len(starts)), None, None
    canon, flipped = axis.canonical_windows(starts, patch)
    uniq, inverse = torch.unique(canon, return_inverse=True)
    if len(uniq) == len(starts):
        return torch.arange(len(starts)), None, None
    first = torch.full((len(uniq),), len(starts), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(starts)), reduce="amin")
    # keep the distinct windows in the order of their first appearance
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return first[order], rank[inverse], (flipped if bool(flipped.any()) else None)


def _axis_parts(starts: torch.Tensor, index: torch.Tensor | None,
                flip: torch.Tensor | None) -> list:
    """The windows of one axis split by whether they take a reflected estimate:
    ``(starts, index, used)`` per part, ``used`` the estimate entries to reflect (None for
    the part that reads ``est`` as it is)."""
    if flip is None:
        return [(starts, index, None)]
    used = torch.unique(index[flip])
    parts = [(starts[~flip], index[~flip], None),
             (starts[flip], torch.searchsorted(used, index[flip]), used)]
    return [p for p in parts if len(p[0])]


def _fold_estimates(est: torch.Tensor, c: int, patch: int, ys: torch.Tensor,
                    y_map: tuple, xs: torch.Tensor, x_map: tuple, out: torch.Tensor,
                    weight: torch.Tensor) -> None:
    """Fold the estimates ``est`` ``(ny, nx, D)`` of the distinct windows at every window
    ``ys x xs`` (canvas offsets) into ``out``; ``y_map`` / ``x_map`` are ``(index, flip)``
    of :func:`_distinct`. Windows that take a mirror partner's estimate are folded in a
    second pass from reflected copies of the few entries they use: the order in which a
    pixel's contributions are added depends only on the windows, not on the region."""
    for yp, rows, ry in _axis_parts(ys, *y_map):
        for xp, cols, rx in _axis_parts(xs, *x_map):
            grid = est
            if ry is not None or rx is not None:
                grid = est.view(est.shape[0], est.shape[1], c, patch, patch)
                if ry is not None:
                    grid = grid.index_select(0, ry.to(grid.device)).flip(3)
                if rx is not None:
                    grid = grid.index_select(1, rx.to(grid.device)).flip(4)
                grid = grid.reshape(grid.shape[0], grid.shape[1], -1)
            P.fold(grid, yp, xp, patch, c, out=out, rows=rows, cols=cols, weight=weight)


def _row_chunks(ys: torch.Tensor, axis, patch: int, band: int):
    """``(key, indices)`` of the chunks of patch rows that are denoised together.

    Chunks lie on a grid of ``band`` rows fixed by the scale (not by the region). On a plane
    they are consecutive runs of ``ys``; on a torus the grid is that of the wrapped starts
    (a pixel computed across the wrap or not gets its contributions in the same order), so
    the first and last run can hold the same rows (same key); on a mirror axis a chunk
    gathers the windows whose canonical rows fall in it, partners included.
    """
    if axis.kind == "mirror":
        canon, _ = axis.canonical_windows(ys, patch)
        chunk_id = torch.div(canon, band, rounding_mode="floor")
        for k in torch.unique(chunk_id).tolist():
            yield k, torch.nonzero(chunk_id == k).flatten()
        return
    chunk_id = torch.div(axis.stored(ys) if axis.kind == "torus" else ys, band,
                         rounding_mode="floor")
    edges = [0, *(torch.nonzero(chunk_id[1:] != chunk_id[:-1]).flatten() + 1).tolist(),
             len(ys)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        # on a torus the first and last chunk can hold the same wrapped rows
        key = tuple(axis.stored(ys[a:b]).tolist()) if axis.kind == "torus" else a
        yield key, torch.arange(a, b)


def denoise_region(
    x: torch.Tensor,
    origin: tuple[int, int],
    domain: Domain,
    region: Region,
    patch: int,
    stride: int,
    window: torch.Tensor,
    denoiser,
    alpha: float,
    sigma: float,
    chunk_patches: int = 16384,
) -> torch.Tensor:
    """Closed-form image denoiser evaluated on one region.

    Parameters
    ----------
    x:
        ``(C, h, w)`` window of the noisy image ``x_t`` whose top-left pixel is ``origin``
        (full-image coordinates); it must contain :func:`patch_halo_region` of ``region``.
    domain:
        The scale's :class:`~gigasid.core.domain.Domain` (its full shape and which axes
        wrap); it decides the patch grid.
    region:
        ``(y0, y1, x0, x1)`` output region, full-image coordinates.
    patch, stride:
        Patch side ``P`` and query stride (the grid always covers every pixel).
    window:
        1-D fold window ``g`` of length ``P`` (see :func:`patches.fold_weights`); the 2-D
        weight is ``g(u) g(v)``.
    denoiser:
        A patch denoiser: ``denoiser(queries (M, D), alpha, sigma) -> (M, D)``.

    Returns
    -------
    torch.Tensor
        ``(C, y1 - y0, x1 - x0)`` float32 estimate of the clean image on ``region``.

    Notes
    -----
    The patches are denoised in chunks of whole patch rows whose boundaries lie on a grid
    fixed by the scale (not by the region), and :func:`patches.fold` adds each pixel's
    contributions in a fixed order: a pixel gets the same bits whatever region it is
    computed in.
    """
    c = x.shape[0]
    y0, y1, x0, x1 = region
    ys = domain.y.starts_touching(patch, stride, y0, y1)
    xs = domain.x.starts_touching(patch, stride, x0, x1)
    sy0, sy1 = P.input_span(ys, patch)
    sx0, sx1 = P.input_span(xs, patch)
    oy, ox = origin
    if sy0 < oy or sx0 < ox or sy1 > oy + x.shape[1] or sx1 > ox + x.shape[2]:
        raise ValueError("input window does not contain the patch halo of the region")
    g = window.to(torch.float64)
    w2 = (g[:, None] * g[None, :]).to(torch.float32)
    wflat = w2.expand(c, patch, patch).reshape(-1)
    # The compiled fold drops what falls outside its canvas, so it folds onto the region
    # alone (a halo or a torus's far side is never summed); torch's fold gets the span.
    cy0, cx0, cy1, cx1 = (y0, x0, y1, x1) if kernels.enabled(x) else (sy0, sx0, sy1, sx1)
    num = torch.zeros((c, cy1 - cy0, cx1 - cx0), dtype=torch.float32, device=x.device)
    # Chunks of patch rows on a grid of `band` pixel rows fixed by the scale's width
    # (_row_chunks); each distinct window is denoised once and folded wherever it appears.
    per_row = len(domain.x.patch_grid(patch, stride))
    band = max(1, chunk_patches // per_row) * stride
    x_first, x_copy, x_flip = _distinct(xs, domain.x, patch)
    xs_local = xs[x_first] - ox
    done: dict[tuple, torch.Tensor] = {}
    for key, idx in _row_chunks(ys, domain.y, patch, band):
        yc = ys[idx]
        y_first, y_copy, y_flip = _distinct(yc, domain.y, patch)
        if key not in done:
            q = P.extract(x, yc[y_first] - oy, xs_local, patch)
            est = denoiser(q, alpha, sigma).to(torch.float32)
            done[key] = est.view(len(y_first), len(x_first), -1)
        est = done[key] if domain.y.kind == "torus" else done.pop(key)
        # windows seen twice (across the wrap) are folded twice straight from `est`; the
        # fold applies the window weights as it adds (the bits of est * wflat)
        _fold_estimates(est, c, patch, yc - cy0, (y_copy, y_flip), xs - cx0,
                        (x_copy, x_flip), num, wflat.to(est.device))
    # The normaliser is separable because the window and the grid are.
    cy = _coverage_1d(ys, g, y0, y1)
    cx = _coverage_1d(xs, g, x0, x1)
    den = (cy[:, None] * cx[None, :]).to(torch.float32).to(x.device)
    return num[:, y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] / den


def blend_low_shape(fine_shape: tuple[int, int], ratio: float,
                    min_short_side: int | None) -> tuple[int, int]:
    """Shape of the low-pass band of ``fine`` (spec §4.4: the pyramid's next level)."""
    from gigasid.core.pyramid import pyramid_shapes

    return pyramid_shapes(fine_shape, 2, ratio, min_short_side, check=False)[1]


def blend_input_region(fine: Domain, low_shape: tuple[int, int], coarser: Domain,
                       region: Region) -> tuple[Region, Region]:
    """Windows of the fine estimate and of the coarser result that the blend of ``region`` reads.

    Returns ``(fine_window, coarser_window)`` in full-image coordinates (unwrapped on a
    torus); ``fine_window`` contains ``region``.
    """
    wrap = fine.wraps
    ly0, ly1, lx0, lx1 = resample.input_region(low_shape, fine.shape, region, wrap)
    fy0, fy1, fx0, fx1 = resample.input_region(fine.shape, low_shape, (ly0, ly1, lx0, lx1),
                                               wrap)
    win = (min(fy0, region[0]), max(fy1, region[1]), min(fx0, region[2]), max(fx1, region[3]))
    coarse = resample.input_region(coarser.shape, fine.shape, region, coarser.wraps)
    return win, coarse


def laplacian_blend(
    fine: torch.Tensor,
    fine_origin: tuple[int, int],
    coarser: torch.Tensor,
    coarser_origin: tuple[int, int],
    fine_domain: Domain,
    low_shape: tuple[int, int],
    coarser_domain: Domain,
    region: Region,
) -> torch.Tensor:
    """``up(coarser) + fine - up(down(fine))`` on ``region`` (spec §4.4).

    ``fine`` and ``coarser`` are windows (with their full-image origins) that contain the
    windows returned by :func:`blend_input_region`. On a torus every resampling wraps, so
    the blend is periodic too.
    """
    wrap = fine_domain.wraps
    fine_shape = fine_domain.shape
    low_region = resample.input_region(low_shape, fine_shape, region, wrap)
    low = resample.resize_region(fine, fine_origin, fine_shape, low_shape, low_region, wrap)
    detail_lp = resample.resize_region(low, low_region[::2], low_shape, fine_shape, region,
                                       wrap)
    base = resample.resize_region(coarser, coarser_origin, coarser_domain.shape, fine_shape,
                                  region, coarser_domain.wraps)
    y0, y1, x0, x1 = region
    oy, ox = fine_origin
    f = fine[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox].to(base.dtype)
    return base + f - detail_lp
