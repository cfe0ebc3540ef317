"""Antialiased Keys-cubic resampling with mirror borders, evaluated region by region.

Behaviour follows the reference's resampler (spec §4.5): Keys cubic (a = -0.5); when
downscaling the kernel is stretched by ``1/scale`` (antialiasing); output pixel centres map to
input coordinates MATLAB-style, ``u = (o + 0.5) / scale - 0.5`` with ``scale = out / in`` per
axis; taps outside the image use symmetric (mirror) extension ``..., 1, 0 | 0, 1, ...``;
each output's weights are normalised to sum to one.

Weights are computed from GLOBAL indices, so resampling a region of a huge image gives
exactly the rows of the whole-image result. :func:`taps` also tells which input range a
region needs, which is how the engine sizes its halos.
"""

from __future__ import annotations

import functools
import math

import torch


def keys_cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (support ``[-2, 2]``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (a + 2) * ax3 - (a + 3) * ax2 + 1
    outer = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return torch.where(ax <= 1, inner, torch.where(ax < 2, outer, torch.zeros_like(ax)))


def mirror_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map any integer index onto ``[0, n)`` by half-sample symmetric reflection."""
    period = 2 * n
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - 1 - i)


@functools.lru_cache(maxsize=4096)
def taps(in_size: int, out_size: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input indices and weights of output samples ``lo .. hi-1`` along one axis.

    Returns
    -------
    idx : torch.Tensor
        ``(hi - lo, K)`` int64 global input indices, already mirrored into ``[0, in_size)``.
    weight : torch.Tensor
        ``(hi - lo, K)`` float64 weights, each row summing to one.
    """
    scale = out_size / in_size
    stretch = min(scale, 1.0)  # antialias only when downscaling
    support = 2.0 / stretch
    o = torch.arange(lo, hi, dtype=torch.float64)
    u = (o + 0.5) / scale - 0.5
    left = torch.floor(u - support).to(torch.int64) + 1
    k = int(math.ceil(2 * support)) + 1
    j = left[:, None] + torch.arange(k, dtype=torch.int64)[None, :]
    w = stretch * keys_cubic((u[:, None] - j.to(torch.float64)) * stretch)
    w = w / w.sum(dim=1, keepdim=True)
    keep = (w != 0).any(dim=0)  # trim columns that are zero for every output
    j, w = j[:, keep], w[:, keep]
    return mirror_index(j, in_size), w


def input_range(in_size: int, out_size: int, lo: int, hi: int) -> tuple[int, int]:
    """The input span ``[a, b)`` that output samples ``lo .. hi-1`` read."""
    if in_size == out_size:
        return lo, hi
    idx, _ = taps(in_size, out_size, lo, hi)
    return int(idx.min()), int(idx.max()) + 1


def _matrix(in_size: int, out_size: int, lo: int, hi: int, origin: int, n_local: int,
            dtype: torch.dtype, device) -> torch.Tensor:
    """Dense ``(hi - lo, n_local)`` resampling matrix over a local input window."""
    if in_size == out_size:
        m = torch.zeros((hi - lo, n_local), dtype=torch.float64)
        m[torch.arange(hi - lo), torch.arange(lo, hi) - origin] = 1.0
        return m.to(dtype=dtype, device=device)
    idx, w = taps(in_size, out_size, lo, hi)
    local = idx - origin
    if int(local.min()) < 0 or int(local.max()) >= n_local:
        raise ValueError("input window does not cover the resampling support")
    m = torch.zeros((hi - lo, n_local), dtype=torch.float64)
    m.scatter_add_(1, local, w)  # mirrored taps may hit the same input twice
    return m.to(dtype=dtype, device=device)


def resize_region(
    x: torch.Tensor,
    origin: tuple[int, int],
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    region: tuple[int, int, int, int],
) -> torch.Tensor:
    """Resample a window of an image to a region of the resized image.

    Parameters
    ----------
    x:
        ``(C, h, w)`` window of the input image, whose top-left pixel is ``origin`` in the
        input's global coordinates. It must cover :func:`input_range` of the region.
    in_shape, out_shape:
        Global ``(H, W)`` of the input and of the resized image.
    region:
        ``(y0, y1, x0, x1)`` of the output, in the resized image's global coordinates.

    Returns
    -------
    torch.Tensor
        ``(C, y1 - y0, x1 - x0)``; arithmetic in float32 (float64 if ``x`` is float64).
    """
    y0, y1, x0, x1 = region
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.to(work)
    my = _matrix(in_shape[0], out_shape[0], y0, y1, origin[0], x.shape[1], work, x.device)
    mx = _matrix(in_shape[1], out_shape[1], x0, x1, origin[1], x.shape[2], work, x.device)
    out = torch.einsum("oh,chw->cow", my, xw)
    out = torch.einsum("cow,pw->cop", out, mx)
    return out


def input_region(
    in_shape: tuple[int, int], out_shape: tuple[int, int], region: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """Input window ``(y0, y1, x0, x1)`` needed by :func:`resize_region` for ``region``."""
    a, b = input_range(in_shape[0], out_shape[0], region[0], region[1])
    c, d = input_range(in_shape[1], out_shape[1], region[2], region[3])
    return a, b, c, d


def resize(x: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
    """Resample a whole ``(C, H, W)`` image (the one-region case of :func:`resize_region`)."""
    h, w = x.shape[-2:]
    return resize_region(x, (0, 0), (h, w), out_shape, (0, out_shape[0], 0, out_shape[1]))
